"""A REST path whose label holds an encoded slash, through a real gateway to the canned upstream
(tests/support/upstream.py), which keeps every request it gets.

agentgate routes a REST call as AWS and moto do, at the path's raw slashes: Lambda's
``GET /2015-03-31/functions/x%2Fpolicy`` is GetFunction of a function named ``x/policy`` (what
boto3 sends for ``get_function(FunctionName="x/policy")``). A server that decodes the path before
it routes (a stand-in for AWS behind ``upstream``, a proxy on the way) reads
``/2015-03-31/functions/x/policy``: GetPolicy of ``x``. Such a call was decided, and forwarded, as
GetFunction. It is refused before policy (403 AccessDenied, recorded, never forwarded), whatever a
rule says, one allowing ``unknown`` included; an S3 key holding ``%2F`` (a greedy label) and a
``%2F`` whose decoded path names no other operation go through as they are."""

from __future__ import annotations

import time

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import EVEN_UNKNOWN, Gateway
from tests.support.raw import exchange

AWS_KEY = ("AKIAENCODEDSLASHTEST", "not-used-by-the-canned-upstream")


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, upstream):
    g = Gateway(tmp_path_factory.mktemp("encoded-slash"), issuer=issuer.issuer, upstream=upstream.url,
                aws_key=AWS_KEY, policy=EVEN_UNKNOWN)  # the refusal is not policy's to make
    with g:
        yield g
    print(g.log()[-3000:])


def forwarded(upstream, since: int) -> list:
    """What upstream got since ``since``, but the gateway's own STS calls (signed with its key)."""
    return [r for r in upstream.requests[since:]
            if f"Credential={AWS_KEY[0]}/" not in dict((k.lower(), v) for k, v in r[2]).get("authorization", "")]


def records_of(gw, sub: str) -> list[dict]:
    time.sleep(0.3)
    return [r for r in gw.records() if r["principal"] == sub]


def lambda_client(gw, token: str):
    return boto3.client("lambda", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}))


def send(gw, token: str, host: str, method: str, path: str, service: str) -> bytes:
    """``method path`` sent as it is (no client rewrites it) to ``host`` through the gateway."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nX-Amz-Date: 20260101T000000Z\r\n"
            "X-Amz-Content-SHA256: UNSIGNED-PAYLOAD\r\n"
            f"Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/{service}/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\nContent-Length: 0\r\n\r\n")
    return exchange(gw, token, head.encode(), host, timeout=10)


def test_a_function_name_with_a_slash_is_not_decided_as_one_operation_and_run_as_another(gw, issuer, upstream):
    """boto3's get_function(FunctionName="x/policy") sends GET /2015-03-31/functions/x%2Fpolicy.
    Decided as lambda:GetFunction (allowed) it went upstream, where a server that decodes the
    path first runs GetPolicy of function x. It is refused before policy and never forwarded; the
    record names the operation its raw path reads as, and why."""
    sub = "agent-encoded-slash"
    before = len(upstream.requests)
    with pytest.raises(ClientError) as raised:
        lambda_client(gw, issuer.mint(sub)).get_function(FunctionName="x/policy")
    error = raised.value.response
    assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (403, "AccessDenied"), error
    message = error["Error"]["Message"]
    assert "is GetFunction by its raw path, whose FunctionName holds an encoded slash (%2F)" in message, message
    assert "the path is GetPolicy" in message, message
    time.sleep(0.3)
    assert forwarded(upstream, before) == [], forwarded(upstream, before)
    [record] = records_of(gw, sub)
    assert (record["action"], record["decision"], record["operation"], record["rule"], record["outcome"]) == (
        "unknown", "deny", "GetFunction", "agentgate:classify", "refused"), record
    assert "the path is GetPolicy" in record["reason"], record["reason"]


@pytest.mark.parametrize("host, path, service, other", [
    ("lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/x%2fpolicy", "lambda", "GetPolicy"),  # lower case
    ("s3.us-east-1.amazonaws.com", "/bucket%2Fsecret", "s3", "GetObject"),  # ListObjects of bucket "bucket/secret"
], ids=["lambda-lower-case", "s3-bucket"])
def test_an_encoded_slash_that_moves_a_label_boundary_is_refused(gw, issuer, upstream, host, path, service, other):
    sub = f"agent-moved-{service}"
    before = len(upstream.requests)
    answer = send(gw, issuer.mint(sub), host, "GET", path, service)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:400]
    assert b"AccessDenied" in answer and f"the path is {other}".encode() in answer, answer[:800]
    time.sleep(0.3)
    assert forwarded(upstream, before) == [], forwarded(upstream, before)
    [record] = records_of(gw, sub)
    assert (record["action"], record["decision"], record["outcome"]) == ("unknown", "deny", "refused"), record


@pytest.mark.parametrize("host, path, service, action", [
    # an S3 key is a greedy label ({Key+}): a slash in it, encoded or not, is part of the key
    ("s3.us-east-1.amazonaws.com", "/bucket/reports%2F2026%2Fq1.csv", "s3", "s3:GetObject"),
    ("bucket.s3.us-east-1.amazonaws.com", "/a%2Fb%2F", "s3", "s3:GetObject"),
    # decoded, /2015-03-31/functions/x/y/z names no operation: nothing else could run
    ("lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/x%2Fy%2Fz", "lambda", "lambda:GetFunction"),
    # the call the decoded path names, sent so: GetPolicy of x
    ("lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/x/policy", "lambda", "lambda:GetPolicy"),
], ids=["s3-key", "s3-virtual-host-key", "lambda-no-other-reading", "lambda-get-policy"])
def test_an_encoded_slash_that_names_nothing_else_goes_through_as_sent(gw, issuer, upstream, host, path, service,
                                                                       action):
    sub = f"agent-passes-{abs(hash(path)) % 10**8}"
    before = len(upstream.requests)
    answer = send(gw, issuer.mint(sub), host, "GET", path, service)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:400]
    got = forwarded(upstream, before)
    assert [(m, p) for m, p, _ in got] == [("GET", path)], got
    [record] = records_of(gw, sub)
    assert (record["action"], record["decision"]) == (action, "allow"), record
