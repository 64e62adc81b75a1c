"""``agentgate run --workers N``: N gateway processes on one port, one CA, one policy directory and
one store. A call held by one worker is released by an approval made through the other worker's
console; every worker keeps its own hash chain and ``agentgate verify`` passes; a worker that dies is
started again; SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time

import botocore.exceptions
import httpx
import pytest

from tests.support.gateway import AGENTGATE, Gateway, free_port, wait_port
from tests.support.postgres import shared_server
from tests.test_approval_e2e import BUCKET, POLICY, held, s3, signed_out_on_both, wait_for


def workers_of(gw: Gateway) -> set[int]:
    """The supervisor's child processes (the workers)."""
    pid = gw.proc.pid
    try:
        return {int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()}
    except OSError:
        return set()


def both_listening(gw: Gateway, listens: int = 2, timeout: float = 30) -> None:
    """Wait until the supervisor has two workers and its log has said "listening on" ``listens`` times."""
    wait_for(lambda: len(workers_of(gw)) == 2 and gw.log().count("listening on") >= listens, timeout=timeout)


def workers_before(home, issuer, upstream) -> Gateway:
    """Two workers (not started) in front of ``upstream``, a tests.test_faults.FaultyUpstream, with
    the gateway's own STS keys; ``gw.sent`` ready for tests.test_recording_e2e.agent."""
    from tests.test_recording_e2e import GATEWAY_KEY

    gw = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY, settings={"workers": 2})
    gw.sent = []
    return gw


def start_workers(home, issuer, moto, **settings) -> Gateway:
    settings = {"workers": 2, "console_listen": f"127.0.0.1:{free_port()}", **settings}
    gw = Gateway(home, issuer=issuer.issuer, upstream=moto.url, policy=POLICY, settings=settings,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
    gw.start()
    both_listening(gw)
    return gw


@pytest.fixture(scope="module")
def pg_workers(tmp_path_factory, issuer, moto):
    url = shared_server().create_database()
    gw = start_workers(tmp_path_factory.mktemp("workers-pg"), issuer, moto, db=url, approval_hold=20)
    try:
        yield gw, url
    finally:
        gw.stop()


def console_of(gw: Gateway, pid: int) -> httpx.Client:
    """A console client whose kept-alive connection is served by worker ``pid`` (the kernel spreads
    new connections over the workers sharing the port; try new ones until one lands there)."""
    token = (gw.home / "keys" / "admin.token").read_text().strip()
    for _ in range(200):
        c = httpx.Client(base_url=f"http://{gw.settings['console_listen']}", trust_env=False,
                         headers={"authorization": f"Bearer {token}"})
        r = c.get("/api/state")
        assert r.status_code == 200, r.text
        if int(r.headers["x-agentgate-worker"]) == pid:
            return c
        c.close()
    raise AssertionError(f"no console connection reached worker {pid}")


def test_a_call_held_by_one_worker_is_released_through_the_other(pg_workers, issuer):
    gw, url = pg_workers
    client = s3(gw, issuer.mint("agent-1"))
    client.create_bucket(Bucket=BUCKET)
    result: dict = {}

    def agent():
        result["status"] = client.delete_object(Bucket=BUCKET, Key="held")["ResponseMetadata"]["HTTPStatusCode"]

    t = threading.Thread(target=agent)
    t.start()
    held = wait_for(lambda: re.search(r"\[(\d+)\] agentgate\.approval: holding s3:DeleteObject for agent-1: "
                                      r"approval (\S+) ", gw.log()))
    holder, approval_id = int(held.group(1)), held.group(2)
    assert holder in workers_of(gw)
    other = (workers_of(gw) - {holder}).pop()
    c = console_of(gw, other)
    try:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={"reason": "through the other worker"})
    finally:
        c.close()
    assert r.status_code == 200, r.text
    assert int(r.headers["x-agentgate-worker"]) == other
    t.join(15)
    assert result.get("status") == 204

    from addons.core.store import Store

    store = Store(url)
    try:
        released = [c for c in store.calls(principal="agent-1") if c["approval_id"] == approval_id]
    finally:
        store.engine.dispose()
    assert len(released) == 1
    assert (released[0]["outcome"], released[0]["approver"]) == ("forwarded", "agentgate:admin")
    assert f":{holder}:" in released[0]["writer_id"]  # recorded by the worker that held it


