"""The SHA-256 and size of a streamed request body (addons/signer.py BodyDigest), as the record
keeps them: whatever the chunks, the digest of what the agent sent, in order; the body passes
through unchanged."""

from __future__ import annotations

import hashlib
import os
import random

from mitmproxy.test import tflow

from addons import signer
from addons.stage import BODY_DIGEST


def feed(chunks: list[bytes]) -> tuple[dict, list[bytes]]:
    flow = tflow.tflow()
    digest = signer.BodyDigest(flow)
    out = [digest(c) for c in chunks] + [digest(b"")]
    return flow.metadata, out


def test_digest_of_many_chunks_of_every_size_is_the_digest_of_the_body():
    rng = random.Random(7)
    sizes = [rng.choice([1, 17, 4096, 16384, 65536, 200_000, 1 << 20]) for _ in range(60)]
    chunks = [os.urandom(n) for n in sizes]
    md, out = feed(chunks)
    body = b"".join(chunks)
    assert md[BODY_DIGEST] == (hashlib.sha256(body).hexdigest(), len(body))
    assert out[:-1] == chunks and out[-1] == b""  # passed through as they came


def test_small_and_empty_bodies():
    md, _ = feed([b"abc"])
    assert md[BODY_DIGEST] == (hashlib.sha256(b"abc").hexdigest(), 3)
    md, _ = feed([])
    assert md[BODY_DIGEST] == (hashlib.sha256(b"").hexdigest(), 0)


def test_two_bodies_at_once_keep_their_own_digests():
    """Flows interleave on the event loop; each keeps its own digest."""
    a, b = tflow.tflow(), tflow.tflow()
    da, db = signer.BodyDigest(a), signer.BodyDigest(b)
    pa = [os.urandom(100_000) for _ in range(12)]
    pb = [os.urandom(150_000) for _ in range(9)]
    for i in range(12):
        da(pa[i])
        if i < len(pb):
            db(pb[i])
    da(b"")
    db(b"")
    assert a.metadata[BODY_DIGEST][0] == hashlib.sha256(b"".join(pa)).hexdigest()
    assert b.metadata[BODY_DIGEST][0] == hashlib.sha256(b"".join(pb)).hexdigest()
