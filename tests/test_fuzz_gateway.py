"""Hostile requests found by fuzzing, sent through a real gateway over a CONNECT tunnel as raw
bytes: each gets a clear AWS-shaped error (or a normal answer), exactly one record, and no secret
of the request reaches the record."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import ssl
import time
from xml.etree import ElementTree

import pytest

SECRET = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCfuzzsecret\n-----END PRIVATE KEY-----"
SCOPE_DATE = "20260101"


def _auth(service: str) -> dict[str, str]:
    """A SigV4 Authorization header as an agent sends it (the gateway reads its scope, never checks it)."""
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential=agentgate/{SCOPE_DATE}/us-east-1/{service}/aws4_request, "
                         "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": f"{SCOPE_DATE}T000000Z",
    }


def _request(method: str, host: str, target: bytes, headers: dict[str, str], body: bytes = b"",
             raw_headers: bytes = b"") -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target, host.encode())
    for name, value in headers.items():
        head += f"{name}: {value}\r\n".encode()
    head += raw_headers + b"Content-Length: %d\r\n\r\n" % len(body)
    return head + body


def exchange(gateway, token: str, host: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """CONNECT to ``host`` with the agent's token, TLS with the gateway's CA, one raw request."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=60)
    try:
        cred = base64.b64encode(f"agent:{token}".encode()).decode()
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                     f"Proxy-Authorization: Basic {cred}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the gateway closed the CONNECT"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
        tls = ctx.wrap_socket(sock, server_hostname=host)
        tls.sendall(request)
        response = http.client.HTTPResponse(tls)
        response.begin()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        sock.close()


