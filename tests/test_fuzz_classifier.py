"""Fuzzing the classifier (core.classifier) with what a hostile or broken agent can send, in every
protocol: random bytes, the wrong protocol's body, huge numbers, invalid UTF-8, deep nesting,
compression bombs. Every request is classified, or comes back ``unknown`` with a reason that
renders as an AWS error in the request's protocol, in bounded time; no exception escapes the
classifier, not even into its own safety net. FUZZ_EXAMPLES raises the number of examples."""

from __future__ import annotations

import gzip
import json
import os
import time

import botocore.parsers
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core import classifier
from addons.core.awserrors import Refusal, guess_protocol, render
from tests.support.bounds import HANG


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SCOPE = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=0"

# One service per protocol: (host, signing name, headers, method, path, a well-formed body)
PROTOCOLS = {
    "json": ("dynamodb.us-east-1.amazonaws.com", "dynamodb",
             {"x-amz-target": "DynamoDB_20120810.GetItem", "content-type": "application/x-amz-json-1.0"},
             "POST", "/", b'{"TableName": "t", "Key": {"k": {"S": "v"}}, "ConsistentRead": true}'),
    "rest-json": ("lambda.us-east-1.amazonaws.com", "lambda", {"content-type": "application/json"},
                  "PUT", "/2015-03-31/functions/f/configuration", b'{"MemorySize": 128, "Timeout": 3}'),
    "rest-xml": ("b.s3.amazonaws.com", "s3", {"content-type": "application/xml"}, "PUT", "/?tagging",
                 b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"),
    "query": ("sqs.us-east-1.amazonaws.com", "sqs", {"content-type": "application/x-www-form-urlencoded"},
              "POST", "/", b"Action=ReceiveMessage&Version=2012-11-05&QueueUrl=q&MaxNumberOfMessages=5"),
    "ec2": ("ec2.us-east-1.amazonaws.com", "ec2", {"content-type": "application/x-www-form-urlencoded"},
            "POST", "/", b"Action=DescribeInstances&Version=2016-11-15&MaxResults=5&Filter.1.Name=a&Filter.1.Value.1=b"),
    "smithy-rpc-v2-cbor": ("monitoring.us-east-1.amazonaws.com", "monitoring",
                           {"smithy-protocol": "rpc-v2-cbor", "content-type": "application/cbor"}, "POST",
                           "/service/GraniteServiceVersion20100801/operation/ListMetrics", b"\xa0"),
}
BODIES = [spec[5] for spec in PROTOCOLS.values()]


def huge_numbers() -> st.SearchStrategy[bytes]:
    digits = st.integers(300, 6000).map(lambda n: "9" * n)
    return st.one_of(
        digits.map(lambda d: ('{"Limit": ' + d + "}").encode()),
        digits.map(lambda d: ('{"Limit": 1e' + d[:4] + "}").encode()),
        digits.map(lambda d: f"Action=DescribeInstances&Version=2016-11-15&MaxResults={d}".encode()),
        digits.map(lambda d: f"Action=ReceiveMessage&Version=2012-11-05&QueueUrl=q&WaitTimeSeconds=-{d}".encode()),
        st.just(b'{"Limit": NaN, "ExclusiveStartKey": {"k": {"N": "Infinity"}}}'),
        st.just(b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff"),  # a CBOR integer of 2**64 - 1
    )


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


bodies = st.one_of(
    st.none(),
    st.binary(max_size=400),
    st.sampled_from(BODIES),  # each protocol's body sent to every other protocol
    st.sampled_from(BODIES).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # cut short
    st.sampled_from(BODIES).flatmap(lambda b: st.binary(min_size=1, max_size=8).map(lambda x: b + x)),
    huge_numbers(),
    st.integers(500, 100_000).map(nested),
    st.integers(500, 50_000).map(lambda n: nested(n, '{"a":', "}")),
    st.integers(500, 50_000).map(lambda n: nested(n, "<a>", "</a>")),
    st.integers(10, 5000).map(lambda n: b"Action=DescribeInstances&Version=2016-11-15&" + b"Filter." * n + b"1=x"),
    st.just(gzip.compress(b"\0" * (64 << 20))),  # 64 MiB of zeros in 64 KiB
    st.just(b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><Tagging>&b;</Tagging>'),
    st.just(b"\xa1\x61a" * 1 + b"\x9f" * 3000),  # CBOR: indefinite arrays nested deep
)
text = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")))


@st.composite
def requests(draw) -> dict:
    protocol = draw(st.sampled_from(sorted(PROTOCOLS)))
    host, signing, headers, method, path, _ = PROTOCOLS[protocol]
    headers = dict(headers)
    if draw(st.booleans()):
        headers["authorization"] = SCOPE.format(draw(st.sampled_from([signing, "s3", "sts"]) | text))
    if draw(st.booleans()):
        headers["content-encoding"] = draw(st.sampled_from(["gzip", "deflate", "gzip, gzip", "br", "x-gzip"]) | text)
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["x-amz-target", "content-type", "smithy-protocol", "x-amz-meta-a",
                                      "x-amz-tagging", "range", "if-modified-since"]))] = draw(text)
    return {
        "method": draw(st.sampled_from([method, "GET", "DELETE", "PATCH"]) | text),
        "host": draw(st.sampled_from([host, host.upper() + ".", "example.com", "[::1]:443", ""]) | text),
        "path": draw(st.sampled_from([path, "/", "/2015-03-31/functions/\udcff/invocations", "/%zz"]) | text),
        "query": draw(st.sampled_from(["", "tagging", "list-type=2&max-keys=" + "9" * 5000, "x-id=GetObject"]) | text),
        "headers": headers,
        "body": draw(bodies),
    }


