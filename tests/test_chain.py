"""The hash chain: canonical form, hashes, checkpoints, and tampering detected on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, update
from sqlalchemy.pool import NullPool

from addons.core import chain
from addons.core.chain import GENESIS, CheckpointInfo, ChainCheck
from addons.core.models import Call, Checkpoint
from addons.core.records import Record
from addons.core.store import Store, prune, verify
from tests.support.postgres import shared_server
from tests.support.approvals import insert_approvals

KEY = b"k" * 32
UTC = dt.timezone.utc


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agentgate.db'}"
    return shared_server().fresh_database()


def write_chain(url: str, n: int = 10, *, key: bytes | None = KEY, writer_id: str = "w1", times=None) -> list[str]:
    """n records from one writer, a checkpoint of the head at close; their ids in seq order."""
    store = Store(url, writer_id=writer_id, chain_key=key, checkpoint_every=3600)
    store.migrate()
    store.start()
    ids = []
    for i in range(n):
        r = Record(principal=f"agent-{i}", action="s3:GetObject", decision="allow", params={"Bucket": "b", "n": i, "x": 0.1},
                   latency_ms=1.5 * i, time=times[i] if times else time.time())
        store.write_sync(r)
        ids.append(r.id)
    store.close()
    return ids


def sql(url: str):
    """A plain engine on the store, for editing it behind the gateway's back."""
    return create_engine(url, poolclass=NullPool)


# -- the canonical form and hashes ----------------------------------------------------------------


def test_canonical_form_is_sorted_compact_and_omits_nulls() -> None:
    t = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    got = chain.canonical({"b": 1, "a": "é", "n": None, "t": t, "f": 0.1, "hash": "ignored", "l": [1.0, {"z": 1, "y": 2}]})
    assert got == '{"a":"é","b":1,"f":0.1,"l":[1.0,{"y":2,"z":1}],"t":1735787045678901}'.encode()


