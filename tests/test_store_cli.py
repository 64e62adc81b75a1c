"""The store's commands: sessions, calls, verify, prune (CliRunner, and once as a real process)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, update
from sqlalchemy.pool import NullPool

from addons.commands.store import parse_when, register
from addons.core.models import Call
from addons.core.records import Record
from addons.core.store import Store
from tests.support.postgres import shared_server

from tests.support.home import CHAIN_KEY as KEY
from tests.support.approvals import insert_approvals
UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"id", "time", "principal", "on_behalf_of", "action", "service", "operation", "access_level",
                "decision", "rule", "status", "approval_id"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agentgate.db'}"
    return shared_server().fresh_database()


@pytest.fixture
def calls(db_url: str, home: Path) -> list[Record]:
    """Three recorded calls in two sessions, oldest first."""
    now = time.time()
    records = [
        Record(session_id="s-1", principal="alice", on_behalf_of="dana", service="s3", operation="GetObject",
               action="s3:GetObject", access_level="Read", decision="allow", rule="read-only", status=200,
               outcome="forwarded", time=now - 3 * 86400),
        Record(session_id="s-1", principal="alice", service="s3", operation="PutObject", action="s3:PutObject",
               access_level="Write", decision="deny", rule="contractors-never-write", status=403, outcome="refused",
               time=now - 7200),
        Record(session_id="s-2", principal="bob", service="ec2", operation="TerminateInstances",
               action="ec2:TerminateInstances", access_level="Write", decision="approve", approval_id="ap-1",
               status=400, outcome="held", time=now - 60),
    ]
    store = Store(db_url, chain_key=KEY)
    store.migrate()
    insert_approvals(db_url, [{"id": "ap-1", "kind": "call", "binding_hash": "b" * 64, "principal": "bob",
                               "action": "ec2:TerminateInstances", "status": "pending",
                               "requested": dt.datetime.now(dt.timezone.utc)}], chain_key=KEY)  # the held call's
    store.start()
    for r in records:
        store.write_sync(r)
    store.close()
    return records


@pytest.fixture
def cli():
    group = click.Group("agentgate")
    register(group)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(group, list(args), catch_exceptions=False)

    return run


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- reading -------------------------------------------------------------------------------------------


def test_calls_list_json(cli, db_url: str, calls: list[Record]) -> None:
    result = cli("calls", "list", "--db", db_url, "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [c["id"] for c in items] == [r.id for r in reversed(calls)]
    assert all(SUMMARY_KEYS <= set(c) for c in items)
    first = items[-1]
    assert {k: first[k] for k in ("principal", "on_behalf_of", "action", "service", "operation", "access_level",
                                  "decision", "rule", "status", "approval_id")} == {
        "principal": "alice", "on_behalf_of": "dana", "action": "s3:GetObject", "service": "s3",
        "operation": "GetObject", "access_level": "Read", "decision": "allow", "rule": "read-only", "status": 200,
        "approval_id": None}
    assert dt.datetime.fromisoformat(first["time"]) == dt.datetime.fromtimestamp(calls[0].time, UTC).replace(
        microsecond=round(calls[0].time * 1e6) % 1_000_000)
    assert first["time"].endswith("Z")


def test_calls_list_filters(cli, db_url: str, calls: list[Record]) -> None:
    def ids(*args: str) -> list[str]:
        result = cli("calls", "list", "--db", db_url, "--json", *args)
        assert result.exit_code == 0, result.output
        return [c["id"] for c in json.loads(result.stdout)]

    a, b, c = (r.id for r in calls)
    assert ids("--principal", "alice") == [b, a]
    assert ids("--action", "s3:*") == [b, a]
    # IAM compares action names without regard to case, and so do the policies and this filter
    assert ids("--action", "S3:GETOBJECT") == ids("--action", "s3:getobject") == [a]
    assert ids("--action", "S3:*") == [b, a] and ids("--action", "s3:Get_bject") == []  # _ is no wildcard
    assert ids("--decision", "approve") == [c]
    assert ids("--since", "1d") == [c, b]
    assert ids("--since", "3h", "--until", "30m") == [b]
    assert ids("--until", (dt.datetime.now(UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")) == [a]
    assert ids("--limit", "1") == [c]
    assert ids("--on-behalf-of", "dana") == [a] and ids("--on-behalf-of", "erin") == []
    assert ids("--outcome", "held") == [c] and ids("--outcome", "REFUSED") == [b]
    assert ids("--decision", "Approve") == [c]  # as the policies write decisions, in any case
    # an empty filter (an unset variable in a script) is refused, not read as "everyone"
    for option in ("--principal", "--on-behalf-of", "--action"):
        assert "is empty" in one_line_error(cli("calls", "list", "--db", db_url, option, ""), code=2)


def test_calls_list_table_and_show(cli, db_url: str, calls: list[Record]) -> None:
    result = cli("calls", "list", "--db", db_url)
    assert result.exit_code == 0, result.output
    for r in calls:
        assert r.id in result.stdout and r.action in result.stdout
    shown = cli("calls", "show", calls[2].id, "--db", db_url)
    assert shown.exit_code == 0, shown.output
    assert "ec2:TerminateInstances" in shown.stdout and "ap-1" in shown.stdout and "prev_hash" in shown.stdout
    as_json = json.loads(cli("calls", "show", calls[2].id, "--db", db_url, "--json").stdout)
    assert as_json["id"] == calls[2].id and as_json["seq"] == 3


def test_sessions_list_and_show(cli, db_url: str, calls: list[Record]) -> None:
    listed = json.loads(cli("sessions", "list", "--db", db_url, "--json").stdout)
    assert [(s["id"], s["principal"], s["calls"]) for s in listed] == [("s-2", "bob", 1), ("s-1", "alice", 2)]
    table = cli("sessions", "list", "--db", db_url)
    assert "s-1" in table.stdout and "alice" in table.stdout
    shown = cli("sessions", "show", "s-1", "--db", db_url, "--json")
    assert [c["id"] for c in json.loads(shown.stdout)["call_list"]] == [calls[0].id, calls[1].id]
    assert calls[1].id in cli("sessions", "show", "s-1", "--db", db_url).stdout
    # s-1's calls were made one for dana, one for no one: the session names neither, and says so
    assert [(s["on_behalf_of"], s["on_behalf_of_varies"]) for s in listed] == [(None, False), (None, True)]
    assert "several (sessions show)" in table.stdout and "dana" not in table.stdout
    assert json.loads(shown.stdout)["parties"] == ["dana", None]
    assert "dana" in cli("sessions", "show", "s-1", "--db", db_url).stdout


def test_a_table_cut_at_its_limit_says_so(cli, db_url: str, calls: list[Record]) -> None:
    """`sessions show` heads its table with the session's count of calls; a table that stops at
    --limit (100 by default) without a word read as every call there is: an assessor listing a
    session of 210 calls saw its first 100 and not the delete it ended with."""
    a, b, c = (r.id for r in calls)
    cut = cli("calls", "list", "--db", db_url, "--limit", "2")
    assert c in cut.stdout and b in cut.stdout and a not in cut.stdout
    assert cut.stderr.strip() == ("(only the newest 2 matching calls are listed; more match: --limit raises the "
                                  "number, --since and --until narrow the period)")
    assert cli("calls", "list", "--db", db_url, "--limit", "3").stderr == ""  # all of them: nothing to say
    assert cli("calls", "list", "--db", db_url, "--principal", "alice", "--limit", "2").stderr == ""

    shown = cli("sessions", "show", "s-1", "--db", db_url, "--limit", "1")
    assert a in shown.stdout and b not in shown.stdout
    assert shown.stderr.strip() == ("(only the session's first 1 of its 2 calls are listed; the rest are left out: "
                                    "--limit raises the number)")
    assert cli("sessions", "show", "s-1", "--db", db_url, "--limit", "2").stderr == ""

    listed = cli("sessions", "list", "--db", db_url, "--limit", "1")
    assert "s-2" in listed.stdout and "s-1" not in listed.stdout
    assert listed.stderr.strip() == ("(only the 1 most recently active session is listed; the store holds more: "
                                     "--limit raises the number)")
    assert cli("sessions", "list", "--db", db_url, "--limit", "2").stderr == ""
    # JSON is for scripts: the same rows, standard output alone
    as_json = cli("calls", "list", "--db", db_url, "--limit", "2", "--json")
    assert [x["id"] for x in json.loads(as_json.stdout)] == [c, b] and as_json.stderr == ""
    assert [x["id"] for x in json.loads(cli("sessions", "show", "s-1", "--db", db_url, "--limit", "1",
                                            "--json").stdout)["call_list"]] == [a]


def test_the_db_setting_is_the_default(cli, db_url: str, calls: list[Record], monkeypatch) -> None:
    monkeypatch.setenv("AGENTGATE_DB", db_url)
    result = cli("calls", "list", "--json")
    assert len(json.loads(result.stdout)) == 3


# -- errors ----------------------------------------------------------------------------------------------


def test_unknown_ids(cli, db_url: str, calls: list[Record]) -> None:
    assert "no call 'nope' in the store at" in one_line_error(cli("calls", "show", "nope", "--db", db_url))
    assert "no session 'nope'" in one_line_error(cli("sessions", "show", "nope", "--db", db_url))


@pytest.mark.parametrize("when, why", [("yesterday", ""), ("2025-13-01", " (month must be in 1..12)"), ("7 parsecs", ""),
                                       ("2026-02-30", " (day is out of range for month)"),
                                       ("2026-11-28T25:00", " (hour must be in 0..23)")])
def test_bad_dates(cli, home: Path, when: str, why: str) -> None:
    """A date that is no date is read as none, saying which field is out of its range: the 30th of
    February was said to be outside the years 1 to 9999."""
    line = one_line_error(cli("calls", "list", "--since", when, "--db", "sqlite:///unused.db"), code=2)
    assert f"--since: cannot read {when!r} as a date{why}: use ISO 8601" in line
    assert "outside the dates" not in line


@pytest.mark.parametrize("command", [("calls", "list", "--since"), ("export", "--format", "jsonl", "-o", "-", "--until"),
                                     ("report", "-o", "r.html", "--since"), ("prune", "--before")])
@pytest.mark.parametrize("when, words", [
    ("99999999d", "is outside the dates this can hold"),
    ("0001-01-01T00:00:00+05:00", "is outside the dates this can hold"),
    ("9999-12-31T23:00:00-05:00", "is outside the dates this can hold"),
    ("", "no date given"),
])
def test_dates_out_of_range_or_empty_are_bad_input(home: Path, command, when: str, words: str) -> None:
    from addons.cli import main

    line = one_line_error(CliRunner().invoke(main, [*command, when, "--db", "sqlite:///unused.db"]), code=2)
    assert f"{command[-1]}: " in line and words in line


def test_since_after_until(cli, home: Path) -> None:
    line = one_line_error(cli("calls", "list", "--since", "1h", "--until", "2h", "--db", "sqlite:///x.db"), code=2)
    assert "is not before --until" in line


def test_unreachable_database(cli, home: Path) -> None:
    started = time.monotonic()
    line = one_line_error(cli("calls", "list", "--db", "postgresql+psycopg://postgres@127.0.0.1:9/agentgate"))
    assert "cannot read the store at postgresql+psycopg://postgres@127.0.0.1:9/agentgate" in line
    assert time.monotonic() - started < 5


def test_missing_sqlite_store(cli, home: Path) -> None:
    line = one_line_error(cli("sessions", "list"))
    assert f"there is no store at {home / 'agentgate.db'}: run `agentgate init`" in line
    assert not (home / "agentgate.db").exists()


def test_bad_url(cli, home: Path) -> None:
    assert "is not a database URL" in one_line_error(cli("calls", "list", "--db", "not a url"))


def test_a_url_whose_port_or_brackets_cannot_be_read_is_one_line_for_every_command(home: Path) -> None:
    """A PostgreSQL URL with a port that is no number, or an IPv6 address's [ without its ], ended
    every command that takes --db (and init, with AGENTGATE_DB) in a ValueError traceback, where a
    port out of range got one line. Each is now one line from the one place that reads a store's URL,
    which hides its password."""
    from addons.cli import main

    runner = CliRunner()
    for url, said in (
        ("postgresql+psycopg://u:secret@127.0.0.1:notaport/db",
         "'postgresql+psycopg://u:***@127.0.0.1:notaport/db' is not a database URL: its port 'notaport' is not a "
         "number from 1 to 65535; use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"),
        ("postgresql+psycopg://u@[::1/db",
         "'postgresql+psycopg://u@[::1/db' is not a database URL: the host '[::1' opens a [ (an IPv6 address) "
         "without its ]; use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"),
        ("postgresql+psycopg://u@127.0.0.1:99999/db",
         "'postgresql+psycopg://u@127.0.0.1:99999/db' is not a database URL: its port 99999 is not a number from 1 "
         "to 65535"),
    ):
        for command in (["calls", "list"], ["calls", "show", "c-1"], ["sessions", "list"], ["verify"],
                        ["prune", "--before", "90d"], ["approvals", "list"], ["approvals", "show", "ap-1"],
                        ["access", "list"], ["export", "--format", "jsonl", "-o", "-"], ["report", "-o", "-"],
                        ["replay", "s-1", "--dry-run"], ["policy", "versions"], ["policy", "show", "abcd"]):
            result = runner.invoke(main, [*command, "--db", url])
            assert result.exit_code == 1 and "Traceback" not in result.output, (command, url, result.output)
            assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {said}"), (command, result.stderr)
            assert "secret" not in result.output
        result = runner.invoke(main, ["init"], env={"AGENTGATE_DB": url})
        assert result.exit_code == 1 and result.stderr.strip().startswith(f"Error: {said}"), result.output


def test_a_store_file_this_user_cannot_open_is_said_to_be_so(home: Path) -> None:
    """A store at mode 000 was told "unable to open database file", SQLite's words, without why."""
    import shutil

    store = Store(f"sqlite:///{home / 'agentgate.db'}")
    store.migrate()
    store.engine.dispose()
    (home / "agentgate.db").chmod(0o000)
    prefix = []
    if os.geteuid() == 0:  # root passes over a file's mode unless it drops the capabilities to
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    agentgate = str(Path(sys.executable).parent / "agentgate")
    for command, verb in ((["calls", "list"], "read"), (["verify"], "read"), (["init"], "open")):
        p = subprocess.run([*prefix, agentgate, *command], env={**os.environ, "AGENTGATE_HOME": str(home)},
                           capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stderr, (command, p.stderr)
        assert lines[0] == (f"Error: cannot {verb} the store at sqlite:///{home / 'agentgate.db'}: unable to open "
                            f"database file: the store's file {home / 'agentgate.db'}: Permission denied; give this "
                            "user access to it, or run agentgate as its owner"), (command, lines)


def test_parse_when() -> None:
    now = dt.datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now=now) == dt.datetime(2026, 1, 3, 12, 0, tzinfo=UTC)
    assert parse_when("90m", now=now) == dt.datetime(2026, 1, 10, 10, 30, tzinfo=UTC)
    assert parse_when("2026-01-01", now=now) == dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_when("2026-01-01T05:00:00+02:00", now=now) == dt.datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert parse_when("2026-01-01T05:00Z", now=now) == dt.datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert parse_when("now", now=now) == now


