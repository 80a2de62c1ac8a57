"""The HaVip actions through both SDKs, on examples/nat-gateway.toml (havip-a, 10.0.2.100 on
vsw-b, held by i-ha1 with i-ha2 standing by, EIP 198.51.100.60): CreateHaVip, AssociateHaVip,
UnassociateHaVip, DeleteHaVip and DescribeHaVips under the cloud's rules and codes, the
account's quota of 50 HaVips, and what the API makes survives a restart. (The HaVip dataplane
is not built yet.)"""

import pytest

from conftest import REPO, associate, expect_error, unassociate

LAB = (REPO / "examples" / "nat-gateway.toml").read_text()


@pytest.fixture
def nlab(make_lab):
    return make_lab(text=LAB)


def havips(vpc, *ids, **params) -> dict[str, dict]:
    """DescribeHaVips (filtered by HaVipId when `ids` are given), by id."""
    if ids:
        params["Filter"] = [{"Key": "HaVipId", "Value": list(ids)}]
    r = vpc.call("DescribeHaVips", **params)
    items = r["HaVips"]["HaVip"]
    assert r["TotalCount"] >= len(items), r
    return {h["HaVipId"]: h for h in items}


def instances_of(h: dict) -> list[str]:
    return (h.get("AssociatedInstances") or {}).get("associatedInstance") or []


def eips_of(h: dict) -> list[str]:
    return (h.get("AssociatedEipAddresses") or {}).get("associatedEipAddresse") or []


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_describe_havips_shows_the_lab_files_havip(nlab, sdk):
    vpc = nlab.vpc(sdk)
    h = havips(vpc)["havip-a"]
    assert h["IpAddress"] == "10.0.2.100" and h["VSwitchId"] == "vsw-b" and h["VpcId"] == "vpc-lab"
    assert h["Status"] == "InUse" and h["MasterInstanceId"] == "i-ha1"
    assert instances_of(h) == ["i-ha1", "i-ha2"]
    assert eips_of(h) == ["198.51.100.60"]
    assert havips(vpc, "havip-nope") == {}


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_create_associate_unassociate_delete(nlab, sdk):
    vpc = nlab.vpc(sdk)
    r = vpc.call("CreateHaVip", VSwitchId="vsw-a", IpAddress="10.0.1.200", Description="my havip")
    hid = r["HaVipId"]
    assert hid.startswith("havip-")
    h = havips(vpc, hid)[hid]
    assert (h["Status"], h["IpAddress"], h["VSwitchId"], h["MasterInstanceId"]) == (
        "Available", "10.0.1.200", "vsw-a", "")
    assert instances_of(h) == [] and h["Description"] == "my havip"
    # Without IpAddress a free address of the vSwitch is taken.
    auto = vpc.call("CreateHaVip", VSwitchId="vsw-a")["HaVipId"]
    ip = havips(vpc, auto)[auto]["IpAddress"]
    assert ip.startswith("10.0.1.") and ip not in ("10.0.1.11", "10.0.1.12", "10.0.1.200"), ip
    # Two instances: the first holds it.
    vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-web1")
    vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-web2", InstanceType="EcsInstance")
    h = havips(vpc, hid)[hid]
    assert (h["Status"], h["MasterInstanceId"], instances_of(h)) == ("InUse", "i-web1", ["i-web1", "i-web2"])
    with expect_error("Forbidden.UnassociateMaster"):
        vpc.call("UnassociateHaVip", HaVipId=hid, InstanceId="i-web1")
    with expect_error("IncorrectStatus"):
        vpc.call("DeleteHaVip", HaVipId=hid)
    vpc.call("UnassociateHaVip", HaVipId=hid, InstanceId="i-web1", Force=True)
    h = havips(vpc, hid)[hid]
    assert (h["Status"], h["MasterInstanceId"], instances_of(h)) == ("InUse", "i-web2", ["i-web2"])
    vpc.call("UnassociateHaVip", HaVipId=hid, InstanceId="i-web2")
    assert havips(vpc, hid)[hid]["Status"] == "Available"
    vpc.call("DeleteHaVip", HaVipId=hid)
    assert havips(vpc, hid) == {}
    # Its address is free again.
    again = vpc.call("CreateHaVip", VSwitchId="vsw-a", IpAddress="10.0.1.200")["HaVipId"]
    assert again != hid


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_create_refuses_addresses_with_the_clouds_codes(nlab, sdk):
    vpc = nlab.vpc(sdk)
    for ip, code in [
        ("10.0.2.50", "InvalidIPAddress.OutOfRange"),
        ("10.0.1.0", "InvalidIPAddress.NotAvailable"),
        ("10.0.1.11", "InvalidIPAddress.AlreadyUsed"),
        ("10.0.1.x", "InvalidIPAddress.Malformed"),
    ]:
        with expect_error(code):
            vpc.call("CreateHaVip", VSwitchId="vsw-a", IpAddress=ip)
    with expect_error("InvalidIPAddress.AlreadyUsed"):
        vpc.call("CreateHaVip", VSwitchId="vsw-b", IpAddress="10.0.2.100")
    with expect_error("InvalidVSwitch.NotFound"):
        vpc.call("CreateHaVip", VSwitchId="vsw-nope")
    assert set(havips(vpc)) == {"havip-a"}


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_associate_and_delete_refusals(nlab, sdk):
    vpc = nlab.vpc(sdk)
    hid = vpc.call("CreateHaVip", VSwitchId="vsw-a")["HaVipId"]
    with expect_error("InvalidHaVipId.NotFound", 404):
        vpc.call("AssociateHaVip", HaVipId="havip-nope", InstanceId="i-web1")
    with expect_error("InvalidInstanceId.NotFound"):
        vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-nope")
    with expect_error("InvalidVSwitchId.NotSame"):
        vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-ha1")
    vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="eni-web1", InstanceType="NetworkInterface")
    h = havips(vpc, hid)[hid]
    assert h["AssociatedInstanceType"] == "NetworkInterface" and h["MasterInstanceId"] == "eni-web1"
    with expect_error("InvalidInstanceType.NotSame"):
        vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-web2")
    with expect_error("ResourceNotAssociated"):
        vpc.call("UnassociateHaVip", HaVipId=hid, InstanceId="eni-web2")
    # havip-a has an EIP: it cannot go.
    with expect_error("DependencyViolation.HaVipAssociatedWithEIP"):
        vpc.call("DeleteHaVip", HaVipId="havip-a")
    with expect_error("InvalidHaVipId.NotFound", 404):
        vpc.call("DeleteHaVip", HaVipId="havip-nope")
    assert instances_of(havips(vpc, hid)[hid]) == ["eni-web1"]


