"""Approvals: calls held for a human, and time-bound access grants. They live in the store, so
any replica (or the CLI) can decide a call that another replica holds.

A call whose decision is ``approve`` asks for an approval bound to the hash of exactly what it
asks (``binding_hash``: principal, role, service, operation, region and canonical parameters,
idempotency tokens left out). While one is pending for that hash, the same call asks for the same
approval, whichever replica it reaches (one pending approval per hash, enforced by the database):
an SDK's retries create nothing new. Once approved, the next call with that hash takes it (single
use) before it expires; a denial answers every such call until the request would have expired.
The update that uses an approval names the call (``call_id``, the id of its record): when the
connection breaks after its COMMIT was sent, the approval is read again, and the call goes on if
the store has it used by this call. An approval is used only while its approver is among the
approvers of the rule deciding the call then; one whose rule's approvers changed so that its
approver is no longer among them is withdrawn (revoked by ``agentgate:policy``) instead.

Approvers are authenticated principals (an OIDC token validated like an agent's, or the local
admin token ``agentgate init`` creates), must fit the rule's ``approvers``, and cannot decide what
they asked for or what was asked on their behalf (separation of duties). The local admin stands
for the operator of a single-user gateway: it fits every rule's approvers.

An access grant (``kind = "grant"``) lets a principal's calls run as a role named in the
policies' ``roles`` until it expires or is revoked; it is requested and approved the same way.

A try of a pending approval's call that leaves before its hold ends (a client whose read timeout
is shorter than ``approval_hold``) marks the approval (``client_left``, with its event): a retry
joining it, on whichever worker or replica it reaches, finds the mark in the row ``ask`` reads
and is answered at once, so that such a client still learns the approval's id.

Every change of an approval's row (asked for, approved, denied, expired, used, revoked, its
requester's client gone) appends an event to one hash chain for the whole store
(``models.ApprovalEvent``), in the same transaction: the event names who and why, and carries the
SHA-256 of the row as the change left it, and an HMAC with the chain key where the writing
process holds it. ``agentgate verify`` holds the approvals
table to its latest events (``chain.ApprovalEventCheck``). Appenders take turns: on PostgreSQL an
advisory lock held to the commit; on SQLite the database's write lock, which the change to the
row has taken before the chain's head is read.

Waiting: ``wait`` resolves when an approval leaves ``pending``. On PostgreSQL every decision
sends a NOTIFY that a listener thread hears at once; SQLite is polled (every 0.25 s). Decisions
made in this process wake its waiters directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import chain
from .models import Approval as ApprovalRow
from .models import ApprovalEvent, Call
from .policy import principal_matches, same_approvers
from .store import (CONNECT_TIMEOUT, POSTGRES_KEEPALIVES, StoredForm, StoreUnavailable, _approval, _one_line, _record,
                    read_only, readable)

log = logging.getLogger("agentgate.approvals")
witness_log = logging.getLogger("agentgate.chain")
VOUCH_READS = 3  # readings of an approval and its latest event before a mismatch counts as forged
_WRITTEN = "agentgate.approval_events"  # a transaction's appended events, in its connection's info

UTC = dt.timezone.utc
ADMIN_ISSUER = "agentgate:admin-token"
ADMIN_SUB = "agentgate:admin"
POLICY_ACTOR = "agentgate:policy"  # who withdraws an approval whose approver the rule deciding its call no longer names
CHANNEL = "agentgate_approvals"  # PostgreSQL NOTIFY channel; the payload is the approval id
GRANT_ACTION = "agentgate:GrantRole"
GRANT_REQUEST_TTL = 3600  # seconds a grant request waits for a decision
MASK = "*** (sensitive)"
SQLITE_POLL = 0.25  # seconds between looks at the store for decisions, on SQLite
POSTGRES_POLL = 1.0  # the same on PostgreSQL, behind LISTEN/NOTIFY, in case a notification is lost
GRANTS_REFRESH = 1.0  # seconds between reloads of the active grants
EVENTS_LOCK = 0x61676174_65767473  # PostgreSQL advisory lock: one appender to the approval events at a time
PENDING_LOCK = 0x61706E64  # PostgreSQL advisory locks (this class, a principal's key): one ask of a principal opening an approval at a time


class ApprovalError(Exception):
    """What was asked of an approval cannot be done; the message says why and what to do."""


class NotFound(ApprovalError):
    def __init__(self, message: str, approval_id: str | None = None) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class Refused(ApprovalError):
    """The approver may not do this (not an approver, separation of duties, already decided)."""


class TooManyPending(ApprovalError):
    """A principal has as many approvals pending as one may (``Approvals.max_pending``)."""


class Withdrawn(ApprovalError):
    """An approved approval whose approver the rule deciding its call now does not name (the
    rule's approvers changed since it was given): it was withdrawn (revoked), nothing is released
    on it, and the call, retried, asks for a new one."""

    def __init__(self, message: str, approval: "Approval | None" = None) -> None:
        super().__init__(message)
        self.approval = approval


class Unvouched(ApprovalError):
    """An approval whose decision no event keyed with the chain key vouches for (written into the
    store by someone without the key): a gateway holding the key releases nothing on it."""

    def __init__(self, message: str, approval: "Approval | None" = None) -> None:
        super().__init__(message)
        self.approval = approval


# ---------------------------------------------------------------------------------------------
# What a call asks for


@functools.lru_cache(maxsize=128)
def _service_model(service: str) -> Any:
    import botocore.model

    try:
        return botocore.model.ServiceModel(_loader().load_service_model(service, "service-2"), service)
    except Exception:  # an unknown service: parameters are taken as they are
        return None


@functools.lru_cache(maxsize=1)
def _loader() -> Any:
    import botocore.loaders

    return botocore.loaders.create_loader()


@functools.lru_cache(maxsize=1024)
def _input_shape(service: str | None, operation: str | None) -> Any:
    model = _service_model(service) if service else None
    if model is None or not operation:
        return None
    try:
        return model.operation_model(operation).input_shape
    except Exception:
        return None


def _walk(value: Any, shape: Any, *, drop_tokens: bool, mask: bool) -> Any:
    """``value`` read along botocore's ``shape``: idempotency tokens dropped, sensitive members masked."""
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, Mapping):
        out = {}
        for name, v in value.items():
            member = shape.members.get(name)
            if member is not None:
                if drop_tokens and member.metadata.get("idempotencyToken"):
                    continue
                if mask and member.metadata.get("sensitive"):
                    out[name] = MASK
                    continue
            out[name] = _walk(v, member, drop_tokens=drop_tokens, mask=mask)
        return out
    if shape.type_name == "list" and isinstance(value, list | tuple):
        return [_walk(v, shape.member, drop_tokens=drop_tokens, mask=mask) for v in value]
    if shape.type_name == "map" and isinstance(value, Mapping):
        return {k: _walk(v, shape.value, drop_tokens=drop_tokens, mask=mask) for k, v in value.items()}
    if mask and shape.metadata.get("sensitive"):
        return MASK
    return value


