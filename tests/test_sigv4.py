"""SigV4: reading the agent's signature and re-signing with other credentials.

The agent's requests are built and signed by botocore itself with credentials that mean nothing
to AWS, and captured before they leave (no network). The proof that re-signing works is moto
with authentication on: the captured request, re-signed with the ASIA credentials moto issued
through sts:AssumeRole, succeeds; the same request sent as the agent signed it is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import random
import re
import zlib
from base64 import b64encode
from datetime import UTC, datetime
from urllib.parse import urlsplit

import boto3
import botocore.auth
import botocore.awsrequest
import pytest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from addons.core import sigv4

AGENT_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJl"  # transport B: a JWT
AGENT = {
    "aws_access_key_id": "AKIDAGENTFAKE0000000",
    "aws_secret_access_key": "agent-secret-that-means-nothing",
    "aws_session_token": AGENT_TOKEN,
}
OTHER = ReadOnlyCredentials("AKIDGATEWAY000000000", "gateway-secret", "gateway-session-token")
BUCKET = "agentgate-sigv4-tests"

# The S3 documentation's worked examples ("Signature Calculations for the Authorization Header:
# Transferring Payload in Multiple Chunks", and the same with trailing headers).
EXAMPLE_CREDENTIALS = ReadOnlyCredentials(
    "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None
)
EXAMPLE_TIME = datetime(2013, 5, 24, tzinfo=UTC)
EXAMPLE_SIGNATURES = {
    sigv4.STREAMING_SIGNED: {
        "signed_headers": "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class",
        "seed": "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        "chunks": [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ],
        "trailer": None,
    },
    sigv4.STREAMING_SIGNED_TRAILER: {
        "signed_headers": "content-encoding;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
        "seed": "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        "chunks": [
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ],
        "trailer": "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435",
    },
}


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch, tmp_path):
    """botocore sees only what each test gives it."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


# -- capturing what botocore sends ----------------------------------------------------------


@dataclasses.dataclass
class Wire:
    """One HTTP request as it would go on the wire."""

    method: str
    host: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


class _Captured(Exception):
    pass


def agent_client(service: str, region: str = "us-east-1", credentials=None, **config):
    credentials = AGENT if credentials is None else credentials
    return boto3.session.Session(region_name=region, **credentials).client(
        service, config=Config(**config) if config else None
    )


def capture(client, operation: str, **params) -> Wire:
    """The request botocore would send for ``operation``, signed, without sending it."""
    captured = []

    def stop(request, **_):
        captured.append(request)
        raise _Captured

    client.meta.events.register("before-send", stop)
    try:
        with pytest.raises(_Captured):
            getattr(client, operation)(**params)
    finally:
        client.meta.events.unregister("before-send", stop)
    return wire_from(captured[0])


def wire_from(prepared) -> Wire:
    url = urlsplit(prepared.url)
    headers = [("Host", url.netloc)] + [(k, _text(v)) for k, v in prepared.headers.items()]
    body = prepared.body
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, str):
        body = body.encode()
    return Wire(prepared.method, url.netloc, url.path or "/", url.query, headers, body or b"")


def wire_from_url(url: str) -> Wire:
    parts = urlsplit(url)
    return Wire("GET", parts.netloc, parts.path, parts.query, [("Host", parts.netloc)], b"")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def header(headers, name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    return values[0] if values else None


def signed_header_names(headers) -> list[str]:
    return re.search(r"SignedHeaders=([^,]+)", header(headers, "Authorization")).group(1).split(";")


# -- parse_auth on what botocore sends ------------------------------------------------------


def test_parse_header_signed_json():
    wire = capture(agent_client("dynamodb"), "list_tables")
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.kind == "header-v4" and auth.error is None
    assert auth.access_key == AGENT["aws_access_key_id"]
    assert (auth.region, auth.service) == ("us-east-1", "dynamodb")
    assert {"host", "x-amz-date", "x-amz-security-token", "x-amz-target"} <= set(auth.signed_headers)
    assert auth.security_token == AGENT_TOKEN
    assert auth.payload_hash is None
    assert not sigv4.streams(auth, wire.headers)


def test_parse_header_signed_query_protocol_in_another_region():
    wire = capture(agent_client("sts", region="eu-west-3"), "get_caller_identity")
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert (auth.kind, auth.region, auth.service) == ("header-v4", "eu-west-3", "sts")
    assert auth.signed_headers == ("content-type", "host", "x-amz-date", "x-amz-security-token")


def test_parse_s3_put_with_streaming_unsigned_trailer():
    wire = capture(agent_client("s3"), "put_object", Bucket=BUCKET, Key="k", Body=b"x" * 1024)
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.payload_hash == sigv4.STREAMING_UNSIGNED_TRAILER
    assert auth.signed_headers == (
        "content-encoding", "host", "x-amz-content-sha256", "x-amz-date",
        "x-amz-decoded-content-length", "x-amz-sdk-checksum-algorithm", "x-amz-security-token",
        "x-amz-trailer",
    )
    assert sigv4.streams(auth, wire.headers)


def test_parse_presigned_v4_takes_the_region_from_the_credential():
    s3 = agent_client("s3", region="eu-central-1", signature_version="s3v4")
    wire = wire_from_url(s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}))
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.kind == "query-v4" and auth.error is None
    assert (auth.access_key, auth.region, auth.service) == (AGENT["aws_access_key_id"], "eu-central-1", "s3")
    assert auth.signed_headers == ("host",)
    assert auth.security_token == AGENT_TOKEN
    assert sigv4.streams(auth, wire.headers)


