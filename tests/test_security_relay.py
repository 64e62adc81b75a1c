"""Requests that would have the gateway relay what it does not read: an agent's request to switch
its connection to another protocol (a WebSocket handshake, an `Upgrade` of any kind), and a
CONNECT inside a tunnel, are refused, recorded, and never reach upstream or anywhere else. After
a switch, what the connection carries would not be calls the gateway reads, decides, masks or
records. Through a real gateway, with a stand-in for AWS on loopback that switches to WebSocket
when asked (tests/support/upstream.py)."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.gateway import TEST_POLICY, Gateway
from tests.support.raw import exchange, exchanges
from tests.support.upstream import CannedUpstream

HOST = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"
# the tests' policy (nothing of it allows execute-api) and a rule allowing calls to API Gateway APIs
POLICY = TEST_POLICY + """\
  - id: invoke-apis
    action: execute-api:Invoke
    decision: allow
"""


@pytest.fixture(scope="module")
def upstream():
    with CannedUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, upstream):
    gateway = Gateway(tmp_path_factory.mktemp("websocket"), issuer=issuer.issuer, upstream=upstream.url,
                      aws_key=("AKIAWEBSOCKETTEST001", "websocket-test-secret"), policy=POLICY)
    with gateway:
        yield gateway


def handshake(path: str = "/prod", upgrade: str = "websocket") -> bytes:
    """A WebSocket handshake to an API Gateway WebSocket API, signed as an SDK signs it (with a key
    of the agent's own, which the gateway replaces)."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {"Upgrade": upgrade, "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    request = AWSRequest(method="GET", url=f"https://{HOST}{path}", headers=headers)
    SigV4Auth(Credentials("agentgate", "x"), "execute-api", "us-east-1").add_auth(request)
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}"] + [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("upgrade", ["websocket", "h2c", "WebSocket"])
def test_a_switch_of_protocol_is_refused_recorded_and_never_reaches_upstream(gw, issuer, upstream, upgrade):
    """A WebSocket handshake to an API Gateway WebSocket API that policy allows
    (execute-api:Invoke): without the refusal the gateway forwarded it, upstream switched, and
    the messages both ways passed unread and unrecorded, the record holding only the 101. Now it
    is refused with 400 in AWS's shape, saying why, recorded as refused, and nothing of it
    reaches upstream; the connection goes on, and an ordinary call on it is forwarded."""
    token = issuer.mint(f"ws-agent-{upgrade}")
    before = len(upstream.requests)
    refused, plain = exchanges(gw, token, [handshake(upgrade=upgrade), handshake().replace(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b"")], host=HOST)
    assert refused.startswith(b"HTTP/1.1 400 "), refused[:200]
    assert (f"the request asks to switch its connection to another protocol (Upgrade: {upgrade}); agentgate "
            "carries AWS calls, each read, decided and recorded").encode() in refused
    assert b"hello from upstream" not in refused + plain
    assert plain.startswith(b"HTTP/1.1 200 "), plain[:200]
    time.sleep(0.5)
    assert [(m, p) for m, p, h in upstream.requests[before:] if m == "GET"] == [("GET", "/prod")]  # the plain one
    assert all("upgrade" not in {k.lower() for k, _ in h} for _, _, h in upstream.requests[before:])
    assert upstream.upgraded == []
    records = [r for r in gw.records() if r["principal"] == f"ws-agent-{upgrade}"]
    assert [(r["action"], r["decision"], r["outcome"], r["status"]) for r in records] == [
        ("execute-api:Invoke", "deny", "refused", 400), ("execute-api:Invoke", "allow", "forwarded", 200)]
    assert records[0]["rule"] == "agentgate:egress" and "Upgrade: " + upgrade in records[0]["reason"]


def test_a_connect_inside_a_tunnel_is_refused_saying_so_and_reaches_nothing(gw, issuer, upstream):
    """A CONNECT sent inside a tunnel (to loopback, or to an AWS host) opens no tunnel within it:
    400, recorded naming the agent, with a reason that says what was refused (it said the
    request's framing was ambiguous, quoting mitmproxy's advice about its own modes), and the
    address it named is never connected to."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3)
    port = listener.getsockname()[1]
    reached: list = []

    def accept() -> None:
        try:
            reached.append(listener.accept())
        except OSError:
            pass

    waiting = threading.Thread(target=accept)
    waiting.start()
    token = issuer.mint("ws-nested")
    before = len(upstream.requests)
    for target in (f"127.0.0.1:{port}", "sts.amazonaws.com:443"):
        answer = exchange(gw, token, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nhello".encode(), host=HOST)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    waiting.join()
    listener.close()
    assert reached == [] and len(upstream.requests) == before
    records = [r for r in gw.records() if r["principal"] == "ws-nested"]
    assert [(r["method"], r["outcome"], r["status"]) for r in records] == [("CONNECT", "refused", 400)] * 2
    for r in records:
        assert r["reason"].startswith("a CONNECT inside a tunnel is refused: the tunnel carries AWS calls to the "
                                      "host it was opened to"), r["reason"]
        assert "mitmproxy" not in r["reason"] and "framing" not in r["reason"]



@pytest.mark.parametrize("field", [b"upgrade", b":protocol"])
def test_an_http2_agent_cannot_switch_protocols_either(gw, issuer, upstream, field):
    """Over HTTP/2 an Upgrade header is not HTTP/2 and an extended CONNECT's :protocol (RFC 8441)
    is not offered: mitmproxy's HTTP/2 layer ends the connection (GOAWAY), the gateway records the
    refusal naming the agent, and nothing reaches upstream."""
    from tests.support.raw import Http2ConnectionTerminated, h2_request

    sub = f"ws-h2-{field.decode().strip(':')}"
    token = issuer.mint(sub)
    before = len(upstream.requests)
    signed = ("AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/execute-api/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
    with pytest.raises(Http2ConnectionTerminated):
        h2_request(gw, token, HOST, "GET", b"/prod", {"X-Amz-Date": "20260101T000000Z", "Authorization": signed},
                   validate=False, extra=((field, b"websocket"),))
    time.sleep(0.5)
    assert len(upstream.requests) == before and upstream.upgraded == []
    [record] = [r for r in gw.records() if r["principal"] == sub]
    assert record["outcome"] == "refused" and record["status"] == 400
    assert record["reason"].startswith("HTTP/2 protocol error") and field.decode() in record["reason"]
