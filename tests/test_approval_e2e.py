"""Approvals through real gateways: boto3 calls held for a human and released by an approval made
with the command line, during the hold and after it (the retry path, once); denial; expiry; an
approval releasing nobody else's call; who may approve; 50 held calls beside unrelated traffic; a
restart while calls are held; access grants."""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest

from addons.core.store import Store
from tests.support.gateway import Gateway, free_port

POLICY = """\
version: 1
default: deny
roles:
  - principal: {groups: [data-agents]}
    role_arn: arn:aws:iam::123456789012:role/agent-role
  - id: elevated
    principal: {groups: [nobody-has-this-group]}
    role_arn: arn:aws:iam::123456789012:role/agent-role
rules:
  - id: everyday
    action: ["sts:GetCallerIdentity", "s3:ListAllMyBuckets", "s3:ListBucket", "s3:CreateBucket", "s3:PutObject",
             "s3:GetObject"]
    decision: allow
  - id: deleting-needs-sre
    action: s3:DeleteObject
    decision: approve
    approvers: {groups: [sre]}
    expires: 2m
    reason: deleting cannot be undone
  - id: secrets-need-sre
    action: secretsmanager:PutSecretValue
    decision: approve
    approvers: {groups: [sre]}
  - id: untagging-is-quick
    action: s3:DeleteObjectTagging
    decision: approve
    approvers: {groups: [sre]}
    expires: 2s
    reason: tags drive retention
"""

BUCKET = "approvals-bucket"


def start_gateway(home: Path, issuer, moto, **settings) -> Gateway:
    settings.setdefault("console_listen", f"127.0.0.1:{free_port()}")
    gw = Gateway(home, issuer=issuer.issuer, upstream=moto.url, policy=POLICY, settings=settings,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
    return gw.start()


class WebhookReceiver:
    """A loopback Slack-style webhook that answers slowly, and 500 to the first two posts about
    each approval."""

    def __init__(self, delay: float = 0.2, failures: int = 2) -> None:
        import http.server

        self.posts: list[tuple[float, int, dict]] = []  # (time, status answered, body)
        self.delay, self.failures = delay, failures
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                approval = body.get("agentgate", {}).get("approval", {}).get("id")
                event = body.get("agentgate", {}).get("event")
                earlier = [p for p in receiver.posts if p[2].get("agentgate", {}).get("approval", {}).get("id") == approval
                           and p[2]["agentgate"]["event"] == event]
                status = 500 if len(earlier) < receiver.failures else 200
                receiver.posts.append((time.time(), status, body))
                time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def about(self, approval_id: str, event: str = "requested") -> list[tuple[float, int, dict]]:
        return [p for p in self.posts if p[2]["agentgate"]["approval"]["id"] == approval_id
                and p[2]["agentgate"]["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, issuer, moto, webhook):
    """Two gateways, started side by side: one holds calls for 1.5 s (the retry path) and posts to
    a webhook, the other holds them for 20 s (approvals during the hold)."""
    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(start_gateway, tmp_path_factory.mktemp("short"), issuer, moto, approval_hold=1.5,
                            webhook_url=webhook.url)
        long = pool.submit(start_gateway, tmp_path_factory.mktemp("long"), issuer, moto, approval_hold=20)
        started = [short.result(), long.result()]
    try:
        yield started
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture(scope="module")
def short_hold(gateways):
    return gateways[0]


@pytest.fixture(scope="module")
def long_hold(gateways):
    return gateways[1]


def s3(gw: Gateway, token: str, **config):
    config.setdefault("retries", {"total_max_attempts": 1})
    return boto3.client("s3", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)}, **config))


def held(call) -> tuple[str, str, str]:
    """(code, message, approval id) of a call that the gateway refused."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    err = e.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPHeaders"].get("x-agentgate-approval")


def token_file(gw: Gateway, issuer, sub: str, groups=("sre",), **claims) -> str:
    path = gw.home / f"{sub}-{'-'.join(groups)}.jwt"
    path.write_text(issuer.mint(sub, groups=list(groups), **claims))
    return str(path)


def approve(gw: Gateway, issuer, approval_id: str, sub: str = "alice", groups=("sre",), *extra: str, check=True):
    return gw.cli("approvals", "approve", approval_id, "--token-file", token_file(gw, issuer, sub, groups), *extra,
                  check=check)


def console(gw: Gateway, token: str | None = None) -> httpx.Client:
    """The gateway's console API, as the local admin (or the holder of ``token``)."""
    token = token or (gw.home / "keys" / "admin.token").read_text().strip()
    return httpx.Client(base_url=f"http://{gw.settings['console_listen']}", trust_env=False,
                        headers={"authorization": f"Bearer {token}"})


def signed_out_on_both(first: httpx.Client, second: httpx.Client, issuer) -> None:
    """Sign in through ``first``'s console and out through it again: ``second`` (another replica's
    or worker's console) honoured the session before, and both refuse it after, reads and decisions."""
    session = first.post("/api/login", json={"token": issuer.mint("alice", groups=["sre"])}).json()["session"]
    signed_in = {"authorization": f"Bearer {session}"}
    assert second.get("/api/state", headers=signed_in).status_code == 200  # one signature for both
    assert first.post("/api/logout", json={}, headers=signed_in).json() == {"ok": True}
    for c in (first, second):
        r = c.get("/api/state", headers=signed_in)
        assert r.status_code == 401 and r.json()["error"] == "the console session has ended: sign in again", (c, r.text)
        r = c.post("/api/approvals/ap-000000000000/approve", json={"reason": "after signing out"}, headers=signed_in)
        assert r.status_code == 401, r.text


def pending(gw: Gateway) -> list[dict]:
    with console(gw) as c:
        r = c.get("/api/state")
    assert r.status_code == 200, r.text
    return r.json()["pending"]


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def bucket(short_hold, long_hold, issuer):
    s3(short_hold, issuer.mint("setup")).create_bucket(Bucket=BUCKET)
    return BUCKET


def record_of(gw: Gateway, approval_id: str, outcome: str | None = None) -> list[dict]:
    return [r for r in gw.records() if r["approval_id"] == approval_id and (outcome is None or r["outcome"] == outcome)]


