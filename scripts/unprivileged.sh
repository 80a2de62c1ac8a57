#!/usr/bin/env bash
# The first minute without root, as someone on a laptop or in an unprivileged container meets
# it: `eiplab demo` must exit 0, and `eiplab up` (backend auto) must choose the sim backend,
# say so on its first line, and answer `eiplab exec … -- curl` with the guest's EIP.
#
#   scripts/unprivileged.sh path/to/eiplab
#
# Run as root (CI), the binary is copied into a world-readable directory and run as nobody
# (setpriv from util-linux); run as anyone else, it runs as that user. Prints one line per
# check and "unprivileged: N passed, M failed"; exits non-zero when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/unprivileged.sh path/to/eiplab}

dir=$(mktemp -d /tmp/eiplab-unpriv.XXXXXX)
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null; fi
  rm -rf "$dir"
}
trap cleanup EXIT
cp "$bin" "$dir/eiplab"
cp examples/one-eip.toml "$dir/one-eip.toml"
chmod 755 "$dir" "$dir/eiplab"
chmod 644 "$dir/one-eip.toml"
if [ "$(id -u)" = 0 ]; then
  as=(setpriv --reuid=65534 --regid=65534 --clear-groups)
else
  as=()
fi
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

echo "== eiplab demo as $( [ ${#as[@]} = 0 ] && id -un || echo nobody )"
if (cd "$dir" && timeout 120 "${as[@]}" ./eiplab demo); then
  ok "eiplab demo exits 0"
else
  fail "eiplab demo exits 0"
fi

echo "== eiplab up (backend auto) without root, then eiplab exec"
# A free port: the kernel's pick for a socket bound to port 0.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$dir" && exec "${as[@]}" ./eiplab up one-eip.toml --api-listen "127.0.0.1:$port" \
  > "$dir/up.out" 2> "$dir/up.err") &
up_pid=$!
for _ in $(seq 1 100); do
  grep -q '^eiplab: ready' "$dir/up.out" 2>/dev/null && break
  sleep 0.1
done
first=$(head -n 1 "$dir/up.err")
case "$first" in
  "eiplab: backend sim: in-process hosts, because "*) ok "the first line says sim, and why: $first" ;;
  *) fail "the first line says sim, and why: got: $first"; cat "$dir/up.err" ;;
esac
got=$(cd "$dir" && timeout 20 "${as[@]}" ./eiplab exec --endpoint "127.0.0.1:$port" i-web -- curl -s http://203.0.113.1/)
if [ "$got" = "198.51.100.10" ]; then
  ok "eiplab exec i-web -- curl -s http://203.0.113.1/ answers the EIP ($got)"
else
  fail "eiplab exec i-web -- curl -s http://203.0.113.1/ answers the EIP: got ${got:-nothing}"
fi
hint=$(grep -m1 '  try: eiplab exec' "$dir/up.out" | sed 's/^  try: //; s/ *#.*//')
if [ -n "$hint" ] && got=$(cd "$dir" && timeout 20 "${as[@]}" ./$hint) && [ "$got" = "198.51.100.10" ]; then
  ok "the first hint after ready works as printed: $hint"
else
  fail "the first hint after ready works as printed: ${hint:-no hint} -> ${got:-nothing}"
fi
kill "$up_pid"
wait "$up_pid"
rc=$?
up_pid=
if [ "$rc" = 0 ] && grep -q '^eiplab: stopped' "$dir/up.err"; then
  ok "SIGTERM stops it cleanly"
else
  fail "SIGTERM stops it cleanly (exit $rc)"; cat "$dir/up.err"
fi

echo "unprivileged: $passed passed, $failed failed"
[ "$failed" = 0 ]
