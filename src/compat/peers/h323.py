#!/usr/bin/python3
"""H.323 (H.225.0 call signalling) probe for `eiplab compat`.

No packaged H.323 endpoint exists in Debian, so both peers are written here, signalling only:

server: TCP listener on --listen:--port (1720). Reads TPKT-framed (RFC 1006) Q.931 messages;
        answers a SETUP with CALL PROCEEDING then CONNECT (call reference flag set), the
        CONNECT carrying an h245Address (the server's own --listen address) in its User-User
        IE as a real callee does; records every SETUP (peer, call reference, IEs, the
        sourceCallSignalAddress it carried). RELEASE COMPLETE ends the call.
client: connects from --bind to --server:--port, sends a Q.931 SETUP in TPKT with a Bearer
        Capability IE and a User-User IE whose H.225 content carries the caller's own --bind
        address as 4 raw bytes plus port 1720 (as H.225 sourceCallSignalAddress does), waits
        (<= 4 s) for CONNECT, then clears the call with RELEASE COMPLETE. H.245 and media are
        not tried.

The H.225 content of the User-User IE is a minimal FIXED byte layout defined below, NOT a full
ASN.1 PER encoding of H323-UserInformation: it only reproduces what matters to a NAT/ALG, the
transport address as four raw address bytes followed by a two-byte port.
"""

import ipaddress
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

import probe
from probe import emit

# Q.931 (ITU-T Q.931 / H.225.0) constants
PD_Q931 = 0x08
MT_ALERTING = 0x01
MT_CALL_PROCEEDING = 0x02
MT_SETUP = 0x05
MT_CONNECT = 0x07
MT_RELEASE_COMPLETE = 0x5A
MT_NAMES = {0x01: "ALERTING", 0x02: "CALL PROCEEDING", 0x03: "PROGRESS", 0x05: "SETUP",
            0x07: "CONNECT", 0x0F: "CONNECT ACKNOWLEDGE", 0x45: "DISCONNECT",
            0x4D: "RELEASE", 0x5A: "RELEASE COMPLETE", 0x62: "FACILITY", 0x6E: "NOTIFY",
            0x7D: "STATUS", 0x75: "STATUS ENQUIRY"}
IE_BEARER = 0x04
IE_CAUSE = 0x08
IE_DISPLAY = 0x28
IE_USER_USER = 0x7E
UU_PD_X208 = 0x05       # User-User protocol discriminator: X.208/X.209 coded user information

# Our fixed H.225 layout inside the User-User IE (after its protocol discriminator):
#   1 byte   message kind (0x05 setup, 0x02 callProceeding, 0x07 connect)
#   8 bytes  protocolIdentifier 0.0.8.2250.0.4 as a BER OBJECT IDENTIFIER (tag, length, body)
#   then for a setup:   0x01 'sourceCallSignalAddress' marker, 4 address bytes, 2 port bytes
#                       16 bytes conferenceID, 16 bytes callIdentifier
#        for a connect: 0x02 'h245Address' marker, 4 address bytes, 2 port bytes
#                       16 bytes conferenceID
PROTO_ID = bytes([0x06, 0x06, 0x00, 0x08, 0x91, 0x4A, 0x00, 0x04])
TAG_SRC_ADDR = 0x01
TAG_H245_ADDR = 0x02
H225_PORT = 1720
H245_PORT = 1721        # named in the CONNECT only; no H.245 listener is started
STEP_WAIT = 4.0


