"""Faults around a running gateway, each through a real gateway process with boto3 as the agent
(retries capped at one attempt, so what the agent sees is the gateway's own answer):

- upstream never answers: the gateway closes the upstream connection after ``upstream_timeout``
  (counted from the end of the request body, so a slow upload is not cut), the agent gets an
  AWS-shaped 502 (BadGateway) whose message says why, as the record does, and that AWS may have
  carried the call out; a slow answer within the bound still arrives;
- upstream resets the connection: the same 502 and a failed record (which says 502, as the agent got);
- upstream answers 500: the agent gets AWS's own error and the record keeps the status;
- STS unavailable (connection reset, or 503): the agent gets an AWS-shaped 503 ServiceUnavailable
  that names STS, principals whose credentials are cached keep working, and calls go through again
  once STS is back, without a restart;
- the issuer's JWKS endpoint down: tokens signed with a cached key keep working until the keys'
  cache lifetime (``oidc_jwks_cache``), then calls are refused with a 503 that says why, also on a
  connection opened before; a token with an unknown key id is refused at once; calls go through
  again once the issuer is back.

Each fault leaves exactly one record per call. Upstream closing the connection without an answer,
and the agent hanging up while upstream is slow, are in test_recording_e2e.py; the store failing
(PostgreSQL down, SQLite on a full disk) in test_store_faults.py; faults under load in
test_faults_load.py.
"""

from __future__ import annotations

import datetime
import http.server
import io
import json
import re
import socket
import struct
import subprocess
import threading
import time
import uuid

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.gateway import AGENTGATE, BIN, Gateway
from tests.support.oidc import OIDCIssuer, new_rsa_key
from tests.test_recording_e2e import GATEWAY_KEY, agent, records, settled

UPSTREAM_TIMEOUT = 2.0


# -- an upstream that misbehaves on cue --------------------------------------------------------------

STS_ANSWER = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIAFAULTYUPSTREAM01</AccessKeyId><SecretAccessKey>faulty-secret</SecretAccessKey>
<SessionToken>faulty-session-token</SessionToken><Expiration>{exp}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROAFAULTY:{session}</AssumedRoleId>
<Arn>arn:aws:sts::123456789012:assumed-role/agent-role/{session}</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></AssumeRoleResponse>"""

STS_UNAVAILABLE = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Receiver</Type>
<Code>ServiceUnavailable</Code><Message>Service is unable to handle request.</Message></Error>
<RequestId>{rid}</RequestId></ErrorResponse>"""