def test_parse_when_reads_lower_case_t_and_z_and_rounds_a_finer_fraction_up() -> None:
    """``t`` and ``z`` may be lower case, as ISO 8601 readers commonly take them; the store keeps
    microseconds, so a fraction finer than that is rounded up to the next one (a bound then selects
    exactly the records it names), carrying into the seconds, the day and the year; digits beyond
    the sixth that are all zeros change nothing."""
    at = dt.datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert parse_when("2026-11-28t10:00:00z") == parse_when("2026-11-28T10:00:00z") == at
    assert parse_when("2026-11-28 10:00z") == parse_when("20261128t100000z") == at
    assert parse_when("2026-11-28t12:00:00+02:00") == at
    assert parse_when("2026-11-28T10:00:00.1234567Z") == at.replace(microsecond=123457)
    assert parse_when("2026-11-28T10:00:00.1234561z") == at.replace(microsecond=123457)  # up, not to the nearest
    assert parse_when("2026-11-28T10:00:00.0000000001Z") == at.replace(microsecond=1)
    assert parse_when("2026-11-28T10:00:00.1234560000Z") == at.replace(microsecond=123456)
    assert parse_when("20261128T100000,1234567Z") == at.replace(microsecond=123457)  # basic form, decimal comma
    assert parse_when("2026-11-28T12:00:00.9999991+02:00") == at.replace(second=1)
    assert parse_when("2026-12-31T23:59:59.99999999Z") == dt.datetime(2027, 1, 1, tzinfo=UTC)
    for text, says in (("9999-12-31T23:59:59.9999999Z", "outside the dates this can hold"),
                       ("2026-11-28T10:00:00zz", "cannot read"), ("2026-11-28T10:00:00.5zz", "cannot read")):
        with pytest.raises(click.ClickException) as e:
            parse_when(text, "--since")
        assert e.value.exit_code == 2 and says in e.value.message, e.value.message


