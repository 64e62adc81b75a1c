"""Approval events: every change of an approval (asked for, approved, denied, expired, used,
revoked) is an event in one hash chain, keyed with the chain key; `agentgate verify` holds the
approvals table to it, so a denial rewritten, an approver renamed, an approval or an event deleted,
or an event forged is reported, including for approvals no recorded call ran under. SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from alembic import command
from sqlalchemy import create_engine, delete, event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from addons.core import chain
from addons.core.approvals import Approvals
from addons.core.models import Approval as ApprovalRow
from addons.core.models import ApprovalEvent, Checkpoint
from addons.core.records import Record
from addons.core.store import Store, StoreError, alembic_config, prune, verify
from tests.support.postgres import shared_server
from tests.test_approval import AGENT, ROLE, SRE, decision, principal, terminate

KEY = b"k" * 32
UTC = dt.timezone.utc


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'a.db'}"
    return shared_server().fresh_database()


def _approvals(url: str, key: bytes | None = KEY) -> Approvals:
    store = Store(url, chain_key=key)
    store.migrate()
    return Approvals(store)


def sql(url: str):
    return create_engine(url, poolclass=NullPool)


def events(url: str) -> list[dict]:
    with sql(url).connect() as c:
        return [dict(r._mapping) for r in c.execute(select(ApprovalEvent).order_by(ApprovalEvent.seq))]


def a_denial_and_a_release(url: str, key: bytes | None = KEY) -> tuple[str, str]:
    """One call approval denied (no call ever ran under it), one approved and taken."""
    approvals = _approvals(url, key)
    denied = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1")).approval
    approvals.decide(denied.id, SRE, approve=False, reason="not during the freeze", channel="console")
    released = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-2")).approval
    approvals.decide(released.id, SRE, approve=True)
    assert approvals.take(released.id) is not None
    approvals.engine.dispose()
    return denied.id, released.id


def test_every_change_of_an_approval_is_an_event_and_the_store_verifies(db_url):
    denied, released = a_denial_and_a_release(db_url)
    approvals = _approvals(db_url)
    history = approvals.history(denied)
    assert [(e["event"], e["actor"], e["channel"], e["reason"]) for e in history] == [
        ("requested", "agent-1", "gateway", "deleting cannot be undone"),
        ("denied", "alice", "console", "not during the freeze")]
    assert [e["event"] for e in approvals.history(released)] == ["requested", "approved", "used"]

    # a grant: requested, approved, revoked; a pending approval left to expire and then found expired
    contractor = principal("contractor-7", groups=("contractors",))
    g = approvals.request_grant(contractor, role_arn=ROLE.role_arn, role_id="agents", duration=600,
                                reason="incident 42", approvers={"groups": ["sre"]}).approval
    approvals.decide(g.id, SRE, approve=True)
    approvals.revoke(g.id, contractor, reason="done")
    now = dt.datetime.now(UTC)
    late = approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-3"), now=now).approval
    assert approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-3"),
                         now=now + dt.timedelta(seconds=31)).state == "expired"
    assert [(e["event"], e["actor"]) for e in approvals.history(g.id)] == [
        ("requested", "contractor-7"), ("approved", "alice"), ("revoked", "contractor-7")]
    assert [e["event"] for e in approvals.history(late.id)] == ["requested", "expired"]
    approvals.engine.dispose()

    chained = events(db_url)
    assert [e["seq"] for e in chained] == list(range(1, 11))
    assert all(e["mac"] for e in chained)  # the writer held the chain key
    result = verify(db_url, KEY)
    assert result.ok and (result.approval_events, result.approvals_held) == (10, 4), result.problems
    assert result.notes == []


@pytest.mark.parametrize("edit", ["denial-turned-approval", "approver-renamed", "reason-rewritten",
                                  "expiry-extended"])
def test_an_approval_rewritten_after_its_last_event_is_detected(db_url, edit):
    denied, _ = a_denial_and_a_release(db_url)
    values = {
        "denial-turned-approval": {"status": "approved", "reason": None},
        "approver-renamed": {"approver": "mallory"},
        "reason-rewritten": {"reason": "approved by phone"},
        "expiry-extended": {"expires": dt.datetime.now(UTC) + dt.timedelta(days=365)},
    }[edit]
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalRow).where(ApprovalRow.id == denied).values(**values))
    result = verify(db_url, KEY)
    status = "approved" if edit == "denial-turned-approval" else "denied"
    assert result.problems == [f"approval {denied} ({status}) does not read as its latest event (seq 2, denied) "
                               "left it: the row was altered afterwards"]


def test_an_approval_deleted_with_or_without_its_events_is_detected(db_url):
    denied, released = a_denial_and_a_release(db_url)
    with sql(db_url).begin() as c:
        c.execute(delete(ApprovalRow).where(ApprovalRow.id == denied))
    assert verify(db_url, KEY).problems == [
        f"approval {denied} is no longer in the store, but its events are (the latest: seq 2, denied): it was deleted"]
    with sql(db_url).begin() as c:  # and its events too: the chain has a hole where they were
        c.execute(delete(ApprovalEvent).where(ApprovalEvent.approval_id == denied))
    assert verify(db_url, KEY).problems == [
        f"approval event 3 (requested of {released}): events 1-2 are missing before it and no prune checkpoint "
        "accounts for them (the start of the chain was deleted)"]


def test_an_event_altered_removed_or_forged_is_detected(db_url):
    denied, released = a_denial_and_a_release(db_url)
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalEvent).where(ApprovalEvent.seq == 2).values(reason="fine by me"))
    assert verify(db_url, KEY).problems == [
        f"approval event 2 (denied of {denied}): its content does not match its hash: the event was altered"]
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalEvent).where(ApprovalEvent.seq == 2).values(reason="not during the freeze"))
        c.execute(delete(ApprovalEvent).where(ApprovalEvent.seq == 4))
    assert verify(db_url, KEY).problems == [
        f"approval event 5 (used of {released}): event 4 is missing between it and approval event 3 "
        f"(requested of {released}): deleted"]


def test_a_rewrite_recomputed_without_the_key_is_caught_by_the_mac(db_url):
    """Whoever can write the database can recompute hashes, not MACs: a denial turned into an
    approval with the whole chain rewritten to match still fails on the key."""
    denied, _ = a_denial_and_a_release(db_url)
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalRow).where(ApprovalRow.id == denied).values(status="approved", reason=None))
        row = c.execute(select(ApprovalRow.__table__).where(ApprovalRow.id == denied)).first()
        prev = chain.GENESIS
        for e in c.execute(select(ApprovalEvent.__table__).order_by(ApprovalEvent.seq)).all():
            content = {k: v for k, v in e._mapping.items() if k not in ("hash", "mac")}
            content["prev_hash"] = prev
            if e.seq == 2:
                content.update(event="approved", reason=None, state_hash=chain.approval_state_hash(row._mapping))
            content["hash"] = prev = chain.record_hash(content)
            content["mac"] = chain.event_mac(b"a guess at the key!", seq=e.seq, event_hash=content["hash"])
            c.execute(update(ApprovalEvent).where(ApprovalEvent.seq == e.seq).values(**content))
    problems = verify(db_url, KEY).problems
    assert problems and all("its MAC does not verify with the chain key: forged or altered" in p for p in problems)
    assert len(problems) == 5
    # without MACs the rewrite reads as written without the key: nothing vouches for it, and a
    # decision without one is reported
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalEvent).values(mac=None))
    result = verify(db_url, KEY)
    writer = events(db_url)[0]["writer"]
    assert not result.ok and len(result.problems) == 2
    assert all(f"a decision without a MAC of the chain key (written by {writer})" in p for p in result.problems)
    assert result.notes == [f"approval events 1-5 after the last keyed one, so unanchored; written without the "
                            f"chain key by {writer} (5)"]


def test_an_approval_written_outside_agentgate_has_no_event(db_url):
    a_denial_and_a_release(db_url)
    now = dt.datetime.now(UTC)
    with sql(db_url).begin() as c:
        c.execute(insert(ApprovalRow), [{"id": "ap-forged", "kind": "call", "binding_hash": "f" * 64,
                                         "principal": "agent-1", "action": "ec2:TerminateInstances",
                                         "status": "approved", "approver": "alice", "requested": now,
                                         "decided": now, "expires": now + dt.timedelta(minutes=15)}])
    assert verify(db_url, KEY).problems == [
        "approval ap-forged (approved) has no event: it was written or changed outside agentgate, or its events "
        "were deleted"]


def test_a_decision_without_the_key_is_refused_and_one_forged_releases_nothing(db_url):
    """Where the store's events are keyed, a decision is made only with the chain key; one written
    without it (what plain SQL can do: the row set to approved, an event hashed but not keyed) is
    released on by no gateway holding the key, even once a keyed event follows it in the chain,
    and `verify` reports it."""
    from addons.core.approvals import ApprovalError, Unvouched

    approvals = _approvals(db_url)
    a = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-9")).approval
    keyless = _approvals(db_url, key=None)  # a CLI on a machine without the gateway's keys
    with pytest.raises(ApprovalError, match="keyed with the chain key, which cannot be read here"):
        keyless.decide(a.id, SRE, approve=True)
    with pytest.raises(ApprovalError, match="keyed with the chain key"):
        keyless.revoke(a.id, SRE)
    now = dt.datetime.now(UTC)
    with keyless._changing() as conn:
        conn.execute(update(ApprovalRow).where(ApprovalRow.id == a.id).values(
            status="approved", approver="alice", decided=now, channel="console", reason="INC-2291"))
        keyless._event(conn, a.id, "approved", now, actor="alice", reason="INC-2291", channel="console")
    with pytest.raises(Unvouched, match="its latest event \\(approved, seq 2\\) carries no valid MAC"):
        approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-9"))
    with pytest.raises(Unvouched):
        approvals.take(a.id)
    assert approvals.get(a.id).status == "approved"  # nothing used
    approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-10"))  # a keyed event follows it
    result = verify(db_url, KEY)
    assert not result.ok and result.problems == [
        f"approval event 2 (approved of {a.id}): a decision without a MAC of the chain key (written by "
        f"{keyless.writer}): nothing vouches that an approver made it"]
    assert verify(db_url, None).notes == ["no chain key given, so the approval events' MACs were not checked"]
    # an access grant forged so lets no principal run as its role
    contractor = principal("contractor-8", groups=("contractors",))
    g = approvals.request_grant(contractor, role_arn=ROLE.role_arn, role_id="agents", duration=600,
                                reason="incident 43", approvers={"groups": ["sre"]}).approval
    with keyless._changing() as conn:
        conn.execute(update(ApprovalRow).where(ApprovalRow.id == g.id).values(
            status="approved", approver="alice", decided=now, expires=now + dt.timedelta(minutes=10)))
        keyless._event(conn, g.id, "approved", now, actor="alice", channel="console")
    assert [x.id for x in keyless.active_grants()] == [g.id]  # as the store reads without the key
    assert approvals.active_grants() == []  # as a gateway holding the key takes it
    # a store whose events were never keyed (a deployment without keys) still takes keyless decisions
    plain = _approvals(db_url.replace("a.db", "b.db"), key=None) if db_url.startswith("sqlite") else None
    if plain is not None:
        b = plain.ask(principal=AGENT, decision=decision(), call=terminate("i-11")).approval
        plain.decide(b.id, SRE, approve=True)
        assert plain.take(b.id) is not None
        plain.engine.dispose()
    approvals.engine.dispose()
    keyless.engine.dispose()


def test_replicas_and_the_cli_deciding_at_once_keep_one_unbroken_chain(db_url):
    """Several processes' worth of writers (each its own engine) asking and deciding at the same
    time: the events' seqs stay contiguous and every approval verifies."""
    writers = [_approvals(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def work(i: int, approvals: Approvals) -> None:
        try:
            barrier.wait()
            for n in range(6):
                a = approvals.ask(principal=AGENT, decision=decision(), call=terminate(f"i-{i}-{n}")).approval
                approvals.decide(a.id, SRE, approve=bool(n % 2), reason=None if n % 2 else "no")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, w)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.engine.dispose()
    assert errors == []
    chained = events(db_url)
    assert [e["seq"] for e in chained] == list(range(1, 49))
    assert len({e["writer"] for e in chained}) == 4
    result = verify(db_url, KEY)
    assert result.ok and (result.approval_events, result.approvals_held) == (48, 24), result.problems


def test_approvals_that_change_while_verify_reads_the_store_are_not_reported(db_url):
    """`agentgate verify` on a store that running gateways keep writing: an approval asked for, and
    another used, after verify read the approval events and before it read the approvals, were
    reported as "has no event: it was written or changed outside agentgate" and "does not read as
    its latest event left it: the row was altered afterwards", on a healthy store (exit 1). verify
    reads the store as it was at one moment."""
    approvals = _approvals(db_url)
    used = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-used")).approval
    approvals.decide(used.id, SRE, approve=True)
    gateway, read = approvals.engine, []

    def meanwhile(conn, cursor, statement, *args) -> None:
        if conn.engine is gateway or "done" in read:
            return
        if "FROM approval_events" in statement:
            read.append("events")
        elif "FROM approvals" in statement and "events" in read:
            read.append("done")  # a gateway asks for one approval and uses another, now
            approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-asked"))
            assert approvals.take(used.id) is not None

    event.listen(Engine, "before_cursor_execute", meanwhile)
    try:
        result = verify(db_url, KEY)
    finally:
        event.remove(Engine, "before_cursor_execute", meanwhile)
        approvals.engine.dispose()
    assert read == ["events", "done"]
    assert result.ok, result.problems
    assert (result.approval_events, result.approvals_held) == (2, 1)  # the store as it was when verify began
    again = verify(db_url, KEY)
    assert again.ok and (again.approval_events, again.approvals_held) == (4, 2), again.problems


def test_approvals_already_in_a_store_are_covered_from_the_migration_on(db_url):
    """A store migrated from before approval events: each approval gets one `existing` event."""
    url = db_url
    command.upgrade(alembic_config(url), "0003_masking")
    now = dt.datetime.now(UTC).replace(microsecond=123456)
    with sql(url).begin() as c:
        c.execute(insert(ApprovalRow), [
            {"id": "ap-old1", "kind": "call", "binding_hash": "a" * 64, "principal": "agent-1",
             "action": "ec2:TerminateInstances", "status": "denied", "approver": "alice", "reason": "no",
             "requested": now, "decided": now, "params": {"InstanceIds": ["i-1"], "Count": 1.5},
             "resources": ["i-1"]}])
        c.execute(insert(ApprovalRow), [
            {"id": "ap-old2", "kind": "call", "binding_hash": "b" * 64, "principal": "agent-1",
             "action": "ec2:TerminateInstances", "status": "pending", "requested": now + dt.timedelta(seconds=1),
             "expires": now + dt.timedelta(hours=1)}])
    Store(url).migrate()
    assert [(e["seq"], e["approval_id"], e["event"], e["mac"]) for e in events(url)] == [
        (1, "ap-old1", "existing", None), (2, "ap-old2", "existing", None)]
    result = verify(url, KEY)
    assert result.ok and result.approvals_held == 2, result.problems
    assert result.notes == ["approval events 1-2 after the last keyed one, so unanchored"]
    approvals = _approvals(url)
    approvals.decide("ap-old2", SRE, approve=True)  # keyed: it vouches for the events before it
    approvals.engine.dispose()
    assert verify(url, KEY).notes == []
    with sql(url).begin() as c:
        c.execute(update(ApprovalRow).where(ApprovalRow.id == "ap-old1").values(status="approved"))
    assert verify(url, KEY).problems == [
        "approval ap-old1 (approved) does not read as its latest event (seq 1, existing) left it: the row was "
        "altered afterwards"]


def test_a_client_gone_before_the_hold_ended_is_kept_with_the_approval_and_verifies(db_url):
    """A try of a pending approval's call that left before its hold ended marks the approval in the
    store once, with an event: a retry asking for it through another gateway on the store finds
    the mark; the mark verifies, and one forged or cleared in the row is reported. A store holding
    such an event is not taken back to a schema without them (approvals from before have no mark,
    which their rows' hashes omit: test_approvals_already_in_a_store_are_covered_from_the_migration_on)."""
    url = db_url
    command.upgrade(alembic_config(url), "0007_approval_actors")
    mine, other = _approvals(url), _approvals(url)  # two gateways on one store, migrated by the first
    asked = mine.ask(principal=AGENT, decision=decision(), call=terminate("i-1")).approval
    unmarked = mine.ask(principal=AGENT, decision=decision(), call=terminate("i-2")).approval
    assert asked.client_left is None
    assert mine.mark_client_left(asked.id, actor="agent-1") is True
    assert mine.mark_client_left(asked.id, actor="agent-1") is False  # once: no second event
    again = other.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))
    assert (again.state, again.approval.id, again.created) == ("pending", asked.id, False)
    left = again.approval.client_left
    assert left is not None and (dt.datetime.now(UTC) - left).total_seconds() < 60
    assert other.ask(principal=AGENT, decision=decision(), call=terminate("i-2")).approval.client_left is None
    history = other.history(asked.id)
    assert [(e["event"], e["actor"], e["channel"]) for e in history] == [
        ("requested", "agent-1", "gateway"), ("client_left", "agent-1", "gateway")]
    assert "left before its hold ended" in history[1]["reason"]
    assert other.require(asked.id).as_dict()["client_left"] == history[1]["time"]

    # decided after the mark: approved and used as ever; a mark is made only while it is pending
    other.decide(asked.id, SRE, approve=True)
    assert other.mark_client_left(asked.id, actor="agent-1") is False
    assert other.ask(principal=AGENT, decision=decision(), call=terminate("i-1")).state == "released"
    assert [e["event"] for e in other.history(asked.id)] == ["requested", "client_left", "approved", "used"]
    mine.engine.dispose()
    other.engine.dispose()
    result = verify(url, KEY)
    assert result.ok and result.notes == [], result.problems
    for forged, latest in ((unmarked.id, "requested"), (asked.id, "used")):
        with sql(url).begin() as c:
            c.execute(update(ApprovalRow).where(ApprovalRow.id == forged).values(
                client_left=dt.datetime.now(UTC) if forged == unmarked.id else None))
        seq = [e["seq"] for e in events(url) if e["approval_id"] == forged][-1]
        status = "pending" if forged == unmarked.id else "used"
        assert verify(url, KEY).problems == [
            f"approval {forged} ({status}) does not read as its latest event (seq {seq}, {latest}) left it: the row "
            "was altered afterwards"]
        with sql(url).begin() as c:
            c.execute(update(ApprovalRow).where(ApprovalRow.id == forged).values(
                client_left=None if forged == unmarked.id else left))
        assert verify(url, KEY).ok
    with pytest.raises(RuntimeError, match="client_left events"):
        command.downgrade(alembic_config(url), "0007_approval_actors")


