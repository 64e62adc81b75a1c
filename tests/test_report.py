"""The evidence report: one self-contained HTML file, rendered in headless Chromium (Debian's, through
playwright); the numbers it shows are checked against the store with SQL of the test's own, and a
tampered store shows up as a chain that does not verify."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from addons.cli import main
from addons.core.masking import AGENT_MARKER, MARKER_PREFIX, MARKER_RE
from addons.core.records import Record
from addons.core.store import Store
from tests.test_export import KEY, POLICY_TEXT, POLICY_VERSION, synthetic_records
from tests.support.approvals import insert_approvals

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parent / "output"
UTC = dt.timezone.utc


@pytest.fixture
def db(home: Path) -> Path:
    """A store with an hour of calls by three principals, two writers, and three approvals."""
    path = home / "agentgate.db"
    url = f"sqlite:///{path}"
    now = time.time()
    for writer, offset in (("gw-a", 0), ("gw-b", 1)):
        store = Store(url, chain_key=KEY, writer_id=writer)
        store.migrate()
        store.start()
        if writer == "gw-a":
            store.store_policy_version(POLICY_VERSION, POLICY_TEXT)
            for r in synthetic_records(now):
                store.write_sync(r)
        for i in range(24):
            decision = "deny" if i % 6 == 5 else "allow"
            store.write_sync(Record(
                session_id=f"s-{writer}", principal=("dora", "ed")[i % 2], client="127.0.0.1:40000",
                service="dynamodb", operation="GetItem" if i % 3 else "PutItem",
                action="dynamodb:GetItem" if i % 3 else "dynamodb:PutItem", access_level="Read" if i % 3 else "Write",
                decision=decision, rule="data-plane" if decision == "allow" else "read-only-agents",
                role="arn:aws:iam::123456789012:role/agent-role" if decision == "allow" else None,
                outcome="forwarded" if decision == "allow" else "refused", status=200 if decision == "allow" else 403,
                masked=[{"part": "response", "path": "Item.ssn.S", "by": "policy", "count": 2}] if i % 4 == 0 else [],
                time=now - 3600 + i * 140 + offset))
        store.close()
    requested = dt.datetime.fromtimestamp(now - 1800, UTC)
    rows = [
        dict(id="ap-1", binding_hash="h1", principal="bob", on_behalf_of="carol", action="ec2:TerminateInstances",
             status="used", approver="sre-sam", channel="console", requested=requested,
             decided=requested + dt.timedelta(seconds=42)),
        dict(id="ap-2", binding_hash="h2", principal="dora", action="ec2:TerminateInstances", status="denied",
             approver="sre-kim", reason="not in prod", channel="cli", requested=requested + dt.timedelta(minutes=1),
             decided=requested + dt.timedelta(minutes=6)),
        dict(id="ap-3", binding_hash="h3", principal="ed", action="iam:AttachRolePolicy", status="pending",
             requested=requested + dt.timedelta(minutes=2), expires=requested + dt.timedelta(hours=1)),
    ]
    columns = ("on_behalf_of", "approver", "reason", "channel", "decided", "expires")
    insert_approvals(url, [{**dict.fromkeys(columns), **row} for row in rows], chain_key=KEY)
    return path


def render(html: Path, screenshot: Path) -> dict:
    """Open the report in headless Chromium; return what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri())
            page.screenshot(path=str(screenshot), full_page=True)
            shown = {
                "figures": {el.get_attribute("data-figure"): el.inner_text().strip()
                            for el in page.query_selector_all("[data-figure]")},
                "tables": {t.get_attribute("data-table"): [[td.inner_text().strip() for td in tr.query_selector_all("td")]
                                                           for tr in t.query_selector_all("tbody tr")]
                           for t in page.query_selector_all("table[data-table]")},
                "timeline": sum(int(r.get_attribute("data-count"))
                                for r in page.query_selector_all("svg[data-chart=timeline] rect")),
                "charts": [s.get_attribute("data-chart") for s in page.query_selector_all("svg[data-chart]")],
                "controls": [el.inner_text().strip() for el in page.query_selector_all("[data-control]")],
                "requests": requests,
                "height": page.evaluate("document.body.scrollHeight"),
            }
        finally:
            browser.close()
    return shown


