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
  - id: deleting-tables-needs-sre
    action: dynamodb:DeleteTable
    decision: approve
    approvers: {groups: [sre]}
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
                    aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), policy=MASKING_POLICY,
                    settings={"approval_hold": 3})
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


def _write(gw: WebGateway, method: str, path: str, body: object = None) -> tuple[int, str]:
    """mitmweb's API as its own page calls it to change something: with the token, and with the
    XSRF cookie and the header that must match it."""
    data = b"" if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{gw.web_port}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {gw.token}", "Content-Type": "application/json",
        "X-XSRFToken": "6f6b", "Cookie": "_mitmproxy_xsrf=6f6b"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_mitmweb_shows_calls_and_changes_nothing(web_gateway, issuer, tmp_path):
    """Whoever holds mitmweb's token can watch the calls, not steer the gateway: mitmweb's API
    refuses (403, saying why) every change: the proxy's options (ssl_insecure would stop checking
    AWS's certificates, map_remote re-point calls, save_stream_file write the flows unmasked to a
    file), its commands, and replaying, editing, duplicating, reverting, resuming, killing and
    deleting flows. Nothing changes, and the gateway serves on as before. Clear, which only empties
    mitmweb's own list (its memory), works."""
    from addons.web import NO_DUMP, READ_ONLY

    gw = web_gateway
    sts = client(gw, "sts", proxy_token=issuer.mint("web-watcher"))
    sts.get_caller_identity()
    flows = gw.api("/flows")
    flow = next(f for f in flows if f["request"]["pretty_host"].startswith("sts."))
    options = gw.api("/options")
    records = len(gw.records())
    saved = tmp_path / "flows"
    fid = flow["id"]
    attempts = [
        ("PUT", "/options", {"ssl_insecure": True}),
        ("PUT", "/options", {"map_remote": ["|.*|http://127.0.0.1:9/"]}),
        ("PUT", "/options", {"save_stream_file": str(saved)}),
        ("POST", "/options/save", None),
        ("POST", "/commands/set", {"arguments": ["ssl_insecure", "true"]}),
        ("POST", f"/flows/{fid}/replay", None),
        ("PUT", f"/flows/{fid}", {"request": {"path": "/?Action=GetSessionToken"}}),
        ("POST", f"/flows/{fid}/duplicate", None),
        ("POST", f"/flows/{fid}/revert", None),
        ("POST", f"/flows/{fid}/resume", None),
        ("POST", f"/flows/{fid}/kill", None),
        ("DELETE", f"/flows/{fid}", None),
        ("POST", "/flows/resume", None),
        ("POST", "/flows/kill", None),
    ]
    for method, path, body in attempts:
        assert _write(gw, method, path, body) == (403, READ_ONLY + "\n"), (method, path)
    # nor are the flows written out whole (the gateway's state of each call, and the credentials
    # of calls under way, with them): agentgate's own export writes the records as a flow file
    for method in ("GET", "POST"):
        assert _write(gw, method, "/flows/dump") == (403, NO_DUMP + "\n"), method

    after = gw.api("/options")
    for name in ("ssl_insecure", "map_remote", "save_stream_file", "scripts"):
        assert after[name]["value"] == options[name]["value"], name
    assert after["ssl_insecure"]["value"] is False and not saved.exists()
    now = gw.api("/flows")
    assert [f["id"] for f in now][:len(flows)] == [f["id"] for f in flows]  # none cleared, deleted or added
    assert next(f for f in now if f["id"] == fid)["request"]["path"] == flow["request"]["path"]
    assert len(gw.records()) == records  # nothing replayed or duplicated upstream
    # the gateway serves on, to AWS (its upstream) as before, and mitmweb still shows what it does
    assert sts.get_caller_identity()["Arn"].endswith("/web-watcher")
    assert len(gw.records()) == records + 1 and len(gw.api("/flows")) == len(flows) + 1
    assert gw.api("/", raw=True).startswith(b"<!")  # mitmweb's page itself
    # Clear empties mitmweb's own list, which it keeps in memory until then, and nothing else
    assert _write(gw, "POST", "/clear")[0] == 200
    assert gw.api("/flows") == [] and len(gw.records()) == records + 1
    sts.get_caller_identity()
    assert len(gw.api("/flows")) == 1 and len(gw.records()) == records + 2


def test_mitmweb_is_not_started_writable_when_its_routes_cannot_be_found():
    from addons.web import read_only

    class NotTornado:
        pass

    with pytest.raises(RuntimeError, match="refusing to start it writable"):
        read_only(NotTornado())


def test_a_call_under_way_is_shown_without_its_credentials(web_gateway, issuer):
    """A call held for approval still carries what the agent sent, its token among it (here its
    session token, transport B): mitmweb lists it, and pushes it live, as it goes, with that
    token replaced, as it is in every flow once done."""
    import threading

    gw = web_gateway
    token = issuer.mint("web-holder")
    ddb = client(gw, "dynamodb", session_token=token)
    outcome: dict = {}

    def delete() -> None:
        try:
            ddb.delete_table(TableName="held-by-web")
        except botocore.exceptions.ClientError as e:
            outcome["code"] = e.response["Error"]["Code"]

    t = threading.Thread(target=delete)
    t.start()
    held, flows, deadline = None, [], time.monotonic() + 10
    while held is None and time.monotonic() < deadline:
        flows = gw.api("/flows")
        held = next((f for f in flows if "response" not in f and dict(
            (k.lower(), v) for k, v in f["request"]["headers"]).get("x-amz-target", "").endswith(".DeleteTable")), None)
        time.sleep(0.05)
    assert held is not None, "the held call was not listed"
    headers = {k.lower(): v for k, v in held["request"]["headers"]}
    assert headers["x-amz-security-token"] == PLACEHOLDER and headers["authorization"] == PLACEHOLDER
    assert token not in json.dumps(flows) and token.split(".")[2] not in json.dumps(flows)
    t.join(30)
    assert outcome.get("code") == "ApprovalPending"  # held, then let go undecided, as without mitmweb


