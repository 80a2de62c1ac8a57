#!/usr/bin/env bash
# Instructions per packet of the translation engine, under valgrind's callgrind: for each
# case, the inclusive instruction count (Ir) of `Engine::process_batch` divided by the number
# of packets those calls processed.
#
# The harness (examples/ipp.rs) builds the translate bench's tables and traffic (the same
# code: benches/shared/traffic.rs), runs the case's whole traffic once and then WINDOWS more
# windows of 256 packets, and prints how many packets it handed to `process_batch`.
# Callgrind collects only while `process_batch` runs (--toggle-collect), so table building,
# traffic building, the refill of the buffers and the per-packet checks are not counted.
# Instruction counts do not depend on the machine's caches or load: they move only when the
# code (or the compiler) does. Built in release mode with full debug info.
#
#   scripts/callgrind-ipp.sh [group:eips ...]   default: the cases below
#   WINDOWS=200   windows after the first pass over the traffic
# Needs valgrind (in CI: apt-get install -y valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

WINDOWS=${WINDOWS:-200}
cases=("$@")
if [ ${#cases[@]} = 0 ]; then
  for g in nat_inbound_udp nat_outbound_udp cut_through_outbound_udp drop_alg drop_malformed \
    nat_inbound_udp_quic nat_inbound_udp_rtp; do
    cases+=("$g:1" "$g:100000")
  done
fi
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release --example ipp
bin="${CARGO_TARGET_DIR:-target}/release/examples/ipp"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo
echo "| case | EIPs | packets | Ir of process_batch | Ir per packet |"
echo "|---|---:|---:|---:|---:|"
for c in "${cases[@]}"; do
  group=${c%%:*}
  n=${c##*:}
  # The cut-through tables stop at 60,000 EIPs (see benches/shared/traffic.rs).
  if [ "${group#cut_through}" != "$group" ] && [ "$n" -gt 60000 ]; then n=60000; fi
  f="$out/$group.$n.out"
  packets=$(valgrind --tool=callgrind --callgrind-out-file="$f" \
    --toggle-collect='*Engine::process_batch' "$bin" "$group" "$n" "$WINDOWS" 2>"$out/log" |
    awk '$1 == "packets" { print $2 }')
  if [ -z "$packets" ]; then
    cat "$out/log" >&2
    exit 1
  fi
  # With collection on only inside process_batch, the file's total is its inclusive count.
  ir=$(awk '$1 == "totals:" || $1 == "summary:" { v = $2 } END { print v }' "$f")
  if [ -z "$ir" ] || [ "$ir" = 0 ]; then
    echo "callgrind counted nothing in process_batch for $group/$n (inlined? renamed?)" >&2
    exit 1
  fi
  awk -v g="$group" -v n="$n" -v p="$packets" -v ir="$ir" \
    'BEGIN { printf "| %s | %d | %d | %.0f | %.1f |\n", g, n, p, ir, ir / p }'
done