def test_an_eip_on_a_new_havip_shows_in_describe(nlab):
    vpc = nlab.vpc("new")
    hid = vpc.call("CreateHaVip", VSwitchId="vsw-a")["HaVipId"]
    aid = vpc.call("AllocateEipAddress")["AllocationId"]
    associate(vpc, aid, hid, "HaVip")
    h = havips(vpc, hid)[hid]
    assert len(eips_of(h)) == 1, h
    with expect_error("DependencyViolation.HaVipAssociatedWithEIP"):
        vpc.call("DeleteHaVip", HaVipId=hid)
    unassociate(vpc, aid, hid, "HaVip")
    vpc.call("DeleteHaVip", HaVipId=hid)


def test_the_account_takes_50_havips_and_describe_pages(nlab):
    vpc = nlab.vpc("new")
    made = [vpc.call("CreateHaVip", VSwitchId="vsw-a")["HaVipId"] for _ in range(49)]
    with expect_error("QuotaExceeded.HaVip"):
        vpc.call("CreateHaVip", VSwitchId="vsw-a")
    seen = {}
    for page in (1, 2, 3):
        r = vpc.call("DescribeHaVips", PageNumber=page, PageSize=20)
        assert r["TotalCount"] == 50 and r["PageNumber"] == page and r["PageSize"] == 20
        seen.update({h["HaVipId"]: h for h in r["HaVips"]["HaVip"]})
    assert set(seen) == set(made) | {"havip-a"}
    vpc.call("DeleteHaVip", HaVipId=made[0])
    vpc.call("CreateHaVip", VSwitchId="vsw-a")


def test_havips_made_through_the_api_survive_a_restart(nlab):
    vpc = nlab.vpc("new")
    hid = vpc.call("CreateHaVip", VSwitchId="vsw-a", IpAddress="10.0.1.201")["HaVipId"]
    vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-web2")
    vpc.call("AssociateHaVip", HaVipId=hid, InstanceId="i-web1")
    vpc.call("UnassociateHaVip", HaVipId="havip-a", InstanceId="i-ha2")
    before = havips(vpc)
    nlab.kill9()
    nlab.start()
    for sdk in ("new", "old"):
        assert havips(nlab.vpc(sdk)) == before
    vpc = nlab.vpc("new")
    h = havips(vpc, hid)[hid]
    assert (h["MasterInstanceId"], instances_of(h)) == ("i-web2", ["i-web2", "i-web1"])
    assert instances_of(havips(vpc, "havip-a")["havip-a"]) == ["i-ha1"]
    # The rules still hold after the restart.
    with expect_error("InvalidIPAddress.AlreadyUsed"):
        vpc.call("CreateHaVip", VSwitchId="vsw-a", IpAddress="10.0.1.201")
    with expect_error("Forbidden.UnassociateMaster"):
        vpc.call("UnassociateHaVip", HaVipId=hid, InstanceId="i-web2")
