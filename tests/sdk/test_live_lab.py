"""The official SDK against a live lab: `eiplab up examples/one-eip.toml --backend netns`.

alibabacloud_vpc20160428 allocates an EIP, associates it with i-web (NAT mode) and a client in
the Internet namespace reaches an HTTP server inside the instance through it; after
UnassociateEipAddress the same request fails. /metrics lists the EIP by its allocation id.
Each test runs its own lab (prefix `s{pid}-`, a free API port, its own state directory); at the
end `up` gets SIGTERM and must leave no namespace behind.

Needs root and /dev/net/tun (CI runs as root); skipped otherwise, except under EIPLAB_NO_SKIP=1
(set by .ci/run), where a test that cannot run fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import AK_ID, AK_SECRET, REPO, NewEcs, NewVpc, allocate, describe_one, free_port, unassociate, wait_status

LAB_FILE = REPO / "examples" / "one-eip.toml"
INSTANCE = "i-web"
LAB_EIP = ("eip-web", "198.51.100.10")  # one-eip.toml: NAT on i-web's primary private IP
INTERNET_CLIENT = "203.0.113.1"          # the first host of [internet] cidr, eth0 of `internet`
HTTP_PORT = 8080
READY_LINE = "eiplab: ready"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices); CI runs as root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: this machine cannot create TUN devices"
    return None


def netns_with_prefix(prefix: str) -> list[str]:
    """Names from `ip netns list` that start with `prefix`."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return sorted(n for n in names if n.startswith(prefix))


class LiveLab:
    """One `eiplab up --backend netns` process and the helper processes started in its namespaces."""

    def __init__(self, binary: Path, workdir: Path, prefix: str):
        self.binary = binary
        self.workdir = workdir
        self.prefix = prefix
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "up.stderr.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        self._helpers: list[subprocess.Popen] = []

    # -- the lab process ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "LiveLab":
        self.port = free_port()
        cmd = [
            str(self.binary), "up", str(LAB_FILE),
            "--backend", "netns",
            "--prefix", self.prefix,
            "--api-listen", f"127.0.0.1:{self.port}",
            "--state", str(self.state),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=self.workdir,
                start_new_session=True,
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"eiplab up exited with {self.proc.returncode} before '{READY_LINE}':\n"
                    f"$ {' '.join(cmd)}\n{self.output_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"eiplab up printed no '{READY_LINE}' within {timeout}s:\n"
                                     f"$ {' '.join(cmd)}\n{self.output_tail()}")
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:  # drained to the end, so `up` never blocks on a full pipe
            line = raw.decode(errors="replace").rstrip("\n")
            self.stdout_lines.append(line)
            if line.strip() == READY_LINE:
                self._ready.set()

    def stop(self, timeout: float = 30.0) -> tuple[int | None, str | None]:
        """Kills the helpers, then SIGTERM to `up` by its pid. (exit code, problem or None)."""
        self.kill_helpers()
        if self.proc is None:
            return None, None
        if self.proc.poll() is not None:
            return self.proc.returncode, f"eiplab up had already exited with {self.proc.returncode}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return self.proc.returncode, f"eiplab up ignored SIGTERM for {timeout}s (killed)"
        return rc, (None if rc == 0 else f"eiplab up exited with {rc} after SIGTERM (want 0)")

    def output_tail(self, n: int = 40) -> str:
        try:
            err = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except FileNotFoundError:
            err = []
        return ("--- up stdout ---\n" + "\n".join(self.stdout_lines[-n:]) +
                "\n--- up stderr (last lines) ---\n" + "\n".join(err))

    # -- inside the lab -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def run_in(self, name: str, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(name), *cmd], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def curl_from_internet(self, url: str, max_time: int = 3) -> subprocess.CompletedProcess:
        return self.run_in("internet", "curl", "-s", "--noproxy", "*", "--max-time", str(max_time), url,
                           timeout=max_time + 10)

    def http_server(self, name: str, port: int, directory: Path, timeout: float = 10.0) -> tuple[subprocess.Popen, Path]:
        """`python3 -m http.server PORT --bind 0.0.0.0` inside namespace `name`, killed by its pid
        at the end (stop(), or kill_helpers()). Returns (process, its log)."""
        log_path = directory.parent / f"http-{name}-{port}.log"
        with open(log_path, "wb") as log:
            # `ip netns exec` execs the command in place: the pid is the server's own
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), sys.executable, "-u", "-m", "http.server", str(port),
                 "--bind", "0.0.0.0", "--directory", str(directory)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._helpers.append(p)
        deadline = time.monotonic() + timeout
        while "Serving HTTP" not in log_path.read_text(errors="replace"):
            assert p.poll() is None, f"http.server in {self.ns(name)} exited with {p.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"http.server in {self.ns(name)} not listening after {timeout}s"
            time.sleep(0.05)
        return p, log_path

    def kill_helpers(self) -> None:
        for p in self._helpers:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self._helpers.clear()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.endpoint}/metrics", timeout=10) as r:
            assert r.status == 200, r.status
            return r.read().decode()


