"""The rest of SPEC §3: HaVip, the regions that offer BINDED / MULTI_BINDED, where an ENI with
MULTI_BINDED EIPs may be attached, and NAT gateways that take a private IP per EIP."""

import pytest

from conftest import allocate, associate, describe_one, expect_error

EXTRA = """
[[vswitch]]
id = "vsw-hz"
zone = "cn-hangzhou-h"
cidr = "10.0.5.0/24"
region = "cn-hangzhou"

[[vswitch]]
id = "vsw-tokyo"
zone = "ap-northeast-1a"
cidr = "10.0.6.0/24"
region = "ap-northeast-1"

[[vswitch]]                        # a tiny vSwitch for the NAT gateways' private IPs
id = "vsw-tiny"
zone = "cn-shanghai-b"
cidr = "10.0.3.0/29"

[[eni]]
id = "eni-hz"
vswitch = "vsw-hz"
region = "cn-hangzhou"
private_ips = ["10.0.5.30"]

[[eni]]
id = "eni-tokyo"
vswitch = "vsw-tokyo"
region = "ap-northeast-1"
private_ips = ["10.0.6.30"]

[[instance]]                       # a family 001 does not list for MULTI_BINDED
id = "i-t6"
vswitch = "vsw-a"
instance_type = "ecs.t6-c1m1.large"
status = "Running"
enis = [{ id = "eni-t60", private_ips = ["10.0.1.60"] }]

[[instance]]
id = "i-nodhcp"
vswitch = "vsw-a"
instance_type = "ecs.g5.large"
status = "Running"
dhcp = false
enis = [{ id = "eni-nodhcp0", private_ips = ["10.0.1.61"] }]

[[havip]]
id = "havip-a"
vswitch = "vsw-a"
ip_address = "10.0.1.200"

[[nat_gateway]]                    # created on or after 2022-09-19: one private IP per EIP
id = "ngw-new"
vswitch = "vsw-tiny"
created = "2024-03-01"

[[nat_gateway]]                    # created before: no private IP per EIP
id = "ngw-old"
vswitch = "vsw-tiny"
created = "2021-06-01"
"""


@pytest.fixture
def xlab(make_lab):
    return make_lab(extra=EXTRA)


def test_havip_takes_one_eip(xlab, sdk):
    vpc = xlab.vpc(sdk)
    a, b = allocate(vpc), allocate(vpc)
    e = associate(vpc, a["AllocationId"], "havip-a", "HaVip")
    assert (e["InstanceId"], e["InstanceType"]) == ("havip-a", "HaVip")
    with expect_error("InvalidAssociation.Duplicated"):
        vpc.call("AssociateEipAddress", AllocationId=b["AllocationId"], InstanceId="havip-a", InstanceType="HaVip")
    assert describe_one(vpc, b["AllocationId"])["Status"] == "Available"


def test_bind_modes_by_region(xlab):
    """cn-hangzhou offers BINDED but not MULTI_BINDED; ap-northeast-1 offers neither."""
    vpc = xlab.vpc("new")
    hz = [vpc.call("AllocateEipAddress", RegionId="cn-hangzhou") for _ in range(2)]
    with expect_error("OperationUnsupported.EipBindModel"):
        vpc.call("AssociateEipAddress", RegionId="cn-hangzhou", AllocationId=hz[0]["AllocationId"],
                 InstanceId="eni-hz", InstanceType="NetworkInterface", Mode="MULTI_BINDED")
    vpc.call("AssociateEipAddress", RegionId="cn-hangzhou", AllocationId=hz[1]["AllocationId"],
             InstanceId="eni-hz", InstanceType="NetworkInterface", Mode="BINDED")
    listed = vpc.call("DescribeEipAddresses", RegionId="cn-hangzhou")["EipAddresses"]["EipAddress"]
    assert {e["AllocationId"] for e in listed} == {h["AllocationId"] for h in hz}
    assert all(e["RegionId"] == "cn-hangzhou" for e in listed)
    # an EIP of another region is not listed in cn-shanghai
    here = vpc.call("DescribeEipAddresses", AllocationId=hz[0]["AllocationId"])
    assert here["TotalCount"] == 0

    tk = vpc.call("AllocateEipAddress", RegionId="ap-northeast-1")
    for mode in ("BINDED", "MULTI_BINDED"):
        with expect_error("OperationUnsupported.EipBindModel"):
            vpc.call("AssociateEipAddress", RegionId="ap-northeast-1", AllocationId=tk["AllocationId"],
                     InstanceId="eni-tokyo", InstanceType="NetworkInterface", Mode=mode)
    # NAT mode works everywhere
    vpc.call("AssociateEipAddress", RegionId="ap-northeast-1", AllocationId=tk["AllocationId"],
             InstanceId="eni-tokyo", InstanceType="NetworkInterface", Mode="NAT")


def test_multi_binded_eni_attaches_only_to_listed_families_with_dhcp(xlab, sdk):
    vpc, ecs = xlab.vpc(sdk), xlab.ecs()
    r = allocate(vpc)
    associate(vpc, r["AllocationId"], "eni-multi", "NetworkInterface", "MULTI_BINDED")
    for inst in ("i-t6", "i-nodhcp"):
        with expect_error("OperationUnsupported.EipBindModel"):
            ecs.call("AttachNetworkInterface", InstanceId=inst, NetworkInterfaceId="eni-multi")
    n = ecs.call("DescribeNetworkInterfaces", NetworkInterfaceId=["eni-multi"])["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]
    assert n["Status"] == "Available"
    ecs.call("AttachNetworkInterface", InstanceId="i-app", NetworkInterfaceId="eni-multi")  # ecs.g5, DHCP on
    # a BINDED ENI has no such restriction
    b = allocate(vpc)
    associate(vpc, b["AllocationId"], "eni-spare", "NetworkInterface", "BINDED")
    ecs.call("AttachNetworkInterface", InstanceId="i-t6", NetworkInterfaceId="eni-spare")


def test_new_nat_gateway_takes_a_private_ip_per_eip(xlab, sdk):
    vpc = xlab.vpc(sdk)
    ok, refused = 0, None
    for _ in range(8):
        a = allocate(vpc)["AllocationId"]
        try:
            vpc.call("AssociateEipAddress", AllocationId=a, InstanceId="ngw-new", InstanceType="Nat")
            ok += 1
        except Exception as e:  # noqa: BLE001 - checked below
            refused = e
            break
    assert refused is not None, "a /29 vSwitch cannot give 8 private IPs"
    assert getattr(refused, "code", None) == "OperationDenied.NoAvailablePrivateIp", refused
    assert 1 <= ok <= 5
    # the old gateway on the same vSwitch takes none
    for _ in range(8):
        a = allocate(vpc)["AllocationId"]
        vpc.call("AssociateEipAddress", AllocationId=a, InstanceId="ngw-old", InstanceType="Nat")