def test_mitmweb_is_not_started_showing_credentials_when_its_flow_description_cannot_be_found():
    from addons.web import read_only

    class NoFlowToJson:
        pass

    with pytest.raises(RuntimeError, match="showing the credentials of calls under way"):
        read_only(object(), web_app=NoFlowToJson())


def test_mitmweb_page_shows_calls_live_and_its_buttons_change_nothing(web_gateway, issuer):
    """mitmweb's own page in headless Chromium, as an operator opens it: the calls are listed, a
    new one appears without a reload (its live updates), a call's request shows with its
    credentials removed; its Replay button is refused and replays nothing."""
    from tests.test_console import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    gw = web_gateway
    ssm = client(gw, "ssm", proxy_token=issuer.mint("web-viewer"))
    ssm.describe_parameters()
    refused = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("response", lambda r: refused.append((r.request.method, r.url.split("?")[0], r.status))
                    if r.request.method != "GET" else None)
            page.goto(f"http://127.0.0.1:{gw.web_port}/?token={gw.token}")
            page.get_by_text("ssm.us-east-1.amazonaws.com").first.wait_for(timeout=15000)
            ssm.get_parameters_by_path(Path="/web-live")  # a call made with the page open
            row = page.locator("tr", has_text="ssm.us-east-1.amazonaws.com")
            page.wait_for_function("() => [...document.querySelectorAll('tr')].filter("
                                   "r => r.textContent.includes('ssm.us-east-1.amazonaws.com')).length >= 2",
                                   timeout=15000)
            records = len(gw.records())
            row.last.click()
            page.get_by_text("X-Amz-Security-Token").first.wait_for(timeout=15000)
            shown = page.content()
            assert PLACEHOLDER in shown and "ASIA" not in shown
            page.get_by_role("button", name="Replay").click()
            page.wait_for_timeout(1000)
        finally:
            browser.close()
    assert [(m, s) for m, _, s in refused] == [("POST", 403)] and refused[0][1].endswith("/replay"), refused
    assert len(gw.records()) == records  # nothing replayed


def test_mitmweb_lists_the_last_finished_calls_and_never_drops_one_under_way():
    """mitmweb keeps every flow it lists in memory: under --web its list is cut to the last
    ``WEB_KEEP`` finished flows, oldest first, so that a gateway left running with --web does not
    grow with its traffic; a flow still under way stays (mitmweb's removal would kill it), and
    one the operator cleared is not held on to."""
    from mitmproxy.addons.view import View
    from mitmproxy.test import taddons, tflow

    from addons.web import WebScrub

    view, scrub = View(), WebScrub(keep=3)
    with taddons.context(view, scrub):
        under_way = tflow.tflow(resp=True, live=True)
        finished = [tflow.tflow(resp=True, live=False) for _ in range(5)]
        view.add([under_way, *finished])
        scrub.response(under_way)  # its answer is being sent: still live
        for f in finished:
            scrub.response(f)
        # three at most: the one still sending its answer, then the last finished
        assert [f.id for f in view] == [under_way.id] + [f.id for f in finished[3:]]
        assert under_way.killable and under_way.error is None  # not killed
        under_way.live = False
        more = tflow.tflow(resp=True, live=False)
        view.add([more])
        scrub.response(more)
        assert [f.id for f in view] == [f.id for f in finished[3:]] + [more.id]
        view.clear()  # the operator's Clear: nothing is held on to for the list any more
        import gc

        del finished, more, under_way, f
        gc.collect()
        assert all(ref() is None for ref in scrub.finished)


def test_mitmweb_serves_the_agents_the_gateway_serves_without_it():
    """mitmweb's master brings mitmproxy's `block` add-on, which by default drops every client
    connecting from a global address; the gateway serves them without --web (their calls still
    need a token), and so it does with --web."""
    import asyncio

    from mitmproxy import options
    from mitmproxy.proxy.server_hooks import ClientConnectedHook
    from mitmproxy.test import tflow

    from addons.gateway import GatewayMaster, web_master

    async def connected(master, address: str) -> str | None:
        agent = tflow.tclient_conn()
        agent.peername = (address, 40000)
        await master.addons.handle_lifecycle(ClientConnectedHook(agent))
        return agent.error

    async def check() -> None:
        for make in (lambda: web_master(options.Options(), "127.0.0.1:9"), lambda: GatewayMaster(options.Options())):
            master = make()  # the master made last is the one mitmproxy's add-ons read their options from
            for address in ("8.8.8.8", "2001:4860:4860::8888", "10.1.2.3", "127.0.0.1"):
                assert await connected(master, address) is None, (type(master).__name__, address)

    asyncio.run(check())
