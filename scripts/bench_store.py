#!/usr/bin/env python3
"""How fast the evidence store writes: records per second the writer sustains, and what waiting
for the commit (durability "sync") adds to each call's latency over queueing only ("async").

For each backend (SQLite in a temporary directory; PostgreSQL started by tests/support/postgres.py,
fsync on) and each durability, W concurrent asyncio writers (default 8) each write N records,
awaiting every write as the recorder does. Prints a table; ``--json PATH`` writes the figures.

    .venv/bin/python scripts/bench_store.py --json bench-results/store.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from addons.core.records import Record  # noqa: E402
from addons.core.store import Store, verify  # noqa: E402


def sample_record(writer: int, i: int) -> Record:
    """A typical S3 read, as the recorder writes it."""
    return Record(
        session_id=f"session-{writer}", principal=f"agent-{writer}@example.com", issuer="https://issuer.example",
        groups=["data-agents"], client="10.0.0.7:51234", service="s3", operation="GetObject", action="s3:GetObject",
        access_level="Read", region="eu-west-1", account="111122223333",
        resources=[f"arn:aws:s3:::bucket/key-{i}"], params={"Bucket": "bucket", "Key": f"reports/{i}.csv"},
        method="GET", host="bucket.s3.eu-west-1.amazonaws.com", url=f"https://bucket.s3.eu-west-1.amazonaws.com/reports/{i}.csv",
        request_headers=[("Host", "bucket.s3.eu-west-1.amazonaws.com"), ("X-Amz-Date", "20260101T000000Z"),
                         ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"), ("User-Agent", "Boto3/1.40")],
        decision="allow", rule="read-only", reason="List and Read are allowed", policy_version="sha256:0123abcd",
        role="arn:aws:iam::111122223333:role/agent-data", outcome="forwarded", status=200,
        aws_request_id="4442587FB7D0A2F9", response_headers=[("Content-Type", "text/csv"), ("Content-Length", "1234")],
        response_body_sha256="ab" * 32, response_body_size=1234, bytes_in=0, bytes_out=1234, latency_ms=23.4,
    )


async def run_writers(store: Store, writers: int, per_writer: int) -> list[float]:
    latencies: list[float] = []

    async def writer(w: int) -> None:
        for i in range(per_writer):
            record = sample_record(w, i)
            t = time.perf_counter()
            await store.write(record)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return latencies


def measure(url: str, durability: str, writers: int, per_writer: int) -> dict:
    store = Store(url, durability=durability, chain_key=b"bench-chain-key-0123456789")
    store.migrate()
    store.start()
    asyncio.run(run_writers(store, writers, 20))  # warm up: connections, statement caches
    before = dict(store.stats)
    started = time.perf_counter()
    latencies = asyncio.run(run_writers(store, writers, per_writer))
    while store.queued:  # async: the records are only queued; count until they are written
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    commits = store.stats["commits"] - before["commits"]
    store.close()
    total = writers * per_writer
    latencies.sort()
    return {
        "durability": durability,
        "writers": writers,
        "records": total,
        "seconds": round(elapsed, 3),
        "records_per_second": round(total / elapsed),
        "commits": commits,
        "records_per_commit": round(total / max(commits, 1), 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }


def bench_backend(name: str, url: str, writers: int, per_writer: int) -> dict:
    results = {}
    for durability in ("sync", "async"):
        results[durability] = measure(url, durability, writers, per_writer)
    check = verify(url, b"bench-chain-key-0123456789")
    assert check.ok, check.problems[:3]
    return {
        "backend": name,
        "sync": results["sync"],
        "async": results["async"],
        "added_p50_ms_sync_over_async": round(results["sync"]["p50_ms"] - results["async"]["p50_ms"], 3),
        "verified_records": check.records,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=8, help="concurrent asyncio writers (default 8)")
    ap.add_argument("--records", type=int, default=1000, help="records per writer (default 1000)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    args = ap.parse_args()

    out = {"python": platform.python_version(), "machine": platform.machine(), "results": []}
    with tempfile.TemporaryDirectory(prefix="agentgate-bench-") as tmp:
        for backend in args.backends.split(","):
            backend = backend.strip()
            if backend == "sqlite":
                out["results"].append(bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.writers, args.records))
            elif backend == "postgresql":
                from tests.support.postgres import PostgresServer

                with PostgresServer(fsync=True) as pg:
                    out["results"].append(bench_backend("postgresql", pg.url, args.writers, args.records))
                    out["postgresql_server"] = str(pg.bindir)
            else:
                ap.error(f"unknown backend {backend!r}")

    header = f"{'backend':<11} {'durability':<10} {'records/s':>10} {'per commit':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{args.writers} concurrent writers, {args.records} records each")
    print(header)
    print("-" * len(header))
    for r in out["results"]:
        for d in ("sync", "async"):
            m = r[d]
            print(f"{r['backend']:<11} {d:<10} {m['records_per_second']:>10} {m['records_per_commit']:>10} "
                  f"{m['p50_ms']:>8} {m['p99_ms']:>8}")
    for r in out["results"]:
        print(f"{r['backend']}: sync adds {r['added_p50_ms_sync_over_async']} ms to the p50 write latency over async")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
