"""The hash chain that makes the store tamper-evident.

Every writer (one gateway process, named by its ``writer_id``) chains the calls it writes: record
``seq`` N carries ``prev_hash``, the hash of record N-1 (``GENESIS`` for N = 1), and ``hash``, the
SHA-256 of ``prev_hash`` and the canonical form of everything else in the row. Editing a field,
deleting or reordering rows breaks the chain at the first record touched.

Recomputing a whole chain after an edit is possible for anyone who can write the database, so a
writer holding the chain key (a key the database does not hold) gives each record ``mac``, an
HMAC-SHA256 over (writer, seq, hash), which vouches for the record and every one before it, and
writes keyed checkpoints: an HMAC over (writer, seq, head hash, time). With the key, a record whose
MAC does not verify is altered or forged, and one without a MAC must have a keyed checkpoint after
it (records written before records had MACs); without the key, records after the last checkpoint
are "unanchored". A checkpoint that points past the chain's last record means its tail was cut
off. ``agentgate prune`` replaces a chain's oldest records with one ``prune`` checkpoint, which the
chain then starts from.

Canonical form: a JSON object of the row's columns (without ``hash`` and ``mac``, and without columns that are
NULL, so that columns added later leave older hashes intact), keys sorted, no whitespace, UTF-8.
Times are integers of microseconds since the epoch; floats are JSON numbers in Python's shortest
round-trip form (``repr``). Both read back identically from SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; json alone gives the same bytes, slower
    orjson = None

GENESIS = "0" * 64
# the writer_id of the approval events' prune checkpoints (a gateway's writer ids read host:pid:hex)
APPROVAL_EVENTS_CHAIN = "approval-events"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def micros(t: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_epoch(seconds: float) -> dt.datetime:
    """The UTC datetime of an epoch time, rounded to the microsecond."""
    return EPOCH + dt.timedelta(microseconds=round(seconds * 1_000_000))


def clean_str(s: str) -> str:
    """A string every database stores as is: NUL and lone surrogates become U+FFFD."""
    if s.isascii():  # most are: no surrogate to look for
        return s.replace("\x00", "\ufffd") if "\x00" in s else s
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)
    return s


# Unicode's format characters (category Cf), as of Unicode 15 (tests/test_cli.py holds them to
# Python's unicodedata): bidirectional overrides and isolates, zero-width spaces and joiners, the
# soft hyphen, the byte order mark, tag characters. They do not show, or change how the text around
# them shows: a key written "x\u202elqs.pukcab" reads "xbackup.sql" to an approver.
FORMAT_CHARACTERS = ((0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                     (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
                     (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
                     (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
                     (0xE0001, 0xE0001), (0xE0020, 0xE007F))


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties, Unicode 15): characters a renderer
# shows as nothing even where they are not format characters (the combining grapheme joiner,
# Hangul fillers, variation selectors, tags); and the spaces other than U+0020 and the Braille
# blank, which look like a space or like nothing: "backup\u3164.sql" reads "backup.sql".
IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
             (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
             (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
             (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
BLANKS = ((0x00A0, 0x00A0), (0x1680, 0x1680), (0x2000, 0x200A), (0x202F, 0x202F), (0x205F, 0x205F),
          (0x2800, 0x2800), (0x3000, 0x3000))


def written_out(c: int) -> str:
    """How a hidden character is shown: ``\\x1b``, ``\\u202e``, ``\\U000e0001``."""
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


# What an agent wrote, shown to a person (a terminal, a chat, the console): control characters a
# terminal or a chat would act on (escape sequences, C1 controls), and characters that show as
# nothing or as a space (format characters, default-ignorable ones, other spaces) written out;
# ONE_LINE writes out line breaks and tabs too, for a value that must stay on its line (a resource, a
# principal, a rule, a reason).
HIDDEN = (*range(0x20), 0x7F, *range(0x80, 0xA0),
          *sorted({c for a, b in (*FORMAT_CHARACTERS, *IGNORABLE, *BLANKS) for c in range(a, b + 1)}))
WRITTEN_OUT = {c: written_out(c) for c in HIDDEN if c not in (0x09, 0x0A)}
ONE_LINE = {**WRITTEN_OUT, 0x09: "\\t", 0x0A: "\\n", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class OneLineFormatter(logging.Formatter):
    """Each message on its line: what it quotes of an agent's (a principal, a key) with its line
    breaks and control characters written out (ONE_LINE), so that no agent can print a line
    that reads as the gateway's own (a chain head, another call's decision). Tracebacks follow as
    they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(ONE_LINE)
        return super().formatMessage(record)


