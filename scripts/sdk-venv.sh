#!/usr/bin/env bash
# Creates (idempotently) the Python venv of the SDK compatibility tests: the official Alibaba
# Cloud SDKs, unmodified, at the versions pinned in tests/sdk/requirements.txt.
#   EIPLAB_VENV=DIR   where the venv lives (default: target/sdk-venv)
#   PYTHON=python3    the interpreter to build it from
# Prints the venv's path on the last line. A second run with the same requirements and the same
# interpreter returns at once.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${EIPLAB_VENV:-$REPO/target/sdk-venv}"
REQ="$REPO/tests/sdk/requirements.txt"
PY="${PYTHON:-python3}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "sdk-venv: $PY not found: install Python 3.9 or newer (apt-get install python3 python3-venv)" >&2
  exit 1
fi

# The stamp: what the venv was built from. Same stamp, same venv: nothing to do.
want="$(
  {
    "$PY" -c 'import sys; print(sys.version)'
    cat "$REQ"
  } | sha256sum | cut -d' ' -f1
)"
stamp="$VENV/.eiplab-sdk-stamp"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$VENV"
  exit 0
fi

echo "sdk-venv: building $VENV from $REQ" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
if ! "$PY" -m venv "$VENV"; then
  echo "sdk-venv: '$PY -m venv' failed: install the venv module (apt-get install python3-venv)" >&2
  exit 1
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ" >&2
# Fail here, not in the middle of the tests, if an SDK does not import.
"$VENV/bin/python" - <<'PY'
import pytest
import alibabacloud_vpc20160428.client, alibabacloud_ecs20140526.client
import alibabacloud_tea_openapi.models
import aliyunsdkcore.client, aliyunsdkvpc.request.v20160428.AllocateEipAddressRequest
PY
echo "$want" >"$stamp"
echo "$VENV"
