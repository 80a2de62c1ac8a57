"""AssociateEipAddressBatch (NAT gateway, secondary ENI, all-or-nothing), NAT gateway EIPs with
SNAT/DNAT entries (UnassociateEipAddress Force), and the DNAT-target rule."""

import pytest

from conftest import ApiError, allocate, describe_one, expect_error, wait_status

NAT_LAB = """
[[nat_gateway]]
id = "ngw-a"
vswitch = "vsw-a"
created = "2024-01-01"

[[instance]]                       # a DNAT target: BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP
id = "i-dnat"
vswitch = "vsw-a"
status = "Running"
enis = [{ id = "eni-dnat0", private_ips = ["10.0.1.70"] }]

[[eip]]
allocation_id = "eip-ngw-snat"
address = "198.51.100.50"

[[eip]]
allocation_id = "eip-ngw-dnat"
address = "198.51.100.51"

[[association]]
allocation_id = "eip-ngw-snat"
instance_id = "ngw-a"
instance_type = "Nat"

[[association]]
allocation_id = "eip-ngw-dnat"
instance_id = "ngw-a"
instance_type = "Nat"

[[snat_entry]]
nat_gateway = "ngw-a"
source_cidr = "10.0.1.0/24"
snat_ip = "198.51.100.50"

[[forward_entry]]
nat_gateway = "ngw-a"
external_ip = "198.51.100.51"
external_port = "8080"
internal_ip = "10.0.1.70"
internal_port = "80"
ip_protocol = "TCP"
"""


@pytest.fixture
def nat_lab(make_lab):
    return make_lab(extra=NAT_LAB)


def batch(vpc, binded_id, binded_type, ids, mode=None):
    return vpc.call("AssociateEipAddressBatch", BindedInstanceId=binded_id, BindedInstanceType=binded_type,
                    InstanceIds=list(ids), Mode=mode)


# -- secondary ENI (base lab) -------------------------------------------------------------------


def test_batch_secondary_eni_multi_binded(vpc):
    ids = [allocate(vpc)["AllocationId"] for _ in range(3)]
    r = batch(vpc, "eni-multi", "NetworkInterface", ids, "MULTI_BINDED")
    assert r.get("RequestId")
    for a in ids:
        e = wait_status(vpc, a, "InUse")
        assert (e["InstanceId"], e["InstanceType"], e["Mode"]) == ("eni-multi", "NetworkInterface", "MULTI_BINDED")


def test_batch_all_or_nothing_unknown_eip(vpc):
    ids = [allocate(vpc)["AllocationId"] for _ in range(2)]
    with expect_error("InvalidAllocationId.NotFound", 404):
        batch(vpc, "eni-multi", "NetworkInterface", ids + ["eip-nosuch000"], "MULTI_BINDED")
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available", "a failed batch must associate nothing"


def test_batch_all_or_nothing_eip_in_use(vpc):
    ids = [allocate(vpc)["AllocationId"] for _ in range(2)]
    # the bad one is last: validated whole before any is applied
    with expect_error("IncorrectEipStatus"):
        batch(vpc, "eni-multi", "NetworkInterface", ids + ["eip-web1"], "MULTI_BINDED")
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available"
    assert describe_one(vpc, "eip-web1")["InstanceId"] == "eni-web1"


def test_batch_all_or_nothing_quota(vpc):
    ids = [allocate(vpc)["AllocationId"] for _ in range(11)]
    with expect_error("QuotaExceed.MultiBindedEip"):
        batch(vpc, "eni-multi", "NetworkInterface", ids, "MULTI_BINDED")
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available"
    # ten fit
    batch(vpc, "eni-multi", "NetworkInterface", ids[:10], "MULTI_BINDED")
    for a in ids[:10]:
        wait_status(vpc, a, "InUse")


def test_batch_refuses_ecs_and_primary_eni(vpc):
    ids = [allocate(vpc)["AllocationId"] for _ in range(2)]
    for target, kind in (("i-app", "EcsInstance"), ("eni-web0", "NetworkInterface")):
        with pytest.raises(ApiError) as ei:
            batch(vpc, target, kind, ids, "MULTI_BINDED" if kind == "NetworkInterface" else None)
        assert ei.value.status == 400, ei.value
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available"


# -- NAT gateway ---------------------------------------------------------------------------------


def test_nat_gateway_lab_eips(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    for a in ("eip-ngw-snat", "eip-ngw-dnat"):
        e = describe_one(vpc, a)
        assert (e["Status"], e["InstanceId"], e["InstanceType"]) == ("InUse", "ngw-a", "Nat")


def test_batch_nat_gateway(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    ids = [allocate(vpc)["AllocationId"] for _ in range(3)]
    batch(vpc, "ngw-a", "Nat", ids)
    for a in ids:
        e = wait_status(vpc, a, "InUse")
        assert (e["InstanceId"], e["InstanceType"]) == ("ngw-a", "Nat")
    got = {e["AllocationId"] for e in vpc.call("DescribeEipAddresses", AssociatedInstanceType="Nat",
                                               AssociatedInstanceId="ngw-a", PageSize=50)["EipAddresses"]["EipAddress"]}
    assert got == set(ids) | {"eip-ngw-snat", "eip-ngw-dnat"}


def test_batch_nat_gateway_all_or_nothing(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    ids = [allocate(vpc)["AllocationId"] for _ in range(2)]
    with expect_error("InvalidAllocationId.NotFound", 404):
        batch(vpc, "ngw-a", "Nat", ids + ["eip-nosuch000"])
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available"


def test_nat_gateway_quota_20(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    ids = [allocate(vpc)["AllocationId"] for _ in range(19)]  # the gateway already has 2
    with expect_error("QuotaExceeded.NumberOfEip"):
        batch(vpc, "ngw-a", "Nat", ids)
    for a in ids:
        assert describe_one(vpc, a)["Status"] == "Available"
    batch(vpc, "ngw-a", "Nat", ids[:18])
    for a in ids[:18]:
        wait_status(vpc, a, "InUse")
    with expect_error("QuotaExceeded.NumberOfEip"):
        vpc.call("AssociateEipAddress", AllocationId=ids[18], InstanceId="ngw-a", InstanceType="Nat")


def test_unassociate_snat_eip_needs_force(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    with expect_error("InvalidIpStatus.HasBeenUsedBySnatTable"):
        vpc.call("UnassociateEipAddress", AllocationId="eip-ngw-snat", InstanceId="ngw-a", InstanceType="Nat")
    assert describe_one(vpc, "eip-ngw-snat")["Status"] == "InUse"
    vpc.call("UnassociateEipAddress", AllocationId="eip-ngw-snat", InstanceId="ngw-a", InstanceType="Nat",
             Force=True)
    wait_status(vpc, "eip-ngw-snat", "Available")


def test_unassociate_dnat_eip_needs_force(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    with expect_error("InvalidIpStatus.HasBeenUsedByForwardEntry"):
        vpc.call("UnassociateEipAddress", AllocationId="eip-ngw-dnat", InstanceId="ngw-a", InstanceType="Nat")
    assert describe_one(vpc, "eip-ngw-dnat")["Status"] == "InUse"
    vpc.call("UnassociateEipAddress", AllocationId="eip-ngw-dnat", InstanceId="ngw-a", InstanceType="Nat",
             Force=True)
    wait_status(vpc, "eip-ngw-dnat", "Available")


def test_dnat_target_cannot_get_an_eip(nat_lab, sdk):
    vpc = nat_lab.vpc(sdk)
    r = allocate(vpc)
    with expect_error("BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP"):
        vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-dnat",
                 InstanceType="EcsInstance")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Available"