def test_a_retry_of_a_call_whose_try_left_is_answered_at_once_by_either_worker(pg_workers, issuer):
    """A client whose read timeout (1 s) is shorter than the hold (20 s) leaves its first try on one
    worker; its retries, each on a new connection that the kernel gives to either worker, are all
    answered ApprovalPending at once, naming the approval (the other worker held them again for
    the whole hold: the worker the try left knew it alone)."""
    from addons.core.store import Store

    gw, url = pg_workers
    token = issuer.mint("agent-1")
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        s3(gw, token, read_timeout=1, connect_timeout=2).delete_object(Bucket=BUCKET, Key="left-early")
    store = Store(url)
    try:
        def under(approval_id: str, outcome: str) -> list[dict]:
            return [c for c in store.calls(principal="agent-1", outcome=outcome, limit=None)
                    if c["approval_id"] and c["approval_id"] == (approval_id or c["approval_id"])
                    and c["resources"] == [f"{BUCKET}/left-early"]]

        [gone] = wait_for(lambda: under("", "client_gone"), timeout=5)
        approval_id, left_on = gone["approval_id"], int(gone["writer_id"].split(":")[1])
        answered_by: set[int] = set()
        for _ in range(40):  # a new client, so a new connection, each time
            started = time.monotonic()
            code, message, got = held(lambda: s3(gw, token, read_timeout=60).delete_object(Bucket=BUCKET,
                                                                                           Key="left-early"))
            took = time.monotonic() - started
            assert (code, got) == ("ApprovalPending", approval_id) and took < 5, (code, took, message)
            assert "answered at once" in message, message
            answered_by = {int(c["writer_id"].split(":")[1]) for c in under(approval_id, "held")}
            if answered_by - {left_on}:
                break
    finally:
        store.engine.dispose()
    assert answered_by - {left_on} and answered_by <= workers_of(gw), (answered_by, left_on, workers_of(gw))


def test_a_console_session_signed_out_on_one_worker_is_ended_on_the_other(pg_workers, issuer):
    gw, _ = pg_workers
    first, second = sorted(workers_of(gw))
    a, b = console_of(gw, first), console_of(gw, second)
    try:
        signed_out_on_both(a, b, issuer)
    finally:
        a.close()
        b.close()


def test_both_workers_serve_and_each_keeps_a_chain_that_verifies(pg_workers, issuer):
    gw, url = pg_workers
    token = issuer.mint("agent-2")
    for i in range(24):  # a new client, so a new connection, each time
        s3(gw, token).put_object(Bucket=BUCKET, Key=f"spread-{i}", Body=b"x")

    from addons.core.store import Store

    store = Store(url)
    try:
        writers = {c["writer_id"] for c in store.calls(principal="agent-2")}
    finally:
        store.engine.dispose()
    pids = {int(w.split(":")[1]) for w in writers}
    assert pids == workers_of(gw), (pids, workers_of(gw))
    p = gw.cli("verify", "--db", url, "--json")
    import json

    result = json.loads(p.stdout)
    assert result["ok"] is True and result["chains"] >= 2, result


def test_a_worker_that_dies_is_started_again(pg_workers, issuer):
    gw, _ = pg_workers
    before = workers_of(gw)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(workers_of(gw)) == 2 and victim not in workers_of(gw), timeout=30)
    assert (f"(pid {victim}) exited with -9 (killed by SIGKILL); calls in flight on it may have reached AWS without a "
            "record; starting it again") in gw.log()
    new = (workers_of(gw) - before).pop()
    wait_for(lambda: f"[{new}] agentgate: worker" in gw.log() or f"pid {new} is worker 0" in gw.log(), timeout=30)
    token = issuer.mint("agent-3")
    for i in range(12):
        s3(gw, token).head_bucket(Bucket=BUCKET)