# -- pruning -----------------------------------------------------------------------------------------


def a_month_of_approvals(url: str) -> dict[str, str]:
    """Approvals of ten days ago in every state `prune` tells apart, calls naming two of them (one
    call as old as they are, one of today), and one approval of today."""
    old = dt.datetime.now(UTC) - dt.timedelta(days=10)
    approvals = _approvals(url)
    ask = lambda i, now=old: approvals.ask(principal=AGENT, decision=decision(), call=terminate(i), now=now).approval
    ids = {}
    ids["denied"] = ask("i-1").id  # events 1-2
    approvals.decide(ids["denied"], SRE, approve=False, reason="no", now=old)
    for name, i in (("used-by-an-old-call", "i-2"), ("used-by-a-call-left", "i-3")):  # events 3-5, 7-9
        ids[name] = ask(i).id
        approvals.decide(ids[name], SRE, approve=True, now=old)
        assert approvals.take(ids[name], now=old) is not None
        if name == "used-by-an-old-call":
            ids["left-pending"] = ask("i-4").id  # event 6: nobody decided, nobody asked again
    ids["today"] = ask("i-5", now=dt.datetime.now(UTC) - dt.timedelta(hours=1)).id  # event 10: expired by now
    approvals.engine.dispose()
    store = Store(url, writer_id="w1", chain_key=KEY)
    store.start()
    for name, at in (("used-by-an-old-call", old.timestamp()), ("used-by-a-call-left", time.time())):
        store.write_sync(Record(principal="agent-1", action="ec2:TerminateInstances", decision="approve",
                                approval_id=ids[name], approver="alice", time=at))
    store.close()
    return ids