def test_parse_presigned_v2():
    s3 = agent_client("s3")
    wire = wire_from_url(s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}))
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.kind == "query-v2" and auth.error is None
    assert auth.access_key == AGENT["aws_access_key_id"]
    assert auth.region is None and auth.service is None
    assert auth.security_token == AGENT_TOKEN
    assert sigv4.region_for(auth, wire.host) == "us-east-1"
    assert sigv4.streams(auth, wire.headers)


def test_parse_header_v2():
    wire = capture(agent_client("s3", signature_version="s3"), "get_object", Bucket=BUCKET, Key="k")
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.kind == "header-v2" and auth.error is None
    assert auth.access_key == AGENT["aws_access_key_id"]
    assert auth.security_token == AGENT_TOKEN


def test_parse_without_session_token_and_unsigned():
    credentials = {k: v for k, v in AGENT.items() if k != "aws_session_token"}
    wire = capture(agent_client("sts", credentials=credentials), "get_caller_identity")
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    assert auth.security_token is None and "x-amz-security-token" not in auth.signed_headers
    none = sigv4.parse_auth("GET", "/", "", [("Host", "sts.amazonaws.com")])
    assert none.kind == "none" and none.error is None and none.access_key is None


@pytest.mark.parametrize(
    "authorization, expected",
    [
        ("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc", "no Credential"),
        ("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, Signature=abc",
         "no SignedHeaders"),
        ("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3, SignedHeaders=host, Signature=a",
         "<region>/<service>/aws4_request"),
        ("AWS4-HMAC-SHA256 Credential=AKID/2025-01-01/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=abc", "YYYYMMDD"),
        ("AWS AKIDONLY", "AWS <access key id>:<signature>"),
        ("Bearer " + AGENT_TOKEN, "'Bearer' Authorization scheme is not an AWS signature"),
        (AGENT_TOKEN, "this Authorization scheme"),
    ],
)
def test_malformed_authorization_is_explained_without_secrets(authorization, expected):
    headers = [("Authorization", authorization), ("X-Amz-Security-Token", AGENT_TOKEN)]
    auth = sigv4.parse_auth("GET", "/", "", headers)
    assert auth.error and expected in auth.error
    assert AGENT_TOKEN not in auth.error and "AKID" not in auth.error


def test_two_signatures_are_an_error():
    s3 = agent_client("s3", signature_version="s3v4")
    wire = wire_from_url(s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}))
    headers = wire.headers + [("Authorization", "AWS4-HMAC-SHA256 Credential=...")]
    assert "signed twice" in sigv4.parse_auth("GET", wire.path, wire.query, headers).error


def test_sigv4a_is_recognised():
    headers = [
        ("Authorization", "AWS4-ECDSA-P256-SHA256 Credential=AKID/20250101/s3/aws4_request, "
                          "SignedHeaders=host;x-amz-date;x-amz-region-set, Signature=3045"),
        ("X-Amz-Region-Set", "eu-west-1"),
    ]
    auth = sigv4.parse_auth("GET", "/", "", headers)
    assert (auth.kind, auth.service, auth.region, auth.error) == ("header-v4a", "s3", "eu-west-1", None)


def test_streams_only_with_a_declared_hash_or_presign():
    def auth_with(payload):
        return sigv4.AgentAuth(kind="header-v4", payload_hash=payload)

    assert sigv4.streams(auth_with("UNSIGNED-PAYLOAD"))
    assert sigv4.streams(auth_with(sigv4.STREAMING_SIGNED_TRAILER))
    assert sigv4.streams(auth_with(hashlib.sha256(b"x").hexdigest()))
    assert not sigv4.streams(auth_with(None))
    assert not sigv4.streams(auth_with("not-a-hash"))
    assert not sigv4.streams(auth_with("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"))
    assert sigv4.streams(auth_with(None), [("Content-Length", "0")])
    assert sigv4.streams(sigv4.AgentAuth(kind="query-v2"))


def test_scrub_query():
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20250101%2Fus-east-1%2Fs3"
             "%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
             f"&X-Amz-Security-Token={AGENT_TOKEN}&X-Amz-Signature=abc&versionId=3&prefix=a%2Fb")
    assert sigv4.scrub_query(query) == (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host&versionId=3&prefix=a%2Fb"
    )
    v2 = f"AWSAccessKeyId=AKID&Signature=x%2By&x-amz-security-token={AGENT_TOKEN}&Expires=9&uploads"
    assert sigv4.scrub_query(v2) == "Expires=9&uploads"


# -- resign without a server ----------------------------------------------------------------


def _resign(wire: Wire, credentials=OTHER, body="auto", now=None, signing_name=None):
    auth = sigv4.parse_auth(wire.method, wire.path, wire.query, wire.headers)
    if body == "auto":
        body = None if sigv4.streams(auth, wire.headers) else wire.body
    return sigv4.resign(
        wire.method, wire.host, wire.path, wire.query, wire.headers, body,
        credentials=credentials, region=sigv4.region_for(auth, wire.host),
        signing_name=signing_name or auth.service, now=now,
    )


