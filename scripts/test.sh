#!/usr/bin/env bash
# The whole test suite: set-up, the pure-core build check, lints, unit/property/integration
# tests, a compile of the benchmarks, and a bounded fuzzing run of every fuzz target.
#   FUZZ_SECONDS=60 (per target; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== the pure core builds without the runtime (no tokio, libc, sockets, clock)"
cargo build --no-default-features --lib

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "== benchmarks compile"
cargo bench --no-run

echo "== fuzzing (${FUZZ_SECONDS:-60} s per target)"
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  FUZZ_REPLAY=1 ./scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-features 2>&1 | tee "$log"
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")

echo "== SDK compatibility tests (official Alibaba Cloud Python SDKs against eiplab up)"
cargo build --release
set +e
EIPLAB_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/eiplab" ./scripts/sdk-tests.sh 2>&1 | tee "$log.sdk"
sdk_rc=${PIPESTATUS[0]}
set -e
# The summary line: "sdk-tests: 40 passed, 1 failed, 2 errors in 30.1s".
read -r sdk_passed sdk_failed < <(awk '/^sdk-tests: / { for (i = 2; i <= NF; i++) { if ($(i+1) ~ /^passed/) p = $i; if ($(i+1) ~ /^(failed|error|errors)/) f += $i } } END { print p + 0, f + 0 }' "$log.sdk")
rm -f "$log.sdk"
passed=$((passed + ${sdk_passed:-0}))
failed=$((failed + ${sdk_failed:-0}))
if [ "$sdk_rc" != 0 ] && [ "${sdk_failed:-0}" = 0 ]; then failed=$((failed + 1)); fi

echo "== the first minute without root (eiplab demo, eiplab up choosing sim, eiplab exec)"
set +e
./scripts/unprivileged.sh "${CARGO_TARGET_DIR:-$PWD/target}/release/eiplab" 2>&1 | tee "$log.unpriv"
unpriv_rc=${PIPESTATUS[0]}
set -e
read -r u_passed u_failed < <(awk '/^unprivileged: / { print $2 + 0, $4 + 0 }' "$log.unpriv")
rm -f "$log.unpriv"
passed=$((passed + ${u_passed:-0}))
failed=$((failed + ${u_failed:-0}))
if [ "$unpriv_rc" != 0 ] && [ "${u_failed:-0}" = 0 ]; then failed=$((failed + 1)); fi
echo
echo "tests: ${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