def test_a_stopped_worker_is_killed_and_replaced_within_the_heartbeat_timeout(tmp_path, issuer, moto):
    """A worker that hangs (SIGSTOP here; an event loop stuck in a blocking call alike) never exits,
    and the kernel goes on giving it new connections: its heartbeat stops, and the supervisor kills
    it and starts another within heartbeat_timeout (3 s) and a little, saying which worker, how long
    it was silent and that calls it held may have reached AWS without a record. Calls after that
    succeed on both workers, and verify passes."""
    gw = start_workers(tmp_path / "gw", issuer, moto, heartbeat_timeout=3)
    try:
        token = issuer.mint("agent-7")
        s3(gw, token).create_bucket(Bucket=BUCKET)
        before = workers_of(gw)
        victim = max(before)
        time.sleep(1.5)  # a beat or two from each worker first
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: victim not in workers_of(gw) and len(workers_of(gw)) == 2, timeout=30)
        took = time.monotonic() - stopped
        assert took < 3 + 3, took  # the timeout, the supervisor's look, a fork
        line = re.search(rf"worker (\d) \(pid {victim}\) gave no heartbeat for ([0-9.]+) s \(heartbeat_timeout 3 s\), "
                         r"it is stopped: killing it and starting another; calls it held may have reached AWS without "
                         r"a record", gw.log())
        assert line and 3 <= float(line.group(2)) < 5, gw.log()[-3000:]
        assert f"(pid {victim}), killed as hung, exited with -9; starting it again" in gw.log()
        new = (workers_of(gw) - before).pop()
        wait_for(lambda: f"[{new}] agentgate: worker" in gw.log() or f"pid {new} is worker 0" in gw.log(), timeout=30)
        for i in range(12):  # a new client, so a new connection, each time: both workers answer
            s3(gw, token, read_timeout=10).put_object(Bucket=BUCKET, Key=f"after-{i}", Body=b"x")
        assert gw.proc.poll() is None
    finally:
        gw.stop()
    assert gw.cli("verify").returncode == 0


def test_sighup_stops_every_worker_after_the_calls_in_flight(tmp_path, issuer):
    """A terminal that hangs up (SIGHUP) stops the supervisor and its workers the way SIGTERM does,
    with a line naming the signal: the call in flight is answered and recorded, exit status 0 (the
    supervisor died of it at once, silently)."""
    from tests.test_faults import FaultyUpstream
    from tests.test_recording_e2e import agent
    from tests.test_stopping import call_in_flight

    with FaultyUpstream() as upstream:
        gw = workers_before(tmp_path / "gw", issuer, upstream)
        gw.start()
        try:
            both_listening(gw)
            pids = workers_of(gw)
            sub, client = agent(gw, issuer, "hangup", "s3", read_timeout=30)
            thread, got = call_in_flight(client)
            gw.proc.send_signal(signal.SIGHUP)
            assert gw.proc.wait(30) == 0
            thread.join(30)
        finally:
            gw.stop()
        assert got == {"body": b"<ok/>"}
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        [r] = [r for r in gw.records() if r["principal"] == sub]
        assert (r["outcome"], r["status"]) == ("forwarded", 200), r
        assert f"[{gw.proc.pid}] agentgate.workers: SIGHUP: stopping 2 worker(s): calls in flight are answered and " \
               "recorded first" in gw.log()
        assert "exited with" not in gw.log()  # stopped, not restarted
        assert gw.cli("verify").returncode == 0