@pytest.mark.parametrize(
    "service, operation, params",
    [
        ("dynamodb", "list_tables", {}),
        ("sts", "get_caller_identity", {}),
        ("lambda", "list_functions", {"MaxItems": 5}),
        ("s3", "put_object", {"Bucket": BUCKET, "Key": "a key/with+odd~chars", "Body": b"x" * 100}),
        ("s3", "list_objects_v2", {"Bucket": BUCKET, "Prefix": "a/b c", "Delimiter": "/"}),
    ],
)
def test_resign_signs_exactly_as_botocore_would(monkeypatch, service, operation, params):
    """The agent's request re-signed with other credentials carries the very signature botocore
    produces when it signs the same call with those credentials at the same time."""
    agent_wire = capture(agent_client(service), operation, **params)
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    other = {"aws_access_key_id": OTHER.access_key, "aws_secret_access_key": OTHER.secret_key,
             "aws_session_token": OTHER.token}
    client = agent_client(service, credentials=other)
    if service != "s3":  # the gateway also sends the payload hash to services other than S3

        def declare_payload_hash(request, **_):
            request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(request.body or b"").hexdigest()

        client.meta.events.register("before-sign", declare_payload_hash)
    expected = capture(client, operation, **params)
    signed = _resign(agent_wire, now=now)
    assert header(signed.headers, "Authorization") == header(expected.headers, "Authorization")
    for name in ("X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
        assert header(signed.headers, name) == header(expected.headers, name)
    assert (signed.path, signed.query) == (agent_wire.path, agent_wire.query)
    assert signed.body_transform is None


def test_resign_replaces_the_agent_credentials_and_signs_no_hop_by_hop_header():
    wire = capture(agent_client("s3"), "put_object", Bucket=BUCKET, Key="k", Body=b"x" * 1024)
    basic = b64encode(b"agent:" + AGENT_TOKEN.encode()).decode()
    wire.headers.append(("Proxy-Authorization", f"Basic {basic}"))
    signed = _resign(wire)
    text = repr(signed.headers)
    assert AGENT_TOKEN not in text and AGENT["aws_access_key_id"] not in text
    assert header(signed.headers, "X-Amz-Security-Token") == OTHER.token
    assert header(signed.headers, "Proxy-Authorization") is None
    assert header(signed.headers, "Transfer-Encoding") == "chunked"  # kept, unsigned
    assert header(signed.headers, "X-Amz-Content-SHA256") == sigv4.STREAMING_UNSIGNED_TRAILER
    names = signed_header_names(signed.headers)
    assert not {"transfer-encoding", "content-length", "expect", "proxy-authorization"} & set(names)
    assert header(signed.headers, "Host") == f"{BUCKET}.s3.amazonaws.com"


def test_resign_presigned_v4_as_header_signed_unsigned_payload():
    s3 = agent_client("s3", region="eu-central-1", signature_version="s3v4")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "k", "ResponseContentType": "text/plain"}
    )
    signed = _resign(wire_from_url(url))
    assert signed.query == "response-content-type=text%2Fplain"
    assert header(signed.headers, "X-Amz-Content-SHA256") == sigv4.UNSIGNED_PAYLOAD
    assert "/eu-central-1/s3/aws4_request" in header(signed.headers, "Authorization")


def test_resign_presigned_v4_of_the_javascript_sdk_drops_its_payload_hash_parameter():
    """The AWS SDK for JavaScript v3 presigns with X-Amz-Content-Sha256=UNSIGNED-PAYLOAD in the query
    (and x-id): signing metadata, gone from what goes upstream, as the rest of the signature."""
    s3 = agent_client("s3", region="eu-central-1", signature_version="s3v4")
    url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "k"})
    wire = dataclasses.replace(wire_from_url(url + "&X-Amz-Content-Sha256=UNSIGNED-PAYLOAD&x-id=PutObject"), method="PUT")
    signed = _resign(wire)
    assert "sha256" not in signed.query.lower() and "x-amz-" not in signed.query.lower()
    assert header(signed.headers, "X-Amz-Content-SHA256") == sigv4.UNSIGNED_PAYLOAD
    assert "/eu-central-1/s3/aws4_request" in header(signed.headers, "Authorization")


def test_resign_presigned_v2_strips_its_parameters():
    url = agent_client("s3").generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    signed = _resign(wire_from_url(url), signing_name="s3")
    assert signed.query == ""
    assert "/us-east-1/s3/aws4_request" in header(signed.headers, "Authorization")


def test_resign_needs_the_body_when_no_hash_is_declared():
    wire = capture(agent_client("dynamodb"), "list_tables")
    with pytest.raises(ValueError, match="body is needed"):
        _resign(wire, body=None)


@pytest.mark.parametrize(
    "payload", ["STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-EVENTS"]
)
def test_resign_refuses_streams_it_cannot_sign(payload):
    headers = [("Host", "s3.amazonaws.com"), ("X-Amz-Content-SHA256", payload)]
    with pytest.raises(ValueError, match="cannot be re-signed"):
        sigv4.resign("PUT", "s3.amazonaws.com", "/b/k", "", headers, None, credentials=OTHER,
                     region="us-east-1", signing_name="s3")