# -- during the hold ----------------------------------------------------------------------------------


def test_a_held_call_is_released_by_an_approval_during_the_hold(long_hold, issuer, bucket):
    gw = long_hold
    client = s3(gw, issuer.mint("agent-1", act="bob"))
    result = {}

    def agent():
        started = time.time()
        result["status"] = client.delete_object(Bucket=bucket, Key="during")["ResponseMetadata"]["HTTPStatusCode"]
        result["done"] = time.time()
        result["took"] = result["done"] - started

    t = threading.Thread(target=agent)
    t.start()
    asked = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{bucket}/during"]])[0]
    assert asked["principal"] == "agent-1" and asked["on_behalf_of"] == "bob" and asked["action"] == "s3:DeleteObject"
    assert asked["params"] == {"Bucket": bucket, "Key": "during"} and asked["rule"] == "deleting-needs-sre"
    approve(gw, issuer, asked["id"], "alice", ("sre",), "--reason", "cleanup ticket 7")
    approved_at = time.time()
    t.join(10)
    assert result["status"] == 204
    assert result["done"] - approved_at < 1.0, "released within a second of the approval"
    assert result["took"] < 20
    [rec] = record_of(gw, asked["id"])
    assert (rec["decision"], rec["rule"], rec["outcome"], rec["status"]) == ("approve", "deleting-needs-sre", "forwarded", 204)
    assert rec["approver"] == "alice"
    shown = json.loads(gw.cli("approvals", "show", asked["id"], "--json").stdout)
    assert (shown["state"], shown["approver"], shown["reason"], shown["channel"]) == ("used", "alice", "cleanup ticket 7", "cli")
    assert [c["id"] for c in shown["calls"]] == [rec["id"]]
    # its history: asked for by the held call, approved through the CLI, used by the released call
    assert [(e["event"], e["actor"], e["channel"]) for e in shown["history"]] == [
        ("requested", "agent-1", "gateway"), ("approved", "alice", "cli"), ("used", None, "gateway")]
    assert shown["history"][1]["reason"] == "cleanup ticket 7"
    text = " ".join(gw.cli("approvals", "show", asked["id"]).stdout.split())  # as words: rich wraps the table
    assert re.search(r"history \S+ \S+ approved by alice \(cli\): cleanup ticket 7", text), text
    # the gateway and the CLI both held the chain key: every approval event is keyed, none unanchored
    verified = gw.cli("verify").stdout
    assert re.search(r"as \d+ approval events? left (it|them)", verified), verified
    assert not [line for line in verified.splitlines() if line.startswith("note: approval event")], verified


def test_a_held_call_approved_after_a_policy_change_that_denies_it_is_denied(long_hold, issuer, bucket):
    """An operator freezes what a call held for approval would change; an approver, not knowing,
    approves it: the call is decided by the version in force when it is released, as its retry
    would be, and the object stays."""
    gw = long_hold
    client = s3(gw, issuer.mint("agent-1"))
    client.put_object(Bucket=bucket, Key="frozen", Body=b"evidence")
    result = {}

    def agent():
        result["error"] = held(lambda: client.delete_object(Bucket=bucket, Key="frozen"))

    t = threading.Thread(target=agent)
    t.start()
    freeze = gw.home / "policies" / "zz-freeze.yaml"
    try:
        asked = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{bucket}/frozen"]])[0]
        freeze.write_text("version: 1\nrules:\n  - id: frozen\n    action: s3:DeleteObject\n"
                          "    when: \"params.Key == 'frozen'\"\n    decision: deny\n    reason: the object is evidence\n")
        time.sleep(1.2)  # the gateway looks for changes every second
        approve(gw, issuer, asked["id"], "alice", ("sre",))
        t.join(15)
    finally:
        freeze.unlink(missing_ok=True)
    code, message, approval_id = result["error"]
    assert (code, approval_id) == ("AccessDenied", asked["id"])
    assert "by rule 'frozen': the object is evidence" in message and "put in force while the call was held" in message
    [rec] = record_of(gw, asked["id"])
    assert (rec["decision"], rec["rule"], rec["outcome"], rec["status"]) == ("deny", "frozen", "refused", 403)
    held_by = json.loads(gw.cli("approvals", "show", asked["id"], "--json").stdout)["policy_version"]
    assert held_by and rec["policy_version"] != held_by and rec["policy_version"] in gw.cli("policy", "versions").stdout
    assert client.get_object(Bucket=bucket, Key="frozen")["Body"].read() == b"evidence"


def test_a_denial_during_the_hold_answers_with_the_reason(long_hold, issuer, bucket):
    gw = long_hold
    client = s3(gw, issuer.mint("agent-1"))
    result = {}

    def agent():
        result["error"] = held(lambda: client.delete_object(Bucket=bucket, Key="denied"))

    t = threading.Thread(target=agent)
    t.start()
    asked = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{bucket}/denied"]])[0]
    p = gw.cli("approvals", "deny", asked["id"], check=False)
    assert p.returncode == 2 and "--reason" in p.stderr and "Traceback" not in p.stderr
    gw.cli("approvals", "deny", asked["id"], "--reason", "that object is evidence",
           "--token-file", token_file(gw, issuer, "carol"))
    t.join(10)
    code, message, approval_id = result["error"]
    assert code == "ApprovalDenied" and approval_id == asked["id"]
    assert "denied by carol" in message and "that object is evidence" in message
    # the same call again: still denied, nothing new asked
    code, message, again = held(lambda: client.delete_object(Bucket=bucket, Key="denied"))
    assert (code, again) == ("ApprovalDenied", asked["id"])
    assert {r["outcome"] for r in record_of(gw, asked["id"])} == {"refused"}