def test_a_worker_that_cannot_start_again_while_the_store_is_down_is_retried_and_the_others_serve_on(
        tmp_path, issuer, moto):
    """PostgreSQL down, a worker dies: its restarts fail (the store cannot be opened) and are
    retried, each after a longer wait, while the other worker goes on serving (failing closed);
    once the store is back, the worker starts and both serve."""
    from tests.support.postgres import PostgresServer

    with PostgresServer(fsync=False) as pg:
        gw = start_workers(tmp_path / "gw", issuer, moto, db=pg.url)
        try:
            token = issuer.mint("agent-5")
            s3(gw, token).list_buckets()
            survivor, victim = sorted(workers_of(gw))
            pg.stop()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: re.search(r"exited with 2; starting it again in [0-9.]+ s", gw.log()), timeout=30)
            assert gw.proc.poll() is None and survivor in workers_of(gw)  # nothing else was stopped
            with pytest.raises(Exception) as refused:  # the survivor fails closed meanwhile
                s3(gw, token).list_buckets()
            assert "ServiceUnavailable" in str(refused.value) or "503" in str(refused.value), refused.value
            pg.start()
            both_listening(gw, listens=3, timeout=60)
            assert survivor in workers_of(gw)
            for _ in range(12):  # both serve: the kernel spreads new connections over them
                s3(gw, token).list_buckets()
        finally:
            gw.stop()
        assert "stopping the others" not in gw.log()


def test_workers_stop_when_their_supervisor_dies(tmp_path, issuer, moto):
    """The supervisor killed (SIGKILL: no chance to stop them): the workers stop by themselves
    rather than serve on unsupervised, holding the port from a new supervisor."""
    gw = start_workers(tmp_path / "gw", issuer, moto)
    pids = workers_of(gw)
    gw.proc.kill()
    gw.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        except OSError:
            return True
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=30)
    gw.stop()


def test_sigterm_stops_every_worker(tmp_path, issuer, moto):
    gw = start_workers(tmp_path / "gw", issuer, moto)  # SQLite, WAL
    token = issuer.mint("agent-4")
    s3(gw, token).list_buckets()
    pids = workers_of(gw)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    gw.stop()
    p = gw.cli("verify")
    assert p.returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", ["listen", "console_listen"])
