"""``agentgate run --workers N``: N gateway processes on one port.

The supervisor (this module, in the process that ran ``agentgate run``) migrates the store once,
checks that nothing else listens on the port, then forks N workers. Each worker is a whole gateway
(addons/gateway.py ``serve``) whose listening sockets bind with SO_REUSEPORT, so the kernel spreads
agents' connections over them. They share what lives on disk or in the store: the CA, the policy
directory (each reloads it on change), the store (PostgreSQL; SQLite in WAL mode for a few
workers) and, through it, approvals; each worker writes its own hash chain (its own writer id).

SIGTERM, SIGINT or SIGHUP (the terminal hung up) to the supervisor stops every worker the way one
gateway stops (held calls are answered first, calls in flight finish and are recorded), with a log
line naming the signal. A worker that dies after it listened is started again after a second; one
whose restart fails (it exits before it listens: its store down or locked, say, however long it
waited) or that dies within seconds of it is started again after a longer wait each time (up to
MAX_RESTART_DELAY), while the others go on serving. A worker whose first start fails, that exits
with an error before it listens (a port taken, a bad setting, the store locked by another process
longer than it waits), stops them all, and the supervisor exits with its status. Whether a worker
listened is told by its heartbeat (below), whose first beat comes once its start is done, not by
how long it lived. What a worker writes before it listens is held (``HeldOutput``) and written when
it listens, or by the supervisor when it exits without, once for workers that said the same: two
workers that find the store locked say so in one line. Workers stop by themselves if the supervisor
dies (Linux: the parent-death signal), rather than serving unsupervised.

A worker that hangs (stopped, or its event loop stuck in a blocking call) does not exit, and the
kernel goes on giving it new connections. Each worker's event loop raises a counter in memory shared
with the supervisor once a second (``Heartbeat``); a worker whose counter stands still for
``heartbeat_timeout`` seconds is killed and started again. The beat is a timer on the event loop,
so work done off the loop (a large body masked on a thread, a slow commit on the store's writer)
does not hold it back; only the loop itself being held does, which is what leaves calls unanswered.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

from .settings import Settings, parse_hostport

log = logging.getLogger("agentgate.workers")

EARLY_DEATH = 5.0  # seconds: a worker that listened and died this soon after starting will not do better next time
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0  # the longest wait between restarts of a worker that keeps dying at once
POLL = 0.1  # seconds between looks at the workers while a restart is due or their heartbeats are watched
BEAT = 1.0  # seconds between a worker's heartbeats
STARTING = 60.0  # seconds a worker has, beyond heartbeat_timeout, to start listening (its first beat)
HUNG_GRACE = 5.0  # seconds a hung worker sent SIGTERM has to exit before it is sent SIGKILL
STOPPED_STATES = frozenset("tT")  # /proc/PID/stat's state of a stopped (SIGSTOP) or traced process


class Heartbeat:
    """One worker's heartbeat: a counter in memory shared with the supervisor (an anonymous shared
    mapping made before the workers are forked, 8 bytes a worker), raised every BEAT seconds by a
    timer on the worker's event loop once it listens. No per-call cost, no system call: the
    supervisor reads the counters when it looks at its workers.

    The first beat comes when the gateway's start is done (its store opened and written to, its
    port bound, its banner or its "listening on" line said: mitmproxy's ``running``), so a worker
    that exits while its counter is still 0 never served: its start failed, however long that took.
    ``held``: (in the worker) its output until then, written out at the first beat."""

    def __init__(self, memory: mmap.mmap, index: int) -> None:
        self.memory = memory
        self.offset = 8 * index
        self._timer = None
        self.held: HeldOutput | None = None

    def start(self, loop) -> None:
        """Beat now and every BEAT seconds for as long as ``loop`` runs its timers."""
        if self.held is not None:
            self.held.release()

        def beat() -> None:
            self.beat()
            self._timer = loop.call_later(BEAT, beat)
        beat()

    def beat(self) -> None:
        struct.pack_into("Q", self.memory, self.offset, (self.count() + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def count(self) -> int:
        return struct.unpack_from("Q", self.memory, self.offset)[0]

    def reset(self) -> None:
        """(In the supervisor, before the worker is forked.) No beat yet: the worker is starting."""
        struct.pack_into("Q", self.memory, self.offset, 0)


class HeldOutput:
    """(In a worker, as its ``sys.stderr``.) What the worker writes before it listens (its log
    lines, a start-up error's one line) goes to ``fd``, a file the supervisor made for this start,
    rather than to the terminal; ``release`` (its first heartbeat) writes that out and lets what
    follows through. A worker that exits before that has it written by the supervisor, once when
    several workers said the same: N workers finding the store locked say so in one line, not N."""

    def __init__(self, stream, fd: int) -> None:
        self.stream = stream
        self.fd: int | None = fd
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            if self.fd is None:
                return self.stream.write(text)
            os.write(self.fd, text.encode("utf-8", "backslashreplace"))
            return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def release(self) -> None:
        with self.lock:
            if self.fd is None:
                return
            fd, self.fd = self.fd, None
            said = said_in(fd)
            os.close(fd)
            self.stream.write(said)
            self.stream.flush()

    def __getattr__(self, name: str):  # encoding, fileno, isatty, ...: the terminal's
        return getattr(self.stream, name)


def said_in(fd: int) -> str:
    """The text a starting worker wrote to its held-output file ``fd``."""
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")


def held_file() -> int:
    """A new empty file for a starting worker's output (see ``HeldOutput``): in memory (Linux), else
    a temporary file, unlinked at once."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("agentgate-worker-start")
    fd, path = tempfile.mkstemp(prefix="agentgate-worker-")
    os.unlink(path)
    return fd


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, a debugger): it takes no signal but SIGKILL until it is
    continued."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in STOPPED_STATES
    except (OSError, IndexError):
        return False


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


