"""What an operator's side exposes: ``agentgate init`` writes the CA key, the fingerprint key and
the other secrets 0600 in 0700 directories whatever the umask (and the config and store are not
world-writable or readable); the approvals console listens on loopback by default, refuses every
route that shows or changes something without a credential, and cannot be reached through the
proxy; mitmweb (``--web``) refuses requests without its token."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from addons.console import Console
from addons.settings import Settings
from tests.support.gateway import AGENTGATE, BIN, Gateway, free_port, wait_port
from tests.support.raw import connect

ROOT = Path(__file__).resolve().parent.parent

SECRET_FILES = ["certs/mitmproxy-ca.pem", "certs/mitmproxy-ca.p12", "keys/fingerprint.key", "keys/chain.key",
                "keys/admin.token"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_init(home: Path, umask: int) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "AGENTGATE_HOME": str(home)}
    return subprocess.run([AGENTGATE, "init", "--oidc-issuer", "http://127.0.0.1:9/"], env=env, cwd=home,
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask), check=True)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_init_writes_keys_0600_whatever_the_umask(tmp_path, umask):
    p = run_init(tmp_path, umask)
    for name in SECRET_FILES:
        assert mode(tmp_path / name) == 0o600, (name, oct(mode(tmp_path / name)))
    for d in ("certs", "keys"):
        assert mode(tmp_path / d) == 0o700, d
    for public in ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer", "mitmproxy-ca-cert.p12"):
        assert mode(tmp_path / "certs" / public) == 0o644, public  # the certificate alone: agents read a copy
    for name in ("agentgate.toml", "agentgate.db"):
        assert mode(tmp_path / name) & 0o077 == 0, (name, oct(mode(tmp_path / name)))
    printed = p.stdout + p.stderr
    for name in SECRET_FILES:
        secret = (tmp_path / name).read_bytes()
        if name.endswith(".pem"):
            secret = re.search(rb"-----BEGIN RSA PRIVATE KEY-----\n(.*?)-----END", secret, re.S).group(1)
            for line in secret.splitlines():
                assert line.decode() not in printed
        elif not name.endswith(".p12"):
            assert secret.decode().strip() not in printed


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_a_store_run_creates_is_its_users_alone(tmp_path, umask):
    """`run --db sqlite:///new/dir/a.db` makes the directory and the store as `init` would (0700,
    0600; SQLite's WAL takes the store's mode), and a path that cannot be made is one line."""
    store_path = tmp_path / "new" / "dir" / "a.db"
    code = ("import sys; from addons.core.store import Store\nfrom addons.core.records import Record\n"
            "s = Store(sys.argv[1]); s.migrate(); s.start(); s.write_sync(Record(principal='p')); s.close()")
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{store_path}"], check=True, timeout=60, cwd=ROOT,
                   preexec_fn=lambda: os.umask(umask))
    assert mode(store_path.parent) == 0o700 and mode(store_path) == 0o600
    assert all(mode(p) & 0o077 == 0 for p in store_path.parent.iterdir()), [
        (p.name, oct(mode(p))) for p in store_path.parent.iterdir()]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "home").mkdir()
    run_init(tmp_path / "home", 0o022)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "AGENTGATE_HOME": str(tmp_path / "home")}
    p = subprocess.run([AGENTGATE, "run", "--db", f"sqlite:///{blocker}/x.db", "--listen", f"127.0.0.1:{free_port()}"],
                       env={**env, "AGENTGATE_CONSOLE_LISTEN": ""},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot create {blocker}: File exists" in p.stderr.strip().splitlines()[-1]


def test_init_tightens_keys_it_finds_loose(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    (keys / "fingerprint.key").write_text("0" * 64)
    os.chmod(keys / "fingerprint.key", 0o644)
    run_init(tmp_path, 0o022)
    assert mode(keys) == 0o700 and mode(keys / "fingerprint.key") == 0o600
    assert (keys / "fingerprint.key").read_text() == "0" * 64  # kept, not replaced


def test_the_console_and_the_proxy_listen_on_loopback_by_default(tmp_path):
    s = Settings().resolved()
    assert s.console_listen.startswith("127.0.0.1:") and s.listen.startswith("127.0.0.1:")
    run_init(tmp_path, 0o022)
    toml = (tmp_path / "agentgate.toml").read_text()
    assert re.search(r'^console_listen = "127\.0\.0\.1:\d+"', toml, re.M)
    assert re.search(r'^listen = "127\.0\.0\.1:\d+"', toml, re.M)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, st = line.split()[1], line.split()[3]
            addr, _, p = local.partition(":")
            if st == "0A" and int(p, 16) == port:
                raw = bytes.fromhex(addr)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return found


def console_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the console serves, read from the app itself."""
    app = Console(None, None).app
    out = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace("{id}", "01NOSUCHAPPROVAL").replace("{verb}", "approve")
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path))
    return out


