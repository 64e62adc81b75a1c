"""Two gateway processes on one PostgreSQL store: a call held by one is released within a second of
an approval made through the other's console, or through the command line; a retry through one of
a call whose earlier try left the other before its hold ended is answered at once; a console
session signed out through one is refused by the other."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from addons.core.store import Store
from tests.support.postgres import shared_server
from tests.test_approval_e2e import (BUCKET, console, flood, held, opened_by, pending, s3, signed_out_on_both,
                                     start_gateway, wait_for)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, issuer, moto):
    url = shared_server().create_database()
    with ThreadPoolExecutor(2) as pool:
        started = [f.result() for f in [
            pool.submit(start_gateway, tmp_path_factory.mktemp(name), issuer, moto, approval_hold=20, db=url)
            for name in ("replica-a", "replica-b")]]
    try:
        yield started, url
    finally:
        for gw in started:
            gw.stop()


def held_on(gw, client, key: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def agent():
        result["status"] = client.delete_object(Bucket=BUCKET, Key=key)["ResponseMetadata"]["HTTPStatusCode"]
        result["done"] = time.time()

    t = threading.Thread(target=agent)
    t.start()
    return t, result


def test_a_call_held_on_one_replica_is_released_by_the_other_and_by_the_cli(replicas, issuer):
    (a, b), url = replicas
    client = s3(a, issuer.mint("agent-1"), max_pool_connections=4)
    client.create_bucket(Bucket=BUCKET)

    t, result = held_on(a, client, "via-b")
    asked = wait_for(lambda: [x for x in pending(b) if x["resources"] == [f"{BUCKET}/via-b"]])[0]
    with console(b, issuer.mint("alice", groups=["sre"])) as c:
        r = c.post(f"/api/approvals/{asked['id']}/approve", json={"reason": "from replica b"})
    decided = time.time()
    assert r.status_code == 200, r.text
    t.join(10)
    assert result["status"] == 204
    assert result["done"] - decided < 1.0, result["done"] - decided

    t, result = held_on(a, client, "via-cli")
    asked = wait_for(lambda: [x for x in pending(a) if x["resources"] == [f"{BUCKET}/via-cli"]])[0]
    b.cli("approvals", "approve", asked["id"], "--admin", "--db", url)
    decided = time.time()
    t.join(10)
    assert result["status"] == 204
    assert result["done"] - decided < 1.0, result["done"] - decided

    store = Store(url)
    try:
        released = [c for c in store.calls(principal="agent-1") if c["outcome"] == "forwarded" and c["approval_id"]]
    finally:
        store.engine.dispose()
    assert {c["approver"] for c in released} == {"alice", "agentgate:admin"}
    assert "not listening for approval decisions" not in a.log()  # LISTEN/NOTIFY, not the fallback poll


def calls_under(url: str, approval_id: str) -> list[dict]:
    store = Store(url)
    try:
        return [c for c in store.calls(principal="agent-1", limit=None, newest_first=False)
                if c["approval_id"] == approval_id]
    finally:
        store.engine.dispose()


def test_a_retry_on_another_replica_of_a_call_whose_try_left_is_answered_at_once(replicas, issuer):
    """A client whose read timeout (1 s) is shorter than the hold (20 s) leaves its first try on
    replica A; the same call retried through replica B was held again for the whole hold there (A
    alone knew): it is answered ApprovalPending at once, naming the approval and the command that
    approves it, as on A. The approval says when its requester's client left (the console, `approvals
    show` and its history), and a retry after the approval goes through once."""
    (a, b), url = replicas
    token = issuer.mint("agent-1")
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        s3(a, token, read_timeout=1, connect_timeout=2).delete_object(Bucket=BUCKET, Key="left-a")
    asked = wait_for(lambda: [x for x in pending(b) if x["resources"] == [f"{BUCKET}/left-a"]])[0]
    wait_for(lambda: [c for c in calls_under(url, asked["id"]) if c["outcome"] == "client_gone"], timeout=5)

    started = time.monotonic()
    code, message, approval_id = held(lambda: s3(b, token, read_timeout=60).delete_object(Bucket=BUCKET,
                                                                                          Key="left-a"))
    took = time.monotonic() - started
    assert (code, approval_id) == ("ApprovalPending", asked["id"]) and took < 5, (code, took, message)
    assert f"agentgate approvals approve {approval_id}" in message and "answered at once" in message
    recorded = wait_for(lambda: len(calls_under(url, approval_id)) == 2 and calls_under(url, approval_id))
    assert [c["outcome"] for c in recorded] == ["client_gone", "held"]
    assert [int(c["writer_id"].split(":")[1]) for c in recorded] == [a.proc.pid, b.proc.pid], recorded

    [shown] = [x for x in pending(b) if x["id"] == approval_id]
    assert shown["client_left"] and shown["client_left"] >= shown["requested"]
    show = json.loads(b.cli("approvals", "show", approval_id, "--json", "--db", url).stdout)
    assert [(e["event"], e["actor"], e["channel"]) for e in show["history"]] == [
        ("requested", "agent-1", "gateway"), ("client_left", "agent-1", "gateway")]
    assert show["history"][1]["time"] == show["client_left"]

    b.cli("approvals", "approve", approval_id, "--admin", "--db", url)
    done = s3(a, token).delete_object(Bucket=BUCKET, Key="left-a")
    assert done["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [c["outcome"] for c in calls_under(url, approval_id)] == ["client_gone", "held", "forwarded"]


def test_concurrent_asks_of_one_principal_through_both_replicas_open_no_more_than_max_pending(tmp_path, issuer,
                                                                                               moto):
    """Thirty distinct deletes, each sent twice (once through each replica), all at once, by one
    agent on sixty connections: three approvals are opened in the store they share
    (max_pending_approvals), both tries of each of those calls name it, and the other calls are
    refused TooManyPendingApprovals by whichever replica they reached."""
    url = shared_server().create_database()
    with ThreadPoolExecutor(2) as pool:
        gws = [f.result() for f in [
            pool.submit(start_gateway, tmp_path / name, issuer, moto, approval_hold=0.2, max_pending_approvals=3,
                        db=url) for name in ("replica-a", "replica-b")]]
    try:
        s3(gws[0], issuer.mint("agent-1")).create_bucket(Bucket=BUCKET)
        for agent in ("agent-burst", "agent-burst-again"):  # twice: one burst may happen to arrive in turns
            answers = flood(gws, issuer.mint(agent), [f"{agent}-{k}" for k in range(30) for _ in range(2)])
            opened = opened_by(url, agent)
            assert len(opened) == 3, answers
            named = [approval_id for code, approval_id in answers if code == "ApprovalPending"]
            assert sorted(named) == sorted(opened * 2), answers
            assert [code for code, _ in answers].count("TooManyPendingApprovals") == 54, answers
            store = Store(url)
            try:
                refused = [c for c in store.calls(principal=agent, limit=None) if c["outcome"] == "refused"]
            finally:
                store.engine.dispose()
            assert len(refused) == 54 and all(c["status"] == 400 for c in refused)
            assert len({c["writer_id"] for c in refused}) == 2  # both replicas refused some
    finally:
        for gw in gws:
            gw.stop()


def test_a_console_session_signed_out_on_one_replica_is_ended_on_the_other(replicas, issuer):
    """Replicas sharing the keys (the admin token) honour each other's console sessions; a sign-out
    through one replica's console ends the session on the other too (each has keys/ of its own)."""
    (a, b), _ = replicas
    with console(a) as ca, console(b) as cb:
        signed_out_on_both(ca, cb, issuer)
        # another session of the same approver is not touched
        other = cb.post("/api/login", json={"token": issuer.mint("alice", groups=["sre"])}).json()["session"]
        assert ca.get("/api/state", headers={"authorization": f"Bearer {other}"}).status_code == 200
