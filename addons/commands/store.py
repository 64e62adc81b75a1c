"""Commands that read the evidence store: sessions, calls, verify, prune.

Every command takes ``--db URL`` (default: the ``db`` setting, which ``AGENTGATE_DB`` and
``agentgate.toml`` also set). Errors are one line on stderr and a non-zero exit: 1 when the store
says no (unknown id, unreachable database, a chain that does not verify), 2 for bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..core.chain import JSON_WRITTEN_OUT, ONE_LINE, WRITTEN_OUT, read_witnesses
from ..core.models import AgentSession, Call
from ..core.store import Store, StoreError, chain_key_path, display_url, load_chain_key
from ..core.store import prune as prune_store
from ..core.store import verify as verify_store
from ..settings import SettingsError, load_settings

UTC = dt.timezone.utc


class BadInput(click.ClickException):
    exit_code = 2


def progress(line: str) -> None:
    """A line on standard error saying what long work is under way, for someone at a terminal
    (a script reading standard error gets the one-line result or error alone)."""
    if sys.stderr.isatty():
        click.echo(line, err=True)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


# the seconds' fraction of an ISO 8601 time (extended or basic form), beyond its first 6 digits
_FINER = re.compile(r"(?<=[Tt ])(\d{2}(?::\d{2}:|\d{2})\d{2}[.,]\d{6})(\d+)")


def parse_when(value: str, option: str = "date", now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise), ``now``, or an age: 30m, 1h, 7d.
    The result is in UTC and within the years 1 to 9999 whatever its zone. ``T`` and ``Z`` may be
    lower case. The store keeps times to the microsecond: a fraction finer than that is rounded up
    to the next microsecond, so that a bound selects the records it names exactly (those at or
    after it, for --since; those before it, for --until and --before)."""
    now = now or dt.datetime.now(UTC)
    text = value.strip()
    usage = "use ISO 8601 (2025-01-31, 2025-01-31T12:00:00Z) or an age (30m, 1h, 7d)"
    if not text:
        raise BadInput(f"{option}: no date given: {usage}")
    if text.lower() == "now":
        return now
    try:
        if m := _AGE.match(text):
            return now - dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
        if text[-1:] == "z" and text[-2:-1].isdigit():  # UTC's designator, as Z
            text = text[:-1] + "Z"
        later = False
        if m := _FINER.search(text):  # beyond the microsecond: rounded up (see above)
            later = m.group(2).strip("0") != ""
            text = text[:m.start()] + m.group(1) + text[m.end():]
        t = dt.datetime.fromisoformat(text)
        t = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
        return t + dt.timedelta(microseconds=1) if later else t
    except (OverflowError, ValueError) as e:
        if isinstance(e, OverflowError) or re.match(r"year -?\d+ is out of range|date value out of range", str(e)):
            raise BadInput(f"{option}: {value!r} is outside the dates this can hold (years 1 to 9999 UTC)") from None
        # a field outside its range (the 30th of February, month 13, hour 25) says which
        why = f" ({e})" if re.search(r" is out of range| must be in ", str(e)) else ""
        raise BadInput(f"{option}: cannot read {value!r} as a date{why}: {usage}") from None


def _settings(db: str | None) -> Any:
    try:
        return load_settings(db=db)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None


@contextmanager
def _store(db: str | None) -> Iterator[Store]:
    store = None
    try:
        store = Store(_settings(db).db)
        yield store
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if store is not None:
            store.engine.dispose()


def _key(key_file: str | None, db: str | None) -> bytes | None:
    path = Path(key_file) if key_file else chain_key_path(_settings(db).keys)
    if key_file and not path.exists():
        raise BadInput(f"--key-file: {path} does not exist")
    if key_file and path.is_dir():
        raise BadInput(f"--key-file: {path} is a directory; give the chain key's file (keys/chain.key)")
    try:
        return load_chain_key(path)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


