"""Request smuggling shapes sent as raw bytes through a real gateway's CONNECT tunnel (TLS with the
gateway's CA, a valid token): each is refused with 400 and nothing reaches the upstream, a loopback
stand-in that keeps every request it gets. A shape mitmproxy parses into a request (conflicting
Content-Length and Transfer-Encoding, …) leaves one record; so does a head refused before it
is parsed (bare LF, bare CR, NUL, obs-fold), though no request was read: it names the agent and
keeps the head's SHA-256 and size, not the head; so do a request line mitmproxy's reader cannot
read and HTTP/2 frames mitmproxy's h2 layer refuses (GOAWAY). The same request well formed goes
through, so the upstream would have seen it."""

from __future__ import annotations

import hashlib
import json
import re
import time

import pytest

from tests.support.gateway import Gateway
from tests.support.raw import exchange

BODY = b"Action=GetCallerIdentity&Version=2011-06-15"
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
CL = b"Content-Length: %d" % len(BODY)


def request(extra: list[bytes], body: bytes = BODY, line: bytes = b"POST / HTTP/1.1", eol: bytes = b"\r\n") -> bytes:
    head = [line, b"Host: sts.amazonaws.com", b"Content-Type: application/x-www-form-urlencoded; charset=utf-8",
            b"X-Amz-Date: 20260101T000000Z",
            b"Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/sts/aws4_request, "
            b"SignedHeaders=host;x-amz-date, Signature=" + b"0" * 64, *extra]
    return eol.join(head) + eol + eol + body