def test_since_and_until_finer_than_a_microsecond_select_exactly_the_records_they_name(cli, db_url: str,
                                                                                        home: Path) -> None:
    """Two records a microsecond apart, and a bound half a microsecond after the first: --since
    takes the second alone (the first is before the bound), --until the first alone (cut to the
    microsecond, the bound would take the first record as being at or after it)."""
    at = dt.datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    store = Store(db_url, chain_key=KEY)
    store.migrate()
    store.start()
    first, second = (Record(principal="alice", service="s3", operation="GetObject", action="s3:GetObject",
                            decision="allow", rule="read-only", status=200, outcome="forwarded",
                            time=(at + dt.timedelta(microseconds=us)).timestamp()) for us in (0, 1))
    for r in (first, second):
        store.write_sync(r)
    store.close()

    def ids(*args: str) -> list[str]:
        result = cli("calls", "list", "--db", db_url, "--json", *args)
        assert result.exit_code == 0, result.output
        return [c["id"] for c in json.loads(result.stdout)]

    for bound in ("2026-11-28T10:00:00.0000005Z", "2026-11-28t10:00:00.0000005z"):
        assert ids("--since", bound) == [second.id], bound
        assert ids("--until", bound) == [first.id], bound
    assert ids("--since", "2026-11-28t10:00:00z", "--until", "2026-11-28t10:00:00.000001z") == [first.id]