S3_INTERNAL_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message>
<RequestId>{rid}</RequestId></Error>"""


BIG_PATTERN = bytes(range(251)) * 4096  # big-<MiB>'s content repeats it (a prime length: a cut shows)


class FaultyUpstream:
    """AWS on loopback, misbehaving on cue. STS AssumeRole answers according to ``sts``: "ok",
    "reset" (the connection is reset) or "503" (ServiceUnavailable). Other requests by the last
    segment of their path:

        hang-<S>     reads the request, answers nothing for S seconds, then resets
        slow-<S>     answers 200 after S seconds
        reset-<x>    resets the connection (RST) without answering
        error500-<x> answers 500 InternalError
        big-<N>      answers 200 with N MiB (``BIG_PATTERN`` repeated)
        anything     200 (JSON for X-Amz-Target calls, XML otherwise)
    """

    def __init__(self) -> None:
        self.sts = "ok"
        self.released = threading.Event()  # ends every hang at once (teardown)
        self.calls: list[tuple[str, str]] = []  # (kind, path): "sts" or "data"
        self.request_ids: dict[str, str] = {}  # path -> the request id of its answer
        self.body_seconds: dict[str, float] = {}  # path -> how long its request body took to arrive
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def data_calls(self, name: str) -> int:
        return sum(1 for kind, path in self.calls if kind == "data" and path.endswith(name))

    def __enter__(self) -> "FaultyUpstream":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultyUpstream

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        rid = str(uuid.uuid4())
        self.owner.request_ids[self.path] = rid
        body = body.replace(b"{rid}", rid.encode())
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-amzn-requestid", rid)
        self.send_header("x-amz-request-id", rid)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()  # with a zero linger: RST, not FIN

    def _answer(self) -> None:
        started = time.monotonic()
        body = self._body()
        up = self.owner
        up.body_seconds[self.path] = time.monotonic() - started
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if b"Action=AssumeRole" in body:
            up.calls.append(("sts", self.path))
            if up.sts == "reset":
                return self._reset()
            if up.sts == "503":
                return self._send(503, STS_UNAVAILABLE.encode(), "text/xml")
            session = (re.search(rb"RoleSessionName=([^&]+)", body) or [b"", b"agent"])[1].decode()
            exp = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return self._send(200, STS_ANSWER.format(exp=exp, session=session, rid="{rid}").encode(), "text/xml")
        up.calls.append(("data", self.path))
        if name.startswith("hang-"):
            up.released.wait(float(name[5:]))
            return self._reset()
        if name.startswith("slow-"):
            up.released.wait(float(name[5:]))
            return self._send(200, b"<ok/>", "application/xml")
        if name.startswith("big-"):  # big-<MiB>: an object of that many MiB, each byte its offset mod 251
            return self._send(200, BIG_PATTERN * (int(name[4:]) * (1 << 20) // len(BIG_PATTERN)),
                              "application/octet-stream")
        if name.startswith("reset-"):
            return self._reset()
        if name.startswith("error500-"):
            return self._send(500, S3_INTERNAL_ERROR.encode(), "application/xml")
        if self.headers.get("x-amz-target"):
            return self._send(200, b'{"TableNames": []}', "application/x-amz-json-1.0")
        return self._send(200, b"<ok/>", "application/xml")


@pytest.fixture(scope="module")
def upstream():
    with FaultyUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, issuer, upstream):
    """A gateway on SQLite whose upstream (and STS) is the faulty one, with a short upstream_timeout."""
    home = tmp_path_factory.mktemp("faults")
    gw = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"upstream_timeout": UPSTREAM_TIMEOUT})
    gw.db_url, gw.sent = f"sqlite:///{home / 'agentgate.db'}", []
    with gw:
        yield gw
    print(gw.log()[-3000:])


def error_of(call) -> tuple[int, str, str, float]:
    """(HTTP status, AWS error code, message, seconds) of a call that must fail with a ClientError."""
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    took = time.monotonic() - started
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"], took


def request_id_of(call) -> str:
    """The request id of the ClientError a call must fail with (botocore's RequestId)."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["ResponseMetadata"]["RequestId"]


def only_record(gw, sub: str, quiet: float = 0.3) -> dict:
    [r] = settled(gw, lambda r: r["principal"] == sub, quiet=quiet)
    return r


# -- upstream faults ---------------------------------------------------------------------------------


def test_upstream_that_never_answers_is_cut_at_upstream_timeout(faulty, issuer, upstream):
    sub, s3 = agent(faulty, issuer, "hung", "s3", read_timeout=30)
    status, code, message, took = error_of(lambda: s3.get_object(Bucket="faults", Key="hang-60"))
    assert (status, code) == (502, "BadGateway")  # AWS-shaped, and a 502: SDKs retry it
    assert message == (f"agentgate got no answer from faults.s3.amazonaws.com (upstream did not answer within "
                       f"{UPSTREAM_TIMEOUT:g} s (upstream_timeout); agentgate closed the upstream connection); AWS may "
                       "have carried the call out before the connection broke: check before retrying a call that is "
                       "not safe to repeat"), message
    assert UPSTREAM_TIMEOUT <= took < UPSTREAM_TIMEOUT + 5, f"answered after {took:.1f} s"
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["decision"], r["action"]) == ("failed", 502, "allow", "s3:GetObject")
    assert r["error"] == (f"upstream did not answer within {UPSTREAM_TIMEOUT:g} s (upstream_timeout); "
                          "agentgate closed the upstream connection")
    assert "upstream did not answer GET faults.s3.amazonaws.com/hang-60 within 2 s" in faulty.log()
    assert s3.get_object(Bucket="faults", Key="after-the-hang")["Body"].read() == b"<ok/>"  # the agent goes on


def test_a_slow_answer_within_upstream_timeout_arrives(faulty, issuer):
    sub, s3 = agent(faulty, issuer, "slow", "s3", read_timeout=30)
    assert s3.get_object(Bucket="faults", Key=f"slow-{UPSTREAM_TIMEOUT / 2:g}")["Body"].read() == b"<ok/>"
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["error"]) == ("forwarded", 200, None)


