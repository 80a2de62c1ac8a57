"""AllocateEipAddress, DescribeEipAddresses, ModifyEipAddressAttribute, ReleaseEipAddress and the
7-day recovery, through both VPC SDKs."""

import ipaddress

from conftest import (
    ALLOCATION_ID_RE, POOL, TIME_RE, allocate, associate, describe, describe_all, describe_one,
    dp_eips, eips_of, expect_error, unassociate,
)

DAY = 86400


def test_allocate_random_address_from_pool(vpc, lab):
    got = [allocate(vpc) for _ in range(6)]
    ids = [g["AllocationId"] for g in got]
    addrs = [g["EipAddress"] for g in got]
    assert all(ALLOCATION_ID_RE.match(i) for i in ids), ids
    assert len(set(ids)) == 6 and len(set(addrs)) == 6
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert ip in POOL
        # never the network, broadcast, or an address the lab file already gave out
        assert a not in ("198.51.100.0", "198.51.100.255", "198.51.100.10", "198.51.100.11", "198.51.100.240")
    # random, not the pool's first free addresses in order
    lowest_first = sorted(addrs, key=ipaddress.ip_address) == addrs and \
        int(ipaddress.ip_address(addrs[-1])) - int(ipaddress.ip_address(addrs[0])) <= 8
    assert not lowest_first, f"allocation looks sequential, not random: {addrs}"
    for g in got:
        e = describe_one(vpc, g["AllocationId"])
        assert e is not None and e["IpAddress"] == g["EipAddress"] and e["Status"] == "Available"


def test_allocate_with_bandwidth_and_charge_type(vpc):
    r = allocate(vpc, Bandwidth="20", InternetChargeType="PayByBandwidth")
    e = describe_one(vpc, r["AllocationId"])
    assert e["Bandwidth"] == "20"
    assert e["InternetChargeType"] == "PayByBandwidth"


def test_describe_fields_and_types(vpc, lab):
    r = allocate(vpc, Bandwidth="7")
    resp = describe(vpc, AllocationId=r["AllocationId"])
    assert isinstance(resp.get("RequestId"), str) and resp["RequestId"]
    assert resp["TotalCount"] == 1 and isinstance(resp["TotalCount"], int)
    assert isinstance(resp["PageNumber"], int) and isinstance(resp["PageSize"], int)
    (e,) = eips_of(resp)
    assert e["AllocationId"] == r["AllocationId"]
    assert e["IpAddress"] == r["EipAddress"]
    assert e["Status"] == "Available"
    assert e["Bandwidth"] == "7", "Bandwidth is a string in the real API (and the SDK model)"
    assert e["RegionId"] == "cn-shanghai"
    assert TIME_RE.match(e["AllocationTime"]), e["AllocationTime"]
    assert e["ChargeType"] == "PostPaid"
    assert e["InternetChargeType"] in ("PayByTraffic", "PayByBandwidth")
    assert not e.get("InstanceId"), "an Available EIP has no InstanceId"


def test_describe_lab_declared_association(vpc):
    e = describe_one(vpc, "eip-web1")
    assert e["IpAddress"] == "198.51.100.10"
    assert e["Status"] == "InUse"
    assert e["InstanceId"] == "eni-web1"
    assert e["InstanceType"] == "NetworkInterface"
    assert e["Mode"] == "NAT"
    assert e["PrivateIpAddress"] == "10.0.1.21"
    assert e["Bandwidth"] == "5"
    free = describe_one(vpc, "eip-free")
    assert free["Status"] == "Available" and free["Bandwidth"] == "2"


def test_describe_filters(vpc):
    a = allocate(vpc)["AllocationId"]
    b = allocate(vpc)["AllocationId"]
    c = allocate(vpc)
    associate(vpc, a, "i-app", "EcsInstance")

    # AllocationId: a comma-separated list
    got = {e["AllocationId"] for e in eips_of(describe(vpc, AllocationId=f"{a},{b}"))}
    assert got == {a, b}
    # EipAddress
    (e,) = eips_of(describe(vpc, EipAddress=c["EipAddress"]))
    assert e["AllocationId"] == c["AllocationId"]
    # Status
    in_use = {e["AllocationId"] for e in eips_of(describe(vpc, Status="InUse", PageSize=100))}
    assert in_use == {a, "eip-web1"}
    available = {e["AllocationId"] for e in eips_of(describe(vpc, Status="Available", PageSize=100))}
    assert {b, c["AllocationId"], "eip-free"} <= available and a not in available
    # AssociatedInstanceType + AssociatedInstanceId
    (e,) = eips_of(describe(vpc, AssociatedInstanceType="EcsInstance", AssociatedInstanceId="i-app"))
    assert e["AllocationId"] == a and e["InstanceId"] == "i-app" and e["InstanceType"] == "EcsInstance"
    (e,) = eips_of(describe(vpc, AssociatedInstanceType="NetworkInterface", AssociatedInstanceId="eni-web1"))
    assert e["AllocationId"] == "eip-web1"
    assert eips_of(describe(vpc, AssociatedInstanceType="EcsInstance", AssociatedInstanceId="i-web")) == []
    # unknown ids give an empty list, not an error
    r = describe(vpc, AllocationId="eip-doesnotexist0")
    assert r["TotalCount"] == 0 and eips_of(r) == []


