"""A stage that raises does not let the call go on: the flow is answered with an AWS-shaped 500,
nothing goes upstream, no JIT credentials are fetched, and the call is recorded as refused by that
stage (rule `agentgate:<stage>-failure`). After the response, a stage that raises replaces the answer (it may not have been masked
or recorded). Driven in process through the real chain, in the gateway's own master, in that
master with mitmproxy's own hook dispatch (the fallback when mitmproxy changed), and in mitmweb's
master (``--web``): before the stages were guarded (``stage.guard``), the last two logged the
error and let the flow go on, an answer not masked delivered as it came."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from types import SimpleNamespace

import pytest
from mitmproxy import http, options
from mitmproxy.proxy.layers.http import (HttpConnectHook, HttpRequestHeadersHook, HttpRequestHook,
                                         HttpResponseHeadersHook, HttpResponseHook)
from mitmproxy.test import tflow

from addons import chain
from addons.core.credentials import CredentialBroker
from addons.core.identity import TokenValidator
from addons.core.policy import PolicyStore
from addons.core.store import Store
from addons.gateway import GatewayMaster, guard_hooks, web_master
from addons.settings import Settings
from addons.signer import forwardable
from tests.support.gateway import TEST_POLICY

HOST = "dynamodb.us-east-1.amazonaws.com"


class CountingBroker(CredentialBroker):
    def __init__(self):
        super().__init__(endpoint_url="http://127.0.0.1:9")  # nothing listens there
        self.asked = 0

    async def grant(self, *a, **kw):
        self.asked += 1
        return await super().grant(*a, **kw)


def get_item() -> http.Request:
    body = b'{"TableName": "t", "Key": {"id": {"S": "1"}}}'
    headers = http.Headers([(b"Host", HOST.encode()), (b"X-Amz-Target", b"DynamoDB_20120810.GetItem"),
                            (b"Content-Type", b"application/x-amz-json-1.0"),
                            (b"Authorization", b"AWS4-HMAC-SHA256 Credential=AKID/20261126/us-east-1/dynamodb/aws4_request, "
                                               b"SignedHeaders=host;x-amz-date, Signature=00"),
                            (b"X-Amz-Date", b"20261126T000000Z"), (b"Content-Length", str(len(body)).encode())])
    return http.Request(HOST, 443, b"POST", b"https", b"", b"/", b"HTTP/1.1", headers, body, None, time.time(), None)


@pytest.fixture(params=["gateway", "mitmproxy-dispatch", "mitmweb"])
def gateway_in_process(request, tmp_path, issuer, monkeypatch):
    """The chain in the gateway's own master with its own hook dispatch; in that master with
    mitmproxy's dispatch (what the gateway falls back to when mitmproxy changed); and in
    mitmweb's master (``--web``), which dispatches as mitmproxy does."""
    if request.param == "mitmproxy-dispatch":
        from addons import fastpath

        monkeypatch.setattr(fastpath, "precompute_dispatch", lambda *a, **kw: False)

    async def make():
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "test.yaml").write_text(TEST_POLICY)
        settings = Settings(oidc_issuer=issuer.issuer, upstream="http://127.0.0.1:9", db=f"sqlite:///{tmp_path}/a.db",
                            policies=str(tmp_path / "policies"), certs=str(tmp_path / "certs"),
                            keys=str(tmp_path / "keys"), console_listen="").resolved()
        store = Store(settings.db)
        store.migrate()
        store.start()
        broker = CountingBroker()
        validator = TokenValidator(settings.oidc_issuer, [settings.oidc_audience])
        opts = options.Options(confdir=settings.certs)
        # mitmweb's master, not run: its web server never listens
        m = web_master(opts, "127.0.0.1:9") if request.param == "mitmweb" else GatewayMaster(opts)
        assert getattr(m, "dispatch_precomputed", False) is (request.param == "gateway")
        stages = chain(settings, store=store, policies=PolicyStore(settings.policies), validator=validator,
                       broker=broker)
        m.addons.add(*stages)
        guard_hooks(m)  # as serve() does
        return m, stages, store, broker, validator

    loop = asyncio.new_event_loop()
    m, stages, store, broker, validator = loop.run_until_complete(make())
    client = tflow.tclient_conn()
    client.tls = True
    client.sni = HOST  # the agent's TLS, inside the tunnel, names the tunnel's host
    token = issuer.mint("agent-1", groups=["data-agents"])

    async def call(respond=True) -> http.HTTPFlow:
        connect = http.HTTPFlow(client, tflow.tserver_conn())
        connect.request = http.Request.make("CONNECT", f"https://{HOST}:443/", b"", {
            "Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()})
        connect.request.host, connect.request.port = HOST, 443
        await m.addons.handle_lifecycle(HttpConnectHook(connect))
        f = http.HTTPFlow(client, tflow.tserver_conn())
        f.request = get_item()
        await m.addons.handle_lifecycle(HttpRequestHeadersHook(f))
        await m.addons.handle_lifecycle(HttpRequestHook(f))
        if f.response is None and respond:
            f.response = http.Response.make(200, b'{"Item": {}}', {"Content-Type": "application/x-amz-json-1.0"})
            await m.addons.handle_lifecycle(HttpResponseHeadersHook(f))
        if f.response is not None:
            await m.addons.handle_lifecycle(HttpResponseHook(f))
        return f

    yield loop, call, {type(s).__name__: s for s in stages}, store, broker
    loop.run_until_complete(validator.aclose())
    store.close()
    loop.close()


def records(store: Store) -> list[dict]:
    return store.calls()


def test_a_stage_that_raises_before_upstream_refuses_the_call(gateway_in_process, monkeypatch):
    loop, call, stages, store, broker = gateway_in_process

    def broken(flow):
        raise RuntimeError("policy engine bug")

    monkeypatch.setattr(stages["Policy"], "_run", broken)
    f = loop.run_until_complete(call())
    assert f.response.status_code == 500
    body = json.loads(f.response.content)
    assert body["__type"] == "InternalFailure"
    assert "agentgate failed while handling this call (policy: RuntimeError)" in body["message"]
    assert broker.asked == 0  # no JIT credentials were fetched: the signer never ran
    assert f.request.host == HOST  # never re-targeted upstream
    [rec] = [r for r in records(store) if r["kind"] == "call"]
    assert (rec["outcome"], rec["status"], rec["rule"]) == ("refused", 500, "agentgate:policy-failure")


def test_a_stage_that_raises_after_the_response_replaces_it(gateway_in_process, monkeypatch):
    loop, call, stages, store, broker = gateway_in_process

    async def granted(*a, **kw):  # the signer's credentials, without STS
        from botocore.credentials import ReadOnlyCredentials
        return SimpleNamespace(credentials=ReadOnlyCredentials("ASIAX", "s", "t"), role_arn="arn:aws:iam::1:role/r",
                               session_id="s-1", assumed_role_arn=None, expires=time.time() + 3600)

    monkeypatch.setattr(broker, "grant", granted)

    def broken(flow):
        raise ValueError("masking bug")

    monkeypatch.setattr(stages["Masking"], "_response_work", broken)  # what its response hook calls
    f = loop.run_until_complete(call())
    assert f.response.status_code == 500
    assert b'"InternalFailure"' in f.response.content
    assert b"Item" not in f.response.content  # upstream's answer, maybe unmasked, is not delivered
    [rec] = [r for r in records(store) if r["kind"] == "call"]
    assert (rec["outcome"], rec["status"], rec["rule"]) == ("refused", 500, "agentgate:masking-failure")


def test_the_signer_forwards_only_an_allowed_call():
    from types import SimpleNamespace as NS

    allow, approve, deny = NS(decision="allow"), NS(decision="approve"), NS(decision="deny")
    call, who = NS(), NS()
    assert forwardable(call, allow, who, None)
    assert forwardable(call, approve, who, True)
    assert not forwardable(call, approve, who, None)  # held, never released
    assert not forwardable(call, deny, who, None)
    assert not forwardable(call, None, who, None)  # policy never decided
    assert not forwardable(None, allow, who, None)
    assert not forwardable(call, allow, None, None)


def test_a_gateway_without_aws_credentials_of_its_own_says_so(monkeypatch, tmp_path):
    """Not "STS could not be reached": the gateway's own credentials are what is missing."""
    from addons.core.credentials import CredentialError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    broker = CredentialBroker(endpoint_url="http://127.0.0.1:9")
    principal = SimpleNamespace(iss="https://issuer", sub="agent-1")
    binding = SimpleNamespace(role_arn="arn:aws:iam::123456789012:role/agent-role", session_policy=None,
                              web_identity=False, duration=900)
    with pytest.raises(CredentialError) as e:
        asyncio.run(broker.grant(principal, binding))
    assert str(e.value).startswith("agentgate has no AWS credentials of its own to ask STS for role "
                                   "arn:aws:iam::123456789012:role/agent-role: give the gateway's process some")
    assert e.value.unavailable