def test_prune_takes_settled_approvals_with_the_oldest_events_and_the_rest_verifies(db_url):
    ids = a_month_of_approvals(db_url)
    before = dt.datetime.now(UTC) - dt.timedelta(days=5)
    dry = prune(db_url, before, KEY, dry_run=True)
    assert (dry.records, dry.approvals, dry.approval_events, dry.expired) == (1, 2, 8, 1)
    assert len(events(db_url)) == 10  # a dry run changes nothing
    result = prune(db_url, before, KEY)
    assert (result.records, result.approvals, result.approval_events, result.expired) == (1, 2, 8, 1)
    approvals = _approvals(db_url)
    left = {a.id: a.status for a in approvals.list()}
    # the denial and the approval only an old call ran under go; the one a call left names stays, as do the
    # approval nobody decided (now marked expired: it goes in a later prune) and today's
    assert left == {ids["used-by-a-call-left"]: "used", ids["left-pending"]: "expired", ids["today"]: "pending"}
    assert [e["event"] for e in approvals.history(ids["used-by-a-call-left"])] == ["used"]  # its older events went
    assert [e["event"] for e in approvals.history(ids["left-pending"])] == ["expired"]
    approvals.engine.dispose()
    assert [(e["seq"], e["event"]) for e in events(db_url)] == [(9, "used"), (10, "requested"), (11, "expired")]
    check = verify(db_url, KEY)
    assert check.ok, check.problems
    assert (check.records, check.approvals, check.approval_events, check.approvals_held) == (1, 1, 3, 3)
    assert check.notes == []
    again = prune(db_url, before, KEY)  # nothing more: the approval a call left names holds the chain there
    assert (again.approvals, again.approval_events, again.expired) == (0, 0, 0)
    # everything settled before a later date goes, the chain's last event always stays (the next links to it)
    later = prune(db_url, dt.datetime.now(UTC), KEY)
    # the call left, then the approval it named (events 9-10); the chain's last event is left-pending's, which
    # stays with it, and today's approval, past its expiry now, is marked expired
    assert (later.records, later.approvals, later.approval_events, later.expired) == (1, 1, 2, 1)
    assert [(e["seq"], e["event"]) for e in events(db_url)] == [(11, "expired"), (12, "expired")]
    assert verify(db_url, KEY).ok
    approvals = _approvals(db_url)
    approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-6"))  # and the chain goes on
    approvals.engine.dispose()
    check = verify(db_url, KEY)
    assert check.ok and check.approval_events == 3, check.problems


