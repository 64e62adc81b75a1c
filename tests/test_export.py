"""Exports: JSON Lines (the calls list's objects, chain fields included), OCSF API Activity events
validated against OCSF's published schema, mitmproxy flow files read back by mitmproxy and opened
by mitmdump, and OSCAL assessment results parsed with compliance-trestle's models."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from addons.cli import main
from addons.core.records import Record
from addons.core.store import Store
from tests.test_identity_e2e import client

BIN = Path(sys.executable).parent
from tests.support.home import CHAIN_KEY as KEY
from tests.support.approvals import insert_approvals
MARKER = "agentgate:masked:hmac-0123456789ab"
# the policy files that decided the synthetic calls, as the gateway stores them
POLICY_TEXT = "--- data.yaml\nversion: 1\ndefault: deny\nrules:\n  - id: data-plane\n    access_level: [Read]\n    decision: allow\n"
POLICY_VERSION = hashlib.sha256(POLICY_TEXT.encode()).hexdigest()[:16]


def synthetic_records(now: float) -> list[Record]:
    """Calls of every shape a record takes: forwarded with masked bodies, denied, refused by identity,
    held for approval then released, failed upstream, and a refused connection."""
    return [
        Record(session_id="s-1", principal="alice", issuer="https://issuer.example", groups=["data-agents"],
               client="127.0.0.1:50001", service="secretsmanager", operation="GetSecretValue",
               action="secretsmanager:GetSecretValue", access_level="Read", region="us-east-1", account="123456789012",
               resources=["arn:aws:secretsmanager:us-east-1:123456789012:secret:db"], params={"SecretId": "db"},
               method="POST", host="secretsmanager.us-east-1.amazonaws.com", url="https://secretsmanager.us-east-1.amazonaws.com/",
               request_headers=[("X-Amz-Target", "secretsmanager.GetSecretValue"), ("Content-Type", "application/x-amz-json-1.1"),
                                ("User-Agent", "Boto3/1.44")],
               request_body='{"SecretId": "db"}', response_body=json.dumps({"Name": "db", "SecretString": MARKER}),
               masked=[{"part": "response", "path": "SecretString", "by": "sensitive", "count": 1}],
               decision="allow", rule="data-plane", policy_version=POLICY_VERSION, role="arn:aws:iam::123456789012:role/agent-role",
               outcome="forwarded", status=200, aws_request_id="req-1",
               response_headers=[("Content-Type", "application/x-amz-json-1.1")], latency_ms=12.5, time=now - 50),
        Record(session_id="s-1", principal="alice", client="127.0.0.1:50001", service="iam", operation="ListUsers",
               action="iam:ListUsers", access_level="List", method="POST", host="iam.amazonaws.com",
               url="https://iam.amazonaws.com/", decision="deny", rule="no-iam-for-agents", reason="agents do not manage IAM",
               outcome="refused", status=403, error="AccessDenied: agents do not manage IAM", time=now - 40),
        Record(client="[::1]:50002", method="POST", host="sts.amazonaws.com", url="https://sts.amazonaws.com/",
               decision="deny", rule="agentgate:auth", reason="the token has expired", outcome="refused", status=403,
               error="AccessDenied: the token has expired", time=now - 30),
        Record(session_id="s-2", principal="bob", on_behalf_of="carol", client="127.0.0.1:50003", service="ec2",
               operation="TerminateInstances", action="ec2:TerminateInstances", access_level="Write",
               params={"InstanceIds": ["i-1"]}, method="POST", host="ec2.us-east-1.amazonaws.com",
               url="https://ec2.us-east-1.amazonaws.com/?Action=TerminateInstances", decision="approve",
               rule="prod-terminate-needs-a-human", approval_id="ap-1", approver="sre-sam", outcome="forwarded",
               status=200, time=now - 20),
        Record(session_id="s-2", principal="bob", client="127.0.0.1:50003", service="s3", operation="GetObject",
               action="s3:GetObject", access_level="Read", method="GET", host="b.s3.amazonaws.com",
               url="https://b.s3.amazonaws.com/k", decision="allow", rule="data-plane", outcome="failed", status=502,
               error="server disconnected", time=now - 10),
        Record(kind="connect", client="127.0.0.1:50004", method="CONNECT", host="example.com:443", url="example.com:443",
               decision="deny", rule="agentgate:egress", reason="example.com is not on allow_hosts", outcome="refused",
               status=403, time=now - 5),
    ]


def write_synthetic(url: str, writer_id: str) -> None:
    """synthetic_records in a store, with the approval the TerminateInstances call ran under."""
    store = Store(url, chain_key=KEY, writer_id=writer_id)
    store.migrate()
    now = time.time()
    asked = dt.datetime.fromtimestamp(now - 25, dt.timezone.utc)  # before the call it released (now - 20)
    insert_approvals(url, [{"id": "ap-1", "kind": "call", "binding_hash": "h1", "principal": "bob",
                            "action": "ec2:TerminateInstances", "status": "used", "approver": "sre-sam",
                            "requested": asked, "decided": asked + dt.timedelta(seconds=3),
                            "used": asked + dt.timedelta(seconds=5), "params": {"InstanceIds": ["i-1"]}}],
                     chain_key=KEY)
    store.start()
    store.store_policy_version(POLICY_VERSION, POLICY_TEXT)
    for r in synthetic_records(now):
        store.write_sync(r)
    store.close()


@pytest.fixture
def store_url(home: Path) -> str:
    url = f"sqlite:///{home / 'agentgate.db'}"
    write_synthetic(url, "gw-test")
    return url


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ocsf_validator(version: str = "1.1.0"):
    from jsonschema import Draft202012Validator
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    assert schema.lookup_class_name_from_uid(6003) == "api_activity"
    json_schema = schema.get_class_schema(class_name="api_activity", profiles=["cloud"])
    Draft202012Validator.check_schema(json_schema)
    return Draft202012Validator(json_schema)


def assert_valid_ocsf(events: list[dict], version: str = "1.1.0") -> None:
    validator = ocsf_validator(version)
    for event in events:
        errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
        assert not errors, f"{event['metadata']['uid']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5])


# -- JSON Lines --------------------------------------------------------------------------------


def test_jsonl_is_the_calls_list_objects_with_the_chain(store_url, home, tmp_path):
    out = tmp_path / "calls.jsonl"
    run("export", "--format", "jsonl", "-o", str(out), "--db", store_url)
    lines = read_jsonl(out)
    listed = json.loads(run("calls", "list", "--json", "--db", store_url))
    assert [c["id"] for c in lines] == [c["id"] for c in reversed(listed)]  # oldest first
    by_id = {c["id"]: c for c in listed}
    for line in lines:
        assert list(line)[:12] == list(by_id[line["id"]])[:12]
        assert line == by_id[line["id"]]
        assert {"writer_id", "seq", "prev_hash", "hash", "request_body", "response_body", "masked"} <= set(line)
    assert [c["seq"] for c in lines] == list(range(1, 7))
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    secret = next(c for c in lines if c["action"] == "secretsmanager:GetSecretValue")
    assert MARKER in secret["response_body"] and secret["masked"][0]["path"] == "SecretString"


def test_jsonl_recomputes_the_chain(store_url, tmp_path):
    """The file alone is enough to check every record's hash and link, and with the chain key its MAC."""
    import datetime as dt

    from addons.core.chain import GENESIS, record_hash, record_mac

    import hmac

    out = tmp_path / "calls.jsonl"
    run("export", "--format", "jsonl", "-o", str(out), "--db", store_url)

    def canonical(obj: dict) -> bytes:  # the README's recipe, written out here without the gateway's code
        return json.dumps({k: v for k, v in obj.items() if v is not None}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    prev = "0" * 64
    assert prev == GENESIS
    for line in read_jsonl(out):
        row = {k: v for k, v in line.items() if k not in ("hash", "mac")}
        when = dt.datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
        row["time"] = (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        assert row["prev_hash"] == prev
        digest = hashlib.sha256(prev.encode("ascii") + b"\n" + canonical(row)).hexdigest()
        assert digest == line["hash"]
        statement = canonical({"record_hash": line["hash"], "seq": row["seq"], "writer_id": row["writer_id"]})
        assert line["mac"] == hmac.new(KEY, b"agentgate record\n" + statement, hashlib.sha256).hexdigest()
        # the gateway's own functions agree
        row["time"] = when
        assert record_hash({**row, "hash": line["hash"]}) == digest
        assert record_mac(KEY, writer_id=row["writer_id"], seq=row["seq"], record_hash=digest) == line["mac"]
        prev = line["hash"]


def test_since_until_and_stdout(store_url, tmp_path):
    everything = read_jsonl_text(run("export", "--format", "jsonl", "-o", "-", "--db", store_url))
    assert len(everything) == 6
    cut = everything[3]["time"]
    early = read_jsonl_text(run("export", "--format", "jsonl", "-o", "-", "--until", cut, "--db", store_url))
    late = read_jsonl_text(run("export", "--format", "jsonl", "-o", "-", "--since", cut, "--db", store_url))
    assert [c["id"] for c in early + late] == [c["id"] for c in everything]


def read_jsonl_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_bad_input_is_one_line(store_url, tmp_path):
    runner = CliRunner()
    for args, words in (
        (["export", "--format", "mitm", "-o", "-"], "writes a file"),
        (["export", "--format", "jsonl", "-o", str(tmp_path / "no" / "such" / "f")], "does not exist"),
        (["export", "--format", "jsonl", "-o", "-", "--since", "yesterday-ish"], "cannot read"),
        (["export", "--format", "jsonl", "-o", "-", "--since", "1h", "--until", "2h"], "is not before"),
        (["export", "--format", "xml", "-o", "-"], "xml"),
    ):
        result = runner.invoke(main, [*args, "--db", store_url])
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["export", "--format", "jsonl", "-o", "-", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1 and "agentgate init" in result.output
    # a directory nothing can be written in (here /proc: no file can be made there)
    for args in (["export", "--format", "jsonl", "-o", "/proc/version"], ["export", "--format", "oscal", "-o",
                 "/proc/version"], ["report", "-o", "/proc/version"]):
        result = runner.invoke(main, [*args, "--db", store_url])
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
        assert result.output.strip().splitlines()[-1].startswith("Error: cannot write /proc/"), result.output


def test_an_export_never_replaces_the_store_or_the_gateways_own_files(store_url, home, tmp_path):
    """-o (or --evidence) naming the store's database, a file SQLite keeps beside it, a key, the CA,
    a policy or the configuration, by its name, a link or a hard link, is refused before anything
    is written: the store still holds every record and verifies."""
    (home / "agentgate.toml").write_text("[agentgate]\n")
    (home / "certs").mkdir()
    (home / "certs" / "mitmproxy-ca.pem").write_text("ca\n")
    (home / "policies").mkdir()
    database = home / "agentgate.db"
    before = database.read_bytes()
    (tmp_path / "elsewhere").mkdir()
    os.link(database, tmp_path / "elsewhere" / "hard.jsonl")
    (tmp_path / "elsewhere" / "soft.jsonl").symlink_to(database)
    runner = CliRunner()
    for args, what in (
        (["export", "--format", "jsonl", "-o", str(database)], "the store's database"),
        (["export", "--format", "ocsf", "-o", str(tmp_path / "elsewhere" / "hard.jsonl")], "the store's database"),
        (["export", "--format", "mitm", "-o", str(tmp_path / "elsewhere" / "soft.jsonl")], "the store's database"),
        (["report", "-o", f"{database}-wal"], "the store's database"),
        (["export", "--format", "oscal", "-o", str(tmp_path / "r.json"), "--evidence", str(database)],
         "the store's database"),
        (["export", "--format", "oscal", "-o", str(home / "keys" / "r.json")], "the gateway's keys"),
        (["export", "--format", "jsonl", "-o", str(home / "keys" / "chain.key")], "the gateway's keys"),
        (["report", "-o", str(home / "certs" / "mitmproxy-ca.pem")], "the gateway's CA"),
        (["export", "--format", "jsonl", "-o", str(home / "policies" / "calls.yaml")], "the policies"),
        (["export", "--format", "jsonl", "-o", str(home / "agentgate.toml")], "the gateway's configuration"),
        # another store read (--db), the configured one written over
        (["export", "--format", "jsonl", "--db", f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}", "-o",
          str(database)], "the store's database"),
    ):
        result = runner.invoke(main, [*args, "--db", store_url] if "--db" not in args else args)
        assert result.exit_code == 2, (args, result.output)
        assert what in result.output and "would replace it" in result.output and "Traceback" not in result.output
    assert database.read_bytes() == before and (home / "keys" / "chain.key").read_bytes() == KEY
    assert (home / "certs" / "mitmproxy-ca.pem").read_text() == "ca\n" and not (home / "keys" / "r.json").exists()
    assert "OK" in run("verify", "--db", store_url)


def test_an_export_is_its_owners_alone_and_a_replaced_file_keeps_its_mode(store_url, tmp_path):
    new, kept = tmp_path / "new.jsonl", tmp_path / "kept.jsonl"
    kept.write_text("old\n")
    kept.chmod(0o640)
    old_umask = os.umask(0o022)
    try:
        run("export", "--format", "jsonl", "-o", str(new), "--db", store_url)
        run("export", "--format", "jsonl", "-o", str(kept), "--db", store_url)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and len(read_jsonl(kept)) == 6


def test_an_output_path_the_system_cannot_take_is_a_one_line_error(store_url, tmp_path):
    runner = CliRunner()
    for args in (["export", "--format", "jsonl", "-o", str(tmp_path / ("a" * 300))],
                 ["report", "-o", str(tmp_path / ("a" * 300))],
                 ["export", "--format", "jsonl", "-o", str(tmp_path / "newdir") + "/"]):
        result = runner.invoke(main, [*args, "--db", store_url])
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "newdir").exists()


def test_an_empty_output_name_is_said_to_be_empty(store_url):
    """`-o ""` was told "-o:  is a directory"."""
    for args in (["export", "--format", "jsonl", "-o", ""], ["export", "--format", "oscal", "-o", " "],
                 ["report", "-o", ""]):
        result = CliRunner().invoke(main, [*args, "--db", store_url])
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert result.stderr.strip() == "Error: -o: the file name is empty; give the file to write", result.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_an_export_stopped_by_a_signal_leaves_no_temporary_file(home, tmp_path, signal_name):
    """An export writes a hidden temporary file beside its output and renames it into place. Ctrl-C
    (SIGINT) removed it; SIGTERM and SIGHUP, as a service manager or a closed terminal sends them,
    left it behind (100 MB and more for a large store). Each removes it now, and the process ends
    as the signal ends it."""
    import signal

    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY)
    store.migrate()
    store.start()
    for _ in range(300):  # some 30 MB of JSON Lines: long enough to be stopped while it is written
        store.write_sync(Record(principal="alice", service="s3", operation="GetObject", action="s3:GetObject",
                                decision="allow", outcome="forwarded", status=200, response_body="x" * 100_000))
    store.close()
    out = tmp_path / "out"
    out.mkdir()
    def as_from_a_terminal() -> None:  # the suite may run under nohup or in the background, which ignore these
        for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)

    p = subprocess.Popen([str(BIN / "agentgate"), "export", "--format", "jsonl", "-o", str(out / "big.jsonl"),
                          "--no-verify"], env={**os.environ, "AGENTGATE_HOME": str(home)}, stderr=subprocess.PIPE,
                         text=True, preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 60
    while not list(out.glob(".big.jsonl.*")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.001)
    p.send_signal(signal.SIGSTOP)  # held while its temporary file is there, then told to stop
    assert list(out.glob(".big.jsonl.*")), "the export ended before it could be stopped"
    sig = getattr(signal, signal_name)
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert list(out.iterdir()) == [], list(out.iterdir())
    assert "Traceback" not in err, err
    assert p.returncode == (1 if sig == signal.SIGINT else -sig), (p.returncode, err)  # Ctrl-C: click's "Aborted!"


def test_a_link_a_pipe_and_stdout_are_written_into_not_replaced(store_url, tmp_path):
    """-o through a symbolic link writes the file it names (the link stays a link); a named pipe
    is written into for the reader at its other end, as /dev/stdout is; OSCAL, whose document links
    its evidence by path and digest, wants files and says so."""
    real = tmp_path / "kept" / "calls.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "calls.jsonl"
    link.symlink_to(real)
    run("export", "--format", "jsonl", "-o", str(link), "--db", store_url)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(read_jsonl(real)) == 6
    report_link = tmp_path / "report.html"
    report_link.symlink_to(tmp_path / "kept" / "report.html")
    run("report", "-o", str(report_link), "--db", store_url)
    assert report_link.is_symlink() and (tmp_path / "kept" / "report.html").read_text().startswith("<!DOCTYPE html>")

    pipe = tmp_path / "calls.flows"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    run("export", "--format", "mitm", "-o", str(pipe), "--db", store_url)
    reader.join(10)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode), "the pipe was replaced by a file"
    run("export", "--format", "mitm", "-o", str(tmp_path / "file.flows"), "--db", store_url)
    from mitmproxy import io as mitm_io

    def flows(data: bytes) -> list[str]:
        return [f.request.url for f in mitm_io.FlowReader(io.BytesIO(data)).stream()]
    assert flows(got[0]) == flows((tmp_path / "file.flows").read_bytes()) != []  # what a file would have held

    result = CliRunner().invoke(main, ["export", "--format", "oscal", "-o", str(pipe), "--db", store_url])
    assert result.exit_code == 2 and "is not a regular file" in result.output and "Traceback" not in result.output
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and not (tmp_path / "calls.jsonl.approvals.jsonl").exists()