def test_a_port_already_taken_is_a_clear_error(tmp_path, issuer, moto, workers, name):
    """Said before anything starts, by one process or by the supervisor of several, and nothing
    claims to listen."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=POLICY,
                     settings={"workers": workers}, aws_key=("x", "y"))
        gw.init()
        env = {**gw.env, f"AGENTGATE_{name.upper()}": f"127.0.0.1:{port}"}
        p = subprocess.run([AGENTGATE, "run"], env=env, capture_output=True, text=True, timeout=60, cwd=gw.home)
    finally:
        taken.close()
    assert p.returncode in (1, 2), p.stderr
    assert f"cannot listen on 127.0.0.1:{port} ({name}): Address already in use; stop what holds it, or set {name} " \
           "to a free HOST:PORT" in p.stderr
    assert "agentgate listening" not in p.stderr and "Traceback" not in p.stderr


def test_one_worker_checks_each_policy_version(tmp_path, issuer, moto):
    """Every worker puts a changed policy in force; one of them logs what `policy check` finds in
    it (the check is a few seconds of CPU and up to 200 MB, once is enough)."""
    import json

    gw = start_workers(tmp_path / "gw", issuer, moto)
    try:
        first = re.search(r"policies: .* \(version (\w+)\)", gw.log()).group(1)  # as the banner says
        (gw.home / "policies" / "extra.yaml").write_text(
            "version: 1\nrules:\n  - {id: no-invoke, action: lambda:Invoke, decision: deny}\n")
        token = issuer.mint("agent-6")
        out = tmp_path / "calls.jsonl"

        def both_workers_decided_by_the_new_version() -> bool:
            for _ in range(4):
                s3(gw, token).list_buckets()  # a new client, a new connection: the kernel picks the worker
            gw.cli("export", "--format", "jsonl", "-o", str(out))
            calls = [json.loads(line) for line in out.read_text().splitlines()]
            newest = calls[-1]["policy_version"]  # the version the policies' directory holds now
            return newest != first and len({c["writer_id"] for c in calls if c["policy_version"] == newest}) == 2
        wait_for(both_workers_decided_by_the_new_version, timeout=60, every=0.5)
        finding = "rule no-invoke: lambda:Invoke is an API operation's name"
        wait_for(lambda: finding in gw.log(), timeout=60)
        time.sleep(3)  # a second check, had one run, would have ended too
        assert gw.log().count(finding) == 1, gw.log()[-3000:]
    finally:
        gw.stop()


def test_workers_put_a_policy_change_in_force_with_no_calls_and_the_first_says_so(tmp_path, issuer, moto):
    """With no calls, each worker puts a changed policy in force within about a second; the first
    logs it (INFO), and a broken change's file:line (ERROR), once for the gateway; the others log
    theirs at DEBUG, each line naming its process."""
    gw = start_workers(tmp_path / "gw", issuer, moto)
    try:
        first = re.search(r"policies: .* \(version (\w+)\)", gw.log()).group(1)  # as the banner says
        policy = gw.home / "policies" / "test.yaml"
        policy.write_text(POLICY + "# changed\n")
        line = r"(\w+) \[(\d+)\] agentgate.policy: policy version (\w+) in force, replacing " + first
        found = wait_for(lambda: len(re.findall(line, gw.log())) == 2 and re.findall(line, gw.log()), timeout=10)
        assert sorted(level for level, _, _ in found) == ["DEBUG", "INFO"], found
        assert {int(pid) for _, pid, _ in found} == workers_of(gw) and len({v for _, _, v in found}) == 1
        policy.write_text(POLICY + "  - id: broken\n    decision: maybe\n")
        error = r"(\w+) \[\d+\] agentgate.policy: policy change not applied, the last good version stays in force: " \
                r"test\.yaml:\d+: rule broken: decision must be allow, deny or approve"
        wait_for(lambda: len(re.findall(error, gw.log())) == 2, timeout=10)
        time.sleep(2.5)  # a second report, had one come, would be there by now
        assert sorted(re.findall(error, gw.log())) == ["DEBUG", "ERROR"], gw.log()[-3000:]
    finally:
        gw.stop()


LOCKED = ("cannot write: database is locked; another process holds a write transaction on it (a sqlite3 shell, a "
          "backup, a migration): end it, then start the gateway again")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_store_locked_at_start_up_is_said_in_one_line(tmp_path, issuer, moto, workers):
    """Another process holds a write transaction on the SQLite store longer than the gateway waits:
    the gateway says so in one line and exits 2, and so do workers: a worker whose start fails, after
    however long, stops the others, and the supervisor exits with its status, the worker's line said
    once and no traceback. The lock's holder commits afterwards: its write is there and the store
    verifies."""
    import sqlite3

    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=POLICY,
                 settings={"workers": workers},
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
    gw.init()
    lock = sqlite3.connect(gw.db_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    lock.execute("CREATE TABLE held_by_another (note TEXT)")
    lock.execute("INSERT INTO held_by_another VALUES ('written while the gateway started')")
    started = time.monotonic()
    try:
        p = subprocess.run([AGENTGATE, "run"], env=gw.env, capture_output=True, text=True, timeout=45, cwd=gw.home)
    finally:
        took = time.monotonic() - started
        lock.execute("COMMIT")
        lock.close()
    assert p.returncode == 2, p.stderr
    said = p.stderr.splitlines()
    assert said[0] == f"agentgate: the store at sqlite:///{gw.db_path} {LOCKED}", p.stderr
    if workers == 1:
        assert said == said[:1], p.stderr
    else:  # the supervisor's line after it, and nothing else: no restart, no traceback, no second copy
        assert len(said) == 2 and re.fullmatch(r"agentgate: worker [01] exited with 2 while starting; stopping the "
                                               r"others", said[1]), p.stderr
    assert "Traceback" not in p.stderr and took < 40, (took, p.stderr)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", gw.port)) != 0  # nothing left listening
    check = sqlite3.connect(gw.db_path)
    try:
        assert check.execute("SELECT note FROM held_by_another").fetchall() == [("written while the gateway started",)]
    finally:
        check.close()
    assert gw.cli("verify").returncode == 0


def test_a_worker_whose_restart_finds_the_store_locked_is_started_again_until_the_lock_is_gone(tmp_path, issuer, moto):
    """A worker that served and died is started again, also when its new start fails slowly (the
    SQLite store locked by another process longer than the gateway waits): the supervisor says the
    worker's line each time, then starts it again, each time after a longer wait, and the other
    worker is not stopped; once the lock is gone, both serve."""
    import sqlite3

    gw = start_workers(tmp_path / "gw", issuer, moto)
    try:
        token = issuer.mint("agent-locked")
        s3(gw, token).list_buckets()
        survivor, victim = sorted(workers_of(gw))
        lock = sqlite3.connect(gw.db_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(re.findall(r"exited with 2; starting it again in [0-9.]+ s", gw.log())) >= 2,
                     timeout=60)
            assert gw.proc.poll() is None and survivor in workers_of(gw)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        both_listening(gw, listens=3, timeout=60)
        wait_port(gw.port, proc=gw.proc)
        for _ in range(12):  # both serve: the kernel spreads new connections over them
            s3(gw, token).list_buckets()
    finally:
        gw.stop()
    log = gw.log()
    assert "stopping the others" not in log and "Traceback" not in log and not re.search(r"worker \d+ failed", log), log
    assert log.count(f"agentgate: the store at sqlite:///{gw.db_path} {LOCKED}") >= 2, log
    waits = [float(w) for w in re.findall(r"exited with 2; starting it again in ([0-9.]+) s", log)]
    assert waits[1] == 2 * waits[0] >= 2, log  # each failed start: twice the wait before it


def test_a_worker_on_sqlite_waits_before_small_commits_while_many_clients_are_connected(tmp_path):
    from mitmproxy.test import tflow

    from addons.core.store import Store
    from addons.gateway import GROUP_DELAY, GROUP_DELAY_FROM, GroupDelay

    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    addon = GroupDelay(s)
    clients = [tflow.tclient_conn() for _ in range(GROUP_DELAY_FROM)]
    for c in clients[:-1]:
        addon.client_connected(c)
        assert s.group_delay == 0
    addon.client_connected(clients[-1])
    assert s.group_delay == GROUP_DELAY > 0
    addon.client_disconnected(clients[0])
    assert s.group_delay == 0
    s.engine.dispose()


def test_two_workers_on_sqlite_group_their_commits_while_many_agents_call(tmp_path, issuer):
    """Two workers sharing one SQLite file, three times GROUP_DELAY_FROM agents calling at once: a
    worker with that many clients has its writer wait before small commits, and says at exit how
    often it did; every call is answered and has its record, and the chains verify."""
    from concurrent.futures import ThreadPoolExecutor

    from addons.gateway import GROUP_DELAY_FROM
    from tests.test_faults import FaultyUpstream
    from tests.test_recording_e2e import agent

    with FaultyUpstream() as upstream:
        gw = workers_before(tmp_path / "gw", issuer, upstream)
        gw.start()
        try:
            both_listening(gw)
            agents = [agent(gw, issuer, f"crowd{n}", "s3") for n in range(3 * GROUP_DELAY_FROM)]
            together = threading.Barrier(len(agents))

            def calls(one) -> list[int]:
                _, client = one
                statuses = [client.list_buckets()["ResponseMetadata"]["HTTPStatusCode"]]  # connected
                together.wait(60)  # every agent connected before the rest
                statuses += [client.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] for _ in range(10)]
                return statuses

            with ThreadPoolExecutor(len(agents)) as pool:
                statuses = list(pool.map(calls, agents))
        finally:
            gw.stop()
        assert statuses == [[200] * 11] * len(agents)
        waits = [int(n) for n in re.findall(r"records written in \d+ commits .*; (\d+) waits of a group delay", gw.log())]
        assert waits and sum(waits) > 0, gw.log()[-3000:]
        subs = {sub for sub, _ in agents}
        records = [r for r in gw.records() if r["principal"] in subs]
        assert len(records) == 11 * len(agents) and {r["status"] for r in records} == {200}
        assert gw.cli("verify").returncode == 0
