"""Approvals and policy texts when the gateway's connection to PostgreSQL fails, through real
gateways in front of moto (auth on), boto3 as the agent, with a loopback TCP proxy between a
gateway and PostgreSQL (tests/support/tcp_proxy.py) that loses answers, pauses and goes down:

- the answer to the COMMIT that uses an approval is lost (the connection reset after it was
  sent): the store has the approval used by the call, which goes on, held or retried;
- an approval given under a rule's approvers that changed since releases nothing on a replica
  that decides by the new rule: it is withdrawn, the agent told to ask again;
- a silent partition (the proxy paused) answers calls needing an approval 503 within
  commit_timeout, then at once, and leaves an unrelated agent's STS fetch alone; PostgreSQL
  connections carry TCP keepalives;
- policy versions in force while the store was down have their texts stored once it is back;
- a decision while the database takes no writes (default_transaction_read_only on) says the store
  is read-only, not that it cannot be reached, in the console and the CLI; so does one on a SQLite
  store that its file's mount makes read-only."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.exceptions
import pytest

from addons.core.approvals import Approvals
from addons.core.store import Store
from tests.support.postgres import shared_server
from tests.support.tcp_proxy import FaultProxy
from tests.test_approval_e2e import POLICY, approve, console, held, pending, s3, start_gateway, wait_for

BUCKET = "store-faults-bucket"
COMMIT_TIMEOUT = 2.0
TIGHTENED = POLICY.replace("approvers: {groups: [sre]}\n    expires: 2m", "approvers: {sub: [carol]}\n    expires: 2m")
assert TIGHTENED != POLICY


@pytest.fixture
def proxied(tmp_path, issuer, moto):
    """``start(**settings)``: a database, a proxy in front of its server, and a gateway
    (approval_hold 20 s, commit_timeout 2 s) using the database through the proxy."""
    started = []

    def start(**settings):
        direct = shared_server().create_database()
        proxy = FaultProxy(int(direct.rsplit(":", 1)[1].split("/")[0]))
        started.append(proxy)
        gw = start_gateway(tmp_path / "gw", issuer, moto, db=proxy.url_for(direct),
                           **{"approval_hold": 20, "commit_timeout": COMMIT_TIMEOUT, **settings})
        started.append(gw)
        s3(gw, issuer.mint("setup")).create_bucket(Bucket=BUCKET)
        return gw, proxy, direct

    yield start
    for part in reversed(started):
        if isinstance(part, FaultProxy):
            part.resume()
            part.up()
            part.close()
        else:
            part.stop()


def approval_of(url: str, key: str):
    """The approval asked for deleting ``key`` (the latest), from the store directly."""
    store = Store(url)
    try:
        found = [a for a in Approvals(store).list(limit=None) if a.resources == (f"{BUCKET}/{key}",)]
        return found[0] if found else None
    finally:
        store.engine.dispose()


def records(url: str, key: str) -> list[dict]:
    store = Store(url)
    try:
        return [r for r in store.calls(limit=None, newest_first=False) if (r["url"] or "").endswith(f"/{key}")]
    finally:
        store.engine.dispose()


def approve_in_console(gw, approval_id: str, token: str | None = None) -> None:
    with console(gw, token) as c:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={"reason": "ticket 12"})
    assert r.status_code == 200, r.text


def delete(client, key: str) -> tuple[int | str, float, str]:
    """DeleteObject ``key``: (the HTTP status the agent got, or "hung up"; seconds it took; the error's message)."""
    started = time.monotonic()
    try:
        status = client.delete_object(Bucket=BUCKET, Key=key)["ResponseMetadata"]["HTTPStatusCode"]
        message = ""
    except botocore.exceptions.ClientError as e:
        status, message = e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Message"]
    except botocore.exceptions.ReadTimeoutError:
        status, message = "hung up", ""
    return status, time.monotonic() - started, message


# -- a lost answer to the COMMIT that uses an approval ---------------------------------------------


def test_a_lost_commit_answer_releases_the_call_that_used_the_approval(proxied, issuer):
    gw, proxy, direct = proxied()
    client = s3(gw, issuer.mint("agent-1"))
    for key in ("held", "retried"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    # held: approved in the console during the hold; the answer to the COMMIT of its use is lost
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(got=delete(client, "held")))
    t.start()
    asked = wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{BUCKET}/held"]])[0]
    proxy.lose_reply(after=b", used=")
    approve_in_console(gw, asked["id"])
    t.join(15)
    status, _, message = result["got"]
    assert proxy.lost == 1
    assert status == 204, message

    # retried: the first try's client gives up during the hold; approved; the retry uses it and the
    # answer to that COMMIT is lost
    impatient = s3(gw, issuer.mint("agent-1"), read_timeout=1.5)
    assert delete(impatient, "retried")[0] == "hung up"
    # approved once the gateway has seen the first try leave (its mark): a try still held when the
    # approval comes would use it itself, on a loaded machine before the reply is set to be lost
    asked_again = wait_for(lambda: (a := approval_of(direct, "retried")) is not None and a.client_left is not None and a)
    approve_in_console(gw, asked_again.id)
    proxy.lose_reply(after=b", used=")
    status, _, message = delete(client, "retried")
    assert proxy.lost == 2
    assert status == 204, message

    for key, approval_id in (("held", asked["id"]), ("retried", asked_again.id)):
        a = approval_of(direct, key)
        forwarded = [r for r in records(direct, key) if r["outcome"] == "forwarded" and r["status"] == 204]
        assert len(forwarded) == 1, records(direct, key)
        # the approval names the call it released, and that call's record names the approval
        assert (a.id, a.status, a.call_id) == (approval_id, "used", forwarded[0]["id"])
        assert forwarded[0]["approval_id"] == approval_id and forwarded[0]["approver"] == "agentgate:admin"
        assert not [r for r in records(direct, key) if r["status"] == 503]
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchKey|Not Found|404"):
        client.get_object(Bucket=BUCKET, Key="held")
    assert gw.log().count("the answer to its use by call") == 2
    verified = gw.cli("verify", "--db", direct).stdout
    assert re.search(r"as \d+ approval events? left (it|them)", verified), verified


# -- an approval given under approvers that changed since ----------------------------------------


def test_an_approval_given_before_the_rules_approvers_changed_releases_nothing(tmp_path, issuer, moto):
    url = shared_server().create_database()
    a = start_gateway(tmp_path / "a", issuer, moto, db=url, approval_hold=1)
    b = start_gateway(tmp_path / "b", issuer, moto, db=url, approval_hold=20)  # the same keys as a: started after it
    try:
        s3(a, issuer.mint("setup")).create_bucket(Bucket=BUCKET)
        on_a, on_b = s3(a, issuer.mint("agent-1")), s3(b, issuer.mint("agent-1"))
        for key in ("retried", "held"):
            on_a.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        # asked under the rule as it was (approvers: group sre); then b's copy names only carol
        code, _, retried_id = held(lambda: on_a.delete_object(Bucket=BUCKET, Key="retried"))
        assert code == "ApprovalPending"
        code, _, held_id = held(lambda: on_a.delete_object(Bucket=BUCKET, Key="held"))
        assert code == "ApprovalPending"
        (b.home / "policies" / "test.yaml").write_text(TIGHTENED)
        time.sleep(1.2)  # b reads its policy files again at most every second

        # retried on b after alice (sre) approved it: refused, the approval withdrawn
        approve_in_console(a, retried_id, issuer.mint("alice", groups=["sre"]))
        code, message, header = held(lambda: on_b.delete_object(Bucket=BUCKET, Key="retried"))
        assert (code, header) == ("AccessDenied", retried_id)
        assert "sub carol" in message and "alice is not among them" in message and "new approval" in message, message

        # held on b, joining the approval asked on a, released by alice's approval: refused the same way
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(got=delete(on_b, "held")))
        t.start()
        time.sleep(1.0)
        approve_in_console(a, held_id, issuer.mint("alice", groups=["sre"]))
        t.join(15)
        status, _, message = result["got"]
        assert status == 403 and "sub carol" in message and "new approval" in message, message

        for key, approval_id in (("retried", retried_id), ("held", held_id)):
            withdrawn = approval_of(url, key)
            assert (withdrawn.id, withdrawn.status, withdrawn.approver, withdrawn.revoked_by) == (
                approval_id, "revoked", "alice", "agentgate:policy")
            assert "sub carol" in withdrawn.revoke_reason
            refused = [r for r in records(url, key) if r["approval_id"] == approval_id and r["outcome"] == "refused"
                       and r["status"] == 403]
            assert refused and not [r for r in records(url, key) if r["status"] == 204]
            assert "withdrawn" in refused[-1]["error"]
        # the object is still there, and the retry asks carol for a new approval
        assert on_a.get_object(Bucket=BUCKET, Key="retried")["ResponseMetadata"]["HTTPStatusCode"] == 200
        quick = s3(b, issuer.mint("agent-1"), read_timeout=1.5)
        assert delete(quick, "retried")[0] == "hung up"
        fresh = wait_for(lambda: (x := approval_of(url, "retried")) and x.id != retried_id and x)
        assert fresh.status == "pending" and fresh.approvers == {"sub": ["carol"]}
        verified = a.cli("verify", "--db", url).stdout
        assert re.search(r"as \d+ approval events? left (it|them)", verified), verified
    finally:
        a.stop()
        b.stop()


