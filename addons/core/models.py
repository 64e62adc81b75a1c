"""The store's schema: sessions, calls, approvals and their events, policy versions, chain
checkpoints and the approvals console's sign-outs.

Typed SQLAlchemy 2 models; the same tables on SQLite and PostgreSQL. The migrations in
``addons/migrations`` create and evolve them; these classes are what the code reads and writes.

Times are UTC ``datetime``s with microsecond precision, stored without a zone on both databases
(naive UTC going in, aware UTC coming out), so a value reads back exactly as it was written: the
hash chain depends on that. Lists and dicts are JSON (PostgreSQL's ``json``, which keeps the text as
written, not ``jsonb``, which would rewrite numbers).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NOT_ALLOWED = "decision <> 'allow'"  # the calls the index on decision holds (a partial index's condition)

UTC = dt.timezone.utc


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A UTC instant, microsecond precision, stored as a zone-less timestamp on every database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime cannot be stored as UTC: {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# JSON text, SQL NULL for None; plain ``json`` on PostgreSQL, which keeps numbers as written.
Json = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class AgentSession(Base):
    """One agent session, as the identity stage names it: created by its first call."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    principal: Mapped[str | None] = mapped_column(String)
    issuer: Mapped[str | None] = mapped_column(String)
    # the party its calls were made for (act.sub), when they were all made for the same one (or for
    # none); when they were made for several (the role session is the principal's, whoever it acts
    # for), none, and on_behalf_of_varies says so: each call's record names its own
    on_behalf_of: Mapped[str | None] = mapped_column(String)
    on_behalf_of_varies: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    role: Mapped[str | None] = mapped_column(String)
    writer_id: Mapped[str] = mapped_column(String)  # the writer that recorded its first call
    started: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    # No index on last_seen: every call moves it, and the table holds a row per principal and role.


class Call(Base):
    """One Record: every field of ``core.records.Record``, then its place in its writer's chain."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime)  # when the request arrived
    kind: Mapped[str] = mapped_column(String(16))  # call | connect
    session_id: Mapped[str | None] = mapped_column(String(128))
    # who
    principal: Mapped[str | None] = mapped_column(String)
    issuer: Mapped[str | None] = mapped_column(String)
    on_behalf_of: Mapped[str | None] = mapped_column(String)
    groups: Mapped[list[str] | None] = mapped_column(Json)
    client: Mapped[str | None] = mapped_column(String)
    # what
    service: Mapped[str | None] = mapped_column(String)
    operation: Mapped[str | None] = mapped_column(String)
    action: Mapped[str | None] = mapped_column(String)
    access_level: Mapped[str | None] = mapped_column(String)
    region: Mapped[str | None] = mapped_column(String)
    account: Mapped[str | None] = mapped_column(String)
    resources: Mapped[list[str] | None] = mapped_column(Json)
    params: Mapped[dict[str, Any] | None] = mapped_column(Json)
    method: Mapped[str | None] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String)
    url: Mapped[str | None] = mapped_column(Text)
    request_headers: Mapped[list[list[str]] | None] = mapped_column(Json)
    request_body_sha256: Mapped[str | None] = mapped_column(String(64))
    request_body_size: Mapped[int | None] = mapped_column(BigInteger)
    request_body: Mapped[str | None] = mapped_column(Text)  # the masked body, capped at body_cap; None when not kept
    # decision
    decision: Mapped[str | None] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    policy_version: Mapped[str | None] = mapped_column(String)
    approval_id: Mapped[str | None] = mapped_column(String(64))
    approver: Mapped[str | None] = mapped_column(String)
    role: Mapped[str | None] = mapped_column(String)
    # outcome
    outcome: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    aws_request_id: Mapped[str | None] = mapped_column(String)
    response_headers: Mapped[list[list[str]] | None] = mapped_column(Json)
    response_body_sha256: Mapped[str | None] = mapped_column(String(64))
    response_body_size: Mapped[int | None] = mapped_column(BigInteger)
    response_body: Mapped[str | None] = mapped_column(Text)  # the masked body, capped at body_cap; None when not kept
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)  # a stored body was cut at the cap
    masked: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)  # [{part, path, by, count}], never values
    body_note: Mapped[str | None] = mapped_column(Text)  # why a body is not kept, or how it was
    bytes_in: Mapped[int | None] = mapped_column(BigInteger)
    bytes_out: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # the hash chain (core.chain)
    writer_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)  # per writer, from 1
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))  # HMAC of (writer, seq, hash) with the chain key

    __table_args__ = (
        UniqueConstraint("writer_id", "seq"),
        Index(None, "time"),
        Index(None, "principal", "time"),
        # none on action: its filter compares without regard to case, with wildcards (``Store.calls``),
        # which no index on the column serves (migration 0010)
        # only the calls not allowed (most are allowed, and are read as quickly through the index on
        # time): the ones ``calls list --decision deny`` looks up by it (migration 0011)
        Index(None, "decision", "time", sqlite_where=text(NOT_ALLOWED), postgresql_where=text(NOT_ALLOWED)),
        Index(None, "session_id", "time"),
        # only the calls that name an approval (most name none): the ones looked up by it
        Index(None, "approval_id", sqlite_where=text("approval_id IS NOT NULL"),
              postgresql_where=text("approval_id IS NOT NULL")),
    )


APPROVAL_STATUSES = ("pending", "approved", "denied", "expired", "used", "revoked")
APPROVAL_KINDS = ("call", "grant")


class Approval(Base):
    """A call held for a human, bound to a hash of what exactly was asked for; or a time-bound
    access grant (``kind = "grant"``): a principal's calls may run as ``role`` until it expires."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), default="call", server_default="call")  # call | grant
    binding_hash: Mapped[str] = mapped_column(String(64))  # principal, role, service, operation, region, params
    call_id: Mapped[str | None] = mapped_column(String(64))  # the call that used it (its record's id), set as it is used
    rule: Mapped[str | None] = mapped_column(String)
    policy_version: Mapped[str | None] = mapped_column(String)
    principal: Mapped[str] = mapped_column(String)
    issuer: Mapped[str | None] = mapped_column(String)
    on_behalf_of: Mapped[str | None] = mapped_column(String)
    actors: Mapped[list[str] | None] = mapped_column(Json)  # the act claim's whole chain, when it nests
    action: Mapped[str] = mapped_column(String)
    service: Mapped[str | None] = mapped_column(String)
    operation: Mapped[str | None] = mapped_column(String)
    region: Mapped[str | None] = mapped_column(String)
    resources: Mapped[list[str] | None] = mapped_column(Json)
    params: Mapped[dict[str, Any] | None] = mapped_column(Json)  # masked, as the call's record keeps them
    role: Mapped[str | None] = mapped_column(String)  # the role ARN the call runs as, or the role granted
    approvers: Mapped[dict[str, Any] | None] = mapped_column(Json)  # who may decide: {sub, groups, claims}
    request_reason: Mapped[str | None] = mapped_column(Text)  # the rule's reason, or the requester's for a grant
    duration: Mapped[int | None] = mapped_column(Integer)  # seconds it stays usable once approved
    status: Mapped[str] = mapped_column(String(16), default="pending")
    approver: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)  # the approver's
    channel: Mapped[str | None] = mapped_column(String(32))  # console | cli
    requested: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    decided: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    expires: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    used: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # when a call approval released its call
    revoked: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # when a grant was revoked
    revoked_by: Mapped[str | None] = mapped_column(String)
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    # when a try of its call first left before its hold ended (its client's read timeout is shorter
    # than approval_hold): a retry joining it, on any worker or replica, is answered at once
    client_left: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'approved', 'denied', 'expired', 'used', 'revoked')", name="status"
        ),
        Index(None, "binding_hash", "status"),
        Index(None, "status", "requested"),
        # one pending approval per binding, across replicas: an SDK's retries find the same one
        Index("uq_approvals_pending_binding", "binding_hash", unique=True,
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    )