def test_a_client_that_gives_up_during_the_hold_leaves_its_approval_pending(long_hold, issuer, bucket):
    gw = long_hold
    impatient = s3(gw, issuer.mint("agent-1"), read_timeout=1, connect_timeout=2)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        impatient.delete_object(Bucket=bucket, Key="impatient")
    asked = [a for a in pending(gw) if a["resources"] == [f"{bucket}/impatient"]]
    assert len(asked) == 1
    [rec] = wait_for(lambda: record_of(gw, asked[0]["id"]), timeout=3)
    assert rec["outcome"] == "client_gone"
    with console(gw) as c:
        assert c.post(f"/api/approvals/{asked[0]['id']}/approve", json={}).status_code == 200
    again = s3(gw, issuer.mint("agent-1"))
    assert again.delete_object(Bucket=bucket, Key="impatient")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [r["outcome"] for r in record_of(gw, asked[0]["id"])] == ["client_gone", "forwarded"]


def test_a_client_whose_read_timeout_is_shorter_than_the_hold_learns_the_approval_on_its_retry(long_hold, issuer,
                                                                                              bucket):
    """A client that always gives up before the hold ends (a read timeout of 1 s, retried by the
    SDK) was held again on every try and never saw ApprovalPending nor the approval's id: a retry
    joining an approval whose earlier try left is answered at once. The approval keeps when its
    requester's client left, in the store (so every worker and replica answers the retry so:
    tests/test_approval_replicas.py, tests/test_workers.py), and its history says so."""
    gw = long_hold
    impatient = s3(gw, issuer.mint("agent-1"), read_timeout=1, connect_timeout=2,
                   retries={"total_max_attempts": 3, "mode": "standard"})
    started = time.monotonic()
    code, message, approval_id = held(lambda: impatient.delete_object(Bucket=bucket, Key="short-timeout"))
    assert code == "ApprovalPending" and time.monotonic() - started < 5, (code, message)
    asked = [a for a in pending(gw) if a["resources"] == [f"{bucket}/short-timeout"]]
    assert [a["id"] for a in asked] == [approval_id] and f"agentgate approvals approve {approval_id}" in message
    assert "answered at once" in message
    records = wait_for(lambda: [r for r in record_of(gw, approval_id) if r["outcome"] == "held"] and
                       record_of(gw, approval_id), timeout=3)
    # the first try left; a retry that came before the gateway saw it leave (it looks every half
    # second) was held and left too; the next one was answered at once
    outcomes = [r["outcome"] for r in records]
    assert outcomes[-1] == "held" and outcomes[:-1] and set(outcomes[:-1]) == {"client_gone"}, outcomes
    shown = json.loads(gw.cli("approvals", "show", approval_id, "--json").stdout)
    assert [(e["event"], e["actor"]) for e in shown["history"]] == [("requested", "agent-1"), ("client_left", "agent-1")]
    assert shown["state"] == "pending" and shown["client_left"] == shown["history"][1]["time"]
    text = " ".join(gw.cli("approvals", "show", approval_id).stdout.split())  # as words: rich wraps the table
    assert re.search(r"history \S+ \S+ client_left by agent-1 \(gateway\): a try of its call left before its hold "
                     r"ended", text), text


# -- after the hold: the retry path -------------------------------------------------------------------------


def test_an_undecided_call_gets_approval_pending_and_its_retry_goes_through_once(short_hold, issuer, bucket):
    gw = short_hold
    token = issuer.mint("agent-1")
    # standard retry mode with 5 attempts: ApprovalPending is a 403, which SDKs do not retry
    client = s3(gw, token, retries={"mode": "standard", "total_max_attempts": 5})
    started = time.time()
    code, message, approval_id = held(lambda: client.delete_object(Bucket=bucket, Key="retry"))
    assert 1.4 < time.time() - started < 5
    assert code == "ApprovalPending" and approval_id.startswith("ap-")
    assert f"`agentgate approvals approve {approval_id} --token-file <their token>`" in message
    assert "s3:DeleteObject" in message and f"{bucket}/retry" in message and "group sre" in message
    assert len(record_of(gw, approval_id)) == 1, "the SDK did not retry"
    assert record_of(gw, approval_id)[0]["outcome"] == "held"
    # the agent retries before anyone decides: the same approval, nothing new to decide
    assert held(lambda: client.delete_object(Bucket=bucket, Key="retry"))[2] == approval_id
    assert [a["id"] for a in pending(gw) if a["resources"] == [f"{bucket}/retry"]] == [approval_id]

    approve(gw, issuer, approval_id)
    assert client.delete_object(Bucket=bucket, Key="retry")["ResponseMetadata"]["HTTPStatusCode"] == 204
    code, _, next_id = held(lambda: client.delete_object(Bucket=bucket, Key="retry"))
    assert code == "ApprovalPending" and next_id != approval_id, "an approval releases one call"
    [released] = record_of(gw, approval_id, "forwarded")
    assert released["approver"] == "alice" and released["decision"] == "approve"


def test_a_call_whose_approval_cannot_be_read_is_refused_for_good_in_verifys_words(tmp_path, issuer, moto):
    """The approval a held call's retry would use holds a value that cannot be read (edited behind
    the gateway's back): the retry is refused with AccessDenied (a 403, which SDKs do not retry),
    naming the row as `agentgate verify` does, not answered 503 "retry shortly", which no retry
    would mend; and another agent's held call is still released by its approval."""
    from tests.test_verify_stored import edit

    gw = start_gateway(tmp_path / "gw", issuer, moto, approval_hold=1.5)  # its own: the edit stays in its store
    try:
        bucket = "unreadable-approvals"
        s3(gw, issuer.mint("setup")).create_bucket(Bucket=bucket)
        client = s3(gw, issuer.mint("agent-unread"), retries={"mode": "standard", "total_max_attempts": 5})
        code, _, approval_id = held(lambda: client.delete_object(Bucket=bucket, Key="unreadable"))
        assert code == "ApprovalPending"
        approve(gw, issuer, approval_id)
        edit(f"sqlite:///{gw.db_path}", f"update approvals set requested = 'yesterday' where id = '{approval_id}'")
        code, message, _ = held(lambda: client.delete_object(Bucket=bucket, Key="unreadable"))
        assert code == "AccessDenied", (code, message)
        assert f"approval {approval_id} " in message and "column requested cannot be read" in message
        assert "s3:DeleteObject needs a human approval, and its approval in the store cannot be read" in message
        # its record says so too
        [refused] = [r for r in gw.records() if r["principal"] == "agent-unread" and r["outcome"] == "refused"]
        assert refused["status"] == 403 and refused["error"].startswith("AccessDenied: ") and approval_id in refused["error"]
        # another agent's call, held and approved meanwhile, goes through as ever
        other = s3(gw, issuer.mint("agent-2"))
        _, _, other_id = held(lambda: other.delete_object(Bucket=bucket, Key="readable"))
        approve(gw, issuer, other_id)
        assert other.delete_object(Bucket=bucket, Key="readable")["ResponseMetadata"]["HTTPStatusCode"] == 204
    finally:
        gw.stop()