@pytest.fixture
def live_lab(eiplab_bin, tmp_path, request):
    reason = _skip_reason()
    if reason:
        if os.environ.get("EIPLAB_NO_SKIP") == "1":
            pytest.fail(f"cannot run: {reason}; EIPLAB_NO_SKIP=1 forbids skipping")
        pytest.skip(reason)
    prefix = f"s{os.getpid()}-"
    stale = netns_with_prefix(prefix)
    if stale:
        pytest.fail(f"namespaces with the prefix {prefix} exist before the test: {stale} "
                    f"(remove them: {eiplab_bin} down {LAB_FILE} --prefix {prefix})")
    lab = LiveLab(eiplab_bin, tmp_path, prefix)
    try:
        lab.start()
    except BaseException:
        lab.stop()
        _cleanup_or_report(eiplab_bin, prefix)
        raise
    yield lab

    problems = []
    _rc, problem = lab.stop()
    if problem:
        problems.append(problem)
    left = _cleanup_or_report(eiplab_bin, prefix)
    if left:
        problems.append(left)
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed or problems:
        print(lab.output_tail(60))
    if problems:
        pytest.fail("teardown: " + "\n".join(problems), pytrace=False)


def _cleanup_or_report(binary: Path, prefix: str) -> str | None:
    """None when no namespace with `prefix` is left; else runs `eiplab down` and says what was left."""
    left = netns_with_prefix(prefix)
    if not left:
        return None
    down = subprocess.run([str(binary), "down", str(LAB_FILE), "--prefix", prefix], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    return (f"namespaces left after eiplab up exited: {left}; `eiplab down` exit {down.returncode}:\n"
            f"{down.stdout}{down.stderr}still left after down: {netns_with_prefix(prefix)}")


# ---------------------------------------------------------------------------------------------


def _new_eip_on_instance(lab: LiveLab):
    """Frees i-web's primary private IP (it holds eip-web), allocates an EIP through the SDK and
    associates it with i-web; waits for InUse. Returns (client, allocation id, address)."""
    vpc = NewVpc(lab.endpoint, AK_ID, AK_SECRET)
    lab_eip = describe_one(vpc, LAB_EIP[0])
    assert lab_eip is not None and lab_eip["IpAddress"] == LAB_EIP[1] and lab_eip["Status"] == "InUse", lab_eip
    # an instance's primary private IP holds one NAT EIP: free it for the new one
    unassociate(vpc, LAB_EIP[0], INSTANCE, "EcsInstance")

    r = allocate(vpc)
    aid, eip = r["AllocationId"], r["EipAddress"]
    assert eip != LAB_EIP[1]
    vpc.call("AssociateEipAddress", AllocationId=aid, InstanceId=INSTANCE, InstanceType="EcsInstance")
    e = wait_status(vpc, aid, "InUse", timeout=15)
    assert e["InstanceId"] == INSTANCE and e["IpAddress"] == eip, e
    return vpc, aid, eip


def test_sdk_allocate_associate_reach_guest_then_unassociate(live_lab, tmp_path):
    lab = live_lab
    t_start = time.monotonic()
    vpc, aid, eip = _new_eip_on_instance(lab)
    print(f"{eip} ({aid}) InUse on {INSTANCE} after {time.monotonic() - t_start:.2f} s")

    www = tmp_path / "www"
    www.mkdir()
    marker = f"eiplab-live-{os.getpid()}.txt"
    (www / marker).write_text("hello from i-web\n")
    server, server_log = lab.http_server(INSTANCE, HTTP_PORT, www)

    # from the Internet, through the new EIP, to the server in the instance
    url = f"http://{eip}:{HTTP_PORT}/"
    deadline = time.monotonic() + 5
    attempts = []
    while True:
        r = lab.curl_from_internet(url, max_time=3)
        attempts.append(r.returncode)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"curl {url} from {lab.ns('internet')} never succeeded within 5 s (curl exit codes "
                        f"{attempts}, last stderr {r.stderr!r})\n{lab.output_tail()}")
        time.sleep(0.2)
    print(f"curl {url} from {lab.ns('internet')}: ok (attempts' exit codes {attempts})")
    assert marker in r.stdout, f"not our server's directory listing: {r.stdout[:500]!r}"

    # NAT mode: the server sees the client's own address, and the guest never holds the EIP
    deadline = time.monotonic() + 2
    while f"{INTERNET_CLIENT} - - " not in server_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, (
            f"the server did not log a request from {INTERNET_CLIENT}:\n{server_log.read_text()}")
        time.sleep(0.05)
    addrs = lab.run_in(INSTANCE, "ip", "-4", "-o", "addr", "show")
    assert addrs.returncode == 0, addrs.stderr
    assert eip not in addrs.stdout, f"NAT mode, yet the instance holds the EIP:\n{addrs.stdout}"

    # unassociate: within a few seconds the same request fails
    vpc.call("UnassociateEipAddress", AllocationId=aid, InstanceId=INSTANCE, InstanceType="EcsInstance")
    t0 = time.monotonic()
    outcomes = []
    while True:
        r = lab.curl_from_internet(url, max_time=2)
        outcomes.append(r.returncode)
        if r.returncode != 0:
            break
        assert time.monotonic() - t0 < 6, (
            f"curl {url} still succeeds {time.monotonic() - t0:.1f} s after UnassociateEipAddress "
            f"(exit codes {outcomes})")
        time.sleep(0.2)
    print(f"curl failed (exit {r.returncode}) {time.monotonic() - t0:.2f} s after UnassociateEipAddress; "
          f"exit codes {outcomes}")
    e = wait_status(vpc, aid, "Available", timeout=10)
    assert not e.get("InstanceId"), e
    r = lab.curl_from_internet(url, max_time=2)
    assert r.returncode != 0, f"curl {url} succeeds again with the EIP Available: {r.stdout[:200]!r}"
    assert server.poll() is None, "the server in the instance died"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        assert m, f"not a Prometheus sample line: {line!r}"
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def test_metrics_list_the_allocated_eip(live_lab):
    lab = live_lab
    _vpc, aid, eip = _new_eip_on_instance(lab)
    # some traffic to the EIP from the Internet (nothing listens on the port: a SYN is enough)
    lab.curl_from_internet(f"http://{eip}:{HTTP_PORT}/", max_time=1)

    deadline = time.monotonic() + 5  # counters lag by up to ~250 ms
    while True:
        text = lab.metrics()
        samples = parse_metrics(text)
        mine = [(n, l, v) for n, l, v in samples if l.get("allocation_id") == aid]
        to_guest = sum(v for n, l, v in mine
                       if n == "eiplab_eip_packets_total" and l.get("direction") == "to_guest")
        if mine and to_guest >= 1:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"/metrics has no eiplab_eip_packets_total{{allocation_id=\"{aid}\",direction=\"to_guest\"}} "
                        f">= 1 after traffic to {eip}; its samples: {mine}\n--- /metrics ---\n{text[:3000]}")
        time.sleep(0.2)
    assert all(l.get("address") == eip for n, l, v in mine if "address" in l), mine
    assert any(l.get("address") == eip for n, l, v in mine), f"no sample labels {aid} with address {eip}: {mine}"


