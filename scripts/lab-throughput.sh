#!/usr/bin/env bash
# End-to-end throughput of a running lab, against a baseline measured in the same run.
#
#   sudo scripts/lab-throughput.sh [SECONDS] [ROUNDS]
#   sudo COMPARE=/path/to/other/eiplab scripts/lab-throughput.sh [SECONDS] [ROUNDS]
#
# Builds a one-EIP lab (NAT mode, bandwidth raised so the policer does not limit) under the
# prefix `tp$$-`, and a baseline of two namespaces joined by a plain veth pair (the kernel
# forwarding with no translation). Measures, ROUNDS times alternating, one iperf3 TCP stream
# internet -> guest through the EIP and the same over the veth pair, and prints the medians and
# their ratio. With COMPARE set, a second lab run by that binary (say, a build of an earlier
# commit) is measured in the same rounds, under the prefix `tq$$-` and its own API port.
# Everything lives in namespaces this script makes and removes; iperf3 runs for SECONDS
# (default 5) per measurement, so the whole script ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
p="tp$$-"
q="tq$$-"
bin=${EIPLAB_BIN:-target/release/eiplab}
[ -n "${EIPLAB_BIN:-}" ] || cargo build --release -q
other=${COMPARE:-}
lab=$(mktemp -d)
sed 's/^bandwidth = .*/bandwidth = 100000/' examples/one-eip.toml >"$lab/lab.toml"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  ip netns del "${p}va" 2>/dev/null || true
  ip netns del "${p}vb" 2>/dev/null || true
  "$bin" down "$lab/lab.toml" --prefix "$p" >/dev/null 2>&1 || true
  [ -z "$other" ] || "$other" down "$lab/lab.toml" --prefix "$q" >/dev/null 2>&1 || true
  rm -rf "$lab"
}
trap cleanup EXIT

start() { # binary prefix tag
  "$1" up "$lab/lab.toml" --prefix "$2" --api-listen 127.0.0.1:0 >"$lab/$3.out" 2>"$lab/$3.err" &
  pids+=($!)
  for _ in $(seq 300); do grep -q 'eiplab: ready' "$lab/$3.out" && break; sleep 0.1; done
  grep -q 'eiplab: ready' "$lab/$3.out" || { cat "$lab/$3.err"; exit 1; }
}
start "$bin" "$p" a
[ -z "$other" ] || start "$other" "$q" b

ip netns add "${p}va"
ip netns add "${p}vb"
ip link add "${p}a" netns "${p}va" type veth peer name "${p}b" netns "${p}vb"
ip -n "${p}va" addr add 192.0.2.1/24 dev "${p}a"
ip -n "${p}vb" addr add 192.0.2.2/24 dev "${p}b"
ip -n "${p}va" link set "${p}a" up
ip -n "${p}vb" link set "${p}b" up

measure() { # ns-server ns-client address
  ip netns exec "$1" iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
  local s=$!
  sleep 0.3
  ip netns exec "$2" iperf3 -c "$3" -p 5299 -t "$secs" -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
  wait "$s" 2>/dev/null || true
}

lab_r=(); veth_r=(); other_r=()
for _ in $(seq "$rounds"); do
  lab_r+=("$(measure "${p}i-web" "${p}internet" 198.51.100.10)")
  [ -z "$other" ] || other_r+=("$(measure "${q}i-web" "${q}internet" 198.51.100.10)")
  veth_r+=("$(measure "${p}vb" "${p}va" 192.0.2.2)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${lab_r[@]}"); mv=$(median "${veth_r[@]}")
echo "eiplab NAT ($bin) Gbit/s: ${lab_r[*]}  median $ml"
if [ -n "$other" ]; then
  mo=$(median "${other_r[@]}")
  echo "eiplab NAT ($other) Gbit/s: ${other_r[*]}  median $mo"
fi
echo "veth, no translation Gbit/s: ${veth_r[*]}  median $mv"
python3 -c "print('ratio eiplab/veth: %.2f' % ($ml / $mv))"
[ -z "$other" ] || python3 -c "print('ratio other/veth: %.2f; eiplab/other: %.2f' % ($mo / $mv, $ml / $mo))"
"$bin" status --endpoint "$(sed -n 's|.*api listening on http://||p' "$lab/a.err")" | tail -4