def test_an_approval_expires_unused(short_hold, issuer, bucket):
    gw = short_hold
    client = s3(gw, issuer.mint("agent-1"))
    code, _, approval_id = held(lambda: client.delete_object_tagging(Bucket=bucket, Key="tagged"))
    assert code == "ApprovalPending"
    time.sleep(0.6)  # the rule's approvals last 2 s; the hold took 1.5 s of them
    code, message, same = held(lambda: client.delete_object_tagging(Bucket=bucket, Key="tagged"))
    assert (code, same) == ("ApprovalExpired", approval_id)
    assert "expired" in message and "retry the call to ask for a new approval" in message
    p = approve(gw, issuer, approval_id, check=False)
    assert p.returncode == 1 and "expired" in p.stderr


def test_a_call_held_until_its_approval_expires_is_told_it_expired(long_hold, issuer, bucket):
    """The hold (20 s) outlasts the rule's approvals (2 s): the call waits until its approval
    expires and is told so, not that it is pending and can be approved (no one can approve it
    then); its retry asks for a new approval, rather than being told again that this one expired."""
    gw = long_hold
    client = s3(gw, issuer.mint("agent-1"))
    started = time.time()
    code, message, approval_id = held(lambda: client.delete_object_tagging(Bucket=bucket, Key="held-to-expiry"))
    assert time.time() - started < 6
    assert code == "ApprovalExpired", message
    assert "expired" in message and "before anyone decided it" in message
    assert "retry the call to ask for a new approval" in message
    [record] = record_of(gw, approval_id)
    assert record["outcome"] == "refused" and "ApprovalExpired" in (record["error"] or ""), record["error"]
    with console(gw) as c:  # as the approvers see it: expired, with its event
        shown = c.get(f"/api/approvals/{approval_id}").json()
    assert shown["approval"]["status"] == "expired"
    assert [e["event"] for e in shown["history"]] == ["requested", "expired"]
    code, _, next_id = held(lambda: client.delete_object_tagging(Bucket=bucket, Key="held-to-expiry"))
    assert code == "ApprovalExpired" and next_id not in (None, approval_id)


def test_an_approval_releases_nobody_elses_call(short_hold, issuer, bucket):
    gw = short_hold
    mine, theirs = s3(gw, issuer.mint("agent-1")), s3(gw, issuer.mint("agent-2"))
    _, _, approval_id = held(lambda: mine.delete_object(Bucket=bucket, Key="shared"))
    approve(gw, issuer, approval_id)
    code, _, other = held(lambda: theirs.delete_object(Bucket=bucket, Key="shared"))
    assert code == "ApprovalPending" and other != approval_id
    code, _, another = held(lambda: mine.delete_object(Bucket=bucket, Key="not-shared"))
    assert code == "ApprovalPending" and another not in (approval_id, other)
    assert mine.delete_object(Bucket=bucket, Key="shared")["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_who_may_approve(short_hold, issuer, bucket):
    gw = short_hold
    client = s3(gw, issuer.mint("agent-3", act="dave", groups=["data-agents", "sre"]))
    _, _, approval_id = held(lambda: client.delete_object(Bucket=bucket, Key="sod"))
    for sub, groups, words in (("agent-3", ("sre",), "separation of duties"),
                               ("mallory", ("dev",), "is not among the approvers of rule 'deleting-needs-sre'")):
        p = approve(gw, issuer, approval_id, sub, groups, check=False)
        assert p.returncode == 1 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
    # the console applies the same checks: dave is who the agent acts for
    with console(gw, issuer.mint("dave", groups=["sre"])) as c:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={})
        assert r.status_code == 403 and "separation of duties" in r.json()["error"]
    with console(gw, issuer.mint("erin", groups=["sre"], expires_in=-120)) as c:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={})
        assert r.status_code == 401 and "expired" in r.json()["error"]
    assert [a["state"] for a in pending(gw) if a["id"] == approval_id] == ["pending"]
    # the command an agent's error names, run as the gateway's user (who can read keys/admin.token):
    # not an approval; the local admin acts only when asked for by name
    p = gw.cli("approvals", "approve", approval_id, check=False)
    assert p.returncode == 2 and "--admin to act as the local admin" in p.stderr
    assert [a["state"] for a in pending(gw) if a["id"] == approval_id] == ["pending"]
    gw.cli("approvals", "approve", approval_id, "--admin")  # the local admin token (keys/admin.token)
    assert client.delete_object(Bucket=bucket, Key="sod")["ResponseMetadata"]["HTTPStatusCode"] == 204
    [rec] = record_of(gw, approval_id, "forwarded")
    assert rec["approver"] == "agentgate:admin" and rec["principal"] == "agent-3" and rec["on_behalf_of"] == "dave"


def test_an_approval_forged_in_the_store_releases_nothing(short_hold, issuer, bucket):
    """Whoever can write the store but not read the chain key sets a pending approval to approved,
    with an event hashed like the gateway's but not keyed: the agent's retry is refused, not
    released, and says why; `agentgate verify` reports the decision."""
    import datetime as dt

    from sqlalchemy import update

    from addons.core.approvals import Approvals
    from addons.core.models import Approval as ApprovalRow
    from addons.core.store import Store

    gw = short_hold
    client = s3(gw, issuer.mint("agent-forger"))
    _, _, approval_id = held(lambda: client.delete_object(Bucket=bucket, Key="forged"))
    store = Store(f"sqlite:///{gw.db_path}", chain_key=None)
    keyless = Approvals(store)
    now = dt.datetime.now(dt.timezone.utc)
    with keyless._changing() as conn:
        conn.execute(update(ApprovalRow).where(ApprovalRow.id == approval_id).values(
            status="approved", approver="alice", decided=now, channel="console", reason="INC-2291 cleanup"))
        keyless._event(conn, approval_id, "approved", now, actor="alice", reason="INC-2291 cleanup", channel="console")
    store.engine.dispose()
    code, message, _ = held(lambda: client.delete_object(Bucket=bucket, Key="forged"))
    assert code == "AccessDenied" and f"approval {approval_id} is not vouched for by the chain key" in message
    assert [r["outcome"] for r in record_of(gw, approval_id)] == ["held", "refused"]
    p = gw.cli("verify", check=False)
    assert p.returncode == 1 and "a decision without a MAC of the chain key" in p.stderr


