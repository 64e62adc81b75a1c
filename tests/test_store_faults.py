"""When the store cannot write (NIST AU-5): a running gateway refuses calls with an AWS-shaped 503
and one log line each, and recovers by itself when the store is back (PostgreSQL stopped and
started; a SQLite store on a full disk); with ``fail_open = true`` it answers with a loud warning
and writes the records on recovery. The records of refused calls are written on recovery too, and
say that the agent got the 503. Also the writer's own parts: its chain hash, and its kept
connection across a server restart."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import subprocess
import threading
import time

import botocore.exceptions
import pytest

from addons.core import chain
from addons.core.records import Record
from addons.core.store import Store, StoreUnavailable, canonical_template, chained_hash, record_row, verify
from tests.support.gateway import Gateway
from tests.support.postgres import shared_server
from tests.test_recording_e2e import GATEWAY_KEY, agent, records, settled
from tests.test_store import full_record

DDB_URL = "POST https://dynamodb.us-east-1.amazonaws.com/"


def gateway(tmp_path, issuer, upstream, db: str, **settings) -> Gateway:
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"db": db, **settings})
    gw.db_url, gw.sent = db, []
    return gw


def refused_by_the_store(call) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    response = e.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert response["Error"]["Code"] == "ServiceUnavailable"
    assert "evidence store is unavailable" in response["Error"]["Message"]
    return e.value


def until_answered(call, timeout: float = 10) -> tuple[float, int]:
    """Call until it is answered: (seconds it took, calls refused by the store on the way)."""
    started, refused = time.monotonic(), 0
    while True:
        try:
            call()
            return time.monotonic() - started, refused
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "ServiceUnavailable"
            refused += 1
            assert time.monotonic() - started < timeout, "the gateway did not recover"
            time.sleep(0.2)


def check_refused_records(rs: list[dict], refused: int) -> None:
    """The records of calls refused by the store were written on recovery and say what the agent
    got. The first call went upstream while the store still looked healthy and was refused when its
    commit failed; the others were refused before they went anywhere."""
    kept = [r for r in rs if r["outcome"] == "refused"]
    assert len(kept) == refused and {r["status"] for r in kept} == {503}
    first = kept[0]
    assert (first["decision"], first["rule"], first["action"]) == ("allow", "data-plane", "dynamodb:ListTables")
    assert first["error"].startswith("ServiceUnavailable (agentgate:store): agentgate cannot record this call")
    assert "upstream had answered 200 (request id " in first["error"] and first["aws_request_id"]
    for r in kept[1:]:
        assert (r["decision"], r["rule"], r["action"]) == ("deny", "agentgate:store", "dynamodb:ListTables")
        assert r["error"].startswith("ServiceUnavailable: agentgate cannot record this call")


def upstream_calls(upstream) -> int:
    return sum(1 for method, path, headers in upstream.requests if dict(headers).get("X-Amz-Target"))


# -- PostgreSQL stopped under a running gateway ------------------------------------------------------


def test_postgres_down_fails_closed_and_recovers(tmp_path, issuer, upstream):
    pg = shared_server()
    db = pg.create_database()
    with gateway(tmp_path, issuer, upstream, db) as gw:
        sub, ddb = agent(gw, issuer, "fail-closed", "dynamodb")
        ddb.list_tables()
        pg.stop()
        try:
            started, sent = time.monotonic(), upstream_calls(upstream)
            for _ in range(3):  # the first waits for a commit that fails; the others are refused at once
                refused_by_the_store(ddb.list_tables)
            assert time.monotonic() - started < 5
            assert upstream_calls(upstream) == sent + 1  # only the first reached upstream
        finally:
            pg.start()
        took, more = until_answered(ddb.list_tables)
        assert took < 5, f"recovered after {took:.1f} s"
        log = gw.log()
    refused = 3 + more
    assert log.count(f"ERROR agentgate.recorder: refusing {DDB_URL} with 503: the store cannot write") == refused
    assert log.count("ERROR agentgate.store: store ") == 1  # the store says it is down once, not per call
    rs = records(gw, principal=sub)
    assert len(rs) == 1 + refused + 1  # one per call, the refused ones included
    assert [r["outcome"] for r in (rs[0], rs[-1])] == ["forwarded", "forwarded"]
    check_refused_records(rs, refused)
    result = verify(db)
    assert result.ok, result.problems


def test_fail_open_answers_with_a_warning_and_records_on_recovery(tmp_path, issuer, upstream):
    pg = shared_server()
    db = pg.create_database()
    with gateway(tmp_path, issuer, upstream, db, fail_open=True) as gw:
        sub, ddb = agent(gw, issuer, "fail-open", "dynamodb")
        ddb.list_tables()
        pg.stop()
        try:
            for _ in range(3):
                assert ddb.list_tables()["TableNames"] == []  # answered although nothing is recorded yet
            assert gw.log().count("WARNING agentgate.recorder: FAIL OPEN: the store cannot write") == 3
        finally:
            pg.start()
        rs = settled(gw, lambda r: r["principal"] == sub, at_least=4, timeout=10)
    assert [(r["outcome"], r["status"]) for r in rs] == [("forwarded", 200)] * 4
    assert verify(db).ok


# -- SQLite on a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a disk that can be filled and emptied. Needs root (CAP_SYS_ADMIN)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({p.stderr.strip()}); run as root to test a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_sqlite_on_a_full_disk_fails_closed_and_recovers(tmp_path, issuer, upstream, small_disk):
    db = f"sqlite:///{small_disk / 'agentgate.db'}"
    with gateway(tmp_path, issuer, upstream, db) as gw:
        sub, ddb = agent(gw, issuer, "disk-full", "dynamodb")
        ddb.list_tables()
        fill(small_disk)
        try:
            sent = upstream_calls(upstream)
            for _ in range(3):
                refused_by_the_store(ddb.list_tables)
            assert upstream_calls(upstream) == sent + 1
        finally:
            (small_disk / "filler").unlink()
        took, more = until_answered(ddb.list_tables)
        assert took < 5, f"recovered after {took:.1f} s"
        log = gw.log()
    assert "database or disk is full" in log
    refused = 3 + more
    assert log.count(f"refusing {DDB_URL} with 503: the store cannot write") == refused
    rs = records(gw, principal=sub)
    assert len(rs) == 1 + refused + 1
    check_refused_records(rs, refused)
    assert verify(db).ok


@pytest.mark.parametrize("how", ["moved", "replaced"])
def test_a_sqlite_store_file_moved_or_replaced_under_a_running_gateway_fails_closed(tmp_path, issuer, upstream, how):
    """An operator moves the store's file away (to archive it, say) or copies another over it while
    the gateway runs: its records would go on into the file it opened, away from the path. Calls are
    refused, and the log says what happened and what to do, until the gateway is restarted."""
    path = tmp_path / "agentgate.db"
    with gateway(tmp_path, issuer, upstream, f"sqlite:///{path}") as gw:
        sub, ddb = agent(gw, issuer, f"file-{how}", "dynamodb")
        ddb.list_tables()
        if how == "moved":
            path.rename(tmp_path / "archived.db")
        else:
            shutil.copy(path, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", path)
        time.sleep(1.2)  # the writer looks at its file once a second
        for _ in range(2):
            refused_by_the_store(ddb.list_tables)
        log = gw.log()
    assert f"the store's file {path} is no longer the file the gateway opened (it was deleted, moved away or " \
           "replaced while the gateway ran" in log
    assert "restart the gateway to write to the file the path names" in log
    assert "cannot write (no such table" not in log  # a new empty file at the path is not the store either


# -- the writer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    full_record(),
    Record(),
    full_record(principal="\u2603 \x00 \ud800", params={"z": [1, {"b": None}], "a": "é"}, status=None),
    full_record(id="seq\"prev_hash", reason='"prev_hash":"x","seq":1'),
])
def test_the_writer_s_hash_is_the_chain_s(record):
    row = record_row(record)
    for writer_id, seq, prev in (("w", 1, chain.GENESIS), ("host:1:ab\u00e9", 10**12, "f" * 64)):
        expected = chain.record_hash({**row, "writer_id": writer_id, "seq": seq, "prev_hash": prev})
        assert chained_hash(canonical_template(row), writer_id, seq, prev) == expected


def test_the_writer_s_connection_survives_a_server_restart():
    """The writer keeps its connection between commits; when PostgreSQL restarted meanwhile, the
    next write goes through on a new one instead of being refused."""
    pg = shared_server()
    url = pg.create_database()
    s = Store(url, checkpoint_every=3600)
    s.migrate()
    s.start()
    try:
        s.write_sync(Record(principal="before"))
        pg.restart()
        s.write_sync(Record(principal="after"))
        assert s.healthy and s.stats["failures"] == 0
    finally:
        pg.start()
        s.close()
    assert [c["principal"] for c in s.calls(newest_first=False)] == ["before", "after"]
    s.engine.dispose()


def test_a_refused_call_s_record_is_kept_and_says_so():
    """Store level: a write refused while the store is down keeps the record with the caller's
    ``if_refused`` fields, and writes it when the store is back."""
    pg = shared_server()
    url = pg.create_database()
    s = Store(url, checkpoint_every=3600)
    s.migrate()
    s.start()
    answered = Record(principal="p", outcome="forwarded", status=200)
    try:
        s.write_sync(Record(principal="p"))
        pg.stop()
        with pytest.raises(StoreUnavailable):
            s.write_sync(answered, if_refused={"outcome": "refused", "status": 503, "error": "store down"})
        with pytest.raises(StoreUnavailable):
            s.write_sync(dataclasses.replace(answered, id="second"), if_refused={"outcome": "refused", "status": 503})
    finally:
        pg.start()
    deadline = time.monotonic() + 10
    while s.queued and time.monotonic() < deadline:
        time.sleep(0.05)
    s.close()
    rs = {c["id"]: c for c in s.calls()}
    assert (rs[answered.id]["outcome"], rs[answered.id]["status"], rs[answered.id]["error"]) == ("refused", 503, "store down")
    assert (rs["second"]["outcome"], rs["second"]["status"]) == ("refused", 503)
    assert verify(url).ok
    s.engine.dispose()


class Lock:
    """Another connection holding the store's write lock: SQLite's (BEGIN IMMEDIATE), or
    PostgreSQL's on the calls table (LOCK TABLE ... ACCESS EXCLUSIVE), until ``release()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._guard = threading.Lock()
        if url.startswith("sqlite"):
            import sqlite3

            self.conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
            self.conn.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        """Idempotent, from any thread (a timer may release it while the test does too)."""
        with self._guard:
            conn, self.conn = self.conn, None
        if conn is not None:
            conn.rollback()
            conn.close()