def check(request: dict) -> classifier.Classification:
    """Classify (within the examples' deadline) and check the result; returns it."""
    # the classifier itself, not the safety net of classify(): no exception may reach the net
    result = classifier.default_classifier().classify(**request)
    assert isinstance(result, classifier.Classification)
    if result.action == classifier.UNKNOWN:
        assert result.error and result.error.strip(), "an unknown call says why"
    else:
        assert result.service and result.operation and ":" in result.action
    if result.error:
        assert len(result.error) < 8000
        # the reason reaches the agent inside an AWS error in the request's protocol
        protocol = result.protocol or guess_protocol(request["headers"], request["path"])
        refusal = Refusal(403, "AccessDenied", f"agentgate denied {result.action}: {result.error}", "policy")
        status, headers, body = render(refusal, protocol)
        parsed = botocore.parsers.create_parser(protocol).parse(
            {"status_code": status, "headers": headers, "body": body}, None)
        assert parsed["Error"]["Code"] == "AccessDenied" and parsed["Error"]["Message"].startswith("agentgate denied")
    return result


@pytest.fixture(scope="module", autouse=True)
def warm():
    classifier.prepare(p[1] for p in PROTOCOLS.values() if p[1] != "monitoring")
    classifier.prepare(["cloudwatch"])


@given(requests())
@fuzz(300)
@example({"method": "GET", "host": "cloudfront.amazonaws.com", "path": "/\udcff\udcfe/x", "query": "", "body": None,
          "headers": {"authorization": SCOPE.format("cloudfront")}})  # the reason held undecodable bytes
@example({"method": "POST", "host": "dynamodb.us-east-1.amazonaws.com", "path": "/", "query": "",
          "headers": dict(PROTOCOLS["json"][2]), "body": nested(100_000)})
@example({"method": "POST", "host": "ec2.us-east-1.amazonaws.com", "path": "/", "query": "",
          "headers": dict(PROTOCOLS["ec2"][2]), "body": b"Action=DescribeInstances&Version=2016-11-15&MaxResults="
          + b"9" * 5000})
def test_any_request_is_classified_or_unknown_with_a_reason(request):
    check(request)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@given(body=bodies)
@fuzz(60)
def test_any_body_in_any_protocol(protocol, body):
    host, signing, headers, method, path, _ = PROTOCOLS[protocol]
    result = check({"method": method, "host": host, "path": path, "query": "", "body": body,
                    "headers": {**headers, "authorization": SCOPE.format(signing)}})
    assert result.service is not None, "the host and the scope name the service whatever the body"


def test_the_well_formed_bodies_classify():
    """The fuzzed requests start from real ones: each classifies cleanly as sent."""
    for protocol, (host, signing, headers, method, path, body) in PROTOCOLS.items():
        result = check({"method": method, "host": host, "path": path, "query": "", "body": body,
                        "headers": {**headers, "authorization": SCOPE.format(signing)}})
        assert result.error is None and result.protocol == protocol, (protocol, result)


def test_a_compression_bomb_is_refused_quickly():
    host, signing, headers, method, path, _ = PROTOCOLS["json"]
    bomb = gzip.compress(b" " * (256 << 20))
    started = time.perf_counter()
    result = check({"method": method, "host": host, "path": path, "query": "", "body": bomb,
                    "headers": {**headers, "authorization": SCOPE.format(signing), "content-encoding": "gzip"}})
    assert time.perf_counter() - started < HANG
    assert "too large" in result.error


def test_json_nested_100k_levels_is_a_clear_error():
    host, signing, headers, method, path, _ = PROTOCOLS["json"]
    result = check({"method": method, "host": host, "path": path, "query": "", "body": nested(100_000),
                    "headers": {**headers, "authorization": SCOPE.format(signing)}})
    assert result.operation == "GetItem" and "could not read the json request body" in result.error


def test_params_keep_their_meaning_as_json():
    """What the classifier reads is stored and matched as JSON: no NaN, no bytes, no undecodable text."""
    host, signing, headers, method, path, _ = PROTOCOLS["json"]
    result = check({"method": method, "host": host, "path": path, "query": "", "headers": {
        **headers, "authorization": SCOPE.format(signing)},
        "body": b'{"TableName": "t", "Key": {"k": {"N": "1"}}, "Limit": 1e999}'})
    json.dumps(result.params)
