"""AssociateEipAddress in each mode, UnassociateEipAddress, DescribeEipGatewayInfo; what Describe
says must be what the dataplane was programmed with."""

import ipaddress

from conftest import (
    POOL, allocate, associate, describe_one, dp_binding, dp_eips, expect_error, unassociate,
)


def test_ecs_instance_nat(vpc, lab):
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    assert e["InstanceId"] == "i-app"
    assert e["InstanceType"] == "EcsInstance"
    assert e["Mode"] == "NAT"
    assert e["IpAddress"] == r["EipAddress"]
    mode, private_ip, _ = dp_binding(lab.dataplane(), r["EipAddress"])
    assert mode == "NAT" and private_ip == "10.0.1.40", "ECS: NAT onto the primary ENI's primary private IP"
    e = unassociate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    assert not e.get("InstanceId")
    assert dp_binding(lab.dataplane(), r["EipAddress"]) is None


def test_instance_type_defaults_to_ecs(vpc):
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "i-app")  # InstanceType omitted: EcsInstance
    assert e["InstanceType"] == "EcsInstance" and e["InstanceId"] == "i-app"


def test_stopped_instance_can_take_an_eip(vpc):
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "i-stopped", "EcsInstance")
    assert e["InstanceId"] == "i-stopped"


def test_cross_zone_is_fine(vpc):
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "i-app2", "EcsInstance")  # vsw-b, another zone
    assert e["Status"] == "InUse"


def test_network_interface_nat_with_private_ip(vpc, lab):
    a, b = allocate(vpc), allocate(vpc)
    e = associate(vpc, a["AllocationId"], "eni-web1", "NetworkInterface", "NAT", "10.0.1.22")
    assert (e["InstanceId"], e["InstanceType"], e["Mode"], e["PrivateIpAddress"]) == \
        ("eni-web1", "NetworkInterface", "NAT", "10.0.1.22")
    # one EIP per private IP: a second private IP of the same ENI takes another EIP
    e = associate(vpc, b["AllocationId"], "eni-web1", "NetworkInterface", "NAT", "10.0.1.20")
    assert e["PrivateIpAddress"] == "10.0.1.20"
    dp = lab.dataplane()
    for addr, ip in ((a["EipAddress"], "10.0.1.22"), (b["EipAddress"], "10.0.1.20"), ("198.51.100.10", "10.0.1.21")):
        mode, private_ip, eni_ips = dp_binding(dp, addr)
        assert (mode, private_ip) == ("NAT", ip)
        assert eni_ips is None or ip in eni_ips
    unassociate(vpc, a["AllocationId"], "eni-web1", "NetworkInterface", PrivateIpAddress="10.0.1.22")
    assert dp_binding(lab.dataplane(), a["EipAddress"]) is None
    assert dp_binding(lab.dataplane(), b["EipAddress"])[1] == "10.0.1.20"


def test_network_interface_nat_on_primary_eni(vpc):
    """004: NAT mode works on an attached ENI, primary included, one EIP per private IP."""
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "eni-web0", "NetworkInterface", "NAT", "10.0.1.10")
    assert e["PrivateIpAddress"] == "10.0.1.10" and e["Mode"] == "NAT"


def test_binded_on_detached_secondary_eni(vpc, lab):
    r = allocate(vpc)
    e = associate(vpc, r["AllocationId"], "eni-spare", "NetworkInterface", "BINDED")
    assert (e["InstanceId"], e["InstanceType"], e["Mode"]) == ("eni-spare", "NetworkInterface", "BINDED")
    mode, private_ip, eni_ips = dp_binding(lab.dataplane(), r["EipAddress"])
    assert mode == "BINDED"
    assert private_ip in (None, ""), "cut-through: the EIP is not translated to a private IP"
    assert eni_ips is None or eni_ips == ["10.0.1.30"]
    unassociate(vpc, r["AllocationId"], "eni-spare", "NetworkInterface")
    assert dp_binding(lab.dataplane(), r["EipAddress"]) is None