class SlowBody(io.BytesIO):
    """An upload body the agent sends slowly: 64 KiB every 0.25 s."""

    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.25)
        return super().read(65536 if size is None or size < 0 else min(size, 65536))


def test_upstream_timeout_counts_from_the_end_of_the_upload(faulty, issuer, upstream):
    """Sending the body takes longer than upstream_timeout; upstream answers at once after it."""
    sub, s3 = agent(faulty, issuer, "slow-upload", "s3", read_timeout=30)
    size = 16 * 65536  # 16 pieces: about 4 s to send
    started = time.monotonic()
    s3.put_object(Bucket="faults", Key="upload-taking-long", Body=SlowBody(b"u" * size))
    assert time.monotonic() - started > UPSTREAM_TIMEOUT + 1
    assert upstream.body_seconds["/upload-taking-long"] > UPSTREAM_TIMEOUT  # the body streamed through
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["action"], r["error"]) == ("forwarded", 200, "s3:PutObject", None)
    assert r["request_body_size"] and r["request_body_size"] >= size


def test_upstream_reset(faulty, issuer, upstream):
    sub, s3 = agent(faulty, issuer, "reset", "s3")
    status, code, message, took = error_of(lambda: s3.get_object(Bucket="faults", Key=f"reset-{sub}"))
    assert (status, code) == (502, "BadGateway") and took < 5
    assert message.startswith("agentgate got no answer from faults.s3.amazonaws.com (server closed connection); "
                              "AWS may have carried the call out"), message
    assert upstream.data_calls(f"reset-{sub}") == 1
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["decision"], r["action"]) == ("failed", 502, "allow", "s3:GetObject")
    assert r["error"] == "server closed connection"


def test_the_request_id_of_a_502_the_gateway_answered_finds_its_record(faulty, issuer, upstream):
    """The 502 the gateway answers itself when upstream breaks or does not answer in time carries the
    call's record id as its request id (as a refusal does), so `agentgate calls show REQUESTID`
    finds it; the record does not take it for AWS's (AWS never answered), on HTTP/1 and HTTP/2."""
    from tests.support.raw import h2_request, s3_signed

    sub, s3 = agent(faulty, issuer, "request-id", "s3", read_timeout=30)
    reset = request_id_of(lambda: s3.get_object(Bucket="faults", Key=f"reset-{sub}"))
    timed_out = request_id_of(lambda: s3.get_object(Bucket="faults", Key="hang-60"))
    signed = s3_signed("GET", f"https://faults.s3.amazonaws.com/reset-h2-{sub}")
    status, headers, _ = h2_request(faulty, issuer.mint(sub), "faults.s3.amazonaws.com", "GET",
                                    f"/reset-h2-{sub}".encode(), signed)
    assert status == 502
    over_h2 = headers["x-amz-request-id"]
    assert len({reset, timed_out, over_h2}) == 3
    settled(faulty, lambda r: r["principal"] == sub, at_least=3)
    for request_id, key in ((reset, f"reset-{sub}"), (timed_out, "hang-60"), (over_h2, f"reset-h2-{sub}")):
        shown = json.loads(faulty.cli("calls", "show", request_id, "--json").stdout)
        assert (shown["id"], shown["principal"], shown["outcome"], shown["status"], shown["aws_request_id"]) == (
            request_id, sub, "failed", 502, None), shown
        assert shown["url"].endswith(f"/{key}"), shown["url"]


def test_upstream_reset_answers_an_http2_agent_aws_shaped_too(faulty, issuer, upstream):
    """An agent whose client speaks HTTP/2 to the gateway (curl, the Go and Rust SDKs do when it is
    offered) gets the same AWS-shaped 502 on its stream, not mitmproxy's HTML page."""
    from tests.support.raw import h2_request, s3_signed

    sub = f"h2-reset-{uuid.uuid4().hex[:8]}"
    signed = s3_signed("GET", f"https://faults.s3.amazonaws.com/reset-{sub}")
    status, headers, body = h2_request(faulty, issuer.mint(sub), "faults.s3.amazonaws.com", "GET",
                                       f"/reset-{sub}".encode(), signed)
    assert status == 502 and headers["content-type"] == "application/xml", (status, headers, body[:300])
    assert b"<Code>BadGateway</Code>" in body
    assert b"agentgate got no answer from faults.s3.amazonaws.com (server closed connection)" in body
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["error"], r["action"]) == ("failed", 502, "server closed connection",
                                                                   "s3:GetObject")


