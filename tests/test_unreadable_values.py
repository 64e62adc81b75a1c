"""The commands that list, show, report and export what the store holds, on a store where a value
cannot be read (SQLite: text that is no time, a BLOB where text belongs, JSON that does not parse;
PostgreSQL: a time its driver cannot read, infinity), each edit made behind the gateway's back
among rows that read as written. Each stopped with a traceback (or, for a BLOB, printed it as if it
were the record's); now each names the row and column as `agentgate verify` names them, one line
each on standard error, gives every row it can read, and exits 1. An export writes nothing unless
told to leave such rows out (--skip-unreadable); --no-verify alone does not."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from pathlib import Path

import pytest

from addons.core.records import Record
from addons.core.store import Store
from tests.support.approvals import insert_approvals
from tests.support.home import CHAIN_KEY as KEY
from tests.support.postgres import shared_server
from tests.test_verify_stored import cli, edit

UTC = dt.timezone.utc
TAIL = "; `agentgate verify` checks the whole store"


@dataclasses.dataclass
class Broken:
    url: str
    calls: list[str]  # every call's id, oldest first
    unreadable: list[str]  # the calls holding a value that cannot be read
    column: str  # the column of theirs that cannot be read (the first of them)
    problems: list[str]  # what `agentgate verify` says of the store, one line each

    @property
    def readable(self) -> list[str]:
        return [c for c in self.calls if c not in self.unreadable]

    def said(self, name: str) -> str:
        """verify's line for the row ``name`` (a call's id, "session s-2", "approval ap-1", ...)."""
        [line] = [p for p in self.problems if p.startswith(name if " " in name else f"call {name} ")
                  and "cannot be read" in p]
        return line


@pytest.fixture(params=["sqlite", "postgresql"])
def broken(request: pytest.FixtureRequest, home: Path) -> Broken:
    """Five calls of alice, each in its own session (s-0 ... s-4), and three approvals pending
    (ap-0 ... ap-2), as a gateway writes them; then, edited: call 2's time, session s-2's last_seen,
    approval ap-1 and the event that asked for ap-2 (on SQLite call 4's decision too)."""
    sqlite = request.param == "sqlite"
    url = f"sqlite:///{home / 'agentgate.db'}" if sqlite else shared_server().fresh_database()
    store = Store(url, chain_key=KEY, writer_id="w1")
    store.migrate()
    store.start()
    calls = []
    for i in range(5):
        r = Record(time=time.time() - 60 + i, session_id=f"s-{i}", principal="alice", issuer="https://issuer.example",
                   service="s3", operation="GetObject", action="s3:GetObject", access_level="Read", decision="allow",
                   rule="read-only", params={"Bucket": "b", "Key": f"k{i}"}, outcome="forwarded", status=200)
        store.write_sync(r)
        calls.append(r.id)
    store.close()
    now = dt.datetime.now(UTC)
    insert_approvals(url, [{"id": f"ap-{i}", "kind": "call", "binding_hash": str(i) * 64, "principal": "alice",
                            "action": "s3:DeleteObject", "status": "pending", "params": {"Key": f"k{i}"},
                            "requested": now - dt.timedelta(seconds=30 - i), "expires": now + dt.timedelta(hours=1)}
                           for i in range(3)], chain_key=KEY)
    if sqlite:
        edit(url, "update calls set time = 'yesterday' where seq = 2",
             "update calls set decision = cast(decision as blob) where seq = 4",
             "update sessions set last_seen = 'yesterday' where id = 's-2'",
             "update approvals set params = '{bad' where id = 'ap-1'",
             "update approval_events set time = 'yesterday' where approval_id = 'ap-2'")
        unreadable = [calls[1], calls[3]]
    else:
        edit(url, "update calls set time = 'infinity' where seq = 2",
             "update sessions set last_seen = 'infinity' where id = 's-2'",
             "update approvals set requested = 'infinity' where id = 'ap-1'",
             "update approval_events set time = 'infinity' where approval_id = 'ap-2'")
        unreadable = [calls[1]]
    result = cli("verify", "--db", url)
    assert result.exit_code == 1, result.output
    problems = [line[len("BROKEN: "):] for line in result.stdout.splitlines() if line.startswith("BROKEN: ")]
    return Broken(url, calls, unreadable, "time", problems)


def named(result) -> list[str]:
    """The rows a command named on standard error (its BROKEN lines), and that it said no more."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output, result.output
    return [line[len("BROKEN: "):] for line in lines if line.startswith("BROKEN: ")]


def error(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def rows(n: int) -> str:
    return "1 row of the store holds" if n == 1 else f"{n} rows of the store hold"


# -- listing and showing ---------------------------------------------------------------------------


def test_calls_list_names_each_call_that_cannot_be_read_and_lists_the_rest(broken: Broken) -> None:
    for json_out in (False, True):
        result = cli("calls", "list", "--db", broken.url, *(["--json"] if json_out else []))
        assert result.exit_code == 1, result.output
        assert sorted(named(result)) == sorted(broken.said(c) for c in broken.unreadable)
        assert error(result) == f"Error: {rows(len(broken.unreadable))} a value that cannot be read (above): left " \
                                f"out of the list{TAIL}"
        if json_out:
            assert [c["id"] for c in json.loads(result.stdout)] == broken.readable[::-1]
        else:
            assert all(c in result.stdout for c in broken.readable)
            assert not any(c in result.stdout for c in broken.unreadable)


def test_calls_show_says_which_column_cannot_be_read_and_shows_the_rest(broken: Broken) -> None:
    call = broken.unreadable[0]
    result = cli("calls", "show", call, "--db", broken.url)
    assert result.exit_code == 1, result.output
    assert named(result) == [broken.said(call)]
    assert broken.said(call).startswith(f"call {call} (writer w1, seq 2): column time cannot be read: ")
    shown = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in result.stdout.splitlines()
             if len(line.split(None, 1)) == 2}
    assert (shown["id"], shown["principal"], shown["time"]) == (call, "alice", "(cannot be read)")
    assert error(result) == f"Error: {rows(1)} a value that cannot be read (above): the call is shown without the " \
                            f"values that cannot be read{TAIL}"
    as_json = json.loads(cli("calls", "show", call, "--db", broken.url, "--json").stdout)
    assert "time" not in as_json and (as_json["id"], as_json["params"]) == (call, {"Bucket": "b", "Key": "k1"})


def test_sessions_list_and_show_name_a_session_that_cannot_be_read(broken: Broken) -> None:
    result = cli("sessions", "list", "--db", broken.url, "--json")
    assert result.exit_code == 1, result.output
    assert named(result) == [broken.said("session s-2")]
    assert sorted(s["id"] for s in json.loads(result.stdout)) == ["s-0", "s-1", "s-3", "s-4"]
    assert error(result).endswith(f"left out of the list{TAIL}")

    result = cli("sessions", "show", "s-2", "--db", broken.url, "--json")
    assert result.exit_code == 1, result.output
    shown = json.loads(result.stdout)
    assert "last_seen" not in shown and shown["principal"] == "alice"
    assert [c["id"] for c in shown["call_list"]] == [broken.calls[2]]
    assert named(result) == [broken.said("session s-2")]
    result = cli("sessions", "show", "s-1", "--db", broken.url)  # its one call cannot be read
    assert result.exit_code == 1 and "no calls that can be read" in result.stdout, result.output
    assert named(result) == [broken.said(broken.calls[1])]


def test_approvals_list_and_show_name_what_cannot_be_read(broken: Broken) -> None:
    result = cli("approvals", "list", "--db", broken.url, "--json")
    assert result.exit_code == 1, result.output
    assert named(result) == [broken.said("approval ap-1")]
    assert sorted(a["id"] for a in json.loads(result.stdout)) == ["ap-0", "ap-2"]

    result = cli("approvals", "show", "ap-1", "--db", broken.url)
    assert result.exit_code == 1, result.output
    column = "params" if broken.url.startswith("sqlite") else "requested"
    shown = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in result.stdout.splitlines()
             if len(line.split(None, 1)) == 2}
    assert shown["principal"] == "alice" and shown["action"] == "s3:DeleteObject"
    assert shown["parameters" if column == "params" else column] == "(cannot be read)"
    assert named(result) == [broken.said("approval ap-1")]
    assert error(result).endswith(f"the approval, its history and its calls are shown without the values that cannot "
                                  f"be read{TAIL}")
    as_json = json.loads(cli("approvals", "show", "ap-1", "--db", broken.url, "--json").stdout)
    assert column not in as_json and as_json["principal"] == "alice"

    result = cli("approvals", "show", "ap-2", "--db", broken.url, "--json")  # the event that asked for it
    assert result.exit_code == 1, result.output
    assert named(result) == [broken.said("approval event 3 (requested of ap-2)")]
    assert json.loads(result.stdout)["history"] == []


# -- the report and the exports ------------------------------------------------------------------------


def test_the_report_names_what_it_leaves_out(broken: Broken, tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    for verify in ([], ["--no-verify"]):
        result = cli("report", "-o", str(report), "--db", broken.url, *verify)
        assert result.exit_code == 1, result.output
        said = [broken.said(c) for c in broken.unreadable] + [broken.said("approval ap-1")]
        assert sorted(named(result)) == sorted(said)
        assert error(result) == f"Error: {rows(len(said))} a value that cannot be read (above): the report is " \
                                f"written, naming what its figures leave out{TAIL}"
        html = report.read_text()
        assert f'<span class="n" data-figure="records">{len(broken.readable)}</span>' in html
        assert f'<span data-figure="unreadable">{len(said)}</span>' in html
        assert all(f"<p class=\"problem\" data-unreadable>{line.replace(chr(39), '&#x27;')}</p>" in html
                   for line in said)


def test_a_row_read_twice_is_named_and_counted_once(home: Path, tmp_path: Path) -> None:
    """The report reads each chain's newest record a second time (its head): a head whose time
    cannot be read was named twice and counted twice ("3 rows of the store hold ..." of 2 rows,
    where calls list says 2). Each row is named and counted once."""
    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY, writer_id="w1")
    store.migrate()
    store.start()
    ids = []
    for i in range(3):
        r = Record(time=time.time() - 60 + i, principal="alice", service="s3", operation="GetObject",
                   action="s3:GetObject", access_level="Read", decision="allow", rule="read-only",
                   params={"Key": f"k{i}"}, outcome="forwarded", status=200)
        store.write_sync(r)
        ids.append(r.id)
    store.close()
    edit(url, f"update calls set params = cast(params as blob) where id = '{ids[1]}'",
         f"update calls set time = 'not a time' where id = '{ids[2]}'")  # the newest: its chain's head
    for args, what in ((["report", "-o", str(tmp_path / "r.html")], "the report is written, naming what its figures "
                                                                     "leave out"),
                       (["calls", "list"], "left out of the list")):
        result = cli(*args, "--db", url)
        assert result.exit_code == 1, result.output
        said = named(result)
        assert len(said) == 2 and sorted(line.split(" ")[1] for line in said) == sorted(ids[1:]), said
        assert error(result) == f"Error: {rows(2)} a value that cannot be read (above): {what}{TAIL}"
    assert '<span data-figure="unreadable">2</span>' in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("fmt", ["jsonl", "ocsf", "mitm"])
def test_an_export_leaves_out_no_record_unless_told_to(broken: Broken, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"calls.{fmt}"
    said = sorted(broken.said(c) for c in broken.unreadable)
    checked = cli("export", "--format", fmt, "-o", str(out), "--db", broken.url)
    assert checked.exit_code == 1 and "nothing exported: the chains of these records do not verify" in checked.stderr
    assert error(checked).endswith("--no-verify exports the records as they are (with --skip-unreadable, those that "
                                   "cannot be read left out)")
    assert not out.exists()

    result = cli("export", "--format", fmt, "--no-verify", "-o", str(out), "--db", broken.url)
    assert result.exit_code == 1, result.output
    assert not out.exists()
    assert sorted(named(result)) == said
    assert error(result) == f"Error: nothing exported: {rows(len(said))} a value that cannot be read (above); " \
                            "--skip-unreadable exports the rest, leaving those out" + TAIL

    result = cli("export", "--format", fmt, "--no-verify", "--skip-unreadable", "-o", str(out), "--db", broken.url)
    assert result.exit_code == 0, result.output
    assert sorted(named(result)) == said
    n = len(broken.readable)
    assert error(result).endswith(f"not verified (--no-verify); {len(said)} record{'s' if len(said) > 1 else ''} "
                                  "holding a value that cannot be read left out (--skip-unreadable)")
    if fmt == "mitm":
        assert error(result).startswith(f"wrote {n} flows to")
    else:
        lines = out.read_text().splitlines()
        ids = [json.loads(line)["id"] if fmt == "jsonl" else json.loads(line)["metadata"]["uid"]
               for line in lines]
        assert ids == broken.readable


def test_oscal_leaves_out_no_record_unless_told_to(broken: Broken, tmp_path: Path) -> None:
    out, evidence, approvals_file = tmp_path / "e.json", tmp_path / "e.jsonl", tmp_path / "e.approvals.jsonl"
    said = [broken.said(c) for c in broken.unreadable] + [broken.said("approval ap-1"),
                                                         broken.said("approval event 3 (requested of ap-2)")]
    result = cli("export", "--format", "oscal", "-o", str(out), "--db", broken.url)
    assert result.exit_code == 1, result.output
    assert sorted(named(result)) == sorted(said)
    assert error(result).startswith(f"Error: nothing exported: {rows(len(said))} a value that cannot be read")
    assert not out.exists() and not evidence.exists() and not approvals_file.exists()

    result = cli("export", "--format", "oscal", "--skip-unreadable", "-o", str(out), "--db", broken.url)
    assert result.exit_code == 1 and error(result).startswith("Error: written, but the store does not verify")
    assert sorted(named(result)) == sorted(said)
    assert [json.loads(line)["id"] for line in evidence.read_text().splitlines()] == broken.readable
    approvals = [json.loads(line) for line in approvals_file.read_text().splitlines()]
    assert [(a["id"], len(a["events"])) for a in approvals] == [("ap-0", 1), ("ap-2", 0)]
    results = json.loads(out.read_text())["assessment-results"]
    [records] = [r for r in results["back-matter"]["resources"] if r["title"].startswith("Call records")]
    assert f"{len(said)} rows of the store holding a value that cannot be read" in records["description"]