def lock_url(backend: str, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'locked.db'}" if backend == "sqlite" else shared_server().fresh_database()


def drained(s: Store, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while s.queued and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_commit_stuck_on_a_lock_is_stopped_and_its_call_refused(tmp_path, backend):
    """The writer is stuck on a lock another connection holds. The caller whose record is in that
    commit stops waiting after ``commit_timeout``: the writer stops the attempt (PostgreSQL: a
    cancel request; SQLite: it stops waiting for the lock), and the caller is refused because the
    record was not committed, long before the lock is released or SQLite's 5 s lock wait ends.
    Callers queued behind are refused too. The records, written once the lock is gone, say so."""
    url = lock_url(backend, tmp_path)
    s = Store(url, commit_timeout=0.4, checkpoint_every=3600)
    s.migrate()
    s.start()
    refused = {"outcome": "refused", "status": 503}
    lock = None
    try:
        s.write_sync(Record(id="before"))
        lock = Lock(url)
        started = time.monotonic()

        async def two() -> list:
            first = asyncio.create_task(s.write(Record(id="in-flight", outcome="forwarded", status=200), if_refused=refused))
            await asyncio.sleep(0.1)  # the writer is in its attempt with the first
            second = s.write(Record(id="queued-behind", outcome="forwarded", status=200), if_refused=refused)
            return await asyncio.gather(first, second, return_exceptions=True)

        results = asyncio.run(two())
        took = time.monotonic() - started
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert all("no commit within 0.4 s" in str(r) for r in results), results
        assert 0.4 <= took < 1.5, took
        assert not s.healthy and s.stats["aborts"] == 1
        with pytest.raises(StoreUnavailable):  # refused at once while the store cannot write
            s.write_sync(Record(id="while-locked", outcome="forwarded", status=200), if_refused=refused)
    finally:
        if lock is not None:
            lock.release()
    drained(s)
    assert s.healthy
    s.close()
    rs = {c["id"]: (c["outcome"], c["status"]) for c in s.calls()}
    assert rs == {"before": (None, None), "in-flight": ("refused", 503), "queued-behind": ("refused", 503),
                  "while-locked": ("refused", 503)}
    assert verify(url).ok
    s.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_client_that_leaves_while_its_record_waits_is_recorded_as_gone(tmp_path, backend):
    """While a lock holds the writer, one caller's client leaves: its record (in the stuck commit)
    is withdrawn from that attempt and says ``if_gone``, and ``write`` returns False for it. A
    caller whose client stays is not refused: its record is committed once the lock is gone. A
    record still queued when its client leaves is changed at once."""
    url = lock_url(backend, tmp_path)
    s = Store(url, commit_timeout=30, checkpoint_every=3600)
    s.migrate()
    s.start()
    gone = {"outcome": "client_gone", "error": "left"}
    left = {"a": False, "c": False}
    lock = Lock(url)
    try:
        async def three() -> list:
            a = asyncio.create_task(s.write(Record(id="a", outcome="forwarded"), if_gone=gone, gone=lambda: left["a"]))
            b = asyncio.create_task(s.write(Record(id="b", outcome="forwarded"), if_gone=gone, gone=lambda: False))
            await asyncio.sleep(0.3)
            c = asyncio.create_task(s.write(Record(id="c", outcome="forwarded"), if_gone=gone, gone=lambda: left["c"]))
            await asyncio.sleep(0.2)
            left["a"] = left["c"] = True
            results = {"a": await a, "c": await c}
            assert not b.done()  # still waiting for the commit: not refused
            lock.release()
            results["b"] = await b
            return results

        started = time.monotonic()
        results = asyncio.run(three())
        assert results == {"a": False, "c": False, "b": True}
        assert time.monotonic() - started < 5
        assert s.healthy and s.stats["failures"] == 0
    finally:
        lock.release()
    drained(s)
    s.close()
    rs = {c["id"]: (c["outcome"], c["error"]) for c in s.calls()}
    assert rs == {"a": ("client_gone", "left"), "b": ("forwarded", None), "c": ("client_gone", "left")}
    assert verify(url).ok
    s.engine.dispose()


class Relay:
    """A TCP relay between the store and PostgreSQL that can cut one connection at the worst moment:
    ``cut("after")`` forwards what the store sends next and the server's answer to it, then drops
    that answer and closes (the commit happened; the store cannot know); ``cut("before")`` swallows
    what the store sends next and closes (the server never saw it)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, when: str) -> None:
        self.mode = when

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            state = {"armed": None}
            threading.Thread(target=self._pump, args=(client, server, state, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, "down"), daemon=True).start()

    def _pump(self, src, dst, state, direction) -> None:
        try:
            while data := src.recv(65536):
                if direction == "up" and self.mode != "pass" and state["armed"] is None:
                    with self.lock:
                        state["armed"], self.mode = self.mode, "pass"
                    if state["armed"] == "before":
                        break  # swallowed: the server never sees it
                elif direction == "down" and state["armed"] == "after":
                    break  # the server answered; the store never hears it
                dst.sendall(data)
        except OSError:
            pass
        if state["armed"]:
            self.cuts += 1
        for sock in (src, dst):  # shutdown first: it wakes the other direction's recv, and sends FIN now
            try:
                sock.shutdown(2)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_commit_whose_outcome_is_unknown_is_looked_up_not_guessed(when):
    """The connection breaks after the commit was sent, without a word from the server. The caller
    is not told a guess: the writer looks whether the records are in its chain (``after``: they
    are, committed once; ``before``: they are not, and are written again), and the caller's answer
    follows. Either way one record, and the chain verifies."""
    pg = shared_server()
    url = pg.fresh_database()
    relay = Relay(pg.port)
    via = url.replace(f":{pg.port}/", f":{relay.port}/")
    s = Store(via, checkpoint_every=3600)
    s.migrate()
    s.start()
    try:
        s.write_sync(Record(id="before"))
        relay.cut(when)
        started = time.monotonic()
        assert asyncio.run(s.write(Record(id="cut", outcome="forwarded", status=200),
                                   if_refused={"outcome": "refused", "status": 503})) is True
        assert time.monotonic() - started < 5
        assert relay.cuts >= 1 and s.healthy
        s.write_sync(Record(id="next"))
    finally:
        s.close()
        relay.close()
    rs = [(c["id"], c["outcome"], c["status"]) for c in Store(url).calls(newest_first=False)]
    assert rs == [("before", None, None), ("cut", "forwarded", 200), ("next", None, None)]
    assert verify(url).ok