def test_an_http2_agent_that_cancels_its_call_is_recorded_as_gone(faulty, issuer, upstream):
    """An HTTP/2 agent gives up on one call by resetting its stream (CANCEL: a Go SDK's cancelled
    context does that) and keeps its connection for the next calls: the record says the client
    left, not that upstream failed."""
    from tests.support.raw import h2_cancel, s3_signed

    sub = f"h2-cancel-{uuid.uuid4().hex[:8]}"
    signed = s3_signed("GET", f"https://faults.s3.amazonaws.com/{sub}/slow-2")
    h2_cancel(faulty, issuer.mint(sub), "faults.s3.amazonaws.com", "GET", f"/{sub}/slow-2".encode(),
              signed, after=0.5, linger=3.0)
    r = only_record(faulty, sub)
    assert (r["outcome"], r["action"]) == ("client_gone", "s3:GetObject"), r


def test_an_http2_protocol_error_beside_a_call_in_flight_keeps_the_agents_header_values_out(faulty, issuer,
                                                                                              upstream):
    """A request whose header breaks HTTP/2's rules (a value with a space around it) on a connection
    with another call in flight: the gateway ends the connection; the call in flight is recorded
    with the reason, which names the rule broken but not the header's value (it may be a token)."""
    import h2.events
    from tests.support.raw import _h2_connection, _h2_head, s3_signed

    sub = f"h2-beside-{uuid.uuid4().hex[:8]}"
    secret = f"session-token-{uuid.uuid4().hex}"
    host = "faults.s3.amazonaws.com"
    signed = s3_signed("GET", f"https://{host}/{sub}/slow-2")
    tls, conn = _h2_connection(faulty, issuer.mint(sub), host, validate=False)
    try:
        conn.send_headers(1, _h2_head(host, "GET", f"/{sub}/slow-2".encode(), signed),
                          end_stream=True)
        tls.sendall(conn.data_to_send())
        time.sleep(0.5)  # the first call is upstream now
        conn.send_headers(3, [*_h2_head(host, "GET", b"/other", signed),
                              (b"x-amz-security-token", f" {secret}".encode())], end_stream=True)
        tls.sendall(conn.data_to_send())
        tls.settimeout(10)
        ended = None
        while ended is None:
            data = tls.recv(65536)
            assert data, "the gateway closed the connection without GOAWAY"
            ended = next((e for e in conn.receive_data(data) if isinstance(e, h2.events.ConnectionTerminated)), None)
    finally:
        tls.close()
    assert ended.error_code == 1 and secret.encode() not in (ended.additional_data or b"")
    r = only_record(faulty, sub, quiet=1.0)
    assert r["action"] == "s3:GetObject" and "surrounded by whitespace (the value is not kept)" in r["error"], r
    assert secret not in json.dumps(r) and secret not in faulty.log()


def test_upstream_500(faulty, issuer, upstream):
    sub, s3 = agent(faulty, issuer, "error500", "s3")
    key = f"error500-{sub}"
    status, code, message, _ = error_of(lambda: s3.get_object(Bucket="faults", Key=key))
    assert (status, code, message) == (500, "InternalError", "We encountered an internal error. Please try again.")
    r = only_record(faulty, sub)
    assert (r["outcome"], r["status"], r["decision"], r["error"]) == ("forwarded", 500, "allow", None)
    assert r["aws_request_id"] == upstream.request_ids[f"/{key}"]  # the record names AWS's own request