def test_oscal_from_a_store_that_does_not_verify_is_written_and_exits_1(store_url, home, tmp_path):
    import sqlite3

    con = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    con.execute("update calls set status = 500 where seq = 2")
    con.commit()
    con.close()
    out = tmp_path / "evidence.oscal.json"
    result = CliRunner().invoke(main, ["export", "--format", "oscal", "-o", str(out), "--db", store_url])
    assert result.exit_code == 1 and "Error: written, but the store does not verify" in result.output
    doc = json.loads(out.read_text())
    au9 = [o for o in doc["assessment-results"]["results"][0]["observations"] if "au-9" in json.dumps(o).lower()]
    assert au9 and "FAIL" in json.dumps(au9).upper()
    # and so a tool reads it: the AU-9 finding is not satisfied, the observation says the chains do not verify
    [finding] = doc["assessment-results"]["results"][0]["findings"]
    assert finding["target"]["status"] == {"state": "not-satisfied", "reason": "fail"}
    assert "DO NOT verify" in finding["title"] and "altered" in finding["description"]
    [observation] = [o for o in au9 if o["title"].startswith("AU-9")]
    assert {"name": "chains-verified", "ns": observation["props"][0]["ns"], "value": "false"} in observation["props"]


# -- a store that does not verify: nothing exported ---------------------------------------------


