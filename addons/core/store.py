"""The evidence store: every Record, committed before its response is released.

SQLite by default, PostgreSQL (psycopg 3) to scale out; the same code on both. One writer thread
per gateway commits whatever is queued in one transaction (group commit) and chains the records it
writes (``core.chain``). With ``commit_inline`` (durability "sync"; SQLite with synchronous
"normal", or PostgreSQL; the gateway sets it while at most three clients are connected) a caller
whose record finds nothing queued and no commit under way commits it itself, into the same chain:
on SQLite on its own thread, on PostgreSQL from its event loop on a connection of its own; when
that cannot be done at once (another process holds the write lock, no connection yet, any error)
the record is queued for the writer as usual, and one whose outcome is unknown (PostgreSQL's
connection broke after it was sent) goes to the writer in doubt, as its own attempts do. ``write`` with durability "sync" returns once the record is committed; "async"
once it is queued. When a commit fails (disk full, database down) the store is unhealthy:
``write`` raises ``StoreUnavailable`` at once so that the caller can refuse the call (fail closed),
while the writer keeps the records it holds and retries with backoff until the database is back.

What a record says is decided before it is sent to the database and never after: a caller that
stops waiting (``commit_timeout``), or whose client leaves, changes its record only while it is
still queued. Once sent, a record is committed as sent or not at all, and the caller answers from
that verdict: the writer asks the database to stop the attempt (a cancel request to PostgreSQL;
SQLite stops waiting for another process's lock) and the caller waits for its outcome. When the
connection breaks after a commit was sent, its outcome is unknown until the writer has looked
whether its records are in the chain; their callers wait for that too.

SQLite runs in WAL mode. ``sqlite_synchronous = "normal"`` (the default) writes each commit to the
WAL file (the operating system's cache) before the record counts as committed; the writer flushes
that file to the device within ``SQLITE_FLUSH_EVERY`` (1 s) after a commit, off the calls' path. A
committed record survives the gateway crashing or being killed at once; a power loss or an
operating system crash can take the records of the last second. ``"full"`` flushes the WAL file at
every commit (one flush per group commit, not per record): a committed record survives both.
The writer thread, not SQLite's automatic checkpoint, copies the WAL into the database once it
holds ``WAL_CHECKPOINT_FRAMES``, so that no commit made inline waits for that.
PostgreSQL keeps the server's ``synchronous_commit`` (on by default: the commit is flushed).

What a commit costs is kept to the database's own work: a record's bound values and the canonical
form its hash covers are prepared by the caller when it is queued, so the writer only chains and
sends them; the writer keeps one connection (no checkout or ping per commit) and runs statements
compiled once from the Core constructs on the driver's cursor. On PostgreSQL the whole transaction
(calls, sessions, checkpoint) is one statement sent in one message (``_OneStatement``): one round
trip, in which the server wakes once, then the WAL flush.

Reading (``calls``, ``sessions``, ``verify``, ``prune``) is for the CLI and tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import hashlib
import itertools
import logging
import math
import operator
import os
import re
import secrets
import select as select_module
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import NullType

from . import chain
from .chain import GENESIS, ApprovalEventCheck, ChainCheck, CheckpointInfo, VerifyResult
from .models import NOT_ALLOWED, AgentSession, ApprovalEvent, Call, Checkpoint, ConsoleSignout, PolicyVersion
from .models import Approval as ApprovalRow
from .records import RECORDED_RESOURCES, REDACTED_HEADERS, Record, new_id

__all__ = [
    "Store",
    "StoreError",
    "StoreUnavailable",
    "VerifyResult",
    "PruneResult",
    "verify",
    "verify_period",
    "prune",
    "load_chain_key",
    "chain_key_path",
    "alembic_config",
]

log = logging.getLogger("agentgate.store")
witness_log = logging.getLogger("agentgate.chain")  # chain heads, for a log kept elsewhere (chain.Witness)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
CHAIN_KEY_FILE = "chain.key"
MAX_BATCH = 1000  # records per group commit
GROUP_DELAY_UNDER = 8  # records: with ``group_delay`` set, a commit of fewer waits that long first
MAX_BACKOFF = 2.0  # seconds between retries while the database is down
CONNECT_TIMEOUT = 3  # seconds, PostgreSQL
ASYNC_RETRY = 5.0  # seconds before the inline commits' PostgreSQL connection is tried again after a failure
# seconds an inline PostgreSQL commit waits, past commit_timeout, for the server to stop it before
# its outcome counts as unknown
CANCEL_GRACE = 5.0
# libpq's connection parameters for every PostgreSQL connection (the pool's, the writer's, the
# approvals' LISTEN): TCP keepalives probe an idle connection after 5 s, every 2 s, 3 times, and
# tcp_user_timeout (milliseconds) drops one whose sent data goes unacknowledged for 10 s. A server
# that went away without closing its connections (a network partition, a host that died) is then
# noticed in seconds, not after the kernel's two hours, and what waited on it fails and is retried.
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                       "tcp_user_timeout": 10_000}
STORE_THREADS = 8  # threads of the store's own for the database work calls wait on (``Store.executor``)
SQLITE_BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
SQLITE_BUSY_SLICE = 0.05  # seconds; the writer looks whether to stop waiting for that lock this often
FILE_LOOK_EVERY = 1.0  # seconds between looks that the SQLite store's file is still the one opened (``Store._same_file``)
SQLITE_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}  # setting -> PRAGMA synchronous (WAL mode)
SQLITE_FLUSH_EVERY = 1.0  # seconds; "normal" flushes the WAL to the device this long after a commit at most
# The writer's connection does not checkpoint the WAL as it commits (SQLite's automatic checkpoint,
# which waits for the device, would then fall on a commit made inline on the event loop): the
# writer thread checkpoints it once it holds this many frames (pages), as SQLite would
# (``_checkpoint_wal``). The count is read from the WAL index's header in the -shm file, whose
# layout SQLite documents (https://www.sqlite.org/walformat.html: iVersion 3007000 at offset 0,
# mxFrame at 16, both native 32-bit); where it cannot be read so, the WAL file's size is used.
# 8,000 frames (some 32 MB) rather than SQLite's own 1,000: a RESTART checkpoint holds commits back
# while it runs (one made inline then goes to the writer and waits for it), and the pages a checkpoint
# copies are mostly the same few (the tables' and indexes' last pages), so eight times fewer
# checkpoints cost about as much each; at one agent the slowest calls' time (p99) halved.
WAL_CHECKPOINT_FRAMES = 8000
WAL_CHECKPOINT_BYTES = 32 << 20  # the same, by the WAL file's size, when the frames cannot be counted
WAL_INDEX_VERSION = 3007000
# after a commit made inline the WAL's size is looked at every this many such commits (one record
# writes a dozen or so frames: the WAL passes WAL_CHECKPOINT_FRAMES by a hundred at most)
INLINE_CHECKPOINT_LOOK_EVERY = 8
WAL_CHECKPOINT_WAIT = 0.1  # seconds the checkpoint waits for a commit or a reader to finish; then later
WATCH_EVERY = 0.1  # seconds between looks at a waiting caller's client
CANCEL_TIMEOUT = 30.0  # seconds a cancel request may take to reach PostgreSQL


class StoreError(Exception):
    """The store cannot do what was asked; the message says why and what to do."""


class StoreUnavailable(StoreError):
    """The store cannot write right now (disk full, database down); it retries by itself."""


class Unreadable(StoreError):
    """A record holding a value that cannot be read (``StoredForm``: a BLOB where text belongs, text
    that is no time, JSON that does not parse, a time PostgreSQL's driver cannot read), met by a
    reader given no list to name it in: the message is its line as ``verify`` says it."""


# ---------------------------------------------------------------------------------------------
# Engines, URLs and the schema


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _unparsed(url)


_PASSWORD = re.compile(r"(://[^:/@\[\]]*:)[^@/]*@")


def _unparsed(url: str) -> str:
    """A URL that does not parse, for messages: its password, if it seems to have one, hidden."""
    return _PASSWORD.sub(r"\1***@", url)


STORE_URL_FORMS = "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"


def parse_url(url: str) -> Any:
    """The store URL ``url`` parsed (SQLAlchemy's URL), for every command that takes one; StoreError,
    one line, when it is no URL: not one at all, a port that is no number from 1 to 65535, an IPv6
    address's [ without its ]."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(f"{_unparsed(url)!r} is not a database URL: {STORE_URL_FORMS}") from None
    except ValueError:  # SQLAlchemy's reading of the port: int() of what follows the host
        netloc = url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
        if netloc.count("[") != netloc.count("]"):
            why = f"the host {netloc!r} opens a [ (an IPv6 address) without its ]"
        else:
            why = f"its port {netloc.rpartition(':')[2]!r} is not a number from 1 to 65535"
        raise StoreError(f"{_unparsed(url)!r} is not a database URL: {why}; {STORE_URL_FORMS}") from None
    if u.port is not None and not 0 < u.port < 65536:
        raise StoreError(f"{display_url(url)!r} is not a database URL: its port {u.port} is not a number from 1 to "
                         f"65535; {STORE_URL_FORMS}")
    return u


def _one_line(e: BaseException) -> str:
    """A database error as one readable line (psycopg's messages span several)."""
    orig = getattr(e, "orig", None) or e
    return " ".join(str(orig).split()) or type(orig).__name__


def _open_error(e: BaseException, url: str) -> str:
    """``_one_line(e)``, and for a SQLite file that cannot be opened (SQLite says only "unable to open
    database file") why not, as the system says it, with the path and what to do."""
    line = _one_line(e)
    if "unable to open database file" not in line:
        return line
    try:
        path = _sqlite_path(url)
    except StoreError:
        path = None
    if path is None:
        return line
    fix = "give this user access to it, or run agentgate as its owner"
    for target, flags, what in ((path, os.O_RDONLY | os.O_NONBLOCK, "the store's file"),
                                (path.parent, os.O_RDONLY | os.O_DIRECTORY, "the store's directory")):
        try:
            os.close(os.open(target, flags))
        except FileNotFoundError:
            continue
        except OSError as oe:
            denied = oe.errno in (errno.EACCES, errno.EPERM)
            return f"{line}: {what} {target}: {oe.strerror or oe}" + (f"; {fix}" if denied else "")
    if path.parent.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        return (f"{line}: the store's directory {path.parent} cannot be written (SQLite keeps files beside the store); "
                f"{fix}")
    return line


READ_ONLY_SQLSTATE = "25006"  # PostgreSQL's read_only_sql_transaction
SQLITE_READONLY = 8  # SQLite's primary result code for "attempt to write a readonly database"


def read_only(e: BaseException) -> bool:
    """Whether the database refused a write because it takes none: PostgreSQL's
    read_only_sql_transaction, from a hot standby or with ``default_transaction_read_only`` on;
    SQLite's SQLITE_READONLY (and its extended codes), from a file opened read-only (one this user
    cannot write, on a filesystem mounted read-only, or a URL with ``mode=ro``)."""
    orig = getattr(e, "orig", None) or e
    if getattr(orig, "sqlstate", None) == READ_ONLY_SQLSTATE:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == SQLITE_READONLY


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names now; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_path(url: str) -> Path | None:
    u = parse_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return None
    return Path(u.database)


def make_engine(url: str, *, synchronous: str = "normal") -> Engine:
    """An engine for a store URL: ``sqlite:///PATH`` or ``postgresql+psycopg://USER@HOST/DB``.
    ``synchronous``: SQLite's, "normal" or "full" (see the module's docstring)."""
    u = parse_url(url)
    backend = u.get_backend_name()
    try:
        if backend == "sqlite":
            memory = not u.database or u.database == ":memory:"
            engine = create_engine(
                u,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
                poolclass=StaticPool if memory else None,
                json_serializer=chain.json_text,
            )
            pragma = SQLITE_SYNCHRONOUS[synchronous]

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute(f"PRAGMA synchronous={pragma}")
                except Exception:  # a read-only file: reading still works
                    pass
                finally:
                    cur.close()

            return engine
        if backend in ("postgresql", "postgres"):
            if u.drivername in ("postgresql", "postgres"):
                u = u.set(drivername="postgresql+psycopg")
            return create_engine(u, pool_pre_ping=True, json_serializer=chain.json_text,
                                 connect_args={"connect_timeout": CONNECT_TIMEOUT, **POSTGRES_KEEPALIVES})
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise StoreError(f"cannot use the database URL {display_url(url)}: {e}") from None
    raise StoreError(
        f"the store must be SQLite or PostgreSQL, not {backend!r} ({display_url(url)}): "
        f"use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    )


# The newest migration in addons/migrations/versions (tests/test_footprint.py checks it is Alembic's
# head). A store already there is used without importing Alembic, which would cost a running
# gateway some 20 MB of memory for nothing.
HEAD_REVISION = "0012_session_parties"


def alembic_config(url: str | None = None, connection: Any = None) -> Any:
    """Alembic's configuration, built from code: the migrations ship inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("agentgate's migrations have no head revision")
    return head


def _current_revision(conn: Any) -> str | None:
    """The schema revision Alembic recorded in the database, read without Alembic."""
    from sqlalchemy import inspect as sa_inspect

    if not sa_inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _anchor_unkeyed_tails(conn: Any, key: bytes) -> None:
    """On the upgrade that gives records their MACs: each chain's records after its last keyed
    checkpoint (a gateway stopped before it wrote one) get one at their end, if their hashes and
    links hold, since nothing else would ever vouch for them and ``verify`` would report them."""
    calls, checkpoints = Call.__table__, Checkpoint.__table__
    now = dt.datetime.now(dt.timezone.utc)
    for (writer_id,) in conn.execute(select(calls.c.writer_id).distinct()).all():
        anchored = conn.execute(select(func.max(checkpoints.c.seq)).where(
            checkpoints.c.writer_id == writer_id, checkpoints.c.hmac.is_not(None))).scalar() or 0
        prev = (conn.execute(select(calls.c.hash).where(calls.c.writer_id == writer_id, calls.c.seq == anchored))
                .scalar() if anchored else chain.GENESIS)
        last, broken = None, prev is None
        for row in conn.execute(select(calls).where(calls.c.writer_id == writer_id, calls.c.seq > anchored)
                                .order_by(calls.c.seq)).mappings():
            row = dict(row)
            if broken or row["prev_hash"] != prev or chain.record_hash(row) != row["hash"]:
                broken = True
                break
            prev, last = row["hash"], row["seq"]
        if broken:
            log.warning("store: writer %s's records after seq %d do not verify; left unanchored for `agentgate "
                        "verify` to report", writer_id, anchored)
        elif last is not None:
            conn.execute(insert(Checkpoint), [{
                "writer_id": writer_id, "seq": last, "head_hash": prev, "time": now, "kind": "head",
                "hmac": chain.checkpoint_mac(key, writer_id=writer_id, seq=last, head_hash=prev, time=now, kind="head")}])


DAMAGED = "is damaged"  # in the problem of a store whose schema no migration can mend


def _damage(conn: Any, where: str) -> str | None:
    """Why the schema of the database at ``where`` is damaged (a table of agentgate's dropped, or the
    alembic_version table that records its revision), or None: a migration would fail on it (a table
    it makes that is there already) or leave it broken, and every command would send its user to
    `agentgate init` and back."""
    from sqlalchemy import inspect as sa_inspect

    from .models import Base

    tables = set(sa_inspect(conn).get_table_names())
    ours = set(Base.metadata.tables)
    fix = ("restore it from a backup, or set db to a new store (`agentgate init` makes one) and keep this one as "
           "evidence")
    current = _current_revision(conn) if "alembic_version" in tables else None
    if current is None and tables & ours:
        return (f"the store at {where} {DAMAGED}: it has agentgate's tables ({', '.join(sorted(tables & ours))}) but "
                f"no record of its schema's revision (the alembic_version table is gone or empty): {fix}")
    if current == HEAD_REVISION and (missing := ours - tables):
        return (f"the store at {where} {DAMAGED}: its schema is this agentgate's, but its table"
                f"{'s' if len(missing) > 1 else ''} {', '.join(sorted(missing))} "
                f"{'are' if len(missing) > 1 else 'is'} gone: {fix}")
    return None


def _schema_problem(conn: Any, where: str) -> str | None:
    """Why the database at ``where`` cannot be used as it is, or None when it is at the head."""
    if (damage := _damage(conn, where)) is not None:
        return damage
    if _current_revision(conn) == HEAD_REVISION:
        return None
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    current = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if current == head:
        return None
    if current is None:
        return f"the store at {where} has no agentgate schema yet: run `agentgate init` (or start the gateway) to create it"
    try:
        script.get_revision(current)
    except CommandError:
        return f"the store at {where} is at schema {current}, newer than this agentgate ({head}); upgrade agentgate"
    return f"the store at {where} is at schema {current}, older than this agentgate ({head}); run `agentgate init` to migrate it"


def _transient(e: BaseException, dbapi: Any = None) -> bool:
    """True for errors of the database or its connection; False for a record it cannot take.
    ``dbapi`` is the driver module, for errors raised by its cursor directly."""
    if isinstance(e, IntegrityError | DataError):
        return False
    if isinstance(e, StatementError) and not isinstance(e, DBAPIError):
        return False  # a value that could not be bound
    if dbapi is not None and isinstance(e, dbapi.Error):
        return not isinstance(e, dbapi.IntegrityError | dbapi.DataError)
    return isinstance(e, SQLAlchemyError | OSError)


# ---------------------------------------------------------------------------------------------
# Records to rows


_RECORD_FIELDS = {f.name for f in dataclasses.fields(Record)}
_STRING_FIELDS = {
    c.name for c in Call.__table__.columns if c.type.python_type is str and c.name in _RECORD_FIELDS
} - {"id"}
_INT_FIELDS = {"status", "request_body_size", "response_body_size", "bytes_in", "bytes_out"}


def _headers(pairs: Any) -> list[list[str]]:
    if not pairs:
        return []
    items = pairs.items() if hasattr(pairs, "items") else pairs
    return [[chain.clean_str(str(k)), chain.clean_str(str(v))] for k, v in items
            if str(k).lower() not in REDACTED_HEADERS]


def _capped(body: Any, cap: int) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    if len(raw) <= cap:
        return chain.clean_str(raw.decode("utf-8", "replace")), False
    return chain.clean_str(raw[:cap].decode("utf-8", "ignore")), True


def _capped_params(params: Any, record: Record, cap: int) -> Any:
    """A call's parameters as the record keeps them: whole, or, when their JSON passes ``cap``
    bytes (a form of a million list items), their SHA-256 and size (policy and the approval's
    binding had them whole). Only encoded to be measured when the request was large enough to hold
    that much."""
    size = max(getattr(record, "request_body_size", None) or 0, len(getattr(record, "url", None) or ""))
    if params is None or size * 6 < cap:  # JSON's escapes write a byte as at most six
        return params
    text = chain.json_text(params).encode("utf-8")
    if len(text) <= cap:
        return params
    return {"agentgate:not-kept": f"the parameters took {len(text)} bytes as JSON, over body_cap ({cap})",
            "sha256": hashlib.sha256(text).hexdigest(), "size": len(text)}


def record_row(record: Record, body_cap: int = 1 << 20) -> dict[str, Any]:
    """The calls row of a Record, without its chain fields: values every database keeps exactly."""
    row: dict[str, Any] = {}
    fields = vars(record)
    for name in _STRING_FIELDS:
        v = fields.get(name)
        row[name] = None if v is None else chain.clean_str(str(v))
    for name in _INT_FIELDS:
        v = fields.get(name)
        row[name] = None if v is None else int(v)
    row["id"] = chain.clean_str(str(record.id)) if record.id else new_id()
    row["kind"] = row["kind"] or "call"
    row["time"] = chain.from_epoch(float(record.time if record.time is not None else time.time()))
    row["groups"] = chain.jsonable(list(record.groups or []))
    resources = list(record.resources or [])
    if len(resources) > RECORDED_RESOURCES:  # all were decided on; the parameters name the rest
        resources[RECORDED_RESOURCES:] = [f"agentgate:not-kept: {len(resources) - RECORDED_RESOURCES} more"]
    row["resources"] = chain.jsonable(resources)
    params = chain.jsonable(record.params)
    row["params"] = _capped_params(params, record, body_cap)
    row["masked"] = chain.jsonable(list(getattr(record, "masked", None) or []))
    row["request_headers"] = _headers(record.request_headers)
    row["response_headers"] = _headers(record.response_headers)
    latency = None if record.latency_ms is None else float(record.latency_ms) + 0.0  # no -0.0
    row["latency_ms"] = latency if latency is not None and math.isfinite(latency) else None  # NaN: SQLite stores NULL
    request_body, cut_request = _capped(getattr(record, "request_body", None), body_cap)
    response_body, cut_response = _capped(getattr(record, "response_body", None), body_cap)
    row["request_body"], row["response_body"] = request_body, response_body
    row["truncated"] = (bool(getattr(record, "truncated", False)) or cut_request or cut_response
                        or row["params"] is not params)
    return row


# The canonical form (``chain.canonical``) is encoded once when a record is queued, with stand-ins
# for the chain fields that only the writer knows; the writer swaps in their values. A stand-in holds
# NUL, which no stored string does (``chain.clean_str``), so it cannot be mistaken for data.
_STAND_INS = {k: f"\x00{k}\x00" for k in ("prev_hash", "seq", "writer_id")}
_STAND_IN_BYTES = {k: chain.CANONICAL_ENCODER.encode(v).encode() for k, v in _STAND_INS.items()}


def canonical_template(row: dict[str, Any]) -> bytes | None:
    """``chain.canonical`` of ``row`` with stand-ins for its chain fields; None if a stand-in
    would not be found again (the writer then hashes the row itself)."""
    body = {k: v for k, v in row.items() if v is not None and k != "hash"}
    if isinstance(t := body.get("time"), dt.datetime):  # record_row's only datetime
        body["time"] = chain.micros(t)
    body.update(_STAND_INS)
    out = chain.canonical_json(body)
    return out if all(out.count(b) == 1 for b in _STAND_IN_BYTES.values()) else None


def chained_hash(template: bytes, writer_id: str, seq: int, prev_hash: str) -> str:
    """``chain.record_hash`` of the row ``template`` came from, at ``seq`` after ``prev_hash``."""
    canonical = (template.replace(_STAND_IN_BYTES["prev_hash"], chain.CANONICAL_ENCODER.encode(prev_hash).encode())
                 .replace(_STAND_IN_BYTES["seq"], b"%d" % seq)
                 .replace(_STAND_IN_BYTES["writer_id"], chain.CANONICAL_ENCODER.encode(writer_id).encode()))
    h = hashlib.sha256(str(prev_hash).encode("ascii", "replace"))
    h.update(b"\n")
    h.update(canonical)
    return h.hexdigest()


class _DriverStatement:
    """A Core statement compiled once for the store's database and run on the driver's cursor,
    with each value through its column's own bind processor: what ``Connection.execute`` does,
    without compiling, wrapping and reading results again on every commit."""

    def __init__(self, stmt: Any, table: Any, columns: list[str], dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=columns)
        self.sql = str(compiled)
        self.positions = compiled.positiontup  # None for named paramstyles (psycopg)
        self.names = self.positions or re.findall(r"%\((\w+)\)s", self.sql)  # the parameters, in order
        self.processors = {
            c: p for c in columns if (p := table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def bind(self, values: dict[str, Any]) -> dict[str, Any]:
        procs = self.processors
        return {k: v if v is None or k not in procs else procs[k](v) for k, v in values.items()}

    def params(self, bound: dict[str, Any]) -> tuple | dict[str, Any]:
        return tuple(bound[n] for n in self.positions) if self.positions else bound


class _OneStatement:
    """PostgreSQL: a commit's calls, sessions and checkpoint in one INSERT statement (the others as
    data-modifying WITH clauses, which PostgreSQL always runs to completion), with PostgreSQL's own
    ``$n`` parameters (psycopg's RawCursor: nothing to parse on the way). Sent in autocommit, it is
    one transaction and one message to the server. Statements are kept per shape (how many calls,
    sessions, and whether a checkpoint)."""

    MAX_PARAMETERS = 65535  # PostgreSQL's protocol: a statement's parameters are counted in 16 bits
    SHAPES = 64

    def __init__(self, calls: _DriverStatement, sessions: _DriverStatement, checkpoint: _DriverStatement) -> None:
        self.parts = [self._split(s) for s in (calls, sessions, checkpoint)]
        per_record = len(calls.names) + len(sessions.names)
        self.max_records = (self.MAX_PARAMETERS - len(checkpoint.names)) // per_record
        self._shapes: dict[tuple[int, int, int], str] = {}

    @staticmethod
    def _split(stmt: _DriverStatement) -> tuple[str, list[str], str, list[str]]:
        """A one-row INSERT as (what comes before its row, its row's text around each parameter,
        what comes after, its parameters): the row is ``VALUES (...)``, parameters ``%(name)s``
        with the casts SQLAlchemy gives them, which stay."""
        start = stmt.sql.find(" VALUES (")
        end, depth = -1, 0
        for i in range(start + len(" VALUES "), len(stmt.sql)) if start >= 0 else ():
            depth += {"(": 1, ")": -1}.get(stmt.sql[i], 0)
            if depth == 0:
                end = i + 1
                break
        row = stmt.sql[start + len(" VALUES "):end] if end > 0 else ""
        if not row or re.findall(r"%\((\w+)\)s", row) != stmt.names or "$" in row:
            raise StoreError(f"cannot build the store's PostgreSQL statement from: {stmt.sql[:80]}")
        return stmt.sql[:start + len(" VALUES ")], re.split(r"%\(\w+\)s", row), stmt.sql[end:], stmt.names

    def _sql(self, shape: tuple[int, int, int]) -> str:
        sql = self._shapes.get(shape)
        if sql is not None:
            return sql
        n, clauses = 0, []
        for (before, pieces, after, names), rows in zip(self.parts, shape):
            if not rows:
                continue
            values = []
            for _ in range(rows):
                row = [pieces[0]]
                for piece in pieces[1:]:
                    n += 1
                    row += (f"${n}", piece)
                values.append("".join(row))
            clauses.append(before + ", ".join(values) + after)
        *first, last = clauses
        sql = (("WITH " + ", ".join(f"w{i} AS ({c})" for i, c in enumerate(first)) + " ") if first else "") + last
        if len(self._shapes) >= self.SHAPES:
            self._shapes.clear()
        self._shapes[shape] = sql
        return sql

    def __call__(self, calls: list[dict[str, Any]], sessions: list[dict[str, Any]], head: dict[str, Any] | None
                 ) -> tuple[str, list[Any]]:
        params: list[Any] = []
        for (_, _, _, names), rows in zip(self.parts, (calls, sessions, [head] if head is not None else [])):
            for row in rows:
                params.extend(row[k] for k in names)
        return self._sql((len(calls), len(sessions), int(head is not None))), params


# ---------------------------------------------------------------------------------------------
# Rows to what readers see


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds and a Z, the year in four digits (strftime's %Y writes the
    year 1 as "1", which no ISO 8601 or OSCAL reader takes)."""
    return None if t is None else t.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_SUMMARY = ("id", "time", "principal", "on_behalf_of", "action", "service", "operation", "access_level",
            "decision", "rule", "status", "approval_id")


def call_dict(row: Any) -> dict[str, Any]:
    """A calls row as the CLI and exports show it: the summary keys first, then every other column
    (a column that cannot be read, left out of the row by ``readable``, is left out here too)."""
    m = dict(row._mapping if hasattr(row, "_mapping") else row)
    if "time" in m:
        m["time"] = iso(m["time"])
    return {**{k: m[k] for k in _SUMMARY if k in m}, **{k: v for k, v in m.items() if k not in _SUMMARY}}


def session_dict(row: Any) -> dict[str, Any]:
    m = dict(row._mapping if hasattr(row, "_mapping") else row)
    for k in ("started", "last_seen"):
        if k in m:
            m[k] = iso(m[k])
    return m


def _as_datetime(t: dt.datetime | float | int | str | None) -> dt.datetime | None:
    if t is None:
        return None
    if isinstance(t, dt.datetime):
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    if isinstance(t, str):
        return _as_datetime(dt.datetime.fromisoformat(t))
    return chain.from_epoch(float(t))


# ---------------------------------------------------------------------------------------------
# The writer


class _Waiter:
    """Someone waiting for a record's verdict: an asyncio future, or a thread."""

    __slots__ = ("loop", "future", "event", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.future = loop.create_future() if loop else None
        self.event = None if loop else threading.Event()
        self.error: BaseException | None = None


# A verdict is None (committed), WITHDRAWN (not committed, and never will be as it was: the caller's
# client left, and the record says so instead), or a StoreError (not committed now: the caller
# refuses its call, and the record, kept, says so).
WITHDRAWN = object()


def _ended(conn: Any) -> bool:
    """A kept PostgreSQL connection (the writer's, or the inline commits' asyncio one) with nothing
    asked that has something to read: the server ended it (a restart, an idle timeout). Found
    without a round trip, before anything is sent; one that cannot be asked counts as ended."""
    try:
        return bool(select_module.select([conn.fileno()], [], [], 0)[0])
    except Exception:  # noqa: BLE001 - closed or broken
        return True


async def _cancel_async(conn: Any) -> None:
    """Ask the server to stop what ``conn`` (an asyncio connection) runs (best effort: it may have finished)."""
    try:
        await conn.cancel_safe(timeout=CANCEL_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the statement's own outcome tells
        log.debug("cannot cancel a statement: %s", _one_line(e))


def _resolve(outcomes: list[tuple[_Waiter, Any]]) -> None:
    """Tell waiters their records' verdicts: one hop into each event loop for all of its waiters."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for waiter, verdict in outcomes:
        if waiter.loop is not None:
            by_loop.setdefault(waiter.loop, []).append((waiter.future, verdict))
        else:
            waiter.error = verdict
            waiter.event.set()
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[asyncio.Future, Any]]) -> None:
    for future, verdict in settled:
        if not future.done():
            if verdict is None or verdict is WITHDRAWN:
                future.set_result(verdict is None)
            else:
                future.set_exception(verdict)


class _Pending:
    """A queued record: its row, its bound values and canonical form (prepared by the caller), who
    waits for its verdict, and what it must say instead if it is not committed because its call is
    refused (``if_refused``) or its caller's client left (``if_gone``).

    A record is queued, then in the writer's current commit attempt (``inflight``), then committed
    (``done``). An attempt that failed without the database saying so (the connection broke after
    the commit was sent) leaves its records ``in_doubt`` until the writer has looked whether they
    were committed. What a record says is only changed while it is queued: a record sent to the
    database is committed as it was sent, or not at all, and its verdict decides what the caller
    answers."""

    __slots__ = ("record", "row", "bound", "template", "waiter", "if_refused", "if_gone",
                 "inflight", "in_doubt", "done", "overdue", "left")

    def __init__(self, record: Record | None, row: dict[str, Any], bound: dict[str, Any], template: bytes | None,
                 waiter: _Waiter | None, if_refused: dict[str, Any] | None, if_gone: dict[str, Any] | None) -> None:
        self.record = record
        self.row = row
        self.bound = bound
        self.template = template
        self.waiter = waiter
        self.if_refused = if_refused
        self.if_gone = if_gone
        self.inflight = False
        self.in_doubt = False
        self.done = False
        self.overdue = False  # its caller has waited commit_timeout
        self.left = False  # its caller's client left while it was sent: if it is not committed, if_gone


def _invalidate(raw: Any) -> None:
    """Drop a pooled connection that may be broken (not returned to the pool)."""
    if raw is None:
        return
    try:
        raw.invalidate()
    except Exception:  # noqa: BLE001 - it is broken already
        pass


class _Aborted(Exception):
    """The writer stopped a commit attempt before sending it, because it was asked to."""


def _cancel(pg: Any) -> None:
    """Ask PostgreSQL to cancel what ``pg`` is running (a commit attempt the writer was asked to stop)."""
    try:
        pg.cancel_safe(timeout=CANCEL_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - best effort: the attempt's own verdict decides
        log.debug("cancel request not delivered: %s", _one_line(e))


def _busy(e: BaseException) -> bool:
    """A SQLite error saying another connection holds the write lock."""
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == 5  # SQLITE_BUSY and its extended codes


def default_writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def chain_key_path(keys_dir: str | Path) -> Path:
    """Where ``agentgate init`` keeps the chain key: ``<keys>/chain.key``."""
    return Path(keys_dir) / CHAIN_KEY_FILE


def load_chain_key(path: str | Path) -> bytes | None:
    """The chain key from a key file (or a keys directory holding ``chain.key``); None if absent."""
    p = Path(path)
    if p.is_dir():
        p = chain_key_path(p)
    try:
        key = p.read_bytes().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read the chain key {p}: {e.strerror}") from None
    if len(key) < 16:
        raise StoreError(f"the chain key {p} is too short ({len(key)} bytes; at least 16)")
    return key


class Store:
    """The evidence store: ``migrate()``, ``start()``, ``write()`` records, ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        durability: str = "sync",
        sqlite_synchronous: str = "normal",
        writer_id: str | None = None,
        chain_key: bytes | None = None,
        checkpoint_every: float = 60.0,
        body_cap: int = 1 << 20,
        commit_timeout: float = 10.0,
        max_queue: int = 100_000,
    ) -> None:
        if durability not in ("sync", "async"):
            raise StoreError(f"durability must be 'sync' or 'async', not {durability!r}")
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise StoreError(f"sqlite_synchronous must be 'normal' or 'full', not {sqlite_synchronous!r}")
        if not commit_timeout > 0:
            raise StoreError(f"commit_timeout must be a number of seconds above 0, not {commit_timeout!r}")
        self.url = url
        self.where = display_url(url)
        self.durability = durability
        self.sqlite_synchronous = sqlite_synchronous
        self.writer_id = writer_id or default_writer_id()
        if self.writer_id == chain.APPROVAL_EVENTS_CHAIN:
            raise StoreError(f"the writer id {self.writer_id!r} names the approval events' chain; choose another")
        self.checkpoint_every = checkpoint_every
        self.body_cap = body_cap
        self.commit_timeout = commit_timeout
        self.max_queue = max_queue
        self._key = chain_key
        self.engine = make_engine(url, synchronous=sqlite_synchronous)
        dialect = self.engine.dialect
        self._upsert = pg_insert if dialect.name == "postgresql" else sqlite_insert
        calls, sessions, checkpoints = Call.__table__, AgentSession.__table__, Checkpoint.__table__
        self._insert_calls = _DriverStatement(insert(calls), calls, [c.name for c in calls.columns], dialect)
        self._upsert_sessions = _DriverStatement(self._session_upsert(), sessions, [c.name for c in sessions.columns], dialect)
        self._insert_checkpoint = _DriverStatement(
            insert(checkpoints), checkpoints, [c.name for c in checkpoints.columns if c.name != "id"], dialect)
        self._postgres = dialect.name == "postgresql"
        self._one_statement = _OneStatement(self._insert_calls, self._upsert_sessions, self._insert_checkpoint) \
            if self._postgres else None
        self._max_batch = min(MAX_BATCH, self._one_statement.max_records) if self._one_statement else MAX_BATCH
        self._dbapi = dialect.loaded_dbapi
        self._raw: Any = None  # the writer's connection, kept between commits
        # PostgreSQL: the inline commits' connection (psycopg's asyncio one), the loop it belongs to,
        # the task opening it, and when to try again after a failure to (``_commit_inline_postgres``)
        self._aconn: Any = None
        self._aconn_loop: asyncio.AbstractEventLoop | None = None
        self._aconn_opening: asyncio.Task | None = None
        self._aconn_retry = 0.0
        # writer state: guarded by _cond (the queue, health, the attempt under way), or owned by the
        # writer thread (chain)
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._drain_deadline = float("inf")
        self._healthy = True
        self._last_error = ""
        self._attempting = False  # a commit attempt is under way
        self._inline = False  # a caller is committing its own record (``_commit_inline``)
        self._wake_on_commit = False  # the writer waits without a time set to flush or to checkpoint
        self._writer_waiting = False  # the writer has work and waits for an inline commit to end
        sqlite_file = _sqlite_path(url) if not self._postgres else None
        self._wal = f"{sqlite_file}-wal" if sqlite_file is not None else None  # the WAL file the writer keeps small
        self._file = sqlite_file  # the SQLite file, whose identity (device, inode) ``start`` takes
        self._file_id: tuple[int, int] | None = None
        self._file_looked = 0.0  # time.monotonic() of the last look at it (``_same_file``)
        self._file_lost: str | None = None  # why the file is not the one opened: every commit fails so
        self._wal_due = False  # an inline commit left the WAL needing a checkpoint (``_checkpoint_due``)
        self._inline_unchecked = 0  # inline commits since the WAL's size was last looked at
        self._busy_ms: int | None = None  # the writer's connection's busy_timeout (``_sqlite_busy_timeout``)
        self._wal_conn: Any = None  # the writer thread's connection for checkpoints
        self._shm_fd: int | None = None  # the -shm file, read for the WAL's frame count
        self._shm_lock = threading.Lock()
        # commit a record on the caller's thread when nothing else is queued or being written
        # (``_commit_inline``); the gateway turns it on while few clients are connected
        self.commit_inline = False
        # seconds the writer thread waits before a commit of fewer than GROUP_DELAY_UNDER records, for
        # more to join it; the gateway sets it while several of its workers share one SQLite file
        self.group_delay = 0.0
        self._abort: str | None = None  # why the attempt under way was asked to stop: "gone" or "timeout"
        self._sent = False  # the attempt under way has sent its statements
        self._in_doubt = 0  # records at the head of the queue whose commit's outcome is unknown
        self._doubt_checkpoint = False  # that commit held a head checkpoint
        self._seq = 0
        self._head = GENESIS
        self._anchored = 0
        self._policy_versions: set[str] = set()
        # policy versions that decided calls and whose text the writer stores before its next
        # commit (``keep_policy_version``): version -> text
        self._owed_versions: dict[str, str] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._schema_ok = False
        # group commits, the records they held, and how many of those commits a caller made inline
        self.stats = {"commits": 0, "records": 0, "failures": 0, "aborts": 0, "inline": 0, "delayed": 0}

    def __repr__(self) -> str:
        return f"Store({self.where!r}, writer_id={self.writer_id!r})"

    @property
    def chain_key(self) -> bytes | None:
        """The key of the chain's checkpoints (and of the approval events written with this store)."""
        return self._key

    @property
    def guarantee(self) -> str:
        """What a committed record survives, in a line for the gateway's start banner."""
        if self.engine.dialect.name == "sqlite":
            if self.sqlite_synchronous == "full":
                return "SQLite synchronous=FULL: a committed record survives a crash and a power loss"
            return "SQLite synchronous=NORMAL: a committed record survives a gateway crash, not a power loss"
        return "PostgreSQL: a committed record is as durable as the server's synchronous_commit"

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema to this agentgate's head revision."""
        path = _sqlite_path(self.url)
        if path is not None:
            try:  # a new store is its user's alone, as `agentgate init` makes it: directory 0700, file 0600
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass  # the store is there already
            except OSError as e:
                where = path if e.filename is None else e.filename
                raise StoreUnavailable(f"cannot open the store at {self.where}: cannot create {where}: "
                                       f"{e.strerror or e}") from None
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # one migrator at a time across replicas
                    conn.execute(text("SELECT pg_advisory_xact_lock(4157204212)"))
                problem = _schema_problem(conn, self.where)
                if problem and ("newer than" in problem or DAMAGED in problem):
                    raise StoreError(problem)
                if problem:
                    from alembic import command

                    before = _current_revision(conn)
                    command.upgrade(alembic_config(connection=conn), "head")
                    if before is not None and before < "0006" and self._key is not None:
                        _anchor_unkeyed_tails(conn, self._key)
        except StoreError:
            raise
        except (SQLAlchemyError, OSError) as e:
            raise StoreUnavailable(f"cannot open the store at {self.where}: {_open_error(e, self.url)}") from None
        self._schema_ok = True

    def _check_schema(self) -> None:
        if self._schema_ok:
            return
        path = _sqlite_path(self.url)
        if path is not None and not path.exists():
            raise StoreError(f"there is no store at {path}: run `agentgate init`, or pass --db URL")
        with self._reading() as conn:
            problem = _schema_problem(conn, self.where)
        if problem:
            raise StoreError(problem)
        self._schema_ok = True

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StoreUnavailable(f"cannot read the store at {self.where}: {_open_error(e, self.url)}") from None

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        """As ``_reading``, with every read seeing the store as it was at the first of them, so that
        what running gateways commit meanwhile is not seen in part (an approval's row without the
        event committed with it, a row changed after its events were read): on PostgreSQL one
        read-only REPEATABLE READ transaction, on SQLite one read transaction (in WAL mode it keeps
        its snapshot while the writers go on)."""
        with self._reading() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            else:
                conn.exec_driver_sql("BEGIN")
            yield conn

    # -- writing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread. The schema must be at this agentgate's head (``migrate()``)."""
        if self._thread is not None:
            return
        self._check_schema()
        self._file_id = _file_identity(self._file) if self._file is not None else None
        self._thread = threading.Thread(target=self._run, name="agentgate-store-writer", daemon=True)
        self._thread.start()
        log.info("store %s: writer %s started", self.where, self.writer_id)

    @property
    def healthy(self) -> bool:
        """False from a failed (or overdue) commit until the next successful one."""
        return self._healthy

    @property
    def last_error(self) -> str:
        """Why the store cannot write, while it cannot ("" when it can)."""
        return self._last_error

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Threads of the store's own (STORE_THREADS) for the database work a call waits on
        (approvals asked for and used, decisions looked for): when the database hangs, the calls
        waiting on it hold these threads, not the event loop's default executor, which fetching
        STS credentials and the issuer's keys needs."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="agentgate-store")
            return self._executor

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"the store at {self.where} cannot write ({self._last_error}); "
            f"the record is kept and will be written when it recovers"
        )

    def _prepare(self, record: Record) -> tuple[dict[str, Any], dict[str, Any], bytes | None]:
        """A record's row, its bound values and its canonical form: the writer only chains them."""
        try:
            row = record_row(record, self.body_cap)
            return row, self._insert_calls.bind(row), canonical_template(row)
        except (TypeError, ValueError, OverflowError) as e:
            raise StoreError(f"record {record.id} cannot be stored: {e}") from None

    def _rewrite(self, item: _Pending, fields: dict[str, Any] | None) -> None:
        """(Under the lock, ``item`` queued.) From now on the record says ``fields`` instead."""
        if fields and item.record is not None:
            try:
                item.row, item.bound, item.template = self._prepare(dataclasses.replace(item.record, **fields))
            except StoreError as e:
                log.error("store %s: %s", self.where, e)
        item.if_refused = item.if_gone = None

    def _not_now(self, item: _Pending, error: BaseException) -> tuple[_Waiter, Any] | None:
        """(Under the lock, ``item`` queued.) ``item`` is not committed now: its caller refuses its
        call (the record says ``if_refused``), or, when its client has left, answers nobody (the
        record says ``if_gone``). The waiter to tell, and what."""
        waiter, item.waiter = item.waiter, None
        if waiter is None:
            return None
        if item.left and item.if_gone is not None:
            self._rewrite(item, item.if_gone)
            return waiter, WITHDRAWN
        self._rewrite(item, item.if_refused)
        return waiter, error

    def _enqueue(self, record: Record, waiter: _Waiter | None, if_refused: dict[str, Any] | None = None,
                 if_gone: dict[str, Any] | None = None,
                 prepared: tuple[dict[str, Any], dict[str, Any], bytes | None] | None = None) -> _Pending:
        row, bound, template = prepared or self._prepare(record)
        keep = record if (if_refused or if_gone) else None
        item = _Pending(keep, row, bound, template, waiter, if_refused, if_gone)
        with self._cond:
            if self._thread is None:
                raise StoreError(f"the store at {self.where} is not started: start() it before writing")
            if self._closing.is_set():
                raise StoreError(f"the store at {self.where} is closed")
            if len(self._queue) >= self.max_queue:
                raise StoreUnavailable(
                    f"the store at {self.where} has {len(self._queue)} records waiting ({self._last_error or 'falling behind'}); "
                    f"record {row['id']} was not kept"
                )
            healthy = self._healthy
            if not healthy:
                item.waiter = None
                self._rewrite(item, if_refused)
            self._queue.append(item)
            self._cond.notify()
        if not healthy:
            raise self._unavailable()
        return item

    async def write(self, record: Record, *, if_refused: dict[str, Any] | None = None,
                    if_gone: dict[str, Any] | None = None, gone: Callable[[], bool] | None = None) -> bool:
        """Queue a record; with durability "sync", return once it is committed (True).

        Raises ``StoreUnavailable`` when the store cannot write now; the record is kept and written
        when it can. A caller that then refuses the call passes ``if_refused``: the Record fields
        (outcome, status, error) that the kept record must hold instead, to say what the agent got.

        ``gone`` tells whether the caller's client has left; it is asked every ``WATCH_EVERY``
        seconds while the caller waits. When it has, and the record was not yet sent to the
        database, the record says ``if_gone`` instead and ``write`` returns False.

        A caller waits ``commit_timeout`` seconds at most for a record still queued (it is then
        refused as above, and the store counts as unable to write until a commit succeeds). A
        record already sent to the database when that time is up (or when the client leaves) is
        committed as it was sent or not at all: the writer asks the database to stop the attempt,
        and the caller waits for the verdict, so that what it answers is what the record says.
        """
        if self.durability == "async":
            self._enqueue(record, None, if_refused)
            return True
        prepared = self._prepare(record)
        if_gone = if_gone if gone is not None else None
        in_doubt = None
        if self.commit_inline:
            if not self._postgres:
                if self._commit_inline(prepared):
                    return True
            else:
                done = await self._commit_inline_postgres(prepared, record, if_refused, if_gone, gone)
                if isinstance(done, bool):  # committed; or not, its client gone (the record says so)
                    return done
                in_doubt = done
        loop = asyncio.get_running_loop()
        if in_doubt is not None:  # sent inline, its outcome unknown: the writer finds it out
            item, waiter = in_doubt
        else:
            waiter = _Waiter(loop)
            item = self._enqueue(record, waiter, if_refused, if_gone, prepared)
        future = waiter.future
        deadline = loop.time() + self.commit_timeout
        timer: asyncio.TimerHandle | None = None

        def look() -> None:
            nonlocal timer
            if future.done():
                return
            if gone is not None and not item.left and gone() and self._left(item, waiter):
                future.set_result(False)
                return
            now = loop.time()
            if not item.overdue and now >= deadline and self._overdue(item, waiter):
                future.set_exception(self._too_slow())
                return
            if gone is not None and not item.left:
                timer = loop.call_later(WATCH_EVERY if item.overdue else min(WATCH_EVERY, deadline - now), look)
            elif not item.overdue:
                timer = loop.call_later(deadline - now, look)

        timer = loop.call_later(min(WATCH_EVERY, self.commit_timeout) if gone is not None else self.commit_timeout,
                                look)
        try:
            return await future
        finally:
            timer.cancel()
            look = None  # it names itself: a cycle that would keep the call's flow for the garbage collector

    @property
    def postgres(self) -> bool:
        """The store is PostgreSQL (else SQLite)."""
        return self._postgres

    @property
    def can_commit_inline(self) -> bool:
        """Durability "sync", and SQLite with sqlite_synchronous "normal" or PostgreSQL. SQLite's
        commit on the caller's thread then waits for nothing outside the process (no network, no
        other process's lock, no device: the WAL is flushed and checkpointed by the writer thread),
        and the caller would wait for it anyway; PostgreSQL's is sent and awaited on the caller's
        event loop, which serves other calls meanwhile (``_commit_inline_postgres``)."""
        return self.durability == "sync" and (self._postgres or self.sqlite_synchronous == "normal")

    def _inline_refused(self) -> bool:
        """(Under ``_cond``.) A record cannot be committed inline now: the writer has records queued,
        an attempt under way or due, or is not writing."""
        # _wal_due: the WAL has its checkpoint's worth; records go to the writer, which checkpoints
        # first, so that the WAL stays bounded however late the writer thread is scheduled
        return bool(self._queue or self._attempting or self._inline or self._writer_waiting or self._in_doubt
                    or self._wal_due or self._owed_versions or not self._healthy or self._thread is None
                    or self._closing.is_set())

    def _inline_done(self) -> None:
        """(Under ``_cond``.) An inline commit is over: wake the writer if it has work waiting."""
        self._inline = False
        self._sent = False
        if self._wake_on_commit or self._wal_due or self._queue or self._closing.is_set():
            self._cond.notify()

    async def _commit_inline_postgres(self, prepared: tuple[dict[str, Any], dict[str, Any], bytes | None],
                                      record: Record, if_refused: dict[str, Any] | None,
                                      if_gone: dict[str, Any] | None, gone: Callable[[], bool] | None
                                      ) -> bool | tuple[_Pending, _Waiter] | None:
        """PostgreSQL: commit one record from the caller's event loop, on a connection of its own
        (psycopg's asyncio connection), as the one statement the writer sends: no hand-over to the
        writer thread and back (two thread wake-ups and GIL hand-overs per call). Same conditions
        as ``_commit_inline``, and the same rules as the writer's attempts:

        - True: committed. None: not tried (no connection yet, one is opened meanwhile; the server
          ended the kept one) or refused by the server: the caller queues the record as usual.
        - The caller's client leaves (``gone``), or ``commit_timeout`` passes, while the statement
          runs: the server is asked to stop it. Stopped, it is not committed: the record says
          ``if_gone`` (False) or ``if_refused`` (``StoreUnavailable``, and the store refuses calls
          until a commit goes through), and goes to the writer; committed before the request
          landed, it stands as sent (True).
        - The connection breaks, or no answer comes even then, after the statement was sent: its
          outcome is unknown. The record goes to the head of the writer's queue in doubt, and the
          writer finds out whether it went through, as after its own attempts: (the queued record,
          its waiter), for the caller to wait on."""
        loop = asyncio.get_running_loop()
        conn = self._aconn
        if conn is None or self._aconn_loop is not loop or conn.closed or _ended(conn):
            self._open_async(loop)
            return None
        with self._cond:
            if self._inline_refused():
                return None
            self._inline = True
        row, bound, template = prepared
        left = overdue = False
        watch: asyncio.TimerHandle | None = None
        stopping: list[asyncio.Task] = []
        try:
            try:
                calls, sessions, head, seq, prev = self._chained(
                    [_Pending(None, row, bound, template, None, None, None)], False)
                sql, params = self._one_statement(calls, sessions, head)
            except Exception as e:  # noqa: BLE001 - nothing was sent: the writer tries it, and reports what fails
                log.debug("store %s: an inline commit was not made (%s); queued for the writer", self.where,
                          _one_line(e))
                return None
            deadline = loop.time() + self.commit_timeout

            def look() -> None:
                nonlocal watch, left, overdue
                watch = None
                if gone is not None and gone():
                    left = True
                elif loop.time() >= deadline:
                    overdue = True
                else:
                    watch = loop.call_later(min(WATCH_EVERY, deadline - loop.time()) if gone is not None
                                            else deadline - loop.time(), look)
                    return
                self.stats["aborts"] += 1
                stopping.append(loop.create_task(_cancel_async(conn)))

            watch = loop.call_later(min(WATCH_EVERY, self.commit_timeout) if gone is not None else self.commit_timeout,
                                    look)
            try:
                async with asyncio.timeout(self.commit_timeout + CANCEL_GRACE):
                    async with self._dbapi.AsyncRawCursor(conn) as cur:
                        await cur.execute(sql, params)
            except BaseException as e:
                if isinstance(e, Exception) and self._verdict(e):  # the server refused or stopped it: not committed
                    if not (left or overdue):
                        log.debug("store %s: an inline commit was refused (%s); queued for the writer", self.where,
                                  _one_line(e))
                        return None
                    said = if_gone if left and if_gone is not None else if_refused
                    if overdue:
                        with self._cond:
                            self._stuck()  # the database is stuck
                    try:
                        self._enqueue(dataclasses.replace(record, **said) if said else record, None)
                    except StoreUnavailable:
                        pass  # kept: written once the store can
                    if left and if_gone is not None:
                        return False
                    raise self._too_slow() from None
                self._drop_async()
                waiter = _Waiter(loop)
                item = _Pending(record if (if_refused or if_gone) else None, row, bound, template, waiter,
                                if_refused, if_gone)
                item.in_doubt = item.inflight = True
                item.left, item.overdue = left, overdue
                with self._cond:
                    self._queue.appendleft(item)  # before any record queued meanwhile: the next in the chain
                    self._in_doubt, self._doubt_checkpoint = 1, False
                reason = _one_line(e) if isinstance(e, Exception) and not isinstance(e, TimeoutError) else \
                    f"no answer within {self.commit_timeout + CANCEL_GRACE:g} s" if isinstance(e, TimeoutError) else \
                    "the call was cancelled"
                log.warning("store %s: the outcome of a commit made inline is unknown (%s); its caller waits until "
                            "the database says whether it went through", self.where, reason)
                if not isinstance(e, Exception):
                    raise
                return item, waiter
            self._committed_as(seq, prev, False, 1)
            self.stats["inline"] += 1
            return True
        finally:
            if watch is not None:
                watch.cancel()
            if stopping:  # a request to stop it may land late, on the next statement: not on this connection
                self._drop_async()
            with self._cond:
                self._inline_done()

    def _open_async(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the inline commits' PostgreSQL connection on ``loop``, in the background (once at a
        time; after a failure, not again for ASYNC_RETRY seconds)."""
        opening = self._aconn_opening
        if (opening is not None and not opening.done() and opening.get_loop() is loop) or loop.time() < self._aconn_retry:
            return
        if self._aconn is not None:
            self._drop_async()  # another loop's

        async def open_connection() -> None:
            try:
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                conn = await self._dbapi.AsyncConnection.connect(
                    *args, **{**kwargs, "connect_timeout": CONNECT_TIMEOUT, **POSTGRES_KEEPALIVES}, autocommit=True)
            except Exception as e:  # noqa: BLE001 - the writer thread commits meanwhile, and reports what fails
                log.debug("store %s: no connection for inline commits (%s)", self.where, _one_line(e))
                self._aconn_retry = loop.time() + ASYNC_RETRY
            else:
                if self._closing.is_set():
                    await conn.close()
                else:
                    self._aconn, self._aconn_loop = conn, loop

        self._aconn_opening = loop.create_task(open_connection())

    def _drop_async(self) -> None:
        """Close the inline commits' PostgreSQL connection, from any thread (libpq's own close)."""
        conn, self._aconn, self._aconn_loop = self._aconn, None, None
        if conn is not None:
            try:
                conn.pgconn.finish()
            except Exception:  # noqa: BLE001 - already closed or broken
                pass

    def _commit_inline(self, prepared: tuple[dict[str, Any], dict[str, Any], bytes | None]) -> bool:
        """Commit one record here, on the caller's thread, when the writer has nothing queued and no
        attempt under way (SQLite; PostgreSQL's is ``_commit_inline_postgres``): no hand-over to the
        writer thread and back, which costs a single agent's calls more than the commit itself. One
        try, not waiting for another process's write lock; False when it was not done (the caller
        queues the record as usual)."""
        if not self.can_commit_inline:
            return False
        with self._cond:
            if self._inline_refused():
                return False
            self._inline = True
        done = False
        try:
            row, bound, template = prepared
            self._commit([_Pending(None, row, bound, template, None, None, None)], False, retry_busy=False)
            self.stats["inline"] += 1
            done = True
            self._inline_unchecked += 1
            if self._inline_unchecked >= INLINE_CHECKPOINT_LOOK_EVERY:
                self._inline_unchecked = 0
                if self._checkpoint_due():
                    self._wal_due = True  # the writer checkpoints it (woken below)
        except Exception as e:  # noqa: BLE001 - the writer retries it, and reports what fails
            log.debug("store %s: an inline commit did not go through (%s); queued for the writer",
                      self.where, _one_line(e))
        finally:
            with self._cond:
                self._inline_done()
        return done

    def write_sync(self, record: Record, *, if_refused: dict[str, Any] | None = None) -> None:
        """``write`` for callers without an event loop."""
        if self.durability == "async":
            self._enqueue(record, None, if_refused)
            return
        waiter = _Waiter()
        item = self._enqueue(record, waiter, if_refused)
        if not waiter.event.wait(self.commit_timeout) and self._overdue(item, waiter):
            raise self._too_slow()
        waiter.event.wait()
        if waiter.error is not None and waiter.error is not WITHDRAWN:
            raise waiter.error

    def _too_slow(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"the store at {self.where} did not commit within {self.commit_timeout:g} s; "
            f"the record is kept and will be written when it can"
        )

    def _overdue(self, item: _Pending, waiter: _Waiter) -> bool:
        """``item``'s caller has waited ``commit_timeout``. True when its call is refused now (the
        record was still queued: it says so from now on); False when the verdict of the attempt
        it is in decides (the writer is asked to stop that attempt), or is already on its way."""
        with self._cond:
            item.overdue = True
            if not self._rewrite_if_queued(item, waiter, "timeout", item.if_refused):
                return False
            self._stuck()  # the writer is stuck in an attempt
            return True

    def _stuck(self) -> None:
        """(Under ``_cond``.) No commit came within ``commit_timeout``: refuse calls up front until
        one goes through."""
        if self._healthy:
            self._healthy = False
            self._last_error = f"no commit for over {self.commit_timeout:g} s"
            log.error("store %s: cannot write (%s); refusing calls until it recovers", self.where, self._last_error)

    def _left(self, item: _Pending, waiter: _Waiter) -> bool:
        """``item``'s caller's client has left. True when the record was still queued: it says
        ``if_gone`` from now on; False when the verdict of the attempt it is in decides (the writer
        is asked to stop that attempt; if it is not committed, it will say ``if_gone``)."""
        with self._cond:
            item.left = True
            return self._rewrite_if_queued(item, waiter, "gone", item.if_gone)

    def _rewrite_if_queued(self, item: _Pending, waiter: _Waiter, why: str, fields: dict[str, Any] | None) -> bool:
        """(``self._cond`` held.) Rewrite ``item`` with ``fields`` and release its caller when it is
        still queued (True); when it is in an attempt, ask the writer to stop it for ``why`` and let
        its verdict decide (False); False too when its caller is already answered."""
        if item.waiter is not waiter or item.done:
            return False
        if item.inflight or item.in_doubt:
            self._request_abort(why)
            return False
        item.waiter = None
        self._rewrite(item, fields)
        return True

    def _request_abort(self, why: str) -> None:
        """(Under the lock.) Ask the database to stop the commit attempt under way: PostgreSQL is
        sent a cancel request (from a thread of its own: it may wait for the server); a SQLite
        attempt stops waiting for another process's lock. Best effort: the attempt's verdict (its
        commit's success or error) decides what happens to its records, whichever comes first."""
        if not self._attempting or self._abort == "timeout":
            return
        first, self._abort = self._abort is None, why
        self.stats["aborts"] += first
        raw = self._raw
        if first and self._postgres and self._sent and raw is not None:
            threading.Thread(target=_cancel, args=(raw.driver_connection,), name="agentgate-store-cancel",
                             daemon=True).start()

    def store_policy_version(self, version: str, text: str) -> None:
        """Keep a policy version's text, once per version."""
        if version in self._policy_versions:
            return
        try:
            self._insert_policy_versions({version: text})
        except SQLAlchemyError as e:
            if _transient(e):
                raise StoreUnavailable(f"the store at {self.where} cannot write: {_one_line(e)}") from None
            raise StoreError(f"policy version {version} cannot be stored: {_one_line(e)}") from None

    def keep_policy_version(self, version: str, text: str) -> None:
        """Have a policy version's text stored before the records it decides: the writer stores
        it now, ahead of its next commit, and while the store cannot write it keeps it, with every other
        version that decided a call meanwhile, until it can. Returns at once (a call being decided
        never waits for the database here)."""
        with self._cond:
            if version not in self._policy_versions and version not in self._owed_versions:
                self._owed_versions[version] = text
                self._cond.notify()  # stored now, calls or not (a version put in force with none)

    def _insert_policy_versions(self, texts: dict[str, str]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        with self.engine.begin() as conn:
            for version, text_ in texts.items():
                conn.execute(self._upsert(PolicyVersion).values(
                    version=version, text=chain.clean_str(text_), first_seen=now
                ).on_conflict_do_nothing(index_elements=["version"]))
        self._policy_versions.update(texts)

    def _store_owed_versions(self, texts: dict[str, str]) -> None:
        """(Writer thread, before a commit.) Store the texts ``keep_policy_version`` left; a
        database that cannot be written raises (the commit waits, the texts stay owed). A text the
        database refuses is logged and given up, not let to hold up the records."""
        try:
            self._insert_policy_versions(texts)
        except SQLAlchemyError as e:
            if _transient(e):
                raise
            log.error("store %s: the text of policy versions %s cannot be stored: %s", self.where,
                      ", ".join(texts), _one_line(e))
        else:
            if len(texts) > 1 or not self._healthy:
                log.info("store %s: stored the text of policy versions %s", self.where, ", ".join(texts))
        with self._cond:
            for version in texts:
                self._owed_versions.pop(version, None)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), checkpoint the chain head, stop."""
        thread = self._thread
        if thread is not None and not self._closing.is_set():
            with self._cond:
                self._drain_deadline = time.monotonic() + timeout
                self._closing.set()
                self._cond.notify()
            thread.join(timeout + MAX_BACKOFF + 5)
            st = self.stats
            log.info("store %s: %d records written in %d commits (%d of them made inline), %d failed attempts"
                     "%s", self.where, st["records"], st["commits"], st["inline"], st["failures"],
                     f"; {st['delayed']} waits of a group delay" if st["delayed"] else "")
        if thread is None or not thread.is_alive():
            with self._shm_lock:
                if self._shm_fd is not None:
                    os.close(self._shm_fd)
                    self._shm_fd = None
            self._drop_async()
            for name in ("_raw", "_wal_conn"):
                raw = getattr(self, name)
                setattr(self, name, None)
                try:
                    if raw is not None:
                        raw.close()
                except Exception:  # noqa: BLE001 - closing after the database went away
                    pass
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:  # threads still waiting on a database that hangs are left to it
            executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()

    def _run(self) -> None:
        try:
            self._write_until_closed()
        except BaseException as e:  # a bug: say so, and refuse writes rather than lose them silently
            log.exception("store %s: the writer stopped", self.where)
            self._failed(RuntimeError(f"the writer stopped: {e!r}"))

    def _write_until_closed(self) -> None:
        failures = 0
        next_checkpoint = time.monotonic() + self.checkpoint_every
        flushes = self._wal is not None and self.sqlite_synchronous == "normal"
        flushed, next_flush = 0, None  # commits the WAL's last flush covered; when the next is due
        while True:
            delayed = False
            with self._cond:
                while True:
                    closing = self._closing.is_set()
                    now = time.monotonic()
                    due = self._seq > self._anchored and now >= next_checkpoint
                    if flushes and next_flush is None and self.stats["commits"] > flushed:
                        next_flush = now + SQLITE_FLUSH_EVERY
                    flush = next_flush is not None and now >= next_flush
                    work = self._queue or self._owed_versions or due or closing or flush or self._wal_due
                    if work and self._inline:
                        # a caller is committing inline (``_commit_inline``): it wakes the writer after,
                        # and no caller starts another until the writer has had its turn
                        self._writer_waiting = self._wake_on_commit = True
                        self._cond.wait()
                        self._wake_on_commit = False
                        continue
                    self._writer_waiting = False
                    if work and not delayed and 0 < len(self._queue) < GROUP_DELAY_UNDER and self.group_delay > 0 \
                            and not (closing or self._in_doubt):
                        # more records may come meanwhile (the callers wait for this commit): one commit
                        # for them all. A sleep, not a wait on the condition, which each record would end.
                        delayed = True
                        self.stats["delayed"] += 1
                        self._cond.release()
                        try:
                            time.sleep(self.group_delay)
                        finally:
                            self._cond.acquire()
                        continue
                    if work:
                        break
                    waits = [t - now for t in (next_checkpoint if self._seq > self._anchored else None, next_flush)
                             if t is not None]
                    # a commit made inline meanwhile must wake it if it is to flush or checkpoint after it
                    self._wake_on_commit = (flushes and next_flush is None) or self._seq <= self._anchored
                    self._cond.wait(min(waits) if waits else None)
                    self._wake_on_commit = False
                housekeeping = flush or self._wal_due
                # policy texts owed are stored before the records that name them, none inflight meanwhile
                owed = dict(self._owed_versions) if not housekeeping and not self._in_doubt else None
                if not housekeeping and not self._in_doubt and not owed:
                    batch = list(itertools.islice(self._queue, self._max_batch))
                    for item in batch:
                        item.inflight = True
                    self._attempting, self._abort, self._sent = True, None, False
            if housekeeping:
                if flush:
                    flushed, next_flush = self.stats["commits"], None
                    self._flush_wal()
                self._checkpoint_wal()
                continue
            if self._in_doubt:
                try:
                    self._settle_doubt()
                    failures = 0
                    continue
                except Exception as e:  # noqa: BLE001 - the database cannot be asked yet
                    error: BaseException = e
                    batch, checkpoint, final = [], False, False
            elif owed:
                try:
                    self._store_owed_versions(owed)
                    continue
                except Exception as e:  # noqa: BLE001 - the database cannot be written yet
                    error = e
                    batch, checkpoint, final = [], False, False
            else:
                final = closing and not batch
                checkpoint = (due or final) and self._seq + len(batch) > self._anchored
                if not batch and not checkpoint:
                    with self._cond:
                        self._attempting = False
                    if final:
                        return
                    continue
                try:
                    self._commit(batch, checkpoint)
                    error = None
                except Exception as e:  # noqa: BLE001 - every failure is either retried or reported
                    error = e
                with self._cond:
                    aborted, sent = self._abort, self._sent
                    self._attempting, self._abort, self._sent = False, None, False
                if error is None:
                    if aborted and self._postgres:  # a cancel request sent for it may still land: not on the next
                        self._drop_connection(close=True)
                    failures = 0
                    self._committed(batch, None)
                    self._checkpoint_wal()
                    if checkpoint:
                        next_checkpoint = time.monotonic() + self.checkpoint_every
                    if final:
                        return
                    continue
                if sent and not self._verdict(error):
                    # the connection broke after the commit was sent: it may have gone through
                    with self._cond:
                        self._in_doubt, self._doubt_checkpoint = len(batch), checkpoint
                    log.warning("store %s: the outcome of a commit of %d records is unknown (%s); its callers wait "
                                "until the database says whether it went through", self.where, len(batch), _one_line(error))
                elif batch and not aborted and not _transient(error, self._dbapi):
                    self._commit_one_by_one(batch)
                    continue
                elif aborted == "gone":  # stopped because clients left: not a failure of the store
                    self._withdrawn()
                    continue
                elif aborted == "timeout":
                    error = StoreUnavailable(f"no commit within {self.commit_timeout:g} s: {_one_line(error)}")
            failures += 1
            self.stats["failures"] += 1
            self._failed(error)
            remaining = self._drain_deadline - time.monotonic()
            if closing and remaining <= 0:
                with self._cond:
                    lost = len(self._queue)
                log.error("store %s: closing with %d records not written (%s)", self.where, lost, self._last_error)
                return
            pause = min(0.05 * 2 ** (failures - 1), MAX_BACKOFF)
            if closing:
                time.sleep(min(pause, remaining))
            else:
                self._closing.wait(pause)

    def _flush_wal(self) -> None:
        """SQLite "normal": flush the WAL file, and with it every commit so far, to the device
        (what "full" does at each commit), so that a power loss takes at most the last
        SQLITE_FLUSH_EVERY seconds of records. Off the calls' path: no caller waits for it."""
        wal = self._wal
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:  # no WAL: everything is in the database file, checkpointed and synced
            return
        except OSError as e:
            log.error("store %s: cannot flush %s to the device (%s)", self.where, wal, e.strerror or e)
            return
        try:
            os.fsync(fd)
        except OSError as e:
            log.error("store %s: cannot flush %s to the device (%s)", self.where, wal, e.strerror or e)
        finally:
            os.close(fd)

    def _verdict(self, e: BaseException) -> bool:
        """Did the database say that the attempt failed (so it certainly did not commit)? SQLite
        runs in this process: always. PostgreSQL: when the server reported an ERROR, which aborts
        the transaction; not when the connection broke or the server ended it (FATAL), which can
        happen after the commit is durable."""
        if not self._postgres:
            return True
        if isinstance(e, _Aborted):
            return True
        diag = getattr(e, "diag", None)
        return getattr(e, "sqlstate", None) is not None and getattr(diag, "severity_nonlocalized", None) == "ERROR"

    def _settle_doubt(self) -> None:
        """Find out whether the commit whose outcome is unknown went through: the records it held
        are the next in this writer's chain, so they are there or the chain ends where it did."""
        c = Call.__table__.c
        self._drop_connection(close=True)
        with self.engine.connect() as conn:
            found = conn.execute(select(c.seq, c.hash).where(c.writer_id == self.writer_id, c.seq > self._seq)
                                 .order_by(c.seq.desc()).limit(1)).first()
        n = self._in_doubt
        if found is not None and found.seq != self._seq + n:  # the records stay in doubt: nothing is guessed
            raise StoreError(f"the chain of writer {self.writer_id} in the store has records this writer did not expect "
                             f"(seq {found.seq}, expected {self._seq + n}): is another process using its id?")
        with self._cond:
            items = list(itertools.islice(self._queue, n))
            self._in_doubt = 0
            for item in items:
                item.in_doubt = False
        if found is not None:
            self._seq, self._head = found.seq, found.hash
            if self._doubt_checkpoint:
                self._anchored = found.seq
            log.warning("store %s: the commit of %d records whose outcome was unknown had gone through", self.where, n)
            self._committed(items, None)
            return
        log.warning("store %s: the commit of %d records whose outcome was unknown had not gone through; writing them again",
                    self.where, n)
        self._withdrawn(refuse_overdue=True)

    def _withdrawn(self, refuse_overdue: bool = False) -> None:
        """After an attempt that was stopped (or did not go through) while its records' callers
        still wait: records whose clients left say so and are let go; with ``refuse_overdue``,
        records whose callers waited too long are refused. The others are written again."""
        outcomes = []
        with self._cond:
            for item in self._queue:
                item.inflight = False
                if item.waiter is not None and (item.left or (refuse_overdue and item.overdue)):
                    outcomes.append(self._not_now(item, self._too_slow()))
        _resolve([o for o in outcomes if o is not None])

    def _commit(self, batch: list[_Pending], checkpoint: bool, retry_busy: bool = True) -> None:
        """One transaction: the batch's calls, their sessions, and the head checkpoint if due."""
        calls, sessions, head, seq, prev = self._chained(batch, checkpoint)
        self._transaction(calls, sessions, head, retry_busy)
        self._committed_as(seq, prev, checkpoint, len(calls))

    def _committed_as(self, seq: int, prev: str, checkpoint: bool, records: int) -> None:
        """A commit went through: the chain's head is now ``seq`` and ``prev``."""
        self._seq, self._head = seq, prev
        if checkpoint:
            self._anchored = seq
            if seq:
                mac = None if self._key is None else chain.record_mac(self._key, writer_id=self.writer_id, seq=seq,
                                                                      record_hash=prev)
                witness_log.info(chain.Witness(self.writer_id, seq, prev, mac, "").line())
        self.stats["commits"] += 1
        self.stats["records"] += records

    def _chained(self, batch: list[_Pending], checkpoint: bool) -> tuple[list, list, Any, int, str]:
        """The statements' values of a commit of ``batch`` after the chain's head (and of the head
        checkpoint, if ``checkpoint``), with the seq and hash the head has once it is committed."""
        seq, prev = self._seq, self._head
        calls = []
        for item in batch:
            seq += 1
            if item.template is not None:
                h = chained_hash(item.template, self.writer_id, seq, prev)
            else:
                h = chain.record_hash({**item.row, "writer_id": self.writer_id, "seq": seq, "prev_hash": prev})
            mac = None if self._key is None else chain.record_mac(self._key, writer_id=self.writer_id, seq=seq, record_hash=h)
            calls.append(self._insert_calls.params(
                {**item.bound, "writer_id": self.writer_id, "seq": seq, "prev_hash": prev, "hash": h, "mac": mac}))
            prev = h
        sessions = [self._upsert_sessions.params(self._upsert_sessions.bind(r))
                    for r in self._session_rows([item.row for item in batch])]
        head = None
        if checkpoint:
            now = dt.datetime.now(dt.timezone.utc)
            mac = None
            if self._key is not None:
                mac = chain.checkpoint_mac(self._key, writer_id=self.writer_id, seq=seq, head_hash=prev, time=now, kind="head")
            head = self._insert_checkpoint.params(self._insert_checkpoint.bind(
                {"writer_id": self.writer_id, "seq": seq, "head_hash": prev, "time": now, "kind": "head", "hmac": mac}))
        return calls, sessions, head, seq, prev

    def _connection(self) -> Any:
        """The writer's kept connection; a new one when PostgreSQL closed the kept one while it was
        idle (a restart, an idle timeout): found without a round trip, before anything is sent."""
        raw = self._raw
        if raw is not None and self._postgres:
            if _ended(raw.driver_connection):
                self._drop_connection(close=True)
                raw = None
        if raw is None:
            raw = self._raw = self.engine.raw_connection()
            if not self._postgres:
                self._busy_ms = None  # not known: _transaction sets it before each attempt
                if self._wal is not None:
                    raw.driver_connection.execute("PRAGMA wal_autocheckpoint = 0")  # _checkpoint_wal does it
        return raw

    def _sqlite_busy_timeout(self, raw: Any, ms: int) -> None:
        """SQLite: how long the writer's connection waits for another process's write lock: a
        slice of SQLITE_BUSY_TIMEOUT for the writer thread, which looks between slices whether to
        stop; 0 for a commit made inline, which must not hold the event loop. Set only when it
        changes (a PRAGMA costs about as much as a small statement)."""
        if self._busy_ms != ms:
            raw.driver_connection.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_ms = ms

    def _wal_frames(self) -> int | None:
        """How many frames the WAL holds now (mxFrame of the WAL index's header); None when the
        -shm file cannot be read as SQLite documents it."""
        if self._wal is None:
            return None
        with self._shm_lock:
            fd = self._shm_fd
            try:
                if fd is None or os.fstat(fd).st_nlink == 0:  # not yet open, or SQLite made a new one
                    if fd is not None:
                        self._shm_fd = None
                        os.close(fd)
                    fd = self._shm_fd = os.open(self._wal[:-len("-wal")] + "-shm", os.O_RDONLY)
                head = os.pread(fd, 20, 0)
            except OSError:
                return None
        if len(head) < 20 or struct.unpack_from("=I", head, 0)[0] != WAL_INDEX_VERSION:
            return None
        return struct.unpack_from("=I", head, 16)[0]

    def _checkpoint_due(self) -> str | None:
        """The checkpoint the WAL needs now: RESTART once it holds WAL_CHECKPOINT_FRAMES; TRUNCATE,
        which also empties the file, once the file passes WAL_CHECKPOINT_BYTES when its frames
        cannot be counted (only its size then tells); None when neither."""
        frames = self._wal_frames()
        if frames is not None:
            return "RESTART" if frames >= WAL_CHECKPOINT_FRAMES else None
        try:
            return "TRUNCATE" if self._wal is not None and os.stat(self._wal).st_size >= WAL_CHECKPOINT_BYTES else None
        except OSError:
            return None

    def _checkpoint_wal(self) -> None:
        """(Writer thread.) SQLite: copy the WAL into the database when ``_checkpoint_due`` says
        so, on a connection of its own, so that the next commit starts the WAL file over. While
        that runs, a commit made inline finds the database busy and goes to the writer's queue
        instead; a commit or a reader (another process's) still under way makes it wait
        WAL_CHECKPOINT_WAIT at most, and what it could not do is done after the next commit."""
        self._wal_due = False
        mode = self._checkpoint_due()
        if mode is None:
            return
        try:
            conn = self._wal_conn
            if conn is None:
                conn = self._wal_conn = self.engine.raw_connection()
                conn.driver_connection.execute(f"PRAGMA busy_timeout = {int(WAL_CHECKPOINT_WAIT * 1000)}")
            busy = conn.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
            if busy:
                log.debug("store %s: the WAL checkpoint waited too long for readers or a commit; later", self.where)
        except Exception as e:  # noqa: BLE001 - tried again after the next commit
            log.warning("store %s: cannot checkpoint the WAL (%s)", self.where, _one_line(e))
            conn, self._wal_conn = self._wal_conn, None
            _invalidate(conn)

    def _same_file(self) -> None:
        """The SQLite store's file is still the one the writer opened: one deleted or moved away (its
        records would go on into the old file, lost or elsewhere) or replaced (a restored copy) is
        an error of every commit, so that calls are refused, until the gateway is restarted."""
        self._file_looked = time.monotonic()
        if self._file_lost is None and _file_identity(self._file) != self._file_id:
            self._file_lost = (f"the store's file {self._file} is no longer the file the gateway opened (it was "
                               "deleted, moved away or replaced while the gateway ran, and its records would go "
                               "elsewhere): restart the gateway to write to the file the path names")
            log.error("store %s: %s", self.where, self._file_lost)
        if self._file_lost is not None:
            raise self._dbapi.OperationalError(self._file_lost)

    def _transaction(self, calls: list, sessions: list, head: Any, retry_busy: bool = True) -> None:
        raw = self._connection()
        try:
            with self._cond:
                if self._abort is not None:
                    raise _Aborted(f"stopped before it was sent ({self._abort})")
                self._sent = True
            if self._postgres:
                # One statement, in autocommit: all or none, and one message to the server (a
                # pipeline sends each statement as it is queued, and the server wakes for each).
                pg = raw.driver_connection
                if not pg.autocommit:
                    pg.autocommit = True
                sql, params = self._one_statement(calls, sessions, head)
                with self._dbapi.RawCursor(pg) as cur:
                    cur.execute(sql, params)
                return
            if self._file_id is not None and (self._file_lost is not None
                                              or time.monotonic() - self._file_looked >= FILE_LOOK_EVERY):
                self._same_file()
            # SQLite waits for another process's write lock in slices, so that the attempt can be
            # stopped between them (``_request_abort``); SQLITE_BUSY_TIMEOUT in all.
            self._sqlite_busy_timeout(raw, int(SQLITE_BUSY_SLICE * 1000) if retry_busy else 0)
            deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
            while True:
                cur = raw.cursor()
                try:
                    self._statements(cur, calls, sessions, head)
                    raw.commit()
                    return
                except self._dbapi.OperationalError as e:
                    if not (retry_busy and _busy(e)) or self._abort is not None or time.monotonic() >= deadline:
                        raise
                    raw.rollback()
                finally:
                    cur.close()
        except BaseException:
            self._drop_connection(close=self._postgres)
            raise

    def _statements(self, cur: Any, calls: list, sessions: list, head: Any) -> None:
        if calls:
            cur.executemany(self._insert_calls.sql, calls)
        if sessions:
            cur.executemany(self._upsert_sessions.sql, sessions)
        if head is not None:
            cur.execute(self._insert_checkpoint.sql, head)

    def _drop_connection(self, close: bool) -> None:
        """Roll the writer's connection back after a failure; drop it when asked or when that fails."""
        raw = self._raw
        if raw is None:
            return
        if not close:
            try:
                raw.rollback()
                return
            except Exception:  # noqa: BLE001 - a broken connection: replace it
                pass
        self._raw = None
        _invalidate(raw)

    def _session_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id: dict[str, dict[str, Any]] = {}
        for r in rows:
            sid = r["session_id"]
            if not sid:
                continue
            s = by_id.get(sid)
            if s is None:
                by_id[sid] = {
                    "id": sid, "principal": r["principal"], "issuer": r["issuer"], "on_behalf_of": r["on_behalf_of"],
                    "on_behalf_of_varies": False, "role": r["role"], "writer_id": self.writer_id,
                    "started": r["time"], "last_seen": r["time"], "calls": 1,
                }
            else:
                s["calls"] += 1
                s["started"] = min(s["started"], r["time"])
                s["last_seen"] = max(s["last_seen"], r["time"])
                for k in ("principal", "issuer", "role"):
                    s[k] = s[k] or r[k]
                if r["on_behalf_of"] != s["on_behalf_of"]:  # calls made for several parties (or for one and none)
                    s["on_behalf_of"], s["on_behalf_of_varies"] = None, True
        return list(by_id.values())

    def _session_upsert(self) -> Any:
        t = AgentSession.__table__
        stmt = self._upsert(t)
        x = stmt.excluded
        # one party only while every call so far, and these, were made for the same one (or none)
        one_party = and_(t.c.on_behalf_of.is_not_distinct_from(x.on_behalf_of), t.c.on_behalf_of_varies == false(),
                         x.on_behalf_of_varies == false())
        return stmt.on_conflict_do_update(
            index_elements=[t.c.id],
            set_={
                "calls": t.c.calls + x.calls,
                "last_seen": case((x.last_seen > t.c.last_seen, x.last_seen), else_=t.c.last_seen),
                "started": case((x.started < t.c.started, x.started), else_=t.c.started),
                "principal": func.coalesce(t.c.principal, x.principal),
                "issuer": func.coalesce(t.c.issuer, x.issuer),
                "on_behalf_of": case((one_party, t.c.on_behalf_of), else_=null()),
                "on_behalf_of_varies": case((one_party, false()), else_=true()),
                "role": func.coalesce(t.c.role, x.role),
            },
        )

    def _commit_one_by_one(self, batch: list[_Pending]) -> None:
        """A batch the database refused as a whole: commit what it takes, report what it does not."""
        for item in batch:
            with self._cond:
                self._sent = False
            try:
                self._commit([item], False)
            except Exception as e:  # noqa: BLE001
                if _transient(e, self._dbapi):
                    if self._sent and not self._verdict(e):
                        with self._cond:
                            self._in_doubt, self._doubt_checkpoint = 1, False
                    self._failed(e)
                    return
                error = StoreError(f"record {item.row['id']} cannot be stored: {_one_line(e)}")
                log.error("store %s: %s", self.where, error)
                self._committed([item], error)
            else:
                self._committed([item], None)

    def _committed(self, batch: list[_Pending], error: BaseException | None) -> None:
        """The batch at the head of the queue is done: committed, or (``error``) refused by the database."""
        outcomes = []
        with self._cond:
            for item in batch:
                popped = self._queue.popleft()
                if popped is not item:  # a bug: say so rather than tell callers the wrong verdicts
                    raise RuntimeError(f"the store's queue changed under its writer (record {item.row['id']})")
                item.done, item.inflight = error is None, False
                if item.waiter is not None:
                    outcomes.append((item.waiter, error))
                    item.waiter = None
            recovered = not self._healthy
            self._healthy = True
            self._last_error = ""
        if recovered:
            log.warning("store %s: writing again", self.where)
        _resolve(outcomes)

    def _failed(self, e: BaseException) -> None:
        """A commit attempt failed: the store cannot write. Callers still waiting are refused (their
        records say so), except those whose records are in a commit whose outcome is unknown."""
        message = _one_line(e)
        unavailable = None
        outcomes = []
        with self._cond:
            was_healthy = self._healthy
            self._healthy = False
            self._last_error = message
            for i, item in enumerate(self._queue):
                item.inflight = False
                if i < self._in_doubt:
                    item.in_doubt = True
                elif item.waiter is not None:
                    unavailable = unavailable or self._unavailable()
                    outcomes.append(self._not_now(item, unavailable))
        if was_healthy:
            log.error("store %s: cannot write (%s); refusing calls until it recovers", self.where, message)
        _resolve([o for o in outcomes if o is not None])

    # -- reading -------------------------------------------------------------------------------

    def calls(
        self,
        *,
        principal: str | None = None,
        action: str | None = None,
        decision: str | None = None,
        since: dt.datetime | float | str | None = None,
        until: dt.datetime | float | str | None = None,
        session_id: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
        on_behalf_of: str | None = None,
        outcome: str | None = None,
        unreadable: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Calls matching every filter given; ``action`` may hold ``*`` wildcards (``s3:*``) and is
        compared without regard to case, as IAM and the policies compare actions. Each value is read
        as ``verify`` reads it (``readable``): a call holding one that cannot be read is named in
        ``unreadable`` and left out (with no list, ``Unreadable`` is raised)."""
        self._check_schema()
        c = Call.__table__.c
        form = StoredForm(Call.__table__, self.engine.dialect, forms=False)
        q = form.select()
        if principal:
            q = q.where(c.principal == principal)
        if on_behalf_of:
            q = q.where(c.on_behalf_of == on_behalf_of)
        if outcome:
            q = q.where(c.outcome == outcome)
        if action:
            pattern = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
            q = q.where(c.action.ilike(pattern, escape="\\"))
        if decision:
            q = q.where(c.decision == decision)
            if decision != "allow":  # the index on decision holds only these: the database must see that it serves
                q = q.where(text(NOT_ALLOWED))
        if session_id:
            q = q.where(c.session_id == session_id)
        if (t := _as_datetime(since)) is not None:
            q = q.where(c.time >= t)
        if (t := _as_datetime(until)) is not None:
            q = q.where(c.time < t)
        q = q.order_by(c.time.desc(), c.id.desc()) if newest_first else q.order_by(c.time, c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._reading() as conn:
            return [call_dict(r) for r in readable(conn.execute(q), form, _record, unreadable)]

    def call(self, call_id: str, unreadable: list[str] | None = None) -> dict[str, Any] | None:
        """One call; where a value of it cannot be read, it is named in ``unreadable`` and the call
        comes without that column (with no list, ``Unreadable`` is raised)."""
        self._check_schema()
        form = StoredForm(Call.__table__, self.engine.dialect, forms=False)
        with self._reading() as conn:
            rows = conn.execute(form.select().where(Call.__table__.c.id == call_id)).all()
            found = list(readable(rows, form, _record, unreadable, partial=True))
        return call_dict(found[0]) if found else None

    def sessions(self, limit: int | None = 100, unreadable: list[str] | None = None) -> list[dict[str, Any]]:
        """The sessions most recently active first; one holding a value that cannot be read is named
        in ``unreadable`` and left out (with no list, ``Unreadable`` is raised)."""
        self._check_schema()
        t = AgentSession.__table__
        form = StoredForm(t, self.engine.dialect, forms=False)
        q = form.select().order_by(t.c.last_seen.desc(), t.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._reading() as conn:
            return [session_dict(r) for r in readable(conn.execute(q), form, _session, unreadable)]

    def session(self, session_id: str, unreadable: list[str] | None = None) -> dict[str, Any] | None:
        """One session; where a value of it cannot be read, it comes without that column, named in
        ``unreadable``."""
        self._check_schema()
        t = AgentSession.__table__
        form = StoredForm(t, self.engine.dialect, forms=False)
        with self._reading() as conn:
            rows = conn.execute(form.select().where(t.c.id == session_id)).all()
            found = list(readable(rows, form, _session, unreadable, partial=True))
        return session_dict(found[0]) if found else None

    def session_parties(self, session_id: str) -> list[str | None]:
        """Whom the calls of a session were made for (their on_behalf_of), each once, None for
        calls made for no one, in the order of their first call."""
        c = Call.__table__.c
        q = (select(c.on_behalf_of).where(c.session_id == session_id).group_by(c.on_behalf_of)
             .order_by(func.min(c.time)))
        with self._reading() as conn:
            return [r[0] for r in conn.execute(q)]

    def end_console_session(self, nonce: str, until: float) -> None:
        """Keep a console session's sign-out (its nonce, until it would have expired), for every
        console sharing the store to refuse it; sign-outs past their expiry are dropped meanwhile."""
        t = ConsoleSignout.__table__
        now = dt.datetime.now(dt.timezone.utc)
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(ConsoleSignout).where(t.c.until <= now))
                conn.execute(self._upsert(t).values(
                    nonce=nonce, until=dt.datetime.fromtimestamp(until, dt.timezone.utc)
                ).on_conflict_do_nothing(index_elements=[t.c.nonce]))
        except SQLAlchemyError as e:
            raise StoreUnavailable(f"cannot write to the store at {self.where}: {_one_line(e)}") from None

    def console_session_ended(self, nonce: str) -> bool:
        """Whether a console session was signed out (through any console sharing the store)."""
        t = ConsoleSignout.__table__
        with self._reading() as conn:
            return conn.execute(select(t.c.nonce).where(t.c.nonce == nonce)).first() is not None

    def policy_version(self, version: str) -> str | None:
        self._check_schema()
        with self._reading() as conn:
            return conn.execute(select(PolicyVersion.text).where(PolicyVersion.version == version)).scalar()

    def policy_versions(self, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                        named: str | None = None, unreadable: list[str] | None = None) -> list[dict[str, Any]]:
        """The policy versions the store keeps (those that decided a call), oldest first: each one's
        ``version``, ``first_seen``, ``text``, ``holds`` (whether the text still hashes to the
        version, as the gateway computed it when it loaded the files) and ``calls`` (how many calls
        in [since, until) it decided); then the versions calls name whose text the store does not
        hold (deleted), with ``missing`` true, ``text`` and ``first_seen`` None and ``holds`` false.
        With ``since`` or ``until``, only the versions that decided a call in that period; ``named``:
        the versions whose name starts with it. A version whose first_seen or text cannot be read is
        named in ``unreadable`` and given without it (with no list, ``Unreadable`` is raised)."""
        self._check_schema()
        c, v = Call.__table__.c, PolicyVersion.__table__.c
        counted = select(c.policy_version, func.count()).where(c.policy_version.is_not(None))
        if since is not None:
            counted = counted.where(c.time >= since)
        if until is not None:
            counted = counted.where(c.time < until)
        form = StoredForm(PolicyVersion.__table__, self.engine.dialect, ("version", "text", "first_seen"), forms=False)
        q = form.select().order_by(v.first_seen, v.version)
        if named is not None:
            q = q.where(v.version.startswith(named, autoescape=True))
        with self._reading() as conn:
            calls = dict(conn.execute(counted.group_by(c.policy_version)).all())
            rows = list(readable(conn.execute(q), form, _policy_version, unreadable, partial=True))
        found = [{"version": r["version"], "first_seen": iso(r.get("first_seen")), "calls": calls.get(r["version"], 0),
                  "holds": isinstance(r.get("text"), str) and policy_text_version(r["text"]) == r["version"],
                  "text": r.get("text"), "missing": False}
                 for r in rows if "version" in r and ((since is None and until is None) or r["version"] in calls)]
        held = {r.get("version") for r in rows}
        return found + [{"version": v, "first_seen": None, "calls": n, "holds": False, "text": None, "missing": True}
                        for v, n in sorted(calls.items(), key=lambda vn: str(vn[0]))
                        if v not in held and (named is None or str(v).startswith(named))]


# ---------------------------------------------------------------------------------------------
# Verification and pruning


def _kind(value: Any) -> str:
    """What a stored value is, in words (for one of the wrong type)."""
    return {str: "text", bytes: "bytes (a BLOB)", int: "an integer", float: "a real number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


_WRITES = {str: "text", int: "an integer", float: "a number", bool: "a boolean", dt.datetime: "a time",
           dict: "JSON text"}
# the times a datetime can hold: PostgreSQL holds others (infinity, years before 1), which its
# driver refuses to read, and with them every row fetched beside them
_FIRST, _LAST = dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)


class StoredForm:
    """A table's rows read as the database holds them, then each value as the store reads it, one
    column at a time, for ``verify`` and ``prune``.

    The chains hash what a row reads as, while the queries that pick a period (``calls``, the
    exports and the report), order records or choose what ``prune`` deletes compare what is
    stored. On SQLite a time is text, and its reading (``fromisoformat``) accepts forms the store
    never writes: '2025-06-05T10:00:00' or a control character in place of the space reads as the
    same time, so the hash holds, while the text sorts elsewhere (before the day's other records,
    or after them) and the record falls out of its period. So a time must be stored exactly as the
    store writes it, and any value of another type than its column's (a BLOB where text belongs,
    text that is no time, JSON that does not parse), which would stop the reading of the whole
    table with a traceback, is named with its column instead. On PostgreSQL the columns are
    typed: a time is compared as a time, and one its driver cannot read (infinity, a year before
    1) is named too, not fetched.

    ``forms`` False: only whether each value can be read, for the commands that list, show and
    export rows (``readable``), which a time stored in another form the store reads does not stop;
    the comparison with the form the store writes is left out of their reading."""

    def __init__(self, table: Any, dialect: Any, names: Iterable[str] | None = None, *, forms: bool = True) -> None:
        self.table = table
        self.columns: list[Any] = []
        self._names: list[str] = []
        # Columns the driver hands as they read (text, integers, numbers), by type: their values'
        # types are looked at together, and one by one only to name one that is wrong.
        plain: dict[type, list[tuple[int, str]]] = {}
        # The others: (where, name, what it reads as, the Python type the driver hands for what
        # the store writes (None: any, the driver has read it), the result and bind processors,
        # where its range flag is)
        self._processed: list[tuple[int, str, type, type | None, Any, Any, int | None]] = []
        flags: list[Any] = []
        columns = list(table.columns) if names is None else [table.c[n] for n in names]
        for i, c in enumerate(columns):
            kind = dict if isinstance(c.type, JSON) else getattr(c.type, "impl_instance", c.type).python_type
            flag, column = None, c
            if dialect.name == "postgresql" and kind is dt.datetime:  # out of range: read as NULL, and flagged
                in_range = and_(c >= literal(_FIRST, DateTime()), c <= literal(_LAST, DateTime()))
                column = case((in_range, c), else_=None)
                flag = len(columns) + len(flags)
                flags.append(or_(c.is_(None), in_range))
            self.columns.append(type_coerce(column, NullType()).label(c.name))
            self._names.append(c.name)
            if kind in (str, int, float):
                plain.setdefault(kind, []).append((i, c.name))
                continue
            impl = c.type.dialect_impl(dialect)
            read = impl.result_processor(dialect, None)
            bind = impl.bind_processor(dialect) if kind in (dt.datetime, bool) else None
            if kind is dt.datetime:
                stored: type | None = type(bind(_LAST.replace(tzinfo=dt.timezone.utc)) if bind else _LAST)
            elif kind is bool:
                stored = type(bind(True)) if bind else bool
            else:
                stored = str if read is not None else None
            self._processed.append((i, c.name, kind, stored, read, bind if forms else None, flag))
        self.columns += [type_coerce(f, NullType()).label(f"in_range_{i}") for i, f in enumerate(flags)]
        allowed = {str: {str, type(None)}, int: {int, type(None)}, float: {float, int, type(None)}}
        self._plain = [(operator.itemgetter(*(i for i, _ in group)) if len(group) > 1
                        else (lambda raw, at=group[0][0]: (raw[at],)), allowed[kind], kind, group)
                       for kind, group in plain.items()]

    def select(self) -> Any:
        return select(*self.columns)

    def read(self, raw: Any) -> tuple[dict[str, Any], list[str], set[str]]:
        """(The row as the store reads it, what is wrong with how its values are stored, the
        columns whose values cannot be read at all: those are left as stored)."""
        row = dict(zip(self._names, raw))
        problems: list[str] = []
        unread: set[str] = set()
        for values, allowed, kind, group in self._plain:
            if not allowed.issuperset(map(type, values(raw))):
                for i, name in group:
                    if type(raw[i]) not in allowed:
                        problems.append(f"column {name} cannot be read: it holds {_kind(raw[i])} where the store "
                                        f"writes {_WRITES[kind]}")
                        unread.add(name)
        for i, name, kind, stored, read, bind, flag in self._processed:
            value = held = raw[i]
            if value is None:
                if flag is not None and raw[flag] is False:
                    problems.append(f"column {name} cannot be read: it holds a time outside the years 1 to 9999 "
                                    "(infinity?), which the store never writes")
                    unread.add(name)
                continue
            if stored is not None and type(value) is not stored:
                problems.append(f"column {name} cannot be read: it holds {_kind(value)} where the store writes "
                                f"{_WRITES[kind]}")
                unread.add(name)
                continue
            if read is not None:
                try:
                    value = row[name] = read(value)
                except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
                    problems.append(f"column {name} cannot be read: {e}")
                    unread.add(name)
                    continue
            if bind is not None and (written := bind(value)) != held:
                problems.append(f"column {name} is stored as {held!r}, not as the store writes "
                                + ("that time" if kind is dt.datetime else "that value") + f" ({written!r})"
                                + (": the chain covers the time it reads as, but periods, ordering and prune "
                                   "compare what is stored" if kind is dt.datetime else ""))
        return row, problems, unread


# what a record needs to be placed in its chain, and its MAC checked
_CHAIN_COLUMNS = frozenset({"writer_id", "seq", "prev_hash", "hash", "mac"})
_EVENT_CHAIN_COLUMNS = frozenset({"seq", "prev_hash", "hash", "mac", "approval_id", "event"})


def _record(row: dict[str, Any]) -> str:
    return f"call {row['id']} (writer {row['writer_id']}, seq {row['seq']})"


def _session(row: dict[str, Any]) -> str:
    return f"session {row['id']}"


def _approval(row: dict[str, Any]) -> str:
    return f"approval {row['id']} ({row['status']})"


def _policy_version(row: dict[str, Any]) -> str:
    return f"policy version {row['version']}"


def _checkpoint(row: dict[str, Any]) -> str:
    return f"checkpoint #{row['id']} ({row['kind']}, writer {row['writer_id']}, seq {row['seq']})"


def readable(rows: Iterable[Any], form: StoredForm, name: Callable[[dict[str, Any]], str],
             unreadable: list[str] | None, *, partial: bool = False) -> Iterator[dict[str, Any]]:
    """The ``rows`` fetched with ``form.select()``, each as the store reads it (``StoredForm.read``),
    for the commands that list, show and export records. A row holding a value that cannot be read
    stopped them with a traceback (the driver's or SQLAlchemy's reading of it raised), and with it
    every row beside it; it is named in ``unreadable`` instead, by ``name`` and with each column's
    problem as ``verify`` says them, and left out (``partial``: given without those columns, for
    the commands that show one record). With no list it raises ``Unreadable``, so that no reader
    passes over a record without saying so."""
    named_already = {line.split(": ", 1)[0] for line in unreadable or ()}  # a row read twice is named once
    for raw in rows:
        row, problems, unread = form.read(raw)
        if unread:
            named = name(row)
            line = f"{named}: " + "; ".join(problems)
            if unreadable is None:
                raise Unreadable(f"{line} (`agentgate verify` names every value that cannot be read)")
            if named not in named_already:
                named_already.add(named)
                unreadable.append(line)
            if not partial:
                continue
            row = {k: v for k, v in row.items() if k not in unread}
        yield row


def _unplaceable(row: dict[str, Any], stored: list[str], unread: set[str]) -> str | None:
    """(A row as ``StoredForm.read`` gave it.) The problem line of a record whose chain columns
    cannot be read, so that it cannot be placed in its chain (what is missing there is said too);
    None for one that can be fed to its ``ChainCheck``."""
    return f"{_record(row)}: " + "; ".join(stored) if unread & _CHAIN_COLUMNS else None


def policy_text_version(text: str) -> str:
    """The version of a policy text, as ``core.policy.PolicySet`` names the version it loaded:
    the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _open_for_reading(url: str, chain_key: bytes | None = None) -> Store:
    store = Store(url, chain_key=chain_key)
    try:
        store._check_schema()
    except BaseException:
        store.engine.dispose()
        raise
    return store


def _checkpoints(conn: Any) -> tuple[dict[str, list[CheckpointInfo]], list[str]]:
    """The checkpoints by writer, and what is wrong with how any of them is stored (one that cannot
    be read is left out)."""
    by_writer: dict[str, list[CheckpointInfo]] = {}
    problems: list[str] = []
    form = StoredForm(Checkpoint.__table__, conn.dialect)
    for r in conn.execute(form.select().order_by(Checkpoint.writer_id, Checkpoint.seq, Checkpoint.id)):
        row, stored, unread = form.read(r)
        if stored:
            problems.append(f"{_checkpoint(row)}: " + "; ".join(stored))
        if not unread:
            cp = CheckpointInfo.from_row(row)
            by_writer.setdefault(cp.writer_id, []).append(cp)
    return by_writer, problems


def verify(url: str, chain_key: bytes | None = None, witnesses: Iterable[chain.Witness] = ()) -> VerifyResult:
    """Check every writer's chain and checkpoints in the store at ``url``, and hold it to the chain
    heads ``witnesses`` saw (``chain.Witness``: kept outside the store, they show the newest records
    or approval events deleted together with every checkpoint after them). Every value is read as
    stored and must be what the store writes (``StoredForm``): one that cannot be read names its
    record, and the rest is checked. Each policy version the records name must have its text,
    unchanged, and each session must name whom its calls name."""
    store = _open_for_reading(url)
    result = VerifyResult()
    heads: dict[str, dict[int, list[chain.Witness]]] = {}
    for w in witnesses:
        if chain_key is not None and not w.genuine(chain_key):
            result.notes.append(f"{w.where}: ignored: its MAC does not verify with the chain key (no gateway "
                                f"holding the key wrote this head)")
            continue
        heads.setdefault(w.chain, {}).setdefault(w.seq, []).append(w)
        result.witnesses += 1
    try:
        with store._snapshot() as conn:  # as of one moment: gateways may be writing meanwhile
            checkpoints, result.problems = _checkpoints(conn)
            pruned = {writer: max((cp.seq for cp in cps if cp.kind == "prune"), default=0)
                      for writer, cps in checkpoints.items()}
            anchors = checkpoints.pop(chain.APPROVAL_EVENTS_CHAIN, [])
            form = StoredForm(Call.__table__, conn.dialect)
            rows = conn.execute(form.select().order_by(Call.writer_id, Call.seq).execution_options(yield_per=2000))
            check: ChainCheck | None = None
            ends: dict[str, int] = {}
            for r in rows:
                m, stored, unread = form.read(r)
                if (unplaced := _unplaceable(m, stored, unread)) is not None:
                    result.problems.append(unplaced)
                    result.hashes_hold = False
                    continue
                if check is None or check.writer_id != m["writer_id"]:
                    if check is not None:
                        result.add(check.finish())
                    check = ChainCheck(m["writer_id"], checkpoints.pop(m["writer_id"], []), chain_key)
                    wanted = heads.get(m["writer_id"])
                check.feed(m, stored, readable=not unread)
                ends[m["writer_id"]] = m["seq"]
                if wanted and m["seq"] in wanted:
                    for w in wanted.pop(m["seq"]):
                        if w.hash != m["hash"]:
                            result.problems.append(
                                f"{w.where}: the witness saw writer {w.chain}'s record {w.seq} with hash "
                                f"{w.hash[:16]}..., the store's call {m['id']} has {m['hash'][:16]}...: "
                                "the chain was rewritten after it was written")
            if check is not None:
                result.add(check.finish())
            for writer_id, cps in sorted(checkpoints.items()):  # chains with no records left
                result.add(ChainCheck(writer_id, cps, chain_key).finish())
            result.approvals, problems = check_approvals(conn)
            result.problems += problems
            events = check_approval_events(conn, chain_key, anchors)
            result.approval_events, result.approvals_held = events.events, events.approvals
            result.problems += events.problems
            result.notes += events.notes
            result.hashes_hold = result.hashes_hold and events.hashes_hold
            result.policy_versions, problems = check_policy_versions(conn)
            result.problems += problems
            result.sessions, problems = check_sessions(conn)
            result.problems += problems
            result.problems += _witnessed_heads_missing(conn, heads, ends, pruned)
            result.ok = not result.problems
    finally:
        store.engine.dispose()
    return result


@dataclasses.dataclass
class PeriodResult(VerifyResult):
    """What ``verify_period`` found: ``VerifyResult``'s counts (of the records read), problems and
    notes, and ``checked``: per writer, the highest seq among the period's records when they were
    checked (a record of the period committed after that is not vouched for)."""

    checked: dict[str, int] = dataclasses.field(default_factory=dict)


def verify_period(store: Store, since: dt.datetime | None = None, until: dt.datetime | None = None,
                  chain_key: bytes | None = None) -> PeriodResult:
    """Check what vouches for the calls in [since, until), as an export writes them, without
    reading the whole store.

    For each writer with calls in the period, its chain is checked as ``verify`` checks it (each
    record's hash, link and MAC, the checkpoints) from the record before the first of them (which
    they must link to) to the first checkpoint at or after the last of them, or the chain's end
    (so that a checkpoint or the chain's end holds the last of them to the rest of the chain, and
    a checkpoint past the end shows the tail cut off). For every chain, whether or not it has
    calls in the period: its seqs are counted against their range (where they do not add up, the
    records missing are found and named), it must start at 1 or at a prune checkpoint, and no
    checkpoint may point past its end; a record deleted anywhere took its time with it, so it may
    have been in the period. Approvals and their events are not checked here: the calls' exports
    do not hold them (``verify`` and the OSCAL export check them)."""
    store._check_schema()
    c = Call.__table__.c
    result = PeriodResult()
    with store._reading() as conn:
        # each writer's first and last seq in the period, read through the index on time (grouped in
        # SQL, SQLite's planner walks the whole (writer_id, seq) index instead); read first, so
        # that what is committed after is left out
        q = select(c.writer_id, c.seq)
        if since is not None:
            q = q.where(c.time >= since)
        if until is not None:
            q = q.where(c.time < until)
        period: dict[str, tuple[int, int]] = {}
        for writer_id, seq in conn.execute(q.execution_options(yield_per=10_000)):
            lo, hi = period.get(writer_id, (seq, seq))
            period[writer_id] = (min(lo, seq), max(hi, seq))
        chains = {w: (first, last, n) for w, first, last, n in conn.execute(
            select(c.writer_id, func.min(c.seq), func.max(c.seq), func.count()).group_by(c.writer_id))}
        checkpoints, result.problems = _checkpoints(conn)
        checkpoints.pop(chain.APPROVAL_EVENTS_CHAIN, None)
        form = StoredForm(Call.__table__, conn.dialect)  # each value read as stored, as ``verify`` reads it
        for writer_id, (first, last, n) in sorted(chains.items()):
            cps = checkpoints.pop(writer_id, [])
            start = end = None
            found: list[tuple[int, str]] = []  # (seq, problem): the chain's, in its order
            inside = True  # the chain's start is checked apart from the period's records
            if writer_id in period:
                lo, hi = period[writer_id]
                result.checked[writer_id] = hi
                start = conn.execute(select(func.max(c.seq)).where(c.writer_id == writer_id, c.seq < lo)).scalar()
                inside = start is not None  # else the chain starts with the period's first record
                start = lo if start is None else start
                end = min(min((cp.seq for cp in cps if cp.seq >= hi), default=last), last)
                check = ChainCheck(writer_id, [cp for cp in cps if (cp.seq >= start or not inside)
                                               and (cp.seq <= end or end == last)], chain_key, inside=inside)
                for r in conn.execute(form.select().where(c.writer_id == writer_id, c.seq >= start, c.seq <= end)
                                      .order_by(c.seq).execution_options(yield_per=2000)):
                    m, stored, unread = form.read(r)
                    if (unplaced := _unplaceable(m, stored, unread)) is not None:
                        found.append((m["seq"] if "seq" not in unread else start, unplaced))
                        continue
                    check.feed(m, stored, readable=not unread)
                check.finish()
                result.records += check.records
                result.checkpoints += len(check.checkpoints)
                result.notes += check.notes
                found += [(start, p) for p in check.problems]
            result.chains += 1
            if inside:
                found += [(0, p) for p in _chain_start(conn, writer_id, first, cps, chain_key)]
            if n != last - first + 1:
                found += _records_missing(conn, writer_id, last, start, end)
            if end != last:  # the chain's last record, and any checkpoint past it (its tail cut off)
                tail = ChainCheck(writer_id, [cp for cp in cps if cp.seq >= last], chain_key, inside=True)
                m, stored, unread = form.read(conn.execute(form.select().where(c.writer_id == writer_id,
                                                                               c.seq == last)).one())
                if (unplaced := _unplaceable(m, stored, unread)) is not None:
                    found.append((last, unplaced))
                else:
                    tail.feed(m, stored, readable=not unread)
                found += [(last, p) for p in tail.finish().problems]
            result.problems += [p for _, p in sorted(found, key=lambda f: f[0])]  # (a stable sort)
        for writer_id, cps in sorted(checkpoints.items()):  # chains with no records left
            result.add(ChainCheck(writer_id, cps, chain_key).finish())
    result.ok = not result.problems
    return result


def _chain_start(conn: Any, writer_id: str, first: int, cps: list[CheckpointInfo], chain_key: bytes | None) -> list[str]:
    """The problem with a chain whose first record left is ``first``: none when it is 1 or follows a
    prune checkpoint (one the chain key made, where it is given)."""
    if first == 1:
        return []
    call_id = conn.execute(select(Call.id).where(Call.writer_id == writer_id, Call.seq == first)).scalar()
    problems, valid = [], []
    for cp in cps:
        if cp.kind != "prune" or cp.seq >= first:
            continue
        if chain_key is not None and not cp.holds(chain_key):
            problems.append(f"{cp.name()} is forged or altered: its HMAC does not verify with the chain key"
                            if cp.hmac else f"{cp.name()} has no HMAC: no gateway holding the chain key wrote it")
        else:
            valid.append(cp.seq)
    if first - 1 not in valid:
        problems.append(f"call {call_id} (writer {writer_id}, seq {first}): "
                        + chain.missing_start(first, max(valid, default=0)))
    return problems


def _records_missing(conn: Any, writer_id: str, last: int, start: int | None,
                     end: int | None) -> list[tuple[int, str]]:
    """Where a chain's records up to ``last`` are missing (each record left whose predecessor is
    not the one before it), but between ``start`` and ``end``, whose check names them already:
    (the first seq missing, problem)."""
    c = Call.__table__.c
    seqs = select(c.id, c.seq, func.lag(c.id).over(order_by=c.seq).label("prev_id"),
                  func.lag(c.seq).over(order_by=c.seq).label("prev_seq")
                  ).where(c.writer_id == writer_id, c.seq <= last).subquery()
    problems = []
    for r in conn.execute(select(seqs).where(seqs.c.seq != seqs.c.prev_seq + 1).order_by(seqs.c.seq)):
        if start is not None and start <= r.prev_seq and r.seq <= end:
            continue
        problems.append((r.prev_seq + 1, f"call {r.id} (writer {writer_id}, seq {r.seq}): "
                         + chain.missing_between(r.prev_id, r.prev_seq, r.seq)))
    return problems


def check_policy_versions(conn: Any) -> tuple[int, list[str]]:
    """Every policy version the records name, against the text the store keeps of it: the text
    must be there and still hash to the version (``policy_text_version``). The gateway stores a
    version's text before the first call it decides, so a version without its text had the text
    deleted (or the gateway could not store it, and logged so), and one whose text no longer hashes
    to it had the text changed: either way the rules that decided those calls are no longer shown
    as they were. (How many versions the records name, problems: one per version.)"""
    c = Call.__table__.c
    named = conn.execute(select(c.policy_version, func.count(), func.min(c.id)).where(c.policy_version.is_not(None))
                         .group_by(c.policy_version)).all()
    form = StoredForm(PolicyVersion.__table__, conn.dialect)
    problems, texts, unreadable = [], {}, set()
    for r in conn.execute(form.select().order_by(PolicyVersion.version)):
        row, stored, unread = form.read(r)
        if stored:
            problems.append(f"{_policy_version(row)}: " + "; ".join(stored))
        if unread:
            unreadable.add(row["version"])
        else:
            texts[row["version"]] = row["text"]
    for version, n, first in sorted(named, key=lambda v: str(v[0])):
        if version in unreadable:
            continue
        calls = f"{n} call{'s name' if n != 1 else ' names'} it (the first: call {first})"
        stored_text = texts.get(version)
        if stored_text is None:
            problems.append(f"policy version {version}: {calls}, but the store holds no text of it: the text was "
                            "deleted, or the gateway could not store it (its log says so)")
        elif (held := policy_text_version(stored_text)) != version:
            problems.append(f"policy version {version}: {calls}, but its stored text hashes to {held}: the text was "
                            "changed after the gateway stored it")
    return len(named), problems


# What a session says of who called, as each of its calls does: a session is one principal's
# credentials for one role (``core.credentials``). (Its on-behalf-of subject is its first call's
# that names one, which prune may have taken.)
SESSION_NAMES = ("principal", "issuer", "role")


def check_sessions(conn: Any) -> tuple[int, list[str]]:
    """Every session against the calls that name it. The sessions table is not chained (its
    last_seen and count change with every call), but who a session says called is what its calls'
    records say, in their chains: the principal, issuer and role of each must be one its calls
    name, or none where none of them names one. A session no call names was written outside
    agentgate, or its calls were deleted (prune deletes a session only once it was last seen
    before the date, and so its calls before it). (How many sessions, problems: one per
    session.)"""
    c, s = Call.__table__.c, AgentSession.__table__
    named: dict[Any, dict[str, set[Any]]] = {}
    for r in conn.execute(select(c.session_id, *(c[k] for k in SESSION_NAMES)).where(c.session_id.is_not(None))
                          .distinct()):
        names = named.setdefault(r[0], {k: set() for k in SESSION_NAMES})
        for k, v in zip(SESSION_NAMES, r[1:]):
            if v is not None:
                names[k].add(v)
    form = StoredForm(s, conn.dialect)
    sessions, problems = 0, []
    for r in conn.execute(form.select().order_by(s.c.id)):
        row, issues, unread = form.read(r)
        sessions += 1
        calls = named.get(row["id"])
        if calls is None:
            issues.append("no call in the store names it: it was written outside agentgate, or its calls were deleted")
        else:
            wrong = [f"{k} {row[k]!r} where its calls name " + (" or ".join(sorted(map(repr, calls[k]))) or "none")
                     for k in SESSION_NAMES if k not in unread
                     and (row[k] not in calls[k] if row[k] is not None else calls[k])]
            if wrong:
                issues.append(f"it names {', '.join(wrong)}: the session's row was altered after its calls were "
                              "recorded")
        if issues:
            problems.append(f"{_session(row)}: " + "; ".join(issues))
    return sessions, problems


def _witnessed_heads_missing(conn: Any, heads: dict[str, dict[int, list[chain.Witness]]], ends: dict[str, int],
                             pruned: dict[str, int]) -> list[str]:
    """The heads witnesses saw that the store does not hold (those of the calls' chains left in
    ``heads`` after the records were read; the approval events' looked up here), unless a prune
    checkpoint took them."""
    problems = []
    events = heads.pop(chain.APPROVAL_EVENTS_CHAIN, {})
    if events:
        e = ApprovalEvent.__table__.c
        held = {}
        wanted = sorted(events)
        for i in range(0, len(wanted), 500):
            held.update(conn.execute(select(e.seq, e.hash).where(e.seq.in_(wanted[i:i + 500]))).all())
        last = conn.execute(select(func.max(e.seq))).scalar() or 0
        for seq, ws in sorted(events.items()):
            for w in ws:
                if seq <= pruned.get(chain.APPROVAL_EVENTS_CHAIN, 0):
                    continue
                if seq not in held:
                    problems.append(f"{w.where}: the witness saw approval event {seq}, which the store no longer holds "
                                    f"(its approval events end at {last}): events deleted after it was written")
                elif held[seq] != w.hash:
                    problems.append(f"{w.where}: the witness saw approval event {seq} with hash {w.hash[:16]}..., "
                                    f"the store's has {held[seq][:16]}...: the events were rewritten after it was written")
    for writer, by_seq in sorted(heads.items()):
        for seq, ws in sorted(by_seq.items()):
            if seq <= pruned.get(writer, 0):
                continue
            end = ends.get(writer)
            holds = f"its chain ends at record {end}" if end else "it holds no record of that writer"
            for w in ws:
                problems.append(f"{w.where}: the witness saw writer {writer}'s chain at record {seq}, which the store "
                                f"no longer holds ({holds}): records deleted after it was written")
    return problems


def check_approvals(conn: Any) -> tuple[int, list[str]]:
    """The approvals that recorded calls ran under, against what those calls' records (in their
    chains) say of them: each must still be in the store, name the same principal and, where the
    record names who decided, the same approver. The approvals table is not itself chained (its
    rows change state); this catches an approval deleted or rewritten after a call relied on it.
    (How many approvals were looked at, problems.)"""
    c, a = Call.__table__.c, ApprovalRow.__table__.c
    calls = conn.execute(select(c.id, c.writer_id, c.seq, c.approval_id, c.approver, c.principal)
                         .where(c.approval_id.is_not(None)).order_by(c.writer_id, c.seq)).all()
    ids = sorted({r.approval_id for r in calls}, key=str)  # key: one stored as bytes is its record's to name
    held: dict[str, Any] = {}
    for i in range(0, len(ids), 500):
        for row in conn.execute(select(a.id, a.principal, a.approver).where(a.id.in_(ids[i:i + 500]))):
            held[row.id] = row
    problems = []
    for r in calls:
        where = f"call {r.id} (writer {r.writer_id}, seq {r.seq})"
        found = held.get(r.approval_id)
        if found is None:
            problems.append(f"{where}: its record names approval {r.approval_id}, which the store no longer holds")
        elif found.principal != r.principal:
            problems.append(f"{where}: approval {r.approval_id} now names principal {found.principal!r}, the call's "
                            f"record {r.principal!r}")
        elif r.approver is not None and found.approver != r.approver:
            problems.append(f"{where}: approval {r.approval_id} now names approver {found.approver!r}, the call's "
                            f"record {r.approver!r}")
    return len(ids), problems


def check_approval_events(conn: Any, chain_key: bytes | None,
                          anchors: list[CheckpointInfo] | None = None) -> ApprovalEventCheck:
    """The approval events' chain (starting after a prune checkpoint among ``anchors``, if
    ``agentgate prune`` removed its oldest events), and every approval against its latest event."""
    check = ApprovalEventCheck(chain_key, anchors or [])
    e = ApprovalEvent.__table__
    form = StoredForm(e, conn.dialect)
    for r in conn.execute(form.select().order_by(e.c.seq).execution_options(yield_per=2000)):
        row, stored, unread = form.read(r)
        if unread & _EVENT_CHAIN_COLUMNS:
            check.problems.append(f"approval event {row['seq']}: " + "; ".join(stored))
            check.hashes_hold = False
            continue
        check.feed(row, stored, readable=not unread)
    a = ApprovalRow.__table__
    form = StoredForm(a, conn.dialect)

    def approvals() -> Iterator[dict[str, Any]]:
        for r in conn.execute(form.select().order_by(a.c.requested, a.c.id).execution_options(yield_per=2000)):
            row, stored, unread = form.read(r)
            if stored:
                check.problems.append(f"{_approval(row)}: " + "; ".join(stored))
            if unread:
                check.unreadable(row["id"])
            else:
                yield row

    return check.finish(approvals())


@dataclasses.dataclass
class PruneResult:
    records: int = 0  # calls deleted
    chains: int = 0  # chains that got a prune checkpoint
    sessions: int = 0  # sessions deleted
    approvals: int = 0  # approvals deleted: settled before the date, named by no call left
    approval_events: int = 0  # the approval events' oldest, replaced by a prune checkpoint
    expired: int = 0  # approvals left pending or approved past their expiry, now marked expired
    dry_run: bool = False


# an approval in one of these states changes no more: pruned once its events are older than the date
SETTLED = ("expired", "used", "revoked")


@dataclasses.dataclass
class _ApprovalsPlan:
    upto: int = 0  # the approval events up to this seq go, for a prune checkpoint (0: none)
    head: str | None = None  # the hash of event ``upto``
    events: int = 0
    remove: list[str] = dataclasses.field(default_factory=list)  # approval ids
    expire: list[Any] = dataclasses.field(default_factory=list)  # rows left pending or approved past expiry


def _plan_approvals(conn: Any, before: dt.datetime, named: set[str], chain_key: bytes | None,
                    anchors: list[CheckpointInfo]) -> _ApprovalsPlan:
    """What pruning takes of the approvals and their events' chain (one chain for the store).

    The chain's longest prefix of events older than ``before`` goes, but never its last event (the
    next event links to it) nor the latest event of an approval that stays, so that every approval
    left still reads as its latest event says: an approval stays while it can still change, while a
    call left in the store names it, or while a denial still answers its retries. Approvals left
    pending or approved past an expiry before ``before`` are marked expired first (an event each,
    at the chain's end): they stay this time and go in a later prune. An approval goes with its
    last event. Refuses if the events to go do not verify."""
    e, a = ApprovalEvent.__table__.c, ApprovalRow.__table__
    form = StoredForm(a, conn.dialect)
    rows = []
    for r in conn.execute(form.select()):
        row, stored, _ = form.read(r)
        if stored:
            raise StoreError(f"not pruning: approval {row['id']} ({row['status']}): {'; '.join(stored)} (run "
                             "`agentgate verify`; a broken chain is not summarised)")
        rows.append(_Row(row))
    plan = _ApprovalsPlan(expire=[r for r in rows if r.status in ("pending", "approved")
                                  and r.expires is not None and r.expires < before])
    last = conn.execute(select(func.max(e.seq))).scalar()
    if last is None:
        return plan
    expiring = {r.id for r in plan.expire}
    latest = dict(conn.execute(select(e.approval_id, func.max(e.seq)).group_by(e.approval_id)).all())
    upto = min(last - 1, _last_older(conn, ApprovalEvent.__table__, None, before,
                                     lambda row: f"approval event {row['seq']}"))
    for r in rows:
        seq = latest.get(r.id)
        goes = r.id not in named and (r.status in SETTLED or (
            r.status == "denied" and (r.expires is None or r.expires < before)))
        if seq is not None and seq <= upto and not goes and r.id not in expiring:
            upto = seq - 1
    start = max((cp.seq for cp in anchors if cp.kind == "prune"), default=0)
    if upto <= start:
        return plan
    if chain_key is None and conn.execute(select(e.seq).where(e.mac.is_not(None)).limit(1)).first():
        raise StoreError("this store's approval events are keyed: prune needs the chain key (--key-file)")
    check = ApprovalEventCheck(chain_key, [cp for cp in anchors if cp.seq <= upto])
    form = StoredForm(ApprovalEvent.__table__, conn.dialect)
    for r in conn.execute(form.select().where(e.seq <= upto).order_by(e.seq).execution_options(yield_per=2000)):
        row, stored, unread = form.read(r)
        if unread & _EVENT_CHAIN_COLUMNS:
            raise StoreError(f"not pruning: approval event {row['seq']}: {'; '.join(stored)} (run `agentgate verify`; "
                             "a broken chain is not summarised)")
        check.feed(row, stored, readable=not unread)
        plan.head = row["hash"]
        plan.events += 1
    if check.problems:
        raise StoreError(f"not pruning: {check.problems[0]} (run `agentgate verify`; a broken chain is not summarised)")
    plan.upto = upto
    plan.remove = [r.id for r in rows if r.id not in expiring and latest.get(r.id, upto + 1) <= upto]
    return plan


class _Row(dict):
    """A row as ``StoredForm`` read it, its columns also as attributes (as a result row's)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _last_older(conn: Any, table: Any, where: Any, before: dt.datetime, name: Callable[[dict[str, Any]], str]) -> int:
    """The seq of the last row of the longest run, in seq order, of rows of ``table`` (calls or
    approval events; ``where`` picks a writer's) whose time is before ``before`` (0: none): what
    prune takes. Each time is read as the store reads it, never compared as stored text: a time
    rewritten in another form reads as the same time but sorts elsewhere, and a record of later
    that day could sort before the date. A time that cannot be read, or is not stored as the store
    writes it, stops prune: whether that record is older is not known."""
    form = StoredForm(table, conn.dialect, ("id", "writer_id", "seq", "time") if table is Call.__table__ else ("seq", "time"))
    query = form.select().order_by(table.c.seq).execution_options(yield_per=2000)
    last = 0
    with conn.execute(query if where is None else query.where(where)) as rows:
        for r in rows:
            row, stored, _ = form.read(r)
            if stored:
                raise StoreError(f"not pruning: {name(row)}: {'; '.join(stored)} (whether it is older than the date "
                                 "is not known; run `agentgate verify`)")
            if row["time"] >= before:
                break
            last = row["seq"]
    return last


def _sessions_last_seen_before(conn: Any, before: dt.datetime) -> list[str]:
    """The sessions last seen before ``before``, as each time reads (``_last_older``): prune's."""
    s = AgentSession.__table__
    form = StoredForm(s, conn.dialect, ("id", "last_seen"))
    gone = []
    for r in conn.execute(form.select().order_by(s.c.id)):
        row, stored, _ = form.read(r)
        if stored:
            raise StoreError(f"not pruning: session {row['id']}: {'; '.join(stored)} (whether it was last seen "
                             "before the date is not known; run `agentgate verify`)")
        if row["last_seen"] < before:
            gone.append(row["id"])
    return gone


def _prune_approvals(store: Store, conn: Any, plan: _ApprovalsPlan, now: dt.datetime) -> None:
    """(In prune's transaction.) Carry out ``plan``: the expiries, the prune checkpoint, the deletes."""
    from .approvals import EVENTS_LOCK, Approval, Approvals  # approvals builds on this module

    if store._postgres:  # one appender to the events' chain at a time, as approvals.Approvals does
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENTS_LOCK})
    approvals = Approvals(store)
    for row in plan.expire:
        approvals._expire(conn, Approval.from_row(row), now)
    if not plan.upto:
        return
    mac = None
    if store.chain_key is not None:
        mac = chain.checkpoint_mac(store.chain_key, writer_id=chain.APPROVAL_EVENTS_CHAIN, seq=plan.upto,
                                   head_hash=plan.head, time=now, kind="prune")
    conn.execute(insert(Checkpoint), [{"writer_id": chain.APPROVAL_EVENTS_CHAIN, "seq": plan.upto,
                                       "head_hash": plan.head, "time": now, "kind": "prune", "hmac": mac}])
    conn.execute(delete(ApprovalEvent).where(ApprovalEvent.seq <= plan.upto))
    for i in range(0, len(plan.remove), 500):
        conn.execute(delete(ApprovalRow).where(ApprovalRow.id.in_(plan.remove[i:i + 500])))


def prune(url: str, before: dt.datetime, chain_key: bytes | None = None, *, dry_run: bool = False) -> PruneResult:
    """Delete each chain's records older than ``before`` (its longest such prefix) and start the
    chain at a prune checkpoint, so that what is left still verifies; sessions last seen before
    it; and the approvals settled before it that no call left names, with the approval events'
    oldest (``_plan_approvals``). Refuses if a prefix to be pruned does not verify (up to the keyed
    checkpoint that vouches for its records without a MAC): evidence of tampering is not summarised
    away. A ``before`` still to come is refused: it would delete every record, and mark approvals
    still running expired."""
    before = _as_datetime(before)
    if before > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1):
        raise StoreError(f"--before {before.isoformat()} is still to come: prune deletes records older than a "
                         "time that has passed (an age such as 90d, or a date before today)")
    store = _open_for_reading(url, chain_key)
    result = PruneResult(dry_run=dry_run)
    c = Call.__table__.c
    try:
        with store.engine.connect() as conn:
            checkpoints, problems = _checkpoints(conn)
            if problems:
                raise StoreError(f"not pruning: {problems[0]} (run `agentgate verify`; a broken chain is not summarised)")
            if chain_key is None and any(cp.hmac for cps in checkpoints.values() for cp in cps):
                raise StoreError("this store's checkpoints are keyed: prune needs the chain key (--key-file)")
            anchors = checkpoints.pop(chain.APPROVAL_EVENTS_CHAIN, [])
            writers = conn.execute(select(c.writer_id).distinct()).scalars().all()
            plan: list[tuple[str, int, str]] = []
            form = StoredForm(Call.__table__, conn.dialect)
            for writer_id in sorted(writers, key=str):
                upto = _last_older(conn, Call.__table__, c.writer_id == writer_id, before, _record)
                cps = checkpoints.get(writer_id, [])
                start = max((cp.seq for cp in cps if cp.kind == "prune"), default=0)
                if upto <= start:
                    continue
                # A record without a MAC (written before records had MACs) is vouched for by a keyed
                # checkpoint after it, which may come after ``upto``: the chain is checked up to the
                # first one at or after ``upto``, as ``verify`` checks it, and pruned up to ``upto``.
                checked = upto
                if chain_key is not None:
                    checked = next((cp.seq for cp in cps if cp.seq >= upto and cp.holds(chain_key)), upto)
                check = ChainCheck(writer_id, [cp for cp in cps if cp.seq <= checked], chain_key)
                head = None
                for r in conn.execute(
                    form.select()
                    .where(c.writer_id == writer_id, c.seq <= checked)
                    .order_by(c.seq)
                    .execution_options(yield_per=2000)
                ):
                    row, stored, unread = form.read(r)
                    if (unplaced := _unplaceable(row, stored, unread)) is not None:
                        raise StoreError(f"not pruning: {unplaced} (run `agentgate verify`; "
                                         "a broken chain is not summarised)")
                    check.feed(row, stored, readable=not unread)
                    if row["seq"] <= upto:
                        head = row["hash"]
                check.finish()
                if check.problems:
                    raise StoreError(
                        f"not pruning: {check.problems[0]} (run `agentgate verify`; a broken chain is not summarised)"
                    )
                plan.append((writer_id, upto, head))
            pruned_to = {writer_id: upto for writer_id, upto, _ in plan}
            named = {r.approval_id for r in conn.execute(select(c.writer_id, c.seq, c.approval_id)
                                                         .where(c.approval_id.is_not(None)))
                     if r.seq > pruned_to.get(r.writer_id, 0)}  # by the calls that stay
            approvals = _plan_approvals(conn, before, named, chain_key, anchors)
            result.approvals, result.approval_events = len(approvals.remove), approvals.events
            result.expired = len(approvals.expire)
            sessions = _sessions_last_seen_before(conn, before)
            if dry_run:
                for writer_id, upto, _ in plan:
                    result.records += conn.execute(
                        select(func.count()).where(c.writer_id == writer_id, c.seq <= upto)
                    ).scalar()
                result.chains = len(plan)
                result.sessions = len(sessions)
                return result
            now = dt.datetime.now(dt.timezone.utc)
            for writer_id, upto, head in plan:
                mac = None
                if chain_key is not None:
                    mac = chain.checkpoint_mac(chain_key, writer_id=writer_id, seq=upto, head_hash=head, time=now, kind="prune")
                conn.execute(insert(Checkpoint), [
                    {"writer_id": writer_id, "seq": upto, "head_hash": head, "time": now, "kind": "prune", "hmac": mac}
                ])
                result.records += conn.execute(delete(Call).where(Call.writer_id == writer_id, Call.seq <= upto)).rowcount
                conn.execute(
                    delete(Checkpoint).where(Checkpoint.writer_id == writer_id, Checkpoint.seq <= upto, Checkpoint.kind == "head")
                )
            for i in range(0, len(sessions), 500):
                result.sessions += conn.execute(delete(AgentSession).where(AgentSession.id.in_(sessions[i:i + 500]))
                                                ).rowcount
            if plan:  # the sessions left count the calls left (``sessions list``), as ``sessions show`` lists them
                s = AgentSession.__table__
                conn.execute(s.update().values(calls=select(func.count()).where(c.session_id == s.c.id)
                                               .scalar_subquery()))
                # and whom they were made for: one party, where the calls left were all made for one
                parties = (select(func.count(func.distinct(func.coalesce(c.on_behalf_of, ""))))
                           .where(c.session_id == s.c.id).scalar_subquery())
                party = select(func.max(c.on_behalf_of)).where(c.session_id == s.c.id).scalar_subquery()
                conn.execute(s.update().where(s.c.on_behalf_of_varies == true()).values(
                    on_behalf_of=case((parties > 1, null()), else_=party), on_behalf_of_varies=parties > 1))
            _prune_approvals(store, conn, approvals, now)
            conn.commit()
            result.chains = len(plan)
    except SQLAlchemyError as e:
        raise StoreUnavailable(f"cannot prune the store at {store.where}: {_one_line(e)}") from None
    finally:
        store.engine.dispose()
    return result