def _console(wide: bool = False) -> Console:
    """Rich output; a ``wide`` table off a terminal (a pipe, a file) gets the width its rows need.
    No markup and no emoji codes: what it prints comes from the store, where agents wrote it (a key
    ``q[/x]`` or ``[conceal]...`` must print as it is, not crash or hide the parameters after it, and
    a secret's ARN, ``arn:aws:secretsmanager:...:secret:db``, must not print as ``...㊙db``)."""
    return Console(highlight=False, markup=False, emoji=False,
                   width=400 if wide and not sys.stdout.isatty() else None)


def _short_time(iso: str | None) -> str:
    return "" if not iso else iso[:19].replace("T", " ")


def _text(v: Any) -> str:
    """A stored value as a cell prints it: control characters written out, so that a value an
    agent wrote cannot move the cursor, hide text or retitle the approver's terminal."""
    return "" if v is None else str(v).translate(WRITTEN_OUT)


def _line(v: Any) -> str:
    """A value that is one line (a resource, a principal, a rule, a reason) as a cell prints it:
    line breaks and tabs written out too, so that a key an agent chose cannot print lines that
    look like the gateway's own (another rule, other approvers)."""
    return "" if v is None else str(v).translate(ONE_LINE)


def broken(lines: list[str]) -> None:
    """Each line on standard error as ``BROKEN: ...``, as the export's check of the chains writes
    them (the first 50, then how many more)."""
    for line in lines[:50]:
        click.echo(f"BROKEN: {_line(line)}", err=True)
    if len(lines) > 50:
        click.echo(f"... and {len(lines) - 50} more", err=True)


def fail_unreadable(lines: list[str], what: str) -> None:
    """After the command printed what it could read: each row of the store holding a value that
    cannot be read (``core.store.readable``: a BLOB where text belongs, text that is no time, JSON
    that does not parse, a time PostgreSQL's driver cannot read), named as `agentgate verify` names
    it, on standard error; then exit 1, so that a script notices that what it got is not whole.
    ``what``: what became of them."""
    if not lines:
        return
    broken(lines)
    rows = "1 row of the store holds" if len(lines) == 1 else f"{len(lines)} rows of the store hold"
    raise click.ClickException(f"{rows} a value that cannot be read (above): {what}; `agentgate verify` checks "
                               "the whole store")


def _echo_json(value: Any) -> None:
    """JSON on standard output: what would not show as written is in JSON's escapes (``\\u202e``)."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False).translate(JSON_WRITTEN_OUT))


db_option = click.option(
    "--db", metavar="URL", default=None, help="The store: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
    "(default: the db setting, AGENTGATE_DB)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
key_option = click.option(
    "--key-file", metavar="FILE", default=None, help="The chain key (default: keys/chain.key, written by `agentgate init`)."
)


def _cut(what: str) -> None:
    """Say, on standard error, that a table was cut at --limit: a table that stops at its limit
    must not read as everything the store holds."""
    click.echo(f"({what})", err=True)


def _n(n: int, noun: str) -> str:
    """``1 chain``, ``2 chains``, ``0 chains``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _many(n: int, noun: str, of: str = "") -> str:
    """``1 call is``, ``100 calls are``; with ``of`` (`` of its 210``), always the plural."""
    return f"{n} {noun} is" if n == 1 and not of else f"{n}{of} {noun}s are"


# -- sessions ----------------------------------------------------------------------------------


@click.group("sessions")
def sessions() -> None:
    """Agent sessions: who called, from when to when, how many calls."""


