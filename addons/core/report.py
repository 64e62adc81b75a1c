"""The assessor's view of a period: what the gateway enforced, per NIST SP 800-53 control, and the
numbers and records that show it.

``summarise()`` reads the store once (calls in the period, oldest first; approvals asked in it;
each writer's chain head; and ``verify`` over the whole store) into a ``Summary``. ``CONTROLS``
says, per control, what the gateway enforces and turns a Summary into the sentence that shows it;
``render_html()`` writes the Summary as one self-contained HTML file (inline CSS and SVG charts, no
scripts, nothing fetched), and ``core.export`` writes it as OSCAL assessment results.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from .approvals import effective_state
from .chain import WRITTEN_OUT, VerifyResult
from .models import Approval as ApprovalRow
from .models import Call, Checkpoint
from .records import REDACTED_HEADERS
from .store import Store, StoredForm, _approval, _checkpoint, _record, readable, verify

UTC = dt.timezone.utc
MUTATING = ("Write", "Tagging", "Permissions management")
DECISIONS = ("allow", "deny", "approve")


@dataclasses.dataclass
class Head:
    """Where one writer's chain stands: its last record and its last checkpoint."""

    writer_id: str
    seq: int
    hash: str
    call_id: str
    time: dt.datetime | None  # None: its time cannot be read (named in the Summary's unreadable)
    checkpoint_seq: int | None = None
    checkpoint_keyed: bool = False
    checkpoint_time: dt.datetime | None = None

    @property
    def time_text(self) -> str:
        return "its time cannot be read" if self.time is None else _text_time(self.time)


@dataclasses.dataclass
class ApprovalInfo:
    id: str
    kind: str
    principal: str
    on_behalf_of: str | None
    action: str
    status: str
    approver: str | None
    channel: str | None
    requested: dt.datetime
    decided: dt.datetime | None
    reason: str | None

    @property
    def latency(self) -> float | None:
        """Seconds from the request to the decision; None while undecided."""
        if self.decided is None:
            return None
        return max(0.0, (self.decided - self.requested).total_seconds())

    @property
    def separate(self) -> bool | None:
        """True when the approver is neither the requester nor whom it acted for (None: undecided)."""
        if not self.approver:
            return None
        return self.approver not in {self.principal, self.on_behalf_of}


@dataclasses.dataclass
class Summary:
    where: str
    start: dt.datetime
    end: dt.datetime
    generated: dt.datetime
    total: int = 0
    calls: int = 0
    connects: int = 0
    by_decision: Counter = dataclasses.field(default_factory=Counter)
    by_outcome: Counter = dataclasses.field(default_factory=Counter)
    by_principal: Counter = dataclasses.field(default_factory=Counter)
    denied_by_principal: Counter = dataclasses.field(default_factory=Counter)
    by_action: Counter = dataclasses.field(default_factory=Counter)
    denied_by_action: Counter = dataclasses.field(default_factory=Counter)
    by_access_level: Counter = dataclasses.field(default_factory=Counter)
    by_rule: Counter = dataclasses.field(default_factory=Counter)
    by_role: Counter = dataclasses.field(default_factory=Counter)
    by_status: Counter = dataclasses.field(default_factory=Counter)  # "2xx", "4xx", ... "none"
    by_writer: Counter = dataclasses.field(default_factory=Counter)
    sessions: set = dataclasses.field(default_factory=set)
    identity_refused: int = 0  # refused by the auth stage (rule agentgate:auth)
    with_principal: int = 0
    with_action: int = 0  # calls whose IAM action is known
    mutating: int = 0  # calls whose access level is Write, Tagging or Permissions management
    masked_values: int = 0
    masked_calls: int = 0
    masked_by: Counter = dataclasses.field(default_factory=Counter)  # what masked: sensitive, curated, policy, detector
    masked_paths: Counter = dataclasses.field(default_factory=Counter)  # (part, path) -> values
    credential_headers: int = 0  # records holding a header that is never stored (should be 0)
    bodies_kept: int = 0
    timeline: list[tuple[dt.datetime, Counter]] = dataclasses.field(default_factory=list)
    bucket: dt.timedelta = dt.timedelta(hours=1)
    approvals: list[ApprovalInfo] = dataclasses.field(default_factory=list)
    heads: list[Head] = dataclasses.field(default_factory=list)
    policy_versions: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # Store.policy_versions
    verify: VerifyResult | None = None
    keyed: bool = False
    until_asked: dt.datetime | None = None  # an --until still to come: the period ends at ``generated`` instead
    # what the store holds that cannot be read (``store.readable``), one line each as ``verify``
    # names it: left out of every figure, and named in the report
    unreadable: list[str] = dataclasses.field(default_factory=list)

    @property
    def start_text(self) -> str:
        return _text_time(self.start)

    @property
    def end_text(self) -> str:
        return _text_time(self.end)

    @property
    def cut_text(self) -> str:
        """What a period asked to end in the future says after its end: "" for any other period."""
        if self.until_asked is None:
            return ""
        return f", when this was made: the --until given, {_text_time(self.until_asked)}, is still to come"

    @property
    def principals(self) -> list[str]:
        return [p for p in self.by_principal if p != "(unauthenticated)"]

    @property
    def forwarded(self) -> int:
        return self.by_outcome.get("forwarded", 0)

    @property
    def decided_approvals(self) -> list[ApprovalInfo]:
        return [a for a in self.approvals if a.decided is not None and a.approver]

    @property
    def sod_violations(self) -> list[ApprovalInfo]:
        return [a for a in self.approvals if a.separate is False]

    def top(self, counter: Counter, n: int = 10) -> list[tuple[Any, int]]:
        return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def _text_time(t: dt.datetime) -> str:
    """``t`` in UTC to the second, the year in four digits (strftime's %Y writes the year 1 as "1")."""
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + " UTC"