def test_pruned_events_are_still_accounted_for(db_url):
    a_month_of_approvals(db_url)
    prune(db_url, dt.datetime.now(UTC) - dt.timedelta(days=5), KEY)
    anchor = Checkpoint.writer_id == chain.APPROVAL_EVENTS_CHAIN
    first = events(db_url)[0]
    with sql(db_url).begin() as c:  # the event after the prune checkpoint removed
        c.execute(delete(ApprovalEvent).where(ApprovalEvent.seq == 9))
    assert verify(db_url, KEY).problems[0] == (
        f"approval event 10 (requested of {events(db_url)[0]['approval_id']}): event 9 is missing before it, "
        "after the prune checkpoint at seq 8: deleted")
    with sql(db_url).begin() as c:
        c.execute(insert(ApprovalEvent), [first])
    assert verify(db_url, KEY).ok
    with sql(db_url).begin() as c:  # the events left, as if written without the key: the prune checkpoint vouches
        c.execute(update(ApprovalEvent).values(mac=None))  # for what it replaced, not for them
    (note,) = verify(db_url, KEY).notes
    assert note.startswith("approval events 9-11 after the last keyed one, so unanchored")
    with sql(db_url).begin() as c:  # the prune checkpoint itself removed: the chain's start is unaccounted for
        c.execute(delete(Checkpoint).where(anchor))
    assert verify(db_url, KEY).problems[0].endswith(
        "events 1-8 are missing before it and no prune checkpoint accounts for them (the start of the chain was "
        "deleted)")
    with sql(db_url).begin() as c:  # a prune checkpoint made up without the key
        t = dt.datetime.now(UTC)
        head = events(db_url)[0]["prev_hash"]
        c.execute(insert(Checkpoint), [{"writer_id": chain.APPROVAL_EVENTS_CHAIN, "seq": 8, "head_hash": head,
                                        "time": t, "kind": "prune", "hmac": chain.checkpoint_mac(
                                            b"a guess at the key!", writer_id=chain.APPROVAL_EVENTS_CHAIN, seq=8,
                                            head_hash=head, time=t, kind="prune")}])
    problems = verify(db_url, KEY).problems
    assert problems[0].endswith(f"(prune, writer {chain.APPROVAL_EVENTS_CHAIN}, seq 8) is forged or altered: "
                                "its HMAC does not verify with the chain key")


