#!/usr/bin/env python3
"""How fast the evidence store writes: records per second the writer sustains, and what waiting
for the commit (durability "sync") adds to each call's latency over queueing only ("async").

For each backend (SQLite in a temporary directory; PostgreSQL started by tests/support/postgres.py,
fsync on) and each durability, W concurrent asyncio writers (default 8) each write N records,
awaiting every write as the recorder does. The writer's sustained rate is measured apart: records
queued all at once, timed until the last is committed. SQLite runs with each ``--sqlite-synchronous``
setting (default both: normal, full).

``--gateway`` measures the same through real gateways instead: for each backend, a sync and an
async gateway side by side (so that both see the same machine at the same moments) in front of a
fast canned upstream (scripts/bench_upstream.py), each with W agents (threads, each on its own
kept-alive tunnel, transport A) calling DynamoDB ListTables; the figure is the p50 of what each
call takes at the agent. Agents pause ``--think`` ms between calls (as agents
do while they think), so that the gateway is not saturated and the difference is the commit's.
Each round runs every variant in turn (their order rotating from round to round, so that none
always goes first on a machine whose load drifts): on SQLite each ``--sqlite-synchronous`` setting;
on PostgreSQL each ``--pg-synchronous-commit`` value, set on the round's databases; and with
``--baseline DIR`` the agentgate code in DIR (a copy of ``addons/`` from another version, run with
PYTHONPATH=DIR and its own defaults) as "before" (several: ``LABEL=DIR,LABEL=DIR``). ``--code DIR``
runs the other variants from DIR too, so that the checkout can change while a long run goes on. The figure per variant is the median
over rounds of (sync p50 - async p50). On PostgreSQL a probe beside the gateways commits one small
INSERT of its own (autocommit, the round's synchronous_commit, as often as one agent calls) through
each round: PostgreSQL's own commit latency on this machine at those moments, which no store's
commit can go below. The store's directory is ``--dir`` (default: a temporary
directory under the current one, on the disk a store would use, not tmpfs); PostgreSQL's data
goes to TMPDIR.

Prints a table; ``--json PATH`` writes the figures.

    .venv/bin/python scripts/bench_store.py --json bench-results/store.json
    .venv/bin/python scripts/bench_store.py --gateway --json bench-results/store-gateway.json
    .venv/bin/python scripts/bench_store.py --gateway --baseline /tmp/before --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import platform
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from addons.core.records import Record  # noqa: E402
from addons.core.store import Store, verify  # noqa: E402
from addons.gateway import GIL_SWITCH_INTERVAL  # noqa: E402


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


def measure(url: str, durability: str, writers: int, per_writer: int, synchronous: str = "normal") -> dict:
    store = Store(url, durability=durability, chain_key=b"bench-chain-key-0123456789", sqlite_synchronous=synchronous)
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


def sustained(url: str, records: int, synchronous: str = "normal") -> dict:
    """Records per second the writer commits when it always has a full queue: ``records`` queued
    at once (durability "async"), timed from the first write until the queue is empty."""
    store = Store(url, durability="async", chain_key=b"bench-chain-key-0123456789", sqlite_synchronous=synchronous)
    store.migrate()
    store.start()
    batch = [sample_record(i % 8, i) for i in range(records)]

    async def queue_all() -> None:
        for r in batch:
            await store.write(r)

    before = dict(store.stats)
    started = time.perf_counter()
    asyncio.run(queue_all())
    queued = time.perf_counter() - started
    while store.queued:
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    commits = store.stats["commits"] - before["commits"]
    store.close()
    return {"records": records, "seconds": round(elapsed, 3), "records_per_second": round(records / elapsed),
            "queueing_us_per_record": round(queued / records * 1e6, 1), "records_per_commit": round(records / max(commits, 1), 1)}


def bench_backend(name: str, url: str, writers: int, per_writer: int, synchronous: str = "normal") -> dict:
    results = {}
    for durability in ("sync", "async"):
        results[durability] = measure(url, durability, writers, per_writer, synchronous)
    results["sustained"] = sustained(url, writers * per_writer, synchronous)
    check = verify(url, b"bench-chain-key-0123456789")
    if not check.ok:
        raise RuntimeError(f"the benchmark's chain does not verify: {check.problems[:3]}")
    return {
        "backend": name,
        "sync": results["sync"],
        "async": results["async"],
        "writer_sustains": results["sustained"],
        "added_p50_ms_sync_over_async": round(results["sync"]["p50_ms"] - results["async"]["p50_ms"], 3),
        "verified_records": check.records,
    }


# -- through the gateway ---------------------------------------------------------------------------


def list_tables_request(token: str) -> tuple[bytes, dict[str, str]]:
    """A DynamoDB ListTables request as an SDK signs it (the gateway re-signs it anyway)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b"{}"
    req = AWSRequest("POST", "https://dynamodb.us-east-1.amazonaws.com/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables"})
    SigV4Auth(Credentials("agentgate", "x"), "dynamodb", "us-east-1").add_auth(req)
    return body, dict(req.headers)