def test_resign_without_session_token_drops_the_agent_token():
    wire = capture(agent_client("sts"), "get_caller_identity")
    long_term = ReadOnlyCredentials("AKIDLONGTERM00000000", "secret", None)
    signed = _resign(wire, credentials=long_term)
    assert header(signed.headers, "X-Amz-Security-Token") is None
    assert "x-amz-security-token" not in signed_header_names(signed.headers)


def test_resign_drops_a_signature_or_credential_the_agent_put_in_the_query_of_a_header_signed_request():
    """No operation has a query parameter of these names: upstream sees the gateway's signature alone."""
    import dataclasses

    wire = capture(agent_client("s3"), "get_object", Bucket="b", Key="k")
    extra = "X-Amz-Signature=abab&X-Amz-Credential=AKIASTOLEN%2F20200101%2Fus-east-1%2Fs3%2Faws4_request" \
            "&AWSAccessKeyId=AKIASTOLEN&Signature=c2ln&SecurityToken=t&partNumber=1"
    wire = dataclasses.replace(wire, query=f"{wire.query}&{extra}" if wire.query else extra)
    signed = sigv4.resign(wire.method, wire.host, wire.path, wire.query, wire.headers, wire.body, credentials=OTHER,
                          region="us-east-1", signing_name="s3")
    assert signed.query == "partNumber=1"


