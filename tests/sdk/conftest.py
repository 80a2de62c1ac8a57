"""Fixtures of the SDK compatibility tests.

Every test gets its own `eiplab up LAB --backend none --state DIR --api-listen 127.0.0.1:PORT`
on a free port with its own state directory, stopped by its pid at the end. The clients are the
official SDKs, unmodified:

- `new`: alibabacloud_vpc20160428 (ACS3-HMAC-SHA256, typed request/response models),
- `old`: aliyunsdkcore AcsClient + aliyunsdkvpc request classes (signature 1.0, HMAC-SHA1),
- ECS actions: alibabacloud_ecs20140526.

Both VPC adapters take the API's own parameter names (`AllocationId=...`) and return the
response as a dict with the API's own field names; for the new SDK that dict is the typed
response model turned back into a map, so a field the model could not read is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE_LAB = HERE / "lab.toml"

AK_ID = "LTAIlabkey"
AK_SECRET = "lab-secret"
REGION = "cn-shanghai"
POOL = ipaddress.ip_network("198.51.100.0/24")
ALLOCATION_ID_RE = re.compile(r"^eip-[0-9a-z]+$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?Z$")

SETTLED = ("Available", "InUse")

# The server is on loopback: no proxy, whatever the environment says.
for _k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


def eiplab_binary() -> Path:
    p = os.environ.get("EIPLAB_BIN") or str(REPO / "target" / "release" / "eiplab")
    return Path(p)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_text(transition_ms: int = 50, extra: str = "", base: bool = True, multi_binded: bool = True) -> str:
    """The lab file: tests/sdk/lab.toml (unless base=False) with `transition_ms` and
    `multi_binded` rewritten, plus `extra` TOML appended."""
    text = BASE_LAB.read_text() if base else _MINIMAL_LAB
    text = re.sub(r"(?m)^transition_ms = \d+", f"transition_ms = {transition_ms}", text)
    text = re.sub(
        r"(?m)^multi_binded = \w+", f"multi_binded = {'true' if multi_binded else 'false'}", text
    )
    return text + "\n" + extra


_MINIMAL_LAB = """
region = "cn-shanghai"

[internet]
cidr = "203.0.113.0/24"
eip_pool = "198.51.100.0/24"

[api]
access_keys = [{ id = "LTAIlabkey", secret = "lab-secret" }]
transition_ms = 50

[account]
multi_binded = true

[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"
"""


class LabServer:
    """One `eiplab up` process. `stop()` sends SIGTERM to its pid, `kill9()` SIGKILL."""

    def __init__(self, binary: Path, text: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.lab_path = workdir / "lab.toml"
        self.lab_path.write_text(text)
        self.state = workdir / "state"
        self.state.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0
        self.log_path = workdir / "server.log"

    # -- process ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "LabServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n----- start #{self.starts} on port {self.port} -----\n".encode())
        log.flush()
        cmd = [
            str(self.binary), "up", str(self.lab_path),
            "--backend", "none",
            "--state", str(self.state),
            "--api-listen", f"127.0.0.1:{self.port}",
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"eiplab up exited with {self.proc.returncode} before listening:\n{self.log_tail()}"
                )
            if "api listening on" in self.log_text() or self._port_open():
                if self._port_open():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"eiplab up did not listen within {timeout}s:\n{self.log_tail()}")

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> int | None:
        """SIGTERM by pid, then SIGKILL by pid after 10 s. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise RuntimeError("eiplab up ignored SIGTERM for 10 s")

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self) -> "LabServer":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- endpoints ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def http(self, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.endpoint}{path}", method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def lab_get(self, path: str):
        status, body = self.http("GET", path)
        assert status == 200, f"GET {path}: HTTP {status}: {body[:500]!r}"
        return json.loads(body)

    def status(self):
        return self.lab_get("/_eiplab/status")

    def dataplane(self):
        return self.lab_get("/_eiplab/dataplane")

    def advance_clock(self, seconds: int) -> None:
        status, body = self.http("POST", f"/_eiplab/clock?advance_seconds={int(seconds)}")
        assert status == 200, f"POST /_eiplab/clock: HTTP {status}: {body[:500]!r}"

    # -- clients ------------------------------------------------------------------------------

    def vpc(self, kind: str, access_key_id: str = AK_ID, secret: str = AK_SECRET):
        return (NewVpc if kind == "new" else OldVpc)(self.endpoint, access_key_id, secret)

    def ecs(self, access_key_id: str = AK_ID, secret: str = AK_SECRET):
        return NewEcs(self.endpoint, access_key_id, secret)