def test_micros_is_exact_and_from_epoch_rounds_to_the_microsecond() -> None:
    t = chain.from_epoch(1700000000.123456)
    assert chain.micros(t) == 1700000000123456
    assert chain.micros(chain.from_epoch(0.0000004)) == 0
    assert chain.micros(dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


def test_every_field_and_the_previous_hash_change_the_hash() -> None:
    row = {"id": "a", "seq": 1, "prev_hash": GENESIS, "principal": "alice", "params": {"k": [1, 2]}}
    h = chain.record_hash(row)
    for change in ({"id": "b"}, {"seq": 2}, {"prev_hash": "1" * 64}, {"principal": "bob"}, {"params": {"k": [2, 1]}}):
        assert chain.record_hash({**row, **change}) != h
    assert chain.record_hash({**row, "hash": "whatever", "extra": None}) == h  # hash itself and NULLs are not hashed


def test_jsonable_makes_values_every_database_keeps() -> None:
    assert chain.jsonable({1: (1, 2), "b": b"\x00\xff", "f": float("nan"), "s": "a\x00b\ud800"}) == {
        "1": [1, 2], "b": "AP8=", "f": "nan", "s": "a\ufffdb\ufffd",
    }


def test_checkpoint_mac_depends_on_key_and_statement() -> None:
    t = dt.datetime(2025, 1, 1, tzinfo=UTC)
    mac = chain.checkpoint_mac(KEY, writer_id="w", seq=3, head_hash="a" * 64, time=t, kind="head")
    assert mac != chain.checkpoint_mac(b"x" * 32, writer_id="w", seq=3, head_hash="a" * 64, time=t, kind="head")
    assert mac != chain.checkpoint_mac(KEY, writer_id="w", seq=4, head_hash="a" * 64, time=t, kind="head")
    assert mac != chain.checkpoint_mac(KEY, writer_id="w", seq=3, head_hash="a" * 64, time=t, kind="prune")


def _rows(n: int, key: bytes | None = None) -> list[dict]:
    """``n`` records of writer ``w`` as a gateway writes them (each with its MAC when ``key``)."""
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        row = {"id": f"c{seq}", "writer_id": "w", "seq": seq, "prev_hash": prev, "principal": "p"}
        row["hash"] = prev = chain.record_hash(row)
        row["mac"] = key and chain.record_mac(key, writer_id="w", seq=seq, record_hash=row["hash"])
        rows.append(row)
    return rows


def _check(rows: list[dict], checkpoints: list[CheckpointInfo], key: bytes | None) -> ChainCheck:
    check = ChainCheck("w", checkpoints, key)
    for r in rows:
        check.feed(r)
    return check.finish()


def test_chain_check_without_a_database() -> None:
    t = dt.datetime(2025, 1, 1, tzinfo=UTC)

    def head(rows: list[dict], seq: int) -> CheckpointInfo:
        h = rows[seq - 1]["hash"]
        return CheckpointInfo(1, "w", seq, h, t, "head", chain.checkpoint_mac(KEY, writer_id="w", seq=seq, head_hash=h,
                                                                              time=t, kind="head"))
    rows = _rows(5, KEY)  # each record's MAC vouches for it and every record before it
    assert (_check(rows, [head(rows, 3)], KEY).problems, _check(rows, [], KEY).notes) == ([], [])
    # without the key, only the checkpoint anchors: what comes after it is unanchored
    assert _check(rows, [head(rows, 3)], None).notes == [
        "writer w: no chain key given, so checkpoints' HMACs were not checked",
        "writer w: records 4-5 are after the last checkpoint, so unanchored"]
    # records written before records had MACs: a keyed checkpoint after them vouches for them ...
    legacy = _rows(5)
    assert _check(legacy, [head(legacy, 5)], KEY).problems == []
    # ... and those after the last one, with the key given, are refused: nothing vouches for them
    assert _check(legacy, [head(legacy, 3)], KEY).problems == [
        "writer w: records 4-5 are without a MAC, from call c4, and no keyed checkpoint comes after them: "
        "written without the chain key, or rewritten with the MACs and the checkpoints removed"]
    forged = [dict(r) for r in rows]
    forged[4]["mac"] = "0" * 64
    assert _check(forged, [], KEY).problems == [
        "call c5 (writer w, seq 5): its MAC does not verify with the chain key: the record was altered or forged"]


# -- tampering, on both databases ------------------------------------------------------------------


def test_an_untouched_store_verifies(db_url: str) -> None:
    write_chain(db_url)
    result = verify(db_url, KEY)
    assert result.ok, result.problems
    assert (result.chains, result.records, result.checkpoints) == (1, 10, 1)
    assert result.notes == []


def test_one_field_edited_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(update(Call).where(Call.id == ids[3]).values(principal="mallory"))
    result = verify(db_url, KEY)
    assert not result.ok
    assert result.problems[0].startswith(f"call {ids[3]} (writer w1, seq 4): its content does not match its hash")
    assert len(result.problems) == 1


def test_a_json_member_edited_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(update(Call).where(Call.id == ids[6]).values(params={"Bucket": "other", "n": 6, "x": 0.1}))
    assert verify(db_url, KEY).problems[0].startswith(f"call {ids[6]} (writer w1, seq 7)")


def test_one_row_deleted_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(delete(Call).where(Call.id == ids[4]))
    result = verify(db_url, KEY)
    assert not result.ok
    assert result.problems == [
        f"call {ids[5]} (writer w1, seq 6): record 5 is missing between it and call {ids[3]} (seq 4): deleted"
    ]


def test_the_first_row_deleted_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(delete(Call).where(Call.id == ids[0]))
    problem = verify(db_url, KEY).problems[0]
    assert problem.startswith(f"call {ids[1]} (writer w1, seq 2): record 1 is missing before it")


def test_two_rows_swapped_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:  # the 3rd and 4th records trade places
        c.execute(update(Call).where(Call.id == ids[2]).values(seq=-1))
        c.execute(update(Call).where(Call.id == ids[3]).values(seq=3))
        c.execute(update(Call).where(Call.id == ids[2]).values(seq=4))
    result = verify(db_url, KEY)
    assert not result.ok
    assert result.problems[0].startswith(f"call {ids[3]} (writer w1, seq 3): its content does not match its hash")
    assert "does not link to" in result.problems[0]


def test_two_rows_contents_swapped_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    cols = ["principal", "params", "latency_ms", "hash", "prev_hash"]
    with sql(db_url).begin() as c:
        a, b = (c.execute(select(*[Call.__table__.c[k] for k in cols]).where(Call.id == i)).one() for i in (ids[1], ids[2]))
        c.execute(update(Call).where(Call.id == ids[1]).values(dict(zip(cols, b))))
        c.execute(update(Call).where(Call.id == ids[2]).values(dict(zip(cols, a))))
    problems = verify(db_url, KEY).problems
    assert problems[0].startswith(f"call {ids[1]} (writer w1, seq 2)")


def test_the_tail_truncated_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(delete(Call).where(Call.id.in_(ids[8:])))
    result = verify(db_url, KEY)
    assert not result.ok
    (problem,) = result.problems
    assert "points past the last record" in problem and "seq 10" in problem
    assert f"ends at seq 8 (call {ids[7]})" in problem and "records 9-10 are missing" in problem


def test_a_whole_chain_deleted_leaves_its_checkpoint_pointing_past_the_end(db_url: str) -> None:
    write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(delete(Call))
    (problem,) = verify(db_url, KEY).problems
    assert "has no records left" in problem and "records 1-10 are missing" in problem


def _calls_under_an_approval(url: str) -> tuple[str, str, str]:
    """Two recorded calls under one approval: held (no approver yet), then released by sre-sam.
    (approval id, held call id, released call id)"""
    store = Store(url, writer_id="w1", chain_key=KEY, checkpoint_every=3600)
    store.migrate()
    now = dt.datetime.now(UTC)
    insert_approvals(url, [{"id": "ap-1", "kind": "call", "binding_hash": "b" * 64, "principal": "agent-7",
                            "action": "ec2:TerminateInstances", "status": "used", "approver": "sre-sam",
                            "requested": now, "decided": now, "used": now}], chain_key=KEY)
    store.start()
    held = Record(principal="agent-7", action="ec2:TerminateInstances", decision="approve", outcome="refused",
                  approval_id="ap-1")
    released = Record(principal="agent-7", action="ec2:TerminateInstances", decision="approve", outcome="forwarded",
                      approval_id="ap-1", approver="sre-sam")
    store.write_sync(held)
    store.write_sync(released)
    store.close()
    return "ap-1", held.id, released.id


def test_an_approval_rewritten_or_deleted_after_its_call_is_detected(db_url: str) -> None:
    """The approvals table is not a chain (its rows change state), but a call's record names the
    approval it ran under, and who decided it: verify holds the approval to that."""
    from addons.core.models import Approval as ApprovalRow

    approval, held, released = _calls_under_an_approval(db_url)
    result = verify(db_url, KEY)
    assert result.ok and result.approvals == 1, result.problems
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalRow).where(ApprovalRow.id == approval).values(approver="mallory"))
    result = verify(db_url, KEY)
    assert result.problems == [f"call {released} (writer w1, seq 2): approval {approval} now names approver "
                               "'mallory', the call's record 'sre-sam'",
                               f"approval {approval} (used) does not read as its latest event (seq 1, requested) "
                               "left it: the row was altered afterwards"]
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalRow).where(ApprovalRow.id == approval).values(approver="sre-sam", principal="eve"))
    assert verify(db_url, KEY).problems[0].endswith(f"approval {approval} now names principal 'eve', the call's record 'agent-7'")
    with sql(db_url).begin() as c:
        c.execute(delete(ApprovalRow).where(ApprovalRow.id == approval))
    result = verify(db_url, KEY)
    assert not result.ok and result.problems == [
        f"call {held} (writer w1, seq 1): its record names approval {approval}, which the store no longer holds",
        f"call {released} (writer w1, seq 2): its record names approval {approval}, which the store no longer holds",
        f"approval {approval} is no longer in the store, but its events are (the latest: seq 1, requested): it was "
        "deleted"]