def sql(db: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def report(db: Path, out: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["report", "-o", str(out), "--db", f"sqlite:///{db}", *args],
                                catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_report_shows_the_store(db, tmp_path):
    out = tmp_path / "report.html"
    report(db, out)
    text = out.read_text()
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)

    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "report.png"
    shown = render(out, shot)
    assert shot.stat().st_size > 20_000 and shown["height"] > 2000
    assert shown["requests"] == [out.as_uri()]  # nothing fetched but the file itself

    figures = shown["figures"]
    (total,), = sql(db, "select count(*) from calls")
    (calls,), = sql(db, "select count(*) from calls where kind = 'call'")
    decisions = dict(sql(db, "select decision, count(*) from calls group by decision"))
    (masked,), = sql(db, "select coalesce(sum(json_extract(m.value, '$.count')), 0) from calls, json_each(calls.masked) m")
    principals = sql(db, "select count(distinct principal) from calls where principal is not null")[0][0]
    assert figures["records"] == str(total) == "54"
    assert figures["calls"] == str(calls)
    assert (figures["allow"], figures["deny"], figures["approve"]) == (
        str(decisions["allow"]), str(decisions["deny"]), str(decisions["approve"]))
    assert figures["principals"] == str(principals) == "4"
    assert figures["approvals"] == "3"
    assert figures["masked"] == figures["masked-values"] == str(masked) == "25"
    assert figures["credential-headers"] == "0"
    assert figures["chain"] == "chains verified"
    assert figures["verify"].startswith(f"agentgate verify over the whole store: OK, {total} records in 2 chains")
    assert figures["verify"].endswith("; 3 approvals as 3 approval events left them."), figures["verify"]
    assert shown["timeline"] == total
    assert shown["charts"] == ["timeline", "actions", "latency"]
    assert shown["controls"] == ["AU-2", "AU-3", "AU-9", "AU-12", "AC-3", "AC-5", "AC-6", "IA-2", "IA-9", "SC-28"]

    tables = shown["tables"]
    by_principal = {row[0]: (int(row[1]), int(row[2])) for row in tables["principals"]}
    for principal, n, denied in sql(db, "select coalesce(principal, '(unauthenticated)'), count(*), "
                                        "sum(decision = 'deny') from calls group by 1"):
        assert by_principal[principal] == (n, denied), principal
    by_action = {row[0]: int(row[1]) for row in tables["actions"]}
    for action, n in sql(db, "select coalesce(action, 'unknown'), count(*) from calls where kind = 'call' group by 1"):
        assert by_action[action] == n, action
    approvals = {row[0]: row for row in tables["approvals"]}
    assert approvals["ap-1"][4] == "sre-sam" and approvals["ap-1"][8] == "42.0 s" and approvals["ap-1"][9] == "yes"
    assert approvals["ap-2"][4] == "sre-kim" and approvals["ap-2"][5] == "not in prod"  # the approver's reason
    assert approvals["ap-2"][8] == "5.0 min"
    assert approvals["ap-3"][3] == "pending" and approvals["ap-3"][8] == ""
    # the policy version that decided calls of the period, with how many (its text: `policy show`)
    versions = {row[0]: row for row in tables["policy-versions"]}
    (n,), = sql(db, f"select count(*) from calls where policy_version = '{POLICY_VERSION}'")
    assert list(versions) == [POLICY_VERSION] and versions[POLICY_VERSION][2] == str(n) == "1"
    assert versions[POLICY_VERSION][3:] == ["data.yaml", "as stored"]
    assert ["response", "Item.ssn.S", "24"] in tables["masked"]
    heads = {row[0]: row for row in tables["heads"]}
    for writer, seq, head in sql(db, "select writer_id, seq, hash from calls c where seq = "
                                     "(select max(seq) from calls where writer_id = c.writer_id)"):
        assert heads[writer][1] == str(seq) and heads[writer][2] == head
        assert "HMAC-keyed" in heads[writer][3]
    ac5 = next(row for row in tables["controls"] if row[0].startswith("AC-5"))
    assert "3 approvals asked for in the period, 2 decided by 2 approvers; 0 decided by the requester" in ac5[2]


def test_a_period_and_a_tampered_store(db, tmp_path):
    (first,), = sql(db, "select min(time) from calls where principal = 'dora'")
    con = sqlite3.connect(db)
    con.execute("update calls set status = 201 where id = (select id from calls where principal = 'ed' limit 1)")
    con.commit()
    con.close()
    out = tmp_path / "tampered.html"
    since = dt.datetime.fromisoformat(first).replace(tzinfo=UTC) + dt.timedelta(minutes=30)
    output = report(db, out, "--since", since.isoformat(), code=1)  # written, and a script is told
    assert "Error: written, but the store does not verify: call " in output and "altered" in output
    shown = render(out, tmp_path / "tampered.png")
    (n,), = sql(db, f"select count(*) from calls where time >= '{since.replace(tzinfo=None).isoformat(sep=' ')}'")
    assert shown["figures"]["records"] == str(n) and 0 < n < 54
    assert shown["figures"]["chain"] == "chains DO NOT verify"
    assert "altered" in out.read_text()


def test_a_period_asked_to_end_in_the_future_ends_when_the_report_is_made(db, tmp_path):
    """--until still to come is a bound, as for `calls list` and `export`: the report (and the OSCAL
    export) covers what was recorded up to when it was made, says that its end is that time, and
    names the --until given as still to come; its timeline is not stretched over the years to it."""
    out, oscal = tmp_path / "future.html", tmp_path / "future.oscal.json"
    before = dt.datetime.now(UTC).replace(microsecond=0)
    output = report(db, out, "--since", "2h", "--until", "2999-01-01")
    after = dt.datetime.now(UTC)
    shown = render(out, tmp_path / "future.png")
    end = dt.datetime.fromisoformat(shown["figures"]["end"].removesuffix(" UTC")).replace(tzinfo=UTC)
    assert before <= end <= after, shown["figures"]["end"]
    (n,), = sql(db, "select count(*) from calls")
    assert shown["figures"]["records"] == str(n) and shown["timeline"] == n
    said = "when this was made: the --until given, 2999-01-01 00:00:00 UTC, is still to come"
    assert said in " ".join(out.read_text().split()) and said in output
    assert "2999" not in output.replace(said, "")
    result = CliRunner().invoke(main, ["export", "--format", "oscal", "-o", str(oscal), "--db", f"sqlite:///{db}",
                                       "--since", "2h", "--until", "2999-01-01"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [res] = json.loads(oscal.read_text())["assessment-results"]["results"]
    assert before <= dt.datetime.fromisoformat(res["end"].replace("Z", "+00:00")) <= dt.datetime.now(UTC), res["end"]
    assert said in res["description"] and said in result.output


def test_the_whole_store_takes_in_approvals_asked_before_the_first_call_or_after_the_last(home, tmp_path):
    """Without --since/--until the report and the OSCAL export cover the whole store: a held call's
    approval is asked for just after its call arrived, an access grant with no call at all."""
    from addons.core.export import iter_approvals
    from addons.core.report import summarise

    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY, writer_id="gw-a")
    store.migrate()
    store.start()
    now = time.time()
    for t in (now - 60, now - 30):
        store.write_sync(Record(principal="dora", action="ec2:TerminateInstances", decision="approve", time=t))
    store.close()
    at = lambda s: dt.datetime.fromtimestamp(now + s, UTC)
    columns = ("on_behalf_of", "approver", "reason", "channel", "decided", "expires")
    insert_approvals(url, [{**dict.fromkeys(columns), **row} for row in (
        dict(id="ap-grant", binding_hash="g", principal="ed", action="sts:AssumeRole", status="pending",
             requested=at(-120)),
        dict(id="ap-held", binding_hash="h", principal="dora", action="ec2:TerminateInstances", status="denied",
             approver="sre-kim", reason="no", channel="cli", requested=at(-30) + dt.timedelta(milliseconds=1),
             decided=at(-20)))], chain_key=KEY)
    summary = summarise(Store(url), chain_key=KEY)
    assert sorted(a.id for a in summary.approvals) == ["ap-grant", "ap-held"]
    assert summary.start == at(-120) and summary.end > at(-30) and summary.calls == 2
    assert sorted(a["id"] for a in iter_approvals(Store(url), since=summary.start, until=summary.end)) == [
        "ap-grant", "ap-held"]
    out = tmp_path / "evidence.oscal.json"
    result = CliRunner().invoke(main, ["export", "--format", "oscal", "-o", str(out), "--db", url],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 approvals" in result.output


def test_approvals_are_shown_as_they_stand_when_the_report_is_made(home, tmp_path):
    """A pending approval past its expiry is expired (its row says pending until something touches
    it again): the report and the OSCAL export's approvals say so, as `approvals show` does; a
    revoked approval's reason names who revoked it, beside its approver's."""
    from addons.core.export import iter_approvals
    from addons.core.report import summarise

    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, chain_key=KEY, writer_id="gw-a")
    store.migrate()
    store.close()
    now = dt.datetime.now(UTC)
    columns = ("on_behalf_of", "approver", "reason", "channel", "decided", "expires", "revoked", "revoked_by",
               "revoke_reason")
    insert_approvals(url, [{**dict.fromkeys(columns), **row} for row in (
        dict(id="ap-lapsed", binding_hash="l", principal="dora", action="ec2:TerminateInstances", status="pending",
             requested=now - dt.timedelta(hours=2), expires=now - dt.timedelta(hours=1)),
        dict(id="ap-open", binding_hash="o", principal="dora", action="ec2:TerminateInstances", status="pending",
             requested=now - dt.timedelta(minutes=5), expires=now + dt.timedelta(hours=1)),
        dict(id="ap-withdrawn", binding_hash="w", principal="ed", action="dynamodb:DeleteTable", status="revoked",
             approver="sre-sam", channel="cli", reason="ok to drop it", requested=now - dt.timedelta(minutes=9),
             decided=now - dt.timedelta(minutes=8), revoked=now - dt.timedelta(minutes=7), revoked_by="sre-kim",
             revoke_reason="changed my mind"))], chain_key=KEY)
    shown = {a.id: a for a in summarise(Store(url), chain_key=KEY).approvals}
    assert (shown["ap-lapsed"].status, shown["ap-open"].status) == ("expired", "pending")
    assert shown["ap-withdrawn"].reason == "ok to drop it; revoked by sre-kim: changed my mind"
    exported = {a["id"]: a for a in iter_approvals(Store(url))}
    assert [(exported[i]["status"], exported[i]["state"]) for i in ("ap-lapsed", "ap-open", "ap-withdrawn")] == [
        ("pending", "expired"), ("pending", "pending"), ("revoked", "revoked")]  # the row as stored, and its state
    out = tmp_path / "report.html"
    report(home / "agentgate.db", out, "--no-verify")
    rows = {r[0]: r for r in render(out, tmp_path / "report.png")["tables"]["approvals"]}
    assert rows["ap-lapsed"][3] == "expired" and rows["ap-open"][3] == "pending", rows


def test_each_bar_of_the_timeline_starts_where_its_label_says(home):
    """Bars start on whole multiples of their width, so a call counted in a bar happened at or
    after the time the bar is labelled with and before the next bar's."""
    from addons.core.report import summarise

    url = f"sqlite:///{home / 'agentgate.db'}"
    store = Store(url, writer_id="gw-a")
    store.migrate()
    store.start()
    base = dt.datetime(2026, 11, 27, 8, 17, 4, 736000, tzinfo=UTC).timestamp()  # an odd first instant
    for offset in (0, 1.0, 3.6, 7.6, 7.62, 7.7):
        store.write_sync(Record(principal="dora", action="s3:ListBucket", decision="deny", time=base + offset))
    store.close()
    summary = summarise(Store(url), check_chain=False)
    assert summary.bucket == dt.timedelta(seconds=1)
    assert summary.timeline[0][0] == dt.datetime(2026, 11, 27, 8, 17, 4, tzinfo=UTC)  # a whole second
    counted = {t.strftime("%H:%M:%S"): sum(c.values()) for t, c in summary.timeline if sum(c.values())}
    assert counted == {"08:17:04": 1, "08:17:05": 1, "08:17:08": 1, "08:17:12": 3}


def test_bad_input(home, tmp_path):
    result = CliRunner().invoke(main, ["report", "-o", str(tmp_path / "r.html"), "--since", "soon"])
    assert result.exit_code == 2 and "cannot read" in result.output
    result = CliRunner().invoke(main, ["report", "-o", str(tmp_path / "r.html"), "--since", "2999-01-01"])
    assert result.exit_code == 2 and "still to come" in result.output and not (tmp_path / "r.html").exists()
    result = CliRunner().invoke(main, ["report", "-o", str(tmp_path / "r.html"), "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 1 and "agentgate init" in result.output


def test_the_demo_tells_the_whole_story(tmp_path):
    """scripts/demo, as a newcomer runs it: allowed, denied, held-then-approved and masked calls,
    the calls list, verify, the exports and the report, in well under two minutes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTGATE_", "AWS_"))}
    env["AGENTGATE_DEMO_PYTHON"] = sys.executable
    started = time.monotonic()
    p = subprocess.run([str(root / "scripts" / "demo"), "--dir", str(tmp_path / "demo")], env=env,
                       capture_output=True, text=True, timeout=170)
    took = time.monotonic() - started
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert took < 120, took
    out = p.stdout
    # the agent gets the fixed marker, no fingerprint; the record keeps the secret's fingerprint
    assert f"the agent sees SecretString = {AGENT_MARKER}\n" in out
    assert MARKER_PREFIX not in out.split("\n== the agent:", 1)[1].split("\n== ", 1)[0]  # what the agent printed
    assert "REFUSED  iam ListUsers" in out and "rule 'no-iam-for-agents'" in out
    assert "ApprovalPending" in out and "approved by sre-sam" in out
    assert "ok       dynamodb DeleteTable demo-orders (the same call, after approval)" in out
    # the demo's own commands have nothing to warn of: its token files are its user's alone
    assert "agentgate: warning" not in out + p.stderr, out
    assert re.search(r"OK \(sqlite:///[^)]+\): \d+ records in 1 chain, \d+ checkpoints?\b", out)
    words = " ".join(out.split())  # rich wraps `approvals show` at 80 columns off a terminal
    assert "approved by sre-sam (cli): the demo table is disposable" in words
    assert "1 approval as 3 approval events left it" in words
    # each long step says what it is doing before what it shows, as on a terminal
    replay = out.split("\n== agentgate replay ", 1)[1].split("\n== ", 1)[0].splitlines()
    assert re.fullmatch(r"  replaying \d+ of \d+ calls against http://127\.0\.0\.1:\d+ \.\.\.", replay[1]), replay
    assert replay[2].split()[:2] == ["id", "action"] and re.fullmatch(r"  \d+ same.*", replay[-1]), replay
    report_step = out.split("\n== agentgate report", 1)[1].split("\n== ", 1)[0].splitlines()
    assert report_step[1].startswith("  reading the period") and report_step[2].startswith("  wrote the evidence report")
    demo = tmp_path / "demo"
    for name in ("calls.jsonl", "calls.ocsf.jsonl", "calls.flows", "assessment-results.json",
                 "assessment-results.approvals.jsonl", "report.html"):
        assert (demo / name).stat().st_size > 0, name
    for name in ("agent.jwt", "approver.jwt"):
        assert (demo / name).stat().st_mode & 0o777 == 0o600, name
    shown = render(demo / "report.html", tmp_path / "demo.png")
    db = demo / "gateway" / "agentgate.db"
    (n,), = sql(db, "select count(*) from calls")
    assert shown["figures"]["records"] == str(n)
    assert shown["figures"]["deny"] == "1" and shown["figures"]["approvals"] == "1"
    assert shown["tables"]["approvals"][0][4] == "sre-sam"
    [(kept,)] = sql(db, "select response_body from calls where action = 'secretsmanager:GetSecretValue'")
    assert MARKER_RE.fullmatch(json.loads(kept)["SecretString"]) and "s3cr3t-pw" not in kept

    # run again in the same directory: the earlier run's gateway home (its issuer, its port, its
    # store) is replaced, not reused, and the story is told again from the start
    again = subprocess.run([str(root / "scripts" / "demo"), "--dir", str(demo)], env=env,
                           capture_output=True, text=True, timeout=170)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.startswith(f"(an earlier demo run in {demo}: its gateway and agent home are replaced)\n")
    assert "ok       dynamodb DeleteTable demo-orders (the same call, after approval)" in again.stdout
    assert sql(db, "select count(*) from calls") == [(n,)]  # this run's calls alone
    assert re.search(rf"OK \(sqlite:///[^)]+\): {n} records in 1 chain", again.stdout)


def test_the_demo_leaves_a_directory_it_did_not_make_alone(tmp_path):
    """--dir naming a directory that holds a `gateway` the demo did not make: refused in one line,
    exit status 2, before anything starts, and nothing in it is touched."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTGATE_", "AWS_"))}
    env["AGENTGATE_DEMO_PYTHON"] = sys.executable
    mine = tmp_path / "mine"
    (mine / "gateway").mkdir(parents=True)
    (mine / "gateway" / "notes.txt").write_text("not the demo's")
    p = subprocess.run([str(root / "scripts" / "demo"), "--dir", str(mine)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == (f"scripts/demo: {mine / 'gateway'} is already there and no earlier demo run made it; "
                        "choose another --dir (or an empty or new one)\n")
    assert p.stdout == ""
    assert sorted(q.name for q in mine.rglob("*")) == ["gateway", "notes.txt"]
    assert (mine / "gateway" / "notes.txt").read_text() == "not the demo's"
