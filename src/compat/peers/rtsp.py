#!/usr/bin/python3
"""RTSP probe for `eiplab compat`.

server: GStreamer's RTSP server library (GstRtspServer through python3-gi) on --listen:--port,
        one live test stream (8 kHz mono L16 audio, 50 RTP packets a second) at /test,
        UDP transport only, RTP/RTCP sockets bound to --listen (address pool, ports 5000-5010).
client: GStreamer's rtspsrc (protocols=udp, port-range 50000-50010) doing OPTIONS, DESCRIBE,
        SETUP, PLAY and counting the RTP packets that arrive in 4 s after PLAY.

rtspsrc has no option for the local address of its TCP control connection, and its UDP
sockets are bound to the wildcard address: --bind is not applied (the kernel's route picks
the source); only the UDP ports are pinned (port-range). The RTSP messages are read from
rtspsrc's own message dump (debug category rtspsrc at LOG level), which is caught by a log
function and also written to DIR/rtspsrc.log.
"""

import os
import re
import signal
import sys
import threading
import time

import probe
from probe import emit

MOUNT = "/test"
LAUNCH = ("( audiotestsrc is-live=true samplesperbuffer=160 wave=sine "
          "! audio/x-raw,rate=8000,channels=1 ! audioconvert "
          "! rtpL16pay name=pay0 pt=96 )")
SERVER_PORTS = (5000, 5010)
CLIENT_PORTS = (50000, 50010)
MEDIA_WINDOW = 4.0      # seconds of media counted after PLAY
MIN_PACKETS = 20
STEP_WAIT = 4.0         # longest wait for any one answer


def err(*a):
    print(*a, file=sys.stderr, flush=True)


def load_gst(need_server):
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        if need_server:
            gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the machine
        pkg = "gir1.2-gst-rtsp-server-1.0 python3-gi" if need_server else "python3-gi gir1.2-gstreamer-1.0"
        return None, "GStreamer introspection not available (%s): apt-get install %s" % (e, pkg)
    return gi, None


# ----------------------------------------------------------------------------------------
# server
# ----------------------------------------------------------------------------------------

def run_server(args):
    gi, problem = load_gst(True)
    if problem:
        emit({"not_tested": problem})
        return 3
    from gi.repository import Gst, GstRtsp, GstRtspServer, GLib, Gio
    Gst.init(None)
    for name in ("audiotestsrc", "rtpL16pay", "audioconvert"):
        if Gst.ElementFactory.find(name) is None:
            emit({"not_tested": "GStreamer element %s not found: apt-get install "
                                "gstreamer1.0-plugins-base gstreamer1.0-plugins-good" % name})
            return 3

    clients = []          # one dict per RTSP control connection
    lock = threading.Lock()

    server = GstRtspServer.RTSPServer()
    server.set_address(args.listen)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
    pool = GstRtspServer.RTSPAddressPool()
    # A unicast range in the pool makes the media bind its RTP/RTCP sockets to this address.
    if not pool.add_range(args.listen, args.listen, SERVER_PORTS[0], SERVER_PORTS[1], 0):
        emit({"not_tested": "GstRtspServer refused address pool %s" % args.listen})
        return 3
    factory.set_address_pool(pool)
    server.get_mount_points().add_factory(MOUNT, factory)

    def header(msg, field):
        try:
            res, val = msg.get_header(field, 0)
            return val if res == GstRtsp.RTSPResult.OK else None
        except Exception:
            return None

    def on_client(_server, client):
        conn = client.get_connection()
        info = {"ip": conn.get_ip() if conn else None, "requests": [],
                "transport_requested": None, "server_port": None, "played": False}
        with lock:
            clients.append(info)

        def on_req(name):
            def cb(_client, ctx):
                with lock:
                    info["requests"].append(name)
                    if name == "SETUP":
                        req = getattr(ctx, "request", None)
                        if req is not None:
                            info["transport_requested"] = header(req, GstRtsp.RTSPHeaderField.TRANSPORT)
                        st = getattr(ctx, "stream", None)
                        if st is not None:
                            try:
                                rng = st.get_server_port(Gio.SocketFamily.IPV4)
                                info["server_port"] = "%d-%d" % (rng.min, rng.max)
                            except Exception:
                                pass
                    if name == "PLAY":
                        info["played"] = True
            return cb

        for sig, name in (("options-request", "OPTIONS"), ("describe-request", "DESCRIBE"),
                          ("setup-request", "SETUP"), ("play-request", "PLAY"),
                          ("teardown-request", "TEARDOWN")):
            client.connect(sig, on_req(name))

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        emit({"not_tested": "GstRtspServer could not listen on %s:%d" % (args.listen, args.port)})
        return 3

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda *a: (loop.quit(), False)[1])
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda *a: (loop.quit(), False)[1])
    emit({"event": "ready"})
    loop.run()

    # No child processes: the media pipeline lives in this process.
    with lock:
        summary = {
            "event": "summary",
            "listen": "%s:%d" % (args.listen, args.port),
            "rtp_bound": "%s:%d-%d" % (args.listen, SERVER_PORTS[0], SERVER_PORTS[1]),
            "clients": [dict(c) for c in clients],
            "setups": sum(c["requests"].count("SETUP") for c in clients),
            "plays": sum(c["requests"].count("PLAY") for c in clients),
        }
    emit(summary)
    sys.stdout.flush()
    os._exit(0)   # do not wait for GStreamer threads to wind down


