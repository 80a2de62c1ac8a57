#!/usr/bin/env bash
# eiplab's dataplane next to the Linux kernel doing the same 1:1 NAT, in one run.
#
#   sudo scripts/bench-netns.sh [ROUNDS] [SECONDS]
#   sudo COMPARE=/path/to/other/eiplab scripts/bench-netns.sh      # a second build, same rounds
#                                                                  # (its options: COMPARE_ARGS)
#   sudo ONLY=tcp1_fwd,udp64 scripts/bench-netns.sh                # a subset of the tests
#   sudo UP_ARGS="--busy-poll-us 0" scripts/bench-netns.sh         # options for `eiplab up`
#
# Two setups with the same addresses as a one-EIP lab (examples/one-eip.toml, NAT mode, the
# policer raised out of the way):
#   kernel  three namespaces joined by veth pairs: internet (203.0.113.1/24) - gateway - guest
#           (10.0.1.10/24); the gateway forwards, and nftables DNATs 198.51.100.10 to 10.0.1.10
#           and SNATs the guest's replies back (conntrack, as a user would set it up);
#   eiplab  `eiplab up` on the same file: the internet and guest namespaces joined by TUN
#           devices to the userspace gateway.
# Every test runs ROUNDS times (default 5), kernel and eiplab alternating, SECONDS each (default
# 4), and the medians are compared:
#   tcp1_fwd tcp1_rev tcp4_fwd tcp4_rev  iperf3 TCP, 1 and 4 streams, internet->guest (fwd) and
#                                        guest->internet (rev, iperf3 -R), Gbit/s received
#   udp64 udp1400                        iperf3 UDP, unlimited rate, one sender: packets/s
#                                        received and loss
#   flood                                three UDP 64-byte senders at once: the most small
#                                        packets/s the path delivers
#   ping                                 round trip, `ping -i 0.001`, median and 99th percentile
# and, for the UDP tests, CPU time per million packets delivered: of the eiplab process (from
# /proc/PID/stat; a figure that stays meaningful when iperf3 is the bottleneck) and of the whole
# machine (from /proc/stat, all non-idle time: the only fair figure for the kernel, whose NAT
# runs in softirq context and has no process).
#
# Prints a table of medians and eiplab/kernel ratios and writes them as JSON (OUT, default
# target/bench-netns.json). Everything lives in namespaces this script makes (prefix bn<pid>-)
# and removes on success and failure; every tool runs under a timeout, so it ends by itself. A
# SIGINT/SIGTERM is acted on when the running measurement ends (at most SECONDS + 15 s).
# Needs root, iperf3, nft (Debian: nftables), ping.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-4}
p="bn$$-"
bin=${EIPLAB_BIN:-target/release/eiplab}
other=${COMPARE:-}
out=${OUT:-target/bench-netns.json}
only=${ONLY:-tcp1_fwd,tcp1_rev,tcp4_fwd,tcp4_rev,udp64,udp1400,flood,ping}
for t in iperf3 nft ping python3; do
  command -v "$t" >/dev/null || { echo "bench-netns: needs $t (apt-get install -y iperf3 nftables iputils-ping python3)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "bench-netns: needs root (namespaces, TUN devices)" >&2; exit 2; }
[ -n "${EIPLAB_BIN:-}" ] || cargo build --release -q
eip=198.51.100.10
guest=10.0.1.10
work=$(mktemp -d)
sed 's/^bandwidth = .*/bandwidth = 100000/' examples/one-eip.toml >"$work/lab.toml"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  for n in kinet kgw kguest; do ip netns del "${p}$n" 2>/dev/null || true; done
  "$bin" down "$work/lab.toml" --prefix "${p}e-" >/dev/null 2>&1 || true
  [ -z "$other" ] || "$other" down "$work/lab.toml" --prefix "${p}o-" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the kernel reference ---------------------------------------------------------------
for n in kinet kgw kguest; do ip netns add "${p}$n"; done
ip link add ki netns "${p}kinet" type veth peer name gi netns "${p}kgw"
ip link add kg netns "${p}kguest" type veth peer name gg netns "${p}kgw"
for n in kinet kgw kguest; do ip -n "${p}$n" link set lo up; done
ip -n "${p}kinet" addr add 203.0.113.1/24 dev ki
ip -n "${p}kinet" link set ki up
ip -n "${p}kinet" route add default via 203.0.113.254
ip -n "${p}kgw" addr add 203.0.113.254/24 dev gi
ip -n "${p}kgw" addr add 10.0.1.253/24 dev gg
ip -n "${p}kgw" link set gi up
ip -n "${p}kgw" link set gg up
ip netns exec "${p}kgw" sysctl -qw net.ipv4.ip_forward=1
ip -n "${p}kguest" addr add "$guest/24" dev kg
ip -n "${p}kguest" link set kg up
ip -n "${p}kguest" route add default via 10.0.1.253
ip netns exec "${p}kgw" nft -f - <<EOF
table ip eipnat {
  chain pre { type nat hook prerouting priority dstnat; ip daddr $eip dnat to $guest; }
  chain post { type nat hook postrouting priority srcnat; ip saddr $guest oifname "gi" snat to $eip; }
}
EOF

# --- the labs ------------------------------------------------------------------------------
start() { # binary prefix tag
  # shellcheck disable=SC2086 # UP_ARGS is a list of options
  "$1" up "$work/lab.toml" --prefix "$2" --api-listen 127.0.0.1:0 ${4:-} >"$work/$3.out" 2>"$work/$3.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do grep -q 'eiplab: ready' "$work/$3.out" && break; sleep 0.1; done
  grep -q 'eiplab: ready' "$work/$3.out" || { cat "$work/$3.err" >&2; exit 1; }
  echo "$pid" >"$work/$3.pid"
}
start "$bin" "${p}e-" e "${UP_ARGS:-}"
[ -z "$other" ] || start "$other" "${p}o-" o "${COMPARE_ARGS:-}"

# target -> "client-ns server-ns address pid"
declare -A T
T[kernel]="${p}kinet ${p}kguest $eip -"
T[eiplab]="${p}e-internet ${p}e-i-web $eip $(cat "$work/e.pid")"
targets=(kernel eiplab)
if [ -n "$other" ]; then
  T[other]="${p}o-internet ${p}o-i-web $eip $(cat "$work/o.pid")"
  targets+=(other)
fi

# Both sides answer before measuring (the lab's first packets may meet an empty ARP table).
for t in "${targets[@]}"; do
  read -r cns sns addr _ <<<"${T[$t]}"
  ip netns exec "$cns" ping -c 3 -i 0.2 -W 1 "$addr" >/dev/null || { echo "bench-netns: $t does not answer ping" >&2; exit 1; }
done

cpu_proc() { [ "$1" = - ] && echo 0 || awk '{print $14+$15}' "/proc/$1/stat"; }
cpu_all() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# One iperf3 run; prints the client's JSON into $work/r.json, CPU jiffies into $work/cpu.
iperf() { # target port args...
  local t=$1 port=$2; shift 2
  read -r cns sns addr pid <<<"${T[$t]}"
  timeout $((secs + 15)) ip netns exec "$sns" iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  local s=$!
  sleep 0.3
  local p0 a0 p1 a1
  p0=$(cpu_proc "$pid"); a0=$(cpu_all)
  timeout $((secs + 15)) ip netns exec "$cns" iperf3 -c "$addr" -p "$port" -t "$secs" -J "$@" >"$work/r.json" 2>/dev/null || true
  p1=$(cpu_proc "$pid"); a1=$(cpu_all)
  wait "$s" 2>/dev/null || true
  echo "$((p1 - p0)) $((a1 - a0))" >"$work/cpu"
}

record() { echo "$1 $2 $3" >>"$work/results"; } # test target json-value

run_test() { # test target
  local test=$1 t=$2
  case $test in
    tcp1_fwd) iperf "$t" 5201 ;;
    tcp1_rev) iperf "$t" 5201 -R ;;
    tcp4_fwd) iperf "$t" 5201 -P 4 ;;
    tcp4_rev) iperf "$t" 5201 -P 4 -R ;;
    udp64) iperf "$t" 5201 -u -b 0 -l 64 ;;
    udp1400) iperf "$t" 5201 -u -b 0 -l 1400 ;;
  esac
  case $test in
    tcp*)
      record "$test" "$t" "$(python3 -c '
