"""Identity through a real gateway: each bad token is refused with a reason that names the
problem and never echoes the token, at CONNECT (transport A, 407) or as an AWS-shaped 403
(transport B); both transports must name one subject; expiry is checked on every call."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import rsa


def bad_tokens(issuer) -> dict[str, tuple[str, str]]:
    """case -> (token, words the reason must contain)"""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    return {
        "malformed": ("not.a.jwt-at-all", "malformed"),
        "expired": (issuer.mint("agent-1", expires_in=-120), "expired"),
        "not-yet-valid": (issuer.mint("agent-1", not_before=now + 600), "not valid"),
        "wrong-issuer": (issuer.mint("agent-1", issuer="https://elsewhere.example"), "issuer"),
        "wrong-audience": (issuer.mint("agent-1", audience="someone-else"), "audience"),
        "unknown-key": (issuer.mint("agent-1", key=stranger, kid="stranger-key"), "key"),
        "alg-none": (issuer.mint_unsigned_none("agent-1"), "none"),
        "hs256-with-public-key": (issuer.mint_hs256_with_public_key("agent-1"), "HS256"),
    }


def connect(gateway, token: str | None, host: str = "sts.amazonaws.com") -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        req = f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
        if token is not None:
            cred = base64.b64encode(f"agent:{token}".encode()).decode()
            req += f"Proxy-Authorization: Basic {cred}\r\n"
        s.sendall((req + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or (b"content-length" in data.lower() and not data.endswith(b"\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.decode(errors="replace")
    return int(head.split(" ", 2)[1]), head


def client(gateway, service="sts", *, proxy_token=None, session_token=None):
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
        aws_session_token=session_token, verify=str(gateway.ca_file),
        config=botocore.config.Config(proxies={"https": gateway.proxy_url(proxy_token)},
                                      retries={"total_max_attempts": 1}),
    )


@pytest.mark.parametrize("case", ["malformed", "expired", "not-yet-valid", "wrong-issuer", "wrong-audience",
                                  "unknown-key", "alg-none", "hs256-with-public-key"])
def test_transport_a_refused_at_connect(gateway, issuer, case):
    token, words = bad_tokens(issuer)[case]
    status, text = connect(gateway, token)
    assert status == 407
    assert words.lower() in text.lower(), text
    assert token not in text
    signature = token.split(".")[-1]
    assert not signature or signature not in text
    rec = [r for r in gateway.records() if r["kind"] == "connect" and r["error"] and words.lower() in r["error"].lower()]
    assert rec and rec[-1]["outcome"] == "refused" and rec[-1]["rule"] == "agentgate:auth", "the refusal is recorded"
    # a token whose signature verified names its subject in the reason (the issuer's word), others do not
    signed = case in ("expired", "not-yet-valid", "wrong-audience")
    assert ("(subject 'agent-1')" in rec[-1]["reason"]) is signed, rec[-1]["reason"]


@pytest.mark.parametrize("case", ["malformed", "expired", "not-yet-valid", "wrong-issuer", "wrong-audience",
                                  "unknown-key", "alg-none", "hs256-with-public-key"])
def test_transport_b_refused_with_an_aws_error(gateway, issuer, case):
    token, words = bad_tokens(issuer)[case]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(gateway, session_token=token).get_caller_identity()
    err = e.value.response["Error"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert words.lower() in err["Message"].lower(), err
    assert token not in err["Message"]
    rec = [r for r in gateway.records() if r["error"] and err["Message"][:60] in r["error"]]
    assert rec, "the refusal is recorded"
    assert rec[-1]["decision"] == "deny" and rec[-1]["rule"] == "agentgate:auth" and rec[-1]["outcome"] == "refused"


def test_no_token_at_all(gateway):
    status, text = connect(gateway, None, host="example.com")
    assert status == 403 and "allow_hosts" in text
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(gateway).get_caller_identity()
    assert "no token" in e.value.response["Error"]["Message"]


def test_both_transports_must_name_the_same_subject(gateway, issuer):
    c = client(gateway, proxy_token=issuer.mint("agent-mixed-a"), session_token=issuer.mint("agent-mixed-b"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.get_caller_identity()
    assert "different subjects ('agent-mixed-a' and 'agent-mixed-b')" in e.value.response["Error"]["Message"]
    [record] = [r for r in gateway.records() if "agent-mixed-b" in (r["error"] or "")]
    assert record["principal"] == "agent-mixed-a" and record["outcome"] == "refused"  # who holds the tunnel
    same = client(gateway, proxy_token=issuer.mint("agent-1"), session_token=issuer.mint("agent-1"))
    assert same.get_caller_identity()["Arn"].endswith("/agent-1")


def test_transport_b_alone(gateway, issuer):
    assert client(gateway, session_token=issuer.mint("agent-b")).get_caller_identity()["Arn"].endswith("/agent-b")


def test_expiry_is_checked_on_every_call_of_a_kept_alive_connection(gateway, issuer):
    token = issuer.mint("short-lived", expires_in=4)
    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, context=ctx, timeout=30)
    conn.set_tunnel("sts.amazonaws.com", 443, headers={
        "Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()})

    def call() -> tuple[int, bytes]:
        req = AWSRequest("POST", "https://sts.amazonaws.com/", data=b"Action=GetCallerIdentity&Version=2011-06-15",
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        SigV4Auth(Credentials("agentgate", "x"), "sts", "us-east-1").add_auth(req)
        conn.request("POST", "/", body=req.body, headers=dict(req.headers))
        resp = conn.getresponse()
        return resp.status, resp.read()

    status, body = call()
    assert status == 200 and b"assumed-role/agent-role/short-lived" in body
    tunnel = conn.sock
    time.sleep(6)  # exp and the gateway's 1 s leeway pass; the tunnel stays open
    status, body = call()
    assert conn.sock is tunnel, "the second call went over the same kept-alive connection"
    assert status == 403 and b"<Code>ExpiredToken</Code>" in body
    conn.close()


def test_on_behalf_of_is_recorded(gateway, issuer):
    c = client(gateway, proxy_token=issuer.mint("agent-obo", act="alice@example.com"))
    c.get_caller_identity()
    rec = [r for r in gateway.records() if r["principal"] == "agent-obo"][-1]
    assert rec["on_behalf_of"] == "alice@example.com"


def test_tokens_never_reach_the_store(gateway, issuer):
    token = issuer.mint("agent-secret-check")
    client(gateway, proxy_token=token).get_caller_identity()
    client(gateway, session_token=token).get_caller_identity()
    raw = gateway.db_path.read_bytes() + (gateway.db_path.parent / "agentgate.db-wal").read_bytes() \
        if (gateway.db_path.parent / "agentgate.db-wal").exists() else gateway.db_path.read_bytes()
    assert token.split(".")[2].encode() not in raw
    assert token.split(".")[1].encode() not in raw
