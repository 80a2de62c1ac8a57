#!/usr/bin/env bash
# How a lab's start, size and stop grow with the number of instances.
#
#   sudo scripts/lab-scale.sh [N ...]            (default: 10 100 400 1000)
#   IDLE_SECONDS=20 sudo scripts/lab-scale.sh 1  (also: CPU of an idle lab over that long)
#   BACKEND=sim scripts/lab-scale.sh 1000        (the in-process backend; no root needed)
#
# For each N: a lab file with N instances (one ENI each, one EIP each in NAT mode, on vSwitches
# of 10.0.0.0/8 and an EIP pool in 198.18.0.0/15, the benchmarking range of RFC 2544) is
# started with `eiplab up`; the script reports the seconds until `eiplab: ready`, the gateway's
# resident memory and thread count once ready, the seconds from SIGTERM until the process has
# exited with every namespace name gone, and the seconds until the kernel has also freed them
# (it removes namespaces in the background; this watches the count of `net_namespace` objects
# in /proc/slabinfo and takes the time of its last fall, once it has held still for 1.5 s: an
# estimate, since the slab count also moves with other namespaces and its own caching). With
# IDLE_SECONDS set, it also counts the CPU time
# (user + system ticks of the `eiplab up` process) the ready lab uses while nothing is sent.
# Everything lives in namespaces under the prefix `sc$$-`, removed on success and failure;
# every wait has a deadline. Once ready, the last instance fetches the echo service
# (`eiplab exec i-LAST -- curl -s http://203.0.113.1/`) and must be answered with its own EIP:
# a lab that started but forwards nothing does not count. With BACKEND=sim there are no
# namespaces: teardown_s is the time to exit, kernel_s is not measured.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10 100 400 1000)
bin=${EIPLAB_BIN:-target/release/eiplab}
[ -n "${EIPLAB_BIN:-}" ] || cargo build --release -q
idle=${IDLE_SECONDS:-0}
backend=${BACKEND:-netns}
work=$(mktemp -d)
p="sc$$-"
up_pid=""
cleanup() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  [ "$backend" = netns ] && [ -f "$work/lab.toml" ] && "$bin" down "$work/lab.toml" --prefix "$p" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A lab of $1 instances on /22 vSwitches (1,000 hosts each), one NAT EIP per instance.
make_lab() {
  python3 - "$1" >"$work/lab.toml" <<'EOF'
import sys, ipaddress
n = int(sys.argv[1])
pool = ipaddress.ip_network("198.18.0.0/15")
out = ['region = "cn-shanghai"',
       '[internet]', 'cidr = "203.0.113.0/24"', 'eip_pool = "198.18.0.0/15"',
       '[api]', 'listen = "127.0.0.1:0"', 'transition_ms = 0']
per = 1000
for v in range((n + per - 1) // per):
    out += ['[[vswitch]]', f'id = "vsw-{v}"', 'zone = "cn-shanghai-b"', f'cidr = "10.{v}.0.0/22"']
for i in range(n):
    v, k = divmod(i, per)
    ip = ipaddress.ip_address(f"10.{v}.0.0") + 10 + k
    out += ['[[instance]]', f'id = "i-{i}"', f'vswitch = "vsw-{v}"',
            f'enis = [{{ id = "eni-{i}", private_ips = ["{ip}"] }}]']
for i in range(n):
    out += ['[[eip]]', f'allocation_id = "eip-{i}"', f'address = "{pool[i + 1]}"',
            '[[association]]', f'allocation_id = "eip-{i}"', f'instance_id = "i-{i}"']
print("\n".join(out))
EOF
}

now() { date +%s.%N; }
field() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$up_pid/status"; }
count_ns() { ls /run/netns 2>/dev/null | grep -c "^$p" || true; }
kernel_ns() { awk '$1 == "net_namespace" { print $2 }' /proc/slabinfo 2>/dev/null || echo 0; }

printf '%-10s %8s %8s %8s %11s %10s\n' instances ready_s rss_MB threads teardown_s kernel_s
for n in "${sizes[@]}"; do
  make_lab "$n"
  : >"$work/out"
  t0=$(now)
  "$bin" up "$work/lab.toml" --backend "$backend" --prefix "$p" --api-listen 127.0.0.1:0 \
    >"$work/out" 2>"$work/err" &
  up_pid=$!
  deadline=$(( $(date +%s) + 300 ))
  until grep -q 'eiplab: ready' "$work/out"; do
    if ! kill -0 "$up_pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "lab of $n instances did not become ready:" >&2; tail -20 "$work/err" >&2; exit 1
    fi
    sleep 0.01
  done
  t1=$(now)
  # It forwards: the last instance is seen as its EIP.
  endpoint=$(sed -n 's|^eiplab: api listening on http://||p' "$work/err" | head -n 1)
  want=$(python3 -c "import ipaddress; print(ipaddress.ip_network('198.18.0.0/15')[$n])")
  got=$("$bin" exec --prefix "$p" --endpoint "$endpoint" "i-$((n - 1))" -- curl -s -m 5 http://203.0.113.1/ || true)
  if [ "$got" != "$want" ]; then
    echo "lab of $n instances: i-$((n - 1)) was seen as '${got}', not its EIP $want" >&2; exit 1
  fi
  sleep 1
  rss=$(( $(field VmRSS) / 1024 ))
  threads=$(field Threads)
  if [ "$idle" != 0 ]; then
    # Clock ticks (user + system, /proc/PID/stat), and for finer grain the nanoseconds on CPU
    # and the context switches of every thread (/proc/PID/task/*/schedstat and status).
    ticks() { awk '{ print $14 + $15 }' "/proc/$up_pid/stat"; }
    cpu_ns() { cat /proc/"$up_pid"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
    switches() { cat /proc/"$up_pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
    hz=$(getconf CLK_TCK)
    a=$(ticks); an=$(cpu_ns); as=$(switches)
    sleep "$idle"
    b=$(ticks); bn=$(cpu_ns); bs=$(switches)
    python3 -c "print('idle %d instances, %s s: %d ticks of 1/%s s = %.3f%% of a core; %.1f ms on CPU (%.4f%%); %d context switches' % ($n, $idle, $b - $a, $hz, 100.0 * ($b - $a) / $hz / $idle, ($bn - $an) / 1e6, 100.0 * ($bn - $an) / 1e9 / $idle, $bs - $as))" >&2
  fi
  t2=$(now)
  kill -TERM "$up_pid"
  deadline=$(( $(date +%s) + 300 ))
  while kill -0 "$up_pid" 2>/dev/null || [ "$(count_ns)" != 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "teardown of $n instances did not finish" >&2; exit 1; }
    sleep 0.01
  done
  t3=$(now)
  wait "$up_pid" 2>/dev/null || true
  up_pid=""
  last=$(kernel_ns); t4=$t3; still=0
  [ "$backend" = netns ] || still=30
  while [ "$still" -lt 30 ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 0.05
    c=$(kernel_ns)
    if [ "$c" -lt "$last" ]; then t4=$(now); still=0; else still=$((still + 1)); fi
    last=$c
  done
  k=$(python3 -c "print('%.2f' % ($t4 - $t2))"); [ "$backend" = netns ] || k=-
  python3 -c "print('%-10d %8.2f %8d %8d %11.2f %10s' % ($n, $t1 - $t0, $rss, $threads, $t3 - $t2, '$k'))"
done
