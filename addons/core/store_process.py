"""The store's writer in a process of its own (``store_writer = "process"``; the default is "thread").

A gateway process is bound by Python's GIL: its event loop and the store's writer thread take
turns on one core. ``StoreProcess`` is a ``Store`` whose writing runs in a child process instead:
the gateway sends each Record over a socket pair and the child prepares it (row, bound values,
canonical form), chains it and commits it, with the writer of core.store unchanged, on the other
core; the child's writer thread sends each verdict back itself. What the gateway's event loop
keeps is sending the Record and reading its verdict.

The child runs ``Store.write`` for each record as the gateway would have: the same group commits,
the same durability, the same ``commit_timeout``, the same rewriting of a record whose call is
refused (``if_refused``) or whose client left (``if_gone``: the gateway tells the child when it
sees its client leave), the same fail-closed health, which the child reports as it changes.
The text of each policy version that decides calls goes to the child too, ahead of the records
naming it, for its writer to store before their commit. Reading (the console, approvals, policy
versions) stays in the gateway on its own connections.

The child ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C or hang-up reaches every process
of the gateway's group): it stops when the gateway tells it to, after writing what is
queued (``close``), or when the gateway is gone (end of file on its socket), after the same. If the
child dies, the gateway says so on stderr and refuses every call from then on (fail closed): the
records waiting for their commit at that moment are lost, as they would be if the gateway process
itself had died.

Messages are length-prefixed pickles between a process and the child it started (nothing else
holds either end of the socket pair); what the gateway sends in one turn of its event loop goes
out in one write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from typing import Any

from . import chain
from . import store as store_module
from .records import Record
from .store import Store, StoreError, StoreUnavailable, _Waiter

log = logging.getLogger("agentgate.store")

_LENGTH = struct.Struct("!I")
START_TIMEOUT = 60.0  # seconds the child has to check the schema and start its writer
HEALTH_EVERY = 0.02  # seconds between the child's looks at its store's health and at records past commit_timeout


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """A byte stream cut back into messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        out, start, size = [], 0, len(self.buffer)
        while size - start >= 4:
            (n,) = _LENGTH.unpack_from(self.buffer, start)
            if size - start - 4 < n:
                break
            out.append(pickle.loads(memoryview(self.buffer)[start + 4:start + 4 + n]))
            start += 4 + n
        if start:
            del self.buffer[:start]
        return out

    def receive(self, sock: socket.socket) -> list[Any] | None:
        """The messages ``sock`` has ready, without waiting (a blocking socket too); None once
        the other end has closed it."""
        try:
            data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        return self.feed(data) if data else None


def read_message(sock: socket.socket) -> Any:
    """One message, read blocking (before either side runs an event loop)."""
    def exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            part = sock.recv(n - len(data))
            if not part:
                raise EOFError("the other end closed the connection")
            data += part
        return bytes(data)

    (n,) = _LENGTH.unpack(exactly(4))
    return pickle.loads(exactly(n))


