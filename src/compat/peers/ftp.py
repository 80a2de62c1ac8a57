#!/usr/bin/python3
"""FTP probe for `eiplab compat`.

server: pyftpdlib (Debian python3-pyftpdlib) in-process, anonymous read/write on --dir,
        passive ports 40000-40199, pyftpdlib's defaults otherwise (it refuses PORT/EPRT to an
        address other than the control connection's peer, and passive data connections from
        a foreign address, as real servers do).
client: Python's ftplib, --variant pasv | epsv | port | eprt. Logs in anonymously, uploads a
        256 KiB random file (STOR), downloads it back (RETR) and compares sha256.

Contract: one JSON line on stdout (client) / ready + summary lines (server); see probe.py.
"""

import hashlib
import os
import signal
import socket
import sys

import probe
from probe import emit

PASSIVE_PORTS = range(40000, 40200)
FILE_SIZE = 256 * 1024
STEP_WAIT = 4.0  # every single network wait of the client is bounded by this


def log(msg):
    sys.stderr.write("ftp.py: %s\n" % msg)
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------

def run_server(args):
    try:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import DTPHandler, FTPHandler
        from pyftpdlib.servers import FTPServer
    except ImportError as e:
        emit({"not_tested": "pyftpdlib not importable (%s): apt-get install python3-pyftpdlib" % e})
        return 3

    seen = {
        "control_connections": 0,
        "logins": 0,
        "data_connections": 0,
        "files_received": [],
        "files_sent": [],
        "refusals": [],
        "data_failures": [],
        "commands": [],
    }

    class CountingDTP(DTPHandler):
        # pyftpdlib builds one DTPHandler per established data connection (passive accept or
        # active connect), after the foreign-address check.
        def __init__(self, sock, cmd_channel):
            seen["data_connections"] += 1
            try:
                peer = sock.getpeername()
                log("data connection with %s:%s" % (peer[0], peer[1]))
            except OSError:
                pass
            DTPHandler.__init__(self, sock, cmd_channel)

    class RecordingHandler(FTPHandler):
        dtp_handler = CountingDTP
        passive_ports = PASSIVE_PORTS
        banner = "eiplab compat FTP (pyftpdlib) ready."

        def on_connect(self):
            seen["control_connections"] += 1

        def on_login(self, username):
            seen["logins"] += 1

        def on_file_received(self, file):
            seen["files_received"].append(os.path.basename(file))

        def on_file_sent(self, file):
            seen["files_sent"].append(os.path.basename(file))

        def pre_process_command(self, line, cmd, arg):
            if cmd in ("PORT", "EPRT", "PASV", "EPSV"):
                seen["commands"].append(("%s %s" % (cmd, arg or "")).strip())
            return FTPHandler.pre_process_command(self, line, cmd, arg)

        def respond(self, resp, *a, **kw):
            if "foreign address" in resp or resp.startswith("501 PORT against"):
                seen["refusals"].append(resp)
            elif resp.startswith("425"):
                seen["data_failures"].append(resp)
            elif resp.startswith(("227", "229")):
                seen["commands"].append("-> " + resp)
            return FTPHandler.respond(self, resp, *a, **kw)

    authorizer = DummyAuthorizer()
    # read + write for the anonymous user (pyftpdlib warns about it on stderr: wanted here).
    authorizer.add_anonymous(os.path.abspath(args.dir), perm="elradfmwMT")
    RecordingHandler.authorizer = authorizer

    try:
        server = FTPServer((args.listen, args.port), RecordingHandler)
    except OSError as e:
        emit({"not_tested": "pyftpdlib cannot listen on %s:%s: %s" % (args.listen, args.port, e)})
        return 3

    def on_term(signum, frame):
        # serve_forever(handle_exit=True) catches this and closes every socket.
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    emit({"event": "ready"})
    try:
        server.serve_forever(timeout=0.5, handle_exit=True)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            server.close_all()
        except Exception:  # already closed by serve_forever
            pass
    emit({
        "event": "summary",
        "control_connections": seen["control_connections"],
        "logins": seen["logins"],
        "data_connections": seen["data_connections"],
        "files_received": seen["files_received"],
        "files_sent": seen["files_sent"],
        "refused": seen["refusals"][0] if seen["refusals"] else None,
        "refusals": seen["refusals"],
        "data_failures": seen["data_failures"],
        "commands": seen["commands"],
    })
    return 0


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------