def _parse(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


_BUCKETS = [dt.timedelta(seconds=s) for s in (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600,
                                                 12 * 3600, 86400, 7 * 86400, 30 * 86400)]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_FIRST = dt.datetime.min.replace(tzinfo=UTC)


def bucket_size(span: dt.timedelta, target: int = 40) -> dt.timedelta:
    """The smallest round bucket that splits ``span`` into at most ``target`` bars."""
    for b in _BUCKETS:
        if span / b <= target:
            return b
    return _BUCKETS[-1]


def summarise(store: Store, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
              chain_key: bytes | None = None, check_chain: bool = True,
              now: dt.datetime | None = None) -> Summary:
    """Everything the report and the OSCAL export say about [since, until); an ``until`` after
    ``now`` (when the store is read) ends the period at ``now``, which is all it can cover. A call,
    approval, policy version or chain head holding a value that cannot be read is named in
    ``unreadable`` and left out of the figures."""
    from .export import iter_calls

    now = now or dt.datetime.now(UTC)
    asked = None
    if until is not None and until > now:  # a period still to come: covered up to when the store is read
        asked, until = until, now
    first, last = _span(store, since, until)
    start = since or first or now
    end = until or (last + dt.timedelta(microseconds=1) if last else now)
    start = min(start, end)  # --until before everything recorded: an empty period ending then
    s = Summary(where=store.where, start=start, end=end, generated=now, keyed=chain_key is not None, until_asked=asked)
    s.bucket = bucket_size(max(end - start, dt.timedelta(seconds=1)))
    # Bars start on whole multiples of their width (whole seconds, minutes, hours, UTC days), so
    # that the time a bar is labelled with is where it starts, not the first call's odd instant.
    # (a start in the year 1 whose bar would start before it keeps its own instant)
    offset = (start - _EPOCH) % s.bucket
    origin = start - offset if start - _FIRST >= offset else start
    nbuckets = max(1, math.ceil((end - origin) / s.bucket))
    s.timeline = [(origin + i * s.bucket, Counter()) for i in range(nbuckets)]
    for c in iter_calls(store, since=since, until=until, unreadable=s.unreadable):
        t = _parse(c["time"])
        s.total += 1
        if c.get("kind") == "connect":
            s.connects += 1
        else:
            s.calls += 1
        decision = c.get("decision") or "none"
        s.by_decision[decision] += 1
        s.by_outcome[c.get("outcome") or "none"] += 1
        principal = c.get("principal")
        if principal:
            s.with_principal += 1
            s.by_principal[principal] += 1
            if decision == "deny":
                s.denied_by_principal[principal] += 1
        else:
            s.by_principal["(unauthenticated)"] += 1
            if decision == "deny":
                s.denied_by_principal["(unauthenticated)"] += 1
        action = c.get("action")
        if c.get("kind") == "call":
            s.by_action[action or "unknown"] += 1
            if decision == "deny":
                s.denied_by_action[action or "unknown"] += 1
            if action and action != "unknown":
                s.with_action += 1
        if c.get("access_level"):
            s.by_access_level[c["access_level"]] += 1
            if c["access_level"] in MUTATING:
                s.mutating += 1
        if c.get("rule"):
            s.by_rule[c["rule"]] += 1
            if c["rule"] == "agentgate:auth":
                s.identity_refused += 1
        if c.get("role") and c.get("outcome") == "forwarded":
            s.by_role[c["role"]] += 1
        status = c.get("status")
        s.by_status[f"{status // 100}xx" if isinstance(status, int) else "none"] += 1
        s.by_writer[c.get("writer_id")] += 1
        if c.get("session_id"):
            s.sessions.add(c["session_id"])
        masked = c.get("masked") or []
        if masked:
            s.masked_calls += 1
            for m in masked:
                n = int(m.get("count") or 1)
                s.masked_values += n
                s.masked_by[m.get("by") or "?"] += n
                s.masked_paths[(m.get("part") or "?", m.get("path") or "?")] += n
        if c.get("request_body") is not None or c.get("response_body") is not None:
            s.bodies_kept += 1
        for headers in (c.get("request_headers") or [], c.get("response_headers") or []):
            if any(str(k).lower() in REDACTED_HEADERS for k, _ in headers):
                s.credential_headers += 1
                break
        i = min(nbuckets - 1, max(0, int((t - origin) / s.bucket)))
        s.timeline[i][1][decision] += 1
    s.approvals = _approvals(store, since, until, s.unreadable)  # as the calls: the whole store when not given
    s.policy_versions = store.policy_versions(since=start, until=end, unreadable=s.unreadable)
    s.heads = _heads(store, s.unreadable)
    if check_chain:
        s.verify = verify(store.url, chain_key)
    return s


def _span(store: Store, since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first and last times in [since, until) of a call or of an approval asked for (an
    approval is asked for after the call that asked it arrived, and an access grant with no call).
    Each is the first time that can be read from either end, in the order the store sorts them
    (a time that cannot be read is passed over here, and named where its record is read)."""
    store._check_schema()
    times = []
    with store._reading() as conn:
        for table, column, name in ((Call.__table__, "time", _record), (ApprovalRow.__table__, "requested", _approval)):
            c = table.c[column]
            form = StoredForm(table, conn.dialect, ("id", "writer_id", "seq", column) if name is _record
                              else ("id", "status", column), forms=False)
            q = form.select()
            if since is not None:
                q = q.where(c >= since)
            if until is not None:
                q = q.where(c < until)
            for order in (c, c.desc()):
                if (t := _first_readable(conn, form, q.order_by(order), name, column)) is not None:
                    times.append(t)
    return (min(times), max(times)) if times else (None, None)


def _first_readable(conn: Any, form: StoredForm, q: Any, name: Callable[[dict[str, Any]], str], column: str,
                    page: int = 100) -> dt.datetime | None:
    """The first value of ``column`` that can be read among the rows of ``q``, read a page at a time."""
    offset = 0
    while True:
        rows = conn.execute(q.offset(offset).limit(page)).all()
        for row in readable(rows, form, name, []):
            return row[column]
        if len(rows) < page:
            return None
        offset += page


def _approvals(store: Store, since: dt.datetime | None, until: dt.datetime | None,
               unreadable: list[str]) -> list[ApprovalInfo]:
    t = ApprovalRow.__table__
    form = StoredForm(t, store.engine.dialect, forms=False)
    q = form.select().order_by(t.c.requested, t.c.id)
    if since is not None:
        q = q.where(t.c.requested >= since)
    if until is not None:
        q = q.where(t.c.requested < until)
    with store._reading() as conn:
        rows = list(readable(conn.execute(q), form, _approval, unreadable))
    now = dt.datetime.now(dt.timezone.utc)

    def revocation(r: dict[str, Any]) -> str | None:
        if r["status"] != "revoked":
            return None
        return f"revoked by {r['revoked_by']}" + (f": {r['revoke_reason']}" if r["revoke_reason"] else "")

    # the state as it stands when the report is made: a pending approval past its expiry is expired
    return [ApprovalInfo(id=r["id"], kind=r["kind"], principal=r["principal"], on_behalf_of=r["on_behalf_of"],
                         action=r["action"] if r["kind"] == "call" else f"access grant: {r['role']}",
                         status=effective_state(r["status"], r["expires"], now),
                         approver=r["approver"], channel=r["channel"], requested=r["requested"], decided=r["decided"],
                         reason="; ".join(x for x in (r["reason"], revocation(r)) if x) or None)
            for r in rows]


def _heads(store: Store, unreadable: list[str]) -> list[Head]:
    """Each writer's last record and last checkpoint. A head whose id, seq or hash cannot be read
    is left out, and one whose time cannot be read is given without it; each is named in
    ``unreadable``."""
    c = Call.__table__.c
    cp = Checkpoint.__table__.c
    records = StoredForm(Call.__table__, store.engine.dialect, ("id", "writer_id", "seq", "hash", "time"), forms=False)
    checkpoints = StoredForm(Checkpoint.__table__, store.engine.dialect, ("id", "kind", "writer_id", "seq", "hmac", "time"),
                             forms=False)
    heads = []
    with store._reading() as conn:
        last = conn.execute(select(c.writer_id, func.max(c.seq)).group_by(c.writer_id)).all()
        for writer_id, seq in sorted(last, key=lambda ws: str(ws[0])):
            rows = conn.execute(records.select().where(c.writer_id == writer_id, c.seq == seq)).all()
            row = next(readable(rows, records, _record, unreadable, partial=True), {})
            if not {"id", "seq", "hash"} <= row.keys():
                continue
            rows = conn.execute(checkpoints.select().where(cp.writer_id == writer_id)
                                .order_by(cp.seq.desc(), cp.id.desc()).limit(1)).all()
            check = next(readable(rows, checkpoints, _checkpoint, unreadable, partial=True), None)
            heads.append(Head(writer_id=writer_id, seq=row["seq"], hash=row["hash"], call_id=row["id"],
                              time=row.get("time"), checkpoint_seq=check.get("seq") if check else None,
                              checkpoint_keyed=bool(check and check.get("hmac")),
                              checkpoint_time=check.get("time") if check else None))
    return heads


# ---------------------------------------------------------------------------------------------
# The controls


def _n(count: int, word: str, plural: str | None = None) -> str:
    """"1 call", "2 calls"."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _pct(part: int, whole: int) -> str:
    return "n/a" if not whole else f"{100 * part / whole:.0f}%"


def _counts(counter: Counter, n: int = 6) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    shown = ", ".join(f"{k} {v}" for k, v in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "") if items else "none"


def _verify_sentence(s: Summary) -> str:
    v = s.verify
    if v is None:
        return "The hash chains were not checked for this report."
    if v.ok:
        return (f"`agentgate verify` over the whole store: OK, {_n(v.records, 'record')} in {_n(v.chains, 'chain')} "
                f"and {_n(v.checkpoints, 'checkpoint')}" + ("" if s.keyed else " (no chain key given: checkpoints' "
                                                                  "HMACs not checked)")
                + (f"; {_n(v.approvals_held, 'approval')} as {_n(v.approval_events, 'approval event')} "
                   + ("left them" if v.approvals_held != 1 else "left it")
                   if v.approval_events or v.approvals_held else "") + ".")
    return f"`agentgate verify` over the whole store FAILED: {v.problems[0]}" + (
        f" (and {_n(len(v.problems) - 1, 'more problem')})." if len(v.problems) > 1 else ".")


@dataclasses.dataclass(frozen=True)
class Control:
    id: str  # as OSCAL's NIST SP 800-53 catalog writes it: "au-2"
    title: str
    enforced: str  # what the gateway does for this control
    records_hint: str  # where in the records the evidence is
    observed: Callable[[Summary], str]  # what the period shows
    chain: bool = False  # the chain heads are evidence too
    approvals: bool = False  # the approvals and their events are evidence too

    @property
    def label(self) -> str:
        return self.id.upper()


CONTROLS: tuple[Control, ...] = (
    Control(
        "au-2", "Event Logging",
        "Every flow through the gateway (forwarded, refused, held for approval, failed upstream or abandoned by the "
        "client) produces exactly one record: AWS API calls and refused or tunnelled connections are the logged events.",
        "one line per record; outcome and decision fields",
        lambda s: (f"In the period the gateway recorded {_n(s.total, 'record')}: {_n(s.calls, 'call')} and "
                   f"{_n(s.connects, 'connection record')}. Outcomes: {_counts(s.by_outcome)}."),
    ),
    Control(
        "au-3", "Content of Audit Records",
        "Each record says what happened (service, operation, IAM action and access level, parameters), when (time, "
        "latency), where (client address, host, region, account), the source (principal, issuer, on-behalf-of "
        "subject, session), the outcome (decision, rule, policy version, HTTP status, AWS request id) and the "
        "resources named.",
        "fields principal, on_behalf_of, action, params, resources, decision, rule, policy_version, status, aws_request_id",
        lambda s: (f"{_pct(s.with_principal, s.total)} of records name their principal and "
                   f"{_pct(s.with_action, s.calls)} of calls their IAM action; {_n(len(s.principals), 'principal')} and "
                   f"{_n(len(s.by_action), 'action')} appear."),
    ),
    Control(
        "au-9", "Protection of Audit Information",
        "Each gateway process chains the records it writes (SHA-256 over each record and its predecessor's hash), "
        "gives each record an HMAC of its place in the chain and writes checkpoints of the chain head, both keyed "
        "with a key the database does not hold; altered, inserted, deleted or reordered records, and a tail cut off "
        "before a checkpoint, are detected by `agentgate verify` (the newest records deleted together with every "
        "checkpoint after them are not: the exported chain heads keep that). Every change of an approval (asked for, "
        "approved or denied, by whom and why, used, expired, revoked) is an event in one more chain, keyed the same "
        "way, that each approval is held to.",
        "fields writer_id, seq, prev_hash, hash, mac of every record",
        _verify_sentence,
        chain=True,
        approvals=True,
    ),
    Control(
        "au-12", "Audit Record Generation",
        "Records are generated by the gateway in the data path, not by the agents: a response reaches the agent only "
        "after its record is committed, and calls are refused while the store cannot write (fail closed).",
        "fields writer_id and seq: which gateway process wrote each record, in order",
        lambda s: (f"{_n(len(s.by_writer), 'gateway process', 'gateway processes')} (writers) recorded calls in the period: "
                   f"{_counts(Counter({str(k): v for k, v in s.by_writer.items()}), 4)}."),
        chain=True,
    ),
    Control(
        "ac-3", "Access Enforcement",
        "Every call is decided by policy before it reaches AWS (allow, deny, or hold for a human approver); a call no "
        "rule allows is denied, and a refused call never reaches AWS.",
        "fields decision, rule, reason, policy_version",
        lambda s: (f"Decisions: {_counts(s.by_decision)}. Rules that decided: {_counts(s.by_rule)}. Most denied "
                   f"actions: {_counts(s.denied_by_action, 5)}."),
        approvals=True,
    ),
    Control(
        "ac-5", "Separation of Duties",
        "A call held for approval is released only by an authenticated approver the rule names, who can be neither "
        "the principal who made the call nor the subject it was made on behalf of.",
        "fields approval_id and approver; the approvals and their approval events",
        lambda s: (f"{_n(len(s.approvals), 'approval')} asked for in the period, {len(s.decided_approvals)} decided "
                   f"by {_n(len({a.approver for a in s.decided_approvals}), 'approver')}; "
                   f"{len(s.sod_violations)} decided by the requester or the subject it acted for."),
        approvals=True,
    ),
    Control(
        "ac-6", "Least Privilege",
        "Agents never hold AWS credentials: each call is re-signed with short-lived credentials for the role the "
        "policy binds to the principal (optionally scoped down by a session policy), and rules can restrict write, "
        "tagging and permissions-management actions by IAM access level.",
        "fields role, access_level, rule",
        lambda s: (f"Forwarded calls ran as {_n(len(s.by_role), 'role')} ({_counts(s.by_role, 4)}). Access levels: "
                   f"{_counts(s.by_access_level)}; {_n(s.mutating, 'call')} for writes, tagging or permissions "
                   f"management."),
    ),
    Control(
        "ia-2", "Identification and Authentication (Organizational Users)",
        "Every call must carry an OIDC token validated against the issuer's published keys (issuer, audience, expiry "
        "on every call, signature algorithm); calls without a valid token are refused and recorded.",
        "fields principal, issuer, on_behalf_of; rule agentgate:auth for refusals",
        lambda s: (f"{_n(len(s.principals), 'principal')} authenticated, in {_n(len(s.sessions), 'session')}; "
                   f"{_n(s.identity_refused, 'call')} refused by identity checks."),
    ),
    Control(
        "ia-9", "Service Identification and Authentication",
        "The gateway authenticates to AWS as the role session STS issued for the principal (SigV4, tagged with the "
        "gateway's session id for CloudTrail), and recognises AWS endpoints from botocore's partition data over TLS.",
        "fields session_id, role, host, aws_request_id",
        lambda s: (f"{_n(s.forwarded, 'call')} forwarded to AWS, signed as {_n(len(s.by_role), 'role')} in "
                   f"{_n(len(s.sessions), 'role session')}; HTTP statuses: {_counts(s.by_status)}."),
    ),
    Control(
        "sc-28", "Protection of Information at Rest",
        "The store keeps bodies masked (members botocore's models mark sensitive, curated fields, policy paths and "
        "secret detectors, replaced by keyed fingerprints) and never stores Authorization, X-Amz-Security-Token, "
        "Proxy-Authorization or cookie headers.",
        "field masked of each record (part, member path, what masked it, how many values; never a value)",
        lambda s: (f"{_n(s.masked_values, 'value')} masked in {_n(s.masked_calls, 'record')} "
                   f"({_counts(s.masked_by)}); {_n(s.bodies_kept, 'record')} keep masked bodies; "
                   f"{_n(s.credential_headers, 'record')} hold a credential header."),
    ),
)


def escape(v: Any) -> str:
    """``v`` as HTML text, with what would not show as written (control and format characters: a
    right-to-left override, a zero-width space) written out, as the command line writes it."""
    return html.escape("" if v is None else str(v).translate(WRITTEN_OUT), quote=True)


# ---------------------------------------------------------------------------------------------
# HTML

COLOURS = {"allow": "#2e7d32", "deny": "#c62828", "approve": "#ef8f00", "none": "#78909c"}

CSS = """
:root { --ink: #1d2530; --muted: #5b6573; --line: #d9dee5; --bg: #f6f7f9; --ok: #2e7d32; --bad: #c62828; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 10px; margin: 18px 0; }
.figure { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.figure .n { font-size: 24px; font-weight: 650; display: block; }
.figure .l { color: var(--muted); font-size: 12px; }
.verdict { display: inline-block; padding: 3px 10px; border-radius: 12px; font-weight: 600; color: #fff; }
.verdict.ok { background: var(--ok); } .verdict.bad { background: var(--bad); } .verdict.none { background: #78909c; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 14px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--bg); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.control { white-space: nowrap; font-weight: 650; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 22px; }
.chart { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.chart.wide { grid-column: 1 / -1; }
.legend span { margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
.empty { color: var(--muted); font-style: italic; }
.problem { color: var(--bad); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print { main { padding: 0; } .chart, .figure { break-inside: avoid; } h2 { break-after: avoid; } }
"""


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _figure(key: str, value: Any, label: str) -> str:
    return (f'<div class="figure"><span class="n" data-figure="{escape(key)}">{escape(value)}</span>'
            f'<span class="l">{escape(label)}</span></div>')


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), key: str = "",
           empty: str = "none in the period") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{escape(v)}</td>' if i in numeric else f"<td>{v if isinstance(v, _Raw) else escape(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f'<table data-table="{escape(key)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class _Raw(str):
    """HTML that is already safe."""


