#!/usr/bin/python3
"""TFTP probe for `eiplab compat`.

server: tftpd-hpa (`in.tftpd -L -s <root> -c -a <listen>:<port> -u root`) in the foreground,
        serving probe.bin: 64 KiB of pseudo-random bytes from a fixed seed, so the client knows
        what it must read without seeing the server's disk.
client: tftp-hpa (`tftp -m binary -v <server> <port> -c get|put …`): reads probe.bin and
        compares it; writes a fresh random 64 KiB file under a new name, reads it back and
        compares (the client cannot see the server's disk, so the read-back is the proof).

Contract: one JSON line on stdout (client) / ready + summary lines (server); see probe.py.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import probe
from probe import emit, end_child

TFTPD = "/usr/sbin/in.tftpd"
TFTP = "/usr/bin/tftp"
SERVED = "probe.bin"
FILE_SIZE = 64 * 1024
CALL_WAIT = 5.0  # tftp-hpa retransmits for ~25 s by itself: each call is killed after this


def log(msg):
    sys.stderr.write("tftp.py: %s\n" % msg)
    sys.stderr.flush()


def served_bytes():
    """64 KiB that look random, the same on both sides: sha256 of a counter."""
    out = bytearray()
    i = 0
    while len(out) < FILE_SIZE:
        out += hashlib.sha256(b"eiplab-compat-tftp-%d" % i).digest()
        i += 1
    return bytes(out[:FILE_SIZE])


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------

def run_server(args):
    if not os.access(TFTPD, os.X_OK):
        emit({"not_tested": "in.tftpd not found: apt-get install tftpd-hpa"})
        return 3
    root = os.path.join(os.path.abspath(args.dir), "tftproot")
    os.makedirs(root, exist_ok=True)
    # The daemon runs as root (-u root) and chroots into root (-s); keep the directory
    # world-writable too so it would also work as an unprivileged user.
    os.chmod(root, 0o777)
    with open(os.path.join(root, SERVED), "wb") as f:
        f.write(served_bytes())
    os.chmod(os.path.join(root, SERVED), 0o644)
    errlog = open(os.path.join(args.dir, "in.tftpd.log"), "wb")

    cmd = [TFTPD, "-L", "-s", root, "-c", "-a", "%s:%d" % (args.listen, args.port),
           "-u", "root", "-v", "-v"]
    log("starting: %s" % " ".join(cmd))
    proc = None
    state = {"stop": False}

    def on_term(signum, frame):
        state["stop"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                start_new_session=True)
    except OSError as e:
        emit({"not_tested": "in.tftpd cannot start: %s" % e})
        return 3
    # ready once the daemon holds its UDP socket (and has not died at once, e.g. address in use)
    t0 = time.monotonic()
    bound = False
    while time.monotonic() - t0 < 5 and not state["stop"]:
        if proc.poll() is not None:
            break
        if udp_bound(args.listen, args.port):
            bound = True
            break
        time.sleep(0.1)
    if not bound:
        end_child(proc)
        errlog.close()
        try:
            why = open(os.path.join(args.dir, "in.tftpd.log")).read().strip()[-300:]
        except OSError:
            why = ""
        emit({"not_tested": "in.tftpd did not start on %s:%d%s" % (
            args.listen, args.port, (": " + why) if why else "")})
        return 3
    emit({"event": "ready"})
    died = None
    while not state["stop"]:
        if proc.poll() is not None:
            died = proc.returncode
            break
        time.sleep(0.1)
    end_child(proc)
    errlog.close()
    received = sorted(n for n in os.listdir(root) if n != SERVED)
    summary = {"event": "summary", "served": SERVED, "files_received": received,
               "bytes_received": {n: os.path.getsize(os.path.join(root, n)) for n in received}}
    if died is not None:
        summary["daemon_exited"] = died
    emit(summary)
    return 0


def udp_bound(ip, port):
    """Is something bound to ip:port/udp in this namespace? (/proc/net/udp, little-endian hex)"""
    try:
        parts = [int(x) for x in ip.split(".")]
        want = "%02X%02X%02X%02X:%04X" % (parts[3], parts[2], parts[1], parts[0], port)
        anyaddr = "00000000:%04X" % port
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                local = line.split()[1]
                if local in (want, anyaddr):
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------

def tftp_call(server, port, verb, remote, local, wait, workdir):
    """Run one tftp-hpa transfer; return (ok, bytes, sentence)."""
    # tftp-hpa cannot bind a source address: --bind is ignored; the caller arranges the route
    # so that the right source address is used.
    if verb == "put":
        cmd = [TFTP, "-m", "binary", "-v", server, str(port), "-c", "put", local, remote]
    else:
        cmd = [TFTP, "-m", "binary", "-v", server, str(port), "-c", "get", remote, local]
    log("running: %s" % " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    killed = False
    try:
        out, _ = proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        killed = True
        end_child(proc, grace=0.3)
        try:
            out, _ = proc.communicate(timeout=1)
        except (subprocess.TimeoutExpired, ValueError):
            out = b""
    finally:
        end_child(proc, grace=0.3)
    text = (out or b"").decode("utf-8", "replace")
    log("tftp said: %s" % text.strip().replace("\n", " | "))
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    n = 0
    for l in lines:
        if l.startswith(("Received ", "Sent ")):
            try:
                n = int(l.split()[1])
            except (IndexError, ValueError):
                pass
            # tftp-hpa's own rate/time figures are unreliable (seen: "-8.9 seconds"): keep the count
            return True, n, "%s %d bytes" % (l.split()[0].lower(), n)
    for l in lines:
        if l.startswith("Error code"):
            return False, 0, "the server answered %s" % l
    for l in lines:
        if "timed out" in l.lower():
            return False, 0, "no answer: %s" % l
    if killed:
        return False, 0, "no answer within %g s (tftp-hpa was still retrying; killed)" % wait
    rest = [l for l in lines if not l.startswith(("Connected to", "getting from", "putting "))]
    return False, 0, "tftp ended without a transfer%s" % ((": " + rest[-1]) if rest else "")


def run_client(args):
    if not os.access(TFTP, os.X_OK):
        emit({"not_tested": "tftp not found: apt-get install tftp-hpa"})
        return 3
    result = {"ok": False, "steps": [], "detail": "", "named": [], "sent": [],
              "peer_ignored_address": False}
    steps = result["steps"]
    deadline = time.monotonic() + args.timeout - 0.5
    workdir = os.path.abspath(args.dir)

    def wait_left():
        return min(CALL_WAIT, deadline - time.monotonic())

    failures = []
    target = "%s:%d" % (args.server, args.port)

    # 1. read the served file
    want = hashlib.sha256(served_bytes()).hexdigest()
    got_path = os.path.join(workdir, "got-%d.bin" % os.getpid())
    read_ok = False
    ok, n, said = tftp_call(args.server, args.port, "get", SERVED, got_path, wait_left(), workdir)
    if ok:
        have = sha_of(got_path)
        if have == want:
            read_ok = True
            steps.append({"name": "RRQ %s" % SERVED, "ok": True, "detail": "%s; sha256 matched" % said})
        else:
            msg = "read %s from %s but it differs: %d bytes, sha256 %s" % (SERVED, target, n, have[:16])
            steps.append({"name": "RRQ %s" % SERVED, "ok": False, "detail": msg})
            failures.append(msg)
    else:
        msg = "reading %s from %s failed: %s" % (SERVED, target, said)
        steps.append({"name": "RRQ %s" % SERVED, "ok": False, "detail": msg})
        failures.append(msg)

    # 2. write a fresh file under a new name, 3. read it back and compare
    up_name = "up-%d.bin" % os.getpid()
    up_path = os.path.join(workdir, up_name)
    back_path = os.path.join(workdir, "back-%d.bin" % os.getpid())
    payload = os.urandom(FILE_SIZE)
    with open(up_path, "wb") as f:
        f.write(payload)
    write_ok = False
    if not read_ok and "no answer" in failures[-1]:
        # the server (or the path back from it) is silent: a write would only wait as long again
        steps.append({"name": "WRQ %s" % up_name, "ok": False,
                      "detail": "not tried: the read got no answer"})
    elif wait_left() < 1.0:
        steps.append({"name": "WRQ %s" % up_name, "ok": False, "detail": "not tried: out of time"})
    else:
        ok, n, said = tftp_call(args.server, args.port, "put", up_name, up_path, wait_left(), workdir)
        if ok and n == FILE_SIZE:
            steps.append({"name": "WRQ %s" % up_name, "ok": True, "detail": said})
            if wait_left() < 1.0:
                steps.append({"name": "RRQ %s (read back)" % up_name, "ok": False,
                              "detail": "not tried: out of time"})
                failures.append("the written file could not be read back in time")
            else:
                ok, n, said = tftp_call(args.server, args.port, "get", up_name, back_path,
                                        wait_left(), workdir)
                if ok and sha_of(back_path) == hashlib.sha256(payload).hexdigest():
                    write_ok = True
                    steps.append({"name": "RRQ %s (read back)" % up_name, "ok": True,
                                  "detail": "%s; sha256 matched what was written" % said})
                elif ok:
                    msg = "the file written as %s came back different (%d bytes)" % (up_name, n)
                    steps.append({"name": "RRQ %s (read back)" % up_name, "ok": False, "detail": msg})
                    failures.append(msg)
                else:
                    msg = "reading back %s from %s failed: %s" % (up_name, target, said)
                    steps.append({"name": "RRQ %s (read back)" % up_name, "ok": False, "detail": msg})
                    failures.append(msg)
        else:
            msg = "writing %s to %s failed: %s" % (up_name, target, said if not ok else
                                                   "only %d of %d bytes sent" % (n, FILE_SIZE))
            steps.append({"name": "WRQ %s" % up_name, "ok": False, "detail": msg})
            failures.append(msg)

    for p in (got_path, up_path, back_path):
        try:
            os.unlink(p)
        except OSError:
            pass
    if read_ok and write_ok:
        result["ok"] = True
        result["detail"] = ("read %s (%d bytes) and wrote then read back %s, both matched (sha256)"
                            % (SERVED, FILE_SIZE, up_name))
    else:
        result["detail"] = "; ".join(failures) or "the TFTP transfers did not complete"
    emit(result)
    return 0


def sha_of(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------

def main():
    args = probe.args("eiplab compat TFTP probe", 69, bind_required=False,
                      bind_help="ignored: tftp-hpa cannot bind a source address")
    if args.role == "server":
        return run_server(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