@pytest.mark.parametrize("sent, as_s3_reads_it", [
    ("/data/dt=2024-05-22/mac@2x (1).png", "/data/dt%3D2024-05-22/mac%402x%20%281%29.png"),
    ("/a!b*c'd,e;f:g$h&i+j", "/a%21b%2Ac%27d%2Ce%3Bf%3Ag%24h%26i%2Bj"),
    ("/h\u00e9llo", "/h%C3%A9llo"),
    ("/lower%3d/100%.txt", "/lower%3D/100%25.txt"),
])
def test_resign_sends_an_s3_path_percent_encoded_as_s3_signs_it(monkeypatch, sent, as_s3_reads_it):
    """S3 signs the path with every byte but the unreserved ones and '/' percent-encoded once
    (AWS's CanonicalRequest for a GET of /b/dt=1/k reads /b/dt%3D1/k). A plain HTTP client sends
    '=', '@', '(' and others as they are; signed as sent, S3 refused the call (SignatureDoesNotMatch).
    The path goes upstream in S3's form, signed as botocore signs that path."""
    now = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
    host = f"{BUCKET}.s3.amazonaws.com"
    signed = sigv4.resign("GET", host, sent, "", [("Host", host)], b"", credentials=OTHER, region="us-east-1",
                          signing_name="s3", now=now)
    assert signed.path == as_s3_reads_it
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    request = botocore.awsrequest.AWSRequest("GET", f"https://{host}{as_s3_reads_it}",
                                             headers={"X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()})
    signer = botocore.auth.S3SigV4Auth(OTHER, "s3", "us-east-1")
    signer.add_auth(request)
    assert signer.canonical_request(request).split("\n")[1] == as_s3_reads_it
    assert header(signed.headers, "Authorization") == request.headers["Authorization"]


def test_resign_leaves_the_path_an_sdk_sends_to_s3_as_it_is():
    """boto3 encodes every byte of a key but '/' and '~' already: its path goes on unchanged; and an
    encoded '/' stays encoded, since the classifier read the bucket and key from the slashes sent."""
    key = "uni/h\u00e9llo w\u00f6rld \u2713 a+b=c@d%e(1)*!'~//x.txt"
    wire = capture(agent_client("s3", s3={"addressing_style": "path"}), "get_object", Bucket=BUCKET, Key=key)
    assert _resign(wire).path == wire.path
    signed = sigv4.resign("GET", "s3.amazonaws.com", "/b%2fsecret/k%2F", "", [("Host", "s3.amazonaws.com")], b"",
                          credentials=OTHER, region="us-east-1", signing_name="s3")
    assert signed.path == "/b%2Fsecret/k%2F"
    other = sigv4.resign("GET", "lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/a=b", "",
                         [("Host", "lambda.us-east-1.amazonaws.com")], b"", credentials=OTHER, region="us-east-1",
                         signing_name="lambda")
    assert other.path == "/2015-03-31/functions/a=b"  # other services sign their paths otherwise


def test_canonical_query_encodes_the_sigv4_way():
    assert sigv4.canonical_query("b=2&a=1&uploads") == "a=1&b=2&uploads="
    assert sigv4.canonical_query("prefix=a/b c&x=%7E") == "prefix=a%2Fb%20c&x=~"


# -- signed chunks --------------------------------------------------------------------------


def _example_request(payload_hash: str):
    example = EXAMPLE_SIGNATURES[payload_hash]
    headers = [
        ("Host", "s3.amazonaws.com"),
        ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDAGENT/20130524/us-east-1/s3/aws4_request,"
                          f"SignedHeaders={example['signed_headers']},Signature={'0' * 64}"),
        ("x-amz-content-sha256", payload_hash),
        ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
    ]
    if payload_hash == sigv4.STREAMING_SIGNED_TRAILER:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32c"))
        trailers = [b"x-amz-checksum-crc32c:sOO8/Q=="]
    else:
        headers.append(("Content-Length", "66824"))
        trailers = []
    body = signed_chunks([b"a" * 65536, b"a" * 1024], trailers, signed_trailer=bool(trailers))
    return headers, body


def signed_chunks(chunks, trailers=(), signed_trailer=False, signature=b"0" * 64) -> bytes:
    """An aws-chunked body with placeholder signatures."""
    out = b""
    for chunk in [*chunks, b""]:
        out += b"%x;chunk-signature=%s\r\n" % (len(chunk), signature) + chunk
        if chunk:
            out += b"\r\n"
    for line in trailers:
        out += line + b"\r\n"
    if signed_trailer:
        out += b"x-amz-trailer-signature:" + signature + b"\r\n"
    return out + b"\r\n"


@pytest.mark.parametrize("payload_hash", sorted(EXAMPLE_SIGNATURES))
def test_signed_chunks_match_the_aws_example(payload_hash):
    example = EXAMPLE_SIGNATURES[payload_hash]
    headers, body = _example_request(payload_hash)
    signed = sigv4.resign("PUT", "s3.amazonaws.com", "/examplebucket/chunkObject.txt", "", headers,
                          None, credentials=EXAMPLE_CREDENTIALS, region="us-east-1",
                          signing_name="s3", now=EXAMPLE_TIME)
    authorization = header(signed.headers, "Authorization")
    assert f"SignedHeaders={example['signed_headers']}," in authorization
    assert authorization.endswith(f"Signature={example['seed']}")
    out = signed.body_transform(body) + signed.body_transform(b"")
    assert len(out) == len(body)
    if payload_hash == sigv4.STREAMING_SIGNED:
        assert len(out) == 66824  # the example's Content-Length
    assert re.findall(rb"chunk-signature=([0-9a-f]{64})", out) == [s.encode() for s in example["chunks"]]
    trailer = re.findall(rb"x-amz-trailer-signature:([0-9a-f]{64})", out)
    assert trailer == ([example["trailer"].encode()] if example["trailer"] else [])
    assert out.replace(b"0" * 64, b"") == out  # every placeholder was replaced


def _transform():
    return sigv4.ChunkResigner(
        sigv4.signing_key(OTHER.secret_key, "20250601", "us-east-1", "s3"),
        "20250601T120000Z", "20250601/us-east-1/s3/aws4_request", "f" * 64,
    )


def _feed(transform, body: bytes, cuts) -> bytes:
    """Pass ``body`` through ``transform`` in pieces cut at ``cuts``, then the end (b"")."""
    out = b""
    start = 0
    for cut in sorted(set(cuts) | {len(body)}):
        if cut > start:
            out += transform(body[start:cut])
            start = cut
    return out + transform(b"")


def _chunked_body(sizes, trailer: bool, seed: int) -> bytes:
    rng = random.Random(seed)
    chunks = [rng.randbytes(size) for size in sizes]
    trailers = [b"x-amz-checksum-crc32:" + b64encode(zlib.crc32(b"".join(chunks)).to_bytes(4, "big"))]
    return signed_chunks(chunks, trailers if trailer else (), signed_trailer=trailer)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        sizes=st.lists(st.integers(1, 70_000), max_size=4),
        trailer=st.booleans(),
        seed=st.integers(0, 1 << 16),
        cut_fractions=st.lists(st.floats(0, 1), max_size=40),
    )
    def test_signed_chunks_any_split_gives_the_same_bytes(sizes, trailer, seed, cut_fractions):
        body = _chunked_body(sizes, trailer, seed)
        whole = _feed(_transform(), body, [])
        cuts = [int(f * len(body)) for f in cut_fractions]
        assert _feed(_transform(), body, cuts) == whole
        assert len(whole) == len(body)

except ImportError:  # pragma: no cover

    @pytest.mark.parametrize("seed", range(100))
    def test_signed_chunks_any_split_gives_the_same_bytes(seed):
        rng = random.Random(seed)
        sizes = [rng.randint(1, 70_000) for _ in range(rng.randint(0, 4))]
        body = _chunked_body(sizes, rng.random() < 0.5, seed)
        whole = _feed(_transform(), body, [])
        cuts = [rng.randint(0, len(body)) for _ in range(rng.randint(0, 40))]
        assert _feed(_transform(), body, cuts) == whole


def test_signed_chunks_byte_by_byte():
    body = _chunked_body([3, 5000, 1], True, 7)
    whole = _feed(_transform(), body, [])
    assert _feed(_transform(), body, range(1, len(body))) == whole


@pytest.mark.parametrize(
    "body, message",
    [
        (b"10;chunk-signature=" + b"0" * 64 + b"\r\nshort", "ended before its final chunk"),
        (b"zz;chunk-signature=" + b"0" * 64 + b"\r\n", "hex size"),
        (b"3\r\nabc\r\n0\r\n\r\n", "no chunk-signature"),
        (b"3;chunk-signature=" + b"0" * 64 + b"\r\nabcd\r\n", "longer than its declared size"),
        (signed_chunks([b"abc"]) + b"more", "continues after its final chunk"),
        (b"f" * 10_000, "too long"),
        (b"fffffffff;chunk-signature=" + b"0" * 64 + b"\r\n", "over the"),
    ],
)
def test_malformed_signed_chunks_are_refused(body, message):
    transform = _transform()
    with pytest.raises(ValueError, match=message):
        transform(body)
        transform(b"")