def test_every_event_and_approval_deleted_after_a_prune_is_detected(db_url):
    a_month_of_approvals(db_url)
    prune(db_url, dt.datetime.now(UTC) - dt.timedelta(days=5), KEY)
    with sql(db_url).begin() as c:  # the whole tail, with the approvals it covered: the checkpoint still says
        c.execute(delete(ApprovalEvent))
        c.execute(delete(ApprovalRow))
    (problem,) = [p for p in verify(db_url, KEY).problems if "approval events' prune checkpoint" in p]
    assert problem.endswith(f"(prune, writer {chain.APPROVAL_EVENTS_CHAIN}, seq 8) is the approval events' prune "
                            "checkpoint, but no event follows it (prune leaves the chain's last event): the events "
                            "after seq 8 were deleted")


def test_prune_refuses_a_time_still_to_come(db_url):
    """A --before still to come would delete every record and mark approvals still running expired:
    refused, nothing changed."""
    ids = a_month_of_approvals(db_url)
    with pytest.raises(StoreError, match="still to come"):
        prune(db_url, dt.datetime.now(UTC) + dt.timedelta(days=1), KEY)
    assert len(events(db_url)) == 10
    approvals = _approvals(db_url)
    assert {a.id: a.status for a in approvals.list()}[ids["today"]] == "pending"
    approvals.engine.dispose()


