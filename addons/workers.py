"""``agentgate run --workers N``: N gateway processes on one port.

The supervisor (this module, in the process that ran ``agentgate run``) migrates the store once,
checks that nothing else listens on the port, then forks N workers. Each worker is a whole gateway
(addons/gateway.py ``serve``) whose listening sockets bind with SO_REUSEPORT, so the kernel spreads
agents' connections over them. They share what lives on disk or in the store: the CA, the policy
directory (each reloads it on change), the store (PostgreSQL; SQLite in WAL mode for a few
workers) and, through it, approvals; each worker writes its own hash chain (its own writer id).

SIGTERM or SIGINT to the supervisor stops every worker the way one gateway stops (held calls are
answered first, calls in flight finish and are recorded). A worker that dies is started again after
a second; one that dies again within seconds of its restart (its store down, say) is started again
after a longer wait each time (up to MAX_RESTART_DELAY), while the others go on serving. A worker
that exits with an error in the first seconds of the gateway's own start (a port taken, a bad
setting) stops them all with its exit status. Workers stop by themselves if the supervisor dies
(Linux: the parent-death signal), rather than serving unsupervised.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from .settings import Settings, parse_hostport

log = logging.getLogger("agentgate.workers")

EARLY_DEATH = 5.0  # seconds: a worker dead this soon after starting will not do better next time
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0  # the longest wait between restarts of a worker that keeps dying at once
POLL = 0.1  # seconds between looks at the workers while a restart is due


def die_with_parent(parent: int) -> None:
    """(In a worker, just forked.) Be sent SIGTERM when the supervisor dies, and stop now if it
    already has: a worker left alone would serve on, unsupervised, and keep the port from a new
    supervisor. Linux's parent-death signal; elsewhere, nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def port_free(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be bound (nothing else listens there); else the bind error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "", "*"})  # a listener on every address takes the port on each


def unbindable(settings: Settings, web_listen: str | None = None) -> str | None:
    """Why the gateway could not listen where its settings say (``listen``, ``console_listen``,
    and ``web_listen`` under --web), said before it starts; None when every address is free."""
    wanted = [("listen", settings.listen), ("console_listen", settings.console_listen)]
    if web_listen is not None:
        wanted.append(("--web-listen", web_listen))
    taken: dict[int, tuple[str, str]] = {}
    for name, where in wanted:
        if not where:
            continue
        host, port = parse_hostport(where, name)
        if port in taken and (taken[port][1] == host or WILDCARD_HOSTS & {host, taken[port][1]}):
            other = taken[port][0]
            return (f"{other} and {name} both name port {port} ({where}): each needs a port of its own; set "
                    f"{name} to another HOST:PORT")
        taken[port] = (name, host)
        if (err := port_free(host, port)) is not None:
            return (f"cannot listen on {host}:{port} ({name}): {err.strerror or err}; stop what holds it, or set "
                    f"{name} to a free HOST:PORT")
    return None


def supervise(settings: Settings, *, verbose: bool = False, web_listen: str = "127.0.0.1:8082") -> int:
    from .core.store import Store, StoreError
    from .gateway import run as run_gateway
    from .gateway import setup_logging

    setup_logging(verbose, workers=True)
    n = settings.workers
    if (problem := unbindable(settings)) is not None:
        print(f"agentgate: {problem}", file=sys.stderr)
        return 2
    try:  # once, here, rather than N workers racing to do it
        from .core.store import chain_key_path, load_chain_key
        from .gateway import new_sqlite_store

        if new_sqlite_store(settings.db):
            print(f"agentgate: no store was at {settings.db}: a new one is created now (check the path if you meant "
                  "an existing one)", file=sys.stderr)

        store = Store(settings.db, chain_key=load_chain_key(chain_key_path(settings.keys)))
        store.migrate()
        store.close()
    except StoreError as e:
        print(f"agentgate: {e}", file=sys.stderr)
        return 2

    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
    restarts: dict[int, float] = {}  # worker index -> when to start it again
    failures: dict[int, int] = {}  # worker index -> restarts in a row that died early
    supervisor = os.getpid()
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor, which stops workers in order
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                die_with_parent(supervisor)
                code = run_gateway(settings, verbose=verbose, web_listen=web_listen, worker=index)
            except BaseException:
                logging.getLogger("agentgate").exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        children[pid] = (index, time.monotonic())

    def stop(signum: int, _frame) -> None:
        nonlocal stopping
        again = stopping
        stopping = True
        for pid in list(children):
            try:  # a second signal: workers stop at once (their own second-signal rule)
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if again:
            log.warning("stopping %d worker(s) now", len(children))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(n):
        start(i)
    status = 0
    while children or (restarts and not stopping):
        if restarts and not stopping:  # a restart is due: look at the workers without blocking
            now = time.monotonic()
            for index in [i for i, due in restarts.items() if due <= now]:
                del restarts[index]
                start(index)
            pid, wstatus = os.waitpid(-1, os.WNOHANG) if children else (0, 0)
            if pid == 0:
                time.sleep(min([POLL] + [max(0.0, due - time.monotonic()) for due in restarts.values()]))
                continue
        else:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
        index, started = children.pop(pid, (None, 0.0))
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(wstatus)
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        early = time.monotonic() - started < EARLY_DEATH
        if early and code > 0 and index not in failures:  # the gateway's own start failed: a port taken, a setting
            print(f"agentgate: worker {index} exited with {code} while starting; stopping the others",
                  file=sys.stderr)
            status = code if code > 0 else 1
            stop(signal.SIGTERM, None)
            continue
        failures[index] = failures.get(index, 0) + 1 if early else 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** failures[index])
        log.error("worker %d (pid %d) exited with %d; starting it again in %g s", index, pid, code, delay)
        restarts[index] = time.monotonic() + delay
    return status
