"""The NAT gateway's actions through both SDKs, on examples/nat-gateway.toml: the read actions
(DescribeNatGateways, DescribeSnatTableEntries, DescribeForwardTableEntries) answer what the lab
file declares, with the SDKs' own field names; the entry actions (CreateSnatEntry,
ModifySnatEntry, DeleteSnatEntry, CreateForwardEntry, ModifyForwardEntry, DeleteForwardEntry)
change the tables under the cloud's rules and codes, and what they make survives a restart.
(The dataplane of SNAT/DNAT is not built yet.)"""

import re

import pytest

from conftest import REPO, allocate, associate, expect_error, unassociate

LAB = (REPO / "examples" / "nat-gateway.toml").read_text()


@pytest.fixture
def nlab(make_lab):
    return make_lab(text=LAB)


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_describe_nat_gateways_lists_the_gateway_its_tables_and_eips(nlab, sdk):
    vpc = nlab.vpc(sdk)
    r = vpc.call("DescribeNatGateways")
    gws = r["NatGateways"]["NatGateway"]
    assert [g["NatGatewayId"] for g in gws] == ["ngw-a"], r
    g = gws[0]
    assert g["Status"] == "Available" and g["VpcId"] == "vpc-lab"
    assert g["SnatTableIds"]["SnatTableId"] == ["stb-ngw-a"]
    assert g["ForwardTableIds"]["ForwardTableId"] == ["ftb-ngw-a"]
    assert g["EipBindMode"] == "MULTI_BINDED", "created 2024-01-01: an EIP takes a private IP"
    ips = {i["IpAddress"]: i for i in g["IpLists"]["IpList"]}
    assert set(ips) == {"198.51.100.50", "198.51.100.51"}, ips
    assert ips["198.51.100.50"]["UsingStatus"] == "UsedBySnatTable"
    assert ips["198.51.100.50"]["SnatEntryEnabled"] is True
    assert ips["198.51.100.51"]["UsingStatus"] == "UsedByForwardTable"
    assert all(i["PrivateIpAddress"].startswith("10.0.1.") for i in ips.values()), ips
    assert r["TotalCount"] == 1
    # Filters: another id answers nothing.
    assert vpc.call("DescribeNatGateways", NatGatewayId="ngw-nope")["TotalCount"] == 0


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_describe_snat_table_entries_answers_the_lab_files_entries(nlab, sdk):
    vpc = nlab.vpc(sdk)
    r = vpc.call("DescribeSnatTableEntries", SnatTableId="stb-ngw-a")
    es = {e["SnatEntryId"]: e for e in r["SnatTableEntries"]["SnatTableEntry"]}
    assert set(es) == {"snat-vsw-a", "snat-vsw-b"}, r
    assert es["snat-vsw-a"]["SourceVSwitchId"] == "vsw-a" and es["snat-vsw-a"]["SourceCIDR"] == ""
    assert es["snat-vsw-b"]["SourceCIDR"] == "10.0.2.0/24"
    assert all(e["SnatIp"] == "198.51.100.50" and e["Status"] == "Available"
               and e["NatGatewayId"] == "ngw-a" and e["SnatTableId"] == "stb-ngw-a" for e in es.values())
    one = vpc.call("DescribeSnatTableEntries", SnatTableId="stb-ngw-a", SourceCIDR="10.0.2.0/24")
    assert [e["SnatEntryId"] for e in one["SnatTableEntries"]["SnatTableEntry"]] == ["snat-vsw-b"]
    none = vpc.call("DescribeSnatTableEntries", SnatTableId="stb-other")
    assert none["TotalCount"] == 0


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_describe_forward_table_entries_answers_ports_and_protocols(nlab, sdk):
    vpc = nlab.vpc(sdk)
    r = vpc.call("DescribeForwardTableEntries", ForwardTableId="ftb-ngw-a")
    es = {e["ForwardEntryId"]: e for e in r["ForwardTableEntries"]["ForwardTableEntry"]}
    assert set(es) == {"fwd-web", "fwd-dns"}, r
    web = es["fwd-web"]
    assert (web["ExternalIp"], web["ExternalPort"], web["InternalIp"], web["InternalPort"], web["IpProtocol"]) == \
        ("198.51.100.51", "8080", "10.0.1.11", "80", "TCP")
    assert es["fwd-dns"]["IpProtocol"] == "UDP" and es["fwd-dns"]["InternalPort"] == "53"
    udp = vpc.call("DescribeForwardTableEntries", ForwardTableId="ftb-ngw-a", IpProtocol="UDP")
    assert [e["ForwardEntryId"] for e in udp["ForwardTableEntries"]["ForwardTableEntry"]] == ["fwd-dns"]


