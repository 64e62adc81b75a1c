"""One record per flow, through a real gateway, on SQLite and on PostgreSQL: forwarded, refused by
policy, refused at CONNECT (a bad token; a host that is not AWS), tunnelled, failed upstream, and
the client gone before the answer while upstream is slow, and a large answer whose agent hangs up
while it streams (recorded before its first byte: one record, and a log line). Each flow leaves
exactly one record, and no credential reaches the store: the database's bytes are scanned.
Then durability "async" through a gateway, and `agentgate init` and `agentgate run` migrating a
store, or refusing one newer than the code, as processes."""

from __future__ import annotations

import base64
import http.client
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import botocore.exceptions
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from addons.core.records import REDACTED_HEADERS
from addons.core.store import Store, alembic_config, head_revision
from tests.support.gateway import Gateway, free_port
from tests.support.postgres import shared_server
from tests.test_identity_e2e import connect

GATEWAY_KEY = ("AKIAGATEWAYRECORDING", "gateway-secret-not-used-by-the-canned-upstream")
COOKIE = f"agent-session={secrets.token_hex(12)}"


def db_url_for(backend: str, gw_home) -> str:
    return shared_server().create_database() if backend == "postgresql" else f"sqlite:///{gw_home / 'agentgate.db'}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recording(request, tmp_path_factory, issuer, upstream, tls_server):
    """A gateway on each store, upstream the canned stand-in; the loopback TLS server is on its
    allow_hosts. ``gw.sent`` collects every credential the agents sent, for the scan at the end."""
    home = tmp_path_factory.mktemp(f"recording-{request.param}")
    db = db_url_for(request.param, home)
    gw = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"db": db, "oidc_leeway": 1, "allow_hosts": [f"127.0.0.1:{tls_server.port}"],
                           "allow_private": [f"127.0.0.1:{tls_server.port}"]})
    gw.backend, gw.db_url, gw.sent = request.param, db, []
    with gw:
        yield gw
    print(gw.log()[-3000:])


def records(gw, **filters) -> list[dict]:
    store = Store(gw.db_url)
    try:
        return store.calls(limit=None, newest_first=False, **filters)
    finally:
        store.engine.dispose()


