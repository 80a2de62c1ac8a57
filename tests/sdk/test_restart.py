"""State built through the API survives `kill -9` and a restart with the same --state: the
EIP listing (every page, both SDKs), the ENIs and the programmed dataplane are identical."""

import pytest

from conftest import allocate, associate, describe_all, describe_one, expect_error, unassociate, wait_status


def snapshot(lab):
    new, old, ecs = lab.vpc("new"), lab.vpc("old"), lab.ecs()
    eips_new = sorted(describe_all(new, page_size=3), key=lambda e: e["AllocationId"])
    eips_old = sorted(describe_all(old, page_size=4), key=lambda e: e["AllocationId"])
    enis = ecs.call("DescribeNetworkInterfaces", PageSize=100)["NetworkInterfaceSets"]["NetworkInterfaceSet"]
    enis = sorted(enis, key=lambda e: e["NetworkInterfaceId"])
    dp = lab.dataplane()
    # "Generation" counts the table publications of this process, not a part of the table
    dp.pop("Generation", None)
    return {"eips_new": eips_new, "eips_old": eips_old, "enis": enis, "dataplane": dp}


def diffs(a, b, path="") -> list:
    """Where two JSON values differ, as "path: before != after" lines."""
    if type(a) is not type(b):
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diffs(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list):
        out = [f"{path}: {len(a)} items != {len(b)} items"] if len(a) != len(b) else []
        return out + [d for i, (x, y) in enumerate(zip(a, b)) for d in diffs(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_same(before, after):
    d = diffs(before, after)
    assert not d, "state changed across the restart:\n" + "\n".join(d[:20])


def build_state(lab):
    vpc, ecs = lab.vpc("new"), lab.ecs()
    ids = {}
    ids["ecs"] = allocate(vpc)["AllocationId"]
    associate(vpc, ids["ecs"], "i-app", "EcsInstance")
    ids["eni_nat"] = allocate(vpc)["AllocationId"]
    associate(vpc, ids["eni_nat"], "eni-web1", "NetworkInterface", "NAT", "10.0.1.22")
    ids["binded"] = allocate(vpc)["AllocationId"]
    associate(vpc, ids["binded"], "eni-spare", "NetworkInterface", "BINDED")
    ecs.call("AttachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-spare")
    for k in ("multi1", "multi2"):
        ids[k] = allocate(vpc)["AllocationId"]
        associate(vpc, ids[k], "eni-multi", "NetworkInterface", "MULTI_BINDED")
    ids["bw"] = allocate(vpc, Bandwidth="10")["AllocationId"]
    vpc.call("ModifyEipAddressAttribute", AllocationId=ids["bw"], Bandwidth="33")
    ids["back"] = allocate(vpc)["AllocationId"]
    associate(vpc, ids["back"], "i-stopped", "EcsInstance")
    unassociate(vpc, ids["back"], "i-stopped", "EcsInstance")
    rel = allocate(vpc)
    vpc.call("ReleaseEipAddress", AllocationId=rel["AllocationId"])
    # wait for the attachment to settle before taking the snapshot
    import time

    deadline = time.monotonic() + 10
    while True:
        e = ecs.call("DescribeNetworkInterfaces", NetworkInterfaceId=["eni-spare"])["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]
        if e["Status"] == "InUse":
            break
        assert time.monotonic() < deadline, e
        time.sleep(0.05)
    return ids, rel


def test_kill9_restart_restores_everything(make_lab):
    lab = make_lab()
    ids, released = build_state(lab)
    before = snapshot(lab)
    assert len(before["eips_new"]) == 7 + 2  # 7 built here + the lab file's 2
    assert before["eips_new"] == before["eips_old"], "the two SDKs disagree"

    lab.kill9()
    lab.start()
    after = snapshot(lab)
    assert_same(before, after)

    # the released EIP is still recoverable after the restart, the rest still works
    vpc = lab.vpc("old")
    back = vpc.call("AllocateEipAddress", IpAddress=released["EipAddress"])
    assert back["EipAddress"] == released["EipAddress"]
    assert describe_one(vpc, back["AllocationId"])["Bandwidth"] == "5"
    fresh = allocate(vpc)
    assert fresh["AllocationId"] not in ids.values()
    assert fresh["EipAddress"] not in {e["IpAddress"] for e in before["eips_new"]}
    unassociate(vpc, ids["ecs"], "i-app", "EcsInstance")
    associate(vpc, ids["ecs"], "i-app2", "EcsInstance")


def test_sigterm_exits_cleanly_and_restores(make_lab):
    lab = make_lab()
    vpc = lab.vpc("new")
    r = allocate(vpc)
    vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-app", InstanceType="EcsInstance")
    wait_status(vpc, r["AllocationId"], "InUse")
    before = snapshot(lab)
    assert lab.stop() == 0, f"eiplab up exited non-zero on SIGTERM:\n{lab.log_tail()}"
    lab.start()
    after = snapshot(lab)
    assert_same(before, after)


def test_kill9_during_transition_settles_after_restart(make_lab):
    """Killed while an EIP is Associating: after the restart it settles (InUse), not stuck."""
    lab = make_lab(transition_ms=3000)
    vpc = lab.vpc("new")
    r = allocate(vpc)
    vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-app", InstanceType="EcsInstance")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Associating"
    lab.kill9()
    lab.start()
    vpc = lab.vpc("new")
    e = wait_status(vpc, r["AllocationId"], "InUse", timeout=20)
    assert e["InstanceId"] == "i-app"


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_a_nonce_is_refused_after_a_restart_too(make_lab, monkeypatch, sdk):
    """A request replayed after `kill -9` and a restart with the same --state is still a
    replay: the nonces seen are kept with the state."""
    from test_auth import fix_nonce

    lab = make_lab()
    fix_nonce(monkeypatch, sdk, f"restart-nonce-{sdk}-0123456789")
    vpc = lab.vpc(sdk)
    vpc.call("DescribeEipAddresses")
    lab.kill9()
    lab.start()
    with expect_error("SignatureNonceUsed", 400):
        lab.vpc(sdk).call("DescribeEipAddresses")
