"""Inline commits: while one client is connected the gateway lets the store commit a call's record
on the event loop itself (``Store.commit_inline``), into the same chain as the writer thread's
group commits; whatever cannot be committed at once goes to the writer as before. The head is
still checkpointed and the WAL still flushed after inline commits, and the WAL checkpointed by the
writer thread, never by an inline commit; a locked database neither blocks the loop nor loses the
record; PostgreSQL and synchronous "full" are left to the writer thread; and through a real
gateway, one agent's records are committed inline and several agents' by the writer."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool
from mitmproxy.test import tflow

from addons.core.models import Call, Checkpoint
from addons.core.records import Record
from addons.core.store import Store, StoreUnavailable, verify
from addons.gateway import INLINE_COMMITS_UP_TO, InlineCommits
from tests.support.postgres import shared_server

KEY = b"k" * 32


def sqlite_store(tmp_path, **kw) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'agentgate.db'}", chain_key=KEY, writer_id="w", **kw)
    s.migrate()
    s.start()
    return s


def seqs(url: str) -> list[int]:
    with create_engine(url, poolclass=NullPool).connect() as c:
        return c.execute(select(Call.seq).order_by(Call.seq)).scalars().all()


def transactions_by_thread(s: Store) -> list[str]:
    """The name of the thread each of ``s``'s transactions (``Store._transaction``) runs on, from now on."""
    names: list[str] = []
    real = s._transaction

    def transaction(*a, **kw):
        names.append(threading.current_thread().name)
        return real(*a, **kw)

    s._transaction = transaction
    return names


def test_a_record_is_committed_on_the_callers_thread_into_the_same_chain(tmp_path) -> None:
    s = sqlite_store(tmp_path)
    committed_on = transactions_by_thread(s)

    async def main() -> None:
        for i in range(30):
            s.commit_inline = i % 10 < 5  # five inline, five by the writer, three times
            r = Record(session_id="sess", principal="agent", params={"i": i})
            assert await s.write(r) is True
            assert seqs(s.url)[-1] == i + 1  # committed when write returns, in order

    try:
        asyncio.run(main())
    finally:
        s.close()
    assert s.stats["inline"] == 15 and s.stats["records"] == 30
    assert committed_on.count("MainThread") == 15
    assert committed_on.count("agentgate-store-writer") >= 15  # the other 15, then the closing checkpoint
    assert seqs(s.url) == list(range(1, 31))
    result = verify(s.url, KEY)
    assert result.ok and result.records == 30 and result.notes == [], result
    with create_engine(s.url, poolclass=NullPool).connect() as c:
        calls = c.execute(select(func.count()).select_from(Call)).scalar()
    assert calls == 30


