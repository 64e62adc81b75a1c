"""What the agent gets while its record waits for the commit, and what the record says, through real
gateways in front of moto (auth on), boto3 as the agent, on SQLite and PostgreSQL:

- the agent hangs up while its answer waits for a commit held up by another connection's lock:
  its record says client_gone (not forwarded); an agent beside it that waits is not refused;
- the commit takes longer than ``commit_timeout``: a lock held from another connection, or the
  PostgreSQL server paused (SIGSTOP on the postmaster and its backends) and resumed. Every agent's
  answer, 200 or 503, is what its record says; the calls refused while the store cannot write each
  get one log line.

Each call carries a unique object key, so that its records can be counted."""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import botocore.exceptions
import pytest

from addons.core.store import Store, verify
from tests.support.gateway import Gateway
from tests.support.postgres import PostgresServer, shared_server
from tests.test_store_faults import Lock

BUCKET = "commit-bucket"
COMMIT_TIMEOUT = 2.0


def start(tmp_path, issuer, moto, db: str, **settings) -> Gateway:
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), settings={"db": db, **settings})
    gw.db_url = db
    return gw.start()


def agent(gw: Gateway, issuer, name: str, service: str = "s3", **config):
    config.setdefault("retries", {"total_max_attempts": 1})
    token = issuer.mint(f"{name}-{secrets.token_hex(3)}")
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)}, **config))


def records_for(gw: Gateway, key: str) -> list[dict]:
    store = Store(gw.db_url)
    try:
        return [r for r in store.calls(limit=None, newest_first=False) if key in (r["url"] or "")]
    finally:
        store.engine.dispose()


def put(client, key: str) -> tuple[int | str, float]:
    """PutObject ``key``: (the HTTP status or the error code the agent got, seconds it took)."""
    started = time.monotonic()
    try:
        status = client.put_object(Bucket=BUCKET, Key=key, Body=b"x")["ResponseMetadata"]["HTTPStatusCode"]
    except botocore.exceptions.ClientError as e:
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
    except botocore.exceptions.ReadTimeoutError:
        status = "hung up"
    return status, time.monotonic() - started


def store_url(backend: str, tmp_path) -> str:
    return shared_server().create_database() if backend == "postgresql" else f"sqlite:///{tmp_path / 'gw' / 'agentgate.db'}"


def settle(gw: Gateway, keys: list[str], timeout: float = 15) -> dict[str, list[dict]]:
    """Every key's records once each key has one and one more second brings no others."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {k: records_for(gw, k) for k in keys}
        if all(found.values()):
            break
        time.sleep(0.2)
    time.sleep(1)
    return {k: records_for(gw, k) for k in keys}


def said(record: dict) -> int:
    """The status the record says the agent got."""
    return record["status"]


# -- the agent hangs up while its record waits ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_agent_that_hangs_up_while_its_record_waits_is_recorded_as_gone(tmp_path, issuer, moto, backend):
    db = store_url(backend, tmp_path)
    gw = start(tmp_path, issuer, moto, db)
    try:
        agent(gw, issuer, "setup").create_bucket(Bucket=BUCKET)
        impatient, patient = f"gone-{secrets.token_hex(4)}", f"stays-{secrets.token_hex(4)}"
        lock = Lock(db)
        try:
            with ThreadPoolExecutor(2) as pool:
                left = pool.submit(put, agent(gw, issuer, "impatient", read_timeout=1.5), impatient)
                time.sleep(0.3)
                stays = pool.submit(put, agent(gw, issuer, "patient", read_timeout=30), patient)
                assert left.result(timeout=10)[0] == "hung up"
                time.sleep(1)  # the gateway notices, and the patient agent still waits
                assert not stays.done()
                lock.release()
                assert stays.result(timeout=10)[0] == 200
        finally:
            lock.release()
        found = settle(gw, [impatient, patient])
        log = gw.log()
    finally:
        gw.stop()
    [gone], [ok] = found[impatient], found[patient]
    assert (gone["outcome"], gone["status"], gone["action"]) == ("client_gone", 200, "s3:PutObject")
    assert gone["error"].startswith("Client disconnected while its answer waited for this record to be committed; "
                                    "upstream had answered 200 (request id ")
    assert (ok["outcome"], ok["status"]) == ("forwarded", 200)
    lines = [ln for ln in log.splitlines() if impatient in ln and "agentgate.calls" not in ln]
    assert len(lines) == 1 and f"record {gone['id']} says client_gone" in lines[0], lines
    assert "refusing" not in log and verify(db).ok


# -- the commit takes longer than commit_timeout -------------------------------------------------------


def postgres_processes(pg: PostgresServer) -> list[int]:
    """The postmaster and its children."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    children = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(d))
    return [postmaster, *children]