def aws_error(headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """(code, message) of an AWS-shaped error body in JSON or XML, as an SDK reads it."""
    if body.lstrip().startswith(b"{"):
        data = json.loads(body)
        return data["__type"], data.get("message") or data.get("Message")
    root = ElementTree.fromstring(body)
    code = root.find(".//Code")
    message = root.find(".//Message")
    assert code is not None and message is not None, body
    return code.text, message.text


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + json.dumps(leaf) + "]" * depth


def dynamodb_get_item(body: str | bytes, target: bytes = b"/", **headers: str) -> bytes:
    return _request("POST", "dynamodb.us-east-1.amazonaws.com", target, {
        **_auth("dynamodb"), "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "Content-Type": "application/x-amz-json-1.0", **headers}, body.encode() if isinstance(body, str) else body)


NAMES_AN_ACTION = b'{"TableName": "victim1", "Key": {"k": {"S": "&Action=DeleteTable&"}}}'


# (id, host, request, the error code and words of its message the agent must read; None: allowed)
HOSTILE = [
    # invalid UTF-8 in the path of a request no operation matches: the refusal quotes the path
    ("invalid-utf8-path", "cloudfront.amazonaws.com",
     lambda: _request("GET", "cloudfront.amazonaws.com", b"/\xff\xfe/x", _auth("cloudfront")),
     ("AccessDenied", "/\\xff\\xfe/x matches no operation")),
    # 100k levels of JSON arrays as a DynamoDB request body
    ("deep-json-body", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item("[" * 100_000 + "]" * 100_000), ("AccessDenied", "could not read the json request body")),
    # a secret 80 levels down in a member the shape does not have: the call is unknown, no model
    # says which of its members are secrets, so its body is not kept
    ("deep-secret-in-body", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item('{"TableName": "t", "Key": {"k": {"S": "v"}}, "Extra": ' + nested(80, SECRET) + "}"),
     ("AccessDenied", "Extra: not a member of GetItemInput")),
    # the same 300 levels down: too deep to walk, so the body is not kept at all
    ("deeper-secret-in-body", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item('{"TableName": "t", "Key": {"k": {"S": "v"}}, "Extra": ' + nested(300, SECRET) + "}"),
     ("AccessDenied", "Extra: not a member of GetItemInput")),
    # a body cut short with a secret in a member the model marks sensitive: not kept as text
    ("truncated-secret", "secretsmanager.us-east-1.amazonaws.com",
     lambda: _request("POST", "secretsmanager.us-east-1.amazonaws.com", b"/", {
         **_auth("secretsmanager"), "X-Amz-Target": "secretsmanager.CreateSecret",
         "Content-Type": "application/x-amz-json-1.1"}, b'{"Name": "db", "SecretString": "hunter2-fuzzsecret'),
     ("AccessDenied", "could not read the json request body")),
    # a JSON body sent as a form: the whole document is one form key, which held the secret
    ("json-as-form", "sts.amazonaws.com",
     lambda: _request("POST", "sts.amazonaws.com", b"/", {
         **_auth("sts"), "Content-Type": "application/x-www-form-urlencoded"},
         json.dumps({"Note": SECRET}).encode()), ("AccessDenied", "cannot tell the operation")),
    # an integer of 5000 digits in an EC2 query parameter
    ("huge-number", "ec2.us-east-1.amazonaws.com",
     lambda: _request("POST", "ec2.us-east-1.amazonaws.com", b"/", {
         **_auth("ec2"), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
         b"Action=DescribeInstances&Version=2016-11-15&MaxResults=" + b"9" * 5000),
     ("AccessDenied", "MaxResults: expected integer")),
    # billion laughs in an S3 XML body the gateway reads (no declared payload hash)
    ("billion-laughs", "b.s3.amazonaws.com",
     lambda: _request("PUT", "b.s3.amazonaws.com", b"/?tagging", {**_auth("s3"), "Content-Type": "application/xml"},
         b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
         + b"".join(b'<!ENTITY %s "%s">' % (bytes([98 + i]), b"&%s;" % bytes([97 + i]) * 10) for i in range(8))
         + b']><Tagging><TagSet><Tag><Key>k</Key><Value>&i;</Value></Tag></TagSet></Tagging>'),
     ("AccessDenied", "DTDForbidden")),
    # random bytes as an STS query body
    ("random-bytes-query", "sts.amazonaws.com",
     lambda: _request("POST", "sts.amazonaws.com", b"/", {
         **_auth("sts"), "Content-Type": "application/x-www-form-urlencoded"}, bytes(range(256)) * 4),
     ("AccessDenied", "cannot tell the operation")),
    # one Action in the URL and another in the body: read as the first (a List action a read-only
    # rule allows) while EC2 might run the other, so neither is decided
    ("action-in-url-and-body", "ec2.us-east-1.amazonaws.com",
     lambda: _request("POST", "ec2.us-east-1.amazonaws.com", b"/?Action=DescribeInstances", {
         **_auth("ec2"), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
         b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-0123456789abcdef0"),
     ("AccessDenied", "Action: given more than once")),
    # a query-string Action beside X-Amz-Target: decided as DescribeSecret (read-only allows it) while
    # a service that reads the Action first (moto does) would run GetSecretValue, past the masking
    ("action-beside-target", "secretsmanager.us-east-1.amazonaws.com",
     lambda: _request("POST", "secretsmanager.us-east-1.amazonaws.com", b"/?Action=GetSecretValue", {
         **_auth("secretsmanager"), "X-Amz-Target": "secretsmanager.DescribeSecret",
         "Content-Type": "application/x-amz-json-1.1"}, b'{"SecretId": "prod/db"}'),
     ("AccessDenied", "Action: a query-string parameter on a json call")),
    # a JSON body whose text, read as a form, names an Action: moto reads it so and ran DeleteTable
    # under a GetItem that a data-plane rule allowed
    ("action-inside-json", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item(NAMES_AN_ACTION), ("AccessDenied", "body: read as a form, the body names an Action")),
    # the same behind a query of the agent's own signature parameters (dropped on re-signing, so
    # upstream sees no query and reads the body as a form), percent-encoded, and gzipped
    ("action-inside-json-after-a-signature-query", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item(NAMES_AN_ACTION, b"/?AWSAccessKeyId=zz"),
     ("AccessDenied", "body: read as a form, the body names an Action")),
    ("action-percent-encoded-inside-json", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item(NAMES_AN_ACTION.replace(b"&Action=", b"&%41ction=")),
     ("AccessDenied", "body: read as a form, the body names an Action")),
    ("action-inside-gzipped-json", "dynamodb.us-east-1.amazonaws.com",
     lambda: dynamodb_get_item(gzip.compress(NAMES_AN_ACTION), **{"Content-Encoding": "gzip"}),
     ("AccessDenied", "body: read as a form, the body names an Action")),
    # an XML body (rest-xml) with an Action in a comment: moto's Route 53 ran ListHostedZones
    # for an UpdateHostedZoneComment
    ("action-inside-xml", "route53.amazonaws.com",
     lambda: _request("POST", "route53.amazonaws.com", b"/2013-04-01/hostedzone/Z1", {
         **_auth("route53"), "Content-Type": "application/xml"},
         b'<?xml version="1.0"?><!-- &Action=DeleteHostedZone& --><UpdateHostedZoneCommentRequest '
         b'xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Comment>hi</Comment>'
         b'</UpdateHostedZoneCommentRequest>'),
     ("AccessDenied", "body: read as a form, the body names an Action")),
    # a JSON member named twice: policy and the record would read one value, the service maybe the other
    ("json-member-twice", "dynamodb.us-east-1.amazonaws.com",
     lambda: _request("POST", "dynamodb.us-east-1.amazonaws.com", b"/", {
         **_auth("dynamodb"), "X-Amz-Target": "DynamoDB_20120810.DeleteTable",
         "Content-Type": "application/x-amz-json-1.0"}, b'{"TableName": "prod", "TableName": "scratch"}'),
     ("AccessDenied", "member 'TableName' given more than once")),
    # invalid UTF-8 in a header the agent did not sign, on a call the policy allows: sent on as it came
    ("invalid-utf8-header", "sts.amazonaws.com",
     lambda: _request("POST", "sts.amazonaws.com", b"/", {
         **_auth("sts"), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
         b"Action=GetCallerIdentity&Version=2011-06-15", raw_headers=b"X-Trace: \xff\xfeok\r\n"), None),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_request_gets_a_clear_answer_and_one_record(gateway, issuer, case):
    name, host, build, expected = case
    token = issuer.mint("fuzz-agent")
    before = len(gateway.records())
    status, headers, body = exchange(gateway, token, host, build())
    records = gateway.records()
    assert len(records) == before + 1, f"{name}: {len(records) - before} records\n{gateway.log()[-3000:]}"
    record = records[-1]
    assert record["principal"] == "fuzz-agent" and record["status"] == status
    if expected is None:  # a call the policy allows: upstream's normal answer
        assert status == 200 and b"GetCallerIdentityResult" in body, body[:500]
        assert record["decision"] == "allow" and record["action"] == "sts:GetCallerIdentity"
    else:
        assert status == 403, body[:500]
        code, message = aws_error(headers, body)
        assert code == expected[0] and message.startswith("agentgate denied unknown"), message
        assert expected[1] in message, message
        assert record["decision"] == "deny" and record["outcome"] == "refused" and record["action"] == "unknown"
        assert headers.get("x-agentgate-refused-by") == "policy"
    stored = json.dumps(record, default=str)
    assert "fuzzsecret" not in stored and token not in stored
    if name == "truncated-secret":
        assert record["request_body"] is None and "not kept" in record["body_note"]
    if name == "deeper-secret-in-body":
        assert record["request_body"] is None and "nested deeper than 128 levels" in record["body_note"]
    if name == "deep-secret-in-body":
        assert record["request_body"] is None and "could not be classified" in record["body_note"]
        assert record["request_body_size"] > 0 and record["request_body_sha256"]



def test_malformed_signed_chunks_end_the_call_at_once_with_a_record(gateway, issuer):
    """A streamed aws-chunked body the gateway cannot re-sign: nothing more goes upstream, the
    agent's call ends at once (502, not a hang) and the record says why."""
    token = issuer.mint("fuzz-agent")
    before = len(gateway.records())
    request = _request("PUT", "b.s3.amazonaws.com", b"/chunked-object", {
        **_auth("s3"), "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "5"},
        b"zz;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n")
    started = time.monotonic()
    status, _, _ = exchange(gateway, token, "b.s3.amazonaws.com", request)
    assert status == 502 and time.monotonic() - started < 10
    records = gateway.records()
    assert len(records) == before + 1
    record = records[-1]
    assert record["action"] == "s3:PutObject" and record["outcome"] == "failed"
    assert "cannot re-sign this request body" in record["error"] and "hex size" in record["error"]
