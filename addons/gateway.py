"""The gateway process: a mitmproxy Master that loads only the add-ons it needs, then the chain.

Stock ``DumpMaster`` loads ~36 add-ons and walks every one of them on every hook; this master
loads mitmproxy's core (options, proxy server, layer selection, TLS) and the agentgate chain.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import linecache
import logging
import math
import os
import selectors
import signal
import sys
import time
from pathlib import Path

from . import closing, fastpath

fastpath.lean_addon_imports()  # before mitmproxy's master: it would import every default add-on
fastpath.cheap_option_reads()
fastpath.quick_header_lookups()
fastpath.light_stream_contexts()
fastpath.lighter_hooks()
fastpath.identity_connection_eq()
fastpath.no_httpx_command_line()  # before the identity module imports httpx

from mitmproxy import master, options  # noqa: E402
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig  # noqa: E402

from .core.chain import OneLineFormatter
from .stage import fail_closed
from .settings import Settings, number, parse_hostport

log = logging.getLogger("agentgate")

CLOSE_SECONDS = 5.0  # how long a stopping gateway waits, after the drain, for its client connections to close

# How long a thread that wants the GIL waits before the one holding it is made to let go
# (``sys.setswitchinterval``). The store's writer thread wants it back after each database call of a
# commit; at CPython's default 5 ms a busy event loop can keep it waiting that long each time.
# With one agent connected, calls come one after another and each waits for its own commit: 0.5 ms
# lets the writer in soonest (side by side it was ahead of 2 ms in three sets of four, by about 5 %,
# within this machine's noise), and it is what one agent's calls have always had. With
# several, the loop is busy and 0.5 ms makes it hand the GIL over so often that each call costs the
# process about a fifth more CPU than at 2 ms: the writer blocked 5 times per call instead of 2.4
# and spent twice the CPU per record (smaller group commits), and the loop blocked 3 times as often
# (8 % fewer calls per second at 8 agents, 25 % at 32). ``SwitchInterval`` picks between the two
# as clients come and go.
GIL_SWITCH_INTERVAL = 0.0005  # at most one client connected
GIL_SWITCH_INTERVAL_SHARED = 0.002  # two or more


class BusyPollSelector(selectors.DefaultSelector):
    """The event loop's selector, polling for ``busy_poll`` seconds before it sleeps, after a wake-up
    that brought data.

    With nothing to do, an event loop sleeps in epoll until a socket has data; on a virtual machine
    the idle vCPU halts, and waking it again (and the caches the other processes used meanwhile)
    costs each call more than the wait it spared. One agent's calls are all waits of that kind: the
    gateway sends a request upstream and waits for the answer, answers the agent and waits for its
    next request. Polling a little longer first (``epoll_wait`` with a zero timeout, again and again;
    the GIL is let go in each) keeps the gateway awake through such waits: side by side at one
    agent (12 alternating pairs of 3 s), 11 % more calls per second, 14 % less at the median, and
    5 % less CPU per call in all, the polling included; with 8 agents the loop seldom waits, and it
    changed nothing measurable. It polls only when the last wait ended with data (traffic is
    flowing); a wait that ended by its timeout (a timer of an idle gateway: about ten a second)
    is followed by sleep at once, so an idle gateway does not poll at all. ``busy_poll`` 0: sleep
    at once, always, as asyncio's own loop does."""

    def __init__(self, busy_poll: float) -> None:
        super().__init__()
        self.busy_poll = busy_poll
        self._flowing = False  # the last wait ended with data

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout <= 0:  # asyncio has work ready: a look, not a wait
            return super().select(timeout)
        if self.busy_poll and self._flowing:
            poll = self.busy_poll if timeout is None else min(self.busy_poll, timeout)
            end = time.monotonic() + poll
            while True:
                ready = super().select(0)
                if ready:
                    return ready
                if time.monotonic() >= end:
                    break
            timeout = None if timeout is None else max(0.0, timeout - poll)
        ready = super().select(timeout)
        self._flowing = bool(ready)
        return ready


def new_event_loop(busy_poll_us: int) -> asyncio.AbstractEventLoop:
    """The gateway's event loop: asyncio's own, with a selector that polls ``busy_poll_us``
    microseconds before it sleeps (``BusyPollSelector``)."""
    if busy_poll_us <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(BusyPollSelector(busy_poll_us / 1e6))