def tamper(store_url: str, statement: str, *params) -> None:
    import sqlite3

    con = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    con.execute(statement, params)
    con.commit()
    con.close()


def call_ids(store_url: str) -> dict[int, str]:
    """seq -> call id of the synthetic store's one chain."""
    return {c["seq"]: c["id"] for c in read_jsonl_text(run("export", "--format", "jsonl", "-o", "-", "--no-verify",
                                                          "--db", store_url))}


def refused(result, *problems: str) -> None:
    """``result`` (a CliRunner's) is an export that wrote nothing: exit 1, each problem a line of
    standard error, and the one-line reason last."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[:-1] == [f"BROKEN: {p}" for p in problems], result.stderr
    assert lines[-1].startswith("Error: nothing exported: the chains of these records do not verify"), lines[-1]
    assert "--no-verify" in lines[-1] and "Traceback" not in result.output


@pytest.mark.parametrize("fmt", ["jsonl", "ocsf", "mitm"])
def test_an_export_of_an_altered_record_writes_nothing(store_url, tmp_path, fmt):
    ids = call_ids(store_url)
    tamper(store_url, "update calls set decision = 'allow' where seq = 2")  # the denied iam:ListUsers
    out = tmp_path / f"calls.{fmt}"
    result = CliRunner().invoke(main, ["export", "--format", fmt, "-o", str(out), "--db", store_url])
    refused(result, f"call {ids[2]} (writer gw-test, seq 2): its content does not match its hash: the record was altered")
    assert not out.exists()
    out.write_text("the previous export\n")  # a file already there is left as it was
    result = CliRunner().invoke(main, ["export", "--format", fmt, "-o", str(out), "--db", store_url])
    assert result.exit_code == 1 and out.read_text() == "the previous export\n"
    if fmt != "mitm":  # standard output gets nothing
        result = CliRunner().invoke(main, ["export", "--format", fmt, "-o", "-", "--db", store_url])
        assert result.exit_code == 1 and result.stdout == ""
    # an operator who knows gets the records as they are, and is told they were not verified
    result = CliRunner().invoke(main, ["export", "--format", fmt, "-o", str(out), "--no-verify", "--db", store_url])
    assert result.exit_code == 0 and result.stderr.rstrip().endswith("; not verified (--no-verify)"), result.stderr
    if fmt == "jsonl":
        assert read_jsonl(out)[1]["decision"] == "allow"


def test_an_export_of_a_forged_record_writes_nothing(store_url, tmp_path):
    """A record added with its hash and link computed as the gateway computes them, but without the
    chain key: its MAC does not verify."""
    from sqlalchemy import insert, select

    from addons.core import chain
    from addons.core.models import Call

    store = Store(store_url)
    try:
        with store.engine.begin() as conn:
            last = dict(conn.execute(select(Call.__table__).order_by(Call.seq.desc()).limit(1)).one()._mapping)
            forged = {**last, "id": "forged-call", "seq": last["seq"] + 1, "prev_hash": last["hash"],
                      "decision": "allow", "reason": "the record says it was allowed"}
            forged["hash"] = chain.record_hash(forged)
            conn.execute(insert(Call.__table__), [forged])
    finally:
        store.engine.dispose()
    out = tmp_path / "calls.ocsf.jsonl"
    result = CliRunner().invoke(main, ["export", "--format", "ocsf", "-o", str(out), "--db", store_url])
    refused(result, "call forged-call (writer gw-test, seq 7): its MAC does not verify with the chain key: the record "
                    "was altered or forged")
    assert not out.exists()


def test_a_period_export_checks_its_part_of_the_chains_and_that_none_is_missing(store_url, tmp_path):
    """An export of a period checks its records, the record before them and the chain up to the
    checkpoint after them, not the whole store; but a record deleted anywhere (its time gone with
    it, it may have been in the period) or a chain's tail cut off stops it."""
    ids = call_ids(store_url)
    cut = read_jsonl_text(run("export", "--format", "jsonl", "-o", "-", "--db", store_url))[3]["time"]  # seq 4's
    export = ["export", "--format", "jsonl", "-o", "-", "--since", cut, "--db", store_url]
    tamper(store_url, "update calls set status = 500 where seq = 1")  # long before the period
    assert [c["seq"] for c in read_jsonl_text(run(*export))] == [4, 5, 6]
    result = CliRunner().invoke(main, ["verify", "--db", store_url])  # the whole store's check finds it
    assert result.exit_code == 1 and f"call {ids[1]} (writer gw-test, seq 1): its content" in result.output
    tamper(store_url, "update calls set status = 500 where seq = 3")  # the record the period's first links to
    refused(CliRunner().invoke(main, export),
            f"call {ids[3]} (writer gw-test, seq 3): its content does not match its hash: the record was altered")
    tamper(store_url, "delete from calls where seq = 3")
    refused(CliRunner().invoke(main, export),
            f"call {ids[4]} (writer gw-test, seq 4): record 3 is missing between it and call {ids[2]} (seq 2): deleted")
    tamper(store_url, "delete from calls where seq = 1")
    refused(CliRunner().invoke(main, export),
            f"call {ids[2]} (writer gw-test, seq 2): record 1 is missing before it and no prune checkpoint accounts "
            "for them (the start of the chain was deleted)",
            f"call {ids[4]} (writer gw-test, seq 4): record 3 is missing between it and call {ids[2]} (seq 2): deleted")
    tamper(store_url, "delete from calls where seq in (2, 4)")  # left: 5 and 6, then the tail cut off too
    tamper(store_url, "delete from calls where seq = 6")
    result = CliRunner().invoke(main, ["export", "--format", "jsonl", "-o", "-", "--until", cut, "--db", store_url])
    refused(result,
            f"call {ids[5]} (writer gw-test, seq 5): records 1-4 are missing before it and no prune checkpoint "
            "accounts for them (the start of the chain was deleted)",
            "writer gw-test: checkpoint #1 (head, writer gw-test, seq 6) points past the last record: the chain ends "
            f"at seq 5 (call {ids[5]}), so record 6 is missing (the tail was truncated)")