def settled(gw, match, *, at_least: int = 1, quiet: float = 0.5, timeout: float = 10) -> list[dict]:
    """The records ``match`` accepts, once there are ``at_least`` and no more arrive for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    found = [r for r in records(gw) if match(r)]
    while len(found) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
        found = [r for r in records(gw) if match(r)]
    time.sleep(quiet)
    return [r for r in records(gw) if match(r)]


def agent(gw, issuer, name: str, service: str, *, transport: str = "A", **config) -> tuple[str, object]:
    """A unique principal and a boto3 client through ``gw`` with its token as proxy credentials
    (transport A) or as the session token (B). The client adds a Cookie to every request, and
    what it sent is kept in ``gw.sent``."""
    sub = f"{name}-{secrets.token_hex(4)}"
    token = issuer.mint(sub)
    gw.sent += [token, base64.b64encode(f"agent:{token}".encode()).decode()]
    c = boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                     aws_session_token=token if transport == "B" else None, verify=str(gw.ca_file),
                     config=botocore.config.Config(proxies={"https": gw.proxy_url(token if transport == "A" else None)},
                                                   retries={"total_max_attempts": 1}, **config))

    def keep(request, **_):
        request.headers["Cookie"] = COOKIE
        gw.sent.append(str(request.headers["Authorization"]))

    c.meta.events.register("before-send", keep)
    return sub, c


def test_forwarded(recording, issuer):
    sub, ddb = agent(recording, issuer, "forwarded", "dynamodb")
    assert ddb.list_tables()["TableNames"] == []
    [r] = records(recording, principal=sub)  # committed before the answer left: no waiting
    assert (r["outcome"], r["decision"], r["rule"], r["status"]) == ("forwarded", "allow", "data-plane", 200)
    assert r["action"] == "dynamodb:ListTables" and r["kind"] == "call" and r["session_id"]
    assert r["role"] == "arn:aws:iam::123456789012:role/agent-role" and r["aws_request_id"]


def test_refused_by_policy(recording, issuer):
    sub, iam = agent(recording, issuer, "denied", "iam")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        iam.list_users()
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    [r] = records(recording, principal=sub)
    assert (r["outcome"], r["decision"], r["rule"], r["status"]) == ("refused", "deny", "no-iam-for-agents", 403)
    assert r["action"] == "iam:ListUsers"


def test_refused_connect_bad_token(recording):
    host = f"rec-{secrets.token_hex(4)}.s3.amazonaws.com"
    status, _ = connect(recording, "not.a.jwt", host=host)
    assert status == 407
    [r] = settled(recording, lambda r: host in (r["host"] or ""), quiet=0.2)
    assert (r["kind"], r["outcome"], r["status"], r["rule"]) == ("connect", "refused", 407, "agentgate:auth")


def test_refused_connect_not_aws(recording, issuer):
    host = f"rec-{secrets.token_hex(4)}.example.invalid"
    token = issuer.mint("connect-elsewhere")
    recording.sent += [token, base64.b64encode(f"agent:{token}".encode()).decode()]
    status, _ = connect(recording, token, host=host)
    assert status == 403
    [r] = settled(recording, lambda r: host in (r["host"] or ""), quiet=0.2)
    assert (r["kind"], r["outcome"], r["status"], r["rule"]) == ("connect", "refused", 403, "agentgate:egress")


def test_tunnelled(recording, issuer, tls_server):
    sub = f"tunnel-{secrets.token_hex(4)}"
    token = issuer.mint(sub)
    recording.sent += [token, base64.b64encode(f"agent:{token}".encode()).decode()]
    conn = http.client.HTTPSConnection("127.0.0.1", recording.port, context=tls_server.ssl_context(), timeout=10)
    conn.set_tunnel("127.0.0.1", tls_server.port, headers={
        "Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()})
    conn.request("GET", "/", headers={"Cookie": COOKIE})
    assert conn.getresponse().read() == b"tunnelled"  # end to end TLS: the gateway saw no request
    conn.close()
    [r] = settled(recording, lambda r: r["principal"] == sub, quiet=0.2)
    assert (r["kind"], r["outcome"]) == ("connect", "tunnelled") and str(tls_server.port) in r["url"]


def test_failed_upstream(recording, issuer):
    """Upstream closes the connection without answering: mitmproxy's error hook writes the record
    (before the agent hears of it), and the agent gets a 502, which the record says."""
    sub, s3 = agent(recording, issuer, "failed", "s3")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="recording", Key=f"drop-{sub}")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    [r] = settled(recording, lambda r: r["principal"] == sub, quiet=0.3)
    assert (r["outcome"], r["decision"], r["action"]) == ("failed", "allow", "s3:GetObject")
    assert "server" in r["error"].lower() and r["status"] == 502


def test_client_gone_while_upstream_is_slow(recording, issuer):
    sub, s3 = agent(recording, issuer, "gone-early", "s3", read_timeout=0.3, connect_timeout=5)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        s3.get_object(Bucket="recording", Key="slow-1.5")  # the agent hangs up after 0.3 s
    [r] = settled(recording, lambda r: r["principal"] == sub, quiet=1.7)  # and upstream answers later
    assert (r["outcome"], r["action"], r["status"]) == ("client_gone", "s3:GetObject", None)
    assert "client disconnected" in r["error"].lower()


def test_client_gone_while_the_answer_streams(recording, issuer):
    """A large answer is recorded before its first byte reaches the agent; the agent hangs up with
    63 MB to go. Still one record, saying what the agent was given (the answer, forwarded), and one
    log line saying where the stream broke."""
    sub, s3 = agent(recording, issuer, "gone-streaming", "s3")
    size = 64 << 20
    body = s3.get_object(Bucket="recording", Key=f"big-{size}")["Body"]
    [r] = records(recording, principal=sub)  # committed before the headers left: no waiting
    assert (r["outcome"], r["action"], r["status"], r["response_body_sha256"]) == ("forwarded", "s3:GetObject", 200, None)
    assert "streamed to the agent after this record was committed" in r["body_note"]
    assert f"upstream declared {size} bytes" in r["body_note"]
    assert len(body.read(1 << 20)) == 1 << 20
    body.close()  # the agent hangs up
    deadline = time.monotonic() + 10
    def warned() -> list[str]:
        return [ln for ln in recording.log().splitlines() if r["id"] in ln and "agentgate.calls" not in ln]
    while not warned() and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = warned()
    assert f"WARNING agentgate.recorder: the answer to GET https://recording.s3.amazonaws.com/big-{size} broke after" in line
    assert f"of {size} bytes (the client left: Client disconnected.)" in line
    assert [x["id"] for x in settled(recording, lambda x: x["principal"] == sub)] == [r["id"]]


def test_transport_b_and_credentials_never_reach_the_store(recording, issuer, upstream):
    """Runs last on each store: scans the database's bytes for every credential any flow above
    carried (tokens, Proxy-Authorization, the agents' and the gateway's Authorization, the JIT
    session token, cookies both ways), and every record's headers for the redacted names."""
    sub, ddb = agent(recording, issuer, "transport-b", "dynamodb", transport="B")
    ddb.list_tables()
    assert len(records(recording, principal=sub)) == 1
    upstream_sent = [v for _, _, headers in upstream.requests for k, v in headers
                     if k.lower() in ("authorization", "x-amz-security-token")]
    assert upstream.session_token in upstream_sent  # the gateway did send the JIT session token upstream
    secrets_seen = set(recording.sent) | set(upstream_sent) | {COOKIE, upstream.cookie, upstream.secret_key}
    pieces = set()
    for s in secrets_seen:
        pieces.add(s)
        if s.count(".") == 2:  # a JWT: its payload and signature alone too
            pieces.update(p for p in s.split(".")[1:] if len(p) > 16)
        if "Signature=" in s:
            pieces.add(s.rsplit("Signature=", 1)[1])
    raw = database_bytes(recording)
    assert len(raw) > 10_000
    leaked = [p[:40] for p in pieces if p.encode() in raw]
    assert not leaked, f"credentials in the store: {leaked}"
    for r in records(recording):
        names = {k.lower() for k, _ in (r["request_headers"] or []) + (r["response_headers"] or [])}
        assert not names & REDACTED_HEADERS, (r["id"], names & REDACTED_HEADERS)