def test_every_console_route_refuses_a_request_without_credentials(gateway):
    host, port = gateway.settings["console_listen"].rsplit(":", 1)
    assert listening_addresses(int(port)) == {"127.0.0.1"}
    assert listening_addresses(gateway.port) == {"127.0.0.1"}
    public = {("GET", "/"), ("GET", "/healthz"), ("POST", "/api/logout")}
    routes = console_routes()
    assert {("GET", "/api/state"), ("POST", "/api/approvals/01NOSUCHAPPROVAL/approve")} <= set(routes)
    with httpx.Client(base_url=f"http://{host}:{port}", trust_env=False) as c:
        for method, path in routes:
            for auth in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "agentgate_console=not-a-token"},
                         {"Authorization": "Bearer agentgate-console-session.e30.AAAA"}):
                r = c.request(method, path, headers={**auth, "Content-Type": "application/json"},
                              content=b'{"token": "", "reason": "x"}' if method == "POST" else None)
                if (method, path) in public:
                    assert r.status_code == 200, (method, path, r.status_code)
                    continue
                assert r.status_code in (401, 403), (method, path, auth, r.status_code, r.text)
                assert "error" in r.json()
        # what the public routes give away: a sign-in page with no data, a health flag, nothing to sign out
        page = c.get("/").text
        admin = (gateway.home / "keys" / "admin.token").read_text().strip()
        assert admin not in page and "arn:aws" not in page and "agent-1" not in page
        assert c.get("/healthz").json() == {"ok": True}
        assert c.post("/api/logout").json() == {"ok": True} and "set-cookie" not in c.post("/api/logout").headers


def test_the_console_cannot_be_reached_through_the_proxy(gateway, issuer):
    host, port = gateway.settings["console_listen"].rsplit(":", 1)
    for target in (host, "localhost", socket.gethostname()):
        status, text = _connect_to(gateway, issuer.mint("agent-1"), f"{target}:{port}")
        assert status == 403 and ("loopback" in text or "not an AWS endpoint" in text), (target, text)


def _connect_to(gateway, token: str, target: str) -> tuple[int, str]:
    s, data = connect(gateway.port, target, token)
    with s:
        time.sleep(0.1)
        s.settimeout(0.5)
        try:
            data += s.recv(65536)
        except OSError:
            pass
    head = data.decode(errors="replace")
    return int(head.split(" ", 2)[1]), head


def test_mitmweb_refuses_requests_without_its_token(tmp_path, issuer):
    gw = Gateway(tmp_path, issuer=issuer.issuer, upstream="http://127.0.0.1:9", aws_key=("AKIAWEBTEST000000000", "x"))
    gw.init()
    web_port = gw.another_port()
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen([AGENTGATE, "run", "--web", "--web-listen", f"127.0.0.1:{web_port}"], env=gw.env,
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(web_port, timeout=60, proc=proc)
        assert listening_addresses(web_port) == {"127.0.0.1"}
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", trust_env=False) as c:
            for path in ("/", "/flows", "/options", "/state"):
                assert c.get(path).status_code == 403, path
                assert c.get(path, params={"token": "wrong"}).status_code == 403, path
            deadline = time.monotonic() + 10
            while not (m := re.search(r"token=([0-9a-f]+)", (tmp_path / "web.log").read_text())):
                assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
                time.sleep(0.2)
            assert c.get("/flows", params={"token": m.group(1)}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