def test_multi_binded_several_eips_and_gateway_info(vpc, lab):
    got = [allocate(vpc) for _ in range(3)]
    for g in got:
        e = associate(vpc, g["AllocationId"], "eni-multi", "NetworkInterface", "MULTI_BINDED")
        assert e["Mode"] == "MULTI_BINDED" and e["InstanceId"] == "eni-multi"
    dp = lab.dataplane()
    for g in got:
        assert dp_binding(dp, g["EipAddress"])[0] == "MULTI_BINDED"

    info = vpc.call("DescribeEipGatewayInfo", InstanceId="eni-multi")
    assert isinstance(info.get("EipInfos"), dict), info
    infos = info["EipInfos"]["EipInfo"]
    assert isinstance(infos, list)
    assert sorted(i["Ip"] for i in infos) == sorted(g["EipAddress"] for g in got)
    for i in infos:
        assert ipaddress.ip_address(i["IpGw"]) in POOL and i["IpGw"] != i["Ip"]
        assert i["IpMask"] == "255.255.255.0"
        assert ipaddress.ip_address(i["Ip"]) in ipaddress.ip_network(f"{i['IpGw']}/{i['IpMask']}", strict=False)

    # one leaves: the others stay
    unassociate(vpc, got[0]["AllocationId"], "eni-multi", "NetworkInterface")
    info = vpc.call("DescribeEipGatewayInfo", InstanceId="eni-multi")
    assert sorted(i["Ip"] for i in info["EipInfos"]["EipInfo"]) == sorted(g["EipAddress"] for g in got[1:])


def test_multi_binded_quota_is_10(vpc):
    got = [allocate(vpc)["AllocationId"] for _ in range(11)]
    for a in got[:10]:
        associate(vpc, a, "eni-multi", "NetworkInterface", "MULTI_BINDED", wait=False)
    for a in got[:10]:
        assert describe_one(vpc, a)["Status"] in ("Associating", "InUse")
    with expect_error("QuotaExceed.MultiBindedEip"):
        vpc.call("AssociateEipAddress", AllocationId=got[10], InstanceId="eni-multi",
                 InstanceType="NetworkInterface", Mode="MULTI_BINDED")
    assert describe_one(vpc, got[10])["Status"] == "Available"


def test_multi_binded_closed_to_account(make_lab, sdk):
    lab = make_lab(multi_binded=False)
    vpc = lab.vpc(sdk)
    r = allocate(vpc)
    with expect_error("Mode.NotSupport"):
        vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId="eni-multi",
                 InstanceType="NetworkInterface", Mode="MULTI_BINDED")
    # BINDED is not affected
    associate(vpc, r["AllocationId"], "eni-spare", "NetworkInterface", "BINDED")


def test_unassociate_available_eip(vpc):
    r = allocate(vpc)
    with expect_error("IncorrectEipStatus"):
        vpc.call("UnassociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-app",
                 InstanceType="EcsInstance")


def test_reassociate_after_unassociate_elsewhere(vpc, lab):
    r = allocate(vpc)
    associate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    unassociate(vpc, r["AllocationId"], "i-app", "EcsInstance")
    e = associate(vpc, r["AllocationId"], "eni-web1", "NetworkInterface", "NAT", "10.0.1.20")
    assert e["InstanceId"] == "eni-web1"
    assert dp_binding(lab.dataplane(), r["EipAddress"])[1] == "10.0.1.20"
    assert len(dp_eips(lab.dataplane())) >= 3


def test_dataplane_follows_transitions_ended_while_polling(vpc, lab):
    """A script polling DescribeEipAddresses tightly: whichever request or timer ends the
    Associating/Unassociating transition, the programmed table must follow."""
    import time

    from conftest import describe_one as d1

    targets = [("i-app", "EcsInstance", None, "10.0.1.40"), ("i-app2", "EcsInstance", None, "10.0.2.40"),
               ("eni-web1", "NetworkInterface", "10.0.1.20", "10.0.1.20"),
               ("eni-web1", "NetworkInterface", "10.0.1.22", "10.0.1.22"),
               ("eni-web0", "NetworkInterface", "10.0.1.10", "10.0.1.10")]
    for inst, kind, ip, lands in targets:
        r = allocate(vpc)
        vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"], InstanceId=inst, InstanceType=kind,
                 PrivateIpAddress=ip)
        deadline = time.monotonic() + 10
        while d1(vpc, r["AllocationId"])["Status"] != "InUse":
            assert time.monotonic() < deadline
        assert dp_binding(lab.dataplane(), r["EipAddress"])[1] == lands
        vpc.call("UnassociateEipAddress", AllocationId=r["AllocationId"], InstanceId=inst, InstanceType=kind,
                 PrivateIpAddress=ip)
        while d1(vpc, r["AllocationId"])["Status"] != "Available":
            assert time.monotonic() < deadline
        dp = lab.dataplane()
        assert dp_binding(dp, r["EipAddress"]) is None
        # nothing in the programmed table still maps to the unassociated EIP
        assert all(v["association"] is None or v["association"]["table_eip"] != r["EipAddress"]
                   for v in dp_eips(dp).values())
        vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