def agents(port: int, ca: Path, tokens: list[str], calls: int, think: float = 0.0, warmup: int = 20) -> list[float]:
    """Each agent in its own thread, on its own tunnel: ``warmup`` calls, then ``calls`` timed
    ones, all agents starting together, each pausing ``think`` seconds on average (0.5-1.5 times,
    at random) after every call. Returns every timed call's seconds."""
    start = threading.Barrier(len(tokens))
    latencies: list[float] = []
    errors: list[str] = []

    def agent(token: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
        conn.set_tunnel("dynamodb.us-east-1.amazonaws.com", 443, headers={
            "Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()})
        body, headers = list_tables_request(token)
        mine = []
        try:
            for i in range(warmup + calls):
                if i == warmup:
                    start.wait()
                t = time.perf_counter()
                conn.request("POST", "/", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                if i >= warmup:
                    mine.append(time.perf_counter() - t)
                if think:
                    time.sleep(think * random.uniform(0.5, 1.5))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
            start.abort()
        finally:
            conn.close()
        latencies.extend(mine)

    threads = [threading.Thread(target=agent, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"agents failed: {errors[:3]}")
    return latencies


def commit_probe(url: str, stop: threading.Event, every: float, out: list[float]) -> None:
    """PostgreSQL's own commit, beside the gateways: one small INSERT in autocommit (a transaction
    of its own, flushed as the database's synchronous_commit says) every ``every`` seconds on
    average, from a client of its own; each one's seconds go to ``out``. What no store can commit
    faster than on this machine at these moments."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS commit_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), "
                      "note text)")
        note = "x" * 200
        for _ in range(5):
            conn.execute("INSERT INTO commit_probe (note) VALUES (%s)", (note,))
        while not stop.wait(every * random.uniform(0.5, 1.5)):
            t = time.perf_counter()
            conn.execute("INSERT INTO commit_probe (note) VALUES (%s)", (note,))
            out.append(time.perf_counter() - t)


def paired_round(issuer, upstream_url: str, tmp: Path, name: str, db: dict[str, str], args, env: dict | None = None,
                 settings: dict | None = None, probe: str | None = None) -> dict:
    """One gateway per durability, both running at once, each with its own ``args.writers`` agents:
    sync and async see the same machine at the same moments. Returns each one's sorted latencies,
    and with ``probe`` (a PostgreSQL database URL) the commit probe's ("probe")."""
    from tests.support.gateway import TEST_POLICY, Gateway

    gateways = {d: Gateway(tmp / f"gw-{name}-{d}", issuer=issuer.issuer, upstream=upstream_url, aws_key=("bench", "bench"),
                           policy=TEST_POLICY, settings={"db": db[d], "durability": d, **(settings or {})}, env=env)
                for d in ("sync", "async")}
    latencies: dict[str, list[float]] = {}
    try:
        for gw in gateways.values():
            gw.start()

        def run(d: str) -> None:
            tokens = [issuer.mint(f"bench-{d}-{i}", expires_in=3600) for i in range(args.writers)]
            latencies[d] = sorted(agents(gateways[d].port, gateways[d].ca_file, tokens, args.calls, args.think / 1000))

        threads = [threading.Thread(target=run, args=(d,)) for d in gateways]
        stop, probed = threading.Event(), []
        if probe:
            prober = threading.Thread(target=commit_probe, args=(probe, stop, args.think / 1000 or 0.025, probed))
            prober.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if probe:
            stop.set()
            prober.join()
            latencies["probe"] = sorted(probed)
    finally:
        for gw in gateways.values():
            gw.stop()
    if not {"sync", "async"} <= set(latencies):
        raise RuntimeError(f"agents failed; gateway logs in {tmp}")
    return latencies


def gateway_variants(args, backend: str) -> list[tuple[str, dict | None, dict, str]]:
    """(label, extra environment, settings, PostgreSQL synchronous_commit) of each variant measured
    on ``backend``."""
    out: list[tuple[str, dict | None, dict, str]] = []
    for i, spec in enumerate(args.baseline.split(",") if args.baseline else []):
        label, _, where = spec.rpartition("=")
        out.append((label or ("before" if i == 0 else f"before-{i}"), {"PYTHONPATH": str(Path(where).resolve())}, {}, "on"))
    if backend == "sqlite":
        out += [(f"synchronous={m}", None, {"sqlite_synchronous": m}, "on") for m in args.sqlite_synchronous.split(",")]
    else:
        out += [(f"synchronous_commit={m}", None, {}, m) for m in args.pg_synchronous_commit.split(",")]
    return out


def pg_database(pg, synchronous_commit: str) -> str:
    """A new database on ``pg`` whose sessions commit with ``synchronous_commit``."""
    import psycopg

    url = pg.create_database()
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = {synchronous_commit}')
    return url


def bench_gateway(args, env: dict | None = None) -> dict:
    from tests.support.oidc import OIDCIssuer

    out: dict = {"agents_per_gateway": args.writers, "calls_per_agent": args.calls, "think_ms": args.think,
                 "store_dir": str(Path(args.dir or ".").resolve()), "postgresql_dir": tempfile.gettempdir(), "results": []}
    base = Path(args.dir).resolve() if args.dir else Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentgate-bench-", dir=base) as d, OIDCIssuer() as issuer:
        tmp = Path(d)
        ready = tmp / "upstream.port"
        upstream = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), "--ready-file", str(ready)],
                                    stdout=subprocess.DEVNULL)
        pg = None
        try:
            for _ in range(200):
                if ready.exists() and ready.read_text():
                    break
                time.sleep(0.05)
            upstream_url = f"http://127.0.0.1:{int(ready.read_text())}"
            for backend in args.backends.split(","):
                backend = backend.strip()
                if backend == "postgresql":
                    from tests.support.postgres import PostgresServer

                    pg = PostgresServer(fsync=True).start()
                variants = gateway_variants(args, backend)
                rows = {label: {"backend": backend, "variant": label, "sync": {"p50_ms": [], "p90_ms": []},
                                "async": {"p50_ms": [], "p90_ms": []}} for label, _, _, _ in variants}
                if pg is not None:
                    for row in rows.values():
                        row["postgresql_commit"] = {"p50_ms": [], "p90_ms": []}
                for rnd in range(args.rounds):
                    for label, extra, settings, commit in variants[rnd % len(variants):] + variants[:rnd % len(variants)]:
                        row = rows[label]
                        db = {dur: pg_database(pg, commit) if pg else f"sqlite:///{tmp / f'{backend}-{label}-{dur}-{rnd}.db'}"
                              for dur in ("sync", "async")}
                        lat = paired_round(issuer, upstream_url, tmp, f"{backend}-{label}-{rnd}".replace("=", "-"), db,
                                           args, {**(env or {}), **(extra or {})} or None, settings,
                                           probe=pg_database(pg, commit) if pg else None)
                        if lat.get("probe"):
                            probed = lat["probe"]
                            row["postgresql_commit"]["p50_ms"].append(round(statistics.median(probed) * 1000, 3))
                            row["postgresql_commit"]["p90_ms"].append(round(probed[int(len(probed) * 0.9)] * 1000, 3))
                        for dur in ("sync", "async"):
                            row[dur]["p50_ms"].append(round(statistics.median(lat[dur]) * 1000, 3))
                            row[dur]["p90_ms"].append(round(lat[dur][int(len(lat[dur]) * 0.9)] * 1000, 3))
                        probed = (f", PostgreSQL's own commit {row['postgresql_commit']['p50_ms'][-1]} ms"
                                  if lat.get("probe") else "")
                        print(f"{backend} {label} round {rnd}: p50 sync {row['sync']['p50_ms'][-1]} ms, "
                              f"async {row['async']['p50_ms'][-1]} ms{probed} (load {os.getloadavg()[0]:.1f})",
                              file=sys.stderr, flush=True)
                for row in rows.values():
                    added = [s - a for s, a in zip(row["sync"]["p50_ms"], row["async"]["p50_ms"])]
                    row["added_p50_ms_sync_over_async"] = [round(x, 3) for x in added]
                    row["added_p50_ms_median"] = round(statistics.median(added), 3)
                    if row.get("postgresql_commit", {}).get("p50_ms"):
                        row["postgresql_commit_p50_ms_median"] = round(statistics.median(row["postgresql_commit"]["p50_ms"]), 3)
                    out["results"].append(row)
                if pg is not None:
                    pg.cleanup()
                    pg = None
        finally:
            upstream.terminate()
            upstream.wait()
            if pg is not None:
                pg.cleanup()
    return out


def print_gateway(out: dict) -> None:
    print(f"{out['agents_per_gateway']} agents on each gateway (sync and async at once), {out['calls_per_agent']} "
          f"calls each, {out['think_ms']} ms between calls, per round")
    for r in out["results"]:
        for d in ("sync", "async"):
            print(f"{r['backend']:<11} {r['variant']:<18} {d:<6} p50 ms {r[d]['p50_ms']}  p90 ms {r[d]['p90_ms']}")
    for r in out["results"]:
        print(f"{r['backend']} {r['variant']}: sync adds {r['added_p50_ms_sync_over_async']} ms to the p50 call "
              f"(median {r['added_p50_ms_median']} ms)")
        if "postgresql_commit_p50_ms_median" in r:
            print(f"{r['backend']} {r['variant']}: PostgreSQL's own commit beside the gateways, p50 "
                  f"{r['postgresql_commit']['p50_ms']} ms (median {r['postgresql_commit_p50_ms_median']} ms): no "
                  f"store commits faster than that here")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=8, help="concurrent writers, or agents with --gateway (default 8)")
    ap.add_argument("--records", type=int, default=1000, help="records per writer (default 1000)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    ap.add_argument("--gateway", action="store_true", help="measure through gateways with agents instead")
    ap.add_argument("--calls", type=int, default=150, help="--gateway: calls per agent (default 150)")
    ap.add_argument("--rounds", type=int, default=3, help="--gateway: rounds, sync and async alternating (default 3)")
    ap.add_argument("--think", type=float, default=200.0,
                    help="--gateway: ms each agent pauses between calls, on average (default 200; 0 saturates the gateway)")
    ap.add_argument("--dir", help="where the stores go (default: a temporary directory in the current one)")
    ap.add_argument("--sqlite-synchronous", default="normal,full",
                    help="comma-separated SQLite settings to measure: normal, full (default both)")
    ap.add_argument("--pg-synchronous-commit", default="on",
                    help="--gateway: comma-separated PostgreSQL synchronous_commit values to measure, set on each "
                         "database (default on, the server's default; off trades what a server crash loses)")
    ap.add_argument("--code", metavar="DIR",
                    help="--gateway: run the gateways from the agentgate code in DIR (a copy of addons/) instead of "
                         "this checkout's")
    ap.add_argument("--baseline", metavar="DIR",
                    help="--gateway: also measure the agentgate code in DIR (a copy of addons/) as \"before\"; "
                         "several as LABEL=DIR,LABEL=DIR")
    ap.add_argument("--switch-interval", type=float, default=GIL_SWITCH_INTERVAL * 1000,
                    help=f"ms, the GIL switch interval of this process (default {GIL_SWITCH_INTERVAL * 1000:g}, "
                         "what the gateway sets)")
    args = ap.parse_args()
    sys.setswitchinterval(args.switch_interval / 1000)

    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "load_average_at_start": round(os.getloadavg()[0], 2), "switch_interval_ms": args.switch_interval}
    if args.gateway:
        out = {**machine, **bench_gateway(args, {"PYTHONPATH": str(Path(args.code).resolve())} if args.code else None)}
        print_gateway(out)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0

    out = {**machine, "results": []}
    base = Path(args.dir).resolve() if args.dir else Path.cwd()
    with tempfile.TemporaryDirectory(prefix="agentgate-bench-", dir=base) as tmp:
        for backend in args.backends.split(","):
            backend = backend.strip()
            if backend == "sqlite":
                for mode in args.sqlite_synchronous.split(","):
                    r = bench_backend("sqlite", f"sqlite:///{tmp}/bench-{mode}.db", args.writers, args.records, mode)
                    out["results"].append({**r, "backend": f"sqlite {mode}"})
            elif backend == "postgresql":
                from tests.support.postgres import PostgresServer

                with PostgresServer(fsync=True) as pg:
                    out["results"].append(bench_backend("postgresql", pg.url, args.writers, args.records))
                    out["postgresql_server"] = str(pg.bindir)
            else:
                ap.error(f"unknown backend {backend!r}")

    header = f"{'backend':<15} {'durability':<10} {'records/s':>10} {'per commit':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{args.writers} concurrent writers, {args.records} records each")
    print(header)
    print("-" * len(header))
    for r in out["results"]:
        for d in ("sync", "async"):
            m = r[d]
            print(f"{r['backend']:<15} {d:<10} {m['records_per_second']:>10} {m['records_per_commit']:>10} "
                  f"{m['p50_ms']:>8} {m['p99_ms']:>8}")
    for r in out["results"]:
        w = r["writer_sustains"]
        print(f"{r['backend']}: the writer sustains {w['records_per_second']} records/s "
              f"({w['records_per_commit']} per commit; queueing costs the caller {w['queueing_us_per_record']} us a record)")
    for r in out["results"]:
        print(f"{r['backend']}: sync adds {r['added_p50_ms_sync_over_async']} ms to the p50 write latency over async")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
