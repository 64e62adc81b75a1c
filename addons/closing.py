"""closing: a connection that mitmproxy closes is closed, also when it is closed from another task.

mitmproxy's ConnectionHandler runs a task per connection (``handle_connection``): it reads, hands
each read to the layers (``server_event``, which first waits for a lock that the hook tasks of the
same client take too), and when the connection ends it tells the layers (``ConnectionClosed``),
closes the socket and forgets the transport. A layer closes a connection by cancelling that task.
When the close comes from another task (a hook that finished: the 413 for a request body over
``max_body_bytes`` is sent once its error hook, which records the call, is done) while the
connection's task waits for that lock to hand over bytes it read, the cancellation leaves the task
right there, past everything it would have done: the socket stays open and unread, the layers are
never told, and an agent still sending its body waits for its own timeout instead of seeing the
connection end (mitmproxy 12.3: ``ConnectionHandler.handle_connection`` catches the cancellation
only around its read and its drain). ``install()`` wraps ``handle_connection`` to finish that work
when the cancellation escapes: the connection marked closed, the layers told, the socket closed and
the transport forgotten, as ``handle_connection`` does after a cancelled read.

``install()`` checks the shape of what it wraps first; if mitmproxy has changed it logs an error
and wraps nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from . import fastpath

log = logging.getLogger("agentgate.closing")

_installed = False


def install() -> bool:
    """Wrap mitmproxy's ``ConnectionHandler.handle_connection`` as described above. True when in place."""
    global _installed
    if _installed:
        return True
    try:
        from mitmproxy.connection import ConnectionState
        from mitmproxy.proxy import events
    except ImportError as e:
        log.error("connections closed from another task may stay open (mitmproxy's layout changed: %s)", e)
        return False
    handler, original, changed = fastpath.connection_handler(("handler", "reader", "writer"))
    if changed is None and not (hasattr(events, "ConnectionClosed") and hasattr(ConnectionState, "CLOSED")):
        changed = "ConnectionHandler changed"
    if changed is not None:
        log.error("connections closed from another task may stay open (mitmproxy's %s)", changed)
        return False

    @functools.wraps(original)
    async def handle_connection(self, connection) -> None:
        try:
            await original(self, connection)
        except asyncio.CancelledError:
            transport = self.transports.get(connection)
            if transport is None:  # it had closed and forgotten the connection itself
                raise
            connection.state = ConnectionState.CLOSED
            try:
                await self.server_event(events.ConnectionClosed(connection))
            finally:
                if transport.writer is not None:
                    try:
                        transport.writer.close()
                    except OSError:
                        pass
                self.transports.pop(connection, None)
            raise

    handler.handle_connection = handle_connection
    _installed = True
    return True


def close_clients(proxyserver, keep: frozenset = frozenset()) -> int:
    """Close the agents' connections to ``proxyserver`` (mitmproxy's Proxyserver add-on), but those
    whose client id is in ``keep``, the way a layer closes one (``ConnectionHandler.close_connection``:
    the connection's task is cancelled, the layers are told, the socket is closed). A client then
    sees its connection end before it sends on it, and opens a new one. The number closed."""
    closed = 0
    for handler in list(proxyserver.connections.values()):
        client = handler.client
        io = handler.transports.get(client)
        if client.id in keep or io is None or io.handler is None or io.handler.done():
            continue
        handler.close_connection(client)
        closed += 1
    return closed


async def writes_flushed(proxyserver, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for what was written to the agents' connections to leave the
    process (asyncio's write buffers empty): an answer handed over whole, its ``response`` hook run,
    may still be on its way to an agent that reads slowly, and closing its connection then would
    cut its last bytes off. The number of connections still holding bytes when it gave up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def holding() -> int:
        n = 0
        for handler in list(proxyserver.connections.values()):
            io = handler.transports.get(handler.client)
            transport = getattr(getattr(io, "writer", None), "transport", None)
            if transport is not None and not transport.is_closing() and transport.get_write_buffer_size():
                n += 1
        return n

    while (left := holding()) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return left


async def clients_closed(proxyserver, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for mitmproxy's handlers of the agents' connections to
    finish (each has told the layers and the add-ons, ``client_disconnected``, and closed its
    sockets). The number still open when it gave up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proxyserver.connections and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)  # the tasks that served them end now
    return len(proxyserver.connections)