# ---------------------------------------------------------------------------------------------
# The entry actions
# ---------------------------------------------------------------------------------------------

STB = "stb-ngw-a"
FTB = "ftb-ngw-a"
SNAT_ID_RE = re.compile(r"^snat-[0-9a-f]{16}$")
FWD_ID_RE = re.compile(r"^fwd-[0-9a-f]{16}$")


def gateway_eip(vpc) -> tuple[str, str]:
    """A new EIP, InUse on ngw-a: (allocation id, address)."""
    e = allocate(vpc)
    associate(vpc, e["AllocationId"], "ngw-a", "Nat")
    return e["AllocationId"], e["EipAddress"]


def snat_entries(vpc, **filters) -> dict[str, dict]:
    r = vpc.call("DescribeSnatTableEntries", SnatTableId=STB, PageSize=100, **filters)
    return {e["SnatEntryId"]: e for e in r["SnatTableEntries"]["SnatTableEntry"]}


def forward_entries(vpc, **filters) -> dict[str, dict]:
    r = vpc.call("DescribeForwardTableEntries", ForwardTableId=FTB, PageSize=50, **filters)
    return {e["ForwardEntryId"]: e for e in r["ForwardTableEntries"]["ForwardTableEntry"]}


def using_status(vpc, address: str) -> str:
    g = vpc.call("DescribeNatGateways", NatGatewayId="ngw-a")["NatGateways"]["NatGateway"][0]
    return {i["IpAddress"]: i["UsingStatus"] for i in g["IpLists"]["IpList"]}[address]


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_snat_entry_is_created_modified_and_deleted(nlab, sdk):
    vpc = nlab.vpc(sdk)
    _, x = gateway_eip(vpc)
    assert using_status(vpc, x) == "Idle"
    r = vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24", SnatEntryName="batch")
    sid = r["SnatEntryId"]
    assert SNAT_ID_RE.match(sid) and r["RequestId"], r
    e = snat_entries(vpc, SnatEntryId=sid)[sid]
    assert (e["SnatIp"], e["SourceCIDR"], e["SourceVSwitchId"], e["SnatEntryName"], e["Status"],
            e["SnatTableId"], e["NatGatewayId"]) == (x, "10.0.3.0/24", "", "batch", "Available", STB, "ngw-a"), e
    assert using_status(vpc, x) == "UsedBySnatTable"
    # The lab file's entries are still there, next to the new one.
    assert set(snat_entries(vpc)) == {"snat-vsw-a", "snat-vsw-b", sid}
    r = vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId=sid, SnatIp=f"{x},198.51.100.50")
    assert set(r) == {"RequestId"}, r
    e = snat_entries(vpc, SnatEntryId=sid)[sid]
    assert (e["SnatIp"], e["SnatEntryName"], e["SourceCIDR"]) == (f"{x},198.51.100.50", "batch", "10.0.3.0/24"), e
    vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId=sid, SnatEntryName="renamed")
    e = snat_entries(vpc, SnatEntryId=sid)[sid]
    assert (e["SnatIp"], e["SnatEntryName"]) == (f"{x},198.51.100.50", "renamed"), e
    r = vpc.call("DeleteSnatEntry", SnatTableId=STB, SnatEntryId=sid)
    assert set(r) == {"RequestId"}, r
    assert sid not in snat_entries(vpc)
    assert using_status(vpc, x) == "Idle"
    with expect_error("InvalidSnatEntryId.NotFound", 404):
        vpc.call("DeleteSnatEntry", SnatTableId=STB, SnatEntryId=sid)


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_forward_entry_is_created_modified_and_deleted(nlab, sdk):
    vpc = nlab.vpc(sdk)
    _, x = gateway_eip(vpc)
    r = vpc.call("CreateForwardEntry", ForwardTableId=FTB, ExternalIp=x, ExternalPort="2222",
                 InternalIp="10.0.2.11", InternalPort="22", IpProtocol="tcp", ForwardEntryName="ssh")
    fid = r["ForwardEntryId"]
    assert FWD_ID_RE.match(fid) and r["RequestId"], r
    e = forward_entries(vpc, ForwardEntryId=fid)[fid]
    assert (e["ExternalIp"], e["ExternalPort"], e["InternalIp"], e["InternalPort"], e["IpProtocol"],
            e["ForwardEntryName"], e["Status"], e["ForwardTableId"], e["NatGatewayId"]) == \
        (x, "2222", "10.0.2.11", "22", "TCP", "ssh", "Available", FTB, "ngw-a"), e
    assert using_status(vpc, x) == "UsedByForwardTable"
    r = vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid, ExternalPort="2223")
    assert set(r) == {"RequestId"}, r
    e = forward_entries(vpc, ForwardEntryId=fid)[fid]
    assert (e["ExternalPort"], e["InternalPort"], e["InternalIp"], e["ForwardEntryName"]) == ("2223", "22", "10.0.2.11", "ssh")
    # A whole-IP mapping: Any ports with IpProtocol Any.
    vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid, ExternalPort="Any", InternalPort="Any",
             IpProtocol="Any")
    e = forward_entries(vpc, ForwardEntryId=fid)[fid]
    assert (e["ExternalPort"], e["InternalPort"], e["IpProtocol"]) == ("Any", "Any", "Any"), e
    r = vpc.call("DeleteForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid)
    assert set(r) == {"RequestId"}, r
    assert set(forward_entries(vpc)) == {"fwd-web", "fwd-dns"}
    with expect_error("InvalidForwardEntryId.NotFound", 404):
        vpc.call("DeleteForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid)


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_snat_entry_rules_answer_the_clouds_codes(nlab, sdk):
    vpc = nlab.vpc(sdk)
    _, x = gateway_eip(vpc)
    idle = allocate(vpc)["EipAddress"]  # Available, on no gateway
    before = snat_entries(vpc)
    cases = [
        (dict(SnatTableId="stb-nope", SnatIp=x, SourceCIDR="10.0.3.0/24"), "InvalidSnatTableId.NotFound", 404),
        (dict(SnatTableId=STB, SnatIp=idle, SourceCIDR="10.0.3.0/24"), "InvalidSnatIp.NotFound", 404),
        (dict(SnatTableId=STB, SnatIp="198.51.100", SourceCIDR="10.0.3.0/24"), "InvalidSnatIp.Malformed", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.7/24"), "INVALID_PARAMETER", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24", SourceVSwitchId="vsw-a"), "INVALID_PARAMETER", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceVSwitchId="vsw-nope"), "InvalidVSwitchId.NotFound", 404),
        # vsw-b holds havip-a; vsw-a has snat-vsw-a, and 10.0.2.0/24 has snat-vsw-b.
        (dict(SnatTableId=STB, SnatIp=x, SourceVSwitchId="vsw-b"), "Forbidden.SourceVSwitchId.IncludeHaVip", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceVSwitchId="vsw-a"), "Forbidden.SourceVSwitchId.Duplicated", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.2.0/24"), "Forbidden.SourceVSwitchId.Duplicated", 400),
        (dict(SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24", SnatEntryName="x"), "InvalidParameter.Name.Malformed", 400),
        (dict(SnatTableId=STB, SourceCIDR="10.0.3.0/24"), "MissingSnatIp", 400),
    ]
    for params, code, status in cases:
        with expect_error(code, status):
            vpc.call("CreateSnatEntry", **params)
    with expect_error("InvalidSnatEntryId.NotFound", 404):
        vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId="snat-nope", SnatIp=x)
    with expect_error("InvalidSnatIp.NotFound", 404):
        vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId="snat-vsw-a", SnatIp=f"198.51.100.50,{idle}")
    with expect_error("InvalidSnatTableId.NotFound", 404):
        vpc.call("DeleteSnatEntry", SnatTableId="stb-nope", SnatEntryId="snat-vsw-a")
    assert snat_entries(vpc) == before, "a refused call changed the SNAT table"


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_forward_entry_rules_answer_the_clouds_codes(nlab, sdk):
    vpc = nlab.vpc(sdk)
    _, x = gateway_eip(vpc)
    idle = allocate(vpc)["EipAddress"]
    # i-ha2 (10.0.2.12) gets an EIP of its own: it can no longer be a DNAT target.
    own = allocate(vpc)["AllocationId"]
    associate(vpc, own, "i-ha2")
    before = forward_entries(vpc)

    def entry(**over):
        p = dict(ForwardTableId=FTB, ExternalIp=x, ExternalPort="2222", InternalIp="10.0.2.11",
                 InternalPort="22", IpProtocol="TCP")
        p.update(over)
        return p

    cases = [
        (entry(ForwardTableId="ftb-nope"), "InvalidForwardTableId.NotFound", 404),
        (entry(ExternalIp="198.51.100"), "InvalidExternalIp.Malformed", 400),
        (entry(InternalIp="10.0.2.300"), "InvalidInternalIp.Malformed", 400),
        (entry(ExternalPort="70000"), "InvalidExternalPort.Malformed", 400),
        (entry(InternalPort="ssh"), "InvalidInternalPort.Malformed", 400),
        (entry(IpProtocol="ICMP"), "InvalidProtocal.ValueNotSupported", 400),
        (entry(ExternalPort="Any", InternalPort="Any"), "InvalidProtocal.ValueNotSupported", 400),
        (entry(ExternalIp="203.0.113.9"), "InvalidExternalIp.NotFound", 404),
        (entry(ExternalIp=idle), "InvalidIp.NotInNatgw", 400),
        (entry(InternalIp="192.168.1.1"), "Forbidden.DestnationIpOutOfVpcCIDR", 400),
        (entry(InternalIp="10.0.2.12"), "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP", 400),
        # fwd-web already forwards 198.51.100.51:8080/TCP, and to 10.0.1.11:80/TCP.
        (entry(ExternalIp="198.51.100.51", ExternalPort="8080"), "OperationUnsupported.ForwardEntry", 400),
        (entry(InternalIp="10.0.1.11", InternalPort="80"), "OperationUnsupported.ForwardEntry", 400),
        # 198.51.100.50 is the lab file's SNAT IP: no whole-IP mapping on it.
        (entry(ExternalIp="198.51.100.50", ExternalPort="Any", InternalPort="Any", IpProtocol="Any"),
         "Forbidden.ExternalIp.UsedInSnatTable", 400),
        (entry(IpProtocol=None), "MissingIpProtocol", 400),
    ]
    for params, code, status in cases:
        with expect_error(code, status):
            vpc.call("CreateForwardEntry", **params)
    with expect_error("InvalidForwardEntryId.NotFound", 404):
        vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId="fwd-nope", ExternalPort="80")
    # Modify re-checks the whole entry: fwd-dns onto fwd-web's external end.
    with expect_error("OperationUnsupported.ForwardEntry"):
        vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId="fwd-dns", ExternalPort="8080",
                 IpProtocol="TCP")
    assert forward_entries(vpc) == before, "a refused call changed the DNAT table"


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_an_eip_used_by_an_api_made_entry_is_not_unassociated(nlab, sdk):
    vpc = nlab.vpc(sdk)
    xs, x = gateway_eip(vpc)
    ys, y = gateway_eip(vpc)
    sid = vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24")["SnatEntryId"]
    fid = vpc.call("CreateForwardEntry", ForwardTableId=FTB, ExternalIp=y, ExternalPort="Any",
                   InternalIp="10.0.2.11", InternalPort="Any", IpProtocol="Any")["ForwardEntryId"]
    with expect_error("InvalidIpStatus.HasBeenUsedBySnatTable"):
        unassociate(vpc, xs, "ngw-a", "Nat", wait=False)
    with expect_error("InvalidIpStatus.HasBeenUsedByForwardEntry"):
        unassociate(vpc, ys, "ngw-a", "Nat", wait=False)
    # The whole-IP mapping keeps y out of SNAT too.
    with expect_error("Forbidden.IpUsedInForwardTable"):
        vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId=sid, SnatIp=f"{x},{y}")
    vpc.call("DeleteSnatEntry", SnatTableId=STB, SnatEntryId=sid)
    vpc.call("DeleteForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid)
    unassociate(vpc, xs, "ngw-a", "Nat")
    unassociate(vpc, ys, "ngw-a", "Nat")


def test_entries_made_through_the_api_survive_a_restart(nlab):
    vpc = nlab.vpc("new")
    _, x = gateway_eip(vpc)
    sid = vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24",
                   SnatEntryName="kept")["SnatEntryId"]
    fid = vpc.call("CreateForwardEntry", ForwardTableId=FTB, ExternalIp=x, ExternalPort="2222",
                   InternalIp="10.0.2.11", InternalPort="22", IpProtocol="TCP")["ForwardEntryId"]
    vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid, InternalPort="2200")
    vpc.call("DeleteSnatEntry", SnatTableId=STB, SnatEntryId="snat-vsw-b")
    snat_before, fwd_before = snat_entries(vpc), forward_entries(vpc)
    assert sid in snat_before and "snat-vsw-b" not in snat_before
    nlab.kill9()
    nlab.start()
    for sdk in ("new", "old"):
        v = nlab.vpc(sdk)
        assert snat_entries(v) == snat_before
        assert forward_entries(v) == fwd_before
        assert forward_entries(v, ForwardEntryId=fid)[fid]["InternalPort"] == "2200"
    vpc = nlab.vpc("new")
    # The table still follows its rules after the restart, and new ids do not repeat old ones.
    with expect_error("Forbidden.SourceVSwitchId.Duplicated"):
        vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24")
    sid2 = vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.4.0/24")["SnatEntryId"]
    assert SNAT_ID_RE.match(sid2) and sid2 != sid
    vpc.call("DeleteForwardEntry", ForwardTableId=FTB, ForwardEntryId=fid)
    assert fid not in forward_entries(vpc)