def _json_escape(c: int) -> str:
    if c < 0x10000:
        return f"\\u{c:04x}"
    c -= 0x10000
    return f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}"


# The same for JSON printed where a person reads it (json.dumps escapes C0 controls itself): JSON's
# own escapes, so that the text parses to the same values
JSON_WRITTEN_OUT = {c: _json_escape(c) for c in (*HIDDEN, 0x2028, 0x2029) if c >= 0x7F}


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data that survives a round trip through either database unchanged.

    Tuples become lists, keys become strings, bytes become base64, non-finite floats and anything
    else unknown become their string form.
    """
    kind = type(value)  # the common kinds first, by exact type (an ABC's isinstance is slow)
    if kind is str:
        return clean_str(value)
    if kind is dict:
        return {clean_str(k) if type(k) is str else clean_str(str(k)): jsonable(v) for k, v in value.items()}
    if kind is list:
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return clean_str(value)
    if isinstance(value, Mapping):
        return {clean_str(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return clean_str(str(value))


def _canonical_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return micros(value)
    return value


# The canonical form's encoder: keys sorted, no whitespace, UTF-8 (encoded by the caller), no NaN.
CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_NOT_HASHED = ("hash", "mac")  # what vouches for a row is not part of what it vouches for


def canonical(content: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a row: every column but ``hash`` and ``mac`` that is not NULL."""
    body = {k: _canonical_value(v) for k, v in content.items() if v is not None and k not in _NOT_HASHED}
    return CANONICAL_ENCODER.encode(body).encode()


# orjson writes the same bytes as CANONICAL_ENCODER (sorted keys, no whitespace, UTF-8, the same escapes, floats
# in their shortest round-trip digits) except: floats from 1e-9 to 1e-4 (orjson "1.5e-7" and
# "0.000015", json "1.5e-07" and "1.5e-05"), which this finds in its output (a string that looks like
# one only costs the slower encoding); ints beyond 64 bits and str/int/dict/list subclasses, which
# it refuses with the options below; NaN and infinities, which it writes as null (jsonable never
# leaves one); and types json refuses but orjson writes (enums, UUIDs): jsonable leaves none.
_ORJSON_OPTIONS = 0 if orjson is None else (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                                            | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS)
_ORJSON_DIFFERS = re.compile(rb"[:,\[]-?(?:0\.0000|\d+(?:\.\d+)?e-\d(?!\d))")
_ORJSON_COLUMN_OPTIONS = 0 if orjson is None else orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_E_MINUS = re.compile(rb"e-\d(?!\d)")  # where an _ORJSON_DIFFERS exponent would end; led by a literal
_FLOAT_SPAN = 32  # bytes before its "e-" in which a float's token starts (at most 17 digits, ".", "-", and ":")


