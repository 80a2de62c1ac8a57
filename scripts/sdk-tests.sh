#!/usr/bin/env bash
# The SDK compatibility tests: the official Alibaba Cloud Python SDKs, unmodified, against
# `eiplab up --backend none` (no root needed). Each test starts its own server on a free port
# with its own state directory.
#   EIPLAB_BIN=PATH   the binary under test (default target/release/eiplab, or under
#                     $CARGO_TARGET_DIR; built if missing)
#   EIPLAB_VENV=DIR   the venv (see scripts/sdk-venv.sh)
#   extra arguments go to pytest: scripts/sdk-tests.sh -k recovery -x, or
#   scripts/sdk-tests.sh tests/sdk/test_auth.py -x (paths replace the default tests/sdk)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

VENV="$("$REPO/scripts/sdk-venv.sh" | tail -n 1)"

BIN="${EIPLAB_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/eiplab}"
if [ ! -x "$BIN" ]; then
  if [ -n "${EIPLAB_BIN:-}" ]; then
    echo "sdk-tests: EIPLAB_BIN=$BIN is not an executable file" >&2
    exit 1
  fi
  echo "sdk-tests: $BIN missing: cargo build --release" >&2
  cargo build --release
fi
export EIPLAB_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# Arguments starting with a path (tests/sdk/test_auth.py::...) replace the default selection.
targets=("$REPO/tests/sdk")
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then targets=(); fi
"$VENV/bin/python" -m pytest "${targets[@]}" -p no:cacheprovider -q -rfE "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
# pytest's own closing line ("N passed, N failed in Ts"), repeated last.
summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|deselected)|no tests ran' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')"
echo "sdk-tests: ${summary:-pytest printed no summary (exit $rc)}"
exit "$rc"
