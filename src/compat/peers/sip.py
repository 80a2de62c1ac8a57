#!/usr/bin/python3
"""eiplab compat probe: SIP (UDP 5060) call with RTP, driven by SIPp (Debian sip-tester).

server role: SIPp UAS on --listen:--port.  It answers REGISTER with 200 (a registrar), INVITE
  with 100, 180 and 200 carrying its own SDP (c= and m=audio = --listen : 6000), waits for ACK,
  streams ~2 s of PCMU (100 packets) to the address:port the CALLER's SDP named, and answers
  BYE.  It runs with -rtp_echo: every RTP packet reaching its media port is sent straight back
  to the packet's source address and port.
client role: SIPp UAC bound to --bind, dialing --server:--port.  REGISTER, INVITE with SDP
  naming its own --bind address and media port (as a real phone does), ACK, ~2 s of PCMU
  (100 packets) to the address:port the CALLEE's SDP named, BYE.

Why the echo (how the client alone judges both directions):
  - RTP to the caller: the callee's stream (a 1 kHz tone) is sent to the caller's SDP address.
    The client counts the 1 kHz packets arriving at its own media port.
  - RTP to the callee: the caller's stream (a 440 Hz tone) is sent to the callee's SDP address.
    The callee echoes each packet it receives back to where it came from, i.e. to the caller's
    media socket, through whatever NAT mapping the caller's own packets created, so the way
    back does not depend on any address written in SDP.  The client counts the 440 Hz packets
    arriving at its media port: each one is a packet that reached the callee.
  Packets are told apart by payload (each is a 160-byte slice of one of the two tone files).
  The server also counts, by itself, the RTP reaching its media port ("rtp_received" in its
  summary); Rust can merge that with the client's view.

Counting does not touch SIPp's sockets: each role reads a packet socket (AF_PACKET, like
tcpdump -i any) in a thread, keeping inbound IPv4/UDP packets addressed to its own address.
Every SIPp process is started by this script and ended by its pid.
"""

import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import probe
from probe import emit, end_child

SERVER_MEDIA_PORT = 6000      # -mp of the UAS: the port its SDP names (6002 is SIPp's video port)
PACKETS = 100                 # 2 s of PCMU at 20 ms per packet (160 bytes per packet)
PACKET_BYTES = 160
CALLER_TONE_HZ = 440
CALLEE_TONE_HZ = 1000
CALLER_FILE = "caller.ulaw"
CALLEE_FILE = "callee.ulaw"
WAIT_MS = 4000                # every SIP wait (answer to REGISTER, INVITE, BYE) is at most 4 s
CALL_PAUSE_MS = 2600          # the caller keeps the call up this long after ACK, then sends BYE