def _prose(text: str) -> _Raw:
    """Text with `code` spans, as HTML."""
    parts = escape(text).split("`")
    return _Raw("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


def _legend(names: list[str]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{COLOURS.get(n, "#78909c")}"></i>{escape(n)}</span>' for n in names) + "</div>"


def chart_timeline(s: Summary, width: int = 1080, height: int = 220) -> str:
    """Stacked bars: calls per time bucket, by decision."""
    left, bottom, top = 44, 34, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    n = len(s.timeline)
    peak = max((sum(c.values()) for _, c in s.timeline), default=0) or 1
    bar_w = plot_w / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="Calls over time by decision" data-chart="timeline">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ec"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#5b6573">'
                     f'{round(peak * frac)}</text>')
    order = [d for d in (*DECISIONS, "none") if any(c.get(d) for _, c in s.timeline)]
    for i, (t, counts) in enumerate(s.timeline):
        y = top + plot_h
        for d in order:
            v = counts.get(d, 0)
            if not v:
                continue
            h = plot_h * v / peak
            y -= h
            parts.append(f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS.get(d, "#78909c")}" data-decision="{d}" data-count="{v}">'
                         f'<title>{escape(_text_time(t))}: {v} {escape(d)}</title></rect>')
    step = max(1, n // 6)
    for i in range(0, n, step):
        t = s.timeline[i][0]
        label = t.strftime("%H:%M:%S") if s.bucket < dt.timedelta(minutes=1) else (
            t.strftime("%m-%d %H:%M") if s.bucket < dt.timedelta(days=1) else t.date().isoformat())
        parts.append(f'<text x="{left + i * bar_w:.1f}" y="{height - 14}" font-size="11" fill="#5b6573">{label}</text>')
    parts.append("</svg>")
    return _legend(order) + "".join(parts)


def chart_bars(items: list[tuple[str, int]], *, label: str, key: str, colour: str = "#3f6fb5",
               values: list[str] | None = None, width: int = 520) -> str:
    """Horizontal bars, one per item."""
    if not items:
        return '<p class="empty">none in the period</p>'
    row, left = 22, 210
    height = row * len(items) + 8
    peak = max(v for _, v in items) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(label)}" data-chart="{escape(key)}">']
    for i, (name, v) in enumerate(items):
        y = 4 + i * row
        w = (width - left - 60) * v / peak
        shown = name if len(name) <= 32 else name[:31] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="12" fill="#1d2530">'
                     f'{escape(shown)}<title>{escape(name)}</title></text>'
                     f'<rect x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 8}" fill="{colour}" rx="2"/>'
                     f'<text x="{left + w + 6:.1f}" y="{y + 14}" font-size="12" fill="#1d2530">'
                     f'{escape(values[i] if values else v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(s: Summary) -> str:
    """The report as one self-contained HTML document."""
    v = s.verify
    if v is None:
        verdict = '<span class="verdict none" data-figure="chain">not checked</span>'
    elif v.ok:
        verdict = '<span class="verdict ok" data-figure="chain">chains verified</span>'
    else:
        verdict = '<span class="verdict bad" data-figure="chain">chains DO NOT verify</span>'
    decided = s.decided_approvals
    latencies = [a.latency for a in decided if a.latency is not None]
    figures = "".join([
        _figure("records", s.total, "records"),
        _figure("calls", s.calls, "calls"),
        _figure("allow", s.by_decision.get("allow", 0), "allowed"),
        _figure("deny", s.by_decision.get("deny", 0), "denied"),
        _figure("approve", s.by_decision.get("approve", 0), "needed an approval"),  # held, or released by one
        _figure("principals", len(s.principals), "principals"),
        _figure("approvals", len(s.approvals), "approvals asked"),
        _figure("masked", s.masked_values, "values masked"),
    ])
    controls = _table(
        ["Control", "What the gateway enforces", "What the period shows", "Where the evidence is"],
        [[_Raw(f'<span data-control="{c.id}">{escape(c.label)}</span><br><span class="sub">{escape(c.title)}</span>'),
          _prose(c.enforced), _prose(c.observed(s)),
          _Raw(escape(f"Records ({c.records_hint})") + ("; chain heads below" if c.chain else ""))]
         for c in CONTROLS], key="controls")
    principals = _table(["Principal", "Calls", "Denied"],
                        [[p, n, s.denied_by_principal.get(p, 0)] for p, n in s.top(s.by_principal, 50)],
                        numeric={1, 2}, key="principals")
    actions = _table(["Action", "Calls", "Denied"],
                     [[a, n, s.denied_by_action.get(a, 0)] for a, n in s.top(s.by_action, 50)],
                     numeric={1, 2}, key="actions")
    decisions = _table(["Decision", "Records"], [[d, n] for d, n in s.top(s.by_decision)], numeric={1}, key="decisions")
    rules = _table(["Rule", "Records"], [[r, n] for r, n in s.top(s.by_rule, 50)], numeric={1}, key="rules")
    approvals = _table(
        ["Approval", "Principal", "Action", "Status", "Approver", "Reason", "Asked", "Decided", "Time to decision",
         "Separate"],
        [[a.id, a.principal + (f" (for {a.on_behalf_of})" if a.on_behalf_of else ""), a.action, a.status,
          a.approver or "", a.reason or "", _text_time(a.requested), _text_time(a.decided) if a.decided else "",
          _fmt_seconds(a.latency), {True: "yes", False: "NO", None: ""}[a.separate]] for a in s.approvals],
        key="approvals", empty="no approvals were asked for in the period")
    versions = _table(
        ["Policy version", "First seen", "Calls decided", "Files", "Stored text"],
        [[_Raw(f'<span class="mono">{escape(v["version"])}</span>'), v["first_seen"] or "", v["calls"],
          ", ".join(line[4:] for line in (v["text"] or "").splitlines() if line.startswith("--- ")),
          "MISSING: the store holds no text of it" if v.get("missing") else "as stored" if v["holds"]
          else "CANNOT BE READ: not stored as text" if v["text"] is None
          else "CHANGED: does not hash to its version"] for v in s.policy_versions],
        numeric={2}, key="policy-versions", empty="no call in the period names a policy version")
    masked = _table(["Part", "Member", "Values masked"],
                    [[part, path, n] for (part, path), n in s.top(s.masked_paths, 50)],
                    numeric={2}, key="masked", empty="nothing was masked in the period")
    masked_by = ", ".join(f"{k}: {n}" for k, n in s.top(s.masked_by)) or "none"
    heads = _table(["Writer", "Last seq", "Head hash", "Last checkpoint"],
                   [[h.writer_id, h.seq, _Raw(f'<span class="mono">{escape(h.hash)}</span>'),
                     (f"seq {h.checkpoint_seq}, {'HMAC-keyed' if h.checkpoint_keyed else 'not keyed'}, "
                      + (_text_time(h.checkpoint_time) if h.checkpoint_time else "its time cannot be read")
                      if h.checkpoint_seq is not None else "none yet")]
                    for h in s.heads], key="heads", empty="the store holds no records")
    chain_detail = ""
    if v is not None:
        chain_detail = (f'<p data-figure="verify">{_prose(_verify_sentence(s))}</p>'
                        + "".join(f'<p class="problem">BROKEN: {escape(p)}</p>' for p in v.problems[:20])
                        + "".join(f'<p class="sub">note: {escape(n)}</p>' for n in v.notes[:20]))
    unreadable = ""
    if s.unreadable:
        unreadable = (f'<p class="problem"><span data-figure="unreadable">{len(s.unreadable)}</span> '
                      + ("row of the store holds" if len(s.unreadable) == 1 else "rows of the store hold")
                      + ' a value that cannot be read (of another type than its column\'s, or a time that is no time): '
                      'what cannot be read is left out of the figures and tables below, and <code>agentgate '
                      'verify</code> names it too.</p>'
                      + "".join(f'<p class="problem" data-unreadable>{escape(line)}</p>' for line in s.unreadable[:50])
                      + (f'<p class="sub">... and {len(s.unreadable) - 50} more</p>' if len(s.unreadable) > 50 else ""))
    top_actions = s.top(s.by_action, 10)
    latency_items = [(a.id, a.latency) for a in decided if a.latency is not None][:15]
    charts = (
        f'<div class="chart wide"><h3>Calls over time by decision (bars of {escape(_fmt_bucket(s.bucket))})</h3>'
        f'{chart_timeline(s)}</div>'
        f'<div class="chart"><h3>Top actions</h3>{chart_bars(top_actions, label="Top actions", key="actions")}</div>'
        f'<div class="chart"><h3>Approval latency (request to decision)</h3>'
        + (chart_bars([(i, max(1, round(lat))) for i, lat in latency_items], label="Approval latency", key="latency",
                      colour=COLOURS["approve"], values=[_fmt_seconds(lat) for _, lat in latency_items])
           if latency_items else '<p class="empty">no approvals were decided in the period</p>')
        + (f'<p class="sub">median {escape(_fmt_seconds(sorted(latencies)[len(latencies) // 2]))}, '
           f'longest {escape(_fmt_seconds(max(latencies)))}</p>' if latencies else "")
        + "</div>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agentgate evidence report, {escape(s.start_text)} to {escape(s.end_text)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>agentgate evidence report</h1>
<p class="sub">AI agents' calls to AWS through the gateway, <strong data-figure="start">{escape(s.start_text)}</strong> to
<strong data-figure="end">{escape(s.end_text)}</strong>{escape(s.cut_text)}. Store: <code>{escape(s.where)}</code>. Generated
{escape(_text_time(s.generated))}. {verdict}</p>
<div class="figures">{figures}</div>
{unreadable}

<h2>NIST SP 800-53 controls</h2>
{controls}

<h2>Charts</h2>
<div class="charts">{charts}</div>

<h2>Decisions</h2>
{decisions}
<h3>Rules that decided</h3>
{rules}
<h3>Policy versions that decided</h3>
<p class="sub">Each record names the version of the policy files that decided it (the SHA-256 of their text, its first
16 hex digits); the store keeps each version's text: <code>agentgate policy show VERSION</code> prints it.</p>
{versions}

<h2>Principals</h2>
{principals}

<h2>Actions</h2>
{actions}

<h2>Approvals</h2>
<p class="sub">Each approval with its approver, the approver's reason, and the time from the request to the decision. "Separate" says whether
the approver is neither the requester nor the subject the call was made for (AC-5).</p>
{approvals}

<h2>Masking</h2>
<p class="sub"><span data-figure="masked-values">{s.masked_values}</span> values masked in
<span data-figure="masked-calls">{s.masked_calls}</span> records (by {escape(masked_by)});
<span data-figure="credential-headers">{s.credential_headers}</span> records hold a credential header.</p>
{masked}

<h2>Hash chains</h2>
{chain_detail}
{heads}

<footer>
<p>Every figure here is computed from the records in the store for the period. To check them independently:
<code>agentgate verify</code> (the chains), <code>agentgate export --format jsonl --since "{escape(s.start.isoformat())}"
--until "{escape(s.end.isoformat())}" -o calls.jsonl</code> (the records, one per line, with their chain fields) and
<code>agentgate export --format oscal -o evidence.oscal.json</code> (the same observations as OSCAL assessment
results).</p>
</footer>
</main>
</body>
</html>
"""


def _fmt_bucket(b: dt.timedelta) -> str:
    s = int(b.total_seconds())
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if s % n == 0 and s >= n:
            k = s // n
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{s} seconds"