@sessions.command("list")
@db_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many, newest first.")
@json_option
def sessions_list(db: str | None, limit: int, as_json: bool) -> None:
    """List sessions, most recently active first."""
    unreadable: list[str] = []
    with _store(db) as store:
        rows = store.sessions(limit=limit + 1, unreadable=unreadable)
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        _echo_json(rows)
        fail_unreadable(unreadable, "left out of the list")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("session", no_wrap=True)
    for name in ("principal", "on behalf of"):
        table.add_column(name, overflow="fold")
    table.add_column("started (UTC)", no_wrap=True, min_width=19)
    table.add_column("last seen (UTC)", no_wrap=True, min_width=19)
    table.add_column("calls", justify="right")
    for s in rows:
        party = "several (sessions show)" if s.get("on_behalf_of_varies") else _text(s["on_behalf_of"])
        table.add_row(s["id"], _text(s["principal"]), party, _short_time(s["started"]), _short_time(s["last_seen"]),
                      str(s["calls"]))
    _console(wide=True).print(table if rows else "no sessions" + (" that can be read" if unreadable else ""))
    if more:
        _cut(f"only the {_many(limit, 'most recently active session')} listed; the store holds more: --limit "
             "raises the number")
    fail_unreadable(unreadable, "left out of the list")


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@db_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many calls.")
@json_option
def sessions_show(session_id: str, db: str | None, limit: int, as_json: bool) -> None:
    """Show one session and its calls."""
    unreadable: list[str] = []
    with _store(db) as store:
        session = store.session(session_id, unreadable)
        if session is None:
            raise click.ClickException(f"no session {session_id!r} in the store at {store.where}")
        calls = store.calls(session_id=session_id, limit=limit + 1, newest_first=False, unreadable=unreadable)
        if session.get("on_behalf_of_varies"):  # whom its calls were made for, as their records name them
            session["parties"] = store.session_parties(session_id)
    more = len(calls) > limit
    calls = calls[:limit]
    what = "the session and its calls are shown without the values that cannot be read"
    if as_json:
        _echo_json({**session, "call_list": calls})
        fail_unreadable(unreadable, what)
        return
    console = _console(wide=True)
    console.print(_fields(session, AgentSession.__table__))
    console.print()
    console.print(_calls_table(calls) if calls else "no calls" + (" that can be read" if unreadable else ""))
    if more:
        count = session.get("calls")
        of = f" of its {count}" if isinstance(count, int) and count > limit else ""
        _cut(f"only the session's first {_many(limit, 'call', of)} listed; the rest are left out: --limit raises "
             "the number")
    fail_unreadable(unreadable, what)


# -- calls -------------------------------------------------------------------------------------


@click.group("calls")
def calls() -> None:
    """Recorded calls: what each agent asked AWS, what was decided, what happened."""


def _calls_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True, min_width=19)
    table.add_column("id", no_wrap=True, min_width=32)
    for name in ("principal", "action", "decision", "rule", "status", "outcome"):
        table.add_column(name, overflow="fold")
    for c in rows:
        table.add_row(_short_time(c["time"]), c["id"], _text(c["principal"]), _text(c["action"]), _text(c["decision"]),
                      _text(c["rule"]), _text(c["status"]), _text(c["outcome"]))
    return table


