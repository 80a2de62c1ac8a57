"""The ECS actions the seeds' procedures need (alibabacloud_ecs20140526): the cut-through
procedure call by call, and StopInstance/StartInstance with IncorrectInstanceStatus."""

import re
import time

import pytest

from conftest import (
    ApiError, allocate, associate, describe_all, describe_one, dp_binding, dp_eni_running, expect_error, wait_status,
)


def enis_of(resp: dict) -> list:
    sets = resp.get("NetworkInterfaceSets")
    assert isinstance(sets, dict), f"no NetworkInterfaceSets in {resp!r}"
    items = sets.get("NetworkInterfaceSet")
    assert isinstance(items, list), f"NetworkInterfaceSets.NetworkInterfaceSet is not a list in {resp!r}"
    return items


def describe_eni(ecs, eni_id: str) -> dict:
    r = ecs.call("DescribeNetworkInterfaces", NetworkInterfaceId=[eni_id])
    items = enis_of(r)
    assert len(items) == 1, f"DescribeNetworkInterfaces({eni_id}) gave {len(items)} ENIs"
    assert items[0]["NetworkInterfaceId"] == eni_id
    return items[0]


def wait_eni(ecs, eni_id: str, status: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        e = describe_eni(ecs, eni_id)
        if e.get("Status") == status:
            return e
        if time.monotonic() > deadline:
            raise AssertionError(f"{eni_id} did not become {status} within {timeout}s: {e}")
        time.sleep(0.05)


def wait_running(lab, private_ip: str, running: bool, timeout: float = 15.0) -> None:
    """Until the dataplane shows the instance holding `private_ip` as running / not running."""
    deadline = time.monotonic() + timeout
    while dp_eni_running(lab.dataplane(), private_ip) is not running:
        assert time.monotonic() < deadline, f"the instance of {private_ip} did not become running={running}"
        time.sleep(0.05)


def test_describe_network_interfaces_shape(lab, ecs):
    e = describe_eni(ecs, "eni-web1")
    assert e["Status"] == "InUse" and e["InstanceId"] == "i-web"
    assert e["Type"] == "Secondary" and e["VSwitchId"] == "vsw-a"
    assert e["PrivateIpAddress"] == "10.0.1.20"
    ips = [p["PrivateIpAddress"] for p in e["PrivateIpSets"]["PrivateIpSet"]]
    assert ips == ["10.0.1.20", "10.0.1.21", "10.0.1.22"]
    prim = [p["Primary"] for p in e["PrivateIpSets"]["PrivateIpSet"]]
    assert prim == [True, False, False]
    # the lab's eip-web1 sits on 10.0.1.21
    p21 = e["PrivateIpSets"]["PrivateIpSet"][1]
    assert p21["AssociatedPublicIp"]["PublicIpAddress"] == "198.51.100.10"

    e = describe_eni(ecs, "eni-web0")
    assert e["Type"] == "Primary" and e["Status"] == "InUse"
    e = describe_eni(ecs, "eni-spare")
    assert e["Status"] == "Available" and not e.get("InstanceId")

    r = ecs.call("DescribeNetworkInterfaces", InstanceId="i-web")
    assert sorted(x["NetworkInterfaceId"] for x in enis_of(r)) == ["eni-web0", "eni-web1"]
    assert r["TotalCount"] == 2 and isinstance(r["TotalCount"], int)


@pytest.mark.parametrize("sdk_kind", ["new", "old"])
def test_cut_through_procedure(lab, ecs, sdk_kind):
    """000/001: associate the EIP to a detached secondary ENI in BINDED mode, then attach the ENI
    to the instance; the association follows the ENI when it moves."""
    vpc = lab.vpc(sdk_kind)
    r = allocate(vpc)
    eip, addr = r["AllocationId"], r["EipAddress"]

    # 1. BINDED onto the detached ENI
    e = associate(vpc, eip, "eni-spare", "NetworkInterface", "BINDED")
    assert e["Mode"] == "BINDED"

    # 2. attach the ENI to the instance
    ecs.call("AttachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-spare")
    n = wait_eni(ecs, "eni-spare", "InUse")
    assert n["InstanceId"] == "i-app"
    assert n["AssociatedPublicIp"]["PublicIpAddress"] == addr
    listed = enis_of(ecs.call("DescribeNetworkInterfaces", InstanceId="i-app"))
    assert sorted(x["NetworkInterfaceId"] for x in listed) == ["eni-app0", "eni-spare"]

    # the EIP is still BINDED on the ENI, now inside i-app
    e = describe_one(vpc, eip)
    assert (e["Status"], e["InstanceId"], e["Mode"]) == ("InUse", "eni-spare", "BINDED")
    assert dp_binding(lab.dataplane(), addr)[0] == "BINDED"

    # 3. detach: the association stays with the ENI
    ecs.call("DetachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-spare")
    n = wait_eni(ecs, "eni-spare", "Available")
    assert not n.get("InstanceId")
    e = describe_one(vpc, eip)
    assert (e["Status"], e["InstanceId"], e["Mode"]) == ("InUse", "eni-spare", "BINDED")

    # 4. attach elsewhere: it follows
    ecs.call("AttachNetworkInterface", InstanceId="i-stopped", NetworkInterfaceId="eni-spare")
    n = wait_eni(ecs, "eni-spare", "InUse")
    assert n["InstanceId"] == "i-stopped"
    assert n["AssociatedPublicIp"]["PublicIpAddress"] == addr
    e = describe_one(vpc, eip)
    assert (e["Status"], e["InstanceId"], e["Mode"]) == ("InUse", "eni-spare", "BINDED")
    assert dp_binding(lab.dataplane(), addr)[0] == "BINDED"


def test_attach_errors(lab, ecs):
    with pytest.raises(ApiError) as ei:  # already attached to i-web
        ecs.call("AttachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-web1")
    assert ei.value.status in (400, 403), ei.value
    assert describe_eni(ecs, "eni-web1")["InstanceId"] == "i-web"

    # ecs.g5.large takes 2 ENIs: i-web has both
    with pytest.raises(ApiError) as ei:
        ecs.call("AttachNetworkInterface", InstanceId="i-web", NetworkInterfaceId="eni-spare2")
    assert "Exceed" in ei.value.code or "Quota" in ei.value.code, ei.value
    assert describe_eni(ecs, "eni-spare2")["Status"] == "Available"

    with pytest.raises(ApiError) as ei:  # the primary ENI cannot be detached
        ecs.call("DetachNetworkInterface", InstanceId="i-web", NetworkInterfaceId="eni-web0")
    assert ei.value.status in (400, 403), ei.value
    assert describe_eni(ecs, "eni-web0")["InstanceId"] == "i-web"


def test_assign_and_unassign_private_ips(lab, ecs, sdk):
    vpc = lab.vpc(sdk)
    ecs.call("AssignPrivateIpAddresses", NetworkInterfaceId="eni-spare2", PrivateIpAddress=["10.0.1.90"])
    n = describe_eni(ecs, "eni-spare2")
    assert [p["PrivateIpAddress"] for p in n["PrivateIpSets"]["PrivateIpSet"]] == ["10.0.1.31", "10.0.1.90"]
    r = allocate(vpc)
    with expect_error("Eni.HasSubIp"):  # BINDED needs an ENI without secondary private IPs
        vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId="eni-spare2",
                 InstanceType="NetworkInterface", Mode="BINDED")
    ecs.call("UnassignPrivateIpAddresses", NetworkInterfaceId="eni-spare2", PrivateIpAddress=["10.0.1.90"])
    n = describe_eni(ecs, "eni-spare2")
    assert [p["PrivateIpAddress"] for p in n["PrivateIpSets"]["PrivateIpSet"]] == ["10.0.1.31"]
    associate(vpc, r["AllocationId"], "eni-spare2", "NetworkInterface", "BINDED")