# ---------------------------------------------------------------------------------------------
# SDK adapters
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error response as the SDK reported it."""

    def __init__(self, sdk: str, code: str, status: int | None, message: str, request_id=None):
        super().__init__(f"[{sdk}] {code} (HTTP {status}): {message}")
        self.sdk = sdk
        self.code = code
        self.status = status
        self.message = message
        self.request_id = request_id


def snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


class _NewSdk:
    """alibabacloud_*: typed request model built from the API's names, typed response model."""

    sdk = "new"
    region_actions: set[str] = set()

    def __init__(self, endpoint: str, ak: str, secret: str):
        from alibabacloud_tea_openapi.models import Config

        self.client = self.client_class()(
            Config(
                access_key_id=ak,
                access_key_secret=secret,
                endpoint=endpoint,
                protocol="http",
                region_id=REGION,
                read_timeout=20000,
                connect_timeout=5000,
            )
        )
        self.last_response = None

    def call(self, action: str, **params):
        from Tea.exceptions import TeaException

        models = self.models()
        req_cls = getattr(models, f"{action}Request")
        req = req_cls()
        if "RegionId" not in params and hasattr(req, "region_id"):
            params["RegionId"] = REGION
        params = {k: v for k, v in params.items() if v is not None}
        req = req.from_map(params)
        # The model takes only the fields it knows: a typo in a test must not go unnoticed.
        sent = req.to_map()
        missing = [k for k in params if k not in sent]
        assert not missing, f"{req_cls.__name__} has no field(s) {missing}"
        try:
            resp = getattr(self.client, snake(action))(req)
        except TeaException as e:
            status = getattr(e, "status_code", None) or getattr(e, "statusCode", None)
            data = getattr(e, "data", None) or {}
            raise ApiError(self.sdk, e.code, status, e.message, data.get("RequestId")) from None
        assert getattr(resp, "_map", None) is None, f"the SDK model could not read the response: {resp._map!r}"
        assert resp.status_code == 200, resp.status_code
        assert resp.body is not None, "response without a body"
        self.last_response = resp
        return resp.body.to_map()


class NewVpc(_NewSdk):
    @staticmethod
    def client_class():
        from alibabacloud_vpc20160428.client import Client

        return Client

    @staticmethod
    def models():
        from alibabacloud_vpc20160428 import models

        return models


class NewEcs(_NewSdk):
    @staticmethod
    def client_class():
        from alibabacloud_ecs20140526.client import Client

        return Client

    @staticmethod
    def models():
        from alibabacloud_ecs20140526 import models

        return models


class OldVpc:
    """aliyunsdkcore AcsClient + aliyunsdkvpc.request.v20160428.<Action>Request, over http."""

    sdk = "old"

    def __init__(self, endpoint: str, ak: str, secret: str):
        from aliyunsdkcore.client import AcsClient

        self.client = AcsClient(ak, secret, REGION, timeout=20, connect_timeout=5)
        self.client.add_endpoint(REGION, "Vpc", endpoint)
        self.last_response = None

    def call(self, action: str, **params):
        import importlib

        from aliyunsdkcore.acs_exception.exceptions import ServerException

        mod = importlib.import_module(f"aliyunsdkvpc.request.v20160428.{action}Request")
        req = getattr(mod, f"{action}Request")()
        req.set_protocol_type("http")
        for k, v in params.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                setter = getattr(req, f"set_{k}s", None)  # RepeatList setters end in "s"
                assert setter is not None, f"{action}Request has no list setter for {k}"
                setter(list(v))
            else:
                setter = getattr(req, f"set_{k}", None)
                assert setter is not None, f"{action}Request has no setter for {k}"
                setter(str(v).lower() if isinstance(v, bool) else v)
        try:
            body = self.client.do_action_with_exception(req)
        except ServerException as e:
            raise ApiError(self.sdk, e.get_error_code(), e.get_http_status(), e.get_error_msg(), e.get_request_id()) from None
        self.last_response = body
        return json.loads(body)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the tests
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def expect_error(code: str, status: int | None = 400):
    """The block must fail with exactly `code` (and HTTP `status`, unless None)."""
    with pytest.raises(ApiError) as ei:
        yield ei
    e = ei.value
    assert e.code == code, f"expected {code}, got {e}"
    if status is not None:
        assert e.status == status, f"expected HTTP {status} for {code}, got {e}"


