"""32 client threads race to associate 8 EIPs onto a few instances and ENI private IPs, with
unassociations in between. At checkpoints and at the end: no EIP bound twice, no private IP
carrying two EIPs, every failure one of the expected codes, Describe agrees with the dataplane."""

import random
import threading
import time
from collections import Counter

from conftest import ApiError, dp_eips, eips_of, lab_text

INSTANCES = 4
THREADS = 32
PHASES = 3
OPS_PER_PHASE = 6

ASSOC_ERRORS = {"IncorrectEipStatus", "TaskConflict", "InvalidAssociation.Duplicated", "InvalidEip.EipQuotaExceeded"}
UNASSOC_ERRORS = {"IncorrectEipStatus", "TaskConflict"}


def primary_ip(k: int) -> str:
    return f"10.0.1.{100 + 10 * k}"


def secondary_ips(k: int) -> list:
    return [f"10.0.1.{101 + 10 * k + j}" for j in range(3)]


def concurrency_lab() -> str:
    parts = []
    for k in range(1, INSTANCES + 1):
        ips = ", ".join(f'"{ip}"' for ip in secondary_ips(k))
        parts.append(f"""
[[instance]]
id = "i-c{k}"
vswitch = "vsw-a"
status = "Running"
enis = [
  {{ id = "eni-c{k}0", private_ips = ["{primary_ip(k)}"] }},
  {{ id = "eni-c{k}1", private_ips = [{ips}] }},
]
""")
    return lab_text(base=False, extra="".join(parts))


def targets():
    """(InstanceType, InstanceId, PrivateIpAddress, the private IP the EIP lands on)."""
    out = []
    for k in range(1, INSTANCES + 1):
        out.append(("EcsInstance", f"i-c{k}", None, primary_ip(k)))
        out.append(("NetworkInterface", f"eni-c{k}0", primary_ip(k), primary_ip(k)))
        for ip in secondary_ips(k):
            out.append(("NetworkInterface", f"eni-c{k}1", ip, ip))
    return out


def landing_ip(e: dict) -> str:
    if e.get("InstanceType") == "EcsInstance":
        k = int(e["InstanceId"].removeprefix("i-c"))
        return primary_ip(k)
    return e["PrivateIpAddress"]


def check_invariants(lab, vpc, ids: dict, settled: bool):
    """ids: AllocationId -> address. One page holds everything, so the listing is one snapshot."""
    r = vpc.call("DescribeEipAddresses", AllocationId=",".join(ids), PageSize=100)
    items = eips_of(r)
    assert r["TotalCount"] == len(ids) == len(items)
    assert Counter(e["AllocationId"] for e in items) == Counter(list(ids)), "an EIP listed twice or missing"
    bound = [e for e in items if e["Status"] != "Available"]
    if settled:
        assert all(e["Status"] in ("Available", "InUse") for e in items), [e["Status"] for e in items]
    # no private IP carries two EIPs; no instance has two EIPs through EcsInstance
    lands = Counter(landing_ip(e) for e in bound)
    dup = [ip for ip, n in lands.items() if n > 1]
    assert not dup, f"private IPs carrying two EIPs: {dup}: {[(e['AllocationId'], e['InstanceId'], e.get('PrivateIpAddress')) for e in bound]}"
    ecs = Counter(e["InstanceId"] for e in bound if e["InstanceType"] == "EcsInstance")
    assert all(n == 1 for n in ecs.values()), ecs

    dp = dp_eips(lab.dataplane())
    mapped = Counter(v["association"].get("private_ip") for a, v in dp.items() if a in ids.values() and v["association"])
    assert all(n == 1 for n in mapped.values()), f"dataplane maps a private IP from two EIPs: {mapped}"
    if settled:
        for e in items:
            d = dp.get(e["IpAddress"])
            assert d is not None, f"{e['IpAddress']} not programmed"
            if e["Status"] == "InUse":
                assert d["association"], f"{e['AllocationId']} InUse but not mapped in the dataplane"
                assert d["association"].get("private_ip") == landing_ip(e), (e, d["raw"])
                assert d["association"].get("table_eip") == e["IpAddress"], \
                    f"{e['AllocationId']} InUse, but the programmed table maps {landing_ip(e)} to {d['association'].get('table_eip')!r}"
            else:
                assert not d["association"], f"{e['AllocationId']} Available but mapped: {d['raw']}"
        table_eips = {v["association"].get("table_eip") for v in dp.values() if v["association"]}
        for e in items:
            if e["Status"] == "Available":
                assert e["IpAddress"] not in table_eips, f"{e['AllocationId']} Available but still in the programmed table"


