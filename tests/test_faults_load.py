"""Faults under load, through a real gateway process with boto3 agents in threads, each call with
its own object key so that every answer an agent received can be matched with its record:

- PostgreSQL stopped and started while agents call: calls during the outage get an AWS-shaped 503
  (fail closed), the gateway recovers by itself, every call has exactly one record (the refused ones
  say so) and ``agentgate verify`` passes;
- the gateway killed with SIGKILL while agents call, then started again on the same store (SQLite
  with durability "sync", and PostgreSQL): every answer an agent received with 200 has exactly one
  committed record, no call has two, and ``agentgate verify`` passes.

The single-agent store outages (PostgreSQL stopped, SQLite on a full disk) are in
test_store_faults.py.
"""

from __future__ import annotations

import threading
import time

import botocore.exceptions
import pytest

from tests.support.gateway import Gateway
from tests.support.postgres import shared_server
from tests.test_recording_e2e import GATEWAY_KEY, agent, records


class Load:
    """``agents`` boto3 agents, one thread each, calling S3 GetObject in a loop with a key of their
    own per call. ``answers``: (key, HTTP status or None, AWS error code or exception name, time)."""

    def __init__(self, gw: Gateway, issuer, agents: int, name: str) -> None:
        self.clients = [agent(gw, issuer, f"{name}-{n}", "s3", connect_timeout=2, read_timeout=20) for n in range(agents)]
        self.answers: list[tuple[str, int | None, str | None, float]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(sub, s3), daemon=True) for sub, s3 in self.clients]

    def _run(self, sub: str, s3) -> None:
        i = 0
        while not self.stopping.is_set():
            i += 1
            key = f"{sub}-{i}"
            try:
                s3.get_object(Bucket="load", Key=key)["Body"].read()
                answer = (key, 200, None, time.monotonic())
            except botocore.exceptions.ClientError as e:
                answer = (key, e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"], time.monotonic())
            except (botocore.exceptions.BotoCoreError, OSError) as e:  # no answer at all
                answer = (key, None, type(e).__name__, time.monotonic())
                time.sleep(0.05)
            self.answers.append(answer)

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def wait_for(self, n: int, status: int | None = 200, since: float = 0.0, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for _, s, _, t in self.answers if s == status and t >= since) < n:
            assert time.monotonic() < deadline, f"fewer than {n} answers {status} after {timeout} s: {self.answers[-5:]}"
            time.sleep(0.05)

    def keys(self, status: int | None) -> list[str]:
        return [key for key, s, _, _ in self.answers if s == status]


def records_by_key(gw, prefix: str) -> dict[str, list[dict]]:
    """The records of the load's calls, by object key."""
    found: dict[str, list[dict]] = {}
    for r in records(gw):
        if r["kind"] == "call" and r["principal"] and r["principal"].startswith(prefix):
            found.setdefault(r["url"].rsplit("/", 1)[-1], []).append(r)
    return found


def verified(gw) -> str:
    """``agentgate verify`` on the gateway's store: its output, after asserting it exits 0."""
    p = gw.cli("verify", "--db", gw.db_url, check=False)
    assert p.returncode == 0, f"agentgate verify failed ({p.returncode}): {p.stdout}{p.stderr}"
    return p.stdout


def gateway(tmp_path, issuer, upstream, db: str | None = None) -> Gateway:
    home = tmp_path / "gw"
    gw = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"db": db or f"sqlite:///{home / 'agentgate.db'}", "durability": "sync"})
    gw.db_url, gw.sent = db or f"sqlite:///{home / 'agentgate.db'}", []
    return gw


def test_postgres_restarted_under_load_fails_closed_and_recovers(tmp_path, issuer, upstream):
    pg = shared_server()
    with gateway(tmp_path, issuer, upstream, pg.create_database()) as gw:
        load = Load(gw, issuer, agents=4, name="pg-restart").start()
        try:
            load.wait_for(20)
            pg.stop()
            try:
                load.wait_for(4, status=503)  # refused while the store is down
            finally:
                pg.start()
            back = time.monotonic()
            load.wait_for(20, since=back)  # recovered by itself: no restart of the gateway
        finally:
            load.stop()
        pid = gw.proc.pid
        assert gw.proc.poll() is None  # the same process throughout
        deadline = time.monotonic() + 10  # the records of refused calls are written on recovery
        while len(found := records_by_key(gw, "pg-restart-")) < len(load.answers) and time.monotonic() < deadline:
            time.sleep(0.2)
    errors = {(s, code) for _, s, code, _ in load.answers if s != 200}
    assert errors == {(503, "ServiceUnavailable")}, f"answers other than 200 and the store's 503: {errors}"
    ok, refused = load.keys(200), load.keys(503)
    assert len(ok) >= 40 and len(refused) >= 4
    for key in ok:
        assert [(r["outcome"], r["status"]) for r in found.get(key, [])] == [("forwarded", 200)], key
    for key in refused:
        assert [(r["outcome"], r["status"]) for r in found.get(key, [])] == [("refused", 503)], key
    assert len(found) == len(load.answers)  # one record per call, none extra
    assert "OK (" in verified(gw)
    print(f"gateway pid {pid}: {len(ok)} answered 200, {len(refused)} refused with 503, "
          f"{sum(len(v) for v in found.values())} records")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_no_answered_call(tmp_path, issuer, upstream, backend):
    db = shared_server().create_database() if backend == "postgresql" else None
    gw = gateway(tmp_path, issuer, upstream, db)
    with gw:
        load = Load(gw, issuer, agents=6, name=f"kill-{backend}").start()
        try:
            load.wait_for(60)
            gw.proc.kill()  # SIGKILL: no shutdown, no flush
            gw.proc.wait()
            time.sleep(0.5)
        finally:
            load.stop()
        gw.stop()
        gw.start()  # the same home, store and port
        sub, s3 = agent(gw, issuer, f"kill-{backend}-after", "s3")
        assert s3.get_object(Bucket="load", Key="after-restart")["Body"].read() == b"<ok/>"
    assert "OK (" in verified(gw)
    found = records_by_key(gw, f"kill-{backend}-")
    assert {s for _, s, _, _ in load.answers} <= {200, None}  # answered 200, or not at all (killed)
    answered = load.keys(200)
    unanswered = [key for key, s, _, _ in load.answers if s is None]
    assert len(answered) >= 60 and unanswered, "the kill did not land under load"
    recorded = [key for key in answered if [r["status"] for r in found.get(key, [])] == [200]]
    assert len(recorded) == len(answered), f"{len(answered) - len(recorded)} answered calls have no record"
    assert all(len(rs) == 1 for rs in found.values())  # no call recorded twice
    lost_in_flight = [key for key in found if key not in answered and key != "after-restart"]
    print(f"{backend}: {len(answered)} answered with 200, {len(recorded)} of them recorded; "
          f"{len(lost_in_flight)} recorded but not answered (killed in flight); {len(unanswered)} calls got no answer")