def _orjson_differs(out: bytes) -> bool:
    """Whether orjson's ``out`` holds what _ORJSON_DIFFERS finds. Its exponent form is looked for only
    around each "e-<digit>" (a scan led by a literal): the whole pattern, tried at every ':' and ','
    of a record, cost about 12 µs a record, and any text with "e-" in it ("agentgate-loadgen",
    "x-amz-server-side-encryption") made it run."""
    if b"0.0000" in out and _ORJSON_DIFFERS.search(out) is not None:
        return True
    for m in _E_MINUS.finditer(out):
        at = m.start()
        if _ORJSON_DIFFERS.search(out, max(0, at - _FLOAT_SPAN), at + 4) is not None:
            return True
    return False


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """The canonical encoding (as ``canonical``) of ``body``, a mapping of values as ``jsonable``
    leaves them (finite floats only): orjson's bytes where they are json's, else json's. For the
    store's write path, where each record is encoded; ``canonical`` (what ``verify`` recomputes)
    keeps to json, so the two are checked against each other on every verification."""
    if orjson is not None:
        try:
            out = orjson.dumps(body, option=_ORJSON_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: an int over 64 bits, a subclass, a datetime
            pass
        else:
            if (b"e-" not in out and b"0.0000" not in out) or not _orjson_differs(out):
                return out  # (the two substring tests are quick)
    return CANONICAL_ENCODER.encode(body).encode()


def json_text(value: Any) -> str:
    """A JSON column's text (any valid JSON reads back the same): orjson's where it can, json's else."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_ORJSON_COLUMN_OPTIONS).decode()
        except TypeError:
            pass
    return json.dumps(value)


def record_hash(content: Mapping[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical form (which holds it too)."""
    h = hashlib.sha256(str(content["prev_hash"]).encode("ascii", "replace"))
    h.update(b"\n")
    h.update(canonical(content))
    return h.hexdigest()


def record_mac(key: bytes, *, writer_id: str, seq: int, record_hash: str) -> str:
    """HMAC-SHA256 of a call record's place in its writer's chain: it vouches for the record and,
    through the hashes, for every record before it."""
    statement = {"writer_id": writer_id, "seq": seq, "record_hash": record_hash}
    return hmac.new(key, b"agentgate record\n" + canonical(statement), hashlib.sha256).hexdigest()


def checkpoint_mac(key: bytes, *, writer_id: str, seq: int, head_hash: str, time: dt.datetime, kind: str) -> str:
    """HMAC-SHA256 of a checkpoint's statement."""
    statement = {"writer_id": writer_id, "seq": seq, "head_hash": head_hash, "time": time, "kind": kind}
    return hmac.new(key, b"agentgate checkpoint\n" + canonical(statement), hashlib.sha256).hexdigest()


def approval_state_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of an approval's row in canonical form: what an approval event says the row became."""
    return hashlib.sha256(b"agentgate approval\n" + canonical(row)).hexdigest()


# approval events that record an approver's decision
DECISIONS = ("approved", "denied", "revoked")


def event_mac(key: bytes, *, seq: int, event_hash: str) -> str:
    """HMAC-SHA256 of an approval event's place in its chain: it vouches for every event up to it."""
    statement = {"seq": seq, "event_hash": event_hash}
    return hmac.new(key, b"agentgate approval event\n" + canonical(statement), hashlib.sha256).hexdigest()


def event_hash_holds(row: Mapping[str, Any]) -> bool:
    """Whether an approval event's row matches its hash (its content unaltered)."""
    return record_hash({k: v for k, v in row.items() if k != "mac"}) == row["hash"]


def event_mac_holds(key: bytes, row: Mapping[str, Any]) -> bool:
    """Whether an approval event's row carries a MAC of ``key`` over its place in the chain."""
    return bool(row["mac"]) and hmac.compare_digest(event_mac(key, seq=row["seq"], event_hash=row["hash"]), row["mac"])


# -- witnesses: chain heads kept outside the store

# What no chain shows by itself is its newest records deleted together with every checkpoint after
# them. So each writer logs its chain's head whenever it checkpoints it, and each approval event as
# it is committed, as a line the operator's log collection keeps elsewhere:
#     ... INFO agentgate.chain: chain head {"chain": "<writer id>", "seq": 812, "hash": "<hex>", "mac": "<hex>"}
# (``chain`` is APPROVAL_EVENTS_CHAIN for approval events). ``agentgate verify --witness FILE`` reads
# such lines from any file (a log, a journal export) and holds the store to them: every head a
# witness saw must still be there, with the same hash, unless a prune checkpoint took it. ``mac``
# is the record's (or event's) own MAC, so with the chain key a line nobody holding it wrote is told
# apart and ignored.
WITNESS_TAG = "chain head"
# A chain head as the gateway logs it: by the agentgate.chain logger, the head ending the line (a
# line of another logger that quotes an agent's text holding the words is not one)
WITNESS_LOGGER = "agentgate.chain"
_WITNESS_RE = re.compile(re.escape(WITNESS_TAG) + r" (\{[^{}\n]*\})\s*$")
# where a line of the gateway's log names its logger (``%(levelname)s [%(process)d] %(name)s: ``): the
# first such place in a line is the line's own logger, whatever its message quotes after it
_LOGGER_AT = re.compile(r"(?:^|\s)(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?:\[\d+\] )?(agentgate[\w.]*): ")


@dataclasses.dataclass(frozen=True)
class Witness:
    chain: str  # a writer id, or APPROVAL_EVENTS_CHAIN
    seq: int
    hash: str
    mac: str | None
    where: str  # file:line it was read from

    def line(self) -> str:
        return f"{WITNESS_TAG} " + json.dumps({"chain": self.chain, "seq": self.seq, "hash": self.hash, "mac": self.mac})

    def genuine(self, key: bytes) -> bool:
        """Whether a holder of ``key`` wrote this head (its MAC is the record's or the event's)."""
        if not self.mac:
            return False
        if self.chain == APPROVAL_EVENTS_CHAIN:
            expected = event_mac(key, seq=self.seq, event_hash=self.hash)
        else:
            expected = record_mac(key, writer_id=self.chain, seq=self.seq, record_hash=self.hash)
        return hmac.compare_digest(expected, self.mac)


def read_witnesses(lines: Iterable[str], name: str, notes: list[str] | None = None) -> list[Witness]:
    """The chain heads in ``lines`` (of the file ``name``); other lines are skipped. A line of the
    agentgate.chain logger that carries the tag but no head that can be read is noted in ``notes``
    (and skipped): it says something is wrong with the file, not with the store."""
    found = []
    tag = f"{WITNESS_LOGGER}: {WITNESS_TAG} {{"
    for n, text in enumerate(lines, 1):
        if tag not in text:
            continue
        logger = _LOGGER_AT.search(text)
        match = _WITNESS_RE.match(text, logger.end()) if logger and logger.group(1) == WITNESS_LOGGER else None
        if match is None:
            continue  # the words in another logger's line (an approver's reason, an agent's key)
        try:
            head = json.loads(match.group(1))
            w = Witness(str(head["chain"]), int(head["seq"]), str(head["hash"]), head.get("mac"), f"{name}:{n}")
            if w.seq < 1 or not re.fullmatch(r"[0-9a-f]{64}", w.hash):
                raise ValueError(w)
        except (TypeError, KeyError, ValueError):
            if notes is not None:
                notes.append(f"{name}:{n}: a '{WITNESS_TAG}' line without a head that can be read: skipped")
            continue
        found.append(w)
    return found


@dataclasses.dataclass
class CheckpointInfo:
    id: int
    writer_id: str
    seq: int
    head_hash: str
    time: dt.datetime
    kind: str
    hmac: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "CheckpointInfo":
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def name(self) -> str:
        return f"checkpoint #{self.id} ({self.kind}, writer {self.writer_id}, seq {self.seq})"

    def holds(self, key: bytes) -> bool:
        """Whether a holder of ``key`` made this checkpoint (its HMAC verifies with the key)."""
        return bool(self.hmac) and hmac.compare_digest(self.hmac, checkpoint_mac(
            key, writer_id=self.writer_id, seq=self.seq, head_hash=self.head_hash, time=self.time, kind=self.kind))


@dataclasses.dataclass
class VerifyResult:
    ok: bool = True
    chains: int = 0
    records: int = 0
    checkpoints: int = 0
    approvals: int = 0  # approvals checked against the records of the calls that ran under them
    approval_events: int = 0  # events in the approval events' chain
    approvals_held: int = 0  # approvals held to their latest events
    witnesses: int = 0  # chain heads read from witnesses (``agentgate verify --witness``) and held to
    policy_versions: int = 0  # policy versions the records name, each held to its stored text
    sessions: int = 0  # sessions held to the calls that name them
    problems: list[str] = dataclasses.field(default_factory=list)  # first broken record first
    notes: list[str] = dataclasses.field(default_factory=list)  # unanchored tails and the like: fine
    # every record and approval event read, hashed to its hash and linked to the one before it (a
    # problem left is then a MAC or HMAC, or outside the chains): whether a wrong key may explain it
    hashes_hold: bool = True

    def add(self, check: "ChainCheck") -> None:
        self.chains += 1
        self.records += check.records
        self.checkpoints += len(check.checkpoints)
        self.problems += check.problems
        self.notes += check.notes
        self.hashes_hold = self.hashes_hold and check.hashes_hold
        self.ok = not self.problems


def _call(row: Mapping[str, Any]) -> str:
    return f"call {row['id']} (writer {row['writer_id']}, seq {row['seq']})"


def _span(a: int, b: int) -> str:
    return f"record {a} is" if a == b else f"records {a}-{b} are"


def missing_start(seq: int, pruned: int) -> str:
    """What is wrong with a chain whose first record left is ``seq`` (not 1, and no prune
    checkpoint at ``seq`` - 1): its records after the prune checkpoint at ``pruned`` (0: none) are gone."""
    if pruned:
        return f"{_span(pruned + 1, seq - 1)} missing before it, after the prune checkpoint at seq {pruned}: deleted"
    return (f"{_span(1, seq - 1)} missing before it and no prune checkpoint accounts for them "
            f"(the start of the chain was deleted)")


def missing_between(last_id: str, last_seq: int, seq: int) -> str:
    """What is wrong with a record ``seq`` whose predecessor left is call ``last_id`` at ``last_seq``."""
    return f"{_span(last_seq + 1, seq - 1)} missing between it and call {last_id} (seq {last_seq}): deleted"


class ChainCheck:
    """Verifies one writer's chain: feed its rows in seq order, then ``finish()``.

    Problems are collected in seq order; each names the record (call id, writer, seq) where the
    chain breaks and what is wrong there. ``inside``: the rows fed start inside the chain, its
    records before them not read (an export checks the part of a chain its period needs): the
    first row is checked in itself, and the next ones against it, but not against a predecessor.
    """

    def __init__(self, writer_id: str, checkpoints: Iterable[CheckpointInfo], key: bytes | None,
                 inside: bool = False) -> None:
        self.writer_id = writer_id
        self.key = key
        self.inside = inside
        self.checkpoints = sorted(checkpoints, key=lambda c: (c.seq, c.id))
        self.records = 0
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.hashes_hold = True  # no record read so far was altered, unreadable, missing or out of its place
        self._found: list[tuple[int, int, str | CheckpointInfo]] = []  # (seq, order, problem)
        self._last: dict[str, Any] | None = None  # the previous row's id, seq and hash
        self._first_seq: int | None = None
        self._valid: list[CheckpointInfo] = []
        self._wanted = {cp.seq for cp in self.checkpoints}
        self._seen: dict[int, tuple[str, str]] = {}  # checkpointed seq -> (call id, hash)
        self._macd = 0  # the last seq whose record's MAC verifies: it vouches for the chain up to it
        self._unmacd: list[list] = []  # runs of records without a MAC: [first seq, last seq, first call id]
        for cp in self.checkpoints:
            if key is not None:
                if not cp.hmac:
                    self._problem(cp.seq, f"{cp.name()} has no HMAC: no gateway holding the chain key wrote it")
                    continue
                if not cp.holds(key):
                    self._found.append((cp.seq, len(self._found), cp))  # named with its call at the end
                    continue
            self._valid.append(cp)
        self._prune_at = {cp.seq: cp for cp in self._valid if cp.kind == "prune"}

    def _problem(self, seq: int, text: str) -> None:
        self._found.append((seq, len(self._found), text))

    def feed(self, row: Mapping[str, Any], stored: Sequence[str] = (), readable: bool = True) -> None:
        """The next row. ``stored``: what is wrong with how its values are stored (``store.StoredForm``:
        a value of the wrong type, a time not in the form the store writes), said on its line;
        ``readable`` False when a value cannot be read at all: its hash is then not recomputed (what
        the value reads as is not known), and the row counts as altered."""
        seq = row["seq"]
        issues: list[str] = []
        last = self._last
        if last is None:
            self._first_seq = seq
            if self.inside:
                expected_prev: str | None = None  # its predecessor is not read
            elif seq == 1:
                expected_prev = GENESIS
            elif seq - 1 in self._prune_at:
                expected_prev = self._prune_at[seq - 1].head_hash
            else:
                expected_prev = None
                issues.append(missing_start(seq, max((p for p in self._prune_at if p < seq), default=0)))
        elif seq != last["seq"] + 1:
            expected_prev = None
            issues.append(missing_between(last["id"], last["seq"], seq))
        else:
            expected_prev = last["hash"]
        mac = row.get("mac")
        if issues or not readable:  # records missing before it, or a value that cannot be read
            self.hashes_hold = False
        issues += stored
        if readable and record_hash(row) != row["hash"]:
            issues.append("its content does not match its hash: the record was altered")
            self.hashes_hold = False
        if self.key is not None:
            if not mac:
                runs = self._unmacd  # split where a checkpoint is, so that each part's first record is named
                if runs and runs[-1][1] == seq - 1 and seq - 1 not in self._wanted:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq, row["id"]])
            elif hmac.compare_digest(record_mac(self.key, writer_id=self.writer_id, seq=seq, record_hash=row["hash"]), mac):
                if not issues:
                    self._macd = seq
            else:
                issues.append("its MAC does not verify with the chain key: the record was altered or forged")
        if expected_prev is not None and row["prev_hash"] != expected_prev:
            before = f"call {last['id']} (seq {last['seq']})" if last else f"the prune checkpoint at seq {seq - 1}"
            issues.append(f"it does not link to {before}: records were reordered, replaced or altered")
            self.hashes_hold = False
        if issues:
            self._problem(seq, f"{_call(row)}: " + "; ".join(issues))
        self.records += 1
        self._last = {"id": row["id"], "seq": seq, "hash": row["hash"]}
        if seq in self._wanted:
            self._seen[seq] = (row["id"], row["hash"])

    def finish(self) -> "ChainCheck":
        last_seq = self._last["seq"] if self._last else None
        last_prune = max(self._prune_at, default=0)
        anchored = 0
        for cp in self._valid:
            if cp.seq in self._seen:
                call_id, head = self._seen[cp.seq]
                if head == cp.head_hash:
                    anchored = max(anchored, cp.seq)
                else:
                    self._problem(
                        cp.seq,
                        f"call {call_id} (writer {self.writer_id}, seq {cp.seq}) does not match {cp.name()}: "
                        f"the chain up to it was rewritten after the checkpoint was made",
                    )
            elif (cp.seq > last_seq) if last_seq is not None else (cp.seq > last_prune):
                end = f"ends at seq {last_seq} (call {self._last['id']})" if self._last else "has no records left"
                self._problem(
                    cp.seq,
                    f"writer {self.writer_id}: {cp.name()} points past the last record: the chain {end}, "
                    f"so {_span((last_seq or last_prune) + 1, cp.seq)} missing (the tail was truncated)",
                )
            elif cp.kind == "prune" or cp.seq <= last_prune:
                anchored = max(anchored, cp.seq)  # a prune start, or a checkpoint inside a pruned prefix
            # otherwise its record is missing inside the chain: reported as a gap already
        # A record without a MAC is vouched for only by a checkpoint after it (records written before
        # records had MACs); with the key, one that nothing vouches for was written without the key,
        # or its MAC was removed, as a rewrite with the checkpoints deleted would leave it.
        bare: list[list] = []
        for first, last, call_id in (run for run in self._unmacd if run[1] > anchored):
            if bare and bare[-1][1] == first - 1:
                bare[-1][1] = last
            else:
                bare.append([first, last, call_id])
        for first, last, call_id in bare:
            them = "it" if first == last else "them"
            self._problem(first, f"writer {self.writer_id}: {_span(first, last)} without a MAC, from call {call_id}, "
                                 f"and no keyed checkpoint comes after {them}: written without the chain key, or "
                                 "rewritten with the MACs and the checkpoints removed")
        anchored = max(anchored, self._macd)
        if self.key is None and self.checkpoints:
            self.notes.append(f"writer {self.writer_id}: no chain key given, so checkpoints' HMACs were not checked")
        if last_seq is not None and last_seq > anchored:
            first = max(anchored + 1, self._first_seq or 1)
            self.notes.append(
                f"writer {self.writer_id}: {_span(first, last_seq)} after the last checkpoint, so unanchored"
            )
        for seq, _, p in sorted(self._found, key=lambda f: (f[0], f[1])):
            if isinstance(p, CheckpointInfo):
                at = f", at call {self._seen[seq][0]}," if seq in self._seen else ""
                p = f"{p.name()}{at} is forged or altered: its HMAC does not verify with the chain key"
            self.problems.append(p)
        return self


