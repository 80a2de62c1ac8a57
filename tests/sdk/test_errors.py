"""The rules of SPEC §3, one error code each, with the HTTP status, through both VPC SDKs."""

import time

import pytest

from conftest import ApiError, allocate, associate, describe_all, describe_one, expect_error, wait_status


def assoc(vpc, allocation_id, instance_id, instance_type=None, mode=None, private_ip=None):
    return vpc.call("AssociateEipAddress", AllocationId=allocation_id, InstanceId=instance_id,
                    InstanceType=instance_type, Mode=mode, PrivateIpAddress=private_ip)


def test_unknown_allocation_id(vpc):
    with expect_error("InvalidAllocationId.NotFound", 404):
        assoc(vpc, "eip-nosuch000", "i-app", "EcsInstance")
    with expect_error("InvalidAllocationId.NotFound", 404):
        vpc.call("UnassociateEipAddress", AllocationId="eip-nosuch000", InstanceId="i-app")


def test_unknown_instance_and_eni(vpc):
    r = allocate(vpc)
    with expect_error("InvalidInstanceId.NotFound", 400):
        assoc(vpc, r["AllocationId"], "i-nosuch", "EcsInstance")
    with expect_error("InvalidInstanceId.NotFound", 400):
        assoc(vpc, r["AllocationId"], "eni-nosuch", "NetworkInterface")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Available"


def test_eip_bound_to_one_resource_at_a_time(vpc):
    with expect_error("IncorrectEipStatus"):
        assoc(vpc, "eip-web1", "i-app", "EcsInstance")
    assert describe_one(vpc, "eip-web1")["InstanceId"] == "eni-web1"


def test_ecs_takes_one_eip(vpc):
    a, b = allocate(vpc), allocate(vpc)
    associate(vpc, a["AllocationId"], "i-app", "EcsInstance")
    with expect_error("InvalidAssociation.Duplicated"):
        assoc(vpc, b["AllocationId"], "i-app", "EcsInstance")
    assert describe_one(vpc, b["AllocationId"])["Status"] == "Available"


def test_ecs_eip_and_eni_nat_share_the_primary_ip(vpc):
    """The ECS EIP sits on the primary ENI's primary IP: one EIP per private IP, both ways."""
    a, b, c = allocate(vpc), allocate(vpc), allocate(vpc)
    associate(vpc, a["AllocationId"], "i-web", "EcsInstance")
    with expect_error("InvalidEip.EipQuotaExceeded"):
        assoc(vpc, b["AllocationId"], "eni-web0", "NetworkInterface", "NAT", "10.0.1.10")
    associate(vpc, c["AllocationId"], "eni-app0", "NetworkInterface", "NAT", "10.0.1.40")
    with expect_error("InvalidAssociation.Duplicated"):
        assoc(vpc, b["AllocationId"], "i-app", "EcsInstance")


def test_fixed_public_ip(vpc):
    r = allocate(vpc)
    with expect_error("EIP_CAN_NOT_ASSOCIATE_WITH_PUBLIC_IP"):
        assoc(vpc, r["AllocationId"], "i-pubip", "EcsInstance")


def test_classic_network(vpc):
    r = allocate(vpc)
    with expect_error("OperationDenied"):
        assoc(vpc, r["AllocationId"], "i-classic", "EcsInstance")


def test_instance_not_running_or_stopped(vpc):
    r = allocate(vpc)
    with expect_error("IncorrectInstanceStatus"):
        assoc(vpc, r["AllocationId"], "i-pending", "EcsInstance")


def test_nat_one_eip_per_private_ip(vpc):
    r = allocate(vpc)
    with expect_error("InvalidEip.EipQuotaExceeded"):
        assoc(vpc, r["AllocationId"], "eni-web1", "NetworkInterface", "NAT", "10.0.1.21")  # eip-web1's


def test_binded_rules(vpc):
    r = allocate(vpc)
    with expect_error("Eni.Attached"):
        assoc(vpc, r["AllocationId"], "eni-app21", "NetworkInterface", "BINDED")
    with expect_error("Invalid.DirectEip.BindType"):
        assoc(vpc, r["AllocationId"], "eni-web0", "NetworkInterface", "BINDED")  # a primary ENI
    with expect_error("Eni.HasSubIp"):
        assoc(vpc, r["AllocationId"], "eni-sub", "NetworkInterface", "BINDED")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Available"


def test_binded_takes_one_eip(vpc):
    a, b = allocate(vpc), allocate(vpc)
    associate(vpc, a["AllocationId"], "eni-spare", "NetworkInterface", "BINDED")
    with pytest.raises(ApiError) as ei:
        assoc(vpc, b["AllocationId"], "eni-spare", "NetworkInterface", "BINDED")
    assert ei.value.status == 400
    assert describe_one(vpc, b["AllocationId"])["Status"] == "Available"


def test_multi_binded_needs_detached_eni(vpc):
    r = allocate(vpc)
    with expect_error("Eni.Attached"):
        assoc(vpc, r["AllocationId"], "eni-app21", "NetworkInterface", "MULTI_BINDED")


def test_eni_carries_one_mode(vpc):
    a, b, c = allocate(vpc), allocate(vpc), allocate(vpc)
    associate(vpc, a["AllocationId"], "eni-multi2", "NetworkInterface", "MULTI_BINDED")
    with expect_error("OperationFailed.EipBindModeConflict"):
        assoc(vpc, b["AllocationId"], "eni-multi2", "NetworkInterface", "NAT", "10.0.1.35")
    with expect_error("OperationFailed.EipBindModeConflict"):
        assoc(vpc, c["AllocationId"], "eni-multi2", "NetworkInterface", "BINDED")


