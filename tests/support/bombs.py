"""Compression bombs for the tests: a JSON document of 512 MB, nearly all whitespace, under 1 MB
as sent in each Content-Encoding the gateway inflates."""

from __future__ import annotations

import functools
import zlib


@functools.cache
def bomb(encoding: str) -> bytes:
    """The 512 MB document in ``encoding`` (gzip, zlib, br or zstd). Built a megabyte at a time,
    so the test itself never holds the 512 MB."""
    import brotli
    from backports import zstd

    if encoding == "br":
        c = brotli.Compressor(quality=5)
        feed, end = c.process, c.finish
    elif encoding == "zstd":
        c = zstd.ZstdCompressor()
        feed, end = c.compress, c.flush
    else:
        c = zlib.compressobj(9, wbits={"gzip": 31, "zlib": 15}[encoding])
        feed, end = c.compress, c.flush
    space = b" " * (1 << 20)
    return b"".join([feed(b'{"Items": ['), *(feed(space) for _ in range(512)), feed(b"]}"), end()])