def test_describe_paging(vpc):
    mine = {allocate(vpc)["AllocationId"] for _ in range(5)}
    total = 5 + 2  # plus eip-web1 and eip-free from the lab file
    seen = []
    for page in (1, 2, 3):
        r = describe(vpc, PageNumber=page, PageSize=3)
        assert r["TotalCount"] == total
        assert r["PageNumber"] == page and r["PageSize"] == 3
        items = eips_of(r)
        assert len(items) == (3 if page < 3 else 1)
        seen += [e["AllocationId"] for e in items]
    assert len(seen) == len(set(seen)) == total, "pages overlap or miss EIPs"
    assert mine <= set(seen)
    assert eips_of(describe(vpc, PageNumber=4, PageSize=3)) == []
    assert {e["AllocationId"] for e in describe_all(vpc, page_size=2)} == set(seen)


def test_describe_typed_model_new_sdk(lab):
    """The typed response model of alibabacloud_vpc20160428, read the way a script reads it."""
    from alibabacloud_vpc20160428 import models

    vpc = lab.vpc("new")
    resp = vpc.client.describe_eip_addresses(models.DescribeEipAddressesRequest(
        region_id="cn-shanghai", allocation_id="eip-web1"))
    body = resp.body
    assert body.total_count == 1
    e = body.eip_addresses.eip_address[0]
    assert isinstance(e, models.DescribeEipAddressesResponseBodyEipAddressesEipAddress)
    assert (e.allocation_id, e.ip_address, e.status, e.instance_id, e.instance_type, e.mode, e.private_ip_address) == \
        ("eip-web1", "198.51.100.10", "InUse", "eni-web1", "NetworkInterface", "NAT", "10.0.1.21")
    assert e.bandwidth == "5" and e.region_id == "cn-shanghai"
    r = vpc.client.allocate_eip_address(models.AllocateEipAddressRequest(region_id="cn-shanghai"))
    assert r.body.allocation_id.startswith("eip-") and r.body.eip_address.startswith("198.51.100.")


def test_modify_bandwidth_in_describe_and_dataplane(vpc, lab):
    r = allocate(vpc)
    vpc.call("ModifyEipAddressAttribute", AllocationId=r["AllocationId"], Bandwidth="42")
    assert describe_one(vpc, r["AllocationId"])["Bandwidth"] == "42"
    assert dp_eips(lab.dataplane())[r["EipAddress"]]["bandwidth"] == 42
    # on an associated EIP the policer follows too
    vpc.call("ModifyEipAddressAttribute", AllocationId="eip-web1", Bandwidth="13")
    assert describe_one(vpc, "eip-web1")["Bandwidth"] == "13"
    assert dp_eips(lab.dataplane())["198.51.100.10"]["bandwidth"] == 13


def test_modify_unknown_eip(vpc):
    with expect_error("InvalidAllocationId.NotFound", 404):
        vpc.call("ModifyEipAddressAttribute", AllocationId="eip-nosuch000", Bandwidth="10")


def test_release(vpc, lab):
    r = allocate(vpc)
    vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    assert describe_one(vpc, r["AllocationId"]) is None
    assert r["EipAddress"] not in dp_eips(lab.dataplane())
    with expect_error("InvalidAllocationId.NotFound", 404):
        vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])


def test_release_in_use_is_refused(vpc):
    with expect_error("IncorrectEipStatus", 400):
        vpc.call("ReleaseEipAddress", AllocationId="eip-web1")
    assert describe_one(vpc, "eip-web1")["Status"] == "InUse"


def test_recovery_within_7_days(vpc, lab):
    r = allocate(vpc, Bandwidth="20", InternetChargeType="PayByBandwidth")
    vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    lab.advance_clock(6 * DAY)
    back = vpc.call("AllocateEipAddress", IpAddress=r["EipAddress"])
    assert back["EipAddress"] == r["EipAddress"]
    e = describe_one(vpc, back["AllocationId"])
    assert e["IpAddress"] == r["EipAddress"] and e["Status"] == "Available"
    assert e["Bandwidth"] == "5", "a recovered EIP comes back at 5 Mbit/s"
    assert e["InternetChargeType"] == "PayByTraffic", "a recovered EIP comes back pay-by-traffic"
    # the recovered EIP works like any other
    associate(vpc, back["AllocationId"], "i-app", "EcsInstance")


def test_recovery_by_allocation_id(vpc, lab):
    r = allocate(vpc)
    vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    back = vpc.call("AllocateEipAddress", InstanceId=r["AllocationId"])
    assert back["EipAddress"] == r["EipAddress"]


def test_recovery_expires_after_7_days(vpc, lab):
    r = allocate(vpc)
    vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    lab.advance_clock(8 * DAY)
    with expect_error("InvalidAllocationId.NotFound", 404):
        vpc.call("AllocateEipAddress", IpAddress=r["EipAddress"])
    # ordinary allocation still works after the clock moved (signatures use the real clock)
    allocate(vpc)


def test_recovery_of_never_released_address_fails(vpc):
    with expect_error("InvalidAllocationId.NotFound", 404):
        vpc.call("AllocateEipAddress", IpAddress="198.51.100.200")
    with expect_error("InvalidAllocationId.NotFound", 404):
        # in use: not a released address
        vpc.call("AllocateEipAddress", IpAddress="198.51.100.10")


def test_unassociate_then_release(vpc, lab):
    r = allocate(vpc)
    associate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    unassociate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    assert describe_one(vpc, r["AllocationId"]) is None
