#!/usr/bin/env bash
# Fuzzes eiplab with cargo-fuzz: every target in fuzz/ for SECONDS (default 60) each,
# starting from the committed seeds. Exits non-zero if any target crashes.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS    targets to run (default: wire engine alg)
#   FUZZ_SANITIZER  cargo-fuzz sanitizer (default: address; "none" runs ~5x faster, and the
#                   crate has no unsafe code)
#   FUZZ_REPLAY=1   first replay fuzz/regressions/<target>/* and fail if one still crashes
#
# The corpus grows in fuzz/corpus/<target>/ (git-ignored); crashes land in
# fuzz/artifacts/<target>/, and each run's full log in fuzz/artifacts/<target>/last-run.log.
set -uo pipefail

secs="${1:-60}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "== installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal || exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi

read -r -a targets <<<"${FUZZ_TARGETS:-wire engine alg}"
sanitizer=(-s "${FUZZ_SANITIZER:-address}")

# Builds every target up front, so that build time does not eat into fuzzing time.
echo "== building fuzz targets (sanitizer ${FUZZ_SANITIZER:-address})"
for t in "${targets[@]}"; do
    cargo +nightly fuzz build "${sanitizer[@]}" "$t" || exit 1
done

failed=0
summary=()

# Sums up a libFuzzer log: its last status line ("#RUNS ... cov: N ft: N corp: N/SIZE ...").
stats() {
    local line
    line="$(grep -aE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$1" | tail -n 1)"
    local runs cov ft corp eps
    runs="$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$line")"
    cov="$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$line")"
    ft="$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$line")"
    corp="$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$line")"
    eps="$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$line")"
    echo "${runs:-?} runs, ${eps:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
}

if [ "${FUZZ_REPLAY:-0}" = 1 ]; then
    for t in "${targets[@]}"; do
        shopt -s nullglob
        files=(fuzz/regressions/"$t"/*)
        shopt -u nullglob
        [ "${#files[@]}" -eq 0 ] && continue
        mkdir -p "fuzz/artifacts/$t"
        log="fuzz/artifacts/$t/replay.log"
        if cargo +nightly fuzz run "${sanitizer[@]}" "$t" "${files[@]}" >"$log" 2>&1; then
            summary+=("$t: ${#files[@]} regression input(s) pass")
        else
            tail -n 60 "$log"
            summary+=("$t: a regression input still crashes (see $log)")
            failed=1
        fi
    done
fi

for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -f fuzz/seeds/"$t"/* "$corpus"/
    fi
    log="fuzz/artifacts/$t/last-run.log"
    echo "== fuzzing $t for ${secs}s"
    cargo +nightly fuzz run "${sanitizer[@]}" "$t" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        summary+=("$t: ok, $(stats "$log")")
    else
        echo "---- $t crashed (exit $rc); end of $log:"
        tail -n 80 "$log"
        artifact="$(grep -aoE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/Test unit written to //')"
        summary+=("$t: CRASH (exit $rc) after $(stats "$log"); input: ${artifact:-see $log}")
        failed=1
    fi
done

echo "== fuzz summary"
for s in "${summary[@]}"; do
    echo "$s"
done
exit "$failed"