# (id, raw request, words of the reason, "head" when it is refused before mitmproxy reads it as a request)
SHAPES = [
    ("cl-and-te", request([CL, b"Transfer-Encoding: chunked"], CHUNKED + b"GET /smuggled HTTP/1.1\r\n\r\n"),
     b"transfer-encoding and content-length", True),
    ("two-content-lengths", request([CL, b"Content-Length: 5"]), b"content-length", True),
    ("two-equal-content-lengths", request([CL, CL]), b"content-length", True),
    ("content-length-list", request([b"Content-Length: %d, %d" % (len(BODY), len(BODY))]), b"content-length", True),
    ("content-length-plus", request([b"Content-Length: +%d" % len(BODY)]), b"content-length", True),
    ("te-chunked-identity", request([b"Transfer-Encoding: chunked, identity"], CHUNKED), b"transfer-encoding", True),
    ("te-identity", request([b"Transfer-Encoding: identity", CL]), b"transfer-encoding", True),
    ("te-twice", request([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], CHUNKED),
     b"transfer-encoding", True),
    ("te-name-with-space", request([b"Transfer-Encoding : chunked"], CHUNKED), b"invalid header name", True),
    ("te-xchunked", request([b"Transfer-Encoding: xchunked", CL]), b"transfer-encoding", True),
    ("te-gzip-chunked", request([b"Transfer-Encoding: gzip, chunked"], CHUNKED), b"transfer-encoding", True),
    ("te-deflate-chunked", request([b"Transfer-Encoding: deflate,chunked"], CHUNKED), b"transfer-encoding", True),
    ("te-compress-chunked", request([b"Transfer-Encoding: compress, chunked"], CHUNKED), b"transfer-encoding", True),
    ("te-on-http-1.0", request([b"Transfer-Encoding: chunked"], CHUNKED, line=b"POST / HTTP/1.0"),
     b"transfer-encoding", True),
    ("control-character-in-value", request([CL, b"X-Trace: a\x1bb"]), b"control character", True),
    # a member header twice: policy would read them joined ("a, b"), a service perhaps one of them
    # an operation named in a header: moto (an upstream for tests and sandboxes) runs it
    ("action-header", request([CL, b"Action: DeleteFunction"]), b"a header named Action", True),
    ("amz-header-twice", request([CL, b"X-Amz-Copy-Source: public/x", b"x-amz-copy-source: private/y"]),
     b"given more than once", True),
    # Content-Type twice: the gateway read the body by one, a service perhaps by the other (JSON or a form)
    ("content-type-twice", request([CL, b"content-type: application/x-amz-json-1.0"]), b"given more than once", True),
    ("absolute-form-inside-tunnel", request([CL], line=b"POST http://169.254.169.254/ HTTP/1.1"),
     b"absolute-form", True),
    ("obs-fold-te", request([b"Transfer-Encoding:", b" chunked"], CHUNKED), b"obs-fold", "head"),
    ("obs-fold-hides-content-length", request([CL, b"X-Trace: a", b" Content-Length: 10"]), b"obs-fold", "head"),
    ("bare-lf-line-ends", request([CL], eol=b"\n"), b"bare LF", "head"),
    ("bare-cr-in-value", request([CL, b"X-Trace: a\rContent-Length: 10"]), b"bare CR", "head"),
    ("nul-in-value", request([CL, b"X-Trace: a\x00b"]), b"NUL", "head"),
    ("spaces-in-request-line", request([CL], line=b"POST /a b HTTP/1.1"), b"Bad HTTP request line", "head"),
    ("chunk-size-line-bare-lf", request([b"Transfer-Encoding: chunked"], b"%x\n%s\n0\n\n" % (len(BODY), BODY)),
     b"bare LF", True),
    ("chunk-size-overflow", request([b"Transfer-Encoding: chunked"], b"1" + b"0" * 20 + b"\r\nxx\r\n0\r\n\r\n"),
     b"chunked framing is malformed", True),
    # trailer fields after a chunked body: mitmproxy 12 raised, its handler died, and nothing was recorded
    ("trailer-fields", request([b"Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\nX-Amz-Target: x\r\n\r\n"
                               % (len(BODY), BODY)), b"trailer fields", True),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, upstream):
    g = Gateway(tmp_path_factory.mktemp("smuggling"), issuer=issuer.issuer, upstream=upstream.url,
                aws_key=("AKIASMUGGLINGTEST000", "not-used-by-the-canned-upstream"))
    with g:
        yield g
    print(g.log()[-3000:])




def send(gw, token: str | None, raw: bytes) -> bytes:
    """Everything the gateway answers to ``raw`` before it closes the connection or goes quiet."""
    return exchange(gw, token, raw)


def forwarded(upstream, since: int) -> list:
    """What upstream got since ``since``, but the gateway's own STS calls (signed with its key)."""
    return [r for r in upstream.requests[since:] if not _is_assume_role(r)]


def _is_assume_role(r) -> bool:
    return "Credential=AKIASMUGGLINGTEST000/" in dict((k.lower(), v) for k, v in r[2]).get("authorization", "")


@pytest.mark.parametrize("framing", [[CL], [b"Transfer-Encoding: chunked"], [b"Transfer-Encoding: Chunked "]],
                         ids=["content-length", "chunked", "chunked-in-capitals"])
def test_the_well_formed_request_reaches_upstream(gw, issuer, upstream, framing):
    before = len(upstream.requests)
    body = BODY if framing == [CL] else CHUNKED
    answer = send(gw, issuer.mint("agent-well-formed"), request(framing, body))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    got = forwarded(upstream, before)
    assert len(got) == 1 and got[0][0] == "POST", got


@pytest.mark.parametrize("name, raw, words, recorded", SHAPES, ids=[s[0] for s in SHAPES])
def test_smuggling_shape_is_refused_with_400_and_nothing_goes_upstream(gw, issuer, upstream, name, raw, words, recorded):
    sub = f"agent-{name}"
    before_up, before_records = len(upstream.requests), len(gw.records())
    answer = send(gw, issuer.mint(sub), raw)
    assert answer.startswith(b"HTTP/1.1 400"), (name, answer[:400])
    assert words.lower() in answer.lower(), (name, answer[:600])
    time.sleep(0.3)
    assert forwarded(upstream, before_up) == [], f"{name}: upstream got {forwarded(upstream, before_up)}"
    new = gw.records()[before_records:]
    # answered by the gateway, AWS-shaped in the request's protocol (STS: query, XML errors), and recorded
    assert b"<Code>InvalidRequest</Code>" in answer and b"<ErrorResponse" in answer, (name, answer[:600])
    assert len(new) == 1, (name, new)
    r = new[0]
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 400), r
    assert words.decode().lower() in r["error"].lower(), r["error"]
    assert r["principal"] == sub, r
    if recorded == "head":  # refused before it was read as a request: the head is not kept, its digest is
        end = raw.find(b"\r\n\r\n")
        head = raw[:end + 4] if end >= 0 else raw[:raw.index(b"\n\n") + 2]
        method = None if name == "spaces-in-request-line" else "POST"  # a request line that cannot be read
        assert (r["method"], r["url"]) == (method, "https://sts.amazonaws.com/"), r
        assert f"{len(head)} bytes, SHA-256 {hashlib.sha256(head).hexdigest()}" in r["body_note"], r["body_note"]
        assert r["request_headers"] in (None, "[]") and r["request_body"] is None, r
        assert "refused a request from 127.0.0.1:" in gw.log() and words.decode() in gw.log()