# -- against moto with authentication on ----------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self):
        return json.loads(self.body)


def send(moto, method, path, query, headers, body: bytes) -> Reply:
    """Send exactly these headers (Host included) to moto over plain HTTP on loopback."""
    connection = http.client.HTTPConnection("127.0.0.1", moto.port, timeout=120)
    try:
        connection.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True,
                              skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() != "expect":  # http.client does not wait for 100-continue
                connection.putheader(name, value)
        connection.endheaders()
        if "chunked" in (header(headers, "Transfer-Encoding") or "").lower():
            connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
        elif body:
            connection.send(body)
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def forward(moto, wire: Wire, credentials, signing_name=None, pieces: int = 7) -> Reply:
    """What the gateway does: parse, re-sign (without the body when it streams), send on."""
    signed = _resign(wire, credentials=credentials, signing_name=signing_name)
    body = wire.body
    if signed.body_transform is not None:
        cuts = [len(body) * i // pieces for i in range(1, pieces)]
        body = _feed(signed.body_transform, body, cuts)
    return send(moto, wire.method, signed.path, signed.query, signed.headers, body)


def ok(reply: Reply) -> Reply:
    assert 200 <= reply.status < 300, (reply.status, reply.body[:500])
    return reply


@pytest.fixture(scope="module")
def role(moto):
    """The ASIA credentials moto issues for agent-role, as the broker gets them."""
    sts = moto.client("sts", aws_access_key_id=moto.broker.access_key_id,
                      aws_secret_access_key=moto.broker.secret_access_key)
    c = sts.assume_role(RoleArn=moto.broker.role_arn, RoleSessionName="sigv4-tests")["Credentials"]
    assert c["AccessKeyId"].startswith("ASIA")
    return ReadOnlyCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])


@pytest.fixture(scope="module")
def bucket(moto, role):
    wire = capture(agent_client("s3", s3={"addressing_style": "path"}), "create_bucket", Bucket=BUCKET)
    assert wire.host == "s3.amazonaws.com" and wire.path == f"/{BUCKET}"
    ok(forward(moto, wire, role))
    return BUCKET


def test_sts_get_caller_identity(moto, role):
    reply = ok(forward(moto, capture(agent_client("sts"), "get_caller_identity"), role))
    assert b"assumed-role/agent-role/sigv4-tests" in reply.body


def test_dynamodb_create_put_get(moto, role):
    ddb = agent_client("dynamodb")
    ok(forward(moto, capture(
        ddb, "create_table", TableName="sigv4", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    ), role))
    item = {"id": {"S": "one"}, "note": {"S": "ünïcode & spaces"}}
    ok(forward(moto, capture(ddb, "put_item", TableName="sigv4", Item=item), role))
    reply = ok(forward(moto, capture(ddb, "get_item", TableName="sigv4", Key={"id": {"S": "one"}}), role))
    assert reply.json()["Item"] == item


def test_lambda_list_functions(moto, role):
    reply = ok(forward(moto, capture(agent_client("lambda"), "list_functions"), role))
    assert "Functions" in reply.json()


def _get_object(moto, role, key: str, style: str) -> bytes:
    s3 = agent_client("s3", s3={"addressing_style": style})
    return ok(forward(moto, capture(s3, "get_object", Bucket=BUCKET, Key=key), role)).body


@pytest.mark.parametrize("style, size", [("path", 1024), ("virtual", 1024), ("virtual", 10 << 20)])
def test_s3_put_streaming_unsigned_trailer(moto, role, bucket, style, size):
    s3 = agent_client("s3", s3={"addressing_style": style})
    data = random.Random(size).randbytes(size)
    wire = capture(s3, "put_object", Bucket=bucket, Key=f"{style}-{size}", Body=data)
    assert header(wire.headers, "X-Amz-Content-SHA256") == sigv4.STREAMING_UNSIGNED_TRAILER
    expected_host = f"{bucket}.s3.amazonaws.com" if style == "virtual" else "s3.amazonaws.com"
    assert wire.host == expected_host
    ok(forward(moto, wire, role))
    assert _get_object(moto, role, f"{style}-{size}", style) == data


def _put_plain(moto, role, key: str, data: bytes):
    s3 = agent_client("s3")
    ok(forward(moto, capture(s3, "put_object", Bucket=BUCKET, Key=key, Body=data), role))


def test_s3_presigned_v2_get(moto, role, bucket):
    _put_plain(moto, role, "presigned-v2", b"via a SigV2 URL")
    params = {"Bucket": bucket, "Key": "presigned-v2"}
    url = agent_client("s3").generate_presigned_url("get_object", Params=params)
    assert "AWSAccessKeyId=" in url
    reply = ok(forward(moto, wire_from_url(url), role, signing_name="s3"))
    assert reply.body == b"via a SigV2 URL"