def test_a_forged_checkpoint_is_detected(db_url: str) -> None:
    ids = write_chain(db_url)
    with sql(db_url).begin() as c:
        head = c.execute(select(Call.hash).where(Call.id == ids[5])).scalar()
        t = dt.datetime.now(UTC)
        forged = chain.checkpoint_mac(b"not the key" * 3, writer_id="w1", seq=6, head_hash=head, time=t, kind="head")
        c.execute(insert(Checkpoint).values(writer_id="w1", seq=6, head_hash=head, time=t, kind="head", hmac=forged))
    result = verify(db_url, KEY)
    assert not result.ok
    (problem,) = result.problems
    assert problem.startswith("checkpoint #") and f"seq 6), at call {ids[5]}, is forged or altered" in problem


def test_an_altered_checkpoint_is_detected(db_url: str) -> None:
    write_chain(db_url)
    with sql(db_url).begin() as c:
        c.execute(update(Checkpoint).values(seq=5))
    (problem,) = verify(db_url, KEY).problems
    assert "is forged or altered" in problem


def test_a_rewritten_chain_is_caught_by_its_keyed_checkpoint(db_url: str) -> None:
    """Someone who edits a record and recomputes every later hash still cannot forge the records'
    MACs or the checkpoint, and deleting the checkpoints, or the MACs with them, does not help."""
    ids = write_chain(db_url)
    engine = sql(db_url)
    with engine.begin() as c:
        rows = [dict(r._mapping) for r in c.execute(select(Call.__table__).order_by(Call.seq))]
        rows[3]["principal"] = "mallory"
        prev = rows[2]["hash"]
        for row in rows[3:]:
            row["prev_hash"] = prev
            row["hash"] = prev = chain.record_hash({k: v for k, v in row.items() if k != "mac"})
            c.execute(update(Call).where(Call.id == row["id"]).values(principal=row["principal"], prev_hash=row["prev_hash"], hash=row["hash"]))
    result = verify(db_url, KEY)
    assert not result.ok
    assert result.problems[0] == (f"call {ids[3]} (writer w1, seq 4): its MAC does not verify with the chain key: "
                                  "the record was altered or forged")
    assert any(p.startswith(f"call {ids[9]} (writer w1, seq 10) does not match checkpoint #") for p in result.problems)
    # without the key the rewrite is still visible against the (unauthenticated) checkpoint
    assert not verify(db_url).ok
    # the checkpoints deleted: the records' MACs still tell
    with engine.begin() as c:
        c.execute(delete(Checkpoint))
    assert verify(db_url, KEY).problems[0].startswith(f"call {ids[3]} (writer w1, seq 4): its MAC does not verify")
    # the MACs removed too: nothing the key made vouches for the records any more
    with engine.begin() as c:
        c.execute(update(Call).values(mac=None))
    (problem,) = verify(db_url, KEY).problems
    assert problem.startswith(f"writer w1: records 1-10 are without a MAC, from call {ids[0]}, and no keyed checkpoint")
    assert verify(db_url).ok  # without the key, a store is only as good as its hashes: say so (README)


