"""h2buffers: an answer to an HTTP/2 agent is read from upstream no faster than the agent takes it.

mitmproxy's ConnectionHandler runs a task per connection (``handle_connection``) that reads, hands
each read to the layers and waits for the writers to drain (``drain_writers``): when an agent reads
slowly, the socket's write buffer fills, the drain waits, and the read from upstream waits with it,
so an HTTP/1.1 agent's slow download holds a few hundred KiB in the gateway. An HTTP/2 agent's
answer is written to the agent's connection only as far as the agent's flow-control window
allows; the rest waits in mitmproxy's HTTP/2 layer (``BufferedH2Connection.stream_buffers``), which
no drain sees, so upstream was read as fast as it sent: an agent that reads an S3 object slowly (or
opens its window a little at a time, as HTTP/2 lets it) had the gateway hold the whole object in
memory, and a few such downloads at once took it out of memory (mitmproxy 12.3).

``install()`` wraps ``handle_connection``: before each read of a connection to upstream, it waits
while the HTTP/2 stream that connection answers holds more than STREAM_BUFFER bytes for its agent,
so upstream is read again once the agent has taken its answer's bytes (TCP's flow control then
slows upstream as it does for an HTTP/1.1 agent). Each stream is judged by its own buffer: an
agent that stops reading one stream does not hold up its other streams on the same connection.
The wait ends when the stream or the agent's connection ends.

``install()`` checks the shape of what it wraps first; if mitmproxy has changed it logs an error
and wraps nothing.
"""

from __future__ import annotations

import asyncio
import logging

from . import fastpath

log = logging.getLogger("agentgate.h2buffers")

STREAM_BUFFER = 1 << 20  # bytes an HTTP/2 stream holds for its agent before upstream waits (+ one read at most)
POLL_SECONDS = 0.01  # how often a waiting read looks again (the agent's window updates arrive on its own task)

_installed = False


def _layers(root):
    """Every layer under ``root`` (mitmproxy's layer tree of one client connection)."""
    todo, seen = [root], set()
    while todo:
        layer = todo.pop()
        if layer is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        todo.append(getattr(layer, "layer", None))  # NextLayer
        todo.append(getattr(layer, "child_layer", None))
        # a layer that hands every event to a child it keeps no name for (HttpProxy's NextLayer)
        todo.append(getattr(getattr(layer, "__dict__", {}).get("_handle_event"), "__self__", None))
        streams = getattr(layer, "streams", None)
        if isinstance(streams, dict):  # HttpLayer: its streams, whose child layers hold a CONNECT's tunnel
            todo.extend(streams.values())


def buffered(handler, server) -> int | None:
    """Bytes the HTTP/2 stream that ``server`` (a connection to upstream) answers holds for its
    agent, not yet within the agent's flow-control window; None when no such stream is open."""
    from mitmproxy.proxy.layers.http import HttpLayer
    from mitmproxy.proxy.layers.http._http2 import Http2Server

    for layer in _layers(handler.layer):
        if not isinstance(layer, HttpLayer):
            continue
        h2 = layer.connections.get(layer.context.client)
        if not isinstance(h2, Http2Server):
            continue
        for stream_id, stream in list(layer.streams.items()):
            flow = getattr(stream, "flow", None)
            if flow is not None and flow.server_conn is server:
                frames = h2.h2_conn.stream_buffers.get(stream_id)
                return sum(len(f.data) for f in frames) if frames else 0
    return None


def _annotated(cls) -> set[str]:
    return set().union(*(getattr(c, "__annotations__", {}) for c in cls.__mro__))


def _shape_changed() -> str | None:
    try:
        from mitmproxy.proxy.layers.http import HttpLayer, HttpStream
        from mitmproxy.proxy.layers.http._http2 import Http2Server
        from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection
    except ImportError as e:
        return f"layout changed: {e}"
    for cls, fields in ((BufferedH2Connection, {"stream_buffers"}), (HttpLayer, {"streams", "connections"}),
                        (Http2Server, {"h2_conn"}), (HttpStream, {"flow"})):
        if not fields <= _annotated(cls):
            return f"{cls.__name__} changed"
    return None


def _waiting_read(handler, connection, reader) -> None:
    """Make ``reader.read`` wait first while the stream ``connection`` answers holds too much."""
    read = reader.read

    async def read_when_taken(n: int = -1) -> bytes:
        while handler.client.alpn == b"h2":
            try:
                held = buffered(handler, connection)
            except Exception as e:  # noqa: BLE001 - a layer mid-change: read as mitmproxy would
                log.debug("could not see the HTTP/2 stream's buffer: %r", e)
                break
            if held is None or held <= STREAM_BUFFER:
                break
            await asyncio.sleep(POLL_SECONDS)
        return await read(n)

    reader.read = read_when_taken


def _prepare(handler, connection, reader) -> None:
    if connection is not handler.client:  # a connection to upstream
        _waiting_read(handler, connection, reader)


def install() -> bool:
    """Wrap mitmproxy's ``ConnectionHandler.handle_connection`` as described above. True when in place."""
    global _installed
    if _installed:
        return True
    changed = fastpath.wrap_readers(_prepare, _shape_changed)
    if changed is not None:
        log.error("an HTTP/2 agent's slow download may be held whole in memory (mitmproxy's %s)", changed)
        return False
    _installed = True
    return True