# -- verify and prune ------------------------------------------------------------------------------------


def test_verify_ok(cli, db_url: str, calls: list[Record]) -> None:
    result = cli("verify", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert f"OK ({db_url}): 3 records in 1 chain, 1 checkpoint" in result.stdout
    assert "not authenticated" not in result.stdout  # the key came from keys/chain.key
    assert json.loads(cli("verify", "--db", db_url, "--json").stdout)["ok"] is True


def test_verify_counts_one_in_the_singular_and_others_in_the_plural(cli, db_url: str, calls: list[Record]) -> None:
    """Each count verify prints agrees with its noun, and so do the words after it: one chain, one
    checkpoint, one approval; three records, two sessions; and a store with one session."""
    said = cli("verify", "--db", db_url).stdout.strip().splitlines()[-1]
    assert said == (f"OK ({db_url}): 3 records in 1 chain, 1 checkpoint; 1 approval as the records of the calls "
                    "under it name it; 1 approval as 1 approval event left it; 2 sessions as their calls name them"), said
    store = Store(db_url, chain_key=KEY, writer_id="gw-2")  # another gateway: a second chain
    store.start()
    store.write_sync(Record(session_id="s-3", principal="carol", service="s3", operation="ListBuckets",
                            action="s3:ListAllMyBuckets", access_level="List", decision="allow", rule="read-only",
                            status=200, outcome="forwarded"))
    store.close()
    said = cli("verify", "--db", db_url).stdout.strip().splitlines()[-1]
    assert said.startswith(f"OK ({db_url}): 4 records in 2 chains, 2 checkpoints;") and "3 sessions" in said, said


def test_verify_names_the_first_broken_record(cli, db_url: str, calls: list[Record]) -> None:
    with create_engine(db_url, poolclass=NullPool).begin() as c:
        c.execute(update(Call).where(Call.id == calls[1].id).values(decision="allow"))
    result = cli("verify", "--db", db_url)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith(f"Error: the store does not verify: call {calls[1].id} (writer ")
    assert "its content does not match its hash" in line
    assert f"BROKEN: call {calls[1].id}" in result.stdout


def test_verify_with_the_wrong_key(cli, db_url: str, calls: list[Record], home: Path) -> None:
    (home / "other.key").write_bytes(b"x" * 32)
    line = one_line_error(cli("verify", "--db", db_url, "--key-file", str(home / "other.key")))
    assert "its MAC does not verify with the chain key" in line
    assert "does not exist" in one_line_error(cli("verify", "--db", db_url, "--key-file", "/nonexistent"), code=2)


def test_prune(cli, db_url: str, calls: list[Record]) -> None:
    dry = cli("prune", "--before", "1d", "--db", db_url, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 record from 1 chain" in dry.stdout
    result = cli("prune", "--before", "1d", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "deleted 1 record from 1 chain, 0 sessions, 0 approvals and 0 approval events" in result.stdout
    assert cli("verify", "--db", db_url).exit_code == 0
    assert len(json.loads(cli("calls", "list", "--db", db_url, "--json").stdout)) == 2
    listed = json.loads(cli("sessions", "list", "--db", db_url, "--json").stdout)
    sessions = {s["id"]: s["calls"] for s in listed}
    assert sessions == {"s-1": 1, "s-2": 1}  # s-1 counts the call it has left
    [left] = [c for c in json.loads(cli("calls", "list", "--db", db_url, "--json").stdout) if c["session_id"] == "s-1"]
    [s1] = [s for s in listed if s["id"] == "s-1"]  # and names whom that call was made for: one party now
    assert (s1["on_behalf_of"], s1["on_behalf_of_varies"]) == (left["on_behalf_of"], False)
    assert one_line_error(cli("prune", "--before", "soon", "--db", db_url), code=2)
    future = cli("prune", "--before", "2999-01-01", "--db", db_url)
    assert one_line_error(future, code=2) and "still to come" in future.output
    assert len(json.loads(cli("calls", "list", "--db", db_url, "--json").stdout)) == 2  # nothing deleted


def test_verify_holds_the_store_to_the_heads_the_gateway_logged(tmp_path: Path, issuer, moto) -> None:
    """A real gateway logs its chain's head at each checkpoint (and when it stops): the newest
    records deleted with every checkpoint after them pass `verify`, and fail `verify --witness` on
    the gateway's log, which names the head it saw. Bad witness files are refused with a reason."""
    import sqlite3

    from tests.support.gateway import Gateway

    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
    with gw:
        (tmp_path / "t.jwt").write_text(issuer.mint("witnessed", groups=["data-agents"]))
        env = gw.agent_env(tmp_path / "t.jwt", tmp_path / "agent")
        code = "import boto3\nfor _ in range(3): boto3.client('sts').get_caller_identity()"
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    log = gw.log()
    heads = [line for line in log.splitlines() if "INFO agentgate.chain: chain head {" in line]
    assert heads and '"seq": 3' in heads[-1], log[-3000:]
    assert gw.cli("verify", "--witness", str(gw.log_path)).returncode == 0
    with sqlite3.connect(gw.db_path) as db:  # the newest record and every checkpoint after it, gone
        db.execute("DELETE FROM calls WHERE seq = 3")
        db.execute("DELETE FROM checkpoints")
    assert gw.cli("verify").returncode == 0  # the chain alone cannot tell
    p = gw.cli("verify", "--witness", str(gw.log_path), check=False)
    assert p.returncode == 1
    assert p.stderr.strip().startswith(f"Error: the store does not verify: {gw.log_path}:")
    assert "chain at record 3, which the store no longer holds (its chain ends at record 2)" in p.stderr
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    p = gw.cli("verify", "--witness", str(empty), check=False)
    assert p.returncode == 1 and "no 'chain head' lines in" in p.stderr and "Traceback" not in p.stderr
    empty.write_text("x INFO agentgate.chain: chain head {\"chain\": 1}\n")
    p = gw.cli("verify", "--witness", str(empty), check=False)
    assert p.returncode == 1 and f"{empty}:1: a 'chain head' line without a head that can be read" in p.stderr
    # a line that cannot be read beside the gateway's own is a note: the heads that can be read still hold
    lines = gw.log_path.read_text()
    empty.write_text(lines + "x INFO agentgate.chain: chain head {\"chain\": 1}\n")
    p = gw.cli("verify", "--witness", str(empty), check=False)
    assert p.returncode == 1 and "which the store no longer holds" in p.stderr
    assert f"note: {empty}:{len(lines.splitlines()) + 1}: a 'chain head' line without a head" in p.stdout
    p = gw.cli("verify", "--witness", str(tmp_path / "missing.log"), check=False)
    assert p.returncode == 1 and "cannot read the witness" in p.stderr


# -- as a real process -----------------------------------------------------------------------------------


def test_commands_run_as_a_process(home: Path) -> None:
    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY)
    store.migrate()
    store.start()
    denied = Record(principal="alice", action="s3:PutObject", decision="deny")
    store.write_sync(Record(principal="alice", action="s3:GetObject", decision="allow"))
    store.write_sync(denied)
    store.close()
    env = {**os.environ, "AGENTGATE_DB": url}
    script = Path(sys.executable).parent / "agentgate"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "addons.commands.store"]
    listed = subprocess.run([*base, "calls", "list", "--json", "--decision", "deny"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)] == [denied.id]
    missing = subprocess.run([*base, "calls", "show", "nope"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [f"Error: no call 'nope' in the store at {url}"]


def test_what_the_system_refuses_and_arguments_that_are_not_text_are_one_line_errors(db_url: str, calls, tmp_path):
    """Through the `agentgate` command itself: a file name too long for the system, a key file that
    is a directory, bytes that are not UTF-8 in an argument (Python hands them over as surrogates),
    and a key that is not the store's, each told in one line."""
    from addons.cli import main

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)
    long_name = str(tmp_path / ("a" * 300))
    for args, code, words in (
        (["verify", "--db", db_url, "--key-file", long_name], 1, "File name too long"),
        (["policy", "check", long_name], 1, "File name too long"),
        (["verify", "--db", db_url, "--key-file", str(tmp_path)], 2, "is a directory"),
        (["calls", "show", "\udcff\udcfe", "--db", db_url], 2, "not valid text"),
        (["calls", "list", "--principal", "\udcff", "--db", db_url], 2, "not valid text"),
    ):
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert words in result.stderr and "Traceback" not in result.output, (args, result.output)
        assert lines[-1].startswith("Error: "), (args, result.stderr)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"x" * 32)
    result = run("verify", "--db", db_url, "--key-file", str(wrong))
    assert result.exit_code == 1 and "this is not the key this store was written with" in result.stderr


def test_long_work_says_what_it_is_doing_on_a_terminal(db_url: str, calls, tmp_path) -> None:
    """verify and export print a line of progress to a terminal's standard error; a script reading
    standard error (a pipe) gets the result or the one-line error alone."""
    import os
    import pty

    agentgate = Path(sys.executable).parent / "agentgate"
    for args, line in ((["verify", "--db", db_url], "verifying the chains of"),
                       (["export", "--format", "jsonl", "-o", str(tmp_path / "c.jsonl"), "--db", db_url],
                        "reading the records of")):
        master, slave = pty.openpty()
        p = subprocess.run([str(agentgate), *args], stdout=subprocess.PIPE, stderr=slave, timeout=120,
                           env={**os.environ, "AGENTGATE_HOME": str(tmp_path)})
        os.close(slave)
        shown = os.read(master, 65536).decode(errors="replace")
        os.close(master)
        assert p.returncode == 0 and line in shown, (args, shown)
        piped = subprocess.run([str(agentgate), *args], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "AGENTGATE_HOME": str(tmp_path)})
        assert piped.returncode == 0 and line not in piped.stderr