def test_metadata_and_the_api_give_an_eni_one_mac(live_lab):
    """The guest's metadata service and DescribeNetworkInterfaces name the same MAC (they
    used to differ: 00:16:3e:HI:LO:10 against 00:16:3e:00:HI:LO)."""
    lab = live_lab
    r = lab.run_in(INSTANCE, "curl", "-sS", "--max-time", "3",
                   "http://100.100.100.200/latest/meta-data/mac")
    assert r.returncode == 0, r.stderr
    mac = r.stdout.strip()
    listed = lab.run_in(INSTANCE, "curl", "-sS", "--max-time", "3",
                        "http://100.100.100.200/latest/meta-data/network/interfaces/macs/")
    assert listed.returncode == 0, listed.stderr
    assert f"{mac}/" in listed.stdout.split(), listed.stdout
    ecs = NewEcs(lab.endpoint, AK_ID, AK_SECRET)
    enis = ecs.call("DescribeNetworkInterfaces", InstanceId=INSTANCE)["NetworkInterfaceSets"]["NetworkInterfaceSet"]
    primary = [e for e in enis if e["Type"] == "Primary"]
    assert len(primary) == 1, enis
    assert primary[0]["MacAddress"] == mac, (primary[0]["MacAddress"], mac)
    eni_id = lab.run_in(INSTANCE, "curl", "-sS", "--max-time", "3",
                        f"http://100.100.100.200/latest/meta-data/network/interfaces/macs/{mac}/network-interface-id")
    assert eni_id.stdout.strip() == primary[0]["NetworkInterfaceId"]