class Overall(Exception):
    """The whole-run --timeout expired."""


def describe_exc(e, what):
    """Network engineer's words for an exception raised while doing `what`."""
    if isinstance(e, Overall):
        return "%s: the whole run hit its time limit" % what
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "%s timed out after %g s" % (what, STEP_WAIT)
    if isinstance(e, ConnectionRefusedError):
        return "%s was refused (TCP RST)" % what
    if isinstance(e, ConnectionResetError):
        return "%s was reset" % what
    if isinstance(e, EOFError):
        return "%s: the server closed the control connection" % what
    if isinstance(e, OSError) and e.strerror:
        return "%s failed: %s" % (what, e.strerror)
    return "%s failed: %s" % (what, str(e).strip() or type(e).__name__)


def run_client(args):
    try:
        import ftplib
    except ImportError as e:  # stdlib, but be explicit
        emit({"not_tested": "ftplib not importable: %s" % e})
        return 3

    variant = args.variant or "pasv"
    if variant not in ("pasv", "epsv", "port", "eprt"):
        emit({"not_tested": "unknown FTP variant %r (pasv, epsv, port, eprt)" % variant})
        return 3

    result = {"ok": False, "steps": [], "detail": "", "named": [], "sent": [],
              "peer_ignored_address": False, "variant": variant}
    steps = result["steps"]
    bind = args.bind
    # data-path facts for the detail sentence
    state = {"data_where": None}

    def step(name, ok, detail):
        steps.append({"name": name, "ok": ok, "detail": detail})

    class ProbeFTP(ftplib.FTP):
        # pasv: follow the 227 reply's address as classic clients do (ftplib by default ignores
        # it and reuses the control connection's peer). makepasv below does the same, on purpose:
        # the probe shows what a classic client meets when a 227 names a private address.
        trust_server_pasv_ipv4_address = True

        def makepasv(self):
            if variant == "epsv":
                resp = self.sendcmd("EPSV")
                host, port = ftplib.parse229(resp, self.sock.getpeername())
                result["named"].append({"where": "229 reply", "address": host, "port": port})
                state["data_where"] = "229 reply carried port %d, dialled at %s" % (port, host)
                return host, port
            resp = self.sendcmd("PASV")
            host, port = ftplib.parse227(resp)
            result["named"].append({"where": "227 reply", "address": host, "port": port})
            state["data_where"] = "227 reply carried %s:%d" % (host, port)
            return host, port

        def makeport(self):
            # Listening socket on --bind (ftplib's own binds to every address).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((bind, 0))
                sock.listen(1)
                port = sock.getsockname()[1]
                if variant == "eprt":
                    where = "EPRT command"
                    result["sent"].append({"where": where, "address": bind, "port": port})
                    state["data_where"] = "EPRT command named %s:%d" % (bind, port)
                    self.sendeprt(bind, port)
                else:
                    where = "PORT command"
                    result["sent"].append({"where": where, "address": bind, "port": port})
                    state["data_where"] = "PORT command named %s:%d" % (bind, port)
                    self.sendport(bind, port)
            except BaseException:
                sock.close()
                raise
            sock.settimeout(STEP_WAIT)
            return sock


    def on_alarm(signum, frame):
        raise Overall()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, args.timeout - 0.5))

    payload = os.urandom(FILE_SIZE)
    want = hashlib.sha256(payload).hexdigest()
    up_name = "up-%d-%s.bin" % (os.getpid(), variant)
    local_up = os.path.join(args.dir, up_name)
    with open(local_up, "wb") as f:
        f.write(payload)

    ftp = ProbeFTP(timeout=STEP_WAIT, source_address=(bind, 0))
    ftp.set_pasv(variant in ("pasv", "epsv"))
    failed = None
    try:
        # 1. control connection
        try:
            banner = ftp.connect(args.server, args.port, timeout=STEP_WAIT, source_address=(bind, 0))
            step("connect", True, banner.split("\n")[0])
        except Exception as e:
            failed = describe_exc(e, "the control connection to %s:%d" % (args.server, args.port))
            step("connect", False, failed)
            raise StopIteration

        # 2. login
        try:
            resp = ftp.login("anonymous", "probe@lab.test")
            step("login", True, resp.split("\n")[0])
            ftp.voidcmd("TYPE I")  # binary: the file must come back byte for byte
        except Exception as e:
            failed = describe_exc(e, "anonymous login")
            if isinstance(e, ftplib.Error):
                failed = "anonymous login was refused: %s" % str(e).strip()
            step("login", False, failed)
            raise StopIteration

        # 3. upload
        failed = transfer(ftplib, ftp, state, step, "STOR", up_name, local_up, None)
        if failed:
            raise StopIteration

        # 4. download
        got = bytearray()
        failed = transfer(ftplib, ftp, state, step, "RETR", up_name, None, got)
        if failed:
            raise StopIteration

        # 5. compare
        have = hashlib.sha256(bytes(got)).hexdigest()
        if len(got) == FILE_SIZE and have == want:
            step("compare", True, "%d bytes, sha256 %s" % (len(got), have[:16]))
            result["ok"] = True
            result["detail"] = "upload and download of %d bytes matched (sha256)" % FILE_SIZE
        else:
            failed = "the file came back different: %d bytes, sha256 %s instead of %d bytes, sha256 %s" % (
                len(got), have[:16], FILE_SIZE, want[:16])
            step("compare", False, failed)
    except StopIteration:
        pass
    except Overall:
        failed = "the whole run hit its %g s time limit" % args.timeout
        step("timeout", False, failed)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            ftp.sock and ftp.sock.settimeout(1.0)
            if ftp.sock and result["ok"]:
                ftp.quit()
        except Exception:
            pass
        try:
            ftp.close()
        except Exception:
            pass
        try:
            os.unlink(local_up)
        except OSError:
            pass
    if not result["ok"]:
        result["detail"] = failed or "the FTP session did not complete"
    del result["variant"]
    emit(result)
    return 0


