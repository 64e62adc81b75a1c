"""Fuzzing the agent's signature as the gateway reads it (core.sigv4): any Authorization header,
presigned query, payload hash or aws-chunked body is either read, or refused with a ValueError
whose message says what is wrong; nothing else escapes, nothing takes long, and no error quotes
the signature or the session token. FUZZ_EXAMPLES raises the number of examples per property."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from datetime import UTC, datetime
from urllib.parse import unquote

from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core import sigv4
from tests.support.bounds import HANG


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


KINDS = {"header-v4", "query-v4", "header-v4a", "query-v4a", "header-v2", "query-v2", "none"}
SIGNATURE = "5ac2b9f0d1c4e8a7b6f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDfuzztoken"
CREDENTIALS = ReadOnlyCredentials("ASIAGATEWAYEXAMPLE00", "gateway-secret", "gateway-token")
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Text as it reaches the gateway: mitmproxy decodes header and path bytes with surrogateescape.
wire_text = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["", " ", "=", ",", "/", ";", "%", "%ff", "%zz", "\r\n", "\x00", "aws4_request"]),
)
scope_part = st.one_of(wire_text, st.sampled_from(["AKIDEXAMPLE", "20260101", "us-east-1", "s3", "sts", "aws4_request",
                                                   "2026010", "x" * 5000, ""]))


@st.composite
def authorization(draw) -> str:
    """An Authorization header: a real scheme with fuzzed parameters, or anything at all."""
    scheme = draw(st.sampled_from([sigv4.ALGORITHM, sigv4.ALGORITHM_V4A, "AWS", "Bearer", "Basic", ""]) | wire_text)
    if draw(st.booleans()):
        return scheme + " " + draw(wire_text)
    credential = "/".join(draw(st.lists(scope_part, max_size=7)))
    params = [f"Credential={credential}", "SignedHeaders=" + ";".join(draw(st.lists(wire_text, max_size=5))),
              f"Signature={SIGNATURE}"]
    params = draw(st.permutations(params))[: draw(st.integers(0, 3))]
    separator = draw(st.sampled_from([", ", ",", " , ", ";"]))
    return f"{scheme} {separator.join(params)}"


@st.composite
def agent_request(draw) -> tuple[str, str, str, list[tuple[str, str]]]:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]) | wire_text)
    path = draw(st.sampled_from(["/", "/bucket/key", "/%2F..%2F", "//"]) | wire_text)
    query_params = draw(st.lists(st.tuples(
        st.sampled_from(list(sigv4.SIGV4_QUERY_PARAMS) + list(sigv4.SIGV2_QUERY_PARAMS) + ["x-id", "uploads"])
        | wire_text, scope_part | wire_text | st.just(TOKEN)), max_size=8))
    query = "&".join(f"{k}={v}" for k, v in query_params)
    headers = [("Host", draw(st.sampled_from(["s3.amazonaws.com", "sts.amazonaws.com", "b.s3.eu-west-1.amazonaws.com",
                                               "[::1]:443", ""]) | wire_text))]
    if draw(st.booleans()):
        headers.append(("Authorization", draw(authorization())))
    for name in draw(st.lists(st.sampled_from(["X-Amz-Security-Token", "x-amz-content-sha256", "X-Amz-Date",
                                               "x-amz-region-set", "Content-Length", "Transfer-Encoding",
                                               "Content-Type", "x-amz-meta-a"]), max_size=5)):
        if name == "X-Amz-Security-Token":
            value = draw(st.just(TOKEN) | wire_text)
        else:
            value = draw(st.sampled_from(["UNSIGNED-PAYLOAD", sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER,
                                          "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "0", sigv4.EMPTY_SHA256])
                         | wire_text)
        headers.append((name, value))
    return method, path, query, headers


def assert_clean_error(error: str | None) -> None:
    if error is not None:
        assert isinstance(error, str) and error.strip()
        assert SIGNATURE not in error and TOKEN not in error and "fuzztoken" not in error


@given(agent_request())
@fuzz(200)
@example(("GET", "/", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + "/" * 5000, [("Host", "s3.amazonaws.com")]))
@example(("GET", "/", "", [("Authorization", "AWS4-HMAC-SHA256 Credential=\udcff/20260101/us-east-1/s3/aws4_request, "
                                             f"SignedHeaders=host, Signature={SIGNATURE}")]))
@example(("GET", "/", "AWSAccessKeyId=&Signature=" + SIGNATURE, [("Authorization", "AWS a:" + SIGNATURE)]))
@example(("GET", "/", f"AWSAccessKeyId={TOKEN}&Signature=0", [("Host", "s3.amazonaws.com")]))
def test_any_signature_is_read_or_named_malformed(request):
    method, path, query, headers = request
    started = time.perf_counter()
    auth = sigv4.parse_auth(method, path, query, headers)
    assert auth.kind in KINDS
    assert_clean_error(auth.error)
    if auth.error is None and auth.kind in ("header-v4", "query-v4"):
        assert auth.access_key and auth.region and auth.service
    if auth.kind.endswith("v4a") and auth.error is None:
        assert auth.access_key and auth.service
    # the session token never reaches the parsed signature, unless the agent sent it as its access
    # key id (which it is then: access key ids are identifiers, not secrets)
    assert TOKEN not in repr(dataclasses.replace(auth, access_key=None)), \
        "the session token is never in the parsed signature's repr"
    sigv4.streams(auth, headers)
    sigv4.region_for(auth, headers[0][1])
    sigv4.scrub_query(query)
    assert time.perf_counter() - started < HANG


@given(agent_request(), st.one_of(st.none(), st.binary(max_size=300)),
       st.sampled_from(["s3", "sts", "dynamodb", "execute-api", "s3-outposts"]))
@fuzz(150)
@example(("PUT", "/b/k", "", [("Host", "s3.amazonaws.com"), ("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")]),
         None, "s3")
@example(("GET", "/\udcff", "a=%ff", [("Host", "sts.amazonaws.com")]), b"", "sts")
@example(("GET", "/", "", [("Host", "\udc80")]), None, "s3")  # botocore raised AttributeError
@example(("GET", "/", f"X-Amz-Algorithm=x&SecurityToken={TOKEN}", [("Host", "s3.amazonaws.com")]), None, "s3")
@example(("GET", "/", "Action=GetCallerIdentity&X-Amz-Security-Token=" + TOKEN,  # the token went upstream
          [("Host", "sts.amazonaws.com"), ("Authorization", f"{sigv4.ALGORITHM} Credential=a/20260101/us-east-1/sts/"
                                                            f"aws4_request, SignedHeaders=host, Signature={SIGNATURE}")]),
         b"", "sts")
def test_resigning_any_request_signs_it_or_says_why_not(request, body, service):
    method, path, query, headers = request
    try:
        signed = sigv4.resign(method, "s3.amazonaws.com", path, query, headers, body, credentials=CREDENTIALS,
                              region="us-east-1", signing_name=service, now=NOW)
    except ValueError as e:
        assert_clean_error(str(e))
        return
    names = [k.lower() for k, _ in signed.headers]
    assert names.count("authorization") == 1 and "proxy-authorization" not in names
    authorization = dict((k.lower(), v) for k, v in signed.headers)["authorization"]
    assert authorization.startswith(f"{sigv4.ALGORITHM} Credential={CREDENTIALS.access_key}/20260101/us-east-1/{service}/")
    assert SIGNATURE not in authorization and TOKEN not in [v for _, v in signed.headers]
    names = {unquote(part.partition("=")[0]).lower() for part in signed.query.split("&")}
    assert not names & {"x-amz-security-token", "securitytoken"}, "the agent's session token never goes upstream"


def _resigner() -> sigv4.ChunkResigner:
    return sigv4.ChunkResigner(sigv4.signing_key("secret", "20260101", "us-east-1", "s3"), "20260101T000000Z",
                               "20260101/us-east-1/s3/aws4_request", "f" * 64)


def _valid_chunks(pieces: list[bytes], trailer: bool) -> bytes:
    out = b""
    for piece in pieces + [b""]:
        out += b"%x;chunk-signature=%s\r\n" % (len(piece), b"0" * 64)
        if piece:
            out += piece + b"\r\n"
    if trailer:
        out += b"x-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n"
    return out + b"\r\n"


def _feed(body: bytes, cuts: list[int]) -> bytes:
    transform = _resigner()
    out, start = b"", 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(body))) + [len(body)]:
        out += transform(body[start:cut])
        start = cut
    return out + transform(b"")


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
@fuzz(300)
@example(b"0;chunk-signature=" + b"0" * 64 + b"\r\n\x00\r\n0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n", [])
@example(b"fffffffffffffff;chunk-signature=" + b"0" * 64 + b"\r\n", [])
@example(b"1" * 10_000, [])
@example(b"-a;chunk-signature=" + b"0" * 64 + b"\r\n" + b"x" * 20, [])  # a negative size looped for good
@example(b"+1;chunk-signature=" + b"0" * 64 + b"\r\nx\r\n", [])
@example(b"1_0;chunk-signature=" + b"0" * 64 + b"\r\n" + b"x" * 16 + b"\r\n", [])
@example(b"0;chunk-signature=" + b"0" * 64 + b"\r\n" + b"x-amz-checksum-crc32:" + b"A" * 5000, [])
def test_any_aws_chunked_body_is_re_signed_or_refused(body, cuts):
    started = time.perf_counter()
    try:
        out = _feed(body, cuts)
    except ValueError as e:
        assert_clean_error(str(e))
        assert "aws-chunked" in str(e)
    else:
        assert isinstance(out, bytes)
    assert time.perf_counter() - started < HANG


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=4), st.booleans(), st.data())
@fuzz(200)
def test_a_corrupted_signed_chunk_body_never_passes_unread(pieces, trailer, data):
    """One byte of a valid body changed, dropped or added: the resigner re-signs what it reads or
    refuses; it never hands a chunk on without signing it again."""
    body = bytearray(_valid_chunks(pieces, trailer))
    where = data.draw(st.integers(0, len(body) - 1))
    change = data.draw(st.sampled_from(["flip", "drop", "insert"]))
    if change == "flip":
        body[where] ^= data.draw(st.integers(1, 255))
    elif change == "drop":
        del body[where]
    else:
        body.insert(where, data.draw(st.integers(0, 255)))
    try:
        out = _feed(bytes(body), data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    except ValueError:
        return
    signatures = re.findall(rb"(?:chunk-signature=|x-amz-trailer-signature:)([0-9a-f]*)", out)
    assert b"0" * 64 not in signatures, "every chunk signature was replaced by the gateway's"
    assert b"0" * 64 not in out.split(b"\r\n"), "no line of the agent's passed on as it came"


def test_a_huge_declared_chunk_is_refused_before_it_is_held():
    transform = _resigner()
    header = b"%x;chunk-signature=%s\r\n" % ((64 << 20) + 1, b"0" * 64)
    try:
        transform(header + random.Random(1).randbytes(1000))
    except ValueError as e:
        assert "over the" in str(e)
    else:
        raise AssertionError("a chunk over the limit was accepted")
