"""Identity through a real gateway: each bad token is refused with a reason that names the
problem and never echoes the token, at CONNECT (transport A, 407) or as an AWS-shaped 403
(transport B); both transports must name one subject; expiry is checked on every call. A key the
gateway cannot fetch is a 503 to retry; an oidc_issuer the issuer's discovery document
contradicts, a 403 naming the value to set."""

from __future__ import annotations

import base64
import http.client
import json
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

from tests.support.gateway import Gateway
from tests.support.oidc import DISCOVERY_PATH, OIDCIssuer, new_rsa_key


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
    message = e.value.response["Error"]["Message"]
    assert "no token" in message
    # the record keeps the gateway's own words whole: nothing in them is a secret to mask, and a
    # masked value there would count as one in the report's SC-28 figures
    request_id = e.value.response["ResponseMetadata"]["RequestId"]
    [record] = [r for r in gateway.records() if r["id"] == request_id]  # the gateway's answer: its record's id
    assert record["rule"] == "agentgate:auth" and json.loads(record["masked"] or "[]") == []
    assert "agentgate:masked" not in record["response_body"], record["response_body"]
    assert "present the agent's OIDC token in the proxy URL" in record["response_body"]


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


def own_gateway(tmp_path, moto, oidc_issuer: str) -> Gateway:
    """A gateway of its own, for an issuer a test takes down or misnames."""
    return Gateway(tmp_path / "gw", issuer=oidc_issuer, upstream=moto.url,
                   aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), settings={"oidc_leeway": 1})


def aws_error(call) -> tuple[int, str, str]:
    """(HTTP status, AWS error code, message) of a call that must fail with a ClientError."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def test_a_key_rotated_in_while_the_issuer_is_down_is_a_503_until_it_is_back(tmp_path, moto):
    """The gateway cannot fetch the new key: the agent gets a 503 its SDK retries, not a 403 that
    blames the key; once the issuer answers, the key is learnt within seconds, not after the 30 s
    refetch limit; a key the issuer does not publish is a 403."""
    with OIDCIssuer() as issuer, own_gateway(tmp_path, moto, issuer.issuer) as gw:
        assert client(gw, session_token=issuer.mint("before")).get_caller_identity()["Arn"].endswith("/before")
        issuer.down = True
        new_kid = issuer.rotate()
        rotated = client(gw, session_token=issuer.mint("rotated"))
        status, code, message = aws_error(rotated.get_caller_identity)
        assert (status, code) == (503, "ServiceUnavailable")
        assert message == (
            f"agentgate cannot verify the agent's token right now: signing key {new_kid!r} is not among the "
            "issuer's keys the gateway holds, and they cannot be fetched again to look for it (cannot fetch the "
            f"issuer's keys from {issuer.jwks_uri}: HTTP 503); check that the gateway can reach the issuer; "
            "retry shortly")
        time.sleep(3.5)  # past the gateway's pause after a failed fetch: tried again, still down
        status, code, message = aws_error(rotated.get_caller_identity)
        assert (status, code) == (503, "ServiceUnavailable") and "HTTP 503); check that the gateway" in message

        issuer.down = False
        back = time.monotonic()
        while True:
            try:
                assert rotated.get_caller_identity()["Arn"].endswith("/rotated")
                break
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "ServiceUnavailable", e.response["Error"]
                assert time.monotonic() - back < 10, "the rotated key was not learnt soon after the issuer was back"
                time.sleep(0.5)

        stranger = issuer.mint("stranger", key=new_rsa_key(), kid="never-published")
        status, code, message = aws_error(client(gw, session_token=stranger).get_caller_identity)
        assert (status, code) == (403, "AccessDenied")
        assert message.startswith("the agent's token was refused: signing key 'never-published' is unknown to the issuer")

    refused = [r for r in gw.records() if r["outcome"] == "refused" and r["rule"] == "agentgate:auth"]
    assert [r["status"] for r in refused][:2] == [503, 503] and refused[-1]["status"] == 403
    assert f"signing key {new_kid!r} is not among" in refused[0]["error"]


def test_an_oidc_issuer_its_discovery_document_contradicts_is_a_403_naming_the_value_to_set(tmp_path, moto):
    """oidc_issuer with a trailing slash the issuer does not write: retrying cannot help, so the
    agent gets a 403 that names the value to set, and the gateway says so once at start-up."""
    with OIDCIssuer() as issuer:
        configured = issuer.issuer + "/"
        with own_gateway(tmp_path, moto, configured) as gw:
            warning = (f"WARNING agentgate: oidc_issuer is {configured!r}, but the issuer's discovery document at "
                       f"{issuer.issuer}{DISCOVERY_PATH} names issuer {issuer.issuer!r}: set oidc_issuer to "
                       f"{issuer.issuer!r}, exactly as the discovery document writes it; until then every call "
                       "is refused")
            deadline = time.monotonic() + 10
            while warning not in gw.log():
                assert time.monotonic() < deadline, gw.log()
                time.sleep(0.1)
            for _ in range(2):
                status, code, message = aws_error(
                    client(gw, session_token=issuer.mint("agent-1", issuer=configured)).get_caller_identity)
                assert (status, code) == (403, "AccessDenied")
                assert message.startswith("agentgate cannot verify any token until its configuration is corrected: "
                                          f"oidc_issuer is {configured!r}, but the issuer's discovery document")
                assert message.endswith(f"set oidc_issuer to {issuer.issuer!r}, exactly as the discovery document "
                                        "writes it")
            status, code, message = aws_error(client(gw, session_token=issuer.mint("agent-1")).get_caller_identity)
            assert (status, code) == (403, "AccessDenied") and "differ only in a trailing slash" in message
        assert gw.log().count("WARNING agentgate: oidc_issuer is") == 1


def test_audiences_written_with_a_space_after_the_comma_are_each_accepted(tmp_path, moto, issuer):
    """oidc_audience = "api://agentgate, agentgate", as an operator with an Entra app id URI and a
    plain audience writes it: a token for either is accepted (the gateway looked for ' agentgate',
    with its space, and refused every token for agentgate as for the wrong audience), and a token
    for neither is refused naming both as written."""
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 settings={"oidc_leeway": 1, "oidc_audience": "api://agentgate, agentgate"})
    with gw:
        for aud in ("agentgate", "api://agentgate", ["https://kubernetes.default.svc", "agentgate"]):
            token = issuer.mint("agent-aud", audience=aud)
            assert client(gw, session_token=token).get_caller_identity()["Arn"].endswith("/agent-aud"), aud
            assert client(gw, proxy_token=token).get_caller_identity()["Arn"].endswith("/agent-aud"), aud
        status, code, message = aws_error(client(gw, session_token=issuer.mint("agent-aud", audience="other"))
                                          .get_caller_identity)
        assert (status, code) == (403, "AccessDenied")
        assert message == ("the agent's token was refused: token audience 'other' does not include "
                           "'api://agentgate' or 'agentgate' (subject 'agent-aud')")