class _ByClients:
    """Counts the clients connected to the proxy and applies what that number decides."""

    def __init__(self) -> None:
        self.clients = 0

    def _apply(self) -> None:
        """What the subclass sets from ``self.clients``."""

    def client_connected(self, client) -> None:
        self.clients += 1
        self._apply()

    def client_disconnected(self, client) -> None:
        self.clients = max(0, self.clients - 1)
        self._apply()


class SwitchInterval(_ByClients):
    """Sets the GIL switch interval from the number of clients connected to the proxy: 0.5 ms
    for one (or none), 2 ms for more (see GIL_SWITCH_INTERVAL above)."""

    def _apply(self) -> None:
        wanted = GIL_SWITCH_INTERVAL if self.clients <= 1 else GIL_SWITCH_INTERVAL_SHARED
        if sys.getswitchinterval() != wanted:
            sys.setswitchinterval(wanted)


# How many clients may be connected for the store to commit records on the event loop itself
# (``InlineCommits``). Side by side, always inline against the writer thread (alternating pairs of
# 3 s, the same gateway code otherwise): 2 agents 1.25x the calls per second at 0.74x the CPU per
# call (8 pairs, better in all); 3 agents 1.11x, 0.87x (6 pairs); 4 agents 0.97x, 1.01x and 8 agents
# 1.00x, 0.99x (noise); 32 agents 0.94x, 1.06x (6 pairs, worse in all: the writer's groups of about
# 17 records per commit are cheaper than the loop's one at a time).
INLINE_COMMITS_UP_TO = 3
# The same for PostgreSQL, whose inline commit is awaited on the loop (a round trip and the server's
# flush, about a millisecond): side by side, the same gateway code with and without it (5 alternating
# pairs of 5 s, 2026-11-28), 1 agent 1.18x the calls per second (1.07-1.49), 0.37 ms less at the
# median; 2 agents 0.99x (1 pair), 3 agents 1.00x and 0.91x (2 pairs): where a second call's record
# comes while one waits for the server, the writer thread takes it anyway, so one client only.
INLINE_POSTGRES_UP_TO = 1


class _StoreByClients(_ByClients):
    """A setting of the store that the number of clients connected decides."""

    def __init__(self, store) -> None:
        super().__init__()
        self.store = store


class InlineCommits(_StoreByClients):
    """Lets the store commit a call's record on the event loop itself while at most
    INLINE_COMMITS_UP_TO clients are connected (``Store.commit_inline``; on PostgreSQL, from the event
    loop on a connection of its own, while INLINE_POSTGRES_UP_TO are; a record is
    still handed to the writer thread whenever it has records queued or a commit under way). A few
    agents' calls each wait for their own commit, and the writer thread would commit them one or two
    at a time (1.6 records per commit at two agents): handing each record to it and back cost the
    process more than the commit itself (two thread wake-ups and GIL hand-overs per call). At one
    agent, side by side (14 alternating pairs of 3 s), the gateway served 18 % more calls per second
    with it, at 14 % less CPU per call and 0.44 ms less at the median; see INLINE_COMMITS_UP_TO for
    two and more. With more clients the writer thread commits, in groups, while the loop serves the
    others."""

    def _apply(self) -> None:
        self.store.commit_inline = self.clients <= (INLINE_POSTGRES_UP_TO if self.store.postgres else INLINE_COMMITS_UP_TO)


# With several workers recording to one SQLite file, each commit of one worker's writer costs the
# others: SQLite drops a connection's cached pages once another has written, so the next commit
# reads them again (some 12 reads), and the writers take the file's one write lock in turn. A writer
# commits whatever is queued when it wakes: at 32 agents on two workers, about 3 records a commit
# (29 page writes, 12 page reads and 6 lock calls each), where one worker's is about 17. While
# enough clients are connected for more records to come meanwhile (GROUP_DELAY_FROM), the writer
# waits GROUP_DELAY before a commit of fewer than core.store.GROUP_DELAY_UNDER records (``GroupDelay``).
# Side by side (2026-11-28, two workers, the same code with and without it, 11 pairs of 4-5 s at 32
# agents): 1.04-1.17x the calls per second (better in all 11), 0.85-0.96x the CPU per call, the p50
# and p99 lower in all; 1.5 ms about as good, 6 ms no gain (1.00-1.01x). At 16 agents (8 a worker)
# 1.00x and 0.96x, at 8 (4 a worker) 0.92x and 0.66x: too few calls under way for others to join in
# the wait. One worker at 8 to 32 agents gained nothing (0.83-1.08x), its groups being large
# already: workers only.
GROUP_DELAY = 0.003  # seconds
GROUP_DELAY_FROM = 12  # clients connected to the worker