def test_prune_refuses_a_broken_events_chain_or_a_missing_key(db_url):
    from addons.core.store import StoreError

    a_month_of_approvals(db_url)
    before = dt.datetime.now(UTC) - dt.timedelta(days=5)
    with pytest.raises(StoreError, match="needs the chain key"):
        prune(db_url, before, None)
    with sql(db_url).begin() as c:
        c.execute(update(ApprovalEvent).where(ApprovalEvent.seq == 2).values(reason="fine by me"))
    with pytest.raises(StoreError, match=r"not pruning: approval event 2 \(denied of .*the event was altered"):
        prune(db_url, before, KEY)
    assert len(events(db_url)) == 10  # nothing was deleted


def test_the_approval_events_chain_is_not_a_writer_id():
    from addons.core.store import StoreError

    with pytest.raises(StoreError, match="names the approval events' chain"):
        Store("sqlite://", writer_id=chain.APPROVAL_EVENTS_CHAIN)


def test_an_approval_used_by_another_gateway_between_two_readings_is_not_taken_for_forged(db_url):
    """Two gateways take the same approval at once: one uses it (its row and its keyed event change
    together) between the other's reading of the latest event and of the row. The other reads
    again and finds it used, not forged (it was reported as forged, with a warning, to on-call)."""
    from addons.core.approvals import Unvouched

    approvals, other = _approvals(db_url), _approvals(db_url)
    a = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-race")).approval
    approvals.decide(a.id, SRE, approve=True)

    class Racing:  # the winner's take lands just after the first reading
        def __init__(self, conn) -> None:
            self.conn, self.readings = conn, 0

        def execute(self, *args, **kwargs):
            result = self.conn.execute(*args, **kwargs)
            self.readings += 1
            if self.readings == 1:
                assert other.take(a.id) is not None
            return result

    try:
        with approvals.engine.connect() as conn:
            approvals._require_vouched(Racing(conn), a.id)  # vouched: the second reading is whole
            assert approvals.take(a.id) is None  # and the approval is used: nothing more is released
        # a row changed without its event still reads as forged, however often it is read
        with sql(db_url).begin() as db:
            db.execute(update(ApprovalRow).where(ApprovalRow.id == a.id).values(status="approved"))
        with approvals.engine.connect() as conn, pytest.raises(Unvouched, match="does not read as its latest event"):
            approvals._require_vouched(conn, a.id)
    finally:
        approvals.engine.dispose()
        other.engine.dispose()