def eips_of(resp: dict) -> list[dict]:
    assert isinstance(resp.get("EipAddresses"), dict), f"no EipAddresses object in {resp!r}"
    items = resp["EipAddresses"].get("EipAddress")
    assert isinstance(items, list), f"EipAddresses.EipAddress is not a list in {resp!r}"
    return items


def describe(vpc, **filters) -> dict:
    return vpc.call("DescribeEipAddresses", **filters)


def describe_all(vpc, page_size: int = 5, **filters) -> list[dict]:
    """Every EIP, page by page, checking TotalCount is the same on every page."""
    out, page, total = [], 1, None
    while True:
        r = describe(vpc, PageNumber=page, PageSize=page_size, **filters)
        items = eips_of(r)
        if total is None:
            total = r["TotalCount"]
        assert r["TotalCount"] == total, "TotalCount changed between pages"
        out.extend(items)
        if not items or len(out) >= total:
            break
        page += 1
        assert page < 200
    assert len(out) == total, f"pages held {len(out)} EIPs, TotalCount says {total}"
    return out


def describe_one(vpc, allocation_id: str) -> dict | None:
    items = eips_of(describe(vpc, AllocationId=allocation_id))
    assert len(items) <= 1, f"{allocation_id} listed {len(items)} times"
    return items[0] if items else None