# ----------------------------------------------------------------------------------------
# client
# ----------------------------------------------------------------------------------------

class MessageLog:
    """Rebuilds the RTSP messages from rtspsrc's LOG-level dump (gst_rtspsrc_print_rtsp_message)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []      # {"kind": "request"/"response", "method"/"code", "headers": [...], "body"}
        self.cur = None
        self.last_request = None
        self.events = threading.Condition(self.lock)

    def feed(self, text):
        t = text.strip("\n")
        s = t.strip()
        with self.lock:
            if s.startswith("RTSP request message"):
                self.cur = {"kind": "request", "headers": [], "body": ""}
                return
            if s.startswith("RTSP response message"):
                self.cur = {"kind": "response", "headers": [], "body": "",
                            "to": self.last_request}
                return
            if self.cur is None:
                return
            m = re.match(r"^method: '(.*)'$", s)
            if m:
                self.cur["method"] = m.group(1)
                return
            m = re.match(r"^uri:\s*'(.*)'$", s)
            if m:
                self.cur["uri"] = m.group(1)
                return
            m = re.match(r"^code:\s*'(\d+)'$", s)
            if m:
                self.cur["code"] = int(m.group(1))
                return
            m = re.match(r"^reason:\s*'(.*)'$", s)
            if m:
                self.cur["reason"] = m.group(1)
                return
            m = re.match(r"^key: '(.*)', value: '(.*)'$", s, re.S)
            if m:
                self.cur["headers"].append((m.group(1), m.group(2)))
                return
            if s.startswith("-----"):
                if self.cur["kind"] == "request":
                    self.last_request = self.cur.get("method")
                self.messages.append(self.cur)
                self.cur = None
                self.events.notify_all()
                return
            if s.startswith("body:") or s in ("headers:", "request line:", "status line:") \
                    or s.startswith("version:"):
                return
            # the body is dumped as one multi-line text followed by "(length)"
            self.cur["body"] += re.sub(r"\(\d+\)\s*$", "", t)

    def response_to(self, method):
        with self.lock:
            for m in self.messages:
                if m["kind"] == "response" and m.get("to") == method:
                    return m
        return None

    def request(self, method):
        with self.lock:
            for m in self.messages:
                if m["kind"] == "request" and m.get("method") == method:
                    return m
        return None

    def wait_response(self, method, deadline):
        with self.lock:
            while True:
                for m in self.messages:
                    if m["kind"] == "response" and m.get("to") == method:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.events.wait(min(left, 0.1))


def hdr(msg, name):
    if not msg:
        return None
    for k, v in msg["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def url_host_port(url):
    m = re.match(r"^rtsps?u?://(\[[^\]]+\]|[^/:]+)(?::(\d+))?", url or "", re.I)
    if not m:
        return None, None
    return m.group(1).strip("[]"), int(m.group(2)) if m.group(2) else 554


def transport_params(tr):
    out = {}
    for part in (tr or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip().strip('"')
    return out


def first_port(val):
    m = re.match(r"^(\d+)", val or "")
    return int(m.group(1)) if m else None


def run_client(args):
    t0 = time.monotonic()
    hard_deadline = t0 + max(1.0, args.timeout - 1.0)
    logpath = os.path.join(args.dir, "rtspsrc.log")
    # Must be set before Gst.init: the default logger writes here, our log function parses.
    os.environ["GST_DEBUG"] = "rtspsrc:6"
    os.environ["GST_DEBUG_FILE"] = logpath
    os.environ["GST_DEBUG_NO_COLOR"] = "1"
    gi, problem = load_gst(False)
    if problem:
        emit({"not_tested": problem})
        return 3
    from gi.repository import Gst, GstRtsp, GLib
    Gst.init(None)
    if Gst.ElementFactory.find("rtspsrc") is None:
        emit({"not_tested": "rtspsrc not found: apt-get install gstreamer1.0-plugins-good"})
        return 3

    mlog = MessageLog()

    def logfn(category, level, _file, function, _line, _obj, message, *_ud):
        if function in ("gst_rtspsrc_print_rtsp_message", "dump_key_value"):
            try:
                mlog.feed(message.get())
            except Exception:
                pass

    Gst.debug_add_log_function(logfn, None)

    host = args.server if ":" not in args.server else "[%s]" % args.server
    url = "rtsp://%s:%d%s" % (host, args.port, MOUNT)
    pipeline = Gst.Pipeline.new("probe")
    src = Gst.ElementFactory.make("rtspsrc", "src")
    src.set_property("location", url)
    src.set_property("protocols", GstRtsp.RTSPLowerTrans.UDP)
    src.set_property("port-range", "%d-%d" % CLIENT_PORTS)
    src.set_property("tcp-timeout", int(STEP_WAIT * 1_000_000))
    src.set_property("timeout", int(STEP_WAIT * 1_000_000))
    src.set_property("latency", 0)
    src.set_property("retry", 0)
    src.set_property("teardown-timeout", 200 * Gst.MSECOND)
    pipeline.add(src)

    state = {"packets": 0, "first_packet": None, "sdp": None, "error": None,
             "play_at": None}
    lock = threading.Lock()

    def on_sdp(_src, sdp):
        try:
            state["sdp"] = sdp.as_text()
        except Exception:
            pass

    def count(_pad, info):
        with lock:
            state["packets"] += 1
            if state["first_packet"] is None:
                state["first_packet"] = time.monotonic()
        return Gst.PadProbeReturn.OK

    def on_pad(_src, pad):
        sink = Gst.ElementFactory.make("fakesink", None)
        sink.set_property("sync", False)
        sink.set_property("async", False)
        pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.add_probe(Gst.PadProbeType.BUFFER, count)
        pad.link(sink.get_static_pad("sink"))

    src.connect("on-sdp", on_sdp)
    src.connect("pad-added", on_pad)

    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)

    def pump(until, stop=None):
        """Process bus messages until the time `until` (or stop() says so)."""
        while True:
            now = time.monotonic()
            if now >= until or (stop and stop()):
                return
            msg = bus.timed_pop_filtered(int(min(0.05, until - now) * Gst.SECOND),
                                         Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if msg is None:
                continue
            if msg.type == Gst.MessageType.ERROR:
                e, dbg = msg.parse_error()
                if state["error"] is None:
                    state["error"] = e.message
                    err("rtspsrc error:", e.message, dbg)
            elif msg.type == Gst.MessageType.EOS and state["error"] is None:
                state["error"] = "stream ended (EOS)"

    # Control steps: OPTIONS+DESCRIBE, SETUP, PLAY, each bounded by STEP_WAIT.
    def wait_for(method):
        begin = time.monotonic()
        end = min(hard_deadline, begin + STEP_WAIT)
        pump(end, lambda: state["error"] is not None or mlog.response_to(method) is not None)
        state["waited"] = time.monotonic() - begin
        return mlog.response_to(method)

    desc = wait_for("DESCRIBE")
    setup = wait_for("SETUP") if desc and desc.get("code") == 200 else None
    play = wait_for("PLAY") if setup and setup.get("code") == 200 else None
    played_ok = play is not None and play.get("code") == 200
    media_window = 0.0
    if played_ok:
        state["play_at"] = time.monotonic()
        end = min(hard_deadline, state["play_at"] + MEDIA_WINDOW)
        pump(end)
        media_window = time.monotonic() - state["play_at"]
    with lock:
        packets = state["packets"]

    # Tear down quickly; never let this hang past --timeout.
    done = threading.Event()

    def stop():
        pipeline.set_state(Gst.State.NULL)
        done.set()
    threading.Thread(target=stop, daemon=True).start()
    done.wait(max(0.1, min(1.5, hard_deadline + 0.8 - time.monotonic())))

    # ---------------------------------------------------------------- report
    steps, named, sent = [], [], []
    connect_failed = desc is None

    def resp_text(r):
        return "%d %s" % (r["code"], r.get("reason", "")) if r and "code" in r else None

    if desc is None:
        why = state["error"] or "no answer in %.1f s" % state.get("waited", STEP_WAIT)
        if mlog.response_to("OPTIONS") is None and mlog.request("OPTIONS") is None:
            why = "control connection to %s:%d failed: %s" % (args.server, args.port, why)
        steps.append({"name": "DESCRIBE", "ok": False, "detail": why})
    else:
        sdp = desc.get("body") or state["sdp"] or ""
        ok = desc.get("code") == 200
        steps.append({"name": "DESCRIBE", "ok": ok,
                      "detail": resp_text(desc) + (" with SDP" if sdp.strip() else " without SDP")})
        for name in ("Content-Base", "Content-Location"):
            h, p = url_host_port(hdr(desc, name))
            if h:
                named.append({"where": "%s in the DESCRIBE reply" % name, "address": h, "port": p})
        for line in sdp.splitlines():
            line = line.strip()
            m = re.match(r"^o=\S+ \S+ \S+ IN IP[46] (\S+)", line)
            if m:
                named.append({"where": "SDP o= in the DESCRIBE reply", "address": m.group(1),
                              "port": None})
            m = re.match(r"^c=IN IP[46] ([^/\s]+)", line)
            if m and m.group(1) not in ("0.0.0.0", "::"):
                named.append({"where": "SDP c= in the DESCRIBE reply", "address": m.group(1),
                              "port": None})
            m = re.match(r"^a=control:\s*(rtsp\S*)", line, re.I)
            if m:
                h, p = url_host_port(m.group(1))
                if h:
                    named.append({"where": "SDP a=control in the DESCRIBE reply", "address": h,
                                  "port": p})

    setup_req = mlog.request("SETUP")
    server_port = source = None
    if setup_req is not None:
        cp = transport_params(hdr(setup_req, "Transport")).get("client_port")
        if cp:
            # Transport client_port carries no address: the server sends to the source
            # address it sees on the control connection.
            # "address" stays a string (the report's consumer requires one); empty = none.
            sent.append({"where": "Transport client_port in the SETUP (no address: the server "
                                  "uses the control connection's source)",
                         "address": "", "port": first_port(cp)})
        h, p = url_host_port(setup_req.get("uri"))
    if desc is not None and desc.get("code") == 200:
        if setup is None:
            steps.append({"name": "SETUP", "ok": False,
                          "detail": state["error"] or "no answer in %.1f s" % state.get("waited", STEP_WAIT)})
        else:
            tr = hdr(setup, "Transport")
            tp = transport_params(tr)
            server_port = tp.get("server_port")
            source = tp.get("source")
            sp = first_port(server_port)
            if source:
                named.append({"where": "Transport source= in the SETUP reply", "address": source,
                              "port": sp})
            if sp is not None:
                named.append({"where": "Transport server_port in the SETUP reply" +
                              ("" if source else " (no source=, so the address dialled)"),
                              "address": source or args.server, "port": sp})
            if tp.get("destination"):
                named.append({"where": "Transport destination= in the SETUP reply",
                              "address": tp["destination"], "port": first_port(tp.get("client_port"))})
            steps.append({"name": "SETUP", "ok": setup.get("code") == 200,
                          "detail": "%s, Transport: %s" % (resp_text(setup), tr)})
    if setup is not None and setup.get("code") == 200:
        if play is None:
            steps.append({"name": "PLAY", "ok": False,
                          "detail": state["error"] or "no answer in %.1f s" % state.get("waited", STEP_WAIT)})
        else:
            steps.append({"name": "PLAY", "ok": played_ok, "detail": resp_text(play)})
            for name in ("RTP-Info",):
                v = hdr(play, name) or ""
                for u in re.findall(r"url=([^;,\s]+)", v):
                    h, p = url_host_port(u)
                    if h:
                        named.append({"where": "RTP-Info url in the PLAY reply", "address": h,
                                      "port": p})

    where_from = []
    if server_port:
        where_from.append("server_port %s" % server_port)
    if source:
        where_from.append("source %s" % source)
    where_from.append("client_port %d-%d" % (CLIENT_PORTS[0], CLIENT_PORTS[0] + 1)
                      if sent and sent[0]["port"] == CLIENT_PORTS[0] else
                      "client_port %s" % (sent[0]["port"] if sent else "?"))
    media_ok = played_ok and packets >= MIN_PACKETS
    if played_ok:
        steps.append({"name": "media", "ok": media_ok,
                      "detail": "%d RTP packets arrived in %.0f s (%s)" %
                                (packets, media_window, ", ".join(where_from))})

    if media_ok:
        detail = "played: %d RTP packets over UDP in %.0f s (%s)" % (
            packets, media_window, ", ".join(where_from))
    elif played_ok:
        detail = ("DESCRIBE, SETUP, PLAY answered; %d RTP packets arrived in %.0f s (%s)" %
                  (packets, media_window, ", ".join(where_from)))
    elif connect_failed:
        detail = "RTSP %s: %s" % (url, steps[0]["detail"])
    else:
        bad = next(s for s in steps if not s["ok"])
        detail = "RTSP %s failed: %s" % (bad["name"], bad["detail"])
    notes = ("rtspsrc has no local-address option (control connection and UDP sockets bind "
             "the wildcard), so --bind %s was not applied: the route picks the source; UDP "
             "ports pinned to %d-%d" % (args.bind, CLIENT_PORTS[0], CLIENT_PORTS[1]))

    # drop duplicates, keep order
    seen, uniq = set(), []
    for n in named:
        key = (n["where"], n["address"], n["port"])
        if key not in seen:
            seen.add(key)
            uniq.append(n)

    emit({"ok": bool(media_ok), "steps": steps, "detail": detail, "named": uniq, "sent": sent,
          "peer_ignored_address": False, "rtp_packets": packets,
          "client_ports": "%d-%d" % CLIENT_PORTS, "bind_applied": False, "notes": notes})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main():
    args = probe.args(__doc__, 554, bind_required=False)
    if args.role == "server":
        return run_server(args)
    # Watchdog: whatever happens inside GStreamer, answer within --timeout.
    def watchdog(*_a):
        emit({"ok": False, "steps": [], "detail": "RTSP client did not finish within %.0f s" %
              args.timeout, "named": [], "sent": [], "peer_ignored_address": False})
        os._exit(0)
    signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, args.timeout - 0.3))
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
