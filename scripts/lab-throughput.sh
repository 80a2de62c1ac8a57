#!/usr/bin/env bash
# End-to-end throughput of a running lab, against a baseline measured in the same run.
#
#   sudo scripts/lab-throughput.sh [SECONDS] [ROUNDS]
#
# Builds a one-EIP lab (NAT mode, bandwidth raised so the policer does not limit) under the
# prefix `tp$$-`, and a baseline of two namespaces joined by a plain veth pair (the kernel
# forwarding with no translation). Measures, ROUNDS times alternating, one iperf3 TCP stream
# internet -> guest through the EIP and the same over the veth pair, and prints the medians and
# their ratio. Everything lives in namespaces this script makes and removes; iperf3 runs for
# SECONDS (default 5) per measurement, so the whole script ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
p="tp$$-"
bin=target/release/eiplab
cargo build --release -q
lab=$(mktemp -d)
sed 's/^bandwidth = .*/bandwidth = 100000/' examples/one-eip.toml >"$lab/lab.toml"
up_pid=""
cleanup() {
  [ -n "$up_pid" ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  ip netns del "${p}va" 2>/dev/null || true
  ip netns del "${p}vb" 2>/dev/null || true
  "$bin" down "$lab/lab.toml" --prefix "$p" >/dev/null 2>&1 || true
  rm -rf "$lab"
}
trap cleanup EXIT

"$bin" up "$lab/lab.toml" --prefix "$p" --api-listen 127.0.0.1:0 >"$lab/out" 2>"$lab/err" &
up_pid=$!
for _ in $(seq 100); do grep -q 'eiplab: ready' "$lab/out" && break; sleep 0.1; done
grep -q 'eiplab: ready' "$lab/out" || { cat "$lab/err"; exit 1; }

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

lab_r=(); veth_r=()
for _ in $(seq "$rounds"); do
  lab_r+=("$(measure "${p}i-web" "${p}internet" 198.51.100.10)")
  veth_r+=("$(measure "${p}vb" "${p}va" 192.0.2.2)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${lab_r[@]}"); mv=$(median "${veth_r[@]}")
echo "eiplab NAT (TUN, GSO whole) Gbit/s: ${lab_r[*]}  median $ml"
echo "veth, no translation       Gbit/s: ${veth_r[*]}  median $mv"
python3 -c "print('ratio eiplab/veth: %.2f' % ($ml / $mv))"
"$bin" status --endpoint "$(sed -n 's|.*api listening on http://||p' "$lab/err")" | tail -4