class GroupDelay(_StoreByClients):
    """Has the store's writer thread wait GROUP_DELAY before a small group commit while at least
    GROUP_DELAY_FROM clients are connected to this worker (``Store.group_delay``); added to a worker
    that shares a SQLite file with others (see GROUP_DELAY above)."""

    def _apply(self) -> None:
        self.store.group_delay = GROUP_DELAY if self.clients >= GROUP_DELAY_FROM else 0.0


class GatewayMaster(master.Master):
    """mitmproxy's core add-ons only, with the table-driven hook dispatch of addons/fastpath.py
    (mitmproxy's own dispatch when that cannot be used: ``dispatch_precomputed`` says which)."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=False)
        self.dispatch_precomputed = fastpath.precompute_dispatch(self.addons, on_error=fail_closed)
        self.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
        )


def guard_hooks(m: master.Master) -> int:
    """Where the master dispatches hooks as mitmproxy does (mitmweb's master under ``--web``; the
    gateway's own when its table-driven dispatch does not fit this mitmproxy), each of this
    package's add-ons has its flow hooks fail their flow closed when they raise, as the gateway's
    dispatch does (``stage.guard``). The number of hooks guarded."""
    if getattr(m, "dispatch_precomputed", False):
        return 0
    from . import stage

    return sum(stage.guard(addon) for addon in m.addons.chain
               if type(addon).__module__.startswith(__package__ + "."))


def setup_logging(verbose: bool = False, workers: bool = False) -> None:
    """Log lines on stderr; with ``workers``, each names its process (``[pid]``)."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s" if workers else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(OneLineFormatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("agentgate").setLevel(logging.DEBUG if verbose else logging.INFO)


def read_key(path: Path) -> bytes | None:
    return path.read_bytes().strip() if path.exists() else None


async def serve(settings: Settings, web_listen: str = "127.0.0.1:8082", worker: int | None = None,
                heartbeat=None) -> int:
    """Run one gateway process until SIGTERM, SIGINT or SIGHUP. ``worker``: this process's index when
    it is one of ``workers`` processes sharing the port (addons/workers.py); None for a lone gateway.
    ``heartbeat``: the worker's ``workers.Heartbeat``, beaten by this event loop once it listens."""
    from . import chain
    from .approval import Approval
    from .recorder import Recorder
    from .console import Console, approvers_of
    from .core.approvals import Approvals
    from .core.credentials import CredentialBroker
    from .core.identity import TokenValidator
    from .core.policy import PolicyError, PolicyStore
    from .core.store import Store, StoreError
    from .core.store_process import StoreProcess
    from .policy import Policy, PolicyWatch, check_in_background, log_policy_error

    listen_host, listen_port = parse_hostport(settings.listen, "listen")
    keys = Path(settings.keys)
    kind = StoreProcess if settings.store_writer == "process" else Store
    # the policies first: a gateway they stop creates no store
    try:
        policies = PolicyStore(settings.policies, on_error=log_policy_error if not worker else
                               functools.partial(log_policy_error, level=logging.DEBUG))
        policies.quiet = bool(worker)  # with workers, the first one logs each version and each broken change
        current = policies.current
    except PolicyError as e:
        print(f"agentgate: the policies in {settings.policies} do not load:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    short = next((e for e in current.roles if e.binding.duration <= settings.credential_refresh_margin), None)
    if short is not None:  # its credentials would be renewed on every call: one STS call per call
        print(f"agentgate: {short.file}:{short.line}: role {short.binding.role_arn} has a duration of "
              f"{short.binding.duration}s, not longer than "
              f"credential_refresh_margin ({number(settings.credential_refresh_margin)}s): lengthen the duration or lower "
              "the margin", file=sys.stderr)
        return 2
    created = worker is None and new_sqlite_store(settings.db)
    try:
        store = kind(settings.db, durability=settings.durability, chain_key=read_key(keys / "chain.key"),
                     body_cap=settings.body_cap, sqlite_synchronous=settings.sqlite_synchronous,
                     commit_timeout=settings.commit_timeout)
        store.migrate()
    except StoreError as e:
        print(f"agentgate: {e}", file=sys.stderr)
        return 2
    validator = None
    if settings.oidc_issuer:
        validator = TokenValidator(settings.oidc_issuer, settings.audiences,
                                   algorithms=tuple(settings.oidc_algorithms), groups_claim=settings.groups_claim,
                                   leeway=settings.oidc_leeway, jwks_cache_seconds=settings.oidc_jwks_cache)
    broker = CredentialBroker(endpoint_url=settings.upstream or None, region=settings.sts_region or None,
                              refresh_margin=settings.credential_refresh_margin)

    approvals = Approvals(store, max_pending=settings.max_pending_approvals)
    notifier = None
    if settings.webhook_url:
        from .notify import Notifier

        notifier = Notifier(settings.webhook_url, console_url=settings.console_url)

    await asyncio.to_thread(_warm_up)
    opts = options.Options(listen_host=listen_host, listen_port=listen_port, confdir=settings.certs)
    if worker is not None and not fastpath.reuse_port():
        print("agentgate: this mitmproxy cannot share its port between workers (SO_REUSEPORT); run with workers = 1",
              file=sys.stderr)
        return 2
    m = web_master(opts, web_listen) if settings.web else GatewayMaster(opts)
    stages = chain(settings, store=store, policies=policies, validator=validator, broker=broker,
                   approvals=approvals, notifier=notifier, fingerprint_key=read_key(keys / "fingerprint.key"))
    holder = next(s for s in stages if isinstance(s, Approval))
    deciding = next(s for s in stages if isinstance(s, Policy))
    recorder = next(s for s in stages if isinstance(s, Recorder))
    m.addons.add(*stages)
    m.addons.add(SwitchInterval())
    if isinstance(store, Store) and store.can_commit_inline:
        m.addons.add(InlineCommits(store))
    if kind is Store and not store.postgres and worker is not None:  # its writer thread, in this process
        m.addons.add(GroupDelay(store))
    if settings.web:
        from .web import WebScrub

        m.addons.add(WebScrub())  # last: after the recorder
    guard_hooks(m)
    # mitmproxy's tcp_timeout closes a client connection idle that long, a call waiting on upstream
    # included: keep it above upstream_timeout, so that the gateway's own bound is the one that acts.
    m.options.update(connection_strategy="lazy", http3=False,
                     tcp_timeout=max(600, math.ceil(settings.upstream_timeout) + 60))
    try:  # the first write: a store another process keeps locked longer than the gateway waits says so here
        store.store_policy_version(current.version, current.text)
    except StoreError as e:
        print(f"agentgate: {e}; {cannot_write_hint(e)}", file=sys.stderr)
        await asyncio.to_thread(store.close)
        return 2
    store.start()
    loop = asyncio.get_running_loop()

    def put_in_force(policy_set) -> None:
        """Each version put in force (by the watch's thread, or a call): its text kept in the store
        (on the loop, as a call keeps it), and checked by one process: the first worker, or the
        gateway when it is one process."""
        try:
            loop.call_soon_threadsafe(deciding.keep_text, policy_set)
        except RuntimeError:  # the loop is closed: the gateway has stopped
            return
        if not worker:
            check_in_background(policy_set)
    policies.listen(put_in_force)
    watch = PolicyWatch(policies)
    watch.start(loop)
    await approvals.start()
    console = None
    if settings.console_listen:
        console = _start_console(settings, worker is not None, Console(
            approvals, store, validator=validator, admin_token=read_key(keys / "admin.token"),
            may_view=approvers_of(policies, settings.grant_approvers), notifier=notifier,
            sessions_ended=keys / "console-sessions-ended").app)

    stopping = False
    status = 0

    def stop(signum: int) -> None:
        nonlocal stopping
        if stopping:  # a second signal: stop now
            log.warning("%s again: stopping now", signal.Signals(signum).name)
            m.shutdown()
            return
        stopping = True
        # SIGHUP (a terminal hung up, a service manager's reload) stops as SIGTERM does: settings
        # are read at start only, and the policies reload by themselves on change
        log.info("%s: stopping: new calls are refused, calls in flight are answered and recorded first (up to "
                 "drain_seconds, %g s)", signal.Signals(signum).name, settings.drain_seconds)
        recorder.stopped_by = signal.Signals(signum).name
        loop.create_task(_stop(), name="agentgate-stop")

    writer_gone = False
    running = False

    def writer_ended() -> None:
        """(A worker.) Its store's writer process has ended: every call it takes would be refused
        while the other workers serve. It stops as at SIGTERM (its connections closed, for the
        agents to retry on the others) and exits with 1, so that the supervisor starts it again,
        with a writer process of its own; once it listens, when the writer ended before that."""
        nonlocal stopping, status, writer_gone
        writer_gone = True
        if stopping or not running:
            return
        stopping, status = True, 1
        recorder.stopped_by = "the end of the store's writer process"
        loop.create_task(_stop(), name="agentgate-stop")

    if worker is not None and isinstance(store, StoreProcess):
        store.on_ended = writer_ended

    async def _stop() -> None:
        # No new connections (with workers, the others take them). The agents' idle connections are
        # closed now: their next call opens a new one (urllib3 sees the close before it sends). A call
        # that reaches an open connection all the same is answered 503, to be retried, and recorded;
        # held calls get ApprovalPending (their approvals stay in the store); the calls in flight are
        # answered (their connections closed after the answer) and recorded. Then every connection
        # still open is closed and its handler let finish, so that no request is read, and none
        # answered, once the store is closed.
        m.options.update(server=False)
        recorder.stopping = True
        proxy = m.addons.get("proxyserver")
        closing.close_clients(proxy, keep=recorder.busy_clients())
        await holder.drain()
        await recorder.drain(settings.drain_seconds)
        if left := await closing.writes_flushed(proxy, CLOSE_SECONDS):  # answers given, not yet all sent
            log.warning("stopping with %d client connections still holding answer bytes after %g s", left,
                        CLOSE_SECONDS)
        closing.close_clients(proxy)  # a call that came meanwhile was answered STOPPING: the drain below records it
        if left := await closing.clients_closed(proxy, CLOSE_SECONDS):
            log.warning("stopping with %d client connections whose handlers did not finish in %g s", left,
                        CLOSE_SECONDS)
        await recorder.drain(CLOSE_SECONDS)  # what came on the connections as they closed
        m.shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, sig)

    def listening() -> None:
        nonlocal running
        if worker:  # the first worker prints the banner for all of them
            log.info("worker %d (pid %d) listening on %s:%d", worker, os.getpid(), listen_host, listen_port)
        else:
            _banner(settings, worker, listen_host, listen_port, store, created, current, console, m)
        running = True
        if writer_gone:  # its writer process ended while it started
            writer_ended()
    m.addons.add(Listening(listening, heartbeat))

    checking = None if validator is None or worker else loop.create_task(_check_issuer(validator),
                                                                         name="agentgate-issuer-check")
    try:
        return await _run_until_done(m, console, approvals, notifier, store, validator, watch) or status
    finally:
        if checking is not None:
            checking.cancel()


class Listening:
    """Once the proxy's listener is bound (mitmproxy's ``running``): says so (the banner, or a
    worker's line), and starts the worker's heartbeat, which the supervisor watches from then on."""

    def __init__(self, announce, heartbeat=None) -> None:
        self.announce = announce
        self.heartbeat = heartbeat

    def running(self) -> None:
        self.announce()
        if self.heartbeat is not None:
            self.heartbeat.start(asyncio.get_running_loop())


def _banner(settings: Settings, worker: int | None, listen_host: str, listen_port: int, store, created: bool,
            current, console, m) -> None:
    """Where the gateway listens, its store, policy version, CA and the rest, on stderr. With
    workers, printed by worker 0, naming the supervisor (the pid to signal) and itself."""
    workers = (f" ({settings.workers} workers, supervisor pid {os.getppid()}; pid {os.getpid()} is worker 0)"
               if worker is not None else "")
    print(f"agentgate listening on {listen_host}:{listen_port}{workers}", file=sys.stderr)
    print(f"  store:    {_safe_url(settings.db)} (durability {settings.durability}; {store.guarantee})", file=sys.stderr)
    if created:
        print("            NEW: no store was there, this one was created now (check the path if you meant an "
              "existing one)", file=sys.stderr)
    print(f"  policies: {settings.policies} (version {current.version})", file=sys.stderr)
    print(f"  CA:       {settings.ca_file}  <- agents trust this", file=sys.stderr)
    if settings.upstream:
        print(f"  upstream: {settings.upstream} (all AWS traffic, Host kept)", file=sys.stderr)
    if console is not None:
        print(f"  console:  {settings.console_url} (approvals; hold {settings.approval_hold:g} s)", file=sys.stderr)
    if settings.web:
        print(f"  web:      {m.web_url}  (mitmweb: calls as the agent sees them; credentials removed)", file=sys.stderr)
    if not settings.oidc_issuer:
        print("  WARNING: oidc_issuer is not set: every call is refused until it is set in agentgate.toml", file=sys.stderr)
    sys.stderr.flush()


async def _check_issuer(validator) -> None:
    """Warn once, at start-up, when the issuer's discovery document names another issuer than
    oidc_issuer (``http://h:p`` for ``http://h:p/``): every token is refused until the setting is
    corrected. In the background, so that an issuer that is down does not hold up start-up (the
    calls say so then)."""
    why = await validator.configuration_error()
    if why is not None:
        log.warning("%s; until then every call is refused", why)


def cannot_write_hint(e: Exception) -> str:
    """What to do about a store that cannot write at start-up (the gateway exits then: a gateway
    that cannot record would refuse every call)."""
    text = str(e).lower()
    if "locked" in text or "busy" in text:
        return ("another process holds a write transaction on it (a sqlite3 shell, a backup, a migration): end it, "
                "then start the gateway again")
    return "start the gateway again once the store can write"


def new_sqlite_store(url: str) -> bool:
    """Whether ``url`` names a SQLite file not there yet, which starting the gateway creates (a
    mistyped --db would otherwise start an empty store without a word)."""
    from .core.store import _sqlite_path

    try:
        path = _sqlite_path(url)
    except Exception:  # noqa: BLE001 - not a URL: the store's own error says so
        return False
    return path is not None and not path.exists()


def settle_heap() -> None:
    """Take what start-up built out of the cycle collector's sight, for good.

    botocore's indexes, IAM's data, the compiled policies, mitmproxy and SQLAlchemy leave some
    130,000 objects that live as long as the process. Each of CPython's full collections walks them
    all, holding the event loop, and so every agent's call, meanwhile: 130 to 160 ms every 20 to
    30 s at 8 agents on the bench machine. Frozen, they are not walked: a full collection then
    walks what came later (service models loaded on first use, the calls in flight), about 25 ms
    there. Frozen objects are never freed by the cycle collector; reference counting still frees
    them, and start-up's objects are meant to last anyway.
    """
    linecache.clearcache()  # source lines read at start-up (a warning's, say): read again when needed
    gc.collect()
    gc.freeze()


async def _run_until_done(m, console, approvals, notifier, store, validator, watch) -> int:
    settle_heap()
    try:
        await m.run()
    finally:
        watch.stop()  # no policy version put in force, nor its text kept, once the store closes
        if console is not None:
            await console.stop()
        await approvals.aclose()
        if notifier is not None:
            await notifier.aclose()
        await asyncio.to_thread(store.close)
        if validator is not None:
            await validator.aclose()
    return 0


def _start_console(settings: Settings, shared: bool, app):
    """The approvals console on ``console_listen``, in this event loop; None if it cannot listen.
    ``shared``: every worker serves it on the same port (SO_REUSEPORT)."""
    from .console import Server, bind

    host, port = parse_hostport(settings.console_listen, "console_listen")
    if shared:
        app = _worker_header(app)
    try:
        sock = bind(host, port, reuse_port=shared)
    except OSError as e:
        log.warning("the approvals console cannot listen on %s (%s); the gateway runs without it: set "
                  "console_listen to a free HOST:PORT", settings.console_listen, e.strerror or e)
        return None
    server = Server(app, sock)
    server.start()
    return server


def _worker_header(app):
    """``app`` with an ``x-agentgate-worker: <pid>`` header on every answer, so that an operator
    (and a test) can tell which of the workers sharing the console's port answered."""
    pid = str(os.getpid()).encode()

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-agentgate-worker", pid)]}
            await send(message)

        await app(scope, receive, send_with_header)

    return wrapped


def _warm_up() -> None:
    """Build the host and service indexes now, so the first call does not pay for them."""
    from .core import classifier, endpoints

    endpoints.preload()
    classifier.prepare()


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def web_master(opts: options.Options, web_listen: str) -> master.Master:
    """mitmweb's master (its add-ons, its web UI on ``web_listen``), for the chain to be added to."""
    from mitmproxy.tools.web.master import WebMaster

    host, port = parse_hostport(web_listen, "web_listen")
    m = WebMaster(opts, with_termlog=False)
    # mitmweb's own add-ons come with it; its `block` refuses agents connecting from a global address
    # (block_global), which the gateway without --web serves (every call still needs its token)
    m.options.update(web_host=host, web_port=port, web_open_browser=False, block_global=False)
    from .web import read_only

    read_only(m.app)  # for watching calls, not for changing options or flows (addons/web.py)
    return m


def run(settings: Settings, verbose: bool = False, web_listen: str = "127.0.0.1:8082",
        worker: int | None = None, heartbeat=None) -> int:
    setup_logging(verbose, workers=worker is not None)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.busy_poll_us)) as runner:
        return runner.run(serve(settings, web_listen, worker, heartbeat))