# -- STS unavailable ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sts", ["reset", "503"])
def test_sts_unavailable_is_a_503_and_recovers(faulty, issuer, upstream, sts):
    warm_sub, warm = agent(faulty, issuer, "sts-warm", "dynamodb")
    warm.list_tables()  # this principal's credentials are cached from now on
    sub, ddb = agent(faulty, issuer, f"sts-{sts}", "dynamodb")
    upstream.sts = sts
    try:
        data_before = upstream.data_calls("/")
        status, code, message, took = error_of(ddb.list_tables)
        assert (status, code) == (503, "ServiceUnavailable") and took < 10
        assert message.startswith("agentgate could not obtain credentials: STS ")
        assert "arn:aws:iam::123456789012:role/agent-role" in message and message.endswith("; retry shortly")
        assert warm.list_tables()["TableNames"] == []  # cached credentials need no STS
        assert upstream.data_calls("/") == data_before + 1  # only the warm principal's call went upstream
    finally:
        upstream.sts = "ok"
    assert ddb.list_tables()["TableNames"] == []  # STS is back: no restart needed
    refused, forwarded = settled(faulty, lambda r: r["principal"] == sub, at_least=2, quiet=0.3)
    assert (refused["outcome"], refused["status"], refused["decision"], refused["rule"]) == \
        ("refused", 503, "deny", "agentgate:signer")
    assert refused["error"] == f"ServiceUnavailable: {message}" and refused["action"] == "dynamodb:ListTables"
    assert (forwarded["outcome"], forwarded["status"]) == ("forwarded", 200)
    assert [r["outcome"] for r in records(faulty, principal=warm_sub)] == ["forwarded", "forwarded"]
    assert faulty.log().count(f"ERROR agentgate.signer: no credentials for {sub}: STS ") == 1


def test_credentials_due_for_renewal_are_used_while_sts_cannot_answer(tmp_path, issuer, upstream):
    """Credentials in their renewal window (credential_refresh_margin before they expire) are still
    good: while STS cannot answer, calls go on with them, and STS is asked again after a pause, not
    on every call (a principal in its last 5 minutes was refused and STS asked twice per call)."""
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"credential_refresh_margin": 3597})  # the role's 1 h: due for renewal after 3 s
    gw.db_url, gw.sent = f"sqlite:///{tmp_path / 'gw' / 'agentgate.db'}", []
    with gw:
        sub, ddb = agent(gw, issuer, "sts-renewal", "dynamodb")
        assert ddb.list_tables()["TableNames"] == []
        asked = lambda: sum(1 for kind, _ in upstream.calls if kind == "sts")  # noqa: E731
        first = asked()
        upstream.sts = "503"
        try:
            time.sleep(3.5)
            assert ddb.list_tables()["TableNames"] == [] and ddb.list_tables()["TableNames"] == []
            failed = asked()
            assert failed > first  # it tried to renew
            assert ddb.list_tables()["TableNames"] == []
            assert asked() == failed  # and does not ask again on every call
            assert f"could not renew credentials for {sub} as arn:aws:iam::123456789012:role/agent-role" in gw.log(), gw.log()[-2000:]
        finally:
            upstream.sts = "ok"
        time.sleep(2.5)
        assert ddb.list_tables()["TableNames"] == []
        assert asked() > failed  # renewed once STS answers
        assert {r["outcome"] for r in records(gw, principal=sub)} == {"forwarded"}


# -- the issuer's JWKS endpoint down -----------------------------------------------------------------

JWKS_CACHE = 5.0


def client_with(gw, token: str, service: str = "dynamodb", *, transport: str = "A"):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        aws_session_token=token if transport == "B" else None, verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token if transport == "A" else None)},
                                                      retries={"total_max_attempts": 1}))