def _witness(caplog: pytest.LogCaptureFixture) -> list[chain.Witness]:
    """The chain heads the store logged (``agentgate.chain``), as `verify --witness` reads a log."""
    return chain.read_witnesses([f"INFO {r.name}: {r.getMessage()}" for r in caplog.records if r.name == "agentgate.chain"],
                                "gateway.log")


def test_the_newest_records_deleted_with_their_checkpoints_are_caught_by_a_witness(db_url: str, caplog) -> None:
    """What no chain shows by itself: its newest records deleted together with every checkpoint
    after them. The heads the writer logged, kept elsewhere, show it; a prune does not count as a
    deletion; a head no gateway holding the key wrote is ignored, not believed."""
    caplog.set_level("INFO", logger="agentgate.chain")
    ids = write_chain(db_url)
    seen = _witness(caplog)
    assert [(w.chain, w.seq) for w in seen] == [("w1", 10)] and seen[0].genuine(KEY)
    with sql(db_url).begin() as c:
        c.execute(delete(Call).where(Call.id.in_(ids[7:])))
        c.execute(delete(Checkpoint))
    assert verify(db_url, KEY).ok  # the chain alone cannot tell
    result = verify(db_url, KEY, seen)
    (problem,) = result.problems
    assert problem == ("gateway.log:1: the witness saw writer w1's chain at record 10, which the store no longer "
                       "holds (its chain ends at record 7): records deleted after it was written")
    forged = chain.Witness("w1", 12, "a" * 64, "b" * 64, "elsewhere:3")
    checked = verify(db_url, KEY, [forged])
    assert checked.ok and checked.witnesses == 0 and "elsewhere:3: ignored" in checked.notes[0]
    assert not verify(db_url, None, [forged]).ok  # without the key every head is taken as written