import json,sys
try: print("{\"gbps\": %.3f}" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))
except Exception: print("null")' "$work/r.json")" ;;
    udp*)
      record "$test" "$t" "$(python3 -c '
import json,sys
hz=100.0
try:
    s=json.load(open(sys.argv[1]))["end"]["sum"]
    got=s["packets"]-s["lost_packets"]
    pj,aj=map(int,open(sys.argv[2]).read().split())
    per=lambda j: (j/hz)/(got/1e6) if got else None
    print(json.dumps({"pps": got/s["seconds"], "loss_pct": s["lost_percent"],
        "gw_cpu_s_per_mpkt": per(pj) if sys.argv[3]!="kernel" else None,
        "machine_cpu_s_per_mpkt": per(aj)}))
except Exception: print("null")' "$work/r.json" "$work/cpu" "$t")" ;;
    flood)
      read -r cns sns addr pid <<<"${T[$t]}"
      local ss=() k
      for k in 1 2 3; do
        timeout $((secs + 15)) ip netns exec "$sns" iperf3 -s -1 -p $((5210 + k)) >/dev/null 2>&1 &
        ss+=($!)
      done
      sleep 0.3
      local p0 a0 p1 a1 cs=()
      p0=$(cpu_proc "$pid"); a0=$(cpu_all)
      for k in 1 2 3; do
        timeout $((secs + 15)) ip netns exec "$cns" iperf3 -c "$addr" -p $((5210 + k)) -t "$secs" -J -u -b 0 -l 64 >"$work/f$k.json" 2>/dev/null &
        cs+=($!)
      done
      wait "${cs[@]}" 2>/dev/null || true
      p1=$(cpu_proc "$pid"); a1=$(cpu_all)
      wait "${ss[@]}" 2>/dev/null || true
      record "$test" "$t" "$(python3 -c '
