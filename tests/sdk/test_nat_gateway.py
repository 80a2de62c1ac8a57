"""The NAT gateway's read actions (DescribeNatGateways, DescribeSnatTableEntries,
DescribeForwardTableEntries) through both SDKs, on examples/nat-gateway.toml: what the lab file
declares is what the API answers, with the SDKs' own field names. (The dataplane of SNAT/DNAT
and the actions that change entries are not built yet.)"""

import pytest

from conftest import REPO

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
