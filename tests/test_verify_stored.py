"""What `agentgate verify` holds beyond the hash chains, each edit made as someone who can write
the database would make it with the gateway stopped, on a store a real Store wrote: a time stored
in a form the store never writes (the hash holds, the queries misplace it), a value of another type
than its column's, a policy version's text deleted or changed, a session's principal or role
rewritten; and the wrong key's hint given only when that is all that is wrong. SQLite and
PostgreSQL where their columns differ."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from addons.cli import main
from addons.core.records import Record
from addons.core.store import Store
from tests.support.approvals import insert_approvals
from tests.support.home import CHAIN_KEY as KEY
from tests.support.postgres import shared_server

UTC = dt.timezone.utc
POLICY_TEXT = "--- 10-read.yaml\nversion: 1\ndefault: deny\nrules:\n  - id: read-only\n    access_level: [List, Read]\n" \
              "    decision: allow\n"
POLICY_VERSION = hashlib.sha256(POLICY_TEXT.encode()).hexdigest()[:16]  # as core.policy.PolicySet names it
ROLE = "arn:aws:iam::111122223333:role/agent-data"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, home: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{home / 'agentgate.db'}"
    return shared_server().fresh_database()


def write_store(url: str, times: list[float]) -> list[Record]:
    """A gateway's records, one a time, all in session s-1 of alice as the data role, decided by
    a policy version whose text is stored, as the gateway stores it."""
    store = Store(url, chain_key=KEY, writer_id="w1")
    store.migrate()
    store.start()
    store.store_policy_version(POLICY_VERSION, POLICY_TEXT)
    records = []
    for i, t in enumerate(times):
        r = Record(time=t, session_id="s-1", principal="alice", issuer="https://issuer.example", role=ROLE,
                   service="s3", operation="GetObject", action="s3:GetObject", access_level="Read",
                   decision="allow" if i % 2 == 0 else "deny", rule="read-only", policy_version=POLICY_VERSION,
                   params={"Bucket": "b", "Key": f"k{i}"}, outcome="forwarded", status=200)
        store.write_sync(r)
        records.append(r)
    store.close()
    return records


def edit(url: str, *statements: str) -> None:
    """Statements run on the database itself, behind the gateway's back."""
    with create_engine(url, poolclass=NullPool).begin() as c:
        for s in statements:
            c.execute(text(s))


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def verify(url: str) -> tuple[int, list[str], str]:
    """`agentgate verify`: its exit code, its BROKEN lines, and its one line of error."""
    result = cli("verify", "--db", url)
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 1 and "Traceback" not in result.output, result.output
    return (result.exit_code, [line[len("BROKEN: "):] for line in result.stdout.splitlines()
                               if line.startswith("BROKEN: ")], lines[0] if lines else "")