def test_s3_presigned_v4_get(moto, role, bucket):
    _put_plain(moto, role, "presigned-v4", b"via a SigV4 URL")
    s3 = agent_client("s3", signature_version="s3v4")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "presigned-v4"})
    assert "X-Amz-Signature=" in url
    reply = ok(forward(moto, wire_from_url(url), role))
    assert reply.body == b"via a SigV4 URL"


def test_s3_multipart(moto, role, bucket):
    s3 = agent_client("s3")
    key = "multipart"
    reply = ok(forward(moto, capture(s3, "create_multipart_upload", Bucket=bucket, Key=key), role))
    upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", reply.body).group(1).decode()
    parts = [random.Random(1).randbytes(5 << 20), b"tail" * 256]
    etags = []
    for number, data in enumerate(parts, start=1):
        wire = capture(s3, "upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                       PartNumber=number, Body=data)
        reply = ok(forward(moto, wire, role))
        etags.append(dict((k.lower(), v) for k, v in reply.headers)["etag"])
    wire = capture(s3, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
    ok(forward(moto, wire, role))
    assert _get_object(moto, role, key, "virtual") == b"".join(parts)


def test_s3_signed_chunks_upload(moto, role, bucket):
    """A signed-chunk upload (what SDKs other than boto3 send): header and chunks re-signed,
    moto verifies the seed signature and decodes the chunks."""
    data = random.Random(3).randbytes(200_000)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    crc = b64encode(zlib.crc32(data).to_bytes(4, "big"))
    body = signed_chunks(chunks, [b"x-amz-checksum-crc32:" + crc], signed_trailer=True)
    host = f"{bucket}.s3.amazonaws.com"
    headers = [
        ("Host", host),
        ("X-Amz-Date", "20250601T000000Z"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDAGENT/20250601/us-east-1/s3/aws4_request,"
                          "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
                          "x-amz-date;x-amz-decoded-content-length;x-amz-trailer,Signature=" + "0" * 64),
        ("X-Amz-Security-Token", AGENT_TOKEN),
        ("X-Amz-Content-SHA256", sigv4.STREAMING_SIGNED_TRAILER),
        ("Content-Encoding", "aws-chunked"),
        ("X-Amz-Decoded-Content-Length", str(len(data))),
        ("X-Amz-Trailer", "x-amz-checksum-crc32"),
        ("Content-Length", str(len(body))),
    ]
    wire = Wire("PUT", host, "/signed-chunks", "", headers, body)
    ok(forward(moto, wire, role))
    assert _get_object(moto, role, "signed-chunks", "virtual") == data


@pytest.mark.parametrize(
    "service, operation, params, codes",
    [
        ("sts", "get_caller_identity", {}, [b"InvalidClientTokenId"]),
        ("dynamodb", "list_tables", {}, [b"UnrecognizedClientException", b"InvalidClientTokenId"]),
        ("lambda", "list_functions", {}, [b"InvalidClientTokenId", b"UnrecognizedClientException"]),
        ("s3", "put_object", {"Bucket": BUCKET, "Key": "refused", "Body": b"x"}, [b"InvalidAccessKeyId"]),
    ],
)
def test_agent_signature_alone_is_refused(moto, role, bucket, service, operation, params, codes):
    """The same captured request, sent as the agent signed it, does not get in."""
    wire = capture(agent_client(service), operation, **params)
    reply = send(moto, wire.method, wire.path, wire.query, wire.headers, wire.body)
    assert reply.status == 403 and any(code in reply.body for code in codes), reply.body[:300]


def test_presigned_url_alone_is_refused(moto, role, bucket):
    url = agent_client("s3", signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "presigned-v4"})
    wire = wire_from_url(url)
    assert send(moto, "GET", wire.path, wire.query, wire.headers, b"").status >= 400


def test_wrong_secret_is_refused(moto, role):
    """moto checks the signature itself, not only the access key id."""
    wrong = ReadOnlyCredentials(role.access_key, "not-the-secret", role.token)
    reply = forward(moto, capture(agent_client("sts"), "get_caller_identity"), wrong)
    assert reply.status == 403 and b"SignatureDoesNotMatch" in reply.body


def test_signed_header_changed_after_signing_is_refused(moto, role):
    wire = capture(agent_client("dynamodb"), "list_tables")
    signed = _resign(wire, credentials=role)
    headers = [(k, "DynamoDB_20120810.DescribeLimits" if k == "X-Amz-Target" else v)
               for k, v in signed.headers]
    reply = send(moto, wire.method, signed.path, signed.query, headers, wire.body)
    assert reply.status in (400, 403) and b"SignatureDoesNotMatch" in reply.body, reply.body[:300]


# -- the fast signer is botocore's signer -------------------------------------------------------

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~"


def _agent_request(draw, st):
    """A request as an agent's SDK would send it, signed by botocore with the agent's key."""
    service, s3 = draw(st.sampled_from([("dynamodb", False), ("s3", True), ("sqs", False), ("execute-api", False),
                                        ("ec2", False)]))
    host = f"{'bucket.' if s3 else ''}{service}.us-east-1.amazonaws.com"
    segment = st.text(alphabet=_TOKEN_CHARS + "%/ .+=:@!$&'()*,;", min_size=0, max_size=12)
    path = "/" + "/".join(draw(st.lists(segment, max_size=4)))
    pairs = draw(st.lists(st.tuples(st.text(_TOKEN_CHARS, min_size=1, max_size=8),
                                    st.text(_TOKEN_CHARS + "%+ =", max_size=10)), max_size=4))
    query = "&".join(f"{k}={v}" for k, v in pairs)
    extra = draw(st.lists(st.tuples(st.sampled_from(["X-Amz-Target", "Content-Type", "x-amz-meta-a", "X-Amz-Meta-A",
                                                     "Range", "If-Match", "x-amz-acl", "Date", "Content-MD5"]),
                                    st.text(_TOKEN_CHARS + " \t", min_size=0, max_size=16)), max_size=5))
    body = draw(st.binary(max_size=64))
    url = f"https://{host}{path}" + (f"?{query}" if query else "")
    req = botocore.awsrequest.AWSRequest(method=draw(st.sampled_from(["GET", "POST", "PUT", "delete"])), url=url,
                                         data=body)
    for name, value in extra:
        req.headers[name] = value
    signer = botocore.auth.S3SigV4Auth if s3 else botocore.auth.SigV4Auth
    signer(ReadOnlyCredentials(AGENT["aws_access_key_id"], AGENT["aws_secret_access_key"],
                               draw(st.sampled_from([None, AGENT_TOKEN]))), service, "us-east-1").add_auth(req)
    headers = list(req.headers.items()) + [("Host", host)] * draw(st.booleans())
    return req.method, host, path, query, headers, body, service


def test_the_fast_signer_signs_exactly_as_botocore():
    """Re-signing computes the canonical request itself (botocore's header container is slow);
    for every shape it accepts, the result is botocore's, byte for byte."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    creds = [OTHER, ReadOnlyCredentials("ASIAGATEWAY000000000", "other-secret", None)]

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def check(data):
        method, host, path, query, headers, body, service = _agent_request(data.draw, st)
        credentials = data.draw(st.sampled_from(creds))
        now = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
        kw = dict(credentials=credentials, region="us-east-1", signing_name=service, now=now)
        try:
            slow = sigv4.resign(method, host, path, query, headers, body, fast=False, **kw)
        except ValueError as e:
            with pytest.raises(ValueError, match=re.escape(str(e)[:40])):
                sigv4.resign(method, host, path, query, headers, body, **kw)
            return
        assert sigv4.resign(method, host, path, query, headers, body, **kw) == slow

    check()


@pytest.mark.parametrize("query, end", [
    ("X-Amz-Date=20260101T000000Z&X-Amz-Expires=60", 1767225660.0),
    ("X-Amz-Date=20260101T000000Z&X-Amz-Expires=604800", 1767225600.0 + 604800),
    ("X-Amz-Date=20260101T000000Z&X-Amz-Expires=604801", None),  # past SigV4's longest: not taken as stated
    ("X-Amz-Date=20260101T000000Z&X-Amz-Expires=-5", None),
    ("X-Amz-Date=2026-01-01&X-Amz-Expires=60", None),
    ("X-Amz-Expires=60", None),
])
def test_a_presigned_v4_urls_end(query, end):
    auth = sigv4.parse_auth("GET", "/k", query + "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE"
                            "%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature="
                            + "0" * 64, [("Host", "b.s3.amazonaws.com")])
    assert auth.presigned and auth.expires_at == end
    if end is not None:
        assert sigv4.expired(auth, now=end - 1) is None
        assert sigv4.expired(auth, now=end).startswith("Request has expired: the presigned URL was good until 20")


def test_a_presigned_v2_urls_end():
    auth = sigv4.parse_auth("GET", "/k", "AWSAccessKeyId=AKIDEXAMPLE&Expires=1767225600&Signature=abc", [])
    assert auth.kind == "query-v2" and auth.expires_at == 1767225600.0
    assert sigv4.expired(auth, now=1767225599) is None and sigv4.expired(auth, now=1767225600)
    assert sigv4.parse_auth("GET", "/k", "AWSAccessKeyId=A&Expires=soon&Signature=abc", []).expires_at is None
    assert sigv4.expired(sigv4.parse_auth("GET", "/k", "", [("Authorization", "AWS4-HMAC-SHA256 x")])) is None


def test_a_signature_naming_its_scope_twice_cannot_be_read():
    """Read one way by the classifier and another by the signer, a scope could decide one region or
    service and sign for another: a Credential (or any presigning parameter) given twice, in any
    case, is an error the gateway refuses (tests/test_signature_scope.py)."""
    from addons.core import sigv4

    header = ("AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, "
              "Signature=00, Credential=k/20260101/eu-west-1/dynamodb/aws4_request")
    auth = sigv4.parse_auth("POST", "/", "", [("Authorization", header)])
    assert auth.error == "the signature gives Credential more than once" and auth.kind in sigv4.SCOPED_KINDS
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=k%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-SignedHeaders=host&X-Amz-Signature=00&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60"
             "&x-amz-credential=k%2F20260101%2Feu-west-1%2Fs3%2Faws4_request")
    presigned = sigv4.parse_auth("GET", "/b/k", query, [])
    assert presigned.error == "the signature gives X-Amz-Credential more than once"
    assert sigv4.parse_auth("GET", "/b/k", query.rsplit("&", 1)[0], []).error is None
