"""A real gateway process for tests: `agentgate init` then `agentgate run` in a temporary home,
with moto as its upstream and STS, and a local OIDC issuer.

`agentgate init` (a CA, keys, the default policies, a migrated store) runs once per test process;
each gateway's home is a copy of that one, with its own issuer and listen address in its
agentgate.toml. The tests of `init` itself run it for real (tests/test_cli.py)."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
AGENTGATE = str(BIN / "agentgate")

TEST_POLICY = """\
version: 1
default: deny
roles:
  - principal: {groups: [data-agents]}
    role_arn: arn:aws:iam::123456789012:role/agent-role
    duration: 1h
rules:
  - id: data-plane
    action: ["s3:*", "dynamodb:*", "sts:GetCallerIdentity", "ec2:Describe*", "lambda:*", "sqs:*",
             "sns:*", "secretsmanager:*", "ssm:*", "logs:*"]
    decision: allow
  - id: no-iam-for-agents
    action: "iam:*"
    decision: deny
    reason: agents do not manage IAM
"""

# TEST_POLICY and a rule allowing calls the gateway cannot name (`unknown`): for tests of refusals
# that are not policy's to make
EVEN_UNKNOWN = TEST_POLICY + """\
  - id: even-unknown
    action: [unknown]
    decision: allow