APPROVAL_EVENTS = ("requested", "approved", "denied", "expired", "used", "revoked", "existing", "client_left")


class ApprovalEvent(Base):
    """One change of an approval's state (asked for, approved, denied, expired, used, revoked), in
    one hash chain for the whole store: ``seq`` N links to event N-1 by ``prev_hash``, and
    ``state_hash`` is the SHA-256 of the approval's row as the change left it, so the approvals
    table must still read as its latest event says. ``mac``: an HMAC of (seq, hash) with the chain
    key, which anchors this event and every one before it; None when written without the key.
    ``existing`` stands for an approval that was already in the store when events began;
    ``client_left`` for a try of a pending approval's call that left before its hold ended (the
    row's ``client_left`` is set)."""

    __tablename__ = "approval_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    approval_id: Mapped[str] = mapped_column(String(64), index=True)
    event: Mapped[str] = mapped_column(String(16))
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str | None] = mapped_column(String)  # who: the asking principal, the approver, the revoker
    reason: Mapped[str | None] = mapped_column(Text)  # the approver's or revoker's
    channel: Mapped[str | None] = mapped_column(String(32))  # console | cli | gateway
    writer: Mapped[str | None] = mapped_column(String(128))  # the process that wrote it
    state_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("event IN (" + ", ".join(f"'{e}'" for e in APPROVAL_EVENTS) + ")", name="event"),
    )


class PolicyVersion(Base):
    """The text of every policy version that decided a call, stored once."""

    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)  # the content hash
    text: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)


CHECKPOINT_KINDS = ("head", "prune")


class Checkpoint(Base):
    """A keyed statement of a chain's head: "writer W had reached seq N, whose hash was H".

    ``head`` checkpoints are written as the chain grows and at close. A ``prune`` checkpoint stands
    for the records up to its seq that ``agentgate prune`` removed: the chain starts after it.
    The approval events' chain has prune checkpoints too, under ``chain.APPROVAL_EVENTS_CHAIN``.
    """

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    writer_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(8), default="head")
    hmac: Mapped[str | None] = mapped_column(String(64))  # HMAC-SHA256 with the chain key; None when keyless

    __table_args__ = (
        CheckConstraint("kind IN ('head', 'prune')", name="kind"),
        Index(None, "writer_id", "seq"),
    )


class ConsoleSignout(Base):
    """A console session signed out before it expired: every replica (and worker) sharing the store
    refuses it from then on. ``until``: when the session would have expired, after which the row
    is of no more use."""

    __tablename__ = "console_signouts"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)  # the session's "n"
    until: Mapped[dt.datetime] = mapped_column(UtcDateTime)