class Paused:
    """PostgreSQL stopped dead (SIGSTOP on the postmaster, then its backends) until ``resume()``."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pids = postgres_processes(pg)
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)

    def release(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.pids = []


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL of this module's own, to be paused without pausing anyone else's."""
    with PostgresServer(fsync=False) as pg:
        yield pg


@pytest.mark.parametrize("how", ["sqlite-locked", "postgresql-locked", "postgresql-paused"])
def test_an_answer_is_what_its_record_says_when_the_commit_is_late(tmp_path, issuer, moto, own_pg, how):
    """The first call's record is in the commit that hangs; the next two queue behind it; a fourth
    comes once the store is known to be stuck. After ``commit_timeout`` the queued ones are refused
    (503) and the store counts as unable to write: the fourth is refused at once, before it goes
    upstream. The first waits for its commit's verdict: with a lock, the gateway cancels the commit
    and refuses the call; with the server paused, the verdict comes when it resumes, whatever it
    is. Every agent's answer is what its record says, and each refused call logs one line."""
    backend, stall = how.split("-")
    db = own_pg.create_database() if backend == "postgresql" else f"sqlite:///{tmp_path / 'gw' / 'agentgate.db'}"
    gw = start(tmp_path, issuer, moto, db, commit_timeout=COMMIT_TIMEOUT)
    keys = {n: f"late-{n}-{secrets.token_hex(4)}" for n in ("first", "queued-1", "queued-2", "after")}
    results = {}
    try:
        agent(gw, issuer, "setup").create_bucket(Bucket=BUCKET)
        put(agent(gw, issuer, "warm"), f"warm-{secrets.token_hex(4)}")  # the writer's connection is open
        clients = {n: agent(gw, issuer, n) for n in keys}
        for c in clients.values():
            c.list_buckets()  # each agent's tunnel and credentials are ready
        held = Paused(own_pg) if stall == "paused" else Lock(db)
        stalled = time.monotonic()
        try:
            with ThreadPoolExecutor(4) as pool:
                futures = {"first": pool.submit(put, clients["first"], keys["first"])}
                time.sleep(0.5)
                for n in ("queued-1", "queued-2"):
                    futures[n] = pool.submit(put, clients[n], keys[n])
                time.sleep(COMMIT_TIMEOUT + 0.5)
                futures["after"] = pool.submit(put, clients["after"], keys["after"])
                time.sleep(COMMIT_TIMEOUT + 1)
                held.release()
                resumed = time.monotonic() - stalled
                results = {n: f.result(timeout=40) for n, f in futures.items()}
        finally:
            held.release()
        found = settle(gw, list(keys.values()))
        log = gw.log()
    finally:
        gw.stop()
    got = {n: status for n, (status, _) in results.items()}
    took = {n: t for n, (_, t) in results.items()}
    assert [got[n] for n in ("queued-1", "queued-2", "after")] == [503, 503, 503], results
    assert all(COMMIT_TIMEOUT - 0.6 < took[n] < COMMIT_TIMEOUT + 1.5 for n in ("queued-1", "queued-2")), took
    assert took["after"] < 1.0, took  # refused up front: the store was known to be stuck
    if stall == "locked":  # the gateway cancelled the first call's commit: refused at its timeout
        assert got["first"] == 503 and COMMIT_TIMEOUT - 0.1 < took["first"] < COMMIT_TIMEOUT + 1.5, results
    else:  # paused: nothing answers until the server resumes; then its verdict, whichever it is
        assert got["first"] in (200, 503) and took["first"] >= resumed - 0.5 - 0.2, (results, resumed)
    for n, key in keys.items():
        [record] = found[key]  # one record per call
        assert said(record) == got[n], (n, record["outcome"], record["status"], record["error"], got[n])
        assert record["outcome"] == ("forwarded" if got[n] == 200 else "refused"), (n, record)
        if got[n] == 503:
            assert "ServiceUnavailable" in record["error"]
            lines = [ln for ln in log.splitlines() if key in ln and "agentgate.calls" not in ln]
            assert len(lines) == 1 and re.search(r"ERROR agentgate\.recorder: refusing PUT \S+ with 503", lines[0]), lines
    assert found[keys["after"]][0]["rule"] == "agentgate:store"  # it never went upstream
    assert "upstream had answered 200" in found[keys["queued-1"]][0]["error"]
    assert log.count("ERROR agentgate.store: ") == 1  # the store says once that it cannot write
    assert "writing again" in log
    assert verify(db).ok
