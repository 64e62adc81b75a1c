"""A real, throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a temporary directory and starts the server on 127.0.0.1
with a free port (its unix socket inside that directory, so it meets no system server). As root,
where initdb refuses to run, the server runs as the ``postgres`` system user if there is one, else
as ``nobody``.

    with PostgresServer() as pg:
        url = pg.url                    # postgresql+psycopg://postgres@127.0.0.1:PORT/agentgate
        other = pg.create_database()    # another database
        url = pg.fresh_database()       # an empty database, for one test (wiped at every call)
        pg.stop(); pg.start()           # same data, same port

``shared_server()`` starts one server per process, on first use, and stops it at exit: test
fixtures use it so that the ~1-2 s start is paid once.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from glob import glob
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin: "
    "install the Debian package `postgresql` (scripts/test installs it when run as root)"
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be run here; the message says what to install."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then the highest /usr/lib/postgresql/N."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = [Path(d) for d in glob("/usr/lib/postgresql/*/bin") if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    if not found:
        raise PostgresUnavailable(INSTALL_HINT)
    return max(found, key=version)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The unprivileged user to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as")


class PostgresServer:
    def __init__(self, *, database: str = "agentgate", fsync: bool = True, port: int | None = None) -> None:
        self.bindir = find_bindir()
        self.database = database
        self.fsync = fsync
        self.port = port or free_port()
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="agentgate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.running = False
        self._initialised = False
        self._created = False
        self._fresh: set[str] = set()
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = list(args)
        if self.user and shutil.which("runuser"):
            argv = ["runuser", "-u", self.user, "--", *argv]
        elif self.user:
            argv = ["su", "-s", "/bin/sh", "-c", shlex.join(argv), self.user]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        proc = subprocess.run(argv, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}\n{tail}"
            )
        return proc

    def _initdb(self) -> None:
        self._cmd(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        self._initialised = True

    def start(self) -> "PostgresServer":
        """Start the server (initialising it the first time); same data directory and port after a stop."""
        if self.running:
            return self
        if not self._initialised:
            self._initdb()
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync={'on' if self.fsync else 'off'}"
        if not self.fsync:
            options += " -c synchronous_commit=off -c full_page_writes=off"
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")
        self.running = True
        if not self._created:
            self.create_database(self.database)
            self._created = True
        return self

    def stop(self) -> None:
        """Stop the server at once (fast shutdown: open connections are cut)."""
        if self.running:
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh uniquely named one by default) and return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def fresh_database(self, name: str = "fresh") -> str:
        """The URL of a database emptied for the caller: created once, then wiped (its connections
        cut, its tables dropped) at every call. Cheaper than CREATE DATABASE per test."""
        import psycopg

        if name not in self._fresh:
            self.create_database(name)
            self._fresh.add(name)
            return self.url_for(name)
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=name, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self.url_for(name)

    def cleanup(self) -> None:
        """Stop the server and delete its data."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


_shared: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """One server for the whole process, started on first use and removed at exit."""
    global _shared
    if _shared is None:
        server = PostgresServer(fsync=False)
        try:
            server.start()
        except BaseException:
            server.cleanup()
            raise
        atexit.register(server.cleanup)
        _shared = server
    return _shared