"""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, avoid: tuple[int, ...] = ()) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none of them in ``avoid``: the sockets are held
    together, since a port closed can be handed out again by the next bind."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)  # an avoided port is held too, until the end, so not handed out again here
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


def _ports_named(listen: str | None) -> tuple[int, ...]:
    """The port a HOST:PORT setting names, if any."""
    m = re.search(r":(\d+)$", listen or "")
    return (int(m.group(1)),) if m else ()


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on 127.0.0.1:``port``; with ``proc``, until ``proc`` (or a process it
    started) does: a free port picked by one test process can be taken by another's server before
    ``proc`` binds it, and a test must not then talk to that other server."""
    deadline = time.time() + timeout
    other = False
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}" + (
                f" (127.0.0.1:{port} is held by another process)" if other else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        owned = None if proc is None else _listens(proc.pid, port)
        if owned is not False:  # ours, or nothing to check it against
            return
        other = True
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port} is held by another process" if other
                       else f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _listens(pid: int, port: int) -> bool | None:
    """Whether ``pid`` or one of its descendants holds the socket listening on ``port`` (Linux's
    /proc); None when that cannot be told here."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{f[9]}]")
    if not listening:
        return None
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for p in tree:
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in listening:
                    return True
            except OSError:
                continue
    return False


_HOME: Path | None = None
_HOME_MADE = threading.Lock()


def _initialised_home() -> Path:
    """A home `agentgate init` made, once per test process: gateways started side by side (replicas)
    get the same one, so the same chain key."""
    global _HOME
    with _HOME_MADE:
        if _HOME is None:
            home = Path(tempfile.mkdtemp(prefix="agentgate-home-")) / "home"
            env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "AGENTGATE_HOME": str(home)}
            subprocess.run([AGENTGATE, "init", "--oidc-issuer", "http://127.0.0.1:1/", "--listen", "127.0.0.1:1"],
                           env=env, check=True, capture_output=True, timeout=120, cwd=home.parent)
            atexit.register(shutil.rmtree, home.parent, True)
            _HOME = home
    return _HOME


class Gateway:
    def __init__(self, home: Path, *, issuer: str, upstream: str, aws_key: tuple[str, str],
                 policy: str = TEST_POLICY, settings: dict | None = None, env: dict | None = None) -> None:
        self.home = Path(home)
        self.issuer = issuer
        self.upstream = upstream
        self.aws_key = aws_key
        self.policy = policy
        console_port, self.port = free_ports(2, avoid=_ports_named((settings or {}).get("console_listen")))
        self.settings = {"console_listen": f"127.0.0.1:{console_port}", **(settings or {})}
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "gateway.log"

    def another_port(self) -> int:
        """A free port that is neither the gateway's nor its console's (for --web-listen and such)."""
        return free_ports(1, avoid=(self.port, *_ports_named(self.settings.get("console_listen"))))[0]

    @property
    def env(self) -> dict:
        e = {
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "AGENTGATE_HOME": str(self.home),
            # the gateway's own AWS credentials (the JIT broker), found by botocore's default chain
            "AWS_ACCESS_KEY_ID": self.aws_key[0],
            "AWS_SECRET_ACCESS_KEY": self.aws_key[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONOPTIMIZE": "1",  # as scripts/run and the container image run it
        }
        # AGENTGATE_STORE_WRITER=process scripts/test: every test gateway that does not choose its
        # store writer runs with the writer process
        if os.environ.get("AGENTGATE_STORE_WRITER") and "store_writer" not in self.settings:
            e["AGENTGATE_STORE_WRITER"] = os.environ["AGENTGATE_STORE_WRITER"]
        e.update(self.extra_env)
        return e

    @property
    def ca_file(self) -> Path:
        return self.home / "certs" / "mitmproxy-ca-cert.pem"

    @property
    def db_path(self) -> Path:
        return self.home / "agentgate.db"

    def cli(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 60,
            interleaved: bool = False) -> subprocess.CompletedProcess:
        """`agentgate ARGS` in the gateway's home. ``interleaved``: standard error in standard output,
        each line where it was written, as a terminal shows them (a progress line before the table
        that follows it); ``stderr`` is then empty."""
        if interleaved:
            p = subprocess.run([AGENTGATE, *args], env={**self.env, "PYTHONUNBUFFERED": "1", **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                               cwd=self.home)
        else:
            p = subprocess.run([AGENTGATE, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                               timeout=timeout, cwd=self.home)
        if check and p.returncode != 0:
            raise AssertionError(f"agentgate {' '.join(args)} failed ({p.returncode}): {p.stderr or p.stdout}")
        return p

    def init(self) -> None:
        shutil.copytree(_initialised_home(), self.home, dirs_exist_ok=True)
        cfg = self.home / "agentgate.toml"
        text = re.sub(r'(?m)^oidc_issuer = "[^"]*"', f"oidc_issuer = {json.dumps(self.issuer)}", cfg.read_text())
        cfg.write_text(re.sub(r'(?m)^listen = "[^"]*"', f'listen = "127.0.0.1:{self.port}"', text))
        policies = self.home / "policies"
        for f in policies.glob("*.y*ml"):
            f.unlink()
        policies.mkdir(exist_ok=True)
        (policies / "test.yaml").write_text(self.policy)
        if self.settings:
            cfg = self.home / "agentgate.toml"
            lines = [ln for ln in cfg.read_text().splitlines()
                     if ln.split("=", 1)[0].strip() not in self.settings]
            lines += [f"{k} = {json.dumps(v)}" for k, v in self.settings.items()]
            cfg.write_text("\n".join(lines) + "\n")

    def start(self) -> "Gateway":
        if not (self.home / "agentgate.toml").exists():
            self.init()
        for attempt in range(3):
            args = [AGENTGATE, "run", "--listen", f"127.0.0.1:{self.port}", "--upstream", self.upstream, "-v"]
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.home)
            try:
                wait_port(self.port, proc=self.proc)
                self._wait_banner()
                return self
            except Exception as e:
                taken = "held by another process" in str(e) or "ddress already in use" in self.log()
                if not taken or attempt == 2:
                    raise RuntimeError(f"gateway did not start: {e}\n{self.log()}") from None
            # another test process took the port between free_port() and the gateway's bind: another one
            self.stop()
            self.port = free_ports(1, avoid=_ports_named(self.settings.get("console_listen")))[0]
            cfg = self.home / "agentgate.toml"
            cfg.write_text(re.sub(r'(?m)^listen = "[^"]*"', f'listen = "127.0.0.1:{self.port}"', cfg.read_text()))
        return self

    def _wait_banner(self, timeout: float = 10.0) -> None:
        """The banner (store, policies, CA) is printed once the port is bound, a moment after it
        accepts: wait for it, as a user reads it, so that tests reading the log find it."""
        deadline = time.monotonic() + timeout
        while "agentgate listening on" not in self.log() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def proxy_url(self, token: str | None) -> str:
        return f"http://agent:{token}@127.0.0.1:{self.port}" if token else f"http://127.0.0.1:{self.port}"

    def agent_env(self, token_file: Path, agent_home: Path, extra: dict | None = None, args: str = "") -> dict:
        """The environment an agent gets by following only `agentgate env --token-file F [args]`."""
        agent_home.mkdir(parents=True, exist_ok=True)
        script = f'eval "$({AGENTGATE} env --token-file {token_file} {args})" && env -0'
        base = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(agent_home),
                "AGENTGATE_HOME": str(self.home)}
        out = subprocess.run(["bash", "-c", script], env=base, capture_output=True, check=True, cwd=self.home).stdout
        env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
        env.pop("AGENTGATE_HOME", None)
        env.pop("PWD", None)
        env.pop("OLDPWD", None)
        env.pop("SHLVL", None)
        env.pop("_", None)
        env.update(extra or {})
        return env

    def records(self) -> list[dict]:
        import sqlite3

        con = sqlite3.connect(self.db_path)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("select * from calls order by time")]
        finally:
            con.close()
