"""Two gateway processes on one PostgreSQL store: a call held by one is released within a second of
an approval made through the other's console, or through the command line."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from addons.core.store import Store
from tests.support.postgres import shared_server
from tests.test_approval_e2e import BUCKET, console, pending, s3, start_gateway, wait_for


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
