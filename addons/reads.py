"""reads: a connection's read takes what has arrived, up to READ_SIZE, instead of 64 KiB at most.

mitmproxy's ConnectionHandler runs a task per connection (``handle_connection``) that reads at most
65,535 bytes at a time, hands each read to the layers (TLS, HTTP, the stream callables of streamed
bodies, the writes to the other side) and waits for the writers to drain: every read is one trip
through all of that, whatever its size. A large upload or download arrives faster than that:
asyncio's transport takes up to 256 KiB per socket read and buffers up to twice its reader's
64 KiB limit before it pauses the socket, so each trip leaves data waiting for the next one.
``install()`` wraps ``handle_connection`` so that each connection's reader hands over what is
buffered, up to READ_SIZE: a read still returns as soon as anything has arrived and never waits for
more, so a small call is read as before, and a large body in fewer, larger pieces (1 GB in about a
quarter of the trips). The flow control is asyncio's as before: the reader's buffer, and so a read,
stays within a few hundred KiB.

``install()`` checks the shape of what it wraps first; if mitmproxy has changed it logs an error
and wraps nothing (reads stay as mitmproxy makes them).
"""

from __future__ import annotations

import asyncio
import logging

from . import fastpath

log = logging.getLogger("agentgate.reads")

READ_SIZE = 1 << 20  # bytes a read may hand over; what is buffered is less (see above)

_installed = False


def _larger_reads(reader: asyncio.StreamReader) -> None:
    """Make ``reader.read(n)`` hand over up to READ_SIZE bytes when asked for fewer."""
    read = reader.read

    def read_more(n: int = -1) -> object:
        return read(READ_SIZE if 0 < n < READ_SIZE else n)

    reader.read = read_more  # this reader only; its other methods as they are


def install() -> bool:
    """Wrap mitmproxy's ``ConnectionHandler.handle_connection`` as described above. True when in place."""
    global _installed
    if _installed:
        return True
    changed = fastpath.wrap_readers(lambda handler, connection, reader: _larger_reads(reader))
    if changed is not None:
        log.error("connections are read 64 KiB at a time (mitmproxy's %s)", changed)
        return False
    _installed = True
    return True