def test_a_principal_past_its_pending_approvals_is_refused_not_held(tmp_path, issuer, moto, bucket):
    gw = start_gateway(tmp_path / "gw", issuer, moto, approval_hold=0.2, max_pending_approvals=2)
    try:
        client = s3(gw, issuer.mint("agent-flood"))
        codes = [held(lambda k=k: client.delete_object(Bucket=bucket, Key=f"flood-{k}"))[0] for k in range(3)]
        assert codes[:2] == ["ApprovalPending"] * 2
        code, message, _ = held(lambda: client.delete_object(Bucket=bucket, Key="flood-2"))
        assert code == "TooManyPendingApprovals" and "agent-flood has 2 approvals pending" in message
        assert held(lambda: client.delete_object(Bucket=bucket, Key="flood-0"))[0] == "ApprovalPending"  # a retry
        assert held(lambda: s3(gw, issuer.mint("agent-calm")).delete_object(Bucket=bucket, Key="calm"))[0] == \
            "ApprovalPending"
        refused = [r for r in gw.records() if r["principal"] == "agent-flood" and r["status"] == 400]
        assert len(refused) == 2 and all(r["outcome"] == "refused" for r in refused)
    finally:
        gw.stop()


def flood(gws: list[Gateway], token: str, keys: list[str]) -> list[tuple[str, str]]:
    """(code, approval id) of each of ``keys``' deletes, all sent at once, each by a client of its
    own whose connection is open already (a first call, allowed, made it), the n-th through
    ``gws[n % len(gws)]``: calls of one principal asking for approvals at the same moment."""
    start = threading.Barrier(len(keys))

    def delete(n: int, key: str) -> tuple[str, str]:
        client = s3(gws[n % len(gws)], token)
        client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)
        start.wait()
        code, _, approval_id = held(lambda: client.delete_object(Bucket=BUCKET, Key=key))
        return code, approval_id

    with ThreadPoolExecutor(len(keys)) as pool:
        return list(pool.map(delete, range(len(keys)), keys))


def opened_by(url: str, principal: str) -> list[str]:
    """The ids of the approvals ``principal``'s calls opened, in the store at ``url``."""
    from sqlalchemy import select

    from addons.core.models import Approval as ApprovalRow

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return list(conn.execute(select(ApprovalRow.id).where(ApprovalRow.principal == principal)).scalars())
    finally:
        store.engine.dispose()


def test_concurrent_asks_of_one_principal_open_no_more_than_max_pending(tmp_path, issuer, moto, bucket):
    """Thirty distinct deletes, each sent twice, all at once, by one agent on sixty connections:
    three approvals are opened (max_pending_approvals), both tries of each of those three calls
    are answered ApprovalPending naming it, the other calls are refused TooManyPendingApprovals
    and recorded so. Counting a principal's pending approvals and opening one are one step,
    whichever call comes first."""
    gw = start_gateway(tmp_path / "gw", issuer, moto, approval_hold=0.2, max_pending_approvals=3)
    try:
        for agent in ("agent-burst", "agent-burst-again"):  # twice: one burst may happen to arrive in turns
            answers = flood([gw], issuer.mint(agent), [f"{agent}-{k}" for k in range(30) for _ in range(2)])
            opened = opened_by(f"sqlite:///{gw.db_path}", agent)
            assert len(opened) == 3, answers
            named = [approval_id for code, approval_id in answers if code == "ApprovalPending"]
            assert sorted(named) == sorted(opened * 2), answers
            assert [code for code, _ in answers].count("TooManyPendingApprovals") == 54, answers
            refused = [r for r in gw.records() if r["principal"] == agent and r["outcome"] == "refused"]
            assert len(refused) == 54 and all(r["status"] == 400 for r in refused)
    finally:
        gw.stop()


def test_a_token_file_others_can_read_is_warned_about(short_hold, issuer, bucket):
    gw = short_hold
    client = s3(gw, issuer.mint("agent-1"))
    _, _, first = held(lambda: client.delete_object(Bucket=bucket, Key="warned-1"))
    _, _, second = held(lambda: client.delete_object(Bucket=bucket, Key="warned-2"))
    path = token_file(gw, issuer, "alice")
    os.chmod(path, 0o644)
    p = gw.cli("approvals", "approve", first, "--token-file", path)
    assert f"warning: the token file {path} can be read by other users (mode 644)" in p.stderr
    os.chmod(path, 0o600)
    p = gw.cli("approvals", "approve", second, "--token-file", path)
    assert "warning" not in p.stderr and "approved by alice" in p.stdout


