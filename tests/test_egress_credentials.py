"""Egress rules and JIT credentials through a real gateway."""

from __future__ import annotations

import re
import threading

import botocore.config
import botocore.exceptions
import httpx
import pytest

from tests.support.gateway import TEST_POLICY, Gateway
from tests.test_identity_e2e import client, connect


def test_metadata_loopback_and_unknown_hosts_are_refused_at_connect(gateway, issuer):
    token = issuer.mint("agent-where")
    for host, words in (("169.254.169.254", "metadata"), ("127.0.0.1", "loopback"),
                        ("localhost", "loopback"), ("example.com", "not an AWS endpoint")):
        status, text = connect(gateway, token, host=host)
        assert status == 403 and words in text, (host, text)
    rec = [r for r in gateway.records() if r["kind"] == "connect" and r["host"].startswith("169.254.169.254")]
    assert rec and rec[-1]["outcome"] == "refused"
    # each refusal names the agent whose token asked (an auditor's question: who tried the metadata address?)
    refused = [r for r in gateway.records() if r["kind"] == "connect" and r["outcome"] == "refused"
               and r["principal"] == "agent-where"]
    assert {r["host"].rsplit(":", 1)[0] for r in refused} >= {"169.254.169.254", "127.0.0.1", "localhost", "example.com"}
    # a token that is not valid leaves the refusal as it was, unnamed
    status, text = connect(gateway, issuer.mint("agent-expired", expires_in=-3600), host="example.com")
    assert status == 403 and "not an AWS endpoint" in text


def test_allowed_host_is_tunnelled_without_interception(gateway, issuer, tls_server):
    # The client trusts only the server's own certificate: it succeeds only if the gateway did not intercept.
    r = httpx.get(f"https://127.0.0.1:{tls_server.port}/", proxy=gateway.proxy_url(issuer.mint("agent-1")),
                  verify=tls_server.ssl_context(), timeout=10)
    assert r.status_code == 200 and r.text == "tunnelled"
    rec = [r for r in gateway.records() if r["kind"] == "connect" and r["outcome"] == "tunnelled"]
    assert rec and rec[-1]["principal"] == "agent-1"


def test_allowed_host_needs_proxy_credentials(gateway, tls_server):
    with pytest.raises(httpx.ProxyError):
        httpx.get(f"https://127.0.0.1:{tls_server.port}/", proxy=gateway.proxy_url(None),
                  verify=tls_server.ssl_context(), timeout=10)


def _issued(gateway, sub: str) -> int:
    return len(re.findall(rf"issued credentials for {re.escape(sub)} as", gateway.log()))


def test_one_sts_call_per_principal_and_role(gateway, issuer):
    c = client(gateway, proxy_token=issuer.mint("sts-counter"))
    for _ in range(50):
        c.get_caller_identity()
    assert _issued(gateway, "sts-counter") == 1


def test_concurrent_first_calls_share_one_sts_call(gateway, issuer):
    token = issuer.mint("sts-concurrent")
    errors = []

    def call():
        try:
            client(gateway, proxy_token=token).get_caller_identity()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _issued(gateway, "sts-concurrent") == 1


def test_sts_failure_is_an_aws_error_and_one_log_line(tmp_path, issuer, moto):
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, "wrong-secret")) as gw:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client(gw, proxy_token=issuer.mint("agent-1")).get_caller_identity()
        msg = e.value.response["Error"]["Message"]
        assert "could not obtain credentials" in msg and "agent-role" in msg
        assert len(re.findall(r"no credentials for agent-1", gw.log())) == 1


def test_web_identity_role_uses_the_agents_own_token(tmp_path, issuer, moto):
    # moto answers 500 to any unsigned request while its authentication is on, and
    # AssumeRoleWithWebIdentity is unsigned; the credentials it issues still name the role session.
    moto.disable_auth()
    policy = TEST_POLICY.replace("    duration: 1h\n", "    duration: 1h\n    web_identity: true\n")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), policy=policy) as gw:
        try:
            arn = client(gw, proxy_token=issuer.mint("wi-agent")).get_caller_identity()["Arn"]
        finally:
            moto.enable_auth()
        assert arn.endswith("assumed-role/agent-role/wi-agent")
        assert "issued credentials for wi-agent" in gw.log()
