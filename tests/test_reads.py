"""addons/reads.py: a connection's read hands over what has arrived, up to READ_SIZE, not 64 KiB at
most; a small message is handed over as soon as it arrives, as before.

Driven with mitmproxy's own ``ConnectionHandler.handle_connection`` over a real loopback socket;
only the layers are left out (``server_event`` keeps mitmproxy's lock and records the bytes it is
given). Large bodies through a real gateway, both ways, are in tests/test_s3_wire.py and the
transfer tests. A changed mitmproxy left alone: tests/test_fastpath.py."""

from __future__ import annotations

import asyncio
import os

from mitmproxy import connection
from mitmproxy.proxy import events, server

from addons import reads


class Handler(server.ConnectionHandler):
    """mitmproxy's ConnectionHandler with its per-connection machinery and no layers."""

    def __init__(self, client: connection.Client) -> None:  # noqa: D107 - the base's needs a whole context
        self.client = client
        self.transports = {}
        self._server_event_lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        self.received: list[bytes] = []
        self.got = asyncio.Event()

    async def server_event(self, event: events.Event) -> None:
        async with self._server_event_lock:  # as mitmproxy's: the lock, then nothing that waits
            if isinstance(event, events.DataReceived):
                self.received.append(event.data)
                self.got.set()

    async def handle_hook(self, hook) -> None:  # pragma: no cover - no layers, no hooks
        pass


async def _serve(handle_connection, send) -> Handler:
    """A client connects; ``send(writer, handler)`` sends while ``handle_connection`` reads. The handler."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    srv = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client_reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await accepted
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", port), timestamp_start=0)
    h = Handler(client)
    h.transports[client] = server.ConnectionIO(reader=reader, writer=writer)
    task = asyncio.create_task(handle_connection(h, client))
    h.transports[client].handler = task
    try:
        await send(client_writer, h)
        client_writer.close()
        await asyncio.wait_for(task, timeout=10)  # it reads to the end of the stream
    finally:
        task.cancel()
        writer.close()
        srv.close()
    return h


BODY = os.urandom(4 << 20)


async def _a_large_body(handle_connection) -> Handler:
    async def send(writer, h):
        await h._server_event_lock.acquire()  # the layers are busy with a read: more arrives meanwhile
        writer.write(BODY[:65536])
        await writer.drain()
        await asyncio.sleep(0.2)
        h._server_event_lock.release()
        writer.write(BODY[65536:])
        await writer.drain()

    return await _serve(handle_connection, send)


def test_a_large_body_is_read_in_larger_pieces_and_whole():
    assert reads.install()
    h = asyncio.run(_a_large_body(server.ConnectionHandler.handle_connection))
    assert b"".join(h.received) == BODY  # all of it, in order
    assert max(map(len, h.received)) > 65535  # what had arrived, in one read
    assert max(map(len, h.received)) <= reads.READ_SIZE


def test_mitmproxy_alone_reads_64_kib_at_most():
    """What the wrapper changes: the same body, with mitmproxy's own handle_connection."""
    reads.install()
    original = server.ConnectionHandler.handle_connection
    while hasattr(original, "__wrapped__"):  # under closing.py's wrapper too, when installed
        original = original.__wrapped__
    h = asyncio.run(_a_large_body(original))
    assert b"".join(h.received) == BODY
    assert max(map(len, h.received)) <= 65535


def test_a_small_message_is_handed_over_as_soon_as_it_arrives():
    async def send(writer, h):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(h.got.wait(), timeout=2)  # not held back for more to come
        assert h.received == [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]

    assert reads.install()
    h = asyncio.run(_serve(server.ConnectionHandler.handle_connection, send))
    assert h.received == [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]