class Channel:
    """One end of the socket pair on an event loop: messages out, batched per turn of the loop;
    messages in, to ``on_message``; ``on_closed`` once the other end has gone."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, on_message, on_closed) -> None:
        self.sock = sock
        self.loop = loop
        self.on_message = on_message
        self.on_closed = on_closed
        self.frames = Frames()
        self.out = bytearray()
        self.flushing = False
        self.writing = False
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: Any) -> None:
        self.send_frame(frame(message))

    def send_frame(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        if not self.flushing and not self.writing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        if self.closed or not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone()
            return
        del self.out[:sent]
        if self.out and not self.writing:
            self.writing = True
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self.writing = False
        self._flush()

    def _readable(self) -> None:
        messages = self.frames.receive(self.sock)
        if messages is None:
            self._gone()
            return
        for message in messages:
            self.on_message(message)

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self.writing:
            self.loop.remove_writer(self.sock.fileno())
        self.on_closed()


# ---------------------------------------------------------------------------------------------
# The gateway's side


class StoreProcess(Store):
    """A Store whose writer runs in a child process; reading stays here. Same API as Store."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._config = dict(kw, url=url, writer_id=self.writer_id)
        handlers = logging.getLogger().handlers  # the writer logs as the gateway does (with [pid] under workers)
        self._log_format = getattr(handlers[0].formatter, "_fmt", None) if handlers and handlers[0].formatter else None
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._ended = False  # the child is gone: every write is refused
        self._stopping = False
        self._versions_sent: set[str] = set()  # policy versions whose text the writer process was given
        # called (on the event loop) when the writer process ends while the gateway is not stopping:
        # a worker stops then, to be started again by its supervisor with a writer of its own
        self.on_ended = None

    def start(self) -> None:
        """Start the writer process. It starts its writer while the gateway goes on starting;
        writes sent before it is ready wait in the socket."""
        if self._proc is not None:
            return
        self._check_schema()
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise StoreError(f"the store's writer process cannot start: {e}") from None
        finally:
            theirs.close()
        ours.sendall(frame((self._config, self._log_format)))
        self._sock = ours
        try:
            self._attach(asyncio.get_running_loop())
        except RuntimeError:
            pass  # attached by the first write, on its event loop

    def _attach(self, loop: asyncio.AbstractEventLoop) -> Channel:
        if self._channel is None:
            self._channel = Channel(self._sock, loop, self._message, self._child_gone)
        return self._channel

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "v":
            future = self._waiting.pop(message[1], None)
            if future is None or future.done():
                return
            verdict = message[2]
            if verdict is True or verdict is False:
                future.set_result(verdict)
            elif verdict[0] == "unavailable":
                future.set_exception(StoreUnavailable(verdict[1]))
            else:
                future.set_exception(StoreError(verdict[1]))
        elif kind == "h":
            self._healthy, self._last_error = message[1], message[2]
        elif kind == "error":  # it could not start its writer; it ends next
            self._healthy, self._last_error = False, message[1]

    def _child_gone(self) -> None:
        self._ended = True
        if self._proc is not None:
            try:
                self._proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        code = self._proc.poll() if self._proc is not None else None
        why = f": {self._last_error}" if not self._healthy and self._last_error else ""
        self._healthy = False
        self._last_error = f"its writer process has ended (exit code {code}){why}"
        if self._stopping:
            return
        log.error("store %s: the writer process %s has ended (exit code %s)%s; %d records waiting for their commit are "
                  "lost; refusing every call from now on%s", self.where, self.pid, code, why, len(self._waiting),
                  "" if self.on_ended is None else "; stopping this worker, for its supervisor to start it again")
        error = StoreUnavailable(f"the store at {self.where} cannot write ({self._last_error})")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if self.on_ended is not None:
            self.on_ended()

    async def write(self, record: Record, *, if_refused: dict[str, Any] | None = None,
                    if_gone: dict[str, Any] | None = None, gone=None) -> bool:
        """``Store.write``, by the writer process."""
        if self._sock is None:
            raise StoreError(f"the store at {self.where} is not started: start() it before writing")
        loop = asyncio.get_running_loop()
        channel = self._attach(loop)
        if self._ended:
            raise StoreUnavailable(f"the store at {self.where} cannot write ({self._last_error}); record {record.id} "
                                   f"was not kept")
        rid = next(self._ids)
        waits = self.durability == "sync"
        message = ["w", rid, record, if_refused, if_gone if waits else None, waits and gone is not None, waits]
        try:
            data = frame(tuple(message))
        except (pickle.PicklingError, TypeError, ValueError, AttributeError):  # a value pickle cannot take: as the
            message[2] = dataclasses.replace(record, **{  # store would keep it (its JSON form), which it can
                name: chain.jsonable(getattr(record, name)) for name in ("params", "groups", "resources", "masked")})
            try:
                data = frame(tuple(message))
            except (pickle.PicklingError, TypeError, ValueError, AttributeError, RecursionError) as e:
                raise StoreError(f"record {record.id} cannot be stored: {e}") from None
        if not waits:
            channel.send_frame(data)
            if not self._healthy:
                raise self._unavailable()
            return True
        future = loop.create_future()
        self._waiting[rid] = future
        channel.send_frame(data)
        timer: asyncio.TimerHandle | None = None
        if gone is not None:
            def look() -> None:
                nonlocal timer
                if future.done():
                    return
                if gone():
                    channel.send(("g", rid))
                    return
                timer = loop.call_later(store_module.WATCH_EVERY, look)

            timer = loop.call_later(store_module.WATCH_EVERY, look)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            look = None  # it names itself: a cycle that would keep the call's flow for the garbage collector
            self._waiting.pop(rid, None)

    def keep_policy_version(self, version: str, text: str) -> None:
        """``Store.keep_policy_version``, by the writer process: sent ahead of the records that
        name the version, so that it stores the text before their commit."""
        if version in self._policy_versions or version in self._versions_sent:
            return
        if self._sock is None or self._ended:
            return  # not started (the next call tells it), or ended (nothing more is written)
        self._attach(asyncio.get_running_loop()).send(("p", version, text))
        self._versions_sent.add(version)

    def write_sync(self, record: Record, *, if_refused: dict[str, Any] | None = None) -> None:
        raise StoreError("the store's writer runs in a process of its own: write() from its event loop")

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float = 10.0) -> None:
        """Tell the writer process to write what is queued (for up to ``timeout`` seconds),
        checkpoint and stop; wait for it."""
        proc, channel = self._proc, self._channel
        if proc is not None and proc.poll() is None and not self._stopping:
            self._stopping = True
            message = ("close", timeout)
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if channel is not None and not channel.closed and channel.loop.is_running() and here is not channel.loop:
                channel.loop.call_soon_threadsafe(channel.send, message)
            else:  # no event loop to send it with but this thread's, which waits below: send it now
                pending = bytes(channel.out) if channel is not None else b""
                try:
                    self._sock.setblocking(True)
                    self._sock.sendall(pending + frame(message))
                    if channel is not None:
                        channel.out.clear()
                except OSError:
                    pass  # it is gone already
            try:
                proc.wait(timeout + store_module.MAX_BACKOFF + 10)
            except subprocess.TimeoutExpired:
                log.error("store %s: the writer process %d did not stop in time; killing it", self.where, proc.pid)
                proc.kill()
                proc.wait()
        self._stopping = True
        super().close(timeout)


