#!/usr/bin/python3
"""DNS probe for `eiplab compat`.

server: dnsmasq in the foreground, authoritative for two records only:
          host.lab.test       A    <its own --listen address>   (a server announcing itself)
          _svc._tcp.lab.test  SRV  0 0 8080 host.lab.test
client: dig (bind9-dnsutils), `dig @<server> -p <port> -b <bind>`, A and SRV, each over UDP
        (+notcp) and TCP (+tcp), +time=3 +tries=1. ok = all four answered with those records.

Contract: one JSON line on stdout (client) / ready + summary lines (server); see probe.py.
"""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import probe
from probe import emit, end_child

DNSMASQ = "/usr/sbin/dnsmasq"
DIG = "/usr/bin/dig"
A_NAME = "host.lab.test"
SRV_NAME = "_svc._tcp.lab.test"
SRV_PORT = 8080
READY_NAME = "ready.probe.lab.test"  # the server's own start-up check, left out of the summary
DIG_TIME = 3


def log(msg):
    sys.stderr.write("dns.py: %s\n" % msg)
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------

def udp_query(server, port, name, source, wait):
    """One raw A query over UDP; True if any reply with our id came back."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((source, 0))
        s.settimeout(wait)
        s.sendto(q, (server, port))
        data, _ = s.recvfrom(2048)
        return len(data) >= 2 and struct.unpack("!H", data[:2])[0] == qid
    except OSError:
        return False
    finally:
        s.close()


QUERY_RE = re.compile(r"query\[(\w+)\]\s+(\S+)\s+from\s+(\S+)")


def run_server(args):
    if not os.access(DNSMASQ, os.X_OK):
        emit({"not_tested": "dnsmasq not found: apt-get install dnsmasq-base"})
        return 3
    d = os.path.abspath(args.dir)
    cmd = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
           "--bind-interfaces", "--listen-address=%s" % args.listen, "--port=%d" % args.port,
           "--user=root", "--pid-file=%s" % os.path.join(d, "dnsmasq.pid"),
           "--log-queries", "--log-facility=-",
           "--host-record=%s,%s" % (A_NAME, args.listen),
           "--srv-host=%s,%s,%d" % (SRV_NAME, A_NAME, SRV_PORT),
           "--address=/%s/" % READY_NAME]
    log("starting: %s" % " ".join(cmd))
    state = {"stop": False}

    def on_term(signum, frame):
        state["stop"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        emit({"not_tested": "dnsmasq cannot start: %s" % e})
        return 3

    seen = {"queries": [], "lines": []}
    lock = threading.Lock()

    def reader():
        with open(os.path.join(d, "dnsmasq.log"), "a") as keep:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                keep.write(line + "\n")
                keep.flush()
                with lock:
                    if line.strip():
                        seen["lines"].append(line)
                    del seen["lines"][:-20]
                    m = QUERY_RE.search(line)
                    if m and m.group(2) != READY_NAME:
                        seen["queries"].append({"type": m.group(1), "name": m.group(2),
                                                "from": m.group(3)})

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    t0 = time.monotonic()
    ready = False
    while time.monotonic() - t0 < 5 and not state["stop"]:
        if proc.poll() is not None:
            break
        if udp_query(args.listen, args.port, READY_NAME, args.listen, 0.3):
            ready = True
            break
        time.sleep(0.1)
    if not ready:
        end_child(proc)
        t.join(0.5)
        with lock:
            why = " | ".join(seen["lines"][-3:])
        emit({"not_tested": "dnsmasq did not answer on %s:%d%s" % (
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
    t.join(0.5)
    with lock:
        queries = list(seen["queries"])
    summary = {"event": "summary", "queries": len(queries), "queries_seen": queries,
               "answers_name": args.listen}
    if died is not None:
        summary["daemon_exited"] = died
    emit(summary)
    return 0


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------

def dig(server, port, bind, name, rtype, transport, wait):
    """Run one dig; return (answered, status, answers [(type, rdata)], sentence)."""
    cmd = [DIG, "@%s" % server, "-p", str(port), "-b", bind, name, rtype,
           "+tcp" if transport == "TCP" else "+notcp", "+time=%d" % DIG_TIME, "+tries=1",
           "+nocookie"]
    log("running: %s" % " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
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
    m = re.search(r"->>HEADER<<-.*status: (\w+)", text)
    if not m:
        lines = [l.strip(" ;") for l in text.splitlines() if l.startswith(";;") and
                 ("timed out" in l or "error" in l.lower() or "refused" in l or "reset" in l)]
        if killed:
            return False, None, [], "no answer within %g s (dig killed)" % wait
        if lines:
            return False, None, [], lines[0]
        return False, None, [], "no answer (dig exit %s)" % proc.returncode
    status = m.group(1)
    answers = []
    in_answer = False
    for line in text.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
            continue
        if in_answer:
            if not line.strip() or line.startswith(";"):
                in_answer = False
                continue
            f = line.split()
            # owner TTL class type rdata…
            if len(f) >= 5:
                answers.append((f[3], " ".join(f[4:])))
    return True, status, answers, status


def run_client(args):
    if not os.access(DIG, os.X_OK):
        emit({"not_tested": "dig not found: apt-get install bind9-dnsutils"})
        return 3
    result = {"ok": False, "steps": [], "detail": "", "named": [], "sent": [],
              "peer_ignored_address": False}
    steps = result["steps"]
    deadline = time.monotonic() + args.timeout - 0.5
    failures = []
    unanswered = {}  # transport -> [(rtype, what dig said)]
    skipped = []
    a_seen = []
    for rtype, name in (("A", A_NAME), ("SRV", SRV_NAME)):
        for transport in ("UDP", "TCP"):
            step_name = "%s %s over %s" % (rtype, name, transport)
            wait = min(DIG_TIME + 1.5, deadline - time.monotonic())
            if transport in unanswered:
                # that transport already went unanswered: fail fast instead of waiting again
                steps.append({"name": step_name, "ok": False,
                              "detail": "not tried: the %s query over %s got no answer" % (
                                  unanswered[transport][0][0], transport)})
                skipped.append(rtype + " over " + transport)
                continue
            if wait < 0.5:
                steps.append({"name": step_name, "ok": False, "detail": "not tried: out of time"})
                failures.append("%s not tried (out of time)" % step_name)
                continue
            answered, status, answers, said = dig(args.server, args.port, args.bind, name, rtype,
                                                  transport, wait)
            if not answered:
                said = re.sub(r" for \S+ failed", " failed", said.rstrip("."))
                steps.append({"name": step_name, "ok": False,
                              "detail": "%s query over %s to %s:%d: %s" % (
                                  rtype, transport, args.server, args.port, said)})
                unanswered.setdefault(transport, []).append((rtype, said))
                continue
            if rtype == "A":
                addrs = [rd for t, rd in answers if t == "A"]
                for a in addrs:
                    if a not in a_seen:
                        a_seen.append(a)
                        result["named"].append({"where": "A record of %s" % A_NAME, "address": a})
                ok = status == "NOERROR" and len(addrs) > 0
                detail = "%s, A %s" % (status, ", ".join(addrs)) if addrs else "%s without an A record" % status
            else:
                srvs = [rd.split() for t, rd in answers if t == "SRV"]
                good = [s for s in srvs if len(s) == 4 and s[2] == str(SRV_PORT)
                        and s[3].rstrip(".").lower() == A_NAME]
                ok = status == "NOERROR" and len(good) > 0
                detail = ("%s, SRV %s" % (status, "; ".join(" ".join(s) for s in srvs)) if srvs
                          else "%s without an SRV record" % status)
            steps.append({"name": step_name, "ok": ok, "detail": detail})
            if not ok:
                failures.append("%s %s over %s answered %s" % (rtype, name, transport, detail))
    for transport in ("UDP", "TCP"):
        got = unanswered.get(transport)
        if not got:
            continue
        types = " and ".join(r for r, _ in got)
        reasons = []
        for _, why in got:
            if why not in reasons:
                reasons.append(why)
        failures.append("%s over %s to %s:%d got no answer (%s)" % (
            types, transport, args.server, args.port, "; ".join(reasons)))
    if skipped:
        failures.append("%s not tried after that" % " and ".join(skipped))
    if not failures:
        result["ok"] = True
        result["detail"] = "A and SRV answered over UDP and TCP; the A record named %s" % (
            ", ".join(a_seen))
    else:
        result["detail"] = "; ".join(failures)
        if a_seen:
            result["detail"] += " (the A record named %s)" % ", ".join(a_seen)
    emit(result)
    return 0


# --------------------------------------------------------------------------------------------

def main():
    args = probe.args("eiplab compat DNS probe", 53)
    if args.role == "server":
        return run_server(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