def test_approvals_list_and_show(short_hold, issuer, bucket):
    gw = short_hold
    p = gw.cli("approvals", "show", "ap-000000000000", check=False)
    assert p.returncode == 1 and "there is no approval" in p.stderr
    assert f"(this is the store at sqlite:///{gw.db_path}; a gateway on another store: give --db URL" in p.stderr
    empty = f"sqlite:///{gw.home}/empty.db"
    Store(empty).migrate()  # another store than the gateway's, as a CLI without its db setting would read
    assert f"nothing is pending in the store at {empty}" in gw.cli("approvals", "list", "--pending", "--db",
                                                                   empty).stdout
    _, _, approval_id = held(lambda: s3(gw, issuer.mint("agent-1")).delete_object(Bucket=bucket, Key="listed"))
    listed = gw.cli("approvals", "list", "--pending")
    table = listed.stdout
    assert approval_id in table and "s3:DeleteObject" in table and f"{bucket}/listed" in table
    assert f"from the store at sqlite:///{gw.db_path}" in listed.stderr  # which store, also when it is not empty
    shown = gw.cli("approvals", "show", approval_id).stdout
    for words in ("agent-1", "deleting-needs-sre", "deleting cannot be undone", '"Key": "listed"', "group sre",
                  "requested", "expires", "held"):
        assert words in shown, words
    # approvers see the parameters masked as the record keeps them
    sm = boto3.client("secretsmanager", region_name="us-east-1", aws_access_key_id="agentgate",
                      aws_secret_access_key="x", verify=str(gw.ca_file), config=botocore.config.Config(
                          proxies={"https": gw.proxy_url(issuer.mint("agent-1"))}, retries={"total_max_attempts": 1}))
    _, _, secret_id = held(lambda: sm.put_secret_value(SecretId="db-password", SecretString="hunter2-hunter2"))
    shown = json.loads(gw.cli("approvals", "show", secret_id, "--json").stdout)
    assert shown["params"]["SecretId"] == "db-password"
    assert shown["params"]["SecretString"].startswith("agentgate:masked:") and "hunter2" not in json.dumps(shown)
    # what an agent wrote prints as written: no markup read in it (a crash, or parameters hidden by
    # [conceal]), no escape sequence acted on
    agent = s3(gw, issuer.mint("agent-1"))
    _, _, marked = held(lambda: agent.delete_object(Bucket=bucket, Key="q[/x]\x1b[8m\x9b"))
    code, message, hiding = held(lambda: agent.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "tmp/a.txt[conceal]"}, {"Key": "prod/db-backup.sql"}, {"Key": "[/conceal]tmp/b.txt"}]}))
    assert hiding, (code, message)
    colour = {"FORCE_COLOR": "1", "COLUMNS": "300"}
    for args in (("approvals", "list", "--pending"), ("approvals", "show", marked), ("approvals", "show", hiding)):
        p = gw.cli(*args, env=colour)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert "\x1b[8m" not in p.stdout and "\x9b" not in p.stdout
    listed = gw.cli("approvals", "list", "--pending", env=colour).stdout
    assert f"{bucket}/q[/x]\\x1b[8m\\x9b" in listed
    shown = gw.cli("approvals", "show", hiding, env=colour).stdout
    assert '"Key": "tmp/a.txt[conceal]"' in shown and '"Key": "prod/db-backup.sql"' in shown
    # nor an emoji code: a secret's ARN has `:secret:` in it, which printed as ㊙ wherever it stood,
    # and `:white_check_mark:` in a key an agent chose printed as ✅ beside what the approver decides
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod-db-AbCdEf"
    _, _, by_arn = held(lambda: sm.put_secret_value(SecretId=arn, SecretString="hunter3-hunter3"))
    _, _, ticked = held(lambda: agent.delete_object(Bucket=bucket, Key="reviewed:white_check_mark:.sql"))
    listed = gw.cli("approvals", "list", "--pending", env=colour).stdout
    shown = gw.cli("approvals", "show", by_arn, env=colour).stdout
    [record] = record_of(gw, by_arn)
    called = gw.cli("calls", "show", record["id"], env=colour).stdout
    for out in (listed, shown, called):
        assert "㊙" not in out and "✅" not in out
    assert arn in listed and f"{bucket}/reviewed:white_check_mark:.sql" in listed
    assert f" {arn}, prod-db, prod-db-AbCdEf" in shown and f'"SecretId": "{arn}"' in shown  # the ARN, then the names it can be
    assert arn in called.replace("\n", "").replace(" ", "")


def test_an_approval_is_withdrawn_before_its_call_runs_and_access_commands_take_grants_only(short_hold, issuer,
                                                                                              bucket):
    gw = short_hold
    client = s3(gw, issuer.mint("agent-1"))
    _, _, approval_id = held(lambda: client.delete_object(Bucket=bucket, Key="withdrawn"))
    for command in ("approve", "show"):  # a call's approval is not a grant
        p = gw.cli("access", command, approval_id, *(["--admin"] if command == "approve" else []), check=False)
        assert p.returncode == 1 and f"{approval_id} is an approval of a call, not an access grant" in p.stderr
    assert gw.cli("approvals", "show", approval_id, "--json").stdout.count('"state": "pending"') == 1
    approve(gw, issuer, approval_id)
    out = gw.cli("approvals", "revoke", approval_id, "--reason", "wrong key", "--token-file",
                 token_file(gw, issuer, "bob")).stdout
    assert f"{approval_id} revoked by bob" in out and "a retry asks for a new approval" in out
    code, _, again = held(lambda: client.delete_object(Bucket=bucket, Key="withdrawn"))
    assert code == "ApprovalPending" and again != approval_id  # the withdrawn approval releases nothing
    assert record_of(gw, approval_id, "forwarded") == []


def test_a_requester_withdraws_a_pending_ask_and_the_held_call_is_told(long_hold, issuer, bucket):
    """A pending approval's requester takes the ask back (`approvals revoke`): the call held for it is
    answered at once, saying who withdrew it and why, and its retry asks anew. Its approvers decide
    a pending approval instead (approve or deny), and are told so; they cannot withdraw it."""
    gw = long_hold
    client = s3(gw, issuer.mint("agent-1"))
    started = time.time()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(got=held(lambda: client.delete_object(Bucket=bucket,
                                                                                            Key="taken-back"))))
    t.start()
    [asked] = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{bucket}/taken-back"]])
    p = gw.cli("approvals", "revoke", asked["id"], "--reason", "nope", "--token-file", token_file(gw, issuer, "alice"),
               check=False)
    assert p.returncode == 1 and f"approval {asked['id']} is pending: alice decides it (approve or deny)" in p.stderr
    out = gw.cli("approvals", "revoke", asked["id"], "--reason", "wrong key",
                 "--token-file", token_file(gw, issuer, "agent-1", groups=("data-agents",))).stdout
    assert f"{asked['id']} withdrawn by agent-1 before anyone decided it" in out
    t.join(10)
    code, message, approval_id = result["got"]
    assert time.time() - started < 15  # answered when withdrawn, not at the end of its 20 s hold
    assert (code, approval_id) == ("AccessDenied", asked["id"])
    assert "agent-1 withdrew the ask (wrong key)" in message and "retry this same call to ask for a new approval" in message
    shown = json.loads(gw.cli("approvals", "show", asked["id"], "--json").stdout)
    assert (shown["state"], shown["revoked_by"], shown["revoke_reason"], shown["approver"]) == (
        "revoked", "agent-1", "wrong key", None)
    [record] = record_of(gw, asked["id"], "refused")
    assert record["decision"] == "approve" and "agent-1 withdrew the ask (wrong key)" in record["error"], record
    # the retry asks anew: a new approval, which an approver then decides
    t = threading.Thread(target=lambda: result.update(again=held(lambda: client.delete_object(Bucket=bucket,
                                                                                              Key="taken-back"))))
    t.start()
    [again] = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{bucket}/taken-back"]])
    assert again["id"] != asked["id"]
    gw.cli("approvals", "deny", again["id"], "--reason", "tidy", "--token-file", token_file(gw, issuer, "alice"))
    t.join(10)
    assert result["again"][0] == "ApprovalDenied" and result["again"][2] == again["id"]