# ---------------------------------------------------------------------------------------------
# The writer process


class _Verdict(_Waiter):
    """A record's waiter in the writer process: the writer thread sends its verdict to the gateway
    itself (``core.store._resolve`` sets it as it would a thread's), without a hop through this
    process's event loop."""

    __slots__ = ("rid", "writer")

    def __init__(self, writer: "_Writer", rid: int) -> None:
        self.loop = self.future = None
        self.error = None
        self.event = self  # _resolve: waiter.error = verdict; waiter.event.set()
        self.rid = rid
        self.writer = writer

    def set(self) -> None:
        self.writer._settled(self.rid, self.error)


class _Writer:
    """The child's side: a Store started here, fed by the gateway's messages. Each record waits as
    in ``Store.write``: for its verdict, for ``commit_timeout`` at most while it is still queued,
    and for news of its client leaving (which the gateway sends). Its verdict is sent by whichever
    thread reaches it: the writer's (committed, refused) or the event loop's (too late, gone)."""

    def __init__(self, store: Store, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.sock = sock
        self.sending = threading.Lock()
        self.waiting: dict[int, tuple[Any, _Verdict]] = {}
        self.deadlines: deque[tuple[float, int]] = deque()  # (when commit_timeout runs out, rid), in order
        self.done = loop.create_future()
        self.health = (True, "")
        self.frames = Frames()
        sock.setblocking(True)  # sends block (from either thread); reads never do (MSG_DONTWAIT)
        loop.add_reader(sock.fileno(), self._readable)
        self._look_at_health()

    def _send(self, message: Any) -> None:
        data = frame(message)
        with self.sending:
            try:
                self.sock.sendall(data)
            except OSError:  # the gateway is gone: _readable sees the end of file
                pass

    def _readable(self) -> None:
        messages = self.frames.receive(self.sock)
        if messages is None:
            self.loop.remove_reader(self.sock.fileno())
            self._finish(10.0)  # the gateway is gone: write what is queued, then stop
            return
        for message in messages:
            self._message(message)

    def _message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "w":
            _, rid, record, if_refused, if_gone, watch, reply = message
            if reply:
                self._write(rid, record, if_refused, if_gone if watch else None)
            else:
                try:
                    self.store._enqueue(record, None, if_refused)
                except StoreError:  # unavailable: the record is kept (not kept: the store logged why)
                    pass
        elif kind == "p":
            self.store.keep_policy_version(message[1], message[2])
        elif kind == "g":
            self._left(message[1])
        elif kind == "close":
            self._finish(message[1])

    def _write(self, rid: int, record: Record, if_refused, if_gone) -> None:
        store = self.store
        waiter = _Verdict(self, rid)
        self.waiting[rid] = (None, waiter)
        try:
            item = store._enqueue(record, waiter, if_refused, if_gone)
        except StoreError as e:
            self._settled(rid, e)
            return
        if rid in self.waiting:  # not settled yet
            self.waiting[rid] = (item, waiter)
            # looked at with the store's health, every HEALTH_EVERY: no timer of its own per record
            self.deadlines.append((self.loop.time() + store.commit_timeout, rid))

    def _overdue(self, rid: int) -> None:
        item, waiter = self.waiting.get(rid, (None, None))
        if item is not None and self.store._overdue(item, waiter):  # still queued: the writer will not answer it
            self._settled(rid, self.store._too_slow())

    def _left(self, rid: int) -> None:
        item, waiter = self.waiting.get(rid, (None, None))
        if item is not None and not item.left and self.store._left(item, waiter):
            self._settled(rid, store_module.WITHDRAWN)

    def _settled(self, rid: int, verdict: Any) -> None:
        """(Either thread.) ``rid``'s verdict, sent once."""
        if self.waiting.pop(rid, None) is None:
            return
        if verdict is None or verdict is store_module.WITHDRAWN:
            out: Any = verdict is None
        elif isinstance(verdict, StoreUnavailable):
            out = ("unavailable", str(verdict))
        else:
            out = ("error", str(verdict))
        self._report_health()
        self._send(("v", rid, out))

    def _report_health(self) -> None:
        with self.sending:  # read and sent under one lock: a later state is never overtaken by an earlier one
            health = (self.store.healthy, self.store._last_error)
            if health == self.health:
                return
            self.health = health
            try:
                self.sock.sendall(frame(("h", *health)))
            except OSError:
                pass

    def _look_at_health(self) -> None:
        if self.done.done():
            return
        now = self.loop.time()
        while self.deadlines and self.deadlines[0][0] <= now:  # records that waited commit_timeout
            self._overdue(self.deadlines.popleft()[1])
        self._report_health()
        self.loop.call_later(HEALTH_EVERY, self._look_at_health)

    def _finish(self, timeout: float) -> None:
        if not self.done.done():
            self.done.set_result(timeout)


async def _serve(store: Store, sock: socket.socket) -> None:
    writer = _Writer(store, sock, asyncio.get_running_loop())
    timeout = await writer.done
    await asyncio.to_thread(store.close, timeout)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when this process stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    config, log_format = read_message(sock)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(chain.OneLineFormatter(log_format or "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("agentgate").setLevel(logging.INFO)
    sys.setswitchinterval(0.0005)  # the writer thread gets the GIL back soon after each database call
    try:
        store = Store(**config)
        store.start()
    except StoreError as e:
        sock.sendall(frame(("error", str(e))))
        return 2
    sock.sendall(frame(("ready",)))
    asyncio.run(_serve(store, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