def err(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ encoding

def tpkt(payload):
    """RFC 1006 header: version 3, reserved 0, 16-bit length of the whole packet."""
    return struct.pack("!BBH", 3, 0, len(payload) + 4) + payload


def ie(code, body):
    return bytes([code, len(body)]) + body


def user_user_ie(h225):
    # The User-User IE is a Q.931 codeset-0 IE with a two-byte length in H.225.0.
    body = bytes([UU_PD_X208]) + h225
    return bytes([IE_USER_USER]) + struct.pack("!H", len(body)) + body


def q931(msg_type, call_ref, from_destination, ies):
    """Protocol discriminator, 2-byte call reference (flag bit set by the side that did not
    originate the call), message type, IEs."""
    cr = call_ref & 0x7FFF
    if from_destination:
        cr |= 0x8000
    return bytes([PD_Q931, 2]) + struct.pack("!H", cr) + bytes([msg_type]) + b"".join(ies)


def addr_bytes(ip, port):
    return ipaddress.IPv4Address(ip).packed + struct.pack("!H", port)


def build_setup(call_ref, own_ip, conf_id, call_id):
    h225 = (bytes([MT_SETUP]) + PROTO_ID + bytes([TAG_SRC_ADDR]) + addr_bytes(own_ip, H225_PORT)
            + conf_id + call_id)
    ies = [
        # Bearer capability: ITU-T coding, unrestricted digital information; circuit mode,
        # 64 kbit/s; user information layer 1 = G.711 A-law.
        ie(IE_BEARER, bytes([0x88, 0x90, 0xA5])),
        ie(IE_DISPLAY, b"eiplab probe"),
        user_user_ie(h225),
    ]
    return q931(MT_SETUP, call_ref, False, ies)


def parse_q931(data):
    """-> dict(type, name, call_ref, flag, ies=[(code, bytes)]) or raise ValueError."""
    if len(data) < 3 or data[0] != PD_Q931:
        raise ValueError("not Q.931 (protocol discriminator %s)" % (data[:1].hex() or "none"))
    crl = data[1] & 0x0F
    if len(data) < 2 + crl + 1:
        raise ValueError("truncated Q.931 header")
    crb = data[2:2 + crl]
    flag = bool(crb[0] & 0x80) if crl else False
    cr = int.from_bytes(bytes([crb[0] & 0x7F]) + crb[1:], "big") if crl else 0
    mt = data[2 + crl]
    i = 3 + crl
    ies = []
    while i < len(data):
        code = data[i]
        if code & 0x80:                 # single-octet IE
            ies.append((code, b""))
            i += 1
            continue
        if code == IE_USER_USER:
            if i + 3 > len(data):
                raise ValueError("truncated User-User IE")
            ln = struct.unpack("!H", data[i + 1:i + 3])[0]
            ies.append((code, data[i + 3:i + 3 + ln]))
            i += 3 + ln
            continue
        if i + 2 > len(data):
            raise ValueError("truncated IE")
        ln = data[i + 1]
        ies.append((code, data[i + 2:i + 2 + ln]))
        i += 2 + ln
    return {"type": mt, "name": MT_NAMES.get(mt, "0x%02x" % mt), "call_ref": cr,
            "flag": flag, "ies": ies}


def h225_address(msg, tag):
    """Address/port our fixed layout carries after `tag` in the User-User IE, or None."""
    for code, body in msg["ies"]:
        if code != IE_USER_USER or len(body) < 1 + 1 + len(PROTO_ID) + 7:
            continue
        if body[0] != UU_PD_X208:
            continue
        h = body[1:]
        off = 1 + len(PROTO_ID)
        if h[1:off] != PROTO_ID or h[off] != tag:
            continue
        a = h[off + 1:off + 7]
        return str(ipaddress.IPv4Address(a[:4])), struct.unpack("!H", a[4:6])[0]
    return None


class Reader:
    """TPKT de-framer over a socket, with a deadline per read."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def frame(self, deadline):
        while True:
            if len(self.buf) >= 4:
                if self.buf[0] != 3:
                    raise ValueError("not TPKT (first byte 0x%02x)" % self.buf[0])
                ln = struct.unpack("!H", self.buf[2:4])[0]
                if ln < 4:
                    raise ValueError("bad TPKT length %d" % ln)
                if len(self.buf) >= ln:
                    out, self.buf = self.buf[4:ln], self.buf[ln:]
                    return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                raise TimeoutError
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by peer")
            self.buf += chunk


# ------------------------------------------------------------------------------ server

def run_server(args):
    lock = threading.Lock()
    log = {"connections": [], "setups": [], "errors": []}
    try:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((args.listen, args.port))
        ls.listen(16)
    except OSError as e:
        emit({"not_tested": "cannot listen on %s:%d: %s" % (args.listen, args.port, e)})
        return 3

    stop = threading.Event()

    def finish(*_a):
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)

    def handle(conn, peer):
        conn.settimeout(None)
        rd = Reader(conn)
        peer_s = "%s:%d" % peer
        try:
            while not stop.is_set():
                try:
                    data = rd.frame(time.monotonic() + 10)
                except TimeoutError:
                    break
                msg = parse_q931(data)
                if msg["type"] == MT_SETUP:
                    src = h225_address(msg, TAG_SRC_ADDR)
                    rec = {"from": peer_s, "call_reference": msg["call_ref"],
                           "ies": ["0x%02x" % c for c, _ in msg["ies"]],
                           "bearer_capability": next((b.hex() for c, b in msg["ies"]
                                                      if c == IE_BEARER), None),
                           "source_call_signal_address": "%s:%d" % src if src else None,
                           "answered": False}
                    with lock:
                        log["setups"].append(rec)
                    conf = os.urandom(16)
                    proceeding = q931(MT_CALL_PROCEEDING, msg["call_ref"], True, [
                        user_user_ie(bytes([MT_CALL_PROCEEDING]) + PROTO_ID)])
                    connect = q931(MT_CONNECT, msg["call_ref"], True, [
                        user_user_ie(bytes([MT_CONNECT]) + PROTO_ID + bytes([TAG_H245_ADDR])
                                     + addr_bytes(args.listen, H245_PORT) + conf)])
                    conn.sendall(tpkt(proceeding))
                    conn.sendall(tpkt(connect))
                    with lock:
                        rec["answered"] = True
                elif msg["type"] == MT_RELEASE_COMPLETE:
                    with lock:
                        for s in log["setups"]:
                            if s["from"] == peer_s and s["call_reference"] == msg["call_ref"]:
                                s["released"] = True
                    break
        except Exception as e:
            with lock:
                log["errors"].append("%s: %s" % (peer_s, e))
        finally:
            try:
                conn.close()
            except OSError:
                pass

    ls.settimeout(0.2)
    emit({"event": "ready"})
    while not stop.is_set():
        try:
            conn, peer = ls.accept()
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        with lock:
            log["connections"].append("%s:%d" % peer)
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()
    ls.close()
    with lock:
        emit({"event": "summary", "listen": "%s:%d" % (args.listen, args.port),
              "connections": list(log["connections"]), "setups": list(log["setups"]),
              "setups_answered": sum(1 for s in log["setups"] if s["answered"]),
              "errors": list(log["errors"]),
              "note": "signalling only: no H.245 listener, no media"})
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------------------ client

def run_client(args):
    t0 = time.monotonic()
    hard = t0 + max(1.0, args.timeout - 0.5)
    steps, named, sent = [], [], []
    own = args.bind
    try:
        ipaddress.IPv4Address(own or "")
    except ValueError:
        emit({"not_tested": "h323 probe needs an IPv4 --bind address (got %r)" % own})
        return 3
    call_ref = int.from_bytes(os.urandom(2), "big") & 0x7FFF or 1
    setup = build_setup(call_ref, own, os.urandom(16), os.urandom(16))
    target = "%s:%d" % (args.server, args.port)
    result = {"ok": False}

    def done(detail):
        emit({"ok": result["ok"], "steps": steps, "detail": detail, "named": named,
              "sent": sent, "peer_ignored_address": False})
        return 0

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((own, 0))
    except OSError as e:
        steps.append({"name": "TCP connect", "ok": False, "detail": "cannot bind %s: %s" % (own, e)})
        return done("signalling only: could not bind the call signalling socket to %s (%s)" % (own, e))
    s.settimeout(max(0.2, min(STEP_WAIT, hard - time.monotonic())))
    try:
        s.connect((args.server, args.port))
    except (socket.timeout, TimeoutError):
        steps.append({"name": "TCP connect", "ok": False,
                      "detail": "no answer from %s in %.0f s" % (target, STEP_WAIT)})
        return done("signalling only: TCP connection to %s for H.225 call signalling timed out "
                    "(%.0f s)" % (target, STEP_WAIT))
    except OSError as e:
        steps.append({"name": "TCP connect", "ok": False, "detail": "%s: %s" % (target, e.strerror or e)})
        return done("signalling only: TCP connection to %s for H.225 call signalling failed: %s"
                    % (target, e.strerror or e))
    local = "%s:%d" % s.getsockname()
    steps.append({"name": "TCP connect", "ok": True, "detail": "%s -> %s" % (local, target)})

    try:
        s.sendall(tpkt(setup))
    except OSError as e:
        steps.append({"name": "SETUP", "ok": False, "detail": "send failed: %s" % e})
        s.close()
        return done("signalling only: the SETUP could not be sent to %s (%s)" % (target, e))

    sent.append({"where": "H.225 sourceCallSignalAddress in the SETUP", "address": own,
                 "port": H225_PORT})
    rd = Reader(s)
    got = []
    connect = None
    problem = None
    deadline = min(hard, time.monotonic() + STEP_WAIT)
    while connect is None:
        try:
            data = rd.frame(deadline)
            msg = parse_q931(data)
        except TimeoutError:
            problem = "no CONNECT within %.0f s" % STEP_WAIT
            break
        except (ConnectionError, OSError) as e:
            problem = str(e)
            break
        except ValueError as e:
            problem = "unparsable answer: %s" % e
            break
        got.append(msg)
        if msg["call_ref"] != call_ref or not msg["flag"]:
            err("answer with call reference %d flag %s (expected %d, flag set)" %
                (msg["call_ref"], msg["flag"], call_ref))
        a = h225_address(msg, TAG_H245_ADDR)
        if a:
            named.append({"where": "H.225 h245Address in the %s" % msg["name"],
                          "address": a[0], "port": a[1]})
        if msg["type"] == MT_CONNECT:
            connect = msg
        elif msg["type"] == MT_RELEASE_COMPLETE:
            cause = next((b.hex() for c, b in msg["ies"] if c == IE_CAUSE), None)
            problem = "RELEASE COMPLETE%s" % (" (cause %s)" % cause if cause else "")
            break

    names = [m["name"] for m in got]
    pre = [n for n in names if n != "CONNECT"]
    steps.append({"name": "SETUP", "ok": bool(got),
                  "detail": ("answered with " + ", ".join(names)) if got else
                            "no answer: %s" % problem})
    steps.append({"name": "CONNECT", "ok": connect is not None,
                  "detail": "CONNECT received (call reference %d%s)" %
                            (connect["call_ref"], ", flag set" if connect["flag"] else ", flag NOT set")
                            if connect else problem})
    if connect is not None:
        # Clear the call: RELEASE COMPLETE, cause 16 normal call clearing.
        try:
            s.sendall(tpkt(q931(MT_RELEASE_COMPLETE, call_ref, False,
                                [ie(IE_CAUSE, bytes([0x80, 0x90]))])))
        except OSError:
            pass
    s.close()
    result["ok"] = connect is not None
    if connect is not None:
        detail = ("signalling only: SETUP answered with %s; H.245 and media not tried" %
                  " and ".join(pre + ["CONNECT"]))
    elif got:
        detail = ("signalling only: SETUP answered with %s but no CONNECT (%s); H.245 and media "
                  "not tried" % (", ".join(names), problem))
    else:
        detail = ("signalling only: TCP to %s connected but the SETUP got no answer (%s); H.245 "
                  "and media not tried" % (target, problem))
    return done(detail)


def main():
    args = probe.args(__doc__, 1720)
    if args.role == "server":
        return run_server(args)

    def watchdog(*_a):
        emit({"ok": False, "steps": [], "detail": "signalling only: H.323 client did not finish "
              "within %.0f s" % args.timeout, "named": [], "sent": [], "peer_ignored_address": False})
        os._exit(0)
    signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, args.timeout - 0.2))
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