def transfer(ftplib, ftp, state, step, verb, name, local_path, sink):
    """Run STOR or RETR; return None on success or a failure sentence."""
    cmd = "%s %s" % (verb, name)
    state["data_where"] = None
    conn = None
    try:
        try:
            conn = ftp.transfercmd(cmd)
        except ftplib.error_perm as e:
            msg = str(e).strip()
            if "foreign address" in msg or msg.startswith("501"):
                failed = "the server refused the data connection: %s" % msg.rstrip(".")
            else:
                failed = "%s was refused: %s" % (verb, msg)
            step(verb, False, failed)
            return failed
        except ftplib.Error as e:
            msg = str(e).strip()
            if msg.startswith("425"):
                where = state["data_where"]
                failed = ("the server could not open the data connection (%s): %s" % (where, msg)
                          if where else "the server could not open the data connection: %s" % msg)
            else:
                failed = "%s failed: %s" % (verb, msg)
            step(verb, False, failed)
            return failed
        except Overall:
            raise
        except Exception as e:
            where = state["data_where"]
            if where and ftp.passiveserver:
                failed = describe_exc(e, "%s; the data connection to it" % where)
            elif where:
                failed = describe_exc(e, "%s; waiting for the server's data connection" % where)
                if isinstance(e, (socket.timeout, TimeoutError)):
                    failed = "%s; the server's data connection to it never arrived within %g s" % (where, STEP_WAIT)
            else:
                failed = describe_exc(e, verb)
            step(verb, False, failed)
            return failed
        n = 0
        try:
            conn.settimeout(STEP_WAIT)
            if verb == "STOR":
                with open(local_path, "rb") as f:
                    while True:
                        buf = f.read(16384)
                        if not buf:
                            break
                        conn.sendall(buf)
                        n += len(buf)
            else:
                while True:
                    buf = conn.recv(65536)
                    if not buf:
                        break
                    sink.extend(buf)
                    n += len(buf)
            conn.close()
            conn = None
            resp = ftp.voidresp()
        except Overall:
            raise
        except ftplib.Error as e:
            failed = "%s ended with %s after %d bytes" % (verb, str(e).strip(), n)
            step(verb, False, failed)
            return failed
        except Exception as e:
            failed = describe_exc(e, "the %s data transfer (after %d bytes)" % (verb, n))
            step(verb, False, failed)
            return failed
        where = state["data_where"]
        step(verb, True, "%s (%d bytes%s)" % (resp.split("\n")[0], n, ("; %s" % where) if where else ""))
        return None
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


# --------------------------------------------------------------------------------------------

def main():
    args = probe.args("eiplab compat FTP probe", 21, variant="pasv")
    if args.role == "server":
        return run_server(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