def test_stop_start_instance(make_lab, sdk):
    lab = make_lab(transition_ms=1500)
    vpc, ecs = lab.vpc(sdk), lab.ecs()
    a, b = allocate(vpc), allocate(vpc)
    associate(vpc, a["AllocationId"], "i-app", "EcsInstance", wait=False)
    wait_status(vpc, a["AllocationId"], "InUse", timeout=15)
    assert dp_eni_running(lab.dataplane(), "10.0.2.40") is True

    t0 = time.monotonic()
    ecs.call("StopInstance", InstanceId="i-app2")
    # Stopping: neither Running nor Stopped
    with expect_error("IncorrectInstanceStatus", None):
        ecs.call("StartInstance", InstanceId="i-app2")
    with expect_error("IncorrectInstanceStatus"):
        vpc.call("AssociateEipAddress", AllocationId=b["AllocationId"], InstanceId="i-app2",
                 InstanceType="EcsInstance")
    assert time.monotonic() - t0 < 1.2, "too slow to be inside the Stopping transition"
    assert dp_eni_running(lab.dataplane(), "10.0.2.40") is False, "a Stopping instance no longer runs"
    # once Stopped, it can take an EIP (poll like a script: retry while IncorrectInstanceStatus)
    deadline = time.monotonic() + 15
    while True:
        try:
            vpc.call("AssociateEipAddress", AllocationId=b["AllocationId"], InstanceId="i-app2",
                     InstanceType="EcsInstance")
            break
        except ApiError as e:
            assert e.code == "IncorrectInstanceStatus", e
            assert time.monotonic() < deadline, "i-app2 never became Stopped"
            time.sleep(0.1)
    wait_status(vpc, b["AllocationId"], "InUse", timeout=15)
    with expect_error("IncorrectInstanceStatus", None):
        ecs.call("StopInstance", InstanceId="i-app2")  # already Stopped

    ecs.call("StartInstance", InstanceId="i-app2")
    wait_running(lab, "10.0.2.40", True)
    with expect_error("IncorrectInstanceStatus", None):
        ecs.call("StartInstance", InstanceId="i-app2")  # already Running

    # stopping an instance keeps its EIP (InUse); the dataplane just stops delivering (D7)
    ecs.call("StopInstance", InstanceId="i-app")
    wait_running(lab, "10.0.1.40", False)
    e = describe_one(vpc, a["AllocationId"])
    assert e["Status"] == "InUse" and e["InstanceId"] == "i-app"
    assert dp_binding(lab.dataplane(), a["EipAddress"])[1] == "10.0.1.40"


