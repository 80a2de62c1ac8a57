"""Signatures of both SDKs: wrong secret, unknown key, replayed nonce, stale timestamp, and a
request captured from the SDK and sent again byte for byte."""

import datetime
import json
import urllib.error
import urllib.request

import pytest

from conftest import AK_ID, ApiError, expect_error


def stale(minutes: int) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def fix_nonce(monkeypatch, sdk: str, nonce: str):
    if sdk == "new":
        from alibabacloud_tea_openapi.utils import Utils

        monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: nonce))
    else:
        from aliyunsdkcore.utils import parameter_helper

        monkeypatch.setattr(parameter_helper, "get_uuid", lambda: nonce)


def fix_time(monkeypatch, sdk: str, value: str):
    if sdk == "new":
        from alibabacloud_tea_openapi.utils import Utils

        monkeypatch.setattr(Utils, "get_timestamp", staticmethod(lambda: value))
    else:
        from aliyunsdkcore.utils import parameter_helper

        monkeypatch.setattr(parameter_helper, "get_iso_8061_date", lambda: value)


def test_valid_signature(lab, sdk):
    r = lab.vpc(sdk).call("DescribeEipAddresses")
    assert r["TotalCount"] == 2


def test_wrong_secret(lab, sdk):
    vpc = lab.vpc(sdk, secret="not-the-secret")
    with pytest.raises(ApiError) as ei:
        vpc.call("DescribeEipAddresses")
    e = ei.value
    assert e.status == 400
    if sdk == "new":
        assert e.code == "SignatureDoesNotMatch"
    else:
        # aliyunsdkcore compares the server's string to sign (after the first ':' of the message)
        # with its own: equal strings mean only the secret differs, and it reports that.
        assert e.code == "InvalidAccessKeySecret", e


def test_unknown_access_key(lab, sdk):
    vpc = lab.vpc(sdk, access_key_id="LTAInosuchkey")
    with expect_error("InvalidAccessKeyId.NotFound", 404):
        vpc.call("DescribeEipAddresses")


def test_replayed_nonce(lab, sdk, monkeypatch):
    vpc = lab.vpc(sdk)
    fix_nonce(monkeypatch, sdk, f"fixed-nonce-{sdk}-0123456789abcdef")
    vpc.call("DescribeEipAddresses")
    with expect_error("SignatureNonceUsed", 400):
        vpc.call("DescribeEipAddresses")
    monkeypatch.undo()
    vpc.call("DescribeEipAddresses")  # a fresh nonce works again


def test_replayed_nonce_is_refused_for_a_mutating_call(lab, sdk, monkeypatch):
    vpc = lab.vpc(sdk)
    fix_nonce(monkeypatch, sdk, f"alloc-nonce-{sdk}-42")
    vpc.call("AllocateEipAddress")
    with expect_error("SignatureNonceUsed", 400):
        vpc.call("AllocateEipAddress")
    monkeypatch.undo()
    # exactly one EIP was allocated (plus the lab file's two)
    assert vpc.call("DescribeEipAddresses")["TotalCount"] == 3


@pytest.mark.parametrize("minutes", [-20, 20])
def test_stale_timestamp(lab, sdk, monkeypatch, minutes):
    vpc = lab.vpc(sdk)
    fix_time(monkeypatch, sdk, stale(minutes))
    with expect_error("InvalidTimeStamp.Expired", 400):
        vpc.call("DescribeEipAddresses")


def test_timestamp_within_15_minutes_is_fine(lab, sdk, monkeypatch):
    vpc = lab.vpc(sdk)
    fix_time(monkeypatch, sdk, stale(-10))
    assert vpc.call("DescribeEipAddresses")["TotalCount"] == 2


def test_signature_uses_real_clock_not_lab_clock(lab, sdk):
    lab.advance_clock(8 * 86400)
    assert lab.vpc(sdk).call("DescribeEipAddresses")["TotalCount"] == 2


def _capture_old_sdk_url(lab, monkeypatch):
    """Sign a DescribeEipAddresses with aliyunsdkcore and return the URL it sends."""
    from aliyunsdkcore.http import http_response

    captured = {}
    orig = http_response.HttpResponse.get_response_object

    def spy(self):
        captured["path"] = self.get_url()
        captured["method"] = self.get_method()
        captured["headers"] = dict(self.get_headers())
        return orig(self)

    monkeypatch.setattr(http_response.HttpResponse, "get_response_object", spy)
    lab.vpc("old").call("DescribeEipAddresses")
    monkeypatch.undo()
    return captured


def test_raw_replay_of_a_captured_request(lab, monkeypatch):
    cap = _capture_old_sdk_url(lab, monkeypatch)
    url = f"http://{lab.endpoint}{cap['path']}"
    assert "Signature=" in url and f"AccessKeyId={AK_ID}" in url
    req = urllib.request.Request(url, method=cap["method"], data=b"" if cap["method"] == "POST" else None)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 400
    body = json.loads(ei.value.read())
    assert body["Code"] == "SignatureNonceUsed"
    for k in ("RequestId", "HostId", "Code", "Message", "Recommend"):
        assert k in body, f"error JSON lacks {k}: {body}"


def test_unsigned_request(lab):
    req = urllib.request.Request(f"http://{lab.endpoint}/?Action=DescribeEipAddresses&Version=2016-04-28&Format=JSON",
                                 method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 400
    body = json.loads(ei.value.read())
    assert body["Code"] in ("IncompleteSignature", "MissingSignature", "SignatureDoesNotMatch"), body


def test_lab_endpoints_need_no_signature(lab):
    assert isinstance(lab.status(), (dict, list))
    assert isinstance(lab.dataplane(), (dict, list))