import json,sys
hz=100.0
try:
    got=0; secs=0
    for f in sys.argv[1:4]:
        s=json.load(open(f))["end"]["sum"]; got+=s["packets"]-s["lost_packets"]; secs=max(secs,s["seconds"])
    pj,aj=int(sys.argv[4]),int(sys.argv[5])
    per=lambda j: (j/hz)/(got/1e6) if got else None
    print(json.dumps({"pps": got/secs, "gw_cpu_s_per_mpkt": per(pj) if sys.argv[6]!="kernel" else None,
        "machine_cpu_s_per_mpkt": per(aj)}))
except Exception: print("null")' "$work/f1.json" "$work/f2.json" "$work/f3.json" $((p1 - p0)) $((a1 - a0)) "$t")" ;;
    ping)
      read -r cns sns addr pid <<<"${T[$t]}"
      timeout 30 ip netns exec "$cns" ping -c 1000 -i 0.001 -W 1 "$addr" >"$work/ping" 2>/dev/null || true
      record "$test" "$t" "$(python3 -c '
import json,re,sys
v=sorted(float(x) for x in re.findall(r"time=([0-9.]+) ms", open(sys.argv[1]).read()))
if not v: print("null")
else: print(json.dumps({"median_us": v[len(v)//2]*1000, "p99_us": v[min(len(v)-1, int(len(v)*0.99))]*1000, "replies": len(v)}))' "$work/ping")" ;;
  esac
}

: >"$work/results"
IFS=, read -ra tests <<<"$only"
for r in $(seq "$rounds"); do
  for test in "${tests[@]}"; do
    for t in "${targets[@]}"; do
      run_test "$test" "$t"
    done
  done
  echo "bench-netns: round $r of $rounds done" >&2
done

mkdir -p "$(dirname "$out")"
python3 - "$work/results" "$out" "$rounds" "$secs" "${targets[@]}" <<'EOF'
import json, platform, os, statistics, sys
path, out, rounds, secs, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
runs = {}
for line in open(path):
    test, target, val = line.split(" ", 2)
    runs.setdefault(test, {}).setdefault(target, []).append(json.loads(val))
def med(vals, key):
    xs = [v[key] for v in vals if v and v.get(key) is not None]
    return statistics.median(xs) if xs else None
metrics = {"tcp": [("gbps", "Gbit/s", True)],
           "udp": [("pps", "packets/s received", True), ("loss_pct", "loss %", False),
                   ("gw_cpu_s_per_mpkt", "gateway CPU s per Mpkt", False),
                   ("machine_cpu_s_per_mpkt", "machine CPU s per Mpkt", False)],
           "flood": [("pps", "packets/s received", True),
                     ("gw_cpu_s_per_mpkt", "gateway CPU s per Mpkt", False),
                     ("machine_cpu_s_per_mpkt", "machine CPU s per Mpkt", False)],
           "ping": [("median_us", "round trip median µs", False), ("p99_us", "round trip p99 µs", False)]}
result = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
          "rounds": rounds, "seconds": secs, "tests": {}}
rows = []
for test in runs:
    kind = "tcp" if test.startswith("tcp") else "udp" if test.startswith("udp") else test
    for key, label, _ in metrics[kind]:
        m = {t: med(runs[test].get(t, []), key) for t in targets}
        entry = {"unit": label, "median": m,
                 "runs": {t: [v.get(key) if v else None for v in runs[test].get(t, [])] for t in targets}}
        k = m.get("kernel")
        for t in targets[1:]:
            if m.get(t) is not None and k:
                entry[f"{t}/kernel"] = m[t] / k
            if kind == "ping" and m.get(t) is not None and k is not None:
                entry[f"{t}-kernel"] = m[t] - k
        result["tests"].setdefault(test, {})[key] = entry
        rows.append((test, label, m, entry))
json.dump(result, open(out, "w"), indent=1)
fmt = lambda v: "-" if v is None else ("%.3g" % v if abs(v) < 100 else "%.0f" % v)
hdr = ["test", "metric"] + targets + [f"{t}/kernel" for t in targets[1:]]
print(" | ".join(hdr))
for test, label, m, e in rows:
    cells = [test, label] + [fmt(m.get(t)) for t in targets]
    for t in targets[1:]:
        r = e.get(f"{t}/kernel")
        d = e.get(f"{t}-kernel")
        cells.append(("%.2f" % r if r is not None else "-") + (" (+%.0f µs)" % d if d is not None else ""))
    print(" | ".join(cells))
print(f"(medians of {rounds} rounds of {secs} s; {os.cpu_count()} CPUs, kernel {platform.release()}; JSON: {out})")
EOF