def test_a_witness_holds_rewritten_and_pruned_chains(db_url: str, caplog) -> None:
    caplog.set_level("INFO", logger="agentgate.chain")
    write_chain(db_url, 5, key=None)
    seen = _witness(caplog)
    assert verify(db_url, None, seen).ok and verify(db_url, None, seen).witnesses == 1
    engine = sql(db_url)
    with engine.begin() as c:  # the last record rewritten, its hash and the checkpoint recomputed
        row = dict(c.execute(select(Call.__table__).where(Call.seq == 5)).one()._mapping)
        row["principal"] = "mallory"
        row["hash"] = chain.record_hash({k: v for k, v in row.items() if k not in ("hash", "mac")})
        c.execute(update(Call).where(Call.seq == 5).values(principal="mallory", hash=row["hash"]))
        c.execute(update(Checkpoint).values(head_hash=row["hash"]))
    assert verify(db_url).ok
    (problem,) = verify(db_url, None, seen).problems
    assert "saw writer w1's record 5 with hash" in problem and "the chain was rewritten" in problem
    pruned = f"sqlite:///{engine.url.database}-pruned" if db_url.startswith("sqlite") else None
    if pruned is None:
        return
    write_chain(pruned, 5, key=KEY)
    seen = _witness(caplog)[-1:]
    prune(pruned, dt.datetime.now(UTC), chain_key=KEY)
    assert verify(pruned, KEY, seen).ok  # a pruned head is not missing


def test_the_newest_approval_events_deleted_are_caught_by_a_witness(db_url: str, caplog) -> None:
    from addons.core.models import Approval as ApprovalRow, ApprovalEvent

    caplog.set_level("INFO", logger="agentgate.chain")
    now = dt.datetime.now(UTC)
    Store(db_url).migrate()
    rows = [{"id": f"ap-{i}", "kind": "call", "binding_hash": f"{i}" * 64, "principal": "agent-1",
             "action": "ec2:TerminateInstances", "status": "pending", "requested": now,
             "expires": now + dt.timedelta(hours=1)} for i in range(3)]
    insert_approvals(db_url, rows, chain_key=KEY)
    seen = _witness(caplog)
    assert [(w.chain, w.seq) for w in seen] == [(chain.APPROVAL_EVENTS_CHAIN, n) for n in (1, 2, 3)]
    with sql(db_url).begin() as c:  # the newest approval and its event, gone together
        c.execute(delete(ApprovalEvent).where(ApprovalEvent.seq == 3))
        c.execute(delete(ApprovalRow).where(ApprovalRow.id == "ap-2"))
    assert verify(db_url, KEY).ok
    (problem,) = verify(db_url, KEY, seen).problems
    assert problem == ("gateway.log:3: the witness saw approval event 3, which the store no longer holds (its "
                       "approval events end at 2): events deleted after it was written")