# -- notifications ---------------------------------------------------------------------------------------


def test_approvers_are_told_through_the_webhook_with_retries_off_the_calls_path(short_hold, issuer, bucket, webhook):
    gw = short_hold
    started = time.time()
    code, _, approval_id = held(lambda: s3(gw, issuer.mint("agent-1")).delete_object(Bucket=bucket, Key="notified"))
    took = time.time() - started
    # Three slow posts on the call's path would add >= 2.1 s (0.2 + 0.5 + 0.2 + 1 + 0.2) to the 1.5 s hold.
    assert code == "ApprovalPending" and took < 1.5 + 1.5, took
    posts = wait_for(lambda: (lambda p: p if len(p) == 3 else None)(webhook.about(approval_id)), timeout=10)
    assert [status for _, status, _ in posts] == [500, 500, 200]
    gaps = [b[0] - a[0] for a, b in zip(posts, posts[1:])]
    assert 0.6 < gaps[0] < gaps[1], gaps  # backoff: 0.5 s then 1 s, after each 0.2 s answer
    body = posts[-1][2]
    assert approval_id in body["text"] and f"agentgate approvals approve {approval_id}" in body["text"]
    assert "agent-1" in body["text"] and "s3:DeleteObject" in body["text"] and f"{bucket}/notified" in body["text"]
    assert f'Parameters: `{{"Bucket": "{bucket}", "Key": "notified"}}`' in body["text"]  # what exactly is asked
    assert body["blocks"][0]["type"] == "section" and body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert f"{gw.settings['console_listen']}/#{approval_id}" in body["text"]
    approve(gw, issuer, approval_id)  # the command line tells the webhook too
    decided = wait_for(lambda: [p for p in webhook.about(approval_id, "decided") if p[1] == 200], timeout=10)
    assert "approved by alice" in decided[0][2]["text"]
    # a revocation is told as its revoker's, with the revoker's reason (it was told as the approver's)
    gw.cli("approvals", "revoke", approval_id, "--reason", "changed my mind", "--token-file", token_file(gw, issuer, "bob"))
    revoked = wait_for(lambda: [p for p in webhook.about(approval_id, "decided") if p[1] == 200][1:], timeout=10)
    head, *lines = revoked[0][2]["text"].splitlines()
    assert head.startswith(f"Approval {approval_id} revoked by bob: agent-1, s3:DeleteObject"), head
    assert lines == ["reason: changed my mind", "approved before by alice (cli)"], lines
    # what an agent wrote cannot ping the channel or become a link in it
    sly = "x <!channel> <https://evil.example/approve|Open in console>"
    _, _, sly_id = held(lambda: s3(gw, issuer.mint("agent-1")).delete_object(Bucket=bucket, Key=sly))
    body = wait_for(lambda: [p for p in webhook.about(sly_id) if p[1] == 200], timeout=10)[0][2]
    texts = [body["text"]] + [b["text"]["text"] for b in body["blocks"]]
    assert all("<!channel>" not in t and "<https://evil" not in t for t in texts), texts
    assert "&lt;!channel&gt; &lt;https://evil.example/approve|Open in console&gt;" in body["text"]


# -- load ----------------------------------------------------------------------------------------------------


def test_fifty_held_calls_leave_other_calls_alone(long_hold, issuer, bucket):
    gw = long_hold
    agent = s3(gw, issuer.mint("agent-busy"), max_pool_connections=64)
    other = s3(gw, issuer.mint("bystander"))

    def latencies(n: int = 40) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            other.list_objects_v2(Bucket=bucket, MaxKeys=1)
            out.append(time.perf_counter() - started)
        return out

    latencies(10)  # warm: connection, credentials
    before = latencies()
    pool = ThreadPoolExecutor(50)
    futures = [pool.submit(agent.delete_object, Bucket=bucket, Key=f"load-{i}") for i in range(50)]
    asked = wait_for(lambda: (lambda p: p if len(p) == 50 else None)(
        [a for a in pending(gw) if a["principal"] == "agent-busy"]), timeout=30)
    during = latencies()
    assert not any(f.done() for f in futures), "the calls are held"
    base, loaded = statistics.median(before), statistics.median(during)
    assert loaded < base * 1.5 + 0.010, (base, loaded)

    with console(gw) as c:
        for a in asked:
            r = c.post(f"/api/approvals/{a['id']}/approve", json={"reason": "load test"})
            assert r.status_code == 200, r.text
    statuses = [f.result(timeout=15)["ResponseMetadata"]["HTTPStatusCode"] for f in futures]
    pool.shutdown()
    assert statuses == [204] * 50
    assert len({r["approval_id"] for r in gw.records() if r["principal"] == "agent-busy" and r["outcome"] == "forwarded"}) == 50


# -- restart -------------------------------------------------------------------------------------------------