def bind_problem(err: OSError, host: str, name: str) -> str:
    """Why binding ``host`` failed (``port_free``'s error), and what to do: a host that does not
    resolve or is no address of this machine is not a port in use."""
    why = err.strerror or str(err)
    if isinstance(err, socket.gaierror):
        return (f"the host {host!r} cannot be resolved ({why}); set {name} to an address of this machine "
                "(127.0.0.1, 0.0.0.0 for every one) or a name that resolves to one")
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine ({why}); set {name} to one of its addresses (or 0.0.0.0)"
    if err.errno == errno.EACCES:
        return f"{why} (ports below 1024 need privileges); set {name} to a port from 1024 up"
    return f"{why}; stop what holds it, or set {name} to a free HOST:PORT"


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
            return f"cannot listen on {host}:{port} ({name}): {bind_problem(err, host, name)}"
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
    held: dict[int, int] = {}  # worker index -> the file holding what it wrote while starting (HeldOutput)
    told: set[str] = set()  # what starting workers said, once the supervisor is stopping them all
    supervisor = os.getpid()
    stopping = False
    memory = mmap.mmap(-1, 8 * n)  # shared with the workers forked below: their heartbeats
    hearts = [Heartbeat(memory, i) for i in range(n)]
    heard: dict[int, tuple[int, float]] = {}  # pid -> (its heartbeat's count, when that count was first read)
    hung: dict[int, float] = {}  # pid of a worker killed as hung -> when to send it SIGKILL if it is still there
    watch = settings.heartbeat_timeout > 0

    def start(index: int) -> None:
        hearts[index].reset()
        held[index] = held_file()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for other, fd in held.items():
                    if other != index:
                        os.close(fd)
                hearts[index].held = sys.stderr = HeldOutput(sys.stderr, held[index])
                os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor, which stops workers in order
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                die_with_parent(supervisor)
                # the heartbeat beats with heartbeat_timeout 0 too (unwatched): its first beat says the start is done
                code = run_gateway(settings, verbose=verbose, web_listen=web_listen, worker=index,
                                   heartbeat=hearts[index])
            except BaseException:
                logging.getLogger("agentgate").exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        children[pid] = (index, time.monotonic())
        heard[pid] = (0, time.monotonic())

    def look_for_hung() -> None:
        """Kill a worker whose heartbeat stood still for heartbeat_timeout seconds (STARTING more
        before its first beat): SIGKILL at once when it is stopped, else SIGTERM (its own stop, if
        its loop comes back) and SIGKILL HUNG_GRACE seconds later. It is started again when it has
        exited, as any worker that dies."""
        now = time.monotonic()
        for pid, (index, _) in list(children.items()):
            if pid in hung:
                if now >= hung[pid]:
                    hung[pid] = math.inf
                    _signal(pid, signal.SIGKILL)
                continue
            count, since = heard[pid]
            if (beat := hearts[index].count()) != count:
                heard[pid] = (beat, now)
                continue
            silent = now - since
            if silent < settings.heartbeat_timeout + (STARTING if count == 0 else 0):
                continue
            halted = stopped(pid)
            log.error("worker %d (pid %d) %s for %.1f s (heartbeat_timeout %g s)%s: killing it and starting another; "
                      "calls it held may have reached AWS without a record", index, pid,
                      "gave no heartbeat" if count else "did not start listening", silent,
                      settings.heartbeat_timeout, ", it is stopped" if halted else "")
            if halted:
                hung[pid] = math.inf
                _signal(pid, signal.SIGKILL)
            else:
                hung[pid] = now + HUNG_GRACE
                _signal(pid, signal.SIGTERM)

    def stop(signum: int, _frame, say: bool = True) -> None:
        nonlocal stopping
        again = stopping
        stopping = True
        if not again and say:
            log.info("%s: stopping %d worker(s): calls in flight are answered and recorded first (up to "
                     "drain_seconds, %g s)", signal.Signals(signum).name, len(children), settings.drain_seconds)
        for pid in list(children):  # a second signal: workers stop at once (their own second-signal rule)
            _signal(pid, signal.SIGTERM)
        if again:
            log.warning("stopping %d worker(s) now", len(children))

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    for i in range(n):
        start(i)
    status = 0
    while children or (restarts and not stopping):
        if (restarts or watch) and not stopping:  # look at the workers without blocking
            now = time.monotonic()
            for index in [i for i, due in restarts.items() if due <= now]:
                del restarts[index]
                start(index)
            if watch:
                look_for_hung()
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
        heard.pop(pid, None)
        was_hung = hung.pop(pid, None) is not None
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(wstatus)
        served = hearts[index].count() > 0  # it beat once: its start was done (its banner said)
        said = "" if served else said_in(held[index])
        os.close(held.pop(index))
        if said and not (stopping and said in told):  # what it said while starting: why it could not
            sys.stderr.write(said)
            sys.stderr.flush()
            if stopping:
                told.add(said)
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        if not served and code > 0 and index not in failures:  # the first start failed: a port, a setting, a lock
            print(f"agentgate: worker {index} exited with {code} while starting; stopping the others",
                  file=sys.stderr)
            status = code
            told.add(said)
            stop(signal.SIGTERM, None, say=False)
            continue
        early = not served or time.monotonic() - started < EARLY_DEATH
        failures[index] = failures.get(index, 0) + 1 if early and not was_hung else 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** failures[index])
        if was_hung:
            log.error("worker %d (pid %d), killed as hung, exited with %d; starting it again in %g s", index, pid,
                      code, delay)
        elif code < 0:  # a signal: SIGKILL, the out-of-memory killer, a crash
            log.error("worker %d (pid %d) exited with %d (killed by %s); calls in flight on it may have reached AWS "
                      "without a record; starting it again in %g s", index, pid, code, _signal_name(-code), delay)
        else:
            log.error("worker %d (pid %d) exited with %d; starting it again in %g s", index, pid, code, delay)
        restarts[index] = time.monotonic() + delay
    return status


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