def test_cross_region(vpc):
    r = allocate(vpc)
    with expect_error("InvalidParameter.Mismatch"):
        assoc(vpc, r["AllocationId"], "i-bj", "EcsInstance")
    with expect_error("InvalidParameter.Mismatch"):
        assoc(vpc, r["AllocationId"], "eni-bj", "NetworkInterface", "BINDED")


def test_instance_type_not_supported(vpc):
    r = allocate(vpc)
    with expect_error("InvalidInstanceType.ValueNotSupported"):
        assoc(vpc, r["AllocationId"], "i-app", "NoSuchType")


LOAD_BALANCERS = """
[[load_balancer]]
id = "lb-internal"
type = "clb"
address_type = "intranet"
network = "vpc"
vswitch = "vsw-a"

[[load_balancer]]
id = "lb-public"
type = "clb"
address_type = "internet"

[[load_balancer]]
id = "alb-a"
type = "alb"
address_type = "intranet"
network = "vpc"
vswitch = "vsw-a"

[[load_balancer]]
id = "nlb-a"
type = "nlb"
address_type = "intranet"
network = "vpc"
vswitch = "vsw-a"
"""


def test_load_balancers(make_lab, sdk):
    """CLB: only an internal-facing CLB in a VPC; ALB/NLB are not associated this way."""
    lab = make_lab(extra=LOAD_BALANCERS)
    vpc = lab.vpc(sdk)
    r = allocate(vpc)
    for lb in ("alb-a", "nlb-a", "lb-public"):
        with expect_error("InvalidInstanceType.ValueNotSupported"):
            assoc(vpc, r["AllocationId"], lb, "SlbInstance")
    e = associate(vpc, r["AllocationId"], "lb-internal", "SlbInstance")
    assert e["InstanceType"] == "SlbInstance" and e["InstanceId"] == "lb-internal"


def test_task_conflict_while_associating(make_lab, sdk):
    lab = make_lab(transition_ms=4000)
    vpc = lab.vpc(sdk)
    r = allocate(vpc)
    t0 = time.monotonic()
    assoc(vpc, r["AllocationId"], "i-app", "EcsInstance")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Associating"
    with expect_error("TaskConflict"):
        vpc.call("ReleaseEipAddress", AllocationId=r["AllocationId"])
    with expect_error("TaskConflict"):
        vpc.call("UnassociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-app",
                 InstanceType="EcsInstance")
    with expect_error("TaskConflict"):
        vpc.call("ModifyEipAddressAttribute", AllocationId=r["AllocationId"], Bandwidth="9")
    assert time.monotonic() - t0 < 3.5, "the checks above ran too slowly to be inside the transition"


    e = wait_status(vpc, r["AllocationId"], "InUse", timeout=15)
    assert e["Bandwidth"] == "5"
    assoc_ok = vpc.call("UnassociateEipAddress", AllocationId=r["AllocationId"], InstanceId="i-app",
                        InstanceType="EcsInstance")
    assert assoc_ok.get("RequestId")
    assert describe_one(vpc, r["AllocationId"])["Status"] == "Unassociating"
    with expect_error("TaskConflict"):
        assoc(vpc, r["AllocationId"], "i-app2", "EcsInstance")
    wait_status(vpc, r["AllocationId"], "Available", timeout=15)


def test_missing_parameter(vpc):
    with expect_error("MissingAllocationId", 400):
        vpc.call("ReleaseEipAddress")
    r = allocate(vpc)
    with expect_error("MissingInstanceId", 400):
        vpc.call("AssociateEipAddress", AllocationId=r["AllocationId"])


def generic_call_refused(lab, action: str, version: str):
    """Calls `action` at `version` through the new SDK's generic call_api and returns the
    refusal (TeaException)."""
    from alibabacloud_tea_openapi import utils_models
    from darabonba.runtime import RuntimeOptions
    from Tea.exceptions import TeaException

    client = lab.vpc("new").client
    params = utils_models.Params(action=action, version=version, protocol="HTTP",
                                 pathname="/", method="POST", auth_type="AK", style="RPC",
                                 req_body_type="formData", body_type="json")
    req = utils_models.OpenApiRequest(query={"RegionId": "cn-shanghai"})
    with pytest.raises(TeaException) as ei:
        client.call_api(params, req, RuntimeOptions())
    return ei.value


def test_unknown_action(lab):
    """An action the endpoint does not know, called through the new SDK's generic call_api."""
    e = generic_call_refused(lab, "DescribeNoSuchThing", "2016-04-28")
    assert e.code == "InvalidAction.NotFound"
    assert e.status_code == 404


@pytest.mark.parametrize("action,version", [
    ("DescribeEipAddresses", "2014-05-26"),        # a VPC action called with ECS's version
    ("DescribeNetworkInterfaces", "2016-04-28"),   # an ECS action called with VPC's version
])
def test_another_products_version_is_refused(lab, action, version):
    """A call naming an API version the action does not belong to is refused as the cloud's
    gateway refuses it."""
    e = generic_call_refused(lab, action, version)
    assert e.code == "InvalidVersion"
    assert e.status_code == 400
    assert "Specified parameter Version is not valid." in e.message


def test_a_bad_charge_type_allocates_nothing(vpc):
    """Parameters are checked before the model changes: no EIP is allocated (nor released
    into the recovery list) by a refused AllocateEipAddress."""
    before = describe_all(vpc)
    with expect_error("InvalidParameter.InternetChargeType", 400):
        vpc.call("AllocateEipAddress", Bandwidth="5", InternetChargeType="PayByMoon")
    assert describe_all(vpc) == before