# -- a silent partition ------------------------------------------------------------------------------


def test_a_silent_partition_answers_calls_needing_approval_in_bounded_time(proxied, issuer):
    gw, proxy, direct = proxied(fail_open=True)  # answered while the store cannot write: the STS fetch beside is seen
    client = s3(gw, issuer.mint("agent-1"), max_pool_connections=20)
    client.put_object(Bucket=BUCKET, Key="before", Body=b"x")
    # approvals asked side by side leave the store's pool with open connections, as traffic does
    quick = s3(gw, issuer.mint("agent-1"), read_timeout=1, max_pool_connections=20)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda n: delete(quick, f"warm-{n}")[0], range(8))) == {"hung up"}

    proxy.pause()
    paused = time.monotonic()
    resume = threading.Timer(12, proxy.resume)
    resume.start()
    with ThreadPoolExecutor(12) as pool:
        # a call whose record the writer sends first: it waits for the database's verdict
        first = pool.submit(client.put_object, Bucket=BUCKET, Key="first", Body=b"x")
        time.sleep(0.3)
        waves = [pool.submit(delete, client, f"partitioned-{n}") for n in range(10)]
        time.sleep(0.5)
        # another agent's first call: the gateway fetches its credentials from STS meanwhile
        started = time.monotonic()
        other = s3(gw, issuer.mint("agent-2")).put_object(Bucket=BUCKET, Key="beside", Body=b"x")
        beside = time.monotonic() - started
        answered = [w.result(timeout=60) for w in waves]
        # the store is known unable to write now: a call needing approval is answered at once
        status, took, message = delete(client, "known-down")
        still_paused = time.monotonic() - paused < 12
        first.result(timeout=60)
    resume.join()
    # up to commit_timeout for the approval, and up to as long again for the refusal's record
    assert max(seconds for _, seconds, _ in answered) < 2 * COMMIT_TIMEOUT + 1.5, answered
    assert beside < COMMIT_TIMEOUT + 1.5, f"the other agent's call took {beside:.1f} s"
    assert took < 1.0 and still_paused, (status, took, message)
    for got, _, text in answered:
        assert got == 503 and "retry this same call shortly" in text, (got, text)
    assert other["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert status == 503 and "cannot write to its store" in message, message
    # once the store answers again, calls needing approval are held and asked for as before
    wait_for(lambda: records(direct, "known-down"), timeout=20)
    assert delete(quick, "after")[0] == "hung up"
    assert wait_for(lambda: approval_of(direct, "after")).status == "pending"
    assert not [a for n in range(10) if (a := approval_of(direct, f"partitioned-{n}"))], "asked after being answered"


def test_postgresql_connections_carry_keepalives():
    """The store's connections (pool, writer) and the approvals' LISTEN connection: a server gone
    silent is noticed by TCP keepalives and tcp_user_timeout, in seconds."""
    store = Store(shared_server().create_database())
    try:
        def options(fd: int) -> tuple[int, int, int]:
            s = socket.socket(fileno=os.dup(fd))
            try:
                return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
            finally:
                s.close()

        with store.engine.connect() as conn:
            assert options(conn.connection.driver_connection.fileno()) == (1, 5, 10_000)
        with Approvals(store)._listen_connection() as listening:
            assert options(listening.fileno()) == (1, 5, 10_000)
    finally:
        store.engine.dispose()


# -- policy texts while the store is down ---------------------------------------------------------


def test_every_policy_version_that_decided_a_call_has_its_text_stored(proxied, issuer):
    gw, proxy, direct = proxied()
    client = s3(gw, issuer.mint("agent-1"))
    client.put_object(Bucket=BUCKET, Key="v1", Body=b"x")
    policy = gw.home / "policies" / "test.yaml"
    proxy.down()
    for n in (2, 3):  # two versions come and go while the store cannot be reached
        policy.write_text(POLICY + f"# version {n}\n")
        time.sleep(1.2)
        status, _, message = delete(client, f"v{n}-missing")  # decided (approve) by version n, then refused
        assert status == 503, message
    proxy.up()
    for key in ("v2-missing", "v3-missing"):  # their records, kept, are written once the store is back
        wait_for(lambda: records(direct, key), timeout=20)
    client.put_object(Bucket=BUCKET, Key="after", Body=b"x")
    store = Store(direct)
    try:
        named = {r["policy_version"] for r in store.calls(limit=None) if r["policy_version"]}
        assert len(named) == 3, named
        missing = [v for v in named if store.policy_version(v) is None]
    finally:
        store.engine.dispose()
    assert not missing, f"policy versions named by records with no stored text: {missing}"
    for version in named:
        assert "deleting-needs-sre" in gw.cli("policy", "show", version, "--db", direct).stdout


# -- a store that takes no writes ------------------------------------------------------------------


def read_only(url: str, on: bool) -> None:
    """Turn ``default_transaction_read_only`` on (or off) for the database ``url`` names, as an
    operator would, and end its sessions, so that every connection made from then on is so."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname="postgres", autocommit=True) as conn:
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        conn.execute(f'ALTER DATABASE "{u.database}" {setting}')
        ended = [r[0] for r in conn.execute("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                                            "WHERE datname = %s AND pid <> pg_backend_pid()", (u.database,))]
        wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,)).fetchall())


def test_a_decision_on_a_read_only_store_says_it_is_read_only_not_unreachable(proxied, issuer):
    """An approver approves while the store takes no writes (default_transaction_read_only on, as on
    a hot standby): nothing is decided, and the console and `agentgate approvals approve` say the
    store refused the write because it is read-only and what to do, not that it cannot be reached;
    a store that cannot be reached still says so. Once it takes writes again, the approval goes."""
    gw, proxy, direct = proxied()
    impatient = s3(gw, issuer.mint("agent-1"), read_timeout=1)
    assert delete(impatient, "read-only")[0] == "hung up"  # held; its approval pending
    approval_id = wait_for(lambda: approval_of(direct, "read-only")).id
    alice = issuer.mint("alice", groups=["sre"])

    read_only(direct, True)
    with console(gw, alice) as c:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={"reason": "ticket 12"})
    assert r.status_code == 503, r.text
    said = r.json()["error"]
    assert "refused the write because it is read-only" in said and "cannot be reached" not in said, said
    assert "default_transaction_read_only" in said and "primary" in said, said
    cli = approve(gw, issuer, approval_id, check=False)
    assert cli.returncode == 1 and f"Error: {said}" in cli.stderr, cli.stderr  # the CLI says the same
    assert approval_of(direct, "read-only").status == "pending"  # fails closed: nothing approved

    proxy.down()
    try:
        with console(gw, alice) as c:
            r = c.post(f"/api/approvals/{approval_id}/approve", json={})
        assert r.status_code == 503 and "cannot be reached" in r.json()["error"], r.text
        assert "read-only" not in r.json()["error"], r.text
        cli = approve(gw, issuer, approval_id, check=False)
        assert cli.returncode == 1 and "cannot read the store" in cli.stderr and "read-only" not in cli.stderr, (
            cli.stderr)
    finally:
        proxy.up()

    read_only(direct, False)
    with console(gw, alice) as c:
        r = c.post(f"/api/approvals/{approval_id}/approve", json={})
    assert r.status_code == 200, r.text
    assert approval_of(direct, "read-only").status == "approved"


@pytest.fixture
def read_only_mount(tmp_path):
    """``mount(directory)``: the directory again, at another path, through a read-only bind mount,
    as a store's volume is mounted read-only where an approver runs the CLI. (Not chmod: the tests
    run as root, who writes read-only files; nor a URL with mode=ro, which no operator writes by
    mistake. A read-only mount refuses root's writes too, and SQLite opens the file read-only.)"""
    mounted = []

    def mount(directory: Path) -> Path:
        at = tmp_path / f"read-only-{len(mounted)}"
        at.mkdir()
        p = subprocess.run(["mount", "--bind", str(directory), str(at)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot bind-mount a directory here ({p.stderr.strip()}); run as root to test a read-only store")
        mounted.append(at)
        p = subprocess.run(["mount", "-o", "remount,bind,ro", str(at)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return at

    yield mount
    for at in reversed(mounted):
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def test_a_decision_on_a_read_only_sqlite_store_says_it_is_read_only_not_unreachable(tmp_path, issuer, moto,
                                                                                     read_only_mount):
    """An approver runs `agentgate approvals approve` against a gateway's SQLite store where its
    volume is mounted read-only: SQLite refuses the write ("attempt to write a readonly database").
    The CLI says the store refused the write because it is read-only and what to do, not that it
    cannot be reached; nothing is approved. Through the writable path the approval goes."""
    gw = start_gateway(tmp_path / "gw", issuer, moto, approval_hold=0.5)
    try:
        client = s3(gw, issuer.mint("agent-1"))
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="read-only-file", Body=b"x")
        status, _, message = delete(client, "read-only-file")
        assert status == 403 and "is pending" in message, message  # ApprovalPending
        writable = f"sqlite:///{gw.db_path}"
        approval_id = approval_of(writable, "read-only-file").id
        read_only = f"sqlite:///{read_only_mount(gw.db_path.parent) / gw.db_path.name}"

        cli = approve(gw, issuer, approval_id, "alice", ("sre",), "--db", read_only, check=False)
        assert cli.returncode == 1, (cli.stdout, cli.stderr)
        said = cli.stderr.strip().splitlines()[-1]  # (after a warning about the token file's mode)
        assert said.startswith(f"Error: the store at {read_only} refused the write because it is read-only "
                               "(attempt to write a readonly database): nothing was changed."), said
        assert "cannot be reached" not in said and "mounted read-only" in said and "mode=ro" in said, said
        assert "default_transaction_read_only" not in said, said  # PostgreSQL's words are not SQLite's
        assert approval_of(writable, "read-only-file").status == "pending"  # fails closed: nothing approved

        approve(gw, issuer, approval_id, "alice", ("sre",), "--db", writable)
        assert approval_of(writable, "read-only-file").status == "approved"
    finally:
        gw.stop()