def test_off_by_default_and_only_with_durability_sync(tmp_path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    assert s.commit_inline is False and s.can_commit_inline
    assert not Store(f"sqlite:///{tmp_path / 'b.db'}", durability="async").can_commit_inline
    # "full" flushes the WAL to the device at every commit: that wait stays off the event loop
    assert not Store(f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="full").can_commit_inline
    url = shared_server().fresh_database()
    assert Store(url).can_commit_inline  # awaited on the event loop, which serves other calls meanwhile
    pg = Store(url, chain_key=KEY, durability="async")
    assert not pg.can_commit_inline
    pg.migrate()
    pg.start()
    pg.commit_inline = True  # asked for anyway: the writer thread commits

    async def main() -> None:
        for _ in range(5):
            assert await pg.write(Record()) is True
        await asyncio.sleep(0.2)  # nothing opened meanwhile either

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 5
        while pg.stats["records"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pg.close()
    assert pg.stats["inline"] == 0 and pg.stats["records"] == 5 and pg._aconn_opening is None
    assert verify(pg.url, KEY).ok


def pg_store(**kw) -> Store:
    s = Store(shared_server().fresh_database(), chain_key=KEY, writer_id="w", **kw)
    s.migrate()
    s.start()
    return s


async def connected(s: Store) -> None:
    """The first inline attempt opens the store's connection for them, in the background (its
    record goes to the writer): wait until it is open."""
    s.commit_inline = True
    assert await s.write(Record(params={"opening": True})) is True
    deadline = time.monotonic() + 10
    while s._aconn is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert s._aconn is not None, "no connection for inline commits"


def test_postgres_commits_inline_from_the_event_loop_into_the_same_chain() -> None:
    """PostgreSQL's inline commit is sent and awaited on the caller's event loop (no hand-over to
    the writer thread), into the writer's chain, interleaved with the writer's own commits; while
    it waits for the server, the loop serves other work."""
    s = pg_store()
    sent_by = transactions_by_thread(s)  # the writer's; an inline commit runs no Store._transaction
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> None:
        await connected(s)
        tick = asyncio.create_task(ticker())
        for i in range(30):
            s.commit_inline = i % 10 < 5  # five inline, five by the writer, three times
            r = Record(session_id="sess", principal="agent", params={"i": i})
            assert await s.write(r) is True
            assert seqs(s.url)[-1] == i + 2  # committed when write returns, in order
        tick.cancel()

    try:
        asyncio.run(main())
    finally:
        s.close()
    assert s.stats["inline"] == 15 and s.stats["records"] == 31
    assert sent_by.count("agentgate-store-writer") >= 16 and "MainThread" not in sent_by  # the rest, by the writer
    assert ticks > 15  # the loop ran other work while inline commits waited for the server
    assert seqs(s.url) == list(range(1, 32))
    result = verify(s.url, KEY)
    assert result.ok and result.records == 31 and result.notes == [], result
    assert s._aconn is None  # closed with the store


class _Cursor:
    """psycopg's asyncio cursor, failing as told: ``before`` (the statement never reaches the
    server), ``after`` (the server commits it, then the connection breaks), ``silent`` (no answer),
    ``refused`` (the server refuses a statement: an ERROR)."""

    def __init__(self, real, how: str) -> None:
        self.real, self.how = real, how

    async def __aenter__(self):
        await self.real.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.real.__aexit__(*exc)

    async def execute(self, sql, params):
        import psycopg

        if self.how == "after":
            await self.real.execute(sql, params)
        if self.how == "silent":
            await asyncio.sleep(30)
        if self.how == "refused":
            await self.real.execute("SELECT 1/0")
        raise psycopg.OperationalError("server closed the connection unexpectedly")


def failing(real, how: str):
    """psycopg as ``real`` is, but for its asyncio cursor, which fails as ``_Cursor`` is told."""
    import types

    driver = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    driver.AsyncRawCursor = lambda conn: _Cursor(real.AsyncRawCursor(conn), how)
    return driver


@pytest.mark.parametrize("how", ["after", "before", "silent"])
def test_a_postgres_inline_commit_whose_outcome_is_unknown_is_settled_by_the_writer(how, caplog) -> None:
    """The connection breaks once the statement was sent (or no answer comes, even to the request
    to stop it): the record may be committed or not. It goes to the writer in doubt, which looks
    whether it is in the chain: the caller is told it is committed once it is (or, past
    commit_timeout, refused when it is not), and it is stored exactly once either way; the chain
    goes on, and so do inline commits, on a new connection."""
    s = pg_store(commit_timeout=1.0)
    real = s._dbapi

    async def main() -> None:
        await connected(s)
        assert await s.write(Record(params={"before": 1})) is True  # inline, as usual
        s._dbapi = failing(real, how)
        if how == "silent":  # nor an answer to the request to stop it: after commit_timeout the call is refused
            with pytest.raises(StoreUnavailable, match="did not commit within 1 s"):
                await s.write(Record(id="doubtful", params={"doubtful": 1}))
        else:
            assert await s.write(Record(id="doubtful", params={"doubtful": 1})) is True
        s._dbapi = real
        assert s._aconn is None  # the broken connection is dropped
        await connected(s)  # a new one, opened by the next inline attempt
        assert await s.write(Record(params={"after": 1})) is True

    try:
        with caplog.at_level("WARNING", logger="agentgate.store"):
            asyncio.run(main())
    finally:
        s.close()
    assert "the outcome of a commit made inline is unknown" in caplog.text
    assert ("no answer within 6 s" in caplog.text) == (how == "silent")  # commit_timeout, then 5 s for the stop
    assert ("had gone through" in caplog.text) == (how == "after")
    assert seqs(s.url) == list(range(1, 6))
    with create_engine(s.url, poolclass=NullPool).connect() as c:
        assert c.execute(select(func.count()).select_from(Call).where(Call.id == "doubtful")).scalar() == 1
    assert s.stats["inline"] == 2  # "before" and "after"; the doubtful one is the writer's to settle
    result = verify(s.url, KEY)
    assert result.ok and result.records == 5, result


def test_a_postgres_inline_commit_the_server_refuses_goes_to_the_writer(caplog) -> None:
    """The server answers with an ERROR: the statement did not commit, so there is nothing in
    doubt; the record is queued for the writer as any other and committed once."""
    s = pg_store()
    real = s._dbapi

    async def main() -> None:
        await connected(s)
        s._dbapi = failing(real, "refused")
        assert await s.write(Record(id="refused-inline")) is True
        s._dbapi = real
        assert s._aconn is not None  # the connection is still good
        assert await s.write(Record()) is True

    try:
        with caplog.at_level("WARNING", logger="agentgate.store"):
            asyncio.run(main())
    finally:
        s.close()
    assert "unknown" not in caplog.text
    assert seqs(s.url) == [1, 2, 3]
    assert s.stats["inline"] == 1  # the last one; the refused one by the writer
    assert verify(s.url, KEY).ok


def test_the_head_is_checkpointed_after_inline_commits(tmp_path) -> None:
    """The writer thread sleeps with nothing to do; a commit made inline wakes it to anchor the
    head within checkpoint_every, as it would after its own commits."""
    s = sqlite_store(tmp_path, checkpoint_every=0.1)
    s.commit_inline = True

    def anchored() -> int | None:
        with create_engine(s.url, poolclass=NullPool).connect() as c:
            return c.execute(select(func.max(Checkpoint.seq))).scalar()

    async def write() -> None:
        await s.write(Record())

    try:
        time.sleep(0.3)  # the writer is asleep, no time set to wake
        for n in (1, 2):
            asyncio.run(write())
            deadline = time.monotonic() + 5
            # anchored, and the writer's checkpoint attempt over (the next record would go to it)
            while (anchored() != n or s._attempting) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert anchored() == n
    finally:
        s.close()
    assert s.stats["inline"] == 2
    assert verify(s.url, KEY).notes == []


def test_an_inline_commit_reaches_the_device_within_a_second(tmp_path, monkeypatch) -> None:
    """sqlite_synchronous "normal": the writer flushes the WAL within a second of a commit, also
    of one made inline while it slept."""
    flushed: list[float] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            flushed.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s = sqlite_store(tmp_path, checkpoint_every=3600)
    s.commit_inline = True
    try:
        time.sleep(1.3)  # whatever start-up wrote is flushed; the writer sleeps
        before = len(flushed)
        asyncio.run(s.write(Record()))
        committed = time.monotonic()
        time.sleep(1.4)
        assert s.stats["inline"] == 1
        after = flushed[before:]
        assert len(after) == 1 and committed < after[0] < committed + 1.2, (committed, after)
    finally:
        s.close()


def small_checkpoints(monkeypatch) -> None:
    """The WAL checkpointed at SQLite's own 1,000 frames (4 MB) instead of the store's 8,000, so that
    1,500 records pass several checkpoints: how they are made does not depend on the number."""
    from addons.core import store as store_module

    monkeypatch.setattr(store_module, "WAL_CHECKPOINT_FRAMES", 1000)
    monkeypatch.setattr(store_module, "WAL_CHECKPOINT_BYTES", 4 << 20)


def test_inline_commits_never_checkpoint_the_wal_and_the_writer_keeps_it_bounded(tmp_path, monkeypatch) -> None:
    """SQLite's automatic checkpoint waits for the device, and would fall on whichever commit
    passed its size, an inline one on the event loop included: the writer's connection has it off,
    and the writer thread checkpoints the WAL once it holds WAL_CHECKPOINT_FRAMES, counted from the
    WAL index's header as SQLite documents it (checked here against SQLite's own count)."""
    from addons.core import store as store_module

    small_checkpoints(monkeypatch)
    s = sqlite_store(tmp_path, checkpoint_every=3600)
    s.commit_inline = True
    wal = tmp_path / "agentgate.db-wal"
    checkpointed_on: list[str] = []
    real = s._checkpoint_wal

    def checkpoint_wal():
        if s._checkpoint_due():
            checkpointed_on.append(threading.current_thread().name)
        return real()

    s._checkpoint_wal = checkpoint_wal
    frames, sizes = [], []

    async def main() -> None:
        for i in range(1500):
            await s.write(Record(session_id="sess", params={"i": i, "pad": "x" * 500}))
            if i % 50 == 49:
                frames.append(s._wal_frames())
                sizes.append(wal.stat().st_size)

    try:
        asyncio.run(main())
        with s._cond:
            s._inline = True  # the writer's connection, read while nothing commits on it
        autocheckpoint = s._raw.driver_connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        # SQLite's own count: (busy, frames in the WAL, frames checkpointed); nothing was checkpointed
        # since the last commit unless the writer just did it, so compare with the frames in the WAL.
        # While the writer thread's own checkpoint runs, SQLite answers busy (-1): ask again.
        for _ in range(300):
            counted = s._wal_frames()
            busy, in_wal, _ = s._raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and in_wal != -1:
                break
            time.sleep(0.01)
        with s._cond:
            s._inline = False
    finally:
        s.close()
    assert counted == in_wal and counted is not None
    # while a checkpoint runs, an inline commit finds the database busy and queues its record
    assert s.stats["records"] == 1500 and s.stats["inline"] > 1000
    assert autocheckpoint == 0
    assert len(checkpointed_on) >= 5 and set(checkpointed_on) == {"agentgate-store-writer"}
    # without the checkpoints the WAL would hold every commit's pages (a dozen of about 4 KB each,
    # some 75 MB by the end); with them, about the 1,000 pages checkpointed at here at most
    assert all(f is not None for f in frames) and max(frames) < 2 * store_module.WAL_CHECKPOINT_FRAMES, frames
    # The file's size is the most the WAL ever held (a RESTART checkpoint starts it over without
    # shrinking it): on a machine busy with other work, the writer thread can come late to a
    # checkpoint while commits go on inline, so it is allowed more than the frames above.
    assert max(sizes) < 4 * store_module.WAL_CHECKPOINT_BYTES, max(sizes)
    assert verify(s.url, KEY).ok


def test_a_writer_late_to_its_checkpoint_still_keeps_the_wal_bounded(tmp_path, monkeypatch) -> None:
    """On a machine busy with other work the writer thread can come late to a checkpoint an inline
    commit asked for: commits meanwhile go to the writer's queue, not on into the WAL inline (the
    WAL passed twice its checkpoint's worth, 3,574 frames, on such a machine)."""
    from addons.core import store as store_module

    small_checkpoints(monkeypatch)
    s = sqlite_store(tmp_path, checkpoint_every=3600)
    s.commit_inline = True
    real = s._checkpoint_wal
    late: list[bool] = []

    def checkpoint_wal():
        if s._checkpoint_due():
            late.append(True)
            time.sleep(0.3)  # scheduled late
        return real()

    s._checkpoint_wal = checkpoint_wal
    frames: list[int | None] = []

    async def main() -> None:
        for i in range(1500):
            await s.write(Record(session_id="sess", params={"i": i, "pad": "x" * 500}))
            if i % 10 == 9:
                frames.append(s._wal_frames())

    try:
        asyncio.run(main())
    finally:
        s.close()
    assert len(late) >= 3 and s.stats["records"] == 1500
    assert all(f is not None for f in frames) and max(frames) < 2 * store_module.WAL_CHECKPOINT_FRAMES, frames
    assert seqs(s.url) == list(range(1, 1501)) and verify(s.url, KEY).ok


def test_a_locked_database_sends_the_record_to_the_writer_without_blocking_the_loop(tmp_path) -> None:
    """Another process holds SQLite's write lock: the inline commit does not wait for it (the
    loop goes on serving), the writer thread commits the record once the lock is released, and
    the caller returns only then."""
    s = sqlite_store(tmp_path)
    s.commit_inline = True
    path = str(tmp_path / "agentgate.db")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as another gateway's commit would hold it
    ticks = 0
    ticks_while_locked = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def release() -> None:
        nonlocal ticks_while_locked
        await asyncio.sleep(0.6)
        ticks_while_locked = ticks
        other.execute("ROLLBACK")

    async def main() -> float:
        t = asyncio.create_task(ticker())
        r = asyncio.create_task(release())
        t0 = time.monotonic()
        assert await s.write(Record()) is True
        done = time.monotonic()
        await r
        t.cancel()
        return done - t0

    try:
        took = asyncio.run(main())
    finally:
        other.close()
        s.close()
    assert 0.55 <= took < 3  # it waited for the lock, and not for the writer's 5 s limit
    assert ticks_while_locked >= 20  # the loop kept running meanwhile (blocked, it would not tick at all)
    assert s.stats["inline"] == 0 and s.stats["records"] == 1
    assert verify(s.url, KEY).ok


def test_an_unhealthy_store_refuses_rather_than_committing_inline(tmp_path) -> None:
    s = sqlite_store(tmp_path)
    s.commit_inline = True
    s._healthy, s._last_error = False, "disk full"  # as after a failed commit, until the next succeeds

    async def main() -> None:
        with pytest.raises(StoreUnavailable, match="disk full"):
            await s.write(Record())

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 5
        while s.stats["records"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.close()
    assert s.stats["inline"] == 0 and s.stats["records"] == 1  # kept, and written by the writer


def test_the_gateway_commits_inline_while_few_clients_are_connected(tmp_path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    addon = InlineCommits(s)
    clients = [tflow.tclient_conn() for _ in range(INLINE_COMMITS_UP_TO + 1)]
    for c in clients[:INLINE_COMMITS_UP_TO]:
        addon.client_connected(c)
        assert s.commit_inline is True
    addon.client_connected(clients[-1])
    assert s.commit_inline is False  # one more: the writer thread's group commits
    addon.client_disconnected(clients[0])
    assert s.commit_inline is True
    for c in clients[1:]:
        addon.client_disconnected(c)
    addon.client_disconnected(clients[-1])  # told twice: the count stays at zero
    assert addon.clients == 0 and s.commit_inline is True
    s.engine.dispose()


def test_the_gateway_commits_inline_on_postgresql_while_one_client_is_connected() -> None:
    from addons.gateway import INLINE_POSTGRES_UP_TO

    assert INLINE_POSTGRES_UP_TO == 1
    s = Store(shared_server().fresh_database())
    addon = InlineCommits(s)
    first, second = tflow.tclient_conn(), tflow.tclient_conn()
    addon.client_connected(first)
    assert s.commit_inline is True
    addon.client_connected(second)
    assert s.commit_inline is False  # a second call's record would come while one waits for the server
    addon.client_disconnected(first)
    assert s.commit_inline is True
    s.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_through_the_gateway_one_agents_records_are_committed_inline_several_agents_by_the_writer(
        tmp_path, issuer, moto, backend) -> None:
    """A real gateway in front of moto: one boto3 agent's calls, one after another, are committed
    inline; with four more agents connected (more than INLINE_COMMITS_UP_TO), by the writer thread. Every call has its
    record, the chain verifies, and the gateway says at exit how its records were committed."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_recording_commit import BUCKET, agent, put, start, store_url

    gw = start(tmp_path, issuer, moto, store_url(backend, tmp_path))
    try:
        first = agent(gw, issuer, "solo")
        first.create_bucket(Bucket=BUCKET)
        for i in range(5):
            assert put(first, f"solo-{i}")[0] == 200
        others = [agent(gw, issuer, f"crowd{n}") for n in range(4)]
        for other in others:  # each connects, one after another: five clients from the third on
            other.head_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda n: [put(others[n], f"crowd-{n}-{i}")[0] for i in range(5)], range(4)))
        assert statuses == [[200] * 5] * 4
    finally:
        gw.stop()
    found = re.findall(r"(\d+) records written in (\d+) commits \((\d+) of them made inline\)", gw.log())
    assert len(found) == 1, gw.log()[-3000:]
    records, commits, inline = map(int, found[0])
    reader = Store(gw.db_url)
    try:
        stored = reader.calls(limit=None)
    finally:
        reader.engine.dispose()
    calls = [r for r in stored if r["kind"] == "call"]
    assert records == len(stored) and len(calls) >= 30  # create_bucket, 5 solo puts, 4 heads, 20 crowd puts
    # the solo agent's six calls, made while it was the only client (on PostgreSQL the first opens
    # the connection inline commits use, and goes to the writer)
    assert inline >= (6 if backend == "sqlite" else 5)
    assert inline <= records - 20  # the crowd's puts, made while five were connected, went to the writer thread
    assert verify(gw.db_url).ok


def test_a_postgres_inline_commit_whose_client_leaves_is_stopped_and_says_so() -> None:
    """The statement waits for a lock another connection holds; the caller's client leaves: the
    server is asked to stop the statement, and, stopped, the record says ``if_gone``, is handed to
    the writer and committed once the lock is gone, as when the writer's own attempt is stopped."""
    from tests.test_store_faults import Lock

    s = pg_store()
    left = threading.Event()

    async def main() -> None:
        await connected(s)
        lock = Lock(s.url)
        threading.Timer(0.3, left.set).start()
        started = time.monotonic()
        try:
            committed = await s.write(Record(id="gone", outcome="forwarded"), if_gone={"outcome": "client_gone"},
                                      gone=left.is_set)
            took = time.monotonic() - started
        finally:
            lock.release()
        assert committed is False  # not committed as sent: the caller answers nobody
        assert 0.3 <= took < 3  # stopped soon after the client left, not at the lock's end

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 10
        while s.stats["records"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.close()
    with create_engine(s.url, poolclass=NullPool).connect() as c:
        rows = c.execute(select(Call.outcome).where(Call.id == "gone")).scalars().all()
    assert rows == ["client_gone"]
    assert s.stats["aborts"] >= 1 and s.stats["inline"] == 0
    assert verify(s.url, KEY).ok


def test_a_postgres_inline_commit_that_outlasts_commit_timeout_is_refused_and_kept() -> None:
    """The statement waits past commit_timeout: the server is asked to stop it; stopped, the call
    is refused (StoreUnavailable), its record says ``if_refused`` and is written once the database
    answers again, and the store refuses calls up front until then."""
    from tests.test_store_faults import Lock

    s = pg_store(commit_timeout=0.5)

    async def main() -> None:
        await connected(s)
        lock = Lock(s.url)
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match="did not commit within 0.5 s"):
                await s.write(Record(id="slow", outcome="forwarded", status=200),
                              if_refused={"outcome": "refused_store", "status": 503})
            took = time.monotonic() - started
            assert 0.5 <= took < 3
            with pytest.raises(StoreUnavailable):  # refused up front while the database is stuck
                await s.write(Record(id="next"))
        finally:
            lock.release()

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 10
        while s.stats["records"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.close()
    with create_engine(s.url, poolclass=NullPool).connect() as c:
        rows = dict(c.execute(select(Call.id, Call.outcome).where(Call.id.in_(["slow", "next"]))).all())
    assert rows["slow"] == "refused_store"
    assert verify(s.url, KEY).ok