def test_unknown_instance_and_eni_in_ecs_actions(lab, ecs):
    with pytest.raises(ApiError) as ei:
        ecs.call("StopInstance", InstanceId="i-nosuch")
    assert ei.value.code.endswith("NotFound"), ei.value
    with pytest.raises(ApiError) as ei:
        ecs.call("AttachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-nosuch")
    assert ei.value.code.endswith("NotFound"), ei.value


def test_the_lab_files_vpc_id_and_one_mac_format(make_lab):
    """The API answers the lab file's [vpc] id (not a fixed `vpc-lab`), for ENIs and for an EIP
    bound to one, and gives every ENI its own MAC in the one format the metadata service uses."""
    lab = make_lab(extra='[vpc]\nid = "vpc-sdktest"\ncidr = "10.0.0.0/16"\n')
    ecs = lab.ecs()
    macs = set()
    for eni in ["eni-web0", "eni-web1", "eni-spare"]:
        e = describe_eni(ecs, eni)
        assert e["VpcId"] == "vpc-sdktest", e
        assert re.fullmatch(r"00:16:3e:00:[0-9a-f]{2}:[0-9a-f]{2}", e["MacAddress"]), e["MacAddress"]
        macs.add(e["MacAddress"])
    assert len(macs) == 3, macs
    vpc = lab.vpc("new")
    bound = [x for x in describe_all(vpc) if x["InstanceId"] == "eni-web1"]
    assert bound and all(x["VpcId"] == "vpc-sdktest" for x in bound), bound