def _fields(row: dict[str, Any], table_of: Any = None) -> Table:
    """A row, one column a line; each column of ``table_of`` (the row's table) that the row is
    without, as one that cannot be read is, said so in its place."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in row.items():
        if isinstance(v, list | dict):
            v = json.dumps(v, ensure_ascii=False)
        table.add_row(k, _text(v))
    for column in table_of.columns if table_of is not None else ():
        if column.name not in row:
            table.add_row(column.name, "(cannot be read)")
    return table


@calls.command("list")
@click.option("--principal", metavar="SUB", help="Only calls by this principal (the token's sub).")
@click.option("--on-behalf-of", "on_behalf_of", metavar="SUB", help="Only calls made for this subject (act.sub).")
@click.option("--action", metavar="ACTION", help="Only this action, e.g. s3:GetObject; * matches anything (s3:*).")
@click.option("--decision", type=click.Choice(["allow", "deny", "approve"], case_sensitive=False),
              help="Only calls with this decision.")
@click.option("--outcome", type=click.Choice(["forwarded", "refused", "held", "failed", "client_gone", "tunnelled"],
                                             case_sensitive=False),
              help="Only calls with this outcome (what the agent got).")
@click.option("--since", metavar="WHEN", help="From this time on: ISO 8601 (UTC unless given) or an age (1h, 7d).")
@click.option("--until", metavar="WHEN", help="Before this time: ISO 8601 or an age.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many, newest first.")
@db_option
@json_option
def calls_list(principal: str | None, on_behalf_of: str | None, action: str | None, decision: str | None,
               outcome: str | None, since: str | None, until: str | None, limit: int, db: str | None,
               as_json: bool) -> None:
    """List calls, newest first."""
    for option, value in (("--principal", principal), ("--on-behalf-of", on_behalf_of), ("--action", action)):
        if value is not None and not value.strip():
            raise BadInput(f"{option} is empty: give a value, or leave the option out to list every call")
    start = parse_when(since, "--since") if since is not None else None
    end = parse_when(until, "--until") if until is not None else None
    if start and end and start >= end:
        raise BadInput(f"--since ({start.isoformat()}) is not before --until ({end.isoformat()})")
    unreadable: list[str] = []
    with _store(db) as store:
        rows = store.calls(principal=principal, action=action, decision=decision and decision.lower(), since=start,
                           until=end, limit=limit + 1, on_behalf_of=on_behalf_of, outcome=outcome and outcome.lower(),
                           unreadable=unreadable)
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        _echo_json(rows)
    else:
        _console(wide=True).print(_calls_table(rows) if rows else "no calls" + (" that can be read" if unreadable else ""))
        if more:
            _cut(f"only the newest {_many(limit, 'matching call')} listed; more match: --limit raises the number, "
                 "--since and --until narrow the period")
    fail_unreadable(unreadable, "left out of the list")


@calls.command("show")
@click.argument("call_id", metavar="ID")
@db_option
@json_option
def calls_show(call_id: str, db: str | None, as_json: bool) -> None:
    """Show everything recorded about one call."""
    unreadable: list[str] = []
    with _store(db) as store:
        call = store.call(call_id, unreadable)
        if call is None:
            raise click.ClickException(f"no call {call_id!r} in the store at {store.where}")
    if as_json:
        _echo_json(call)
    else:
        _console().print(_fields(call, Call.__table__))
    fail_unreadable(unreadable, "the call is shown without the values that cannot be read")


# -- verify and prune --------------------------------------------------------------------------


@click.command("verify")
@db_option
@key_option
@click.option("--witness", "witness_files", multiple=True, metavar="FILE",
              help="A file holding the gateway's 'chain head' log lines (its log, a journal export; "
                   "repeatable): every head it saw must still be in the store.")
@json_option
def verify(db: str | None, key_file: str | None, witness_files: tuple[str, ...], as_json: bool) -> None:
    """Check the hash chains and checkpoints: every record unaltered, none missing or reordered;
    every value stored as the store writes it (a time in its one form, none of another type);
    every approval a recorded call ran under still there, naming the principal and approver its
    record names; the approval events' chain, with every approval as its latest event left it;
    every policy version a record names with its text, unchanged; and every session naming whom
    its calls name. With --witness, also every chain head the gateway logged (kept outside the
    store): the newest records or approval events deleted with every checkpoint after them show
    only so."""
    url = _settings(db).db
    key = _key(key_file, db)
    witnesses: list = []
    witness_notes: list[str] = []
    for name in witness_files:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                witnesses += read_witnesses(f, name, witness_notes)
        except OSError as e:
            raise click.ClickException(f"cannot read the witness {name}: {e.strerror or e}") from None
    if witness_files and not witnesses:
        raise click.ClickException(f"no 'chain head' lines in {', '.join(witness_files)}: a witness is the "
                                   "gateway's log (agentgate.chain lines), kept outside the store"
                                   + (f" ({_line(witness_notes[0])})" if witness_notes else ""))
    try:
        progress(f"verifying the chains of {display_url(url)} ...")
        result = verify_store(url, key, witnesses)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    result.notes[:0] = witness_notes
    if as_json:
        _echo_json({"ok": result.ok, "chains": result.chains, "records": result.records,
                    "checkpoints": result.checkpoints, "approvals": result.approvals,
                    "approval_events": result.approval_events, "approvals_held": result.approvals_held,
                    "witnesses": result.witnesses, "policy_versions": result.policy_versions,
                    "sessions": result.sessions, "problems": result.problems,
                    "notes": result.notes})
    else:
        for note in result.notes:
            click.echo(f"note: {_line(note)}")
        for problem in result.problems[:50]:
            click.echo(f"BROKEN: {_line(problem)}")
        if len(result.problems) > 50:
            click.echo(f"... and {_n(len(result.problems) - 50, 'more problem')}")
        if result.ok:
            click.echo(f"OK ({display_url(url)}): {_n(result.records, 'record')} in {_n(result.chains, 'chain')}, "
                       f"{_n(result.checkpoints, 'checkpoint')}"
                       + ("" if key else " (no chain key: checkpoints not authenticated)")
                       + (f"; {_n(result.approvals, 'approval')} as the records of the calls under "
                          + ("them name them" if result.approvals != 1 else "it name it") if result.approvals else "")
                       + (f"; {_n(result.approvals_held, 'approval')} as {_n(result.approval_events, 'approval event')} "
                          + ("left them" if result.approvals_held != 1 else "left it")
                          if result.approval_events or result.approvals_held else "")
                       + (f"; {_n(result.policy_versions, 'policy version')} as stored" if result.policy_versions else "")
                       + (f"; {_n(result.sessions, 'session')} as "
                          + ("their calls name them" if result.sessions != 1 else "its calls name it")
                          if result.sessions else "")
                       + (f"; {_n(result.witnesses, 'witnessed chain head')} held" if result.witnesses else ""))
    if not result.ok:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        hint = ""
        # a wrong key fails every MAC and nothing else: with a record altered, unreadable or out of
        # its place as well, the MACs that fail say that it was altered, not that the key is wrong
        if key is not None and result.hashes_hold and all("with the chain key" in p for p in result.problems):
            hint = ("; every problem is a MAC that does not verify: if nothing was forged, this is not the key "
                    "this store was written with (the gateway's keys/chain.key)")
        raise click.ClickException(f"the store does not verify: {result.problems[0]}{more}{hint}")


@click.command("prune")
@click.option("--before", "before", metavar="WHEN", required=True,
              help="Delete records older than this: ISO 8601 (UTC unless given) or an age (90d).")
@db_option
@key_option
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
def prune(before: str, db: str | None, key_file: str | None, dry_run: bool) -> None:
    """Delete records older than a date; what is left still verifies.

    Each chain's oldest records (up to the first one not older than --before) are replaced by a
    prune checkpoint, keyed with the chain key, that `agentgate verify` accepts as the chain's start.
    Sessions last seen before the date go too, and so do approvals settled before it (used, expired,
    revoked, or denied with the denial over) that no call left names, with the oldest events of
    the approval events' chain, also up to a prune checkpoint. Approvals left pending or approved
    past an expiry before the date are marked expired. A chain that does not verify is not pruned.
    """
    when = parse_when(before, "--before")
    if when > dt.datetime.now(dt.timezone.utc):
        raise BadInput(f"--before {when.isoformat()} is still to come: prune deletes records older than a time "
                       "that has passed (an age such as 90d, or a date before today)")
    url = _settings(db).db
    key = _key(key_file, db)
    click.echo(f"pruning records before {when.isoformat()} ...", err=True)
    try:
        result = prune_store(url, when, key, dry_run=dry_run)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {_n(result.records, 'record')} from {_n(result.chains, 'chain')}, "
               f"{_n(result.sessions, 'session')}, {_n(result.approvals, 'approval')} and "
               f"{_n(result.approval_events, 'approval event')}"
               + (f"; {'would mark' if dry_run else 'marked'} {_n(result.expired, 'approval')} left past "
                  f"{'their' if result.expired != 1 else 'its'} expiry expired" if result.expired else ""))


COMMANDS = (sessions, calls, verify, prune)


def register(group: click.Group) -> None:
    """Add these commands to the ``agentgate`` group."""
    for command in COMMANDS:
        group.add_command(command)


def main() -> None:  # pragma: no cover - run as ``python -m addons.commands.store``
    group = click.Group("agentgate", help="agentgate's store commands.")
    register(group)
    group(prog_name="agentgate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