def test_a_restart_while_calls_are_held(long_hold, issuer, bucket):
    gw = long_hold
    client = s3(gw, issuer.mint("agent-r"), max_pool_connections=8)
    results: dict[str, tuple] = {}

    def call(key: str):
        results[key] = held(lambda: client.delete_object(Bucket=bucket, Key=key))

    threads = [threading.Thread(target=call, args=(f"restart-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    asked = wait_for(lambda: (lambda p: p if len(p) == 3 else None)(
        [a for a in pending(gw) if a["principal"] == "agent-r"]))
    stopping = time.time()
    gw.stop()
    for t in threads:
        t.join(10)
    assert time.time() - stopping < 8
    for code, message, approval_id in results.values():
        assert code == "ApprovalPending" and "The gateway is stopping; the approval is kept in its store" in message
        assert approval_id in {a["id"] for a in asked}
    assert sorted(r["outcome"] for a in asked for r in record_of(gw, a["id"])) == ["held"] * 3
    kept = json.loads(gw.cli("approvals", "list", "--pending", "--json").stdout)
    assert {a["id"] for a in kept if a["principal"] == "agent-r"} == {a["id"] for a in asked}, "the approvals survive"
    gw.start()
    first = next(a for a in asked if a["resources"] == [f"{bucket}/restart-0"])
    approve(gw, issuer, first["id"])
    assert client.delete_object(Bucket=bucket, Key="restart-0")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert {r["outcome"] for r in record_of(gw, first["id"])} == {"held", "forwarded"}


# -- access grants -------------------------------------------------------------------------------------------


def test_an_access_grant_lets_a_principal_run_as_a_role_until_revoked(short_hold, issuer):
    gw = short_hold
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                       verify=str(gw.ca_file), config=botocore.config.Config(
                           proxies={"https": gw.proxy_url(issuer.mint("contractor-1", groups=["contractors"]))},
                           retries={"total_max_attempts": 1}))
    with pytest.raises(botocore.exceptions.ClientError, match="no role in policies/ is mapped"):
        sts.get_caller_identity()
    mine = token_file(gw, issuer, "contractor-1", ("contractors",))
    p = gw.cli("access", "request", "--role", "nope", "--for", "30m", "--reason", "x", "--token-file", mine, check=False)
    assert p.returncode == 2 and "elevated" in p.stderr
    p = gw.cli("access", "request", "--role", "elevated", "--for", "30m", "--reason", "incident 12", check=False)
    assert p.returncode == 2 and "--token-file" in p.stderr  # a grant is for a principal, not the admin
    out = gw.cli("access", "request", "--role", "elevated", "--for", "30m", "--reason", "incident 12",
                 "--token-file", mine).stdout
    grant_id = out.split(":")[0]
    assert grant_id.startswith("gr-") and f"agentgate access approve {grant_id}" in out
    p = gw.cli("access", "approve", grant_id, "--token-file", token_file(gw, issuer, "contractor-1", ("sre",)), check=False)
    assert p.returncode == 1 and "separation of duties" in p.stderr
    # the approver runs the command the request printed, with their own token in its place
    said = re.search(r"runs `agentgate ([^`]*)`", out).group(1)
    p = gw.cli(*said.replace("<their token>", token_file(gw, issuer, "alice")).split(), check=False)
    assert p.returncode == 0 and "approved by alice" in p.stdout, p.stderr

    arn = wait_for(lambda: _try(sts.get_caller_identity), timeout=5)["Arn"]
    assert arn == "arn:aws:sts::123456789012:assumed-role/agent-role/contractor-1"
    rec = [r for r in gw.records() if r["principal"] == "contractor-1" and r["outcome"] == "forwarded"][-1]
    assert rec["approval_id"] == grant_id and rec["approver"] == "alice"
    active = json.loads(gw.cli("access", "list", "--active", "--json").stdout)
    assert [g["id"] for g in active] == [grant_id]

    gw.cli("access", "revoke", grant_id, "--reason", "incident over", "--token-file", mine)
    wait_for(lambda: _refused(sts.get_caller_identity), timeout=5)
    shown = json.loads(gw.cli("access", "show", grant_id, "--json").stdout)
    assert (shown["state"], shown["revoked_by"], shown["revoke_reason"]) == ("revoked", "contractor-1", "incident over")
    for args in (["show", "ag-nope"], ["approve", "ag-nope", "--admin"], ["revoke", "ag-nope", "--admin"]):  # in grants' words
        p = gw.cli("access", *args, check=False)
        assert p.returncode == 1 and p.stderr.startswith(
            "Error: there is no access grant 'ag-nope': `agentgate access list` shows them (this is the store at "), p.stderr
    assert "the local admin token does not do" in " ".join(gw.cli("access", "request", "--help").stdout.split())


def _try(call):
    try:
        return call()
    except botocore.exceptions.ClientError:
        return None


def _refused(call) -> bool:
    try:
        call()
    except botocore.exceptions.ClientError:
        return True
    return False


def test_what_would_not_show_as_written_is_written_out_for_approvers_and_in_the_log(short_hold, issuer, bucket):
    """A key that reads as another ("bidi/prod-backup.sql": a right-to-left override and a
    zero-width space in it) and a principal with a line break (from a careless issuer): the
    approvals commands write them out, JSON keeps them in its escapes, and the gateway's log keeps
    each message on its line (no agent prints a line that reads as the gateway's own)."""
    gw = short_hold
    key = "bidi/\u202elqs.pukcab-dorp\u200b"
    agent = s3(gw, issuer.mint("agent-nl\nINFO agentgate.chain: forged"))
    _, _, approval_id = held(lambda: agent.delete_object(Bucket=bucket, Key=key))
    listed = gw.cli("approvals", "list", "--pending", env={"COLUMNS": "300"}).stdout
    assert f"{bucket}/bidi/\\u202elqs.pukcab-dorp\\u200b" in listed and "\u202e" not in listed
    assert "agent-nl\\nINFO agentgate.chain: forged" in listed
    shown = gw.cli("approvals", "show", approval_id, "--json").stdout
    assert "\u202e" not in shown and "\u200b" not in shown and json.loads(shown)["params"]["Key"] == key
    log = gw.log()
    assert "agent-nl\\nINFO agentgate.chain: forged" in log
    assert not any(line.startswith("INFO agentgate.chain: forged") for line in log.splitlines())