def test_an_upgrade_anchors_the_records_an_older_gateway_left_after_its_last_checkpoint(db_url: str) -> None:
    """A store from before records had MACs, whose gateway stopped before checkpointing its last
    records: migrating it with the chain key (`agentgate init`, or the gateway's start) checks
    those records' hashes and links and anchors them with a keyed checkpoint, so that `verify`
    with the key holds; records altered before the upgrade are not anchored, and are reported."""
    from alembic import command

    from addons.core.store import alembic_config

    def legacy(tamper: bool) -> list[str]:
        ids = write_chain(db_url, n=5, key=None)
        engine = sql(db_url)
        with engine.begin() as c:
            head3 = c.execute(select(Call.hash).where(Call.seq == 3)).scalar()
            c.execute(delete(Checkpoint))  # the gateway was killed: a keyed checkpoint at 3, none after
            t = dt.datetime.now(UTC)
            c.execute(insert(Checkpoint), [{"writer_id": "w1", "seq": 3, "head_hash": head3, "time": t, "kind": "head",
                                            "hmac": chain.checkpoint_mac(KEY, writer_id="w1", seq=3, head_hash=head3,
                                                                         time=t, kind="head")}])
            if tamper:
                c.execute(update(Call).where(Call.seq == 5).values(principal="mallory"))
            command.downgrade(alembic_config(connection=c), "0005_lighter_indexes")
        engine.dispose()
        return ids

    ids = legacy(tamper=False)
    Store(db_url, chain_key=KEY).migrate()
    result = verify(db_url, KEY)
    assert result.ok and result.records == 5 and result.notes == [], result.problems
    with sql(db_url).begin() as c:
        assert c.execute(select(func.max(Checkpoint.seq))).scalar() == 5
        c.execute(delete(Call))
        c.execute(delete(Checkpoint))
        command.downgrade(alembic_config(connection=c), "base")
    legacy(tamper=True)
    Store(db_url, chain_key=KEY).migrate()
    problems = verify(db_url, KEY).problems
    assert any("its content does not match its hash" in p for p in problems)
    assert any("records 4-5 are without a MAC" in p for p in problems), problems
    assert ids


def test_records_after_the_last_checkpoint_are_unanchored_not_broken(db_url: str) -> None:
    store = Store(db_url, writer_id="w2", chain_key=KEY, checkpoint_every=3600)
    store.migrate()
    store.start()
    for _ in range(3):
        store.write_sync(Record(principal="p"))
    try:
        result = verify(db_url, KEY)  # the writer is still running: no checkpoint yet, the MACs vouch
        assert result.ok and result.records == 3 and result.notes == []
        assert verify(db_url).notes == ["writer w2: records 1-3 are after the last checkpoint, so unanchored"]
    finally:
        store.close()
    assert verify(db_url, KEY).notes == []


def test_several_writers_each_chain_their_own_records(db_url: str) -> None:
    stores = [Store(db_url, writer_id=f"w{i}", chain_key=KEY) for i in range(3)]
    stores[0].migrate()
    for s in stores:
        s.start()
    for i in range(30):
        stores[i % 3].write_sync(Record(principal=f"p{i}"))
    for s in stores:
        s.close()
    result = verify(db_url, KEY)
    assert result.ok, result.problems
    assert (result.chains, result.records) == (3, 30)


def test_a_checkpoint_without_hmac_is_refused_when_the_key_is_given(db_url: str) -> None:
    write_chain(db_url, key=None)
    assert verify(db_url).ok
    records, checkpoint = verify(db_url, KEY).problems  # in the order of the records they concern
    assert "has no HMAC" in checkpoint and "records 1-10 are without a MAC" in records


# -- pruning ---------------------------------------------------------------------------------------


def test_prune_keeps_the_rest_verifiable(db_url: str) -> None:
    now = time.time()
    times = [now - 10 * 86400] * 4 + [now - 86400, now - 9 * 86400] + [now] * 4  # seq 6 is old, after a new one
    ids = write_chain(db_url, times=times)
    before = dt.datetime.now(UTC) - dt.timedelta(days=5)
    assert prune(db_url, before, KEY, dry_run=True).records == 4
    result = prune(db_url, before, KEY)
    assert (result.records, result.chains) == (4, 1)
    with sql(db_url).connect() as c:
        left = c.execute(select(Call.id).order_by(Call.seq)).scalars().all()
    assert left == ids[4:]  # the longest old prefix only: seq 6 stays, the chain stays whole
    check = verify(db_url, KEY)
    assert check.ok, check.problems
    assert check.records == 6
    assert prune(db_url, before, KEY).records == 0  # again: nothing more to do
    # records removed after the prune point are still caught
    with sql(db_url).begin() as c:
        c.execute(delete(Call).where(Call.id == ids[4]))
    assert verify(db_url, KEY).problems[0].startswith(f"call {ids[5]} (writer w1, seq 6): record 5 is missing before it")


def test_prune_everything_then_keep_writing(db_url: str) -> None:
    write_chain(db_url, n=3)
    assert prune(db_url, dt.datetime.now(UTC) + dt.timedelta(seconds=1), KEY).records == 3
    result = verify(db_url, KEY)
    assert result.ok and result.records == 0 and result.chains == 1


