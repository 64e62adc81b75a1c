"""Fuzzing the approval events' chain: any history of approvals (asked for with any parameters,
approved, denied, taken, grants approved and revoked), then any one column of any approval or
approval event changed to another value, straight in the database: `agentgate verify` reports
it. Untouched, the same store verifies. SQLite; FUZZ_EXAMPLES raises the number of examples."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, create_engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from addons.core.approvals import Approvals, ApprovalError
from addons.core.models import APPROVAL_EVENTS, Approval, ApprovalEvent, UtcDateTime
from addons.core.store import Store, verify
from tests.test_approval import AGENT, ROLE, SRE, decision, principal, terminate

KEY = b"f" * 32
CHOICES = {"status": ("pending", "approved", "denied", "expired", "used", "revoked"), "kind": ("call", "grant"),
           "event": APPROVAL_EVENTS}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
steps = st.lists(st.tuples(st.sampled_from(["ask", "approve", "deny", "take", "grant", "revoke"]),
                           st.integers(0, 2), json_values, st.text(min_size=1, max_size=20)),
                 min_size=1, max_size=8)


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def play(approvals: Approvals, history) -> None:
    """Run a history; what the rules refuse (deciding twice, revoking a call) is skipped, as it
    changes nothing."""
    asked: list[str] = []
    contractor = principal("contractor-9", groups=("contractors",))
    for op, which, extra, words in history:
        try:
            if op == "ask":
                call = terminate(f"i-{which}")
                call = call.__class__(**{**call.__dict__, "params": {**call.params, "Extra": extra}})
                asked.append(approvals.ask(principal=AGENT, decision=decision(), call=call).approval.id)
            elif op == "grant":
                asked.append(approvals.request_grant(contractor, role_arn=ROLE.role_arn, role_id="agents",
                                                     duration=600, reason=words, approvers={"groups": ["sre"]}
                                                     ).approval.id)
            elif asked:
                target = asked[which % len(asked)]
                if op in ("approve", "deny"):
                    approvals.decide(target, SRE, approve=op == "approve", reason=words)
                elif op == "take":
                    approvals.take(target)
                else:
                    approvals.revoke(target, contractor, reason=words)
        except ApprovalError:
            pass


def other_value(column, old, n: int):
    """A value for ``column`` other than ``old``, of its type (``n`` > 0 picks which)."""
    name = column.name
    if name in CHOICES:
        others = [c for c in CHOICES[name] if c != old]
        return others[n % len(others)]
    if name in ("resources", "params", "approvers"):
        return {"tampered": old} if old is not None else {"tampered": n}
    if isinstance(column.type, UtcDateTime):
        base = old or dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        return base + dt.timedelta(microseconds=n if n % 2 else -n)
    if isinstance(column.type, Integer):
        return (old or 0) + n
    return (old or "") + chr(0x20 + n % 0x5f) * (1 + n % 3)


@fuzz(60)
@given(history=steps, in_events=st.booleans(), which_row=st.integers(0, 1000), which_column=st.integers(0, 1000),
       n=st.integers(1, 10 ** 9))
def test_any_one_change_to_an_approval_or_its_events_is_reported(history, in_events, which_row, which_column, n):
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'a.db'}"
        store = Store(url, chain_key=KEY)
        store.migrate()
        approvals = Approvals(store)
        play(approvals, [("ask", 0, None, "first"), *history])
        approvals.engine.dispose()
        clean = verify(url, KEY)
        assert clean.ok and clean.notes == [], clean.problems
        table, key = (ApprovalEvent.__table__, "seq") if in_events else (Approval.__table__, "id")
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as c:
            rows = c.execute(select(table).order_by(table.c.requested if key == "id" else table.c.seq,
                                                    table.c[key])).all()
        row = rows[which_row % len(rows)]._mapping
        columns = [c for c in table.columns if c.name != "mac"]
        column = columns[which_column % len(columns)]
        new = other_value(column, row[column.name], n)
        try:
            with engine.begin() as c:
                c.execute(update(table).where(table.c[key] == row[key]).values({column.name: new}))
        except IntegrityError:  # a constraint the database keeps (a seq already taken, NOT NULL)
            assume(False)
        finally:
            engine.dispose()
        result = verify(url, KEY)
        assert not result.ok, (table.name, column.name, row[column.name], new)
