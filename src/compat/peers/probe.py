"""What every eiplab compat probe shares (written beside them, imported by each): the
command line of the probe contract, its one JSON line, and ending a child it started.

Roles: `server --listen IP --port P --dir D` and
`client --server IP --port P --bind IP --dir D --timeout S [--variant V]`.

A server prints `{"event": "ready"}` once it takes traffic, runs until SIGTERM, ends every
child it started, prints `{"event": "summary", ...}` with what it saw and exits. A client
prints one JSON line at the end, read by `src/compat/judge.rs` (`ClientReport`): `ok` (the
whole job done end to end), `steps` (name, ok, detail), `detail` (one sentence), `named`
(addresses the far end's payload told it to use: where, address, port), `sent` (addresses it
put in its own payload), `peer_ignored_address`; or `{"not_tested": "why"}` with exit status 3
when its tool is missing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys


def emit(obj):
    """One JSON line on stdout, flushed (the runner reads it while the probe runs)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def args(description, port, variant=None, bind_required=True, bind_help=None):
    """The contract's command line; `port` is the protocol's well-known port."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, default=port)
    s.add_argument("--dir", required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=port)
    c.add_argument("--bind", required=bind_required, default=None, help=bind_help)
    c.add_argument("--dir", required=True)
    c.add_argument("--timeout", type=float, default=15.0)
    c.add_argument("--variant", default=variant)
    return p.parse_args()


def end_child(proc, grace=1.0):
    """End one child we started, by its pid, then its own process group (children started
    with start_new_session lead one; dnsmasq forks a helper per TCP connection into it)."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