def test_prune_takes_part_of_a_chain_written_before_records_had_macs(db_url: str) -> None:
    """Records without a MAC (a gateway older than 0006_call_macs wrote them) are vouched for by the
    keyed checkpoint after them: a date inside such a chain prunes its older part, and what is left
    still verifies; with no keyed checkpoint after them, prune still refuses."""
    from addons.core.store import StoreError

    now = time.time()
    ids = write_chain(db_url, times=[now - 10 * 86400] * 4 + [now] * 6)  # a keyed checkpoint at seq 10
    write_chain(db_url, n=3, writer_id="w2")  # the upgraded gateway's chain, its records with MACs
    with sql(db_url).begin() as c:
        c.execute(update(Call).where(Call.writer_id == "w1").values(mac=None))
    assert verify(db_url, KEY).ok
    before = dt.datetime.now(UTC) - dt.timedelta(days=5)
    result = prune(db_url, before, KEY)
    assert (result.records, result.chains) == (4, 1)
    with sql(db_url).connect() as c:
        left = c.execute(select(Call.id).where(Call.writer_id == "w1").order_by(Call.seq)).scalars().all()
    assert left == ids[4:]
    check = verify(db_url, KEY)
    assert check.ok, check.problems
    assert (check.chains, check.records) == (2, 9)
    # the same chain with its checkpoint made without the key: nothing vouches for the records to go
    ids = write_chain(db_url, times=[now - 10 * 86400] * 4 + [now] * 6, writer_id="w3")
    with sql(db_url).begin() as c:
        c.execute(update(Call).where(Call.writer_id == "w3").values(mac=None))
        c.execute(update(Checkpoint).where(Checkpoint.writer_id == "w3").values(hmac=None))
    with pytest.raises(StoreError, match=f"not pruning: writer w3: records 1-4 are without a MAC, from call {ids[0]}, "
                                         "and no keyed checkpoint comes after them"):
        prune(db_url, before, KEY)
    assert verify(db_url, KEY).records == 19


def test_prune_refuses_a_broken_chain(db_url: str) -> None:
    from addons.core.store import StoreError

    ids = write_chain(db_url, times=[time.time() - 86400 * 10] * 10)
    with sql(db_url).begin() as c:
        c.execute(update(Call).where(Call.id == ids[2]).values(principal="mallory"))
    with pytest.raises(StoreError, match=f"not pruning: call {ids[2]}"):
        prune(db_url, dt.datetime.now(UTC), KEY)
    with pytest.raises(StoreError, match="needs the chain key"):
        prune(db_url, dt.datetime.now(UTC), None)
    assert verify(db_url, KEY).records == 10


def test_a_witness_is_read_only_from_the_chain_loggers_own_lines() -> None:
    """Another logger's line that quotes the words (an approver's reason, an agent's key) is not a
    witness, wherever in it they stand; a chain head line the log cannot have meant is a note."""
    h = "a" * 64
    head = '{"chain": "%s", "seq": %d, "hash": "' + h + '", "mac": null}'
    lines = [
        "17:06:12 INFO agentgate.chain: chain head " + head % ("w", 3),
        "17:06:12 INFO [12] agentgate.chain: chain head " + head % ("w", 4),
        "Nov 27 17:06:12 host agentgate[1]: 17:06:12 INFO agentgate.chain: chain head " + head % ("w", 5),
        "17:06:13 INFO agentgate.approvals: approval ap-1 denied by bob (console): not now agentgate.chain: chain head "
        + head % ("forged", 9),
        "17:06:13 INFO agentgate.approvals: denied: x INFO agentgate.chain: chain head " + head % ("forged", 9),
        '17:06:14 INFO agentgate.chain: chain head {"chain": 1}',
    ]
    notes: list[str] = []
    assert [(w.chain, w.seq) for w in chain.read_witnesses(lines, "gateway.log", notes)] == [("w", 3), ("w", 4), ("w", 5)]
    assert notes == ["gateway.log:6: a 'chain head' line without a head that can be read: skipped"]