def written(t: dt.datetime) -> str:
    """A time as the store writes it on SQLite."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


TIME_TAIL = ": the chain covers the time it reads as, but periods, ordering and prune compare what is stored"


# -- times -----------------------------------------------------------------------------------------


def test_a_time_stored_in_another_form_is_reported_and_never_pruned(home: Path) -> None:
    """SQLite keeps a time as text, and reads '...T13:00' or '...\\x0113:00' as the same time as
    '... 13:00': the hash holds, while `calls list --since`, the exports, the report and prune
    compare the text. A record of 13:00 so rewritten sorts before noon of its day: it drops out of
    the period and `prune --before noon` took it with the older ones. verify names each such
    record, and prune refuses to decide by such a time."""
    url = f"sqlite:///{home / 'agentgate.db'}"
    noon = (dt.datetime.now(UTC) - dt.timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
    times = [noon - dt.timedelta(hours=10), noon - dt.timedelta(hours=9), noon + dt.timedelta(hours=1),
             noon + dt.timedelta(hours=2), dt.datetime.now(UTC) - dt.timedelta(seconds=60)]
    records = write_store(url, [t.timestamp() for t in times])
    insert_approvals(url, [{"id": "ap-1", "kind": "call", "binding_hash": "b" * 64, "principal": "alice",
                            "action": "s3:GetObject", "status": "pending", "requested": times[1]}], chain_key=KEY)
    assert verify(url)[0] == 0
    edit(url, "update calls set time = replace(time, ' ', char(1)) where seq = 3")
    listed = json.loads(cli("calls", "list", "--since", noon.isoformat(), "--db", url, "--json").stdout)
    assert records[2].id not in [c["id"] for c in listed]  # what the query compares: the stored text

    pruned = cli("prune", "--before", noon.isoformat(), "--db", url)
    assert pruned.exit_code == 1, pruned.output
    stored = repr(written(times[2]).replace(" ", "\x01"))
    assert pruned.stderr.strip().splitlines()[1:] == [
        f"Error: not pruning: call {records[2].id} (writer w1, seq 3): column time is stored as {stored}, not as the "
        f"store writes that time ('{written(times[2])}'){TIME_TAIL} (whether it is older than the date is not known; "
        "run `agentgate verify`)"]
    assert len(json.loads(cli("calls", "list", "--db", url, "--json").stdout)) == 5  # nothing deleted

    edit(url, "update calls set time = replace(time, ' ', 'T') where seq = 2",
         "update approval_events set time = replace(time, ' ', 'T')",
         "update approvals set requested = replace(requested, ' ', 'T')")
    code, broken, error = verify(url)
    assert code == 1
    assert broken == [
        f"call {records[1].id} (writer w1, seq 2): column time is stored as '{written(times[1]).replace(' ', 'T')}', "
        f"not as the store writes that time ('{written(times[1])}'){TIME_TAIL}",
        f"call {records[2].id} (writer w1, seq 3): column time is stored as {stored}, not as the store writes that "
        f"time ('{written(times[2])}'){TIME_TAIL}",
        f"approval event 1 (requested of ap-1): column time is stored as '{written(times[1]).replace(' ', 'T')}', "
        f"not as the store writes that time ('{written(times[1])}'){TIME_TAIL}",
        f"approval ap-1 (pending): column requested is stored as '{written(times[1]).replace(' ', 'T')}', not as "
        f"the store writes that time ('{written(times[1])}'){TIME_TAIL}"]
    assert error == f"Error: the store does not verify: {broken[0]} (and 3 more)"


def test_a_time_on_postgresql_is_a_time(home: Path) -> None:
    """PostgreSQL keeps a time as a timestamp and compares it as one: the text edits SQLite takes
    are refused, or store the same time, which stays in its period and verifies. A time its driver
    cannot read (infinity) names its record, where it stopped the reading of the whole store."""
    url = shared_server().fresh_database()
    noon = (dt.datetime.now(UTC) - dt.timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
    times = [noon - dt.timedelta(hours=10), noon + dt.timedelta(hours=1), dt.datetime.now(UTC) - dt.timedelta(seconds=60)]
    records = write_store(url, [t.timestamp() for t in times])
    with pytest.raises(DBAPIError, match="function replace"):
        edit(url, "update calls set time = replace(time, ' ', chr(1)) where seq = 2")
    edit(url, "update calls set time = replace(time::text, ' ', 'T')::timestamp where seq = 2")
    assert verify(url)[0] == 0
    listed = json.loads(cli("calls", "list", "--since", noon.isoformat(), "--db", url, "--json").stdout)
    assert records[1].id in [c["id"] for c in listed]
    dry = cli("prune", "--before", noon.isoformat(), "--db", url, "--dry-run")
    assert dry.exit_code == 0 and "would delete 1 record from" in dry.stdout, dry.output

    edit(url, "update calls set time = 'infinity' where seq = 2")
    code, broken, error = verify(url)
    assert code == 1
    assert broken == [f"call {records[1].id} (writer w1, seq 2): column time cannot be read: it holds a time outside "
                      "the years 1 to 9999 (infinity?), which the store never writes"]
    assert error == f"Error: the store does not verify: {broken[0]}"


# -- values of another type ---------------------------------------------------------------------------


def test_a_value_of_another_type_names_its_record_not_a_traceback(home: Path) -> None:
    """SQLite stores what it is given whatever the column's type: a BLOB where text belongs, text
    that is no time, JSON that does not parse. Each stopped verify with a traceback (and `calls list
    --decision deny` passes over the BLOB); now each names its record and column, and the rest of
    the store is checked."""
    url = f"sqlite:///{home / 'agentgate.db'}"
    records = write_store(url, [time.time() - 60 + i for i in range(7)])
    with sqlite3.connect(home / "agentgate.db") as con:
        con.execute("update calls set decision = cast(decision as blob) where seq = 6")
        con.execute("update calls set time = 'yesterday' where seq = 3")
        con.execute("update calls set params = '{bad' where seq = 4")
        assert con.execute("select typeof(decision) from calls where seq = 6").fetchone() == ("blob",)
    code, broken, error = verify(url)
    assert code == 1
    assert broken == [
        f"call {records[2].id} (writer w1, seq 3): column time cannot be read: Invalid isoformat string: 'yesterday'",
        f"call {records[3].id} (writer w1, seq 4): column params cannot be read: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)",
        f"call {records[5].id} (writer w1, seq 6): column decision cannot be read: it holds bytes (a BLOB) where the "
        "store writes text"]
    assert error == f"Error: the store does not verify: {broken[0]} (and 2 more)"


def test_postgresql_keeps_each_value_its_columns_type(home: Path) -> None:
    """PostgreSQL refuses text that is no time and JSON that does not parse, and a BLOB cast into
    a text column is stored as text (its hex): an edit like any other, which the hash shows."""
    url = shared_server().fresh_database()
    records = write_store(url, [time.time() - 60 + i for i in range(3)])
    for statement in ("update calls set params = '{bad' where seq = 2", "update calls set time = 'not a time' where seq = 2"):
        with pytest.raises(DBAPIError, match="invalid input syntax"):
            edit(url, statement)
    edit(url, "update calls set decision = cast(decision as bytea) where seq = 2")
    code, broken, _ = verify(url)
    assert (code, broken) == (1, [f"call {records[1].id} (writer w1, seq 2): its content does not match its hash: "
                                  "the record was altered"])


# -- policy versions -----------------------------------------------------------------------------------


def test_a_policy_text_deleted_or_changed_is_reported(db_url: str, home: Path, tmp_path: Path) -> None:
    """Every record names the policy version that decided it, and the gateway stores that
    version's text: verify held nothing to it, so a text deleted passed verify, the report said no
    call named a version and OSCAL counted AU-9 satisfied. Now each version the records name must
    have its text, hashing to it; the report and OSCAL show a missing text as missing."""
    records = write_store(db_url, [time.time() - 60 + i for i in range(3)])
    first = min(r.id for r in records)  # the smallest id, as verify names it: records written within one ms sort at random
    assert verify(db_url)[0] == 0
    edit(db_url, "update policy_versions set text = replace(text, 'allow', 'deny')")
    changed = hashlib.sha256(POLICY_TEXT.replace("allow", "deny").encode()).hexdigest()[:16]
    code, broken, error = verify(db_url)
    assert code == 1
    assert broken == [f"policy version {POLICY_VERSION}: 3 calls name it (the first: call {first}), but its "
                      f"stored text hashes to {changed}: the text was changed after the gateway stored it"]
    assert error == f"Error: the store does not verify: {broken[0]}"

    edit(db_url, "delete from policy_versions")
    code, broken, error = verify(db_url)
    assert code == 1
    assert broken == [f"policy version {POLICY_VERSION}: 3 calls name it (the first: call {first}), but the "
                      "store holds no text of it: the text was deleted, or the gateway could not store it (its log "
                      "says so)"]
    report = cli("report", "-o", str(tmp_path / "r.html"), "--db", db_url)
    assert report.exit_code == 1 and "written, but the store does not verify: policy version" in report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "MISSING: the store holds no text of it" in html and "no call in the period names a policy version" not in html
    oscal = cli("export", "--format", "oscal", "-o", str(tmp_path / "e.oscal.json"), "--db", db_url)
    assert oscal.exit_code == 1, oscal.output
    results = json.loads((tmp_path / "e.oscal.json").read_text())["assessment-results"]
    [au9] = [f for f in results["results"][0]["findings"] if f["target"]["target-id"] == "au-9_obj"]
    assert au9["target"]["status"]["state"] == "not-satisfied" and "holds no text of it" in au9["description"]
    [version] = [r for r in results["back-matter"]["resources"] if r["title"] == f"Policy version {POLICY_VERSION}"]
    assert {p["name"]: p["value"] for p in version["props"]}["text-stored"] == "false" and "base64" not in version
    versions = cli("policy", "versions", "--db", db_url)
    assert versions.exit_code == 1 and "MISSING" in versions.stdout and "holds no text of it" in versions.stderr


# -- sessions --------------------------------------------------------------------------------------------


def test_a_session_rewritten_is_reported(db_url: str) -> None:
    """A session is one principal's credentials for one role, and each of its calls' records (in
    their chains) names them: `sessions list` showed a session's row rewritten to another
    principal and role, and verify passed. Now a session must name whom its calls name, and a
    session no call names is reported."""
    write_store(db_url, [time.time() - 60 + i for i in range(3)])
    edit(db_url, "update sessions set principal = 'agent-9', role = 'arn:aws:iam::111122223333:role/admin'")
    code, broken, error = verify(db_url)
    assert code == 1
    assert broken == ["session s-1: it names principal 'agent-9' where its calls name 'alice', role "
                      "'arn:aws:iam::111122223333:role/admin' where its calls name "
                      f"'{ROLE}': the session's row was altered after its calls were recorded"]
    assert error == f"Error: the store does not verify: {broken[0]}"
    edit(db_url, f"update sessions set principal = 'alice', role = '{ROLE}'",
         "insert into sessions (id, principal, writer_id, started, last_seen, calls) "
         "select 's-9', 'agent-9', writer_id, started, last_seen, 1 from sessions")
    code, broken, _ = verify(db_url)
    assert (code, broken) == (1, ["session s-9: no call in the store names it: it was written outside agentgate, "
                                  "or its calls were deleted"])


# -- the wrong key's hint --------------------------------------------------------------------------------


def test_the_wrong_keys_hint_only_when_the_hashes_hold(db_url: str, home: Path) -> None:
    """A record whose content no longer matches its hash, and whose MAC was replaced too, fails
    both: the MAC's failure then says it was altered, not that the key is the wrong one."""
    records = write_store(db_url, [time.time() - 60 + i for i in range(5)])
    edit(db_url, f"update calls set principal = 'mallory', mac = '{'0' * 64}' where seq = 3")
    code, broken, error = verify(db_url)
    assert code == 1
    assert broken == [f"call {records[2].id} (writer w1, seq 3): its content does not match its hash: the record was "
                      "altered; its MAC does not verify with the chain key: the record was altered or forged"]
    assert error == f"Error: the store does not verify: {broken[0]}"
    assert "this is not the key" not in error
    (home / "other.key").write_bytes(b"x" * 32)  # a store untouched but for that record, and another key:
    edit(db_url, "update calls set principal = 'alice' where seq = 3")
    result = cli("verify", "--db", db_url, "--key-file", str(home / "other.key"))
    assert result.exit_code == 1 and "this is not the key this store was written with" in result.stderr
