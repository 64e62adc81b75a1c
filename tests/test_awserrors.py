"""Refusals rendered in each protocol parse, with botocore's own parsers, into the code and
message the gateway meant."""

from __future__ import annotations

import botocore.parsers
import pytest

from addons.core.awserrors import Refusal, guess_protocol, render
from addons.core.classifier import decode_cbor


@pytest.mark.parametrize("protocol", ["json", "rest-json", "rest-xml", "query", "ec2", "smithy-rpc-v2-cbor"])
def test_botocore_parses_the_refusal(protocol):
    refusal = Refusal(403, "AccessDenied", "agentgate denied s3:DeleteBucket by rule 'no-deletes': <ask> & wait", "policy")
    status, headers, body = render(refusal, protocol, request_id="rid-1")
    parser = botocore.parsers.create_parser(protocol)
    parsed = parser.parse({"status_code": status, "headers": headers, "body": body}, None)
    assert parsed["Error"]["Code"] == "AccessDenied"
    assert parsed["Error"]["Message"] == refusal.message
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("asked, answered", [
    ("application/x-amz-json-1.0", "application/x-amz-json-1.0"),  # DynamoDB's
    ("application/x-amz-json-1.0; charset=utf-8", "application/x-amz-json-1.0"),
    ("application/x-amz-json-1.1", "application/x-amz-json-1.1"),  # most json services'
    (None, "application/x-amz-json-1.1"),
    ("text/html", "application/x-amz-json-1.1"),  # what the request says is taken only if it is AWS JSON
])
def test_a_json_refusal_speaks_the_requests_json_version(asked, answered):
    _, headers, _ = render(Refusal(403, "AccessDenied", "no", "policy"), "json", request_content_type=asked)
    assert headers["content-type"] == answered


def test_long_messages_in_cbor():
    refusal = Refusal(403, "AccessDenied", "x" * 70000, "policy")
    status, headers, body = render(refusal, "smithy-rpc-v2-cbor")
    parsed = botocore.parsers.create_parser("smithy-rpc-v2-cbor").parse(
        {"status_code": status, "headers": headers, "body": body}, None)
    assert parsed["Error"]["Message"] == "x" * 70000


@pytest.mark.parametrize("headers,expected", [
    ({"x-amz-target": "DynamoDB_20120810.GetItem"}, "json"),
    ({"content-type": "application/x-www-form-urlencoded"}, "query"),
    ({"content-type": "application/json"}, "rest-json"),
    ({"smithy-protocol": "rpc-v2-cbor"}, "smithy-rpc-v2-cbor"),
    ({}, "rest-xml"),
])
def test_protocol_guessed_from_the_request_shape(headers, expected):
    assert guess_protocol(headers) == expected


@pytest.mark.parametrize("asked", ["application/x-amz-cbor-1.1", "Application/X-Amz-Cbor-1.1; charset=utf-8"])
def test_a_json_call_sent_as_cbor_is_refused_in_cbor(asked):
    """The SDKs for Java send Kinesis as CBOR and parse its errors as CBOR: a map with ``__type``
    and ``message``, in the content type they sent (a JSON answer, they cannot read)."""
    refusal = Refusal(403, "AccessDenied", "agentgate denied kinesis:PutRecord by rule 'r': <ask> & wait é", "policy")
    status, headers, body = render(refusal, "json", request_id="rid-1", request_content_type=asked)
    assert status == 403
    assert headers["content-type"] == "application/x-amz-cbor-1.1"
    assert headers["x-amzn-ErrorType"] == "AccessDenied" and headers["x-amzn-RequestId"] == "rid-1"
    assert decode_cbor(body) == {"__type": "AccessDenied", "message": refusal.message}
    parsed = botocore.parsers.create_parser("smithy-rpc-v2-cbor").parse(
        {"status_code": status, "headers": headers, "body": body}, None)
    assert (parsed["Error"]["Code"], parsed["Error"]["Message"]) == ("AccessDenied", refusal.message)
    # other protocols keep their own shapes whatever the request's content type says
    _, headers, body = render(refusal, "rest-json", request_content_type=asked)
    assert headers["content-type"] == "application/json" and body.startswith(b"{")


def test_the_gateways_other_errors_follow_a_cbor_call_too():
    """A call that fails on its way (upstream unreachable, a body too large) is answered in CBOR
    as well."""
    from addons import failures

    headers, body = failures.error_response(502, "json", "agentgate could not reach upstream",
                                            "application/x-amz-cbor-1.1")
    assert headers["content-type"] == "application/x-amz-cbor-1.1"
    assert decode_cbor(body) == {"__type": "BadGateway", "message": "agentgate could not reach upstream"}
    headers, body = failures.error_response(502, "json", "agentgate could not reach upstream",
                                            "application/x-amz-json-1.1")
    assert headers["content-type"] == "application/x-amz-json-1.1" and body.startswith(b"{")