def database_bytes(gw) -> bytes:
    """Everything the store holds, as bytes: SQLite's file and its WAL; PostgreSQL's pg_dump."""
    if gw.backend == "sqlite":
        return b"".join(p.read_bytes() for p in gw.db_path.parent.glob("agentgate.db*"))
    pg = shared_server()
    database = gw.db_url.rsplit("/", 1)[1]
    return subprocess.run([str(pg.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                           "--data-only", database], capture_output=True, check=True, timeout=60).stdout


# -- durability "async" ----------------------------------------------------------------------------


def test_async_durability_through_the_gateway(tmp_path, issuer, upstream):
    """Answers do not wait for the commit; the records follow shortly after, one per call."""
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                 settings={"durability": "async"})
    gw.db_url, gw.sent = f"sqlite:///{gw.db_path}", []
    with gw:
        assert "(durability async; SQLite synchronous=NORMAL" in gw.log()
        subs = []

        def one(i: int) -> None:
            sub, ddb = agent(gw, issuer, f"async-{i}", "dynamodb")
            subs.append(sub)
            for _ in range(5):
                ddb.list_tables()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))
        found = settled(gw, lambda r: r["principal"] in subs, at_least=40, quiet=0.3, timeout=5)
    assert len(found) == 40 and {r["outcome"] for r in found} == {"forwarded"}
    assert sorted(r["principal"] for r in found) == sorted(s for s in subs for _ in range(5))


# -- the schema, through the CLI -------------------------------------------------------------------


def alembic_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def old_store(url: str) -> str:
    """A store at the first schema revision; returns that revision."""
    script = ScriptDirectory.from_config(alembic_config())
    first = [r.revision for r in script.walk_revisions()][-1]
    command.upgrade(alembic_config(url), first)
    return first


def test_init_and_run_migrate_an_older_store(tmp_path, issuer, upstream):
    """`agentgate init` migrates a PostgreSQL store and `agentgate run` a SQLite one, each from the
    first schema revision to the current one."""
    home = tmp_path / "gw"
    home.mkdir()
    pg, lite = shared_server().create_database(), f"sqlite:///{home / 'agentgate.db'}"
    first = old_store(pg)
    old_store(lite)
    if first == head_revision():
        pytest.skip("only one schema revision so far: nothing to migrate from")
    gw = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY)
    out = gw.cli("init", "--oidc-issuer", issuer.issuer, env={"AGENTGATE_DB": pg})
    assert f"store ready: {pg}" in out.stdout
    assert (alembic_revision(pg), alembic_revision(lite)) == (head_revision(), first)
    with gw:  # `agentgate run` on the home `init` made, with its default store
        assert "agentgate.db (durability sync; SQLite synchronous=NORMAL" in gw.log()
        assert alembic_revision(lite) == head_revision()


def test_a_store_newer_than_the_code_is_refused(tmp_path, issuer):
    """`agentgate init` refuses a PostgreSQL store stamped with a revision it does not know, and
    `agentgate run` a SQLite one, each saying what to do; neither store is touched."""
    home = tmp_path / "gw"
    home.mkdir()
    pg, lite = shared_server().create_database(), f"sqlite:///{home / 'newer.db'}"
    future = "9999_from_a_newer_agentgate"
    for url in (pg, lite):
        Store(url).migrate()
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as c:
            c.execute(text(f"UPDATE alembic_version SET version_num = '{future}'"))
        engine.dispose()
    gw = Gateway(home, issuer=issuer.issuer, upstream="http://127.0.0.1:9", aws_key=GATEWAY_KEY)
    expected = f"is at schema {future}, newer than this agentgate ({head_revision()}); upgrade agentgate"
    init = gw.cli("init", "--oidc-issuer", issuer.issuer, check=False, env={"AGENTGATE_DB": pg})
    run = gw.cli("run", "--db", lite, "--listen", f"127.0.0.1:{free_port()}", check=False, timeout=60)
    for p in (init, run):
        assert p.returncode != 0 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert (alembic_revision(pg), alembic_revision(lite)) == (future, future)