@pytest.mark.parametrize("extra, words", [
    (((b"x trace", b"a"),), "header name"),
    (((b"X-Trace", b"a"),), "uppercase"),
    (((b"x-trace", b" hunter2-session-token"),), "whitespace"),
    (((b"transfer-encoding", b"chunked"),), "connection-specific header"),
    (((b"content-length", b"5"),), "length"),
], ids=["space-in-name", "upper-case-name", "space-around-value", "transfer-encoding", "wrong-content-length"])
def test_http2_frames_mitmproxy_refuses_end_the_connection_and_are_recorded(gw, issuer, upstream, extra, words):
    """What mitmproxy's h2 layer refuses ends the connection with GOAWAY, before any request
    exists: nothing goes upstream, and the agent's attempt still leaves one record, naming it and
    keeping the frames' SHA-256 and size (not the frames: they hold the agent's credentials)."""
    from tests.support.raw import Http2ConnectionTerminated, h2_request

    sub = f"agent-h2-frames-{extra[0][0].decode().replace(' ', '_')}-{len(extra[0][1])}"
    before_up, before_records = len(upstream.requests), len(gw.records())
    head = dict(line.split(": ", 1) for line in request([CL]).split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
    head.pop("Content-Length")
    with pytest.raises(Http2ConnectionTerminated) as ended:
        h2_request(gw, issuer.mint(sub), "sts.amazonaws.com", "POST", b"/", head, BODY, validate=False, extra=extra)
    assert ended.value.error_code == 1  # PROTOCOL_ERROR
    time.sleep(1.0)
    assert forwarded(upstream, before_up) == [], forwarded(upstream, before_up)
    [r] = gw.records()[before_records:]
    if words == "length":  # the headers made a request, whose body then broke the rules: recorded as that flow
        assert (r["principal"], r["outcome"], r["status"]) == (sub, "refused", 400), r
        assert r["error"].startswith("InvalidRequest: HTTP/2 protocol error") and words in r["error"].lower(), r
        return
    assert (r["outcome"], r["rule"], r["status"], r["principal"]) == ("refused", "agentgate:egress", 400, sub), r
    assert r["error"].startswith("InvalidRequest: ") and "HTTP/2" in r["error"], r["error"]
    assert words.lower() in r["error"].lower(), r["error"]
    assert r["url"] == "https://sts.amazonaws.com/"
    note = r["body_note"]
    assert note.startswith("HTTP/2 frames refused before they were read as a request") and "GOAWAY" in note, note
    assert re.search(r": [1-9]\d* bytes, SHA-256 [0-9a-f]{64} \(not kept", note), note
    assert "hunter2" not in json.dumps(r)  # a header value h2 quotes in its reason may be a credential


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed-put", "buffered-post"])
def test_an_http2_body_without_a_length_reaches_upstream_as_one_framed_body(gw, issuer, upstream, streamed):
    """HTTP/2 frames a body without Content-Length; upstream speaks HTTP/1.1, where a head without
    one has no body: the body's bytes were read upstream as another request, unsigned, undecided
    and unrecorded. The gateway frames it (Content-Length, or chunked when streamed): upstream gets
    one request, with the body whole."""
    from tests.support.raw import h2_request

    smuggled = b"POST /moto-api/reset-auth HTTP/1.1\r\nHost: b.s3.amazonaws.com\r\nContent-Length: 3\r\n\r\ninf"
    sub = f"agent-h2-framing-{'s' if streamed else 'b'}"
    before_up, before_records = len(upstream.requests), len(gw.records())
    if streamed:
        host, method, path, body = "b.s3.amazonaws.com", "PUT", b"/innocent.txt", smuggled
        head = {"x-amz-date": "20260101T000000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                "authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/s3/aws4_request, "
                                 "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64}
    else:
        host, method, path, body = "sts.amazonaws.com", "POST", b"/", BODY
        head = dict(line.split(": ", 1) for line in request([CL]).split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
        head.pop("Content-Length")
        head = {k.lower(): v for k, v in head.items()}
    status, _, answer = h2_request(gw, issuer.mint(sub), host, method, path, head, body)
    assert status == 200, answer[:300]
    time.sleep(0.5)
    got = forwarded(upstream, before_up)
    assert [(m, p) for m, p, _ in got] == [(method, path.decode())], got
    sent = {k.lower(): v for k, v in got[0][2]}
    if streamed:
        assert sent.get("transfer-encoding") == "chunked"
    else:
        assert sent.get("content-length") == str(len(BODY))
    [r] = gw.records()[before_records:]
    assert (r["principal"], r["outcome"], r["request_body_size"]) == (sub, "forwarded", len(body)), r


def test_a_request_without_a_token_in_an_unauthenticated_tunnel_goes_nowhere(gw, upstream):
    """A CONNECT without proxy credentials opens a tunnel only to an AWS host; a request in it
    without the agent's token (transport B) is refused, and upstream sees nothing."""
    before_up, before_records = len(upstream.requests), len(gw.records())
    answer = send(gw, None, request([CL]))
    assert answer.startswith(b"HTTP/1.1 403") and b"no token" in answer, answer[:400]
    time.sleep(0.3)
    assert forwarded(upstream, before_up) == []
    new = gw.records()[before_records:]
    assert len(new) == 1 and new[0]["outcome"] == "refused" and new[0]["rule"] == "agentgate:auth", new


@pytest.mark.parametrize("method, path, words", [
    ("POST", b"/a b HTTP/1.1", b"space or control character (0x20)"),
    ("POST /x", b"/", b"is not an HTTP token"),
], ids=["space-in-path", "space-in-method"])
def test_an_http2_request_line_with_a_space_is_refused_and_nothing_goes_upstream(gw, issuer, upstream, method, path,
                                                                                 words):
    """HTTP/2 carries the method and target in :method and :path, where a space is only bytes;
    upstream speaks HTTP/1, where a space ends them, so another request line than the gateway read
    would reach it. Refused with 400 and recorded, like the HTTP/1 shapes above."""
    from tests.support.raw import h2_request

    sub = f"agent-h2-{method.split()[-1].strip('/') or 'path'}-{len(path)}"
    before_up, before_records = len(upstream.requests), len(gw.records())
    head = dict(line.split(": ", 1) for line in request([CL]).split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
    head.pop("Content-Length")
    status, headers, body = h2_request(gw, issuer.mint(sub), "sts.amazonaws.com", method, path, head, BODY,
                                       validate=False)
    assert status == 400 and words in body, (status, body[:300])
    assert b"<Code>InvalidRequest</Code>" in body or b'"InvalidRequest"' in body, body[:300]
    time.sleep(0.3)
    assert forwarded(upstream, before_up) == [], forwarded(upstream, before_up)
    [r] = gw.records()[before_records:]
    assert (r["outcome"], r["rule"], r["status"], r["principal"]) == ("refused", "agentgate:egress", 400, sub), r


def test_http2_request_trailers_are_refused_and_the_connection_goes_on(gw, issuer, upstream):
    """An HTTP/2 request may end with trailer fields (a HEADERS frame after the body); upstream is
    spoken to in HTTP/1, where mitmproxy cannot send them: it crashed on them, and the call went
    upstream without them, recorded as forwarded. Refused with 400 like trailer fields after an
    HTTP/1 chunked body, nothing goes upstream, one record says so, and the next call on the same
    connection goes through."""
    from tests.support.raw import h2_calls

    sub = "agent-h2-trailers"
    before_up, before_records, before_log = len(upstream.requests), len(gw.records()), len(gw.log())
    head = dict(line.split(": ", 1) for line in request([CL]).split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
    head = {k.lower(): v for k, v in head.items() if k != "Content-Length"}
    [(status, headers, answer), (status2, _, answer2)] = h2_calls(gw, issuer.mint(sub), "sts.amazonaws.com", [
        ("POST", b"/", head, BODY, (("x-amz-checksum-crc32", "AAAAAA=="),)),
        ("POST", b"/", head, BODY, ()),
    ])
    assert status == 400 and b"<Code>InvalidRequest</Code>" in answer, (status, answer[:400])
    assert b"trailer fields (x-amz-checksum-crc32)" in answer and b"send them as headers" in answer, answer[:600]
    assert status2 == 200, answer2[:400]
    time.sleep(0.5)
    got = forwarded(upstream, before_up)
    assert len(got) == 1 and not any(k.lower() == "x-amz-checksum-crc32" for k, _ in got[0][2]), got
    first, second = gw.records()[before_records:]
    assert (first["principal"], first["outcome"], first["rule"], first["status"]) == (
        sub, "refused", "agentgate:egress", 400), first
    assert "trailer fields" in first["error"] and "AAAAAA" not in json.dumps(first), first
    assert (second["principal"], second["outcome"], second["status"]) == (sub, "forwarded", 200), second
    assert "has crashed" not in gw.log()[before_log:], gw.log()[before_log:]


def _gzip_naming(file_name: bytes, payload: bytes) -> bytes:
    """A gzip member whose header carries ``file_name`` (FNAME): bytes a reader that inflates the
    body drops, and one that reads the body as sent sees."""
    import struct
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(payload) + packer.flush()
    return (b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + file_name + b"\x00" + data
            + struct.pack("<II", zlib.crc32(payload), len(payload)))


@pytest.mark.parametrize("coding", ["x-gzip", "GZIP", "deflate", "gzip, gzip", "br"])
def test_a_body_in_a_coding_services_do_not_undo_is_refused_and_nothing_goes_upstream(gw, issuer, upstream, coding):
    """AWS services undo one request coding, gzip (moto: exactly 'gzip'). A query call that lists
    topics, its compressed form body naming a DeleteTopic where inflating drops it (the gzip
    header's file name), was decided as the list (sns:ListTopics, allowed) and forwarded with its
    x-gzip body, which a service that does not inflate it reads as a form naming DeleteTopic. Any
    other coding of a body read for its parameters is refused (unknown, recorded, never
    forwarded); the same body as gzip, which services inflate as the gateway does, goes through."""
    host = "sns.us-east-1.amazonaws.com"
    arn = "arn:aws:sns:us-east-1:123456789012:victim"
    body = _gzip_naming(f"&Action=DeleteTopic&TopicArn={arn}&".encode(), b"NextToken=a")
    if coding in ("deflate", "br"):
        body = b"x\x01" + body  # not what it says: refused for the coding, before it is inflated

    def call(sub: str, content_encoding: str) -> bytes:
        head = (f"POST /?Action=ListTopics&Version=2010-03-31 HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
                f"Content-Encoding: {content_encoding}\r\nX-Amz-Date: 20260101T000000Z\r\n"
                "Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/sns/aws4_request, "
                f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\nContent-Length: {len(body)}\r\n\r\n")
        return exchange(gw, issuer.mint(sub), head.encode() + body, host, timeout=10)

    sub = f"agent-coding-{re.sub(r'[^a-z]', '', coding.lower())}"
    before_up, before_records = len(upstream.requests), len(gw.records())
    answer = call(sub, coding)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:400]
    assert b"<Code>AccessDenied</Code>" in answer and b"Content-Encoding is" in answer, answer[:600]
    time.sleep(0.3)
    assert forwarded(upstream, before_up) == [], forwarded(upstream, before_up)
    new = [r for r in gw.records()[before_records:] if r["principal"] == sub]
    assert len(new) == 1, new
    assert (new[0]["action"], new[0]["decision"], new[0]["operation"]) == ("unknown", "deny", "ListTopics"), new[0]
    assert "AWS services undo gzip alone" in new[0]["reason"], new[0]["reason"]

    if coding == "x-gzip":  # the same body as gzip: inflated upstream as here, its file name dropped
        before_up = len(upstream.requests)
        answer = call(sub + "-gzip", "gzip")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:400]
        got = forwarded(upstream, before_up)
        assert len(got) == 1 and dict((k.lower(), v) for k, v in got[0][2])["content-encoding"] == "gzip", got
