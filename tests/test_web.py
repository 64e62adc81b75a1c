"""`agentgate run --web`: the chain inside mitmweb. What mitmweb's REST API (/flows) shows an operator:
the calls as the agent sent and received them (a response masked for the agent is masked there too;
a secret the agent sends is not), and no credentials: the JIT signature and session token and the
agent's own token are removed once each flow is done."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import botocore.exceptions
import pytest

from addons.core.masking import AGENT_MARKER, MARKER_PREFIX, MARKER_RE
from tests.support.gateway import AGENTGATE, TEST_POLICY, Gateway, wait_port
from tests.test_identity_e2e import client

MASKING_POLICY = TEST_POLICY.replace("rules:\n", """rules:
  - id: hide-secret-values-from-agents
    action: secretsmanager:GetSecretValue
    decision: allow
    mask_for_agent: [SecretString]
""")
PLACEHOLDER = "(removed by agentgate)"


class WebGateway(Gateway):
    """A gateway started with --web, its mitmweb UI on its own port."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.web_port = self.another_port()

    def start(self) -> "WebGateway":
        if not (self.home / "agentgate.toml").exists():
            self.init()
        args = [AGENTGATE, "run", "--listen", f"127.0.0.1:{self.port}", "--upstream", self.upstream, "--web",
                "--web-listen", f"127.0.0.1:{self.web_port}", "-v"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.home)
        wait_port(self.port, proc=self.proc)
        wait_port(self.web_port, proc=self.proc)
        return self

    @property
    def token(self) -> str:
        deadline = time.time() + 10
        while time.time() < deadline:
            m = re.search(r"web: +http://127\.0\.0\.1:\d+/\?token=([0-9a-f]+)", self.log())
            if m:
                return m.group(1)
            time.sleep(0.1)
        raise AssertionError(f"no web URL in the gateway's log:\n{self.log()}")

    def api(self, path: str, token: str | None = "", raw: bool = False):
        token = self.token if token == "" else token
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            body = r.read()
        return body if raw else json.loads(body)


@pytest.fixture(scope="module")
def web_gateway(tmp_path_factory, issuer, moto):
    gw = WebGateway(tmp_path_factory.mktemp("web"), issuer=issuer.issuer, upstream=moto.url,
                    aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), policy=MASKING_POLICY)
    with gw:
        yield gw
    print(gw.log()[-4000:])


def test_mitmweb_shows_the_calls_without_credentials(web_gateway, issuer):
    gw = web_gateway
    token = issuer.mint("web-agent")
    sm = client(gw, "secretsmanager", proxy_token=token)
    sm.create_secret(Name="web-db", SecretString="hunter2-plaintext")
    value = sm.get_secret_value(SecretId="web-db")
    assert value["SecretString"] == AGENT_MARKER  # masked for the agent by policy, with no fingerprint
    transport_b = client(gw, "sts", session_token=issuer.mint("web-agent-b"))
    assert transport_b.get_caller_identity()["Arn"].endswith("/web-agent-b")
    with pytest.raises(botocore.exceptions.ClientError):
        client(gw, "iam", proxy_token=token).list_users()

    flows = gw.api("/flows")

    def find(what: str) -> tuple[dict, dict]:
        for f in flows:
            headers = {k.lower(): v for k, v in f["request"]["headers"]}
            if what in (headers.get("x-amz-target"), f["request"]["pretty_host"].split(".")[0]):
                return f, headers
        raise AssertionError(f"no flow for {what}: {[f['request']['pretty_host'] for f in flows]}")

    create, create_headers = find("secretsmanager.CreateSecret")
    get, get_headers = find("secretsmanager.GetSecretValue")
    sts, sts_headers = find("sts")
    iam, _ = find("iam")
    assert all(f["request"]["method"] != "CONNECT" for f in flows)  # tunnels are not listed as flows

    # no credentials: the JIT signature and token, and the agent's token (transport B) are removed
    for headers in (create_headers, get_headers, sts_headers):
        assert headers["authorization"] == PLACEHOLDER
        assert headers["x-amz-security-token"] == PLACEHOLDER
    everything = json.dumps(flows)
    assert "ASIA" not in everything and issuer.mint("web-agent").split(".")[0] not in everything.replace(
        PLACEHOLDER, "")

    # the response as the agent received it: masked where the policy masks it for the agent
    raw = gw.api(f"/flows/{get['id']}/response/content.data", raw=True)
    shown = json.loads(raw)
    assert shown["SecretString"] == value["SecretString"] == AGENT_MARKER and MARKER_PREFIX.encode() not in raw
    # the request as the agent sent it: a secret the agent sends is shown as it was sent
    sent = json.loads(gw.api(f"/flows/{create['id']}/request/content.data", raw=True))
    assert sent["SecretString"] == "hunter2-plaintext"
    # ... while the record keeps it masked
    records = {r["operation"]: r for r in gw.records() if r["principal"] == "web-agent"}
    assert "hunter2-plaintext" not in (records["CreateSecret"]["request_body"] or "")
    # the record's copy of the answer keeps the secret's fingerprint, as the agent's does not
    assert MARKER_RE.fullmatch(json.loads(records["GetSecretValue"]["response_body"])["SecretString"])
    assert iam["response"]["status_code"] == 403


def test_mitmweb_needs_its_token(web_gateway):
    with pytest.raises(urllib.error.HTTPError) as e:
        web_gateway.api("/flows", token=None)
    assert e.value.code == 403
    with pytest.raises(urllib.error.HTTPError):
        web_gateway.api("/flows", token="wrong")