def test_records_committed_after_the_check_are_left_out(store_url):
    """A gateway writing while the export runs: what it commits after the chains were checked (its
    chain's next records, a new writer's) is not exported unchecked."""
    from addons.commands.export import _checked_only
    from addons.core.export import iter_calls
    from addons.core.store import verify_period

    def call(n: int) -> Record:
        return Record(principal=f"live-{n}", method="GET", decision="allow", outcome="forwarded")

    live = Store(store_url, chain_key=KEY, writer_id="gw-live")
    live.start()
    reader = Store(store_url)
    try:
        live.write_sync(call(1))
        checked = verify_period(reader, chain_key=KEY)
        assert checked.ok and checked.checked == {"gw-test": 6, "gw-live": 1}
        live.write_sync(call(2))
        new = Store(store_url, chain_key=KEY, writer_id="gw-new")
        new.start()
        new.write_sync(call(3))
        new.close()
        late = [0]
        exported = [(c["writer_id"], c["seq"]) for c in _checked_only(iter_calls(reader), checked.checked, late)]
        assert exported == [("gw-test", seq) for seq in range(1, 7)] + [("gw-live", 1)] and late == [2]
    finally:
        live.close()
        reader.engine.dispose()


# -- OCSF --------------------------------------------------------------------------------------


def test_ocsf_events_validate_against_the_ocsf_schema(store_url, tmp_path):
    out = tmp_path / "calls.ocsf.jsonl"
    run("export", "--format", "ocsf", "-o", str(out), "--db", store_url)
    events = read_jsonl(out)
    assert len(events) == 6
    assert_valid_ocsf(events, "1.1.0")
    assert_valid_ocsf(events, "1.8.0")  # still valid in the newest published version
    by_op = {e["api"]["operation"]: e for e in events}
    secret = by_op["GetSecretValue"]
    assert (secret["class_uid"], secret["category_uid"], secret["activity_id"], secret["type_uid"]) == (6003, 6, 2, 600302)
    assert secret["actor"]["user"]["uid"] == "alice" and secret["cloud"] == {
        "provider": "AWS", "region": "us-east-1", "account": {"uid": "123456789012"}}
    assert secret["status_id"] == 1 and secret["api"]["response"]["code"] == 200
    assert secret["actor"]["authorizations"] == [{"decision": "allow", "policy": {"name": "data-plane", "version": POLICY_VERSION}}]
    assert secret["unmapped"]["agentgate"]["action"] == "secretsmanager:GetSecretValue"
    assert secret["unmapped"]["agentgate"]["chain"]["seq"] == 1
    assert secret["src_endpoint"] == {"ip": "127.0.0.1", "port": 50001}
    denied = by_op["ListUsers"]
    assert denied["status_id"] == 2 and denied["severity_id"] == 3 and denied["api"]["response"]["error"] == "AccessDenied"
    terminate = by_op["TerminateInstances"]
    assert terminate["activity_id"] == 4 and terminate["unmapped"]["agentgate"]["approver"] == "sre-sam"
    unauthenticated = next(e for e in events if e["actor"]["user"]["name"] == "(unauthenticated)" and e["api"]["operation"] == "POST")
    assert unauthenticated["src_endpoint"] == {"ip": "::1", "port": 50002}