def _event(row: Mapping[str, Any]) -> str:
    return f"approval event {row['seq']} ({row['event']} of {row['approval_id']})"


class ApprovalEventCheck:
    """Verifies the approval events' chain and the approvals table against it: feed the events in
    seq order, then ``finish(approvals)`` with every approval's row.

    Every approval must read as its latest event left it (its ``state_hash``), and every approval an
    event names must still be there. An event's MAC vouches for it and every event before it; events
    after the last one with a valid MAC (written without the chain key) are reported as unanchored.
    ``anchors``: the prune checkpoints of this chain (``APPROVAL_EVENTS_CHAIN``) that ``agentgate
    prune`` wrote when it removed the chain's oldest events; the chain may start after one.
    """

    def __init__(self, key: bytes | None, anchors: Iterable[CheckpointInfo] = ()) -> None:
        self.key = key
        self.events = 0
        self.approvals = 0
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.hashes_hold = True  # as ChainCheck's
        self._last: Mapping[str, Any] | None = None
        self._anchored = 0
        self._latest: dict[str, tuple[int, str, str]] = {}  # approval id -> (seq, event, state hash)
        self._unkeyed: dict[str, int] = {}  # writer -> events it wrote without a MAC
        self._pruned: dict[int, CheckpointInfo] = {}  # seq -> a prune checkpoint that vouches for it
        for cp in anchors:
            if cp.kind != "prune":
                self.problems.append(f"{cp.name()}: the approval events' chain has prune checkpoints only")
            elif key is not None and not cp.holds(key):
                self.problems.append(f"{cp.name()} is forged or altered: its HMAC does not verify with the chain key")
            else:
                self._pruned[cp.seq] = cp

    def feed(self, row: Mapping[str, Any], stored: Sequence[str] = (), readable: bool = True) -> None:
        """The next event; ``stored`` and ``readable`` as for ``ChainCheck.feed``."""
        seq, last = row["seq"], self._last
        issues: list[str] = []
        if last is None:
            expected_prev: str | None = GENESIS if seq == 1 else None
            if seq - 1 in self._pruned:
                expected_prev = self._pruned[seq - 1].head_hash
                self._anchored = seq - 1  # the prune checkpoint vouches for the events it replaced
            elif seq != 1:
                pruned = max((p for p in self._pruned if p < seq), default=0)
                gap = f"event {pruned + 1} is" if seq == pruned + 2 else f"events {pruned + 1}-{seq - 1} are"
                issues.append(f"{gap} missing before it, after the prune checkpoint at seq {pruned}: deleted"
                              if pruned else f"{gap} missing before it and no prune checkpoint accounts for them "
                              f"(the start of the chain was deleted)")
        elif seq != last["seq"] + 1:
            expected_prev = None
            gap = (f"event {last['seq'] + 1} is" if seq == last["seq"] + 2
                   else f"events {last['seq'] + 1}-{seq - 1} are")
            issues.append(f"{gap} missing between it and {_event(last)}: deleted")
        else:
            expected_prev = last["hash"]
        if issues or not readable:
            self.hashes_hold = False
        issues += stored
        if readable and not event_hash_holds(row):
            issues.append("its content does not match its hash: the event was altered")
            self.hashes_hold = False
        if expected_prev is not None and row["prev_hash"] != expected_prev:
            before = "the event before it" if last is not None or seq == 1 else f"the prune checkpoint at seq {seq - 1}"
            issues.append(f"it does not link to {before}: events were reordered, replaced or altered")
            self.hashes_hold = False
        if self.key is not None and row["mac"]:
            if event_mac_holds(self.key, row):
                self._anchored = seq
            else:
                issues.append("its MAC does not verify with the chain key: forged or altered")
        elif not row["mac"] and row["event"] != "existing":
            writer = row["writer"] or "(unnamed)"
            self._unkeyed[writer] = self._unkeyed.get(writer, 0) + 1
            if self.key is not None and row["event"] in DECISIONS:
                # a keyed event after it would anchor it in the chain, but vouches for nothing an
                # approver did: consoles and CLIs that decide hold the key where the store is keyed
                issues.append(f"a decision without a MAC of the chain key (written by {writer}): nothing vouches "
                              "that an approver made it")
        if issues:
            self.problems.append(f"{_event(row)}: " + "; ".join(issues))
        self.events += 1
        self._latest[row["approval_id"]] = (seq, row["event"], row["state_hash"])
        self._last = {"seq": seq, "hash": row["hash"], "event": row["event"], "approval_id": row["approval_id"]}

    def unreadable(self, approval_id: str) -> None:
        """An approval whose row holds a value that cannot be read (the caller says which): it is
        still in the store, but cannot be held to its latest event. Before ``finish``, or from the
        rows it is given."""
        self.approvals += 1
        self._latest.pop(approval_id, None)
        self.hashes_hold = False

    def finish(self, approvals: Iterable[Mapping[str, Any]]) -> "ApprovalEventCheck":
        for row in approvals:
            self.approvals += 1
            latest = self._latest.pop(row["id"], None)
            if latest is None:
                self.problems.append(f"approval {row['id']} ({row['status']}) has no event: it was written or "
                                     f"changed outside agentgate, or its events were deleted")
            elif approval_state_hash(row) != latest[2]:
                self.problems.append(f"approval {row['id']} ({row['status']}) does not read as its latest event "
                                     f"(seq {latest[0]}, {latest[1]}) left it: the row was altered afterwards")
        for approval_id, (seq, event, _) in sorted(self._latest.items(), key=lambda kv: kv[1][0]):
            self.problems.append(f"approval {approval_id} is no longer in the store, but its events are "
                                 f"(the latest: seq {seq}, {event}): it was deleted")
        last = self._last["seq"] if self._last else 0
        if self._pruned and last <= max(self._pruned):  # prune always leaves the chain's last event
            cp = self._pruned[max(self._pruned)]
            self.problems.append(f"{cp.name()} is the approval events' prune checkpoint, but no event follows it "
                                 f"(prune leaves the chain's last event): the events after seq {cp.seq} were deleted")
        if self.key is None and self.events:
            self.notes.append("no chain key given, so the approval events' MACs were not checked")
        elif last > self._anchored:
            by = ", ".join(f"{w} ({n})" for w, n in sorted(self._unkeyed.items()))
            self.notes.append(f"approval {'event' if last == self._anchored + 1 else 'events'} "
                              f"{self._anchored + 1}{'' if last == self._anchored + 1 else f'-{last}'} "
                              f"after the last keyed one, so unanchored"
                              + (f"; written without the chain key by {by}" if by else ""))
        return self
