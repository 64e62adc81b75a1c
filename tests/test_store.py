"""The evidence store: writing, group commit, sessions, reading, schema, and failing closed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import time

import pytest
from sqlalchemy import create_engine, event, func, inspect, select, text
from sqlalchemy.pool import NullPool

from addons.core.models import Call, Checkpoint, PolicyVersion
from addons.core.records import Record
from addons.core.store import Store, StoreError, StoreUnavailable, head_revision, load_chain_key, verify
from tests.support.postgres import shared_server
from tests.support.approvals import insert_approvals

KEY = b"k" * 32
UTC = dt.timezone.utc
POLICY_TEXT = "--- 10-read.yaml\nversion: 1\ndefault: deny\n"
POLICY_VERSION = hashlib.sha256(POLICY_TEXT.encode()).hexdigest()[:16]  # as core.policy.PolicySet names it


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agentgate.db'}"
    return shared_server().fresh_database()


@pytest.fixture
def store(db_url: str):
    s = Store(db_url, chain_key=KEY, writer_id="w")
    s.migrate()
    s.start()
    yield s
    s.close()


def sql(url: str):
    return create_engine(url, poolclass=NullPool)


def written(url: str, records: list[Record]) -> None:
    """A store at ``url`` (migrated) with ``records`` committed by one writer, then closed."""
    s = Store(url, writer_id="w")
    s.migrate()
    s.start()
    try:
        for r in records:
            s.write_sync(r)
    finally:
        s.close()


def downgraded(engine, revision: str) -> None:
    """The store behind ``engine`` taken back to schema ``revision``, as an older agentgate left it."""
    from alembic import command

    from addons.core.store import alembic_config

    with engine.begin() as c:
        command.downgrade(alembic_config(connection=c), revision)


def full_record(**kw) -> Record:
    """A Record with every field set, with values that are easy to get wrong on the way through."""
    values = dict(
        time=1767225600.123456, kind="call", session_id="sess-1", principal="alice@example.com",
        issuer="https://issuer.example", on_behalf_of="bob", groups=["data-agents", "sre"], client="10.0.0.7:51234",
        service="s3", operation="GetObject", action="s3:GetObject", access_level="Read", region="eu-west-1",
        account="111122223333", resources=["arn:aws:s3:::bucket/key"],
        params={"Bucket": "bucket", "Key": "a/ü/\u2603", "Range": None, "n": 10**15, "f": 0.1, "big": 1e16,
                "neg": -0.0, "nested": {"b": [1, 2.5, "x"], "a": True}, "tuple": (1, 2)},
        method="GET", host="bucket.s3.eu-west-1.amazonaws.com", url="https://bucket.s3.eu-west-1.amazonaws.com/a",
        request_headers=[("Host", "bucket.s3.eu-west-1.amazonaws.com"), ("X-Amz-Date", "20260101T000000Z")],
        request_body_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", request_body_size=0,
        decision="allow", rule="read-only", reason="List and Read are allowed", policy_version=POLICY_VERSION,
        approval_id="ap-1", approver="carol", role="arn:aws:iam::111122223333:role/agent-data", outcome="forwarded",
        status=200, error=None, aws_request_id="REQ123", response_headers=[("Content-Type", "text/plain")],
        response_body_sha256="f" * 64, response_body_size=2**40, bytes_in=0, bytes_out=2**40, latency_ms=12.345,
    )
    values.update(kw)
    return Record(**values)


# -- writing and reading back ------------------------------------------------------------------------


def test_every_record_field_has_a_column() -> None:
    columns = {c.name for c in Call.__table__.columns}
    assert {f.name for f in dataclasses.fields(Record)} <= columns
    assert {"writer_id", "seq", "prev_hash", "hash", "request_body", "response_body", "truncated"} <= columns


def test_the_migrations_build_exactly_the_schema_the_models_declare(db_url: str) -> None:
    """What `agentgate init` creates is what the code reads and writes: no table, column, type,
    index or constraint differs between Alembic's migrations and core.models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from addons.core.models import Base

    Store(db_url).migrate()
    with sql(db_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []


def test_a_record_reads_back_as_written(store: Store) -> None:
    r = full_record()
    store.write_sync(r)
    got = store.call(r.id)
    assert got is not None
    assert got["time"] == "2026-01-01T00:00:00.123456Z"
    for f in dataclasses.fields(Record):
        if f.name in ("time", "request_headers", "response_headers", "params"):
            continue
        assert got[f.name] == getattr(r, f.name), f.name
    assert got["request_headers"] == [list(h) for h in r.request_headers]
    assert got["params"] == {**r.params, "tuple": [1, 2]}
    assert (got["writer_id"], got["seq"], got["truncated"]) == ("w", 1, False)
    result = verify(store.url, KEY)  # neither the approval nor the policy version the record names is in the store
    assert result.problems == [f"call {r.id} (writer w, seq 1): its record names approval ap-1, which the store "
                               "no longer holds",
                               f"policy version {POLICY_VERSION}: 1 call names it (the first: call {r.id}), but the "
                               "store holds no text of it: the text was deleted, or the gateway could not store it "
                               "(its log says so)"]
    insert_approvals(store.url, [{"id": "ap-1", "kind": "call", "binding_hash": "b" * 64, "principal": r.principal,
                                  "action": r.action, "status": "used", "approver": "carol",
                                  "requested": dt.datetime.now(dt.timezone.utc)}], chain_key=KEY)
    store.store_policy_version(POLICY_VERSION, POLICY_TEXT)
    assert verify(store.url, KEY).ok


def test_credential_headers_are_never_stored(store: Store) -> None:
    headers = [("Authorization", "AWS4-HMAC-SHA256 Credential=AKIA..."), ("x-amz-security-token", "jwt"),
               ("PROXY-AUTHORIZATION", "Basic eHg="), ("Cookie", "a=b"), ("Set-Cookie", "c=d"), ("Host", "h")]
    r = Record(request_headers=headers, response_headers=headers)
    store.write_sync(r)
    got = store.call(r.id)
    assert got["request_headers"] == [["Host", "h"]]
    assert got["response_headers"] == [["Host", "h"]]


def test_odd_values_are_stored_and_still_verify(store: Store) -> None:
    r = Record(principal="nul\x00in\ud800side", params={"nan": float("nan"), "b": b"\x01", 3: "int key"},
               latency_ms=float("nan"), status=None)
    store.write_sync(r)
    got = store.call(r.id)
    assert got["principal"] == "nul\ufffdin\ufffdside"
    assert got["params"] == {"nan": "nan", "b": "AQ==", "3": "int key"}
    assert got["latency_ms"] is None
    assert verify(store.url, KEY).ok


def test_bodies_are_capped_and_flagged(db_url: str) -> None:
    s = Store(db_url, body_cap=10)
    s.migrate()
    s.start()
    try:
        short, long = Record(), Record()
        short.response_body = "0123456789"
        long.request_body = "é" * 20  # 40 bytes: cut at 10 bytes, on a character boundary
        s.write_sync(short)
        s.write_sync(long)
        assert (s.call(short.id)["response_body"], s.call(short.id)["truncated"]) == ("0123456789", False)
        assert (s.call(long.id)["request_body"], s.call(long.id)["truncated"]) == ("é" * 5, True)
    finally:
        s.close()


def test_sessions_are_created_and_updated(store: Store) -> None:
    t0 = 1767225600.0
    store.write_sync(Record(session_id="s1", principal="alice", issuer="iss", time=t0 + 10))
    store.write_sync(Record(session_id="s1", principal="alice", role="arn:role", time=t0))
    store.write_sync(Record(session_id="s2", principal="bob", time=t0 + 5))
    store.write_sync(Record(session_id=None, principal="nobody"))
    s1 = store.session("s1")
    assert s1 == {"id": "s1", "principal": "alice", "issuer": "iss", "on_behalf_of": None, "on_behalf_of_varies": False,
                  "role": "arn:role", "writer_id": "w", "started": "2026-01-01T00:00:00.000000Z",
                  "last_seen": "2026-01-01T00:00:10.000000Z", "calls": 2}
    assert [s["id"] for s in store.sessions()] == ["s1", "s2"]
    assert store.session("nope") is None


def test_a_session_names_the_party_its_calls_were_made_for_only_while_there_is_one(store: Store) -> None:
    """The role session is the principal's whoever it acts for: an agent acting for carol, then for
    no one, then for dave, has one session, which named carol for all its calls. It names a party
    while every call was made for that one, and otherwise none, saying the parties vary; `sessions
    show` lists them from the calls' records. Written a call at a time (each commit updates the
    session) and in one group commit alike."""
    t0 = 1767225600.0
    for i, party in enumerate(("carol", "carol")):
        store.write_sync(Record(session_id="one", principal="agent-1", on_behalf_of=party, time=t0 + i))
    for i, party in enumerate(("carol", None, "dave", "carol")):
        store.write_sync(Record(session_id="mixed", principal="agent-1", on_behalf_of=party, time=t0 + i))
    assert (store.session("one")["on_behalf_of"], store.session("one")["on_behalf_of_varies"]) == ("carol", False)
    mixed = store.session("mixed")
    assert (mixed["on_behalf_of"], mixed["on_behalf_of_varies"], mixed["calls"]) == (None, True, 4)
    assert store.session_parties("mixed") == ["carol", None, "dave"]
    rows = [{"session_id": "b", "principal": "agent-1", "issuer": None, "role": None, "time": t0 + i, "on_behalf_of": p}
            for i, p in enumerate(("carol", "dave"))]
    assert [(s["on_behalf_of"], s["on_behalf_of_varies"]) for s in store._session_rows(rows)] == [(None, True)]
    assert [(s["on_behalf_of"], s["on_behalf_of_varies"]) for s in store._session_rows(rows[:1] * 2)] == [("carol", False)]


def test_calls_filters(store: Store) -> None:
    now = time.time()
    store.write_sync(Record(principal="alice", action="s3:GetObject", decision="allow", time=now - 7200))
    store.write_sync(Record(principal="alice", action="s3:PutObject", decision="deny", time=now - 60))
    store.write_sync(Record(principal="bob", action="ec2:TerminateInstances", decision="approve", time=now))
    assert [c["principal"] for c in store.calls()] == ["bob", "alice", "alice"]  # newest first
    assert len(store.calls(principal="alice")) == 2
    assert [c["action"] for c in store.calls(action="s3:*")] == ["s3:PutObject", "s3:GetObject"]
    assert [c["action"] for c in store.calls(action="s3_GetObject")] == []  # _ is not a wildcard
    assert [c["decision"] for c in store.calls(decision="deny")] == ["deny"]
    assert len(store.calls(since=now - 3600)) == 2
    assert len(store.calls(until=dt.datetime.fromtimestamp(now - 30, UTC))) == 2
    assert len(store.calls(limit=1)) == 1
    assert [c["principal"] for c in store.calls(newest_first=False, limit=None)] == ["alice", "alice", "bob"]


def test_policy_versions_are_stored_once(store: Store, db_url: str) -> None:
    store.store_policy_version("v1", "version: 1\n")
    store.store_policy_version("v1", "version: 1\n")
    Store(db_url).store_policy_version("v1", "version: 1\n")  # another replica
    store.store_policy_version("v2", "version: 1\nrules: []\n")
    with sql(db_url).connect() as c:
        assert c.execute(select(func.count()).select_from(PolicyVersion)).scalar() == 2
    assert store.policy_version("v2") == "version: 1\nrules: []\n"


# -- the writer --------------------------------------------------------------------------------------


def test_concurrent_async_writers_share_group_commits(store: Store) -> None:
    async def writer(n: int) -> None:
        for i in range(50):
            await store.write(Record(principal=f"agent-{n}", params={"i": i}))

    async def main() -> None:
        await asyncio.gather(*(writer(n) for n in range(8)))

    asyncio.run(main())
    assert store.stats["records"] == 400
    assert store.stats["commits"] < 400  # several records per transaction
    with sql(store.url).connect() as c:
        seqs = c.execute(select(Call.seq).order_by(Call.seq)).scalars().all()
    assert seqs == list(range(1, 401))


def test_with_a_group_delay_records_that_come_meanwhile_share_the_commit(tmp_path) -> None:
    """``group_delay``: the writer waits that long before a commit of few records, so that a record
    arriving meanwhile joins it (one commit for both, the first caller waiting the delay); without
    it, each is committed as it comes. A group of GROUP_DELAY_UNDER records or more does not wait."""
    from addons.core.store import GROUP_DELAY_UNDER

    s = Store(f"sqlite:///{tmp_path / 'a.db'}", chain_key=KEY, writer_id="w")
    s.migrate()
    s.start()

    async def two(delay: float) -> tuple[int, float]:
        s.group_delay = delay
        commits = s.stats["commits"]
        started = time.monotonic()

        async def first() -> float:
            await s.write(Record(principal="first"))
            return time.monotonic() - started

        async def second() -> None:
            await asyncio.sleep(0.1)
            await s.write(Record(principal="second"))

        took, _ = await asyncio.gather(first(), second())
        return s.stats["commits"] - commits, took

    try:
        commits, took = asyncio.run(two(0.0))
        assert commits == 2 and took < 0.1  # each as it came
        commits, took = asyncio.run(two(0.5))
        assert commits == 1 and took >= 0.5  # the second joined the first's commit, which waited for it
        assert s.stats["delayed"] == 1
    finally:
        s.close()
    assert [c["principal"] for c in Store(s.url).calls(limit=None)] == ["second", "first"] * 2  # newest first

    many = Store(f"sqlite:///{tmp_path / 'b.db'}", durability="async", chain_key=KEY, writer_id="m")
    many.migrate()
    many.start()
    many.group_delay = 30.0
    try:
        with many._cond:  # queued together: the writer finds them all at once, and commits them at once
            for i in range(GROUP_DELAY_UNDER):
                many.write_sync(Record(principal="many", params={"i": i}))
        deadline = time.monotonic() + 5
        while many.stats["records"] < GROUP_DELAY_UNDER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert many.stats["records"] == GROUP_DELAY_UNDER and many.stats["delayed"] == 0
    finally:
        many.close()
    assert verify(s.url, chain_key=KEY).ok and verify(many.url, chain_key=KEY).ok


def test_a_burst_larger_than_one_commit_is_stored_whole(db_url: str) -> None:
    """3,000 records queued at once, five sessions each in most commits: more than one PostgreSQL
    statement can carry (65,535 parameters), so the writer splits them; every record is there,
    each session counts its calls, and the chain verifies."""
    s = Store(db_url, durability="async", chain_key=KEY, writer_id="burst")
    s.migrate()
    s.start()
    t0 = 1767225600.0
    postgres = db_url.startswith("postgresql")
    lock = sql(db_url).connect() if postgres else None
    try:
        if lock is not None:  # the writer waits on the table while all 3,000 are queued
            lock.begin()
            lock.execute(text("LOCK TABLE calls IN EXCLUSIVE MODE"))
        for i in range(3000):
            s.write_sync(Record(session_id=f"s{i % 5}", principal=f"agent-{i % 5}", time=t0 + i, params={"i": i}))
        if lock is not None:
            assert s.queued >= 2999
            lock.commit()
    finally:
        if lock is not None:
            lock.close()
        s.close()
    assert s.stats["records"] == 3000
    if postgres:
        assert s.stats["commits"] >= 4  # the first record, then at most 1,129 at a time
    reader = Store(db_url)
    sessions = {x["id"]: x for x in reader.sessions()}
    assert {k: v["calls"] for k, v in sessions.items()} == {f"s{n}": 600 for n in range(5)}
    assert sessions["s4"]["started"] == "2026-01-01T00:00:04.000000Z"
    assert sessions["s4"]["last_seen"] == "2026-01-01T00:49:59.000000Z"
    assert sorted(c["params"]["i"] for c in reader.calls(limit=None)) == list(range(3000))
    result = verify(db_url, KEY)
    assert result.ok and result.records == 3000 and result.notes == []


def test_sync_write_returns_only_once_committed(store: Store) -> None:
    r = Record()
    store.write_sync(r)
    with sql(store.url).connect() as c:  # another connection sees it at once
        assert c.execute(select(Call.id).where(Call.id == r.id)).scalar() == r.id


def test_async_durability_queues_and_close_drains(db_url: str) -> None:
    s = Store(db_url, durability="async", chain_key=KEY, writer_id="a")
    s.migrate()
    s.start()

    async def main() -> None:
        for _ in range(300):
            await s.write(Record())

    asyncio.run(main())
    for _ in range(200):
        s.write_sync(Record())
    s.close()
    result = verify(db_url, KEY)
    assert result.ok and result.records == 500 and result.checkpoints == 1
    assert result.notes == []  # close anchored the head


def test_checkpoints_are_written_periodically(db_url: str) -> None:
    s = Store(db_url, chain_key=KEY, checkpoint_every=0.05)
    s.migrate()
    s.start()

    def anchored() -> int | None:
        with sql(db_url).connect() as c:
            return c.execute(select(func.max(Checkpoint.seq))).scalar()

    try:
        for n in (1, 2, 3):
            s.write_sync(Record())
            deadline = time.monotonic() + 5
            while anchored() != n and time.monotonic() < deadline:
                time.sleep(0.02)
            assert anchored() == n  # the head is checkpointed soon after it moves, with no new writes
    finally:
        s.close()
    with sql(db_url).connect() as c:
        assert c.execute(select(func.count()).select_from(Checkpoint)).scalar() == 3  # none at close: head anchored
    assert verify(db_url, KEY).notes == []


def test_restart_starts_a_new_chain(db_url: str) -> None:
    for _ in range(2):
        s = Store(db_url, chain_key=KEY)
        s.migrate()
        s.start()
        s.write_sync(Record())
        s.close()
    result = verify(db_url, KEY)
    assert result.ok and result.chains == 2


def test_write_needs_a_started_store(db_url: str) -> None:
    s = Store(db_url)
    s.migrate()
    with pytest.raises(StoreError, match="is not started"):
        s.write_sync(Record())
    s.start()
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.write_sync(Record())


def test_a_record_the_database_refuses_fails_alone(store: Store) -> None:
    first = Record()
    store.write_sync(first)

    async def main() -> list:
        dup = dataclasses.replace(Record(), id=first.id)
        return await asyncio.gather(store.write(Record()), store.write(dup), store.write(Record()), return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1 is True and ok2 is True  # committed
    assert isinstance(bad, StoreError) and not isinstance(bad, StoreUnavailable)
    assert f"record {first.id} cannot be stored" in str(bad)
    assert store.healthy
    assert verify(store.url, KEY).ok


# -- the schema ----------------------------------------------------------------------------------------


def test_migrate_creates_the_tables_and_is_idempotent(db_url: str) -> None:
    s = Store(db_url)
    s.migrate()
    s.migrate()
    names = set(inspect(sql(db_url)).get_table_names())
    assert {"sessions", "calls", "approvals", "policy_versions", "checkpoints", "alembic_version"} <= names
    indexes = {i["name"] for i in inspect(sql(db_url)).get_indexes("calls")}
    assert {"ix_calls_time", "ix_calls_principal_time", "ix_calls_decision_time", "ix_calls_session_id_time",
            "ix_calls_approval_id"} <= indexes
    assert "ix_calls_action_time" not in indexes  # no lookup could use it (migration 0010)


def test_the_action_filter_needs_no_index_of_its_own_and_an_older_store_loses_it(db_url: str) -> None:
    """``calls list --action`` compares without regard to case, with wildcards: the database reads
    the calls through the index on time either way, so the store keeps no index on action (one page
    less on every commit). A store at 0009 has one; migrating drops it, and the filter finds the same
    calls after as before."""
    written(db_url, [Record(principal="alice", action=action, time=1767225600.0 + i)
                     for i, action in enumerate(["s3:GetObject", "S3:PutObject", "dynamodb:GetItem", "s3:GetObject"])])

    def found() -> dict[str, list[str]]:
        reader = Store(db_url)
        try:
            return {f: [c["action"] for c in reader.calls(action=f, limit=None, newest_first=False)]
                    for f in ("s3:*", "s3:getobject", "*:Get*")}
        finally:
            reader.engine.dispose()

    before = found()
    engine = sql(db_url)
    downgraded(engine, "0009_console_signouts")
    assert "ix_calls_action_time" in {i["name"] for i in inspect(engine).get_indexes("calls")}
    Store(db_url).migrate()
    assert "ix_calls_action_time" not in {i["name"] for i in inspect(engine).get_indexes("calls")}
    assert found() == before == {"s3:*": ["s3:GetObject", "S3:PutObject", "s3:GetObject"],
                                 "s3:getobject": ["s3:GetObject", "s3:GetObject"],
                                 "*:Get*": ["s3:GetObject", "dynamodb:GetItem", "s3:GetObject"]}
    # and the filter's query reads through the index on time, as it did with the action index there
    q = "SELECT id FROM calls WHERE lower(action) LIKE lower('s3:%') ORDER BY time DESC LIMIT 100"
    if db_url.startswith("sqlite"):
        with engine.connect() as c:
            plan = " ".join(" ".join(map(str, r)) for r in c.execute(text("EXPLAIN QUERY PLAN " + q)))
        assert "ix_calls_time" in plan, plan
    assert verify(db_url).ok
    engine.dispose()


def test_the_decision_index_holds_only_the_calls_not_allowed_and_an_older_store_gets_it(db_url: str) -> None:
    """Most calls are allowed: ``calls list --decision allow`` reads them through the index on time
    as quickly as through one of its own, so the index on decision holds only the calls denied or
    held for approval (an allowed call's commit writes no page of it), and ``--decision deny`` still
    looks them up through it. A store at 0010 has the index on every call; migrating makes it
    partial, and each filter finds the same calls after as before the store went back to 0010."""
    decisions = ["allow", "deny", "allow", "approve", "allow", "deny", "allow", "allow"]
    written(db_url, [Record(principal="alice", action="s3:GetObject", decision=decision, time=1767225600.0 + i)
                     for i, decision in enumerate(decisions)])

    def found() -> dict[str, list[float]]:
        reader = Store(db_url)
        try:
            return {d: [c["time"] for c in reader.calls(decision=d, limit=None, newest_first=False)]
                    for d in ("allow", "deny", "approve")}
        finally:
            reader.engine.dispose()

    def indexed() -> int:  # how many calls the index holds
        with engine.connect() as conn:
            if db_url.startswith("sqlite"):
                return conn.execute(text("SELECT sum(ncell) FROM dbstat WHERE name = 'ix_calls_decision_time'")).scalar()
            conn.execute(text("ANALYZE calls"))
            return int(conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'ix_calls_decision_time'"))
                       .scalar())

    engine = sql(db_url)
    after = found()
    assert [len(after[d]) for d in ("allow", "deny", "approve")] == [5, 2, 1]
    assert indexed() == 3
    downgraded(engine, "0010_no_action_index")
    assert indexed() == 8
    Store(db_url).migrate()
    assert indexed() == 3
    assert found() == after
    # the store's own query for the refused calls reads them through the index (SQLite; PostgreSQL's
    # planner reads a table this small whole, whatever indexes it has)
    if db_url.startswith("sqlite"):
        reader = Store(db_url)
        sent: list[tuple[str, object]] = []
        event.listen(reader.engine, "before_cursor_execute",
                     lambda conn, cur, stmt, params, *a: sent.append((stmt, params)))
        assert [c["time"] for c in reader.calls(decision="deny", limit=None, newest_first=False)] == after["deny"]
        stmt, params = next((st, p) for st, p in sent if "FROM calls" in st)
        with reader.engine.connect() as conn:
            plan = " ".join(" ".join(map(str, r)) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params))
        assert "ix_calls_decision_time" in plan, plan
        reader.engine.dispose()
    assert verify(db_url).ok
    engine.dispose()


def test_each_call_touches_only_the_indexes_its_lookups_need(db_url: str) -> None:
    """The approval index holds only the calls that name an approval, and the lookups by approval
    use it; sessions keep no index on last_seen (every call moves it), and still list newest first."""
    written(db_url, [Record(session_id=f"s{i % 3}", principal="alice", time=1767225600.0 + i,
                            approval_id="ap-7" if i in (4, 9) else None) for i in range(30)])
    engine = sql(db_url)
    assert {i["name"] for i in inspect(engine).get_indexes("sessions")} == set()
    assert [x["id"] for x in Store(db_url).sessions()] == ["s2", "s1", "s0"]
    by_approval = "SELECT id FROM calls WHERE approval_id = 'ap-7'"
    with engine.connect() as conn:
        if db_url.startswith("sqlite"):
            ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_calls_approval_id'")).scalar()
            assert ddl.endswith("WHERE approval_id IS NOT NULL")
            entries = conn.execute(text("SELECT count(*) FROM calls INDEXED BY ix_calls_approval_id "
                                        "WHERE approval_id IS NOT NULL")).scalar()
            plans = [" ".join(map(str, r)) for q in (by_approval, "SELECT id FROM calls WHERE approval_id IS NOT NULL")
                     for r in conn.execute(text("EXPLAIN QUERY PLAN " + q))]
        else:
            ddl = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_calls_approval_id'")).scalar()
            assert ddl.endswith("WHERE (approval_id IS NOT NULL)")
            conn.execute(text("SET enable_seqscan = off"))  # the table is too small for the planner to bother
            conn.execute(text("ANALYZE calls"))
            entries = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'ix_calls_approval_id'")).scalar()
            plans = [" ".join(map(str, r)) for q in (by_approval, "SELECT id FROM calls WHERE approval_id IS NOT NULL")
                     for r in conn.execute(text("EXPLAIN " + q))]
    assert entries == 2
    assert sum("ix_calls_approval_id" in p for p in plans) == 2, plans
    assert len(Store(db_url).calls(limit=None)) == 30


def test_a_store_without_schema_is_refused(db_url: str) -> None:
    if db_url.startswith("sqlite:///"):
        open(db_url.removeprefix("sqlite:///"), "w").close()  # an empty database file
    s = Store(db_url)
    with pytest.raises(StoreError, match="has no agentgate schema yet"):
        s.start()


def test_a_missing_sqlite_file_is_not_created_by_reading(tmp_path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(StoreError, match=f"there is no store at {path}"):
        Store(f"sqlite:///{path}").calls()
    assert not path.exists()


def test_a_store_newer_than_the_code_is_refused(db_url: str) -> None:
    Store(db_url).migrate()
    with sql(db_url).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    s = Store(db_url)
    with pytest.raises(StoreError, match=rf"is at schema ffff9999, newer than this agentgate \({head_revision()}\); upgrade agentgate"):
        s.migrate()
    with pytest.raises(StoreError, match="newer than this agentgate"):
        s.calls()


def test_bad_urls_say_what_to_use() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        Store("nonsense")
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        Store("mysql://x@localhost/db")


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    s = Store("postgresql://u@127.0.0.1:1/db")
    assert s.engine.dialect.driver == "psycopg"


def test_chain_key_file(tmp_path) -> None:
    assert load_chain_key(tmp_path) is None
    (tmp_path / "chain.key").write_bytes(b"0123456789abcdef0123\n")
    assert load_chain_key(tmp_path) == b"0123456789abcdef0123"
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(StoreError, match="too short"):
        load_chain_key(tmp_path / "short")


@pytest.mark.parametrize("setting, pragma", [(None, 1), ("normal", 1), ("full", 2)])
def test_sqlite_runs_in_wal_mode_with_the_synchronous_setting(tmp_path, setting, pragma) -> None:
    """NORMAL (1) unless the setting says FULL (2), whatever the durability; both in WAL mode."""
    for durability in ("sync", "async"):
        kw = {"sqlite_synchronous": setting} if setting else {}
        s = Store(f"sqlite:///{tmp_path / f'{durability}.db'}", durability=durability, **kw)
        s.migrate()
        with s.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        assert ("synchronous=FULL" if pragma == 2 else "synchronous=NORMAL") in s.guarantee
        s.engine.dispose()


def test_normal_flushes_the_wal_to_the_device_within_a_second(tmp_path, monkeypatch) -> None:
    """With "normal", a commit reaches the device (the WAL file is flushed) within a second, off the
    writer's commits; and only when there is something new. With "full" each commit does it."""
    import os

    flushed: list[tuple[float, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        flushed.append((time.monotonic(), os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    wal = lambda: [t for t, path in flushed if path.endswith("-wal")]  # noqa: E731
    for setting in ("normal", "full"):
        s = Store(f"sqlite:///{tmp_path / f'{setting}.db'}", sqlite_synchronous=setting, checkpoint_every=3600)
        s.migrate()
        s.start()
        try:
            before = len(wal())
            s.write_sync(Record())
            committed = time.monotonic()
            time.sleep(1.4)
            after = wal()[before:]
            if setting == "normal":
                assert len(after) == 1 and committed < after[0] < committed + 1.2, (committed, after)
                time.sleep(1.2)
                assert len(wal()) == before + 1  # nothing new: no flush
            else:
                assert after == []  # SQLite flushed at the commit itself
        finally:
            s.close()


def test_store_settings_are_checked() -> None:
    with pytest.raises(StoreError, match="sqlite_synchronous must be 'normal' or 'full', not 'off'"):
        Store("sqlite://", sqlite_synchronous="off")
    with pytest.raises(StoreError, match="commit_timeout must be a number of seconds above 0"):
        Store("sqlite://", commit_timeout=0)


# -- failing closed ------------------------------------------------------------------------------------


def test_unreachable_database_is_unavailable_quickly() -> None:
    s = Store("postgresql+psycopg://postgres@127.0.0.1:9/agentgate")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot open the store at postgresql"):
        s.migrate()
    with pytest.raises(StoreUnavailable, match="cannot read the store"):
        s.calls()
    assert time.monotonic() - started < 5


def test_postgres_down_fails_closed_and_recovers() -> None:
    pg = shared_server()
    url = pg.fresh_database()
    s = Store(url, chain_key=KEY, writer_id="w", checkpoint_every=3600)
    s.migrate()
    s.start()
    try:
        s.write_sync(Record(principal="before"))
        pg.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot write"):
            s.write_sync(Record(principal="during-1"))
        assert not s.healthy
        with pytest.raises(StoreUnavailable):  # refused at once while down
            asyncio.run(s.write(Record(principal="during-2")))
        assert time.monotonic() - started < 5
        pg.start()
        deadline = time.monotonic() + 10
        while not s.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.healthy  # the same Store, recovered by itself
        s.write_sync(Record(principal="after"))
    finally:
        pg.start()
        s.close()
    # the records refused while down were kept and written, in order, in one chain
    assert [c["principal"] for c in s.calls(newest_first=False)] == ["before", "during-1", "during-2", "after"]
    result = verify(url, KEY)
    assert result.ok, result.problems
    s.engine.dispose()


def test_record_ids_are_unique_and_sort_by_time():
    """A record's id: 32 lower-case hex digits, the first 12 its millisecond, so ids sort by time."""
    from addons.core.records import new_id

    first = new_id()
    ids = [new_id() for _ in range(20_000)]
    time.sleep(0.002)
    later = new_id()
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids + [first, later])
    assert first[:12] <= min(i[:12] for i in ids) and max(i[:12] for i in ids) < later[:12]
    assert int(later[:12], 16) - int(time.time() * 1000) <= 0


def test_a_store_from_before_sessions_said_their_parties_vary_is_read_so_when_migrated(db_url: str) -> None:
    """A store at 0011 named the first party of a session whose calls were made for several; once
    migrated, such a session names none and says they vary, read from its calls' records."""
    t0 = 1767225600.0
    written(db_url, [Record(session_id=sid, principal="agent-1", on_behalf_of=party, time=t0 + i)
                     for i, (sid, party) in enumerate((("one", "carol"), ("one", "carol"), ("mixed", "carol"),
                                                       ("mixed", None), ("alone", None)))])
    engine = sql(db_url)
    downgraded(engine, "0011_decision_index_for_refusals")
    with engine.begin() as conn:  # as 0011's writer left it: the first party of each
        conn.execute(text("UPDATE sessions SET on_behalf_of = 'carol' WHERE id = 'mixed'"))
    Store(db_url).migrate()
    reader = Store(db_url)
    try:
        assert {s["id"]: (s["on_behalf_of"], s["on_behalf_of_varies"]) for s in reader.sessions()} == {
            "one": ("carol", False), "mixed": (None, True), "alone": (None, False)}
    finally:
        reader.engine.dispose()
    engine.dispose()