def wait_settled(vpc, ids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        items = eips_of(vpc.call("DescribeEipAddresses", AllocationId=",".join(ids), PageSize=100))
        if all(e["Status"] in ("Available", "InUse") for e in items):
            return
        assert time.monotonic() < deadline, [e["Status"] for e in items]
        time.sleep(0.05)


def test_concurrent_associate_unassociate(make_lab):
    lab = make_lab(text=concurrency_lab())
    admin = lab.vpc("new")
    ids = {}
    for _ in range(8):
        r = admin.call("AllocateEipAddress")
        ids[r["AllocationId"]] = r["EipAddress"]
    eip_ids = list(ids)
    tgts = targets()

    errors, unexpected, successes = Counter(), [], Counter()
    lock = threading.Lock()
    stop_monitor = threading.Event()
    monitor_failures = []

    def worker(n: int, phase: int):
        rnd = random.Random(1000 * phase + n)
        vpc = lab.vpc("new" if n % 2 == 0 else "old")  # its own client
        for _ in range(OPS_PER_PHASE):
            eip = rnd.choice(eip_ids)
            try:
                if rnd.random() < 0.7:
                    kind, inst, ip, _ = rnd.choice(tgts)
                    vpc.call("AssociateEipAddress", AllocationId=eip, InstanceId=inst, InstanceType=kind,
                             PrivateIpAddress=ip)
                    with lock:
                        successes["associate"] += 1
                else:
                    items = eips_of(vpc.call("DescribeEipAddresses", AllocationId=eip))
                    if not items or items[0]["Status"] != "InUse":
                        continue
                    e = items[0]
                    vpc.call("UnassociateEipAddress", AllocationId=eip, InstanceId=e["InstanceId"],
                             InstanceType=e["InstanceType"], PrivateIpAddress=e.get("PrivateIpAddress") or None)
                    with lock:
                        successes["unassociate"] += 1
            except ApiError as ex:
                with lock:
                    errors[ex.code] += 1
                    if ex.code not in (ASSOC_ERRORS | UNASSOC_ERRORS) or ex.status != 400:
                        unexpected.append(str(ex))
            except Exception as ex:  # a transport error, a crash of the SDK on a bad response
                with lock:
                    unexpected.append(f"{type(ex).__name__}: {ex}")

    def monitor():
        vpc = lab.vpc("new")
        while not stop_monitor.is_set():
            try:
                check_invariants(lab, vpc, ids, settled=False)
            except AssertionError as ex:
                monitor_failures.append(str(ex))
                return
            time.sleep(0.02)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    t0 = time.monotonic()
    try:
        for phase in range(PHASES):
            threads = [threading.Thread(target=worker, args=(n, phase)) for n in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
                assert not t.is_alive(), "a client thread hung"
            # checkpoint
            wait_settled(admin, eip_ids)
            check_invariants(lab, admin, ids, settled=True)
    finally:
        stop_monitor.set()
        mon.join(timeout=10)
    assert not monitor_failures, monitor_failures[0]
    assert not unexpected, f"{len(unexpected)} unexpected failures, e.g. {unexpected[:5]}"
    assert successes["associate"] > 0, "no association ever succeeded"
    assert sum(errors.values()) > 0, "no conflicts at all: the race did not happen"
    assert time.monotonic() - t0 < 300
    # finally everything can be unassociated and released
    for a in eip_ids:
        items = eips_of(admin.call("DescribeEipAddresses", AllocationId=a))
        e = items[0]
        if e["Status"] == "InUse":
            admin.call("UnassociateEipAddress", AllocationId=a, InstanceId=e["InstanceId"],
                       InstanceType=e["InstanceType"], PrivateIpAddress=e.get("PrivateIpAddress") or None)
    wait_settled(admin, eip_ids)
    for a in eip_ids:
        admin.call("ReleaseEipAddress", AllocationId=a)
    assert not any(v["association"] for a, v in dp_eips(lab.dataplane()).items() if a in ids.values())