def wait_status(vpc, allocation_id: str, want: str, timeout: float = 10.0) -> dict:
    """Poll DescribeEipAddresses until the EIP's Status is `want`, as a real script does."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        e = describe_one(vpc, allocation_id)
        assert e is not None, f"{allocation_id} vanished while waiting for {want}"
        if not seen or seen[-1] != e["Status"]:
            seen.append(e["Status"])
        if e["Status"] == want:
            return e
        if time.monotonic() > deadline:
            raise AssertionError(f"{allocation_id} did not become {want} within {timeout}s: went {seen}")
        time.sleep(0.05)


def allocate(vpc, **params) -> dict:
    r = vpc.call("AllocateEipAddress", **params)
    assert ALLOCATION_ID_RE.match(r.get("AllocationId", "")), r
    assert ipaddress.ip_address(r["EipAddress"]) in POOL, r
    return r


def associate(vpc, allocation_id: str, instance_id: str, instance_type: str | None = None, mode: str | None = None,
              private_ip: str | None = None, wait: bool = True) -> dict | None:
    vpc.call(
        "AssociateEipAddress",
        AllocationId=allocation_id,
        InstanceId=instance_id,
        InstanceType=instance_type,
        Mode=mode,
        PrivateIpAddress=private_ip,
    )
    return wait_status(vpc, allocation_id, "InUse") if wait else None


def unassociate(vpc, allocation_id: str, instance_id: str, instance_type: str | None = None, wait: bool = True,
                **extra) -> dict | None:
    vpc.call("UnassociateEipAddress", AllocationId=allocation_id, InstanceId=instance_id,
             InstanceType=instance_type, **extra)
    return wait_status(vpc, allocation_id, "Available") if wait else None


# -- the dataplane dump ------------------------------------------------------------------------
#
# /_eiplab/dataplane is the programmed engine table as canonical JSON:
#   {"Generation", "EipCount",
#    "Enis": [{"Index", "Instance": {"Index", "Running"} | null, "Gateway", "PrivateIps": [...]}],
#    "Eips": [{"Slot", "Address", "BandwidthMbps",
#              "Association": {"Mode", "Eni", "PrivateIp", "NatPrivateIpInTable"} | null}]}
# "Association" is the model's view; "NatPrivateIpInTable" is what the published engine table
# maps that private IP to: the tests require both to agree.


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def dp_eips(dp) -> dict[str, dict]:
    """address -> {"bandwidth", "association": {"mode", "eni", "private_ip"} | None, "raw"}.
    Fails if an address is programmed twice."""
    assert isinstance(dp.get("Eips"), list), f"no Eips list in the dataplane dump: {str(dp)[:300]}"
    out: dict[str, dict] = {}
    for e in dp["Eips"]:
        addr = e["Address"]
        a = e.get("Association")
        assoc = None if not a else {"mode": a.get("Mode"), "eni": a.get("Eni"), "private_ip": a.get("PrivateIp"),
                                    "table_eip": a.get("NatPrivateIpInTable")}
        assert addr not in out, f"EIP {addr} appears twice in the dataplane table: {out[addr]['raw']} and {e}"
        out[addr] = {"bandwidth": e.get("BandwidthMbps"), "association": assoc, "raw": e}
    return out


def dp_enis(dp) -> dict:
    """ENI index -> {"private_ips", "instance": {"Index", "Running"} | None}."""
    assert isinstance(dp.get("Enis"), list), f"no Enis list in the dataplane dump: {str(dp)[:300]}"
    return {e["Index"]: {"private_ips": list(e.get("PrivateIps") or []), "instance": e.get("Instance")} for e in dp["Enis"]}


def dp_binding(dp, address: str):
    """(mode, private_ip, the ENI's private IPs) of a programmed EIP, or None when unmapped."""
    e = dp_eips(dp).get(address)
    assert e is not None, f"EIP {address} is not in the dataplane table"
    a = e["association"]
    if not a:
        return None
    eni = dp_enis(dp).get(a["eni"])
    assert eni is not None, f"EIP {address} is mapped to ENI index {a['eni']}, which the table lacks"
    mode = str(a["mode"]).upper() if a["mode"] is not None else None
    if mode == "NAT":
        # what the engine really has programmed for the private IP, not just the model's view
        assert a["table_eip"] == address, (
            f"EIP {address} is mapped to {a['private_ip']} but the programmed engine table maps "
            f"that private IP to {a['table_eip']!r} (Generation {dp.get('Generation')})")
    return (mode, a["private_ip"], eni["private_ips"])


def dp_eni_running(dp, private_ip: str):
    """The Running flag of the instance holding the ENI with `private_ip` (None: detached)."""
    for e in dp_enis(dp).values():
        if private_ip in e["private_ips"]:
            return None if not e["instance"] else bool(e["instance"].get("Running"))
    raise AssertionError(f"no ENI with {private_ip} in the dataplane table")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def eiplab_bin() -> Path:
    b = eiplab_binary()
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail(f"{b} is not an executable: build it (cargo build --release) or set EIPLAB_BIN")
    return b


@pytest.fixture
def make_lab(eiplab_bin, tmp_path_factory, request):
    """make_lab(text=None, **lab_text_args) -> a started LabServer, stopped after the test."""
    servers: list[LabServer] = []

    def make(text: str | None = None, **kw) -> LabServer:
        work = Path(tempfile.mkdtemp(prefix="eiplab-sdk-", dir=tmp_path_factory.getbasetemp()))
        s = LabServer(eiplab_bin, text if text is not None else lab_text(**kw), work)
        servers.append(s)
        return s.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for s in servers:
        try:
            s.stop()
        finally:
            if failed:
                print(f"--- server log ({s.log_path}) ---\n{s.log_tail(60)}")


@pytest.fixture
def lab(make_lab) -> LabServer:
    return make_lab()


@pytest.fixture(params=["new", "old"])
def sdk(request) -> str:
    return request.param


@pytest.fixture
def vpc(lab, sdk):
    return lab.vpc(sdk)


@pytest.fixture
def ecs(lab):
    return lab.ecs()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