def test_ocsf_rejects_what_the_schema_forbids():
    """The validator is real: a broken event fails it."""
    from addons.core.export import ocsf_event

    event = ocsf_event({"id": "x", "time": "2025-01-01T00:00:00.000000Z", "kind": "call", "seq": 1})
    validator = ocsf_validator()
    assert not list(validator.iter_errors(event))
    for broken in ({**event, "class_uid": 3002}, {k: v for k, v in event.items() if k != "actor"},
                   {**event, "activity_id": 7}, {**event, "not_an_attribute": 1}):
        assert list(validator.iter_errors(broken))


# -- mitmproxy flow files ----------------------------------------------------------------------


def test_mitm_flow_file_reads_back_and_mitmdump_opens_it(store_url, tmp_path):
    from mitmproxy import http, io

    out = tmp_path / "calls.flows"
    result = CliRunner().invoke(main, ["export", "--format", "mitm", "-o", str(out), "--db", store_url])
    assert result.exit_code == 0, result.output
    assert "wrote 5 flows (1 connection record left out: not calls)" in result.output
    with open(out, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert len(flows) == 5 and all(isinstance(f, http.HTTPFlow) for f in flows)
    secret = next(f for f in flows if f.request.headers.get("x-amz-target") == "secretsmanager.GetSecretValue")
    assert secret.request.pretty_url == "https://secretsmanager.us-east-1.amazonaws.com/"
    assert secret.request.get_text() == '{"SecretId": "db"}'
    assert secret.response.status_code == 200
    assert json.loads(secret.response.get_text())["SecretString"] == MARKER
    assert "authorization" not in secret.request.headers
    assert "allow (data-plane)" in secret.comment and "SecretString" in secret.comment
    assert secret.metadata["agentgate"]["action"] == "secretsmanager:GetSecretValue"
    held = next(f for f in flows if f.metadata["agentgate"]["action"] == "ec2:TerminateInstances")
    assert held.comment.startswith("bob for carol: ec2:TerminateInstances -> approve")  # on whose behalf
    denied = next(f for f in flows if f.metadata["agentgate"]["action"] == "iam:ListUsers")
    assert denied.marked and denied.response.status_code == 403
    failed = next(f for f in flows if f.metadata["agentgate"]["outcome"] == "failed")
    assert failed.response is None and failed.error.msg == "server disconnected"  # upstream never answered
    assert "allow (data-plane), failed (the agent got 502)" in failed.comment

    dump = subprocess.run([str(BIN / "mitmdump"), "-n", "-r", str(out), "--set", f"confdir={tmp_path / 'mitm'}"],
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "secretsmanager.us-east-1.amazonaws.com" in dump.stdout and "403" in dump.stdout


# -- OSCAL -------------------------------------------------------------------------------------


def assert_approval_chain_checks_out(approval: dict) -> None:
    """An exported approval's events check out from the file alone: each event's hash and HMAC,
    and the approval as its latest event left it."""
    from addons.core import chain

    def as_stored(m: dict) -> dict:
        return {k: dt.datetime.fromisoformat(v) if k in ("time", "requested", "decided", "expires", "used", "revoked")
                and v else v for k, v in m.items()}

    for event in map(as_stored, approval["events"]):
        assert chain.record_hash({k: v for k, v in event.items() if k != "mac"}) == event["hash"]
        assert chain.event_mac(KEY, seq=event["seq"], event_hash=event["hash"]) == event["mac"]
    row = as_stored({k: v for k, v in approval.items() if k not in ("events", "state")})
    assert chain.approval_state_hash(row) == approval["events"][-1]["state_hash"]


def test_oscal_assessment_results_parse_with_trestle(store_url, home, tmp_path):
    from trestle.oscal.assessment_results import AssessmentResults

    out = tmp_path / "ar.json"
    run("export", "--format", "oscal", "-o", str(out), "--db", store_url)
    doc = json.loads(out.read_text())
    model = AssessmentResults.model_validate(doc["assessment-results"])
    result = model.results[0]
    controls = [c.control_id for c in result.reviewed_controls.control_selections[0].include_controls]
    assert controls == ["au-2", "au-3", "au-9", "au-12", "ac-3", "ac-5", "ac-6", "ia-2", "ia-9", "sc-28"]
    assert len(result.observations) == 10
    evidence_path = tmp_path / "ar.jsonl"
    assert len(read_jsonl(evidence_path)) == 6
    resources = {r.uuid: r for r in model.back_matter.resources}
    evidence = next(r for r in resources.values() if r.rlinks)
    assert evidence.rlinks[0].href == "ar.jsonl"
    assert evidence.rlinks[0].hashes[0].value == hashlib.sha256(evidence_path.read_bytes()).hexdigest()
    au9 = next(o for o in result.observations if o.title.startswith("AU-9"))
    hrefs = [e.href.lstrip("#") for e in au9.relevant_evidence]
    heads = [resources[h] for h in hrefs if resources[h].title.startswith("Chain head")]
    assert len(heads) == 1
    props = {p.name: p.value for p in heads[0].props}
    assert props["writer-id"] == "gw-test" and props["seq"] == "6"
    assert props["head-hash"] == read_jsonl(evidence_path)[-1]["hash"]
    assert "verify" in au9.description and "OK, 6 records in 1 chain and 1 checkpoint" in au9.description
    ac3 = next(o for o in result.observations if o.title.startswith("AC-3"))
    assert "deny 3" in ac3.description and "allow 2" in ac3.description and "approve 1" in ac3.description

    # the approvals asked for in the period, each with its events, beside it and linked from AC-3, AC-5, AU-9
    approvals_path = tmp_path / "ar.approvals.jsonl"
    [approval] = read_jsonl(approvals_path)
    assert (approval["id"], approval["status"], approval["approver"]) == ("ap-1", "used", "sre-sam")
    assert [e["event"] for e in approval["events"]] == ["requested"] and approval["events"][0]["mac"]
    [listed] = [r for r in resources.values() if r.title.startswith("Approvals asked for")]
    assert listed.rlinks[0].href == "ar.approvals.jsonl"
    assert listed.rlinks[0].hashes[0].value == hashlib.sha256(approvals_path.read_bytes()).hexdigest()
    for title in ("AC-3", "AC-5", "AU-9"):
        observation = next(o for o in result.observations if o.title.startswith(title))
        assert f"#{listed.uuid}" in [e.href for e in observation.relevant_evidence], title
    assert_approval_chain_checks_out(approval)

    # what the chains' verification found, as a finding a tool reads: AU-9 satisfied
    [finding] = result.findings
    assert finding.target.target_id == "au-9_obj" and finding.target.status.state.value == "satisfied"
    assert finding.related_observations[0].observation_uuid == au9.uuid
    assert {p.name: p.value for p in au9.props}["chains-verified"] == "true"
    # the text of the policy version that decided the period's calls, linked from AC-3
    [policy] = [r for r in resources.values() if r.title == f"Policy version {POLICY_VERSION}"]
    import base64
    assert base64.b64decode(policy.base64.value).decode() == POLICY_TEXT
    assert {p.name: p.value for p in policy.props}["text-holds"] == "true"
    ac3 = next(o for o in result.observations if o.title.startswith("AC-3"))
    assert f"#{policy.uuid}" in [e.href for e in ac3.relevant_evidence]


def test_the_year_1_is_written_in_four_digits(store_url, tmp_path):
    """--until 0001-01-01 is an empty period at the calendar's start: OSCAL's date-times and the
    report write its year as 0001 (strftime's %Y writes "1", which OSCAL's date-time pattern and
    compliance-trestle refuse), and a period starting then does not fail on its chart."""
    from trestle.oscal.assessment_results import AssessmentResults

    out = tmp_path / "ar.json"
    run("export", "--format", "oscal", "--until", "0001-01-01", "-o", str(out), "--db", store_url)
    doc = json.loads(out.read_text())
    result = doc["assessment-results"]["results"][0]
    assert result["start"] == result["end"] == "0001-01-01T00:00:00.000000Z"
    assert result["title"].endswith("0001-01-01 00:00:00 UTC to 0001-01-01 00:00:00 UTC")
    AssessmentResults.model_validate(doc["assessment-results"])
    report = tmp_path / "report.html"
    said = run("report", "--until", "0001-01-01", "-o", str(report), "--db", store_url)
    assert "(0 records, 0001-01-01 00:00:00 UTC to 0001-01-01 00:00:00 UTC)" in said
    assert '<strong data-figure="start">0001-01-01 00:00:00 UTC</strong>' in report.read_text()
    run("report", "--since", "0001-01-01", "--until", "0001-03-01", "-o", str(report), "--db", store_url)
    assert ">0001-01-01</text>" in report.read_text()  # the chart's first bar, by day
    run("export", "--format", "oscal", "--since", "0001-01-01", "-o", str(out), "--db", store_url)
    assert json.loads(out.read_text())["assessment-results"]["results"][0]["start"] == "0001-01-01T00:00:00.000000Z"


# -- through a real gateway --------------------------------------------------------------------


def test_exports_of_calls_recorded_through_the_gateway(gateway, issuer, tmp_path):
    import datetime as dt

    import botocore.exceptions

    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()
    token = issuer.mint("export-agent")
    s3 = client(gateway, "s3", proxy_token=token)
    s3.create_bucket(Bucket="export-bucket")
    s3.put_object(Bucket="export-bucket", Key="k", Body=b"hello")
    assert s3.get_object(Bucket="export-bucket", Key="k")["Body"].read() == b"hello"
    with pytest.raises(botocore.exceptions.ClientError):
        client(gateway, "iam", proxy_token=token).list_users()
    ocsf, flows = tmp_path / "gw.ocsf.jsonl", tmp_path / "gw.flows"
    gateway.cli("export", "--format", "ocsf", "--since", since, "-o", str(ocsf))
    gateway.cli("export", "--format", "mitm", "--since", since, "-o", str(flows))
    events = [e for e in read_jsonl(ocsf) if e["actor"]["user"].get("uid") == "export-agent"]
    assert [e["api"]["operation"] for e in events] == ["CreateBucket", "PutObject", "GetObject", "ListUsers"]
    assert_valid_ocsf(events)
    assert [e["status_id"] for e in events] == [1, 1, 1, 2]
    from mitmproxy import io

    with open(flows, "rb") as f:
        mine = [fl for fl in io.FlowReader(f).stream() if fl.metadata["agentgate"]["principal"] == "export-agent"]
    assert [fl.request.method for fl in mine] == ["PUT", "PUT", "GET", "POST"]
    assert all("authorization" not in fl.request.headers and "x-amz-security-token" not in fl.request.headers
               for fl in mine)
    assert mine[-1].response.status_code == 403


def test_a_flow_of_a_record_cut_at_body_cap_says_so(tmp_path_factory, issuer, moto, tmp_path):
    """A record keeps the first body_cap bytes of a longer answer: its flow holds those bytes (with
    a Content-Length that matches them, so that mitmproxy reads it), and its comment says that the
    record cut it and how much was sent, so that the flow does not read as the whole answer."""
    from mitmproxy import io

    from tests.support.gateway import Gateway

    gw = Gateway(tmp_path_factory.mktemp("capped"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), settings={"body_cap": 300})
    with gw:
        sts = client(gw, "sts", proxy_token=issuer.mint("cut-agent"))
        sts.get_caller_identity()
        flows = tmp_path / "cut.flows"
        gw.cli("export", "--format", "mitm", "-o", str(flows))
        gw.cli("export", "--format", "jsonl", "-o", str(tmp_path / "cut.jsonl"))
        [record] = [c for c in read_jsonl(tmp_path / "cut.jsonl") if c["principal"] == "cut-agent"]
    assert record["truncated"] and record["response_body_size"] > 300, record
    with open(flows, "rb") as f:
        [flow] = [fl for fl in io.FlowReader(f).stream() if fl.metadata["agentgate"]["principal"] == "cut-agent"]
    kept = flow.response.raw_content
    assert len(kept) <= 300 and flow.response.headers["content-length"] == str(len(kept))
    assert (f"cut at body_cap (a body, or the parameters): the flow's bodies are as the record keeps them, request: "
            f"43 bytes of 43 sent, response: {len(kept)} bytes of {record['response_body_size']} sent") in flow.comment


def test_an_aws_request_id_is_only_ever_one_aws_returned(gateway, issuer, tmp_path):
    """A call the gateway refused itself never reached AWS: the request id the agent got is its
    record's id, which the record, `calls show`, the JSON Lines and the OCSF event never name AWS's
    (an auditor would look for it in CloudTrail); a forwarded call's is AWS's in all of them."""
    import botocore.exceptions

    token = issuer.mint("request-id-agent")
    s3 = client(gateway, "s3", proxy_token=token)
    forwarded = s3.list_buckets()["ResponseMetadata"]["RequestId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(gateway, "iam", proxy_token=token).list_users()
    refused = e.value.response["ResponseMetadata"]["RequestId"]
    shown = json.loads(gateway.cli("calls", "show", refused, "--json").stdout)  # the id the agent got finds it
    assert (shown["action"], shown["outcome"], shown["aws_request_id"]) == ("iam:ListUsers", "refused", None)
    lines = gateway.cli("calls", "show", refused).stdout.splitlines()
    assert lines[0].split() == ["id", refused] and [ln.split() for ln in lines if ln.startswith("aws_request_id")] == [
        ["aws_request_id"]], lines
    jsonl, ocsf = tmp_path / "ids.jsonl", tmp_path / "ids.ocsf.jsonl"
    gateway.cli("export", "--format", "jsonl", "-o", str(jsonl))
    gateway.cli("export", "--format", "ocsf", "-o", str(ocsf))
    mine = {c["action"]: c for c in read_jsonl(jsonl) if c["principal"] == "request-id-agent"}
    assert (mine["iam:ListUsers"]["id"], mine["iam:ListUsers"]["aws_request_id"]) == (refused, None)
    assert mine["s3:ListAllMyBuckets"]["aws_request_id"] == forwarded
    events = {e["api"]["operation"]: e for e in read_jsonl(ocsf) if e["actor"]["user"].get("uid") == "request-id-agent"}
    denied, listed = events["ListUsers"], events["ListBuckets"]
    assert "AWS request id" not in json.dumps(denied), denied["api"]["response"]
    assert denied["api"]["response"]["message"].startswith(f"agentgate request id {refused}: agentgate answered")
    assert denied["api"]["request"]["uid"] == refused and "aws_request_id" not in denied["unmapped"]["agentgate"]
    assert listed["api"]["response"]["message"] == f"AWS request id {forwarded}"
    assert listed["unmapped"]["agentgate"]["aws_request_id"] == forwarded
    assert_valid_ocsf([denied, listed])


def test_ocsf_names_a_made_up_request_id_of_an_older_record_the_gateways(home, tmp_path):
    """Records written before the gateway gave its own answers its record id keep the id it made
    up in aws_request_id (as stored, hashed and in the JSON Lines): OCSF names it gateway_request_id.
    One the gateway answered after AWS did (masking withheld the body) keeps AWS's."""
    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY, writer_id="gw-old")
    store.migrate()
    store.start()
    now = time.time()
    base = dict(principal="alice", client="127.0.0.1:50001", method="POST", outcome="refused", time=now - 10)
    store.write_sync(Record(**base, service="iam", operation="ListUsers", action="iam:ListUsers", host="iam.amazonaws.com",
                            url="https://iam.amazonaws.com/", decision="deny", rule="no-iam-for-agents", status=403,
                            aws_request_id="4e1c8f8a-made-by-the-gateway",
                            response_headers=[("x-amzn-RequestId", "4e1c8f8a-made-by-the-gateway"),
                                              ("x-agentgate-refused-by", "policy")]))
    store.write_sync(Record(**{**base, "time": now - 5}, service="secretsmanager", operation="GetSecretValue",
                            action="secretsmanager:GetSecretValue", host="secretsmanager.us-east-1.amazonaws.com",
                            url="https://secretsmanager.us-east-1.amazonaws.com/", decision="allow", rule="data-plane",
                            status=400, aws_request_id="AWS-REQ-1",
                            response_headers=[("x-amzn-RequestId", "AWS-REQ-1"), ("x-agentgate-refused-by", "masking")]))
    store.close()
    out = tmp_path / "old.ocsf.jsonl"
    run("export", "--format", "ocsf", "-o", str(out), "--db", url)
    events = {e["api"]["operation"]: e for e in read_jsonl(out)}
    old = events["ListUsers"]
    assert old["api"]["response"]["message"].startswith("agentgate request id 4e1c8f8a-made-by-the-gateway: agentgate")
    assert "aws_request_id" not in old["unmapped"]["agentgate"]
    assert old["unmapped"]["agentgate"]["gateway_request_id"] == "4e1c8f8a-made-by-the-gateway"
    withheld = events["GetSecretValue"]
    assert withheld["api"]["response"]["message"] == "AWS request id AWS-REQ-1"
    assert withheld["unmapped"]["agentgate"]["aws_request_id"] == "AWS-REQ-1"
    assert_valid_ocsf(list(events.values()))


@pytest.fixture(scope="module")
def upstream_gone(tmp_path_factory, issuer):
    """A gateway whose moto stops after an agent's first calls (a bucket made, an object put, IAM
    denied): the agent's next call cannot reach upstream. (gateway, the agent's subject, the
    status, code and request id the agent got for that call)."""
    import botocore.exceptions

    from tests.support.gateway import Gateway
    from tests.support.moto_server import running_moto

    with running_moto() as moto:
        gw = Gateway(tmp_path_factory.mktemp("upstream-gone"), issuer=issuer.issuer, upstream=moto.url,
                     aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
        with gw:
            sub = "agent-upstream-gone"
            token = issuer.mint(sub)
            s3 = client(gw, "s3", proxy_token=token)
            s3.create_bucket(Bucket="evidence")
            s3.put_object(Bucket="evidence", Key="k", Body=b"kept")
            with pytest.raises(botocore.exceptions.ClientError):
                client(gw, "iam", proxy_token=token).list_users()
            moto.stop()
            with pytest.raises(botocore.exceptions.ClientError) as e:
                client(gw, "s3", proxy_token=token).get_object(Bucket="evidence", Key="k")
            got = e.value.response
            yield gw, sub, (got["ResponseMetadata"]["HTTPStatusCode"], got["Error"]["Code"],
                            got["ResponseMetadata"]["RequestId"])
        print(gw.log()[-3000:])


def test_a_failed_upstream_is_recorded_with_the_status_the_agent_got(upstream_gone, tmp_path):
    """The agent got an AWS-shaped 502 for a call whose upstream could not be reached: its record
    says 502, and so do the JSON Lines and the OCSF event (status_code, api.response.code)."""
    gw, sub, got = upstream_gone
    assert got[:2] == (502, "BadGateway")
    jsonl, ocsf = tmp_path / "calls.jsonl", tmp_path / "calls.ocsf.jsonl"
    gw.cli("export", "--format", "jsonl", "-o", str(jsonl))
    gw.cli("export", "--format", "ocsf", "-o", str(ocsf))
    [failed] = [c for c in read_jsonl(jsonl) if c["principal"] == sub and c["outcome"] == "failed"]
    assert (failed["action"], failed["status"]) == ("s3:GetObject", got[0])
    [event] = [e for e in read_jsonl(ocsf) if e["actor"]["user"].get("uid") == sub and e["api"]["operation"] == "GetObject"]
    assert (event["status_code"], event["api"]["response"]["code"], event["status_id"]) == (str(got[0]), got[0], 2)
    assert_valid_ocsf([event])


def test_the_request_id_of_a_call_upstream_failed_finds_its_record(upstream_gone, tmp_path):
    """The 502 the gateway answered itself for a call whose upstream could not be reached carries
    the call's record id as its request id, as a refusal's does: `calls show REQUESTID` finds the
    record, which does not name it AWS's (AWS never saw the call), nor does the OCSF event."""
    gw, sub, (status, _, request_id) = upstream_gone
    assert status == 502
    shown = json.loads(gw.cli("calls", "show", request_id, "--json").stdout)
    assert (shown["id"], shown["principal"], shown["action"], shown["outcome"], shown["status"], shown["aws_request_id"]) == (
        request_id, sub, "s3:GetObject", "failed", 502, None), shown
    ocsf = tmp_path / "failed.ocsf.jsonl"
    gw.cli("export", "--format", "ocsf", "-o", str(ocsf))
    [event] = [e for e in read_jsonl(ocsf) if e["api"]["request"]["uid"] == request_id]
    assert "AWS request id" not in json.dumps(event) and "aws_request_id" not in event["unmapped"]["agentgate"], event


def copy_of_store(gw, to: Path) -> str:
    """A copy of a running gateway's SQLite store (SQLite's backup: the WAL's commits included)."""
    import sqlite3

    source, copy = sqlite3.connect(gw.db_path), sqlite3.connect(to)
    source.backup(copy)
    source.close()
    copy.close()
    return f"sqlite:///{to}"


@pytest.mark.parametrize("change", ["decision changed", "record deleted", "record forged"])
def test_an_export_of_a_tampered_gateway_store_writes_nothing(upstream_gone, tmp_path, change):
    """The store a real gateway wrote, changed by someone with the database but not the chain key:
    each export says what is wrong, one line a problem, writes nothing and exits 1; --no-verify
    writes the records as they are."""
    import sqlite3

    from sqlalchemy import insert, select

    from addons.core import chain
    from addons.core.models import Call

    gw, sub, _ = upstream_gone
    db = copy_of_store(gw, tmp_path / "tampered.db")
    con = sqlite3.connect(tmp_path / "tampered.db")
    [(denied, writer, seq)] = con.execute("select id, writer_id, seq from calls where principal = ? and "
                                          "decision = 'deny'", (sub,)).fetchall()
    if change == "decision changed":
        con.execute("update calls set decision = 'allow', rule = 'data-plane' where id = ?", (denied,))
        problem = f"call {denied} (writer {writer}, seq {seq}): its content does not match its hash: the record was altered"
    elif change == "record deleted":
        con.execute("delete from calls where id = ?", (denied,))
        [after] = con.execute("select id from calls where writer_id = ? and seq = ?", (writer, seq + 1)).fetchone()
        [before] = con.execute("select id from calls where writer_id = ? and seq = ?", (writer, seq - 1)).fetchone()
        problem = f"call {after} (writer {writer}, seq {seq + 1}): record {seq} is missing between it and call {before} (seq {seq - 1}): deleted"
    con.commit()
    con.close()
    if change == "record forged":  # a denial made to read as an allowed call, at the chain's end, linked and hashed
        store = Store(db)
        try:
            with store.engine.begin() as conn:
                last = dict(conn.execute(select(Call.__table__).where(Call.writer_id == writer)
                                         .order_by(Call.seq.desc()).limit(1)).one()._mapping)
                forged = {**last, "id": "forged-call", "seq": last["seq"] + 1, "prev_hash": last["hash"],
                          "principal": sub, "action": "iam:ListUsers", "decision": "allow", "status": 200}
                forged["hash"] = chain.record_hash(forged)
                conn.execute(insert(Call.__table__), [forged])
        finally:
            store.engine.dispose()
        problem = (f"call forged-call (writer {writer}, seq {forged['seq']}): its MAC does not verify with the chain "
                   "key: the record was altered or forged")
    for fmt in ("jsonl", "ocsf", "mitm"):
        out = tmp_path / f"calls.{fmt}"
        p = gw.cli("export", "--format", fmt, "-o", str(out), "--db", db, check=False)
        assert p.returncode == 1 and p.stderr.splitlines()[:-1] == [f"BROKEN: {problem}"], p.stderr
        assert p.stderr.splitlines()[-1].startswith("Error: nothing exported: the chains of these records do not verify")
        assert not out.exists() and p.stdout == ""
    p = gw.cli("export", "--format", "jsonl", "-o", "-", "--db", db, check=False)
    assert p.returncode == 1 and p.stdout == ""
    p = gw.cli("export", "--format", "jsonl", "-o", "-", "--no-verify", "--db", db)
    mine = [c for c in read_jsonl_text(p.stdout) if c["principal"] == sub]
    assert [c["action"] for c in mine].count("iam:ListUsers") == (0 if change == "record deleted" else 1 + (change == "record forged"))


# -- the same on PostgreSQL --------------------------------------------------------------------


def test_exports_and_summary_on_postgresql(home, tmp_path):
    from addons.core.export import iter_calls
    from addons.core.report import summarise
    from tests.support.postgres import shared_server

    url = shared_server().fresh_database("export")
    write_synthetic(url, "gw-pg")
    out = tmp_path / "pg.jsonl"
    run("export", "--format", "jsonl", "-o", str(out), "--db", url)
    lines = read_jsonl(out)
    assert [c["seq"] for c in lines] == list(range(1, 7))
    run("export", "--format", "oscal", "-o", str(tmp_path / "pg.json"), "--db", url)
    assert read_jsonl(tmp_path / "pg.jsonl") == lines  # the OSCAL evidence is the same records
    [approval] = read_jsonl(tmp_path / "pg.approvals.jsonl")
    assert approval["params"] == {"InstanceIds": ["i-1"]}
    assert_approval_chain_checks_out(approval)
    ocsf = read_jsonl_text(run("export", "--format", "ocsf", "-o", "-", "--db", url))
    assert_valid_ocsf(ocsf)
    reader = Store(url)
    try:
        assert [c["id"] for c in iter_calls(reader, batch=2)] == [c["id"] for c in lines]  # keyset pages
        s = summarise(reader, chain_key=KEY)
    finally:
        reader.engine.dispose()
    assert s.total == 6 and s.verify.ok and s.heads[0].seq == 6 and s.heads[0].checkpoint_keyed
    assert s.start.isoformat().replace("+00:00", "Z").startswith(lines[0]["time"][:19])
    # a record deleted before the period, and one altered in it, stop an export of the period
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("delete from calls where seq = 2"))
        conn.execute(text("update calls set status = 500 where seq = 5"))
    engine.dispose()
    ids = {c["seq"]: c["id"] for c in lines}
    refused(CliRunner().invoke(main, ["export", "--format", "jsonl", "-o", "-", "--since", lines[3]["time"], "--db", url]),
            f"call {ids[3]} (writer gw-pg, seq 3): record 2 is missing between it and call {ids[1]} (seq 1): deleted",
            f"call {ids[5]} (writer gw-pg, seq 5): its content does not match its hash: the record was altered")


def test_keyset_pages_on_sqlite(store_url):
    from addons.core.export import iter_calls

    store = Store(store_url)
    try:
        everything = [c["id"] for c in iter_calls(store)]
        assert [c["id"] for c in iter_calls(store, batch=1)] == everything
        assert [c["id"] for c in iter_calls(store, batch=4)] == everything
    finally:
        store.engine.dispose()