def test_approvals_list_cut_at_its_limit_says_so(home: Path, db_url: str) -> None:
    """As `calls list` and `sessions list`: an approvals table that stops at --limit says the store
    holds more, and says nothing when it lists them all."""
    from addons.cli import main

    Store(db_url).migrate()
    now = dt.datetime.now(dt.timezone.utc)
    insert_approvals(db_url, [{"id": f"ap-limit{n:08d}", "kind": "call", "action": "s3:DeleteObject",
                               "status": "pending", "principal": "agent-1", "binding_hash": f"{n + 500:064d}",
                               "requested": now - dt.timedelta(minutes=n), "expires": now + dt.timedelta(hours=1)}
                              for n in range(3)], chain_key=KEY)
    runner = CliRunner()
    cut = runner.invoke(main, ["approvals", "list", "--db", db_url, "--limit", "2"], catch_exceptions=False)
    assert cut.exit_code == 0 and "ap-limit00000000" in cut.stdout and "ap-limit00000002" not in cut.stdout
    assert "(only the newest 2 are listed; the store holds more: --limit raises the number)" in cut.stderr
    whole = runner.invoke(main, ["approvals", "list", "--db", db_url, "--limit", "3"], catch_exceptions=False)
    assert "ap-limit00000002" in whole.stdout and "only the newest" not in whole.stderr