def log(*a):
    print("sip.py:", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# SIPp scenarios (written to --dir at run time)

UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="eiplab compat caller">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:caller@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:caller@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:caller@[local_ip]:[local_port]>
      Expires: 60
      User-Agent: eiplab-compat
      Content-Length: 0

    ]]>
  </send>

  <recv response="200"/>

  <send retrans="500">
    <![CDATA[

      INVITE sip:callee@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:caller@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:callee@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      User-Agent: eiplab-compat
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=eiplab
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>

  <send>
    <![CDATA[

      ACK sip:callee@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:caller@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:callee@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Contact: <sip:caller@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>

  <nop>
    <action>
      <exec rtp_stream="@FILE@,1,0"/>
    </action>
  </nop>

  <pause milliseconds="@PAUSE@"/>

  <send retrans="500">
    <![CDATA[

      BYE sip:callee@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:caller@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:callee@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>

  <recv response="200" crlf="true"/>
</scenario>
"""

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="eiplab compat callee">
  <recv request="REGISTER"/>

  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires=60
      Expires: 60
      Content-Length: 0

    ]]>
  </send>

  <recv request="INVITE"/>

  <send>
    <![CDATA[

      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>

  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>

  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=eiplab
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv request="ACK" crlf="true"/>

  <nop>
    <action>
      <exec rtp_stream="@FILE@,1,0"/>
    </action>
  </nop>

  <recv request="BYE"/>

  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


# --------------------------------------------------------------------------------------------
# media files: raw G.711 mu-law (SIPp's rtp_stream plays raw payload bytes, 160 per packet)

def _ulaw(sample):
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = max(0, min(7, (sample >> 7).bit_length() - 1))
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone(hz, packets=PACKETS):
    n = packets * PACKET_BYTES
    return bytes(_ulaw(int(8000 * math.sin(2 * math.pi * hz * i / 8000.0))) for i in range(n))


def write_files(d, xml, xml_name, media_name, media_bytes, pause_ms=CALL_PAUSE_MS):
    with open(os.path.join(d, media_name), "wb") as f:
        f.write(media_bytes)
    with open(os.path.join(d, xml_name), "w") as f:
        f.write(xml.replace("@FILE@", media_name).replace("@PAUSE@", str(pause_ms)))


# --------------------------------------------------------------------------------------------
# RTP counting on a packet socket (does not take SIPp's UDP sockets)

class Sniffer:
    """Counts inbound IPv4/UDP packets addressed to `ip`, per destination port and kind."""

    def __init__(self, ip, kinds):
        self.ip = socket.inet_aton(ip)
        self.kinds = kinds            # {"echo": bytes, ...}: payload is a slice of which file
        self.packets = []             # (dport, "src:sport", kind)
        self.stop = threading.Event()
        self.error = None
        # ETH_P_ALL on SOCK_DGRAM: link headers are removed, IPv4 packets start at the IP header
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
        for opt in (33, socket.SO_RCVBUF):      # 33 = SO_RCVBUFFORCE (root), past rmem_max
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except OSError:
                pass
        self.dropped = 0
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _classify(self, payload):
        if len(payload) < 12 + PACKET_BYTES or (payload[0] & 0xC0) != 0x80:
            return "other"
        body = payload[12:12 + PACKET_BYTES]
        for name, data in self.kinds.items():
            if body in data:
                return name
        return "rtp"

    def _run(self):
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError as e:
                self.error = str(e)
                return
            if addr[1] != 0x0800 or addr[2] == socket.PACKET_OUTGOING:
                continue
            if len(data) < 28 or data[0] >> 4 != 4 or data[9] != 17 or data[16:20] != self.ip:
                continue
            ihl = (data[0] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", data[ihl:ihl + 4])
            src = "%s:%d" % (socket.inet_ntoa(data[12:16]), sport)
            self.packets.append((dport, src, self._classify(data[ihl + 8:])))

    def finish(self):
        self.stop.set()
        self.thread.join(1.0)
        try:
            # SOL_PACKET / PACKET_STATISTICS: struct tpacket_stats {tp_packets, tp_drops}
            self.dropped = struct.unpack("II", self.sock.getsockopt(263, 6, 8))[1]
        except (OSError, struct.error):
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def save(self, path):
        """Per-packet record for later reading (dst port, source, kind)."""
        try:
            with open(path, "w") as f:
                for dport, src, kind in self.packets:
                    f.write("%d %s %s\n" % (dport, src, kind))
        except OSError:
            pass

    def count(self, port, kind=None):
        return sum(1 for p in self.packets if p[0] == port and (kind is None or p[2] == kind))

    def sources(self, port, kind=None):
        out = []
        for p in self.packets:
            if p[0] == port and (kind is None or p[2] == kind) and p[1] not in out:
                out.append(p[1])
        return out


# --------------------------------------------------------------------------------------------
# SIPp message log (-trace_msg -message_file) parsing

SEP = "-----------------------------------------------"


def parse_log(path):
    """Returns [(direction, message_text)], direction "sent" / "received"."""
    try:
        with open(path, "r", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for block in text.split(SEP)[1:]:
        lines = block.replace("\r\n", "\n").split("\n")
        head = lines[1] if len(lines) > 1 else ""
        if "message sent" in head:
            direction = "sent"
        elif "received" in head:
            direction = "received"
        else:
            continue
        # message begins after the first blank line following the header line
        try:
            start = lines.index("", 1) + 1
        except ValueError:
            continue
        msg = "\n".join(lines[start:]).strip("\n")
        if msg:
            out.append((direction, msg))
    return out


def msg_info(msg):
    lines = msg.split("\n")
    first = lines[0].strip()
    cseq_method = ""
    call_id = ""
    body_lines = []
    in_body = False
    for line in lines[1:]:
        if in_body:
            body_lines.append(line)
        elif line.strip() == "":
            in_body = True
        elif line.lower().startswith("cseq:"):
            parts = line.split()
            cseq_method = parts[-1].upper() if len(parts) >= 3 else ""
        elif line.lower().startswith("call-id:") or line.lower().startswith("i:"):
            call_id = line.split(":", 1)[1].strip()
    m = re.match(r"SIP/2\.0\s+(\d{3})\s*(.*)", first)
    if m:
        return {"response": int(m.group(1)), "reason": m.group(2).strip(), "method": cseq_method,
                "body": "\n".join(body_lines), "first": first, "call_id": call_id}
    return {"request": first.split(" ")[0].upper(), "method": cseq_method,
            "body": "\n".join(body_lines), "first": first, "call_id": call_id}


def sdp_addr(body):
    """(address, audio port) named by an SDP body, or None."""
    c = re.search(r"^\s*c=IN IP[46] (\S+)", body, re.M)
    m = re.search(r"^\s*m=audio (\d+)", body, re.M)
    if not c and not m:
        return None
    return (c.group(1) if c else None, int(m.group(1)) if m else None)


# --------------------------------------------------------------------------------------------
# processes

def start_sipp(args, d, name):
    out = open(os.path.join(d, name + ".stdout"), "wb")
    err = open(os.path.join(d, name + ".stderr"), "wb")
    log("starting", " ".join(args))
    try:
        return subprocess.Popen(args, cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def tail(path, n=400):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


def udp_bound(ip, port):
    """True if a UDP socket is bound to ip:port (or 0.0.0.0:port) in this namespace."""
    want = {"%08X:%04X" % (int.from_bytes(socket.inet_aton(ip), sys.byteorder), port),
            "00000000:%04X" % port}
    try:
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) > 1 and parts[1] in want:
                    return True
    except OSError:
        pass
    return False


class Terminated(Exception):
    pass


# --------------------------------------------------------------------------------------------
# server role

def run_server(a):
    d = os.path.abspath(a.dir)
    sipp = shutil.which("sipp")
    if not sipp:
        emit({"not_tested": "sipp not found: apt-get install sip-tester"})
        return 3
    callee_media = tone(CALLEE_TONE_HZ)
    caller_media = tone(CALLER_TONE_HZ)
    write_files(d, UAS_XML, "uas.xml", CALLEE_FILE, callee_media)

    term = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: term.set())
    signal.signal(signal.SIGINT, lambda *_: term.set())

    sniffer = Sniffer(a.listen, {"caller": caller_media, "callee": callee_media})
    msgfile = "uas_messages.log"
    proc = start_sipp([sipp, "-sf", "uas.xml", "-i", a.listen, "-p", str(a.port), "-bind_local",
                       "-t", "u1", "-mi", a.listen, "-mp", str(SERVER_MEDIA_PORT), "-rtp_echo",
                       "-nostdin", "-trace_msg", "-message_file", msgfile,
                       "-trace_err", "-error_file", "uas_errors.log"], d, "sipp_uas")
    deadline = time.time() + 8
    ready = False
    while time.time() < deadline and not term.is_set():
        if proc.poll() is not None:
            break
        if udp_bound(a.listen, a.port) and udp_bound(a.listen, SERVER_MEDIA_PORT):
            ready = True
            break
        time.sleep(0.05)
    if not ready:
        why = tail(os.path.join(d, "sipp_uas.stderr")) or tail(os.path.join(d, "uas_errors.log"))
        end_child(proc, grace=0.7)
        sniffer.finish()
        if term.is_set():
            emit({"event": "summary", "error": "terminated before SIPp was ready"})
            return 0
        emit({"not_tested": "SIPp UAS could not start on %s:%d (media %d): %s"
              % (a.listen, a.port, SERVER_MEDIA_PORT, why[-300:] or "no output")})
        return 3
    emit({"event": "ready"})

    exited_early = None
    while not term.wait(0.2):
        if exited_early is None and proc.poll() is not None:
            exited_early = proc.returncode
            log("SIPp UAS exited by itself with code", exited_early)
    end_child(proc, grace=0.5)
    time.sleep(0.05)
    sniffer.finish()
    sniffer.save(os.path.join(d, "rtp_capture.txt"))

    msgs = [(dr, msg_info(m)) for dr, m in parse_log(os.path.join(d, msgfile))]
    requests = {}
    sdp_received = sdp_sent = None
    for dr, mi in msgs:
        if dr == "received" and "request" in mi:
            requests[mi["request"]] = requests.get(mi["request"], 0) + 1
            if mi["request"] == "INVITE" and sdp_received is None:
                sdp_received = sdp_addr(mi["body"])
        if dr == "sent" and mi.get("response") == 200 and mi.get("method") == "INVITE" \
                and sdp_sent is None:
            sdp_sent = sdp_addr(mi["body"])
    summary = {
        "event": "summary",
        "sip_requests_received": requests,
        "calls": len({mi["call_id"] for dr, mi in msgs
                      if dr == "received" and mi.get("request") == "INVITE"}),
        "rtp_received": sniffer.count(SERVER_MEDIA_PORT, "caller")
        + sniffer.count(SERVER_MEDIA_PORT, "rtp"),
        "rtp_received_from": sniffer.sources(SERVER_MEDIA_PORT),
        "rtp_echoed_to_sender": True,
        "rtp_sent_packets_per_call": PACKETS,
    }
    if sdp_sent:
        summary["sdp_sent"] = {"where": "SDP c= in the 200 OK", "address": sdp_sent[0],
                               "port": sdp_sent[1]}
    if sdp_received:
        summary["sdp_received"] = {"where": "SDP c= in the INVITE", "address": sdp_received[0],
                                   "port": sdp_received[1]}
    if exited_early is not None:
        summary["sipp_exited_early"] = exited_early
    if sniffer.error:
        summary["capture_error"] = sniffer.error
    if sniffer.dropped:
        summary["capture_dropped"] = sniffer.dropped
    emit(summary)
    return 0


# --------------------------------------------------------------------------------------------
# client role

def run_client(a):
    t0 = time.time()
    d = os.path.abspath(a.dir)
    sipp = shutil.which("sipp")
    if not sipp:
        emit({"not_tested": "sipp not found: apt-get install sip-tester"})
        return 3
    caller_media = tone(CALLER_TONE_HZ)
    callee_media = tone(CALLEE_TONE_HZ)
    write_files(d, UAC_XML, "uac.xml", CALLER_FILE, caller_media)

    def on_term(*_):
        raise Terminated()
    signal.signal(signal.SIGTERM, on_term)

    budget = max(4.0, float(a.timeout) - 1.5)   # SIPp's own -timeout; we keep a margin
    proc = None
    sniffer = None
    terminated = False
    deadline_hit = False
    msgfile = "uac_messages.log"
    try:
        sniffer = Sniffer(a.bind, {"echo": caller_media, "callee": callee_media})
        proc = start_sipp([sipp, "%s:%d" % (a.server, a.port), "-sf", "uac.xml",
                           "-i", a.bind, "-bind_local", "-t", "u1", "-mi", a.bind,
                           "-m", "1", "-l", "1", "-nostdin",
                           "-recv_timeout", str(WAIT_MS), "-timeout", "%ds" % int(budget),
                           "-max_non_invite_retrans", "3", "-max_invite_retrans", "3",
                           "-trace_msg", "-message_file", msgfile,
                           "-trace_err", "-error_file", "uac_errors.log"], d, "sipp_uac")
        hard = t0 + float(a.timeout) - 0.8
        while proc.poll() is None and time.time() < hard:
            time.sleep(0.05)
        deadline_hit = proc.poll() is None
        end_child(proc, grace=0.7)
        time.sleep(0.3)     # last echoes in flight
    except Terminated:
        terminated = True
    finally:
        end_child(proc, grace=0.7)
        if sniffer:
            sniffer.finish()
            sniffer.save(os.path.join(d, "rtp_capture.txt"))

    if proc is None:
        emit({"not_tested": "SIPp UAC could not start"})
        return 3
    msgs = [(dr, msg_info(m)) for dr, m in parse_log(os.path.join(d, msgfile))]
    if not msgs:
        why = tail(os.path.join(d, "sipp_uac.stderr")) or tail(os.path.join(d, "uac_errors.log"))
        if not terminated and why:
            emit({"not_tested": "SIPp UAC did not run: " + why[-300:]})
            return 3
    emit(judge(a, msgs, sniffer, terminated, deadline_hit))
    return 0


def judge(a, msgs, sniffer, terminated, deadline_hit=False):
    target = "%s:%d" % (a.server, a.port)
    sent = {}          # method -> count of requests sent
    resp = {}          # method -> [responses received in order]
    for dr, mi in msgs:
        if dr == "sent" and "request" in mi:
            sent[mi["request"]] = sent.get(mi["request"], 0) + 1
            if mi["request"] == "INVITE":
                sent.setdefault("_invite_sdp", sdp_addr(mi["body"]))
        elif dr == "received" and "response" in mi:
            resp.setdefault(mi["method"], []).append(mi)

    steps = []
    named = []
    sent_named = []

    def final(method):
        for r in resp.get(method, []):
            if r["response"] >= 200:
                return r
        return None

    def no_answer(method):
        n = sent.get(method, 0)
        within = ("before the probe's %g s --timeout" % float(a.timeout) if deadline_hit
                  else "within %d s" % (WAIT_MS // 1000))
        return "no answer to %s from %s %s (sent %d time%s)" % (
            method, target, within, n, "" if n == 1 else "s")

    # REGISTER
    reg = final("REGISTER")
    reg_ok = bool(reg and 200 <= reg["response"] < 300)
    if not sent.get("REGISTER"):
        steps.append({"name": "REGISTER", "ok": False, "detail": "not sent (SIPp did not run)"})
    elif reg:
        steps.append({"name": "REGISTER", "ok": reg_ok,
                      "detail": "%d %s" % (reg["response"], reg["reason"])})
    else:
        steps.append({"name": "REGISTER", "ok": False, "detail": no_answer("REGISTER")})

    # INVITE / 200
    inv = final("INVITE")
    inv_ok = False
    callee_sdp = None
    caller_sdp = sent.get("_invite_sdp")
    if caller_sdp:
        sent_named.append({"where": "SDP c= in the INVITE", "address": caller_sdp[0],
                           "port": caller_sdp[1]})
    provisional = [str(r["response"]) for r in resp.get("INVITE", []) if r["response"] < 200]
    prov = (" after %s" % ", ".join(dict.fromkeys(provisional))) if provisional else ""
    if not sent.get("INVITE"):
        steps.append({"name": "INVITE", "ok": False, "detail": "not sent: REGISTER failed"})
    elif inv is None:
        steps.append({"name": "INVITE", "ok": False, "detail": no_answer("INVITE") +
                      ("; only %s came back" % ", ".join(provisional) if provisional else "")})
    else:
        callee_sdp = sdp_addr(inv["body"])
        inv_ok = inv["response"] == 200 and callee_sdp is not None
        if callee_sdp:
            named.append({"where": "SDP c= in the 200 OK", "address": callee_sdp[0],
                          "port": callee_sdp[1]})
            detail = "%d %s with SDP naming %s:%s%s" % (inv["response"], inv["reason"],
                                                       callee_sdp[0], callee_sdp[1], prov)
        else:
            detail = "%d %s without SDP%s" % (inv["response"], inv["reason"], prov)
        steps.append({"name": "INVITE", "ok": inv_ok, "detail": detail})

    # ACK: we can only see that it was sent, and whether the callee kept retransmitting its 200
    n200 = sum(1 for r in resp.get("INVITE", []) if r["response"] == 200)
    if not sent.get("ACK"):
        steps.append({"name": "ACK", "ok": False,
                      "detail": "not sent: no 200 OK to the INVITE"})
    else:
        bye_ok_early = bool(final("BYE"))
        if n200 > 1 and not bye_ok_early:
            steps.append({"name": "ACK", "ok": False,
                          "detail": "sent, but the callee retransmitted its 200 OK %d times "
                                    "(the ACK apparently never reached it)" % (n200 - 1)})
        else:
            steps.append({"name": "ACK", "ok": True, "detail": "sent to %s" % target})

    # RTP
    media_port = caller_sdp[1] if caller_sdp else None
    got_callee = sniffer.count(media_port, "callee") if (sniffer and media_port) else 0
    got_echo = sniffer.count(media_port, "echo") if (sniffer and media_port) else 0
    callee_from = sniffer.sources(media_port, "callee") if (sniffer and media_port) else []
    callee_at = ("%s:%s" % (callee_sdp[0], callee_sdp[1])) if callee_sdp else "?"
    caller_at = ("%s:%s" % (caller_sdp[0], caller_sdp[1])) if caller_sdp else "?"
    need = PACKETS // 2
    rtp_to_caller = got_callee >= need
    rtp_to_callee = got_echo >= need
    media_ran = bool(sent.get("ACK"))
    if not media_ran:
        steps.append({"name": "RTP to caller", "ok": False, "detail": "not tried: no call"})
        steps.append({"name": "RTP to callee", "ok": False, "detail": "not tried: no call"})
    else:
        d1 = "%d of %d packets of the callee's stream arrived at %s (the caller's SDP address)" % (
            got_callee, PACKETS, caller_at)
        if callee_from:
            d1 += ", from " + ", ".join(callee_from[:3])
        steps.append({"name": "RTP to caller", "ok": rtp_to_caller, "detail": d1})
        d2 = ("%d of %d packets sent to %s (the callee's SDP address) came back through the "
              "callee's RTP echo (measured at the caller)" % (got_echo, PACKETS, callee_at))
        steps.append({"name": "RTP to callee", "ok": rtp_to_callee, "detail": d2})

    # BYE
    bye = final("BYE")
    if not sent.get("BYE"):
        steps.append({"name": "BYE", "ok": False, "detail": "not sent: the probe was stopped"
                      if (terminated and media_ran) else "not sent: no call"})
    elif bye is None:
        steps.append({"name": "BYE", "ok": False, "detail": no_answer("BYE")})
    else:
        steps.append({"name": "BYE", "ok": 200 <= bye["response"] < 300,
                      "detail": "%d %s" % (bye["response"], bye["reason"])})

    ok = all(s["ok"] for s in steps) and not terminated
    signalling_ok = all(s["ok"] for s in steps if not s["name"].startswith("RTP"))
    if terminated:
        detail = "the probe was stopped (SIGTERM) before the call finished"
    elif ok:
        detail = ("call set up (REGISTER, INVITE, ACK, BYE answered) and RTP flowed both ways "
                  "(%d packets reached the caller, %d reached the callee and were echoed back)"
                  % (got_callee, got_echo))
    elif not reg_ok:
        detail = "REGISTER to %s failed: %s" % (target, steps[0]["detail"])
    elif not inv_ok:
        detail = "REGISTER was answered but the INVITE failed: %s" % steps[1]["detail"]
    elif signalling_ok or media_ran:
        sig = ("call set up (REGISTER, INVITE, ACK, BYE answered)" if signalling_ok else
               "call partly set up (%s)" % "; ".join(
                   "%s: %s" % (s["name"], s["detail"]) for s in steps
                   if not s["ok"] and not s["name"].startswith("RTP")))
        missing = []
        if not rtp_to_caller:
            missing.append("no RTP reached the caller (%d of %d): the callee sent it where "
                           "the caller's SDP pointed, %s" % (got_callee, PACKETS, caller_at))
        if not rtp_to_callee:
            missing.append("no RTP reached the callee (%d of %d echoed back): the caller sent "
                           "it where the callee's SDP pointed, %s" % (got_echo, PACKETS,
                                                                      callee_at))
        if missing:
            detail = sig + " but " + "; and ".join(missing)
        else:
            detail = sig + "; RTP flowed both ways (%d and %d packets)" % (got_callee, got_echo)
    else:
        detail = "; ".join("%s: %s" % (s["name"], s["detail"]) for s in steps if not s["ok"])
    out = {"ok": ok, "steps": steps, "detail": detail, "named": named, "sent": sent_named,
           "peer_ignored_address": False}
    if sniffer and sniffer.error:
        out["capture_error"] = sniffer.error
    if sniffer and sniffer.dropped:
        out["capture_dropped"] = sniffer.dropped
    return out


def main():
    a = probe.args("eiplab compat SIP probe (SIPp)", 5060)
    if a.role == "server":
        return run_server(a)
    return run_client(a)


if __name__ == "__main__":
    sys.exit(main())