def test_jwks_down_cached_keys_work_until_their_lifetime_then_calls_are_refused(tmp_path, upstream):
    with OIDCIssuer() as issuer:
        gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                     settings={"oidc_jwks_cache": JWKS_CACHE})
        gw.db_url = f"sqlite:///{gw.db_path}"
        with gw:
            started = time.monotonic()
            kept = client_with(gw, issuer.mint("kept-alive"))  # its connection stays open throughout
            kept.list_tables()
            fetched_by = time.monotonic()  # the gateway fetched the keys in between
            issuer.down = True  # discovery and JWKS answer 503 from now on

            # within the keys' lifetime: tokens signed with a cached key work, old and new alike
            kept.list_tables()
            client_with(gw, issuer.mint("new-within-lifetime"), transport="B").list_tables()
            # a key the cache does not hold cannot be looked up: 503, to be retried, not a 403 blaming the key
            stranger = issuer.mint("stranger", key=new_rsa_key(), kid="rotated-in")
            status, code, message, took = error_of(client_with(gw, stranger, transport="B").list_tables)
            assert (status, code) == (503, "ServiceUnavailable") and took < 3  # refused at once, not hung
            assert "signing key 'rotated-in' is not among the issuer's keys the gateway holds" in message
            assert message.endswith(f"(cannot fetch the issuer's keys from {issuer.jwks_uri}: HTTP 503); check that "
                                    "the gateway can reach the issuer; retry shortly")
            assert time.monotonic() - started < JWKS_CACHE, "too slow to check within the keys' lifetime"

            # past it: refused, on the connection opened before too, with the reason
            time.sleep(max(0.0, fetched_by + JWKS_CACHE + 0.3 - time.monotonic()))
            status, code, message, took = error_of(kept.list_tables)
            assert (status, code) == (503, "ServiceUnavailable") and took < 3
            assert message.startswith("agentgate cannot verify the agent's token right now: the issuer's keys, fetched ")
            assert f"s ago, are past their cache lifetime of {JWKS_CACHE:g} s and cannot be fetched again (cannot fetch " in message
            assert message.endswith("HTTP 503); check that the gateway can reach the issuer; retry shortly")
            with pytest.raises(botocore.exceptions.ProxyConnectionError):  # a new connection: 407 at CONNECT
                client_with(gw, issuer.mint("new-past-lifetime")).list_tables()
            status, code, _, _ = error_of(client_with(gw, issuer.mint("b-past-lifetime"), transport="B").list_tables)
            assert (status, code) == (503, "ServiceUnavailable")

            issuer.down = False  # back: the keys are fetched again on a later call, no restart
            refused_while_down = 2  # kept's call and b-past-lifetime's, above
            deadline = time.monotonic() + 15
            while True:
                try:
                    kept.list_tables()
                    break
                except botocore.exceptions.ClientError as e:
                    assert e.response["Error"]["Code"] == "ServiceUnavailable"
                    refused_while_down += 1
                    assert time.monotonic() < deadline, "the gateway did not recover when the issuer came back"
                    time.sleep(0.5)
            client_with(gw, issuer.mint("after-recovery")).list_tables()

        # one record per call; a refused token names no principal, its connection does
        rs = records(gw)
        kept_rs = [r for r in rs if r["principal"] == "kept-alive"]
        assert [r["outcome"] for r in kept_rs] == ["forwarded"] * 3
        stale = [r for r in rs if r["kind"] == "call" and r["outcome"] == "refused" and "cache lifetime" in r["error"]]
        assert len(stale) == refused_while_down
        assert {(r["status"], r["decision"], r["rule"], r["principal"]) for r in stale} == {(503, "deny", "agentgate:auth", None)}
        assert "past their cache lifetime of 5 s" in stale[0]["error"]
        assert stale[0]["client"] == kept_rs[0]["client"]  # refused on the connection opened before the outage
        for sub in ("new-within-lifetime", "after-recovery"):
            assert [r["outcome"] for r in rs if r["principal"] == sub] == ["forwarded"]
        unknown = [r for r in rs if r["error"] and "'rotated-in' is not among" in r["error"]]
        assert [(r["outcome"], r["status"], r["rule"]) for r in unknown] == [("refused", 503, "agentgate:auth")]
        connects = [r for r in rs if r["kind"] == "connect" and r["outcome"] == "refused"]
        assert [r["status"] for r in connects] == [407] and "past their cache lifetime" in connects[0]["error"]
        assert len(rs) == 2 + 1 + 1 + 1 + refused_while_down + 1 + 1  # kept x2, new, rotated-in, 407, refused, kept, after


# -- the settings these faults use -------------------------------------------------------------------


@pytest.mark.parametrize("name,value,says", [
    ("upstream_timeout", "-1", "upstream_timeout must be a number of seconds (0 for no bound), not -1"),
    ("upstream_timeout", "inf", "upstream_timeout must be a number of seconds (0 for no bound), not inf"),
    ("oidc_jwks_cache", "0", "oidc_jwks_cache must be a number of seconds above 0, not 0"),
])
def test_a_bad_fault_setting_is_one_line_and_no_start(tmp_path, name, value, says):
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "AGENTGATE_HOME": str(tmp_path),
           f"AGENTGATE_{name.upper()}": value}
    p = subprocess.run([AGENTGATE, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr.strip()) == (1, f"Error: {says}")