@pytest.mark.parametrize("sdk", ["new", "old"])
def test_dry_run_checks_everything_and_changes_nothing(nlab, sdk):
    vpc = nlab.vpc(sdk)
    _, x = gateway_eip(vpc)
    snat_before, fwd_before = snat_entries(vpc), forward_entries(vpc)
    with expect_error("DryRunOperation"):
        vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24", DryRun=True)
    with expect_error("Forbidden.SourceVSwitchId.Duplicated"):
        vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceVSwitchId="vsw-a", DryRun=True)
    with expect_error("DryRunOperation"):
        vpc.call("ModifySnatEntry", SnatTableId=STB, SnatEntryId="snat-vsw-a", SnatIp=x, DryRun=True)
    with expect_error("DryRunOperation"):
        vpc.call("CreateForwardEntry", ForwardTableId=FTB, ExternalIp=x, ExternalPort="2222",
                 InternalIp="10.0.2.11", InternalPort="22", IpProtocol="TCP", DryRun=True)
    with expect_error("DryRunOperation"):
        vpc.call("ModifyForwardEntry", ForwardTableId=FTB, ForwardEntryId="fwd-web", InternalPort="81", DryRun=True)
    assert snat_entries(vpc) == snat_before and forward_entries(vpc) == fwd_before
    # Without DryRun the same call goes through.
    vpc.call("CreateSnatEntry", SnatTableId=STB, SnatIp=x, SourceCIDR="10.0.3.0/24")
    assert len(snat_entries(vpc)) == len(snat_before) + 1