def canonical_params(service: str | None, operation: str | None, params: Mapping[str, Any] | None) -> Any:
    """The parameters that bind an approval: idempotency tokens (which SDKs fill in afresh for
    every call the program makes) are left out, everything else stays as the call sent it."""
    return chain.jsonable(_walk(dict(params or {}), _input_shape(service, operation), drop_tokens=True, mask=False))


def shown_params(service: str | None, operation: str | None, params: Mapping[str, Any] | None) -> Any:
    """The parameters as approvers see them: members botocore's model marks sensitive are masked."""
    return chain.jsonable(_walk(dict(params or {}), _input_shape(service, operation), drop_tokens=False, mask=True))


def _digest(body: Any) -> str:
    text_ = json.dumps(chain.jsonable(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()


def binding_hash(principal: Any, role_arn: str | None, service: str | None, operation: str | None,
                 region: str | None, params: Mapping[str, Any] | None) -> str:
    """The hash an approval is bound to: who (issuer, subject, on behalf of whom), as which role,
    what (service, operation, region) and with which parameters."""
    who = [getattr(principal, "iss", None), getattr(principal, "sub", None), getattr(principal, "on_behalf_of", None)]
    if nested := _nested_actors(principal):  # a nested act chain binds too (a token without one hashes as before)
        who.append(nested)
    return _digest({
        "principal": who,
        "role": role_arn, "service": service, "operation": operation, "region": region,
        "params": canonical_params(service, operation, params),
    })


def _nested_actors(principal: Any) -> list[str] | None:
    """The act claim's chain, kept on an approval when it nests (beyond on_behalf_of): every party
    in it is kept from approving."""
    actors = list(getattr(principal, "actors", None) or ())
    return actors if len(actors) > 1 else None


def _principal_key(principal: Any) -> int:
    """A principal (issuer, subject) as the 32-bit key of its PENDING_LOCK: two principals that
    share a key only take turns with each other."""
    who = json.dumps([getattr(principal, "iss", None), getattr(principal, "sub", None)]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(who).digest()[:4], "big", signed=True)


def grant_binding_hash(principal: Any, role_arn: str) -> str:
    return _digest({"grant": [getattr(principal, "iss", None), getattr(principal, "sub", None)], "role": role_arn})


def approvers_spec(approvers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A rule's ``approvers`` as plain JSON data."""
    if approvers is None:
        return None
    return {k: (v if isinstance(v, str) else list(v)) for k, v in approvers.items()}


def describe_approvers(spec: Mapping[str, Any] | None) -> str:
    if not spec:
        return "anyone but the requester"
    parts = []
    for key in ("sub", "groups"):
        if spec.get(key):
            values = [spec[key]] if isinstance(spec[key], str) else list(spec[key])
            parts.append(f"{'group' if key == 'groups' else 'sub'} {' or '.join(values)}")
    if spec.get("claims"):
        parts.append(f"claims `{spec['claims']}`")
    return ", ".join(parts)


def find_role(policy_set: Any, role: str) -> Any:
    """The ``roles`` binding of the policies that ``role`` names: by its id, else by its role ARN."""
    for entry in policy_set.roles:
        if entry.binding.rule_id == role:
            return entry.binding
    for entry in policy_set.roles:
        if entry.binding.role_arn == role:
            return entry.binding
    return None


def granted_role(policy_set: Any, grant: "Approval") -> Any:
    """The role binding an access grant gives, as the policies in force describe it (its session
    policy and duration); None when the policies no longer name that role."""
    if grant.rule:
        binding = find_role(policy_set, grant.rule)
        if binding is not None and binding.role_arn == grant.role:
            return binding
    return find_role(policy_set, grant.role) if grant.role else None


# ---------------------------------------------------------------------------------------------
# Principals that decide


def admin_principal() -> Any:
    from .identity import Principal

    return Principal(sub=ADMIN_SUB, iss=ADMIN_ISSUER, aud=(), groups=(), on_behalf_of=None,
                     exp=float("inf"), claims={})


def is_admin(principal: Any) -> bool:
    return getattr(principal, "iss", None) == ADMIN_ISSUER


def admin_token_matches(presented: str | None, expected: bytes | str | None) -> bool:
    """Whether ``presented`` is the local admin token (compared in constant time)."""
    if not presented or not expected:
        return False
    want = expected if isinstance(expected, bytes) else expected.encode()
    return hmac.compare_digest(presented.strip().encode(), want.strip())


def who(principal: Any) -> str:
    """A principal as records and messages name it."""
    if is_admin(principal):
        return ADMIN_SUB
    return str(getattr(principal, "sub", "?"))


# ---------------------------------------------------------------------------------------------
# Approvals as the code reads them


def _reason(reason: str | None) -> str | None:
    """An approver's reason as it is stored: stripped (None when nothing is left), and without NUL
    or lone surrogates (``chain.clean_str``), which PostgreSQL refuses and SQLite would keep (a
    reason typed or pasted in the console can hold them: JSON's ``\u0000``, ``\ud800``)."""
    reason = chain.clean_str((reason or "").strip())
    return reason or None


def effective_state(status: str, expires: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """An approval's state as it stands at ``now`` (by default, now), from its stored ``status``: a
    pending or approved approval past its expiry is expired (its row says so only once something
    touches it again)."""
    if status in ("pending", "approved") and expires is not None and expires <= (now or _now()):
        return "expired"
    return status


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Approval:
    id: str
    kind: str  # call | grant
    status: str  # pending | approved | denied | expired | used | revoked (as stored)
    binding_hash: str
    principal: str
    issuer: str | None
    on_behalf_of: str | None
    action: str
    service: str | None
    operation: str | None
    region: str | None
    resources: tuple[str, ...]
    params: Any
    role: str | None
    rule: str | None
    policy_version: str | None
    approvers: Mapping[str, Any] | None
    request_reason: str | None
    duration: int | None
    requested: dt.datetime
    expires: dt.datetime | None
    decided: dt.datetime | None
    approver: str | None
    reason: str | None
    channel: str | None
    used: dt.datetime | None
    revoked: dt.datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    call_id: str | None = None
    actors: tuple[str, ...] | None = None  # the act claim's chain, when it nests (on_behalf_of is its first)
    client_left: dt.datetime | None = None  # when a try of its call first left before its hold ended
    # the columns whose values cannot be read (``Approvals.get``), None in their place; not a column
    unread: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row: Any, unread: frozenset[str] = frozenset()) -> "Approval":
        m = dict(row._mapping if hasattr(row, "_mapping") else row)
        m["resources"] = tuple(m.get("resources") or ())
        m["actors"] = tuple(m["actors"]) if m.get("actors") else None
        return cls(**{f.name: m.get(f.name) for f in dataclasses.fields(cls) if f.name != "unread"}, unread=unread)

    def state(self, now: dt.datetime | None = None) -> str:
        """The status as it stands now: a pending or approved approval past its expiry is expired."""
        return effective_state(self.status, self.expires, now)

    @property
    def resource(self) -> str:
        return ", ".join(self.resources) if self.resources else "(no named resource)"

    def as_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "unread"}
        for k in ("requested", "expires", "decided", "used", "revoked", "client_left"):
            d[k] = _iso(d[k])
        d["resources"] = list(self.resources)
        d["approvers"] = dict(self.approvers) if self.approvers is not None else None
        d["state"] = self.state(now)
        return d


@dataclasses.dataclass(frozen=True)
class Asked:
    """What asking for an approval found: ``state`` is released (an approval was taken for this
    call), pending, denied, expired or withdrawn (approved by someone the rule deciding the call
    now does not name as an approver: ``why``); ``created`` when this call opened the approval.
    A pending approval's ``client_left`` says an earlier try of the call left before its hold ended."""

    approval: Approval
    state: str
    created: bool = False
    why: str | None = None


def approver_unfit(approval: Approval, approvers: Mapping[str, Any] | None) -> str | None:
    """Why ``approval``'s approver is not among ``approvers`` (those of the rule deciding its
    call now), or None when they are. Its approver was checked, when deciding, against the
    approvers the approval was asked under; when those are the approvers now, it holds. When the
    rule's approvers changed since, an approval keeps only its approver's name, not their groups or
    claims: it holds when that name alone fits the approvers now (named by ``sub``, or anyone but
    the requester), and not otherwise (fail closed: an approver asks again)."""
    if same_approvers(approval.approvers, approvers):
        return None
    from .identity import Principal

    name = approval.approver or ""
    named = Principal(sub=name, iss=None, aud=(), groups=(), on_behalf_of=None, exp=float("inf"),
                      claims={"sub": name})
    if principal_matches(approvers, named):
        return None
    rule = f"rule {approval.rule!r}" if approval.rule else "the rule"
    return (f"{name} approved it when the approvers of {rule} were {describe_approvers(approval.approvers)}; "
            f"the rule deciding this call now names {describe_approvers(approvers)}, and {name} is not "
            f"among them (an approval keeps its approver's name, not their groups or claims)")


@dataclasses.dataclass
class _Use:
    """A call about to use an approved approval: its record's id (set on the approval as it is
    used, so that the use can be told apart when its commit's answer is lost), the approvers of
    the rule deciding it now (``check``: whether to hold the approval's approver to them), and
    the monotonic time past which it no longer waits (nothing is used after it)."""

    call_id: str | None = None
    approvers: Mapping[str, Any] | None = None
    check: bool = False
    deadline: float | None = None
    sent: str | None = None  # the approval the transaction's UPDATE used


def may_decide(approval: Approval, approver: Any) -> str | None:
    """Why ``approver`` may not decide ``approval``, or None when they may."""
    names = {approval.principal, approval.on_behalf_of, *(approval.actors or ())} - {None}
    if not is_admin(approver):
        mine = {getattr(approver, "sub", None), getattr(approver, "on_behalf_of", None),
                *(getattr(approver, "actors", None) or ())} - {None}
        if names & mine:
            what = "asked for this access" if approval.kind == "grant" else "made this call"
            return (f"separation of duties: {who(approver)} {what} or it was made on their behalf, so someone "
                    f"else ({describe_approvers(approval.approvers)}) decides it")
        if not principal_matches(approval.approvers, approver):
            groups = list(getattr(approver, "groups", None) or ())
            return (f"{who(approver)} (groups {groups}) is not among the approvers of "
                    f"{'rule ' + repr(approval.rule) if approval.rule else 'access grants'}: "
                    f"{describe_approvers(approval.approvers)}")
    return None


# ---------------------------------------------------------------------------------------------
# The store


def duration_text(seconds: int | None) -> str:
    """Seconds as an approver writes a duration: 15m, 2h, 1d, 90s ("" for none)."""
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


MAX_PENDING = 100  # approvals one principal may have pending at once (the setting max_pending_approvals)


def _new_id(kind: str) -> str:
    return ("gr-" if kind == "grant" else "ap-") + secrets.token_hex(6)


# what makes each kind of store read-only, and what to do (``Approvals._unavailable``)
_READ_ONLY_POSTGRES = ("A hot standby takes no writes, nor does a database or role with default_transaction_read_only "
                       "on: point db (agentgate.toml or AGENTGATE_DB) at the primary, or turn "
                       "default_transaction_read_only off")
_READ_ONLY_SQLITE = ("SQLite opens a database read-only when this user cannot write its file or the directory it is "
                     "in, when its filesystem is mounted read-only, or when the URL says mode=ro: run this as a user "
                     "who can write the store (the gateway's), where it is mounted read-write, or through a "
                     "gateway's console")


class Approvals:
    """Approvals in a store (``core.store.Store``): ask, decide, take, wait, and access grants."""

    def __init__(self, store: Any, max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.max_pending = max_pending
        self.chain_key = store.chain_key
        self._unvouched: set[str] = set()  # grants found unvouched, warned about once
        self._unreadable_warned: set[str] = set()  # rows the gateway reads around (``_warn_unreadable``), once each
        self.writer = store.writer_id
        self.engine = store.engine
        self.where = store.where
        self.postgres = self.engine.dialect.name == "postgresql"
        self.table = ApprovalRow.__table__
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self._poller: asyncio.Task | None = None
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()
        self._grants: list[Approval] = []
        self._grants_loaded = 0.0
        self.listening = False  # PostgreSQL: the listener holds a LISTEN connection

    # -- reading ---------------------------------------------------------------------------------

    @functools.cached_property
    def _form(self) -> StoredForm:
        """How the approvals table's rows are read (``store.readable``): built once, as it is the
        same for every read (some 0.1 ms to build; the gateway reads on every held call and poll)."""
        return StoredForm(self.table, self.engine.dialect, forms=False)

    def _unavailable(self, e: BaseException) -> StoreUnavailable:
        if read_only(e):  # it answered: reachable, but it takes no writes
            return StoreUnavailable(
                f"the store at {self.where} refused the write because it is read-only ({_one_line(e)}): nothing was "
                f"changed. {_READ_ONLY_POSTGRES if self.postgres else _READ_ONLY_SQLITE}, then try again")
        return StoreUnavailable(f"the approvals in the store at {self.where} cannot be reached: {_one_line(e)}")

    def get(self, approval_id: str, unreadable: list[str] | None = None) -> Approval | None:
        """One approval; where a value of it cannot be read (``store.readable``), it is named in
        ``unreadable`` and the approval comes without it (None in its place); with no list,
        ``Unreadable`` is raised: nothing is decided on an approval not read whole."""
        form = self._form
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(form.select().where(self.table.c.id == approval_id)).all()
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        found = list(readable(rows, form, _approval, unreadable, partial=True))
        if not found:
            return None
        return Approval.from_row(found[0], frozenset(c.name for c in self.table.columns if c.name not in found[0]))

    def require(self, approval_id: str) -> Approval:
        found = self.get(approval_id)
        if found is None:
            raise NotFound(f"there is no approval {approval_id!r}: `agentgate approvals list` shows them", approval_id)
        return found

    def list(self, *, pending: bool = False, kind: str | None = None, active: bool = False, settled: bool = False,
             limit: int | None = 100, now: dt.datetime | None = None, oldest_first: bool = False,
             unreadable: list[str] | None = None) -> list[Approval]:
        """Newest first (``oldest_first``: the other way). ``pending``: only those waiting for a decision (not expired);
        ``active``: approved and not expired (grants in force, approvals not yet used);
        ``settled``: those no longer waiting (decided, or expired undecided), the latest decision
        (or expiry) first. One holding a value that cannot be read is named in ``unreadable`` and
        left out (with no list, ``Unreadable`` is raised)."""
        now = now or _now()
        c = self.table.c
        form = self._form
        q = form.select()
        if pending:
            q = q.where(c.status == "pending", c.expires > now)
        if active:
            q = q.where(c.status == "approved", c.expires > now)
        if settled:
            q = q.where(or_(c.status != "pending", c.expires <= now))
        if kind:
            q = q.where(c.kind == kind)
        if settled:
            q = q.order_by(func.coalesce(c.revoked, c.decided, c.expires).desc(), c.id.desc())
        elif oldest_first:
            q = q.order_by(c.requested, c.id)
        else:
            q = q.order_by(c.requested.desc(), c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        try:
            with self.engine.connect() as conn:
                return [Approval.from_row(r) for r in readable(conn.execute(q), form, _approval, unreadable)]
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None

    def calls_for(self, approval_id: str, limit: int = 50, unreadable: list[str] | None = None) -> list[dict[str, Any]]:
        """The calls recorded under an approval (held, refused, released), oldest first; one whose
        time, outcome, status, error or approver cannot be read is named in ``unreadable`` and left out."""
        c = Call.__table__.c
        form = StoredForm(Call.__table__, self.engine.dialect,
                          ("id", "time", "outcome", "status", "error", "approver", "writer_id", "seq"), forms=False)
        q = form.select().where(c.approval_id == approval_id).order_by(c.time).limit(limit)
        try:
            with self.engine.connect() as conn:
                return [{"id": r["id"], "time": _iso(r["time"]), "outcome": r["outcome"], "status": r["status"],
                         "error": r["error"], "approver": r["approver"]}
                        for r in readable(conn.execute(q), form, _record, unreadable)]
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None

    # -- a call asks -----------------------------------------------------------------------------

    def ask(self, *, principal: Any, decision: Any, call: Any, now: dt.datetime | None = None,
            shown: Any = None, call_id: str | None = None, deadline: float | None = None) -> Asked:
        """Find or open the approval for a call whose decision is ``approve``, taking it when it
        is approved (so the call goes through, once) and its approver is among the approvers of
        ``decision`` (else it is withdrawn). ``shown``: the call's parameters as approvers may see
        them, masked (default: ``shown_params``). ``call_id``: the id of the call's record, which
        an approval it uses names. ``deadline``: the monotonic time past which nothing is used."""
        now = now or _now()
        role = decision.role.role_arn if decision.role is not None else None
        h = binding_hash(principal, role, call.service, call.operation, call.region, call.params)
        use = _Use(call_id, approvers_spec(decision.approvers), True, deadline)
        written: list[dict[str, Any]] = []
        try:
            for _ in range(3):
                written, use.sent = [], None
                outcome = None
                with self._changing(written) as conn:
                    found, pending = self._latest(conn, h, "call"), None
                    if found is None:  # a first look at the principal's room; _insert counts again in turn
                        pending = conn.execute(self._pending_of(principal, now)).scalar()
                        if pending >= self.max_pending:  # the same call, asked at this moment, may have
                            found = self._latest(conn, h, "call")  # opened its approval since the first read
                    if found is not None:
                        outcome = self._settle(conn, found, now, use)
                    if outcome is None:
                        self._room_for(conn, principal, now, pending)
                if outcome is not None:
                    if outcome.state == "withdrawn":
                        self._changed()
                    return outcome
                duration = int(decision.expires or 900)
                row = {
                    "id": _new_id("call"), "kind": "call", "binding_hash": h, "rule": decision.rule,
                    "policy_version": decision.policy_version, "principal": principal.sub,
                    "issuer": principal.iss, "on_behalf_of": principal.on_behalf_of,
                    "actors": _nested_actors(principal),
                    "action": call.action or "unknown", "service": call.service, "operation": call.operation,
                    "region": call.region, "resources": chain.jsonable(list(call.resources or [])),
                    "params": chain.jsonable(shown) if shown is not None else
                    shown_params(call.service, call.operation, call.params), "role": role,
                    "approvers": approvers_spec(decision.approvers), "request_reason": decision.reason,
                    "duration": duration, "status": "pending", "requested": now,
                    "expires": now + dt.timedelta(seconds=duration),
                }
                if deadline is not None and time.monotonic() >= deadline:  # its call was answered already
                    raise StoreUnavailable(f"no approval was asked for {call.action}: the store took longer than "
                                           "this call waits for it")
                if self._insert(row, "gateway", principal=principal):
                    return Asked(Approval.from_row(row), "pending", created=True)
        except SQLAlchemyError as e:
            if use.sent is not None:
                found = self._used_by(use, e, written)
                if found is not None:
                    return Asked(found, "released")
            raise self._unavailable(e) from None
        raise ApprovalError(f"could not settle the approval for {call.action}: the store kept changing under it")

    def mark_client_left(self, approval_id: str, *, actor: str | None = None, now: dt.datetime | None = None,
                         deadline: float | None = None) -> bool:
        """(The gateway.) A try of a pending approval's call left before its hold ended: the
        approval says when (``client_left``), with its event, the first time, so that a retry
        joining it is answered ApprovalPending at once wherever it lands (``Asked.approval``
        carries the mark: the row ``ask`` reads anyway). ``actor``: the requester. True when this
        marked it; False when it was marked already, or is no longer pending. ``deadline`` is
        taken as ``_in_store`` gives it, and not held to: a mark written after its call was
        answered still serves the retries."""
        now = now or _now()
        c = self.table.c
        try:
            with self._changing() as conn:
                marked = conn.execute(update(self.table).where(
                    c.id == approval_id, c.status == "pending", c.expires > now, c.client_left.is_(None))
                    .values(client_left=now)).rowcount
                if marked == 1:
                    self._event(conn, approval_id, "client_left", now, actor=actor, channel="gateway",
                                reason="a try of its call left before its hold ended: retries are answered "
                                       "ApprovalPending at once")
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        return marked == 1

    def _pending_of(self, principal: Any, now: dt.datetime) -> Any:
        """How many approvals ``principal`` has pending (a scalar select)."""
        c = self.table.c
        return select(func.count()).select_from(self.table).where(
            c.principal == principal.sub, c.issuer == principal.iss, c.status == "pending", c.expires > now)

    def _room_for(self, conn: Any, principal: Any, now: dt.datetime, pending: int | None = None) -> None:
        """TooManyPending when ``principal`` has ``max_pending`` approvals pending already: one agent's
        flood of distinct asks would bury everyone else's in the console and the lists. ``pending``:
        the count, when it was read already."""
        if pending is None:
            pending = conn.execute(self._pending_of(principal, now)).scalar()
        if pending >= self.max_pending:
            raise TooManyPending(f"{principal.sub} has {pending} approvals pending, as many as one principal may "
                                 f"(max_pending_approvals): this call is not held; wait for decisions on those, or "
                                 "ask an approver")

    def _turn_to_open(self, conn: Any, principal: Any, h: str, now: dt.datetime) -> bool:
        """(First in the transaction that opens an approval for ``principal``'s call with hash
        ``h``.) True when it may be opened; False when one is pending for ``h`` already (the same
        call, asked at the same moment, opened it: this one joins it); TooManyPending when the
        principal has no room left (``_room_for``).

        Asks of one principal take turns from this count to their commit, whichever worker or
        replica they reach: asks made at the same moment would otherwise each count the same
        approvals (``ask`` looks first without waiting) and together open more than
        ``max_pending``. On SQLite the transaction takes the database's write lock before it
        counts (BEGIN IMMEDIATE); on PostgreSQL an advisory lock on the principal, held to the
        commit, which asks of other principals do not wait for."""
        if self.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:cls, :key)"),
                         {"cls": PENDING_LOCK, "key": _principal_key(principal)})
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        c = self.table.c
        joined = select(c.id).where(c.binding_hash == h, c.kind == "call", c.status == "pending").exists()
        found, pending = conn.execute(select(joined, self._pending_of(principal, now).scalar_subquery())).one()
        if found:
            return False
        self._room_for(conn, principal, now, pending)
        return True

    def _insert(self, row: dict[str, Any], channel: str, principal: Any = None) -> bool:
        """Open a pending approval; False when one is already pending for its hash (another call,
        perhaps on another replica, opened it at the same moment). With ``principal`` (a call's
        approval), only when the principal has room for it, counted in the same transaction
        (``_turn_to_open``)."""
        try:
            with self._changing() as conn:
                if principal is not None and not self._turn_to_open(conn, principal, row["binding_hash"],
                                                                    row["requested"]):
                    return False
                conn.execute(insert(self.table), [row])
                self._event(conn, row["id"], "requested", row["requested"], actor=row["principal"],
                            reason=row["request_reason"], channel=channel)
        except IntegrityError as e:
            if "approval_events" in str(e.orig):
                raise  # not a pending approval found: the events' chain (held to one appender) refused
            return False
        return True

    def _latest(self, conn: Any, h: str, kind: str) -> Approval | None:
        """The latest approval bound to ``h`` that is not over; ``Unreadable`` (in ``verify``'s words)
        when it holds a value that cannot be read: nothing is released on an approval not read whole."""
        c = self.table.c
        form = self._form
        rows = conn.execute(
            form.select().where(c.binding_hash == h, c.kind == kind, c.status.in_(("pending", "approved", "denied")))
            .order_by(c.requested.desc()).limit(1)
        ).all()
        found = list(readable(rows, form, _approval, None))
        return Approval.from_row(found[0]) if found else None

    def _settle(self, conn: Any, a: Approval, now: dt.datetime, use: _Use | None = None) -> Asked | None:
        """What an existing approval means for a new call with its hash; None: open a new one."""
        use = use or _Use()
        if a.status == "approved":
            if a.state(now) == "approved":
                self._require_vouched(conn, a.id, a)
                why = approver_unfit(a, use.approvers) if use.check else None
                if why is not None:
                    withdrawn = self._withdraw(conn, a, now, why)
                    return Asked(withdrawn, "withdrawn", why=why) if withdrawn is not None else None
                if self._use(conn, a.id, now, use) == 1:
                    return Asked(dataclasses.replace(a, status="used", used=now, call_id=use.call_id), "released")
                return None
            self._expire(conn, a, now)
            return Asked(dataclasses.replace(a, status="expired"), "expired")
        if a.status == "pending":
            if a.state(now) == "pending":
                return Asked(a, "pending")
            self._expire(conn, a, now)
            return Asked(dataclasses.replace(a, status="expired"), "expired")
        if a.status == "denied" and a.expires is not None and a.expires > now:
            return Asked(a, "denied")
        return None

    def _require_key(self) -> None:
        """A decision is written with the chain key where the store's approval events are keyed: a
        gateway holding the key releases nothing on one written without it (``_require_vouched``)."""
        if self.chain_key:
            return
        e = ApprovalEvent.__table__.c
        try:
            with self.engine.connect() as conn:
                keyed = conn.execute(select(e.seq).where(e.mac.is_not(None)).limit(1)).first() is not None
        except SQLAlchemyError as err:
            raise self._unavailable(err) from None
        if keyed:
            raise ApprovalError("this store's approval events are keyed with the chain key, which cannot be read "
                                "here (keys/chain.key): a decision written without it would release nothing; "
                                "decide where the key can be read (the gateway's host) or in the console")

    def _require_vouched(self, conn: Any, approval_id: str, approval: "Approval | None" = None,
                         quiet: bool = False) -> None:
        """(With the chain key.) Unvouched unless the approval's latest event carries the key's MAC,
        its content matches its hash, and the row reads as that event left it: an approval forged
        in the store (a row set to approved, with an event hashed but not keyed) releases nothing,
        also not once a keyed event of the gateway's would follow it."""
        if not self.chain_key:
            return
        e = ApprovalEvent.__table__
        for _ in range(VOUCH_READS):
            event = conn.execute(select(e).where(e.c.approval_id == approval_id).order_by(e.c.seq.desc())
                                 .limit(1)).first()
            row = conn.execute(select(self.table).where(self.table.c.id == approval_id)).first()
            why = None
            if event is None:
                why = "no event records it"
            else:
                m = event._mapping
                if not chain.event_mac_holds(self.chain_key, m):
                    why = f"its latest event ({m['event']}, seq {m['seq']}) carries no valid MAC of the chain key"
                elif not chain.event_hash_holds(m):
                    why = f"its latest event ({m['event']}, seq {m['seq']}) does not match its hash"
                elif row is None or chain.approval_state_hash(row._mapping) != m["state_hash"]:
                    # Read again: another gateway (or worker) may have changed the row and appended
                    # its event between the two reads (it used the approval just now), which the
                    # next reading shows whole. A forged row reads the same every time.
                    why = "its row does not read as its latest event left it"
                    continue
            break
        if why is not None:
            if not quiet:
                log.warning("approval %s is not vouched for by the chain key (%s): nothing is released on it",
                            approval_id, why)
            raise Unvouched(f"approval {approval_id} is not vouched for by the chain key: {why}; it was not "
                            "decided by a console or CLI holding the key, so nothing is released on it; "
                            "run `agentgate verify` and decide it again where keys/chain.key can be read",
                            approval)

    def expire_due(self, approval_id: str, now: dt.datetime | None = None, *,
                   deadline: float | None = None) -> Approval | None:
        """(The gateway, when a call's hold ends at its approval's expiry.) The approval as it
        stands, marked expired (with its event) when it is pending past its expiry, as a retry of
        its call would mark it: the held call is answered ApprovalExpired, and its retry asks for a
        new approval rather than being told again that this one expired. None when there is no
        such approval. ``deadline`` is taken as ``_in_store`` gives it."""
        now = now or _now()
        c = self.table.c
        try:
            with self._changing() as conn:
                row = conn.execute(select(self.table).where(c.id == approval_id)).first()
                if row is None:
                    return None
                a = Approval.from_row(row)
                if a.status == "pending" and a.state(now) == "expired":
                    self._expire(conn, a, now)
                    a = dataclasses.replace(a, status="expired")
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        return a

    def _expire(self, conn: Any, a: Approval, now: dt.datetime) -> None:
        c = self.table.c
        if conn.execute(update(self.table).where(c.id == a.id, c.status == a.status).values(status="expired")).rowcount:
            self._event(conn, a.id, "expired", now, channel="gateway")

    @contextlib.contextmanager
    def _changing(self, written: list[dict[str, Any]] | None = None) -> Iterator[Any]:
        """A transaction that may append approval events (to ``written`` too, when given); once it
        commits, each event's place in the chain is logged as a witness (``chain.Witness``), to be
        kept outside the store."""
        written = [] if written is None else written
        with self.engine.begin() as conn:
            conn.info[_WRITTEN] = written
            try:
                yield conn
            finally:
                conn.info.pop(_WRITTEN, None)
        self._witness(written)

    @staticmethod
    def _witness(written: list[dict[str, Any]]) -> None:
        for e in written:
            witness_log.info(chain.Witness(chain.APPROVAL_EVENTS_CHAIN, e["seq"], e["hash"], e["mac"], "").line())

    def _use(self, conn: Any, approval_id: str, now: dt.datetime, use: _Use) -> int:
        """(In a transaction.) Mark an approved approval used by ``use``'s call, with its event: 1
        when it was, 0 when it was no longer approved. Past ``use.deadline`` nothing is used (the
        call was answered already)."""
        if use.deadline is not None and time.monotonic() >= use.deadline:
            raise StoreUnavailable(f"approval {approval_id} was not used: the store took longer than this call "
                                   "waits for it")
        c = self.table.c
        use.sent = approval_id
        taken = conn.execute(update(self.table).where(c.id == approval_id, c.status == "approved", c.expires > now)
                             .values(status="used", used=now, call_id=use.call_id)).rowcount
        if taken == 1:
            self._event(conn, approval_id, "used", now, channel="gateway")
        return taken

    def _used_by(self, use: _Use, error: BaseException, written: list[dict[str, Any]]) -> Approval | None:
        """After a transaction that used approval ``use.sent`` failed (``error``): the approval,
        when the store has it used by this call; else None. The transaction's COMMIT may have been
        sent and gone through with its answer lost (the connection broke before the answer came):
        the approval is then used, and names this call. The store is asked until it answers (a new
        connection), up to ``use.deadline`` (else ``commit_timeout`` from now); StoreUnavailable
        when it does not answer by then, saying the use is not known."""
        approval_id = use.sent
        deadline = use.deadline if use.deadline is not None else time.monotonic() + self.store.commit_timeout
        pause = 0.05
        while True:
            try:
                with self.engine.connect() as conn:
                    row = conn.execute(select(self.table).where(self.table.c.id == approval_id)).first()
                break
            except SQLAlchemyError as e:
                if time.monotonic() + pause >= deadline:
                    raise StoreUnavailable(
                        f"the approvals in the store at {self.where} cannot be reached ({_one_line(error)}), and "
                        f"whether this call used approval {approval_id} is not known yet ({_one_line(e)})") from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        found = Approval.from_row(row) if row is not None else None
        if found is None or found.status != "used" or use.call_id is None or found.call_id != use.call_id:
            log.warning("approval %s: using it for call %s failed (%s); the store has it %s", approval_id,
                        use.call_id, _one_line(error), "not used" if found is None or found.status != "used"
                        else f"used by call {found.call_id}")
            return None
        log.warning("approval %s: the answer to its use by call %s was lost (%s); the store has it used by "
                    "this call, which goes on", approval_id, use.call_id, _one_line(error))
        self._witness(written)  # its transaction went through whole, its events with it
        return found

    def _withdraw(self, conn: Any, a: Approval, now: dt.datetime, why: str) -> Approval | None:
        """(In a transaction.) Revoke an approved approval whose approver the rule deciding its
        call now does not name (``approver_unfit``): a retry of the call asks for a new one. None
        when it was no longer approved (used or revoked meanwhile)."""
        c = self.table.c
        reason = f"withdrawn: {why}"
        values = {"status": "revoked", "revoked": now, "revoked_by": POLICY_ACTOR, "revoke_reason": reason,
                  "expires": now}
        if conn.execute(update(self.table).where(c.id == a.id, c.status == "approved").values(**values)).rowcount != 1:
            return None
        self._event(conn, a.id, "revoked", now, actor=POLICY_ACTOR, reason=reason, channel="gateway")
        self._notify(conn, a.id)
        log.warning("approval %s withdrawn: %s", a.id, why)
        return dataclasses.replace(a, **values)

    def _event(self, conn: Any, approval_id: str, event: str, at: dt.datetime, *, actor: str | None = None,
               reason: str | None = None, channel: str | None = None) -> None:
        """(In the transaction that changed ``approval_id``'s row, after the change.) Append the
        change to the approval events' chain, with the row as it now reads."""
        e = ApprovalEvent.__table__
        if self.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENTS_LOCK})
        row = conn.execute(select(self.table).where(self.table.c.id == approval_id)).first()
        head = conn.execute(select(e.c.seq, e.c.hash).order_by(e.c.seq.desc()).limit(1)).first()
        content: dict[str, Any] = {
            "seq": head.seq + 1 if head else 1, "approval_id": approval_id, "event": event, "time": at,
            "actor": actor, "reason": reason, "channel": channel, "writer": self.writer,
            "state_hash": chain.approval_state_hash(row._mapping), "prev_hash": head.hash if head else chain.GENESIS,
        }
        content["hash"] = chain.record_hash(content)
        content["mac"] = (chain.event_mac(self.chain_key, seq=content["seq"], event_hash=content["hash"])
                          if self.chain_key else None)
        conn.execute(insert(e), [content])
        conn.info.get(_WRITTEN, []).append(content)

    def history(self, approval_id: str, unreadable: list[str] | None = None) -> list[dict[str, Any]]:
        """An approval's events, oldest first: what happened to it, when, by whom and why. One holding
        a value that cannot be read is named in ``unreadable`` and left out."""
        e = ApprovalEvent.__table__.c
        form = StoredForm(ApprovalEvent.__table__, self.engine.dialect,
                          ("seq", "event", "time", "actor", "reason", "channel", "approval_id"), forms=False)
        q = form.select().where(e.approval_id == approval_id).order_by(e.seq)
        try:
            with self.engine.connect() as conn:
                return [{"seq": r["seq"], "event": r["event"], "time": _iso(r["time"]), "actor": r["actor"],
                         "reason": r["reason"], "channel": r["channel"]}
                        for r in readable(conn.execute(q), form, chain._event, unreadable)]
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None

    def take(self, approval_id: str, now: dt.datetime | None = None, *, call_id: str | None = None,
             decision: Any = None, deadline: float | None = None) -> Approval | None:
        """Use an approved approval for the call that waited on it; None if it is no longer usable.
        ``call_id``: the id of the call's record, which the used approval names. ``decision``: the
        call's; its approver must be among its approvers (``approver_unfit``), else the approval is
        withdrawn (``Withdrawn``). ``deadline``: the monotonic time past which nothing is used."""
        now = now or _now()
        c = self.table.c
        use = _Use(call_id, approvers_spec(decision.approvers) if decision is not None else None,
                   decision is not None, deadline)
        written: list[dict[str, Any]] = []
        withdrawn = why = None
        try:
            with self._changing(written) as conn:
                self._require_vouched(conn, approval_id)
                row = conn.execute(select(self.table).where(c.id == approval_id)).first()
                a = Approval.from_row(row) if row is not None else None
                if use.check and a is not None and a.state(now) == "approved":
                    why = approver_unfit(a, use.approvers)
                taken = 0
                if why is not None:
                    withdrawn = self._withdraw(conn, a, now, why)
                else:
                    taken = self._use(conn, approval_id, now, use)
                row = conn.execute(select(self.table).where(c.id == approval_id)).first()
        except SQLAlchemyError as e:
            if use.sent is not None:
                found = self._used_by(use, e, written)
                if found is not None:
                    return found
            raise self._unavailable(e) from None
        if withdrawn is not None:
            self._changed()
            raise Withdrawn(why, withdrawn)
        return Approval.from_row(row) if taken == 1 and row is not None else None

    # -- deciding --------------------------------------------------------------------------------

    def decide(self, approval_id: str, approver: Any, *, approve: bool, reason: str | None = None,
               channel: str = "cli", now: dt.datetime | None = None) -> Approval:
        """Approve or deny a pending approval (or grant request) as ``approver``."""
        now = now or _now()
        reason = _reason(reason)
        if not approve and not reason:
            raise ApprovalError("a denial needs a reason: the agent's error shows it")
        self._require_key()
        a = self.require(approval_id)
        state = a.state(now)
        if state != "pending":
            raise Refused(f"approval {a.id} is {_state_words(a, state)}; only a pending one can be decided")
        problem = may_decide(a, approver)
        if problem:
            raise Refused(f"{who(approver)} cannot decide approval {a.id}: {problem}")
        values: dict[str, Any] = {"status": "approved" if approve else "denied", "approver": who(approver),
                                  "reason": reason, "channel": channel, "decided": now}
        if approve:
            values["expires"] = now + dt.timedelta(seconds=int(a.duration or 900))
        c = self.table.c
        try:
            with self._changing() as conn:
                changed = conn.execute(update(self.table).where(
                    c.id == a.id, c.status == "pending", c.expires > now).values(**values)).rowcount
                if changed == 1:
                    self._event(conn, a.id, values["status"], now, actor=values["approver"], reason=reason,
                                channel=channel)
                    self._notify(conn, a.id)
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        if changed != 1:
            b = self.require(approval_id)
            raise Refused(f"approval {b.id} is {_state_words(b, b.state(now))}; only a pending one can be decided")
        self._changed()
        log.info("approval %s %s by %s (%s)%s", a.id, values["status"], who(approver), channel,
                 f": {reason}" if reason else "")
        return self.require(approval_id)

    def _notify(self, conn: Any, approval_id: str) -> None:
        if self.postgres:
            conn.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": CHANNEL, "id": approval_id})

    def _changed(self) -> None:
        """Wake this process's waiters and reload its grants."""
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None:
            self._grants_loaded = 0.0
            try:
                loop.call_soon_threadsafe(kick.set)
            except RuntimeError:  # the loop is closed
                pass

    # -- access grants ---------------------------------------------------------------------------

    def request_grant(self, principal: Any, *, role_arn: str, role_id: str | None, duration: int, reason: str,
                      approvers: Mapping[str, Any] | None, policy_version: str | None = None,
                      channel: str = "cli", now: dt.datetime | None = None) -> Asked:
        """Ask for ``principal``'s calls to run as ``role_arn`` for ``duration`` seconds once approved.
        A request already pending for the same principal and role is returned as it is."""
        now = now or _now()
        h = grant_binding_hash(principal, role_arn)
        try:
            for _ in range(3):
                with self._changing() as conn:
                    found = self._latest(conn, h, "grant")
                    if found is not None and found.state(now) == "pending":
                        return Asked(found, "pending")
                    if found is not None and found.status == "pending":
                        self._expire(conn, found, now)
                    row = {
                        "id": _new_id("grant"), "kind": "grant", "binding_hash": h, "rule": role_id,
                        "policy_version": policy_version, "principal": principal.sub, "issuer": principal.iss,
                        "on_behalf_of": principal.on_behalf_of, "actors": _nested_actors(principal),
                        "action": GRANT_ACTION, "resources": [role_arn],
                        "params": {"role": role_arn, "duration": duration}, "role": role_arn,
                        "approvers": approvers_spec(approvers), "request_reason": reason, "duration": duration,
                        "status": "pending", "requested": now, "expires": now + dt.timedelta(seconds=GRANT_REQUEST_TTL),
                    }
                if self._insert(row, channel):
                    return Asked(Approval.from_row(row), "pending", created=True)
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        raise ApprovalError("could not record the access request: the store kept changing under it")

    def revoke(self, grant_id: str, by: Any, *, reason: str | None = None, channel: str = "cli",
               now: dt.datetime | None = None) -> Approval:
        """End an access grant now, or withdraw an approval of a call its call has not used yet (a
        retry of the call then asks anew). The grantee (the requester), the local admin, or anyone
        who may approve it may. One still pending, its requester (or the local admin) withdraws: the
        ask is taken back, and a call held for it is answered so; its approvers deny it instead."""
        now = now or _now()
        self._require_key()
        a = self.require(grant_id)
        what = "access grant" if a.kind == "grant" else "approval"
        state = a.state(now)
        grantee = getattr(by, "sub", None) == a.principal and getattr(by, "iss", None) == a.issuer
        if state == "pending" and not (grantee or is_admin(by)):
            raise Refused(f"{what} {a.id} is pending: {who(by)} decides it (approve or deny); only its "
                          f"{'grantee' if a.kind == 'grant' else 'requester'} or the local admin withdraws it")
        if state not in ("approved", "pending"):
            force = "a grant in force or a request pending" if a.kind == "grant" else "an approval not yet used"
            raise Refused(f"{what} {a.id} is {_state_words(a, state)}; only {force} is revoked")
        if not (grantee or is_admin(by) or principal_matches(a.approvers, by)):
            raise Refused(f"{who(by)} cannot revoke {what} {a.id}: only its {'grantee' if a.kind == 'grant' else 'requester'}, "
                          f"the local admin or its approvers ({describe_approvers(a.approvers)}) can")
        c = self.table.c
        try:
            with self._changing() as conn:
                changed = conn.execute(update(self.table).where(c.id == a.id, c.status == a.status).values(
                    status="revoked", revoked=now, revoked_by=who(by), revoke_reason=_reason(reason),
                    expires=now)).rowcount
                if changed == 1:
                    self._event(conn, a.id, "revoked", now, actor=who(by), reason=_reason(reason),
                                channel=channel)
                    self._notify(conn, a.id)
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        if changed != 1:
            raise Refused(f"{what} {a.id} changed while it was being revoked (its call may have used it); look again")
        self._changed()
        log.info("%s %s revoked by %s (%s)", what, a.id, who(by), channel)
        return self.require(grant_id)

    def pending_count(self, now: dt.datetime | None = None) -> int:
        """How many approvals (of calls and grants) wait for a decision."""
        now = now or _now()
        c = self.table.c
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(self.table).where(
                    c.status == "pending", c.expires > now)).scalar() or 0
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None

    def active_grants(self, now: dt.datetime | None = None) -> list[Approval]:
        """The access grants in force; with the chain key, only those whose latest event it vouches
        for (a grant forged in the store, like an approval, lets no principal run as its role). One
        holding a value that cannot be read is not in force either (a warning names it, once)."""
        unreadable: list[str] = []  # a grant not read whole is not in force, and keeps no other from reloading
        grants = self.list(kind="grant", active=True, limit=None, now=now, unreadable=unreadable)
        self._warn_unreadable(unreadable, "that grant is not in force")
        if not self.chain_key or not grants:
            return grants
        vouched = []
        try:
            with self.engine.connect() as conn:
                for g in grants:
                    try:
                        self._require_vouched(conn, g.id, g, quiet=g.id in self._unvouched)
                    except Unvouched:
                        self._unvouched.add(g.id)
                        continue
                    vouched.append(g)
        except SQLAlchemyError as e:
            raise self._unavailable(e) from None
        return vouched

    def grant_for(self, principal: Any, now: dt.datetime | None = None) -> Approval | None:
        """The access grant in force for ``principal`` (the latest approved), from memory: the
        gateway reloads active grants every second and at once on a decision."""
        if not self._grants:
            return None
        now = now or _now()
        best = None
        for g in self._grants:
            if g.principal == principal.sub and g.issuer == principal.iss and g.expires is not None and g.expires > now:
                if best is None or (g.decided or g.requested) > (best.decided or best.requested):
                    best = g
        return best

    # -- waiting (the gateway's event loop) ------------------------------------------------------

    async def start(self) -> None:
        """Start watching the store for decisions (and keeping active grants in memory)."""
        if self._poller is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._closing.clear()
        try:
            self._grants = await self._loop.run_in_executor(self.store.executor, self.active_grants)
            self._grants_loaded = time.monotonic()
        except Exception as e:  # noqa: BLE001 - the poller retries
            log.warning("cannot load access grants yet: %s", e)
        self._poller = asyncio.create_task(self._poll(), name="agentgate-approvals-poller")
        if self.postgres:
            self._listener = threading.Thread(target=self._listen, name="agentgate-approvals-listener", daemon=True)
            self._listener.start()

    async def aclose(self) -> None:
        self._closing.set()
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
            self._poller = None
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 3)
            self._listener = None
        for futures in self._waiters.values():
            for f in futures:
                if not f.done():
                    f.cancel()
        self._waiters.clear()
        self._loop = None

    async def wait(self, approval_id: str, timeout: float) -> Approval | None:
        """The approval once it is no longer pending, or None after ``timeout`` seconds."""
        if self._loop is None:
            await self.start()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(approval_id, set()).add(fut)
        self._kick.set()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            futures = self._waiters.get(approval_id)
            if futures is not None:
                futures.discard(fut)
                if not futures:
                    del self._waiters[approval_id]

    @property
    def waiting(self) -> int:
        return sum(len(f) for f in self._waiters.values())

    async def _poll(self) -> None:
        interval = POSTGRES_POLL if self.postgres else SQLITE_POLL
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            # with no call waiting for a decision, nothing is due before the grants' next reload (a
            # call that comes to wait kicks the poller): no wake-ups of an idle gateway for nothing
            due = interval if self._waiters else max(interval, self._grants_loaded + GRANTS_REFRESH - time.monotonic())
            try:
                await asyncio.wait_for(self._kick.wait(), due)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                ids = list(self._waiters)
                if ids:
                    for a in await loop.run_in_executor(self.store.executor, self._decided, ids):
                        for f in list(self._waiters.get(a.id, ())):
                            if not f.done():
                                f.set_result(a)
                if time.monotonic() - self._grants_loaded >= GRANTS_REFRESH:
                    self._grants = await loop.run_in_executor(self.store.executor, self.active_grants)
                    self._grants_loaded = time.monotonic()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the store is down: keep trying, say so once
                failures += 1
                if failures == 1:
                    log.error("cannot read approvals from the store at %s: %s", self.where, e)
                await asyncio.sleep(min(0.1 * 2 ** failures, 2.0))

    def _decided(self, ids: list[str]) -> list[Approval]:
        """Those of ``ids`` no longer pending. One holding a value that cannot be read is left out (a
        warning names it, once), so that it keeps no other held call from its decision: its own call
        is answered as undecided when its hold ends, and refused on reading it if tried again."""
        c = self.table.c
        now = _now()
        form = self._form
        unreadable: list[str] = []
        with self.engine.connect() as conn:
            rows = conn.execute(form.select().where(
                c.id.in_(ids), ~and_(c.status == "pending", c.expires > now))).all()
            found = [Approval.from_row(r) for r in readable(rows, form, _approval, unreadable)]
        self._warn_unreadable(unreadable, "a call held for it is not released by it")
        return found

    def _warn_unreadable(self, lines: list[str], meaning: str) -> None:
        """Say once per row, in ``verify``'s words, what a row the gateway reads around means."""
        for line in lines:
            if line not in self._unreadable_warned:
                self._unreadable_warned.add(line)
                log.warning("%s: %s", line, meaning)

    def _listen_connection(self) -> Any:
        """PostgreSQL: a connection of the listener's own (autocommit), with the store's TCP
        keepalives (``POSTGRES_KEEPALIVES``): it sends nothing while it waits for notifications,
        so a server gone silent is noticed by the keepalives, in seconds, and the listener
        connects again (polling covers the gap)."""
        import psycopg

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs.pop("context", None)
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        for name, value in POSTGRES_KEEPALIVES.items():
            kwargs.setdefault(name, value)
        return psycopg.connect(*args, autocommit=True, **kwargs)

    def _listen(self) -> None:
        """PostgreSQL: LISTEN for decisions made anywhere, and wake the poller at once."""
        failures = 0
        while not self._closing.is_set():
            try:
                with self._listen_connection() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    if failures:
                        log.info("listening for approval decisions again")
                    failures = 0
                    self._changed()  # catch up on what was decided while not listening
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._changed()
            except Exception as e:  # noqa: BLE001 - reconnect with backoff; polling covers the gap
                self.listening = False
                failures += 1
                if failures == 1:
                    log.warning("not listening for approval decisions (%s); polling every %g s until it is back",
                                e, POSTGRES_POLL)
                self._closing.wait(min(0.2 * 2 ** failures, 5.0))
        self.listening = False


def _state_words(a: Approval, state: str) -> str:
    if state == "approved":
        return f"already approved by {a.approver} at {_iso(a.decided)}"
    if state == "denied":
        return f"denied by {a.approver} at {_iso(a.decided)}"
    if state == "used":
        return f"already used at {_iso(a.used)}"
    if state == "revoked":
        return f"revoked by {a.revoked_by} at {_iso(a.revoked)}"
    if state == "expired":
        return f"expired at {_iso(a.expires)}"
    return state
