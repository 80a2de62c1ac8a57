#!/usr/bin/env bash
# Runs the engine's translate bench and prints, as a Markdown table, the packet rate of every
# group at every EIP count: the median over criterion's samples (Mpps, from estimates.json),
# the spread of the per-sample rates (p10–p90 and min–max, Mpps; each sample of sample.json is
# `iters` windows taking `times` ns) and the ratio of each count's median to the 1-EIP median
# (on the largest count's row: 100,000 ÷ 1, or 60,000 ÷ 1 for cut-through).
#
#   scripts/bench-translate.sh [criterion args...]   e.g. scripts/bench-translate.sh nat_inbound
#   BENCH_SHORT=1   a short run (1 s warm-up, 2 s measurement, 20 samples per bench)
#   BENCH_TABLE_ONLY=1   no run: tabulate what target/criterion holds from earlier runs
#
# Only results written by this run are shown (unless BENCH_TABLE_ONLY=1).
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
since=0
if [ "${BENCH_TABLE_ONLY:-0}" != 1 ]; then
  short=()
  if [ "${BENCH_SHORT:-0}" = 1 ]; then
    short=(--warm-up-time 1 --measurement-time 2 --sample-size 20)
  fi
  since=$(date +%s)
  cargo bench --bench translate -- "$@" "${short[@]}"
fi

dir="${CARGO_TARGET_DIR:-target}/criterion"
python3 - "$dir" "$since" <<'PY'
import json, os, sys

root, since = sys.argv[1], float(sys.argv[2])
rows = {}  # group -> {eips: (median, p10, p90, lo, hi)}
for group in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    edir = os.path.join(root, group, "eips")
    if not os.path.isdir(edir):
        continue
    for n in os.listdir(edir):
        new = os.path.join(edir, n, "new")
        sample = os.path.join(new, "sample.json")
        if not n.isdigit() or not os.path.exists(sample) or os.path.getmtime(sample) < since:
            continue
        with open(os.path.join(new, "benchmark.json")) as f:
            tp = json.load(f).get("throughput") or {}
        per_iter = tp.get("Elements")
        if per_iter is None:
            continue
        with open(sample) as f:
            s = json.load(f)
        with open(os.path.join(new, "estimates.json")) as f:
            est = json.load(f)
        # Packets per microsecond = Mpps.
        rates = sorted(i * per_iter / t * 1e3 for i, t in zip(s["iters"], s["times"]) if t > 0)
        def pct(q):
            k = (len(rates) - 1) * q
            lo = int(k)
            hi = min(lo + 1, len(rates) - 1)
            return rates[lo] + (rates[hi] - rates[lo]) * (k - lo)
        median = per_iter / est["median"]["point_estimate"] * 1e3
        rows.setdefault(group, {})[int(n)] = (median, pct(0.1), pct(0.9), rates[0], rates[-1])

if not rows:
    sys.exit("no criterion results found under " + root)
print("| group | EIPs | Mpps (median) | p10–p90 | min–max | ÷ 1 EIP |")
print("|---|---:|---:|---:|---:|---:|")
for group in sorted(rows):
    sizes = rows[group]
    base = sizes.get(1)
    for n in sorted(sizes):
        m, p10, p90, lo, hi = sizes[n]
        ratio = f"{m / base[0]:.2f}" if base and n != 1 else ""
        print(f"| {group} | {n:,} | {m:.2f} | {p10:.2f}–{p90:.2f} | {lo:.2f}–{hi:.2f} | {ratio} |")
PY
