"""agentgate soak: a bounded run of steady load through a real gateway on loopback, checked against
bounds on memory, file descriptors, errors and lost records.

    scripts/soak                    # 30 minutes, 50 agents, 50 calls/s in all
    scripts/soak --minutes 3        # a short run
    scripts/soak --postgres         # the store on a throwaway PostgreSQL server started for the run
    scripts/soak --db postgresql+psycopg://postgres@127.0.0.1:5432/soak   # on a server of yours

It starts a canned AWS stand-in (scripts/bench_upstream.py), a local OIDC issuer
(tests/support/oidc.py) and a gateway (`agentgate init` and `agentgate run` in a temporary home,
durability "sync", SQLite unless --postgres or --db). Then --agents simulated agents, each with a principal and
token of its own (transport A: the token in the proxy credentials), keep one HTTPS connection
through the proxy open and send DynamoDB GetItem calls on it at a steady pace, --rate calls per
second in all, each call with an item key of its own. A call that fails is counted as an error and
the agent reconnects. The run stops by itself after --minutes.

Every --interval seconds (10) it samples the gateway's resident memory (RSS, its process tree) and
open file descriptors (/proc/<pid>/fd), the responses the agents received, the records in the store
for the agents' principals, errors, and latency; one line each on stdout. At the end the agents
disconnect, the store is given a few seconds to settle, and these bounds are checked:

  rss        RSS at the end at most --rss-growth-mb above RSS at the end of the warm-up (the first
             --warmup seconds; default a fifth of the run, at most 2 minutes)
  fds        after the warm-up, never more than --fd-slack above the warm-up's last sample; after
             the agents disconnect, at most --fd-slack above the idle gateway's count before load
  records    records written for the agents' principals == responses received, for every agent
  errors     no error: every call answered, every answer 200
  rate       at least 90 % of the calls planned were made (the load was steady)

A JSON report (settings, samples, summary, bounds) goes to --out (default
bench-results/soak-<time>.json). Exit status 0 when every bound holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import Gateway  # noqa: E402
from tests.support.oidc import OIDCIssuer  # noqa: E402
from scripts.loadgen import _stat_fields, descendants  # noqa: E402

HOST = "dynamodb.us-east-1.amazonaws.com"
PRINCIPAL_PREFIX = "soak-"
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the gateway process, seen from /proc ------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a gateway with workers has several)."""
    return descendants(pid)


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        if (f := _stat_fields(p)) is not None:
            total += int(f[21]) * PAGE
    return round(total / (1 << 20), 1)


def open_fds(pids: list[int]) -> int:
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def fd_kinds(pids: list[int]) -> dict[str, int]:
    """Open descriptors by kind (socket, pipe, anon_inode:[eventpoll], or the file's path)."""
    kinds: collections.Counter[str] = collections.Counter()
    for p in pids:
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            kinds[target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target] += 1
    return dict(kinds)


# -- the agents --------------------------------------------------------------------------------------


def signed_headers(n: int) -> list[tuple[str, str]]:
    """The headers of a DynamoDB GetItem, SigV4-signed by botocore with a made-up key (the gateway
    strips the agent's signature and signs again with its own credentials)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest("POST", f"https://{HOST}/", data=b"{}", headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "User-Agent": f"agentgate-soak/{n}",
    })
    SigV4Auth(Credentials(f"AKIASOAKAGENT{n:07d}", "soak-agent-secret"), "dynamodb", "us-east-1").add_auth(req)
    return [(k, v) for k, v in req.prepare().headers.items() if k.lower() not in ("host", "content-length")]


def request_bytes(headers: list[tuple[str, str]], item: str) -> bytes:
    body = json.dumps({"TableName": "soak", "Key": {"id": {"S": item}}}).encode()
    lines = ["POST / HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, the server keeps the connection) of one HTTP/1.1 response, its body read."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2) if size else None
            if not size:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
    elif status not in (204, 304):
        await reader.read()  # delimited by the connection's end
        return status, False
    return status, headers.get("connection", "").lower() != "close"


class Stats:
    def __init__(self, agents: int) -> None:
        self.sent = 0
        self.responses = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.per_agent = [0] * agents  # responses received by each agent
        self.latencies: list[float] = []  # since the last sample
        self.late = 0  # calls that started more than one period behind their schedule
        self.connects = 0


class Agent:
    def __init__(self, n: int, sub: str, token: str, proxy: tuple[str, int], ca: ssl.SSLContext,
                 period: float, stats: Stats, timeout: float) -> None:
        self.n, self.sub, self.token, self.proxy, self.ca = n, sub, token, proxy, ca
        self.period, self.stats, self.timeout = period, stats, timeout
        self.headers = signed_headers(n)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.calls = 0  # numbers the item key of each call

    async def connect(self) -> None:
        reader, writer = await asyncio.open_connection(*self.proxy)
        credentials = base64.b64encode(f"agent:{self.token}".encode()).decode()
        writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"
                     f"Proxy-Authorization: Basic {credentials}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            writer.close()
            raise ConnectionError(f"CONNECT answered {status}")
        await writer.start_tls(self.ca, server_hostname=HOST)
        self.reader, self.writer = reader, writer
        self.stats.connects += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def run(self, start: float, stop: float) -> None:
        loop = asyncio.get_running_loop()
        due = start
        while due < stop:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if loop.time() - due > self.period:
                self.stats.late += 1
            self.calls += 1
            self.stats.sent += 1
            began = loop.time()
            try:
                if self.writer is None:
                    await asyncio.wait_for(self.connect(), self.timeout)
                self.writer.write(request_bytes(self.headers, f"{self.sub}-{self.calls}"))
                status, keep = await asyncio.wait_for(read_response(self.reader), self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                self.stats.errors[type(e).__name__] += 1
                self.close()
            else:
                self.stats.responses += 1
                self.stats.per_agent[self.n] += 1
                self.stats.by_status[status] += 1
                self.stats.latencies.append(loop.time() - began)
                if status != 200:
                    self.stats.errors[f"HTTP {status}"] += 1
                if not keep:
                    self.close()
            due += self.period
            if loop.time() - due > 5 * self.period:  # far behind: do not burst to catch up
                due = loop.time()
        self.close()


# -- the store ---------------------------------------------------------------------------------------


class Records:
    """Counts the soak's records in the gateway's store (its own read-only connection)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.engine = create_engine(url, poolclass=NullPool)

    def count(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM calls WHERE principal LIKE :p"),
                             {"p": PRINCIPAL_PREFIX + "%"}).scalar_one()

    def by_principal(self) -> dict[str, tuple[int, int]]:
        """principal -> (records, records with status 200)."""
        from sqlalchemy import text

        with self.engine.connect() as c:
            rows = c.execute(text("SELECT principal, count(*), sum(CASE WHEN status = 200 THEN 1 ELSE 0 END) "
                                  "FROM calls WHERE principal LIKE :p GROUP BY principal"),
                             {"p": PRINCIPAL_PREFIX + "%"}).all()
        return {p: (int(n), int(ok or 0)) for p, n, ok in rows}

    def close(self) -> None:
        self.engine.dispose()


# -- the run -----------------------------------------------------------------------------------------


def start_upstream(tmp: Path) -> tuple[subprocess.Popen, int]:
    ready = tmp / "upstream.port"
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), "--port", "0",
                          "--ready-file", str(ready)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return p, int(ready.read_text().split()[0])
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    raise SystemExit("soak: the canned upstream (scripts/bench_upstream.py) did not start")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def soak(args, gw: Gateway, issuer: OIDCIssuer) -> dict:
    loop = asyncio.get_running_loop()
    ca = ssl.create_default_context(cafile=str(gw.ca_file))
    stats = Stats(args.agents)
    period = args.agents / args.rate
    duration = args.minutes * 60
    expires = int(duration + 900)
    agents = [Agent(n, f"{PRINCIPAL_PREFIX}{n:03d}", issuer.mint(f"{PRINCIPAL_PREFIX}{n:03d}", expires_in=expires),
                    ("127.0.0.1", gw.port), ca, period, stats, args.timeout) for n in range(args.agents)]
    records = Records(gw.db_url)
    # Prime: every agent makes one call and leaves, so that what the gateway keeps open after its
    # first calls (STS and JWKS clients, store connections) is in the idle baseline.
    primer = loop.time()
    await asyncio.gather(*(a.run(primer, primer + 1e-3) for a in agents))
    await asyncio.sleep(3)
    pids = process_tree(gw.proc.pid)
    idle = {"rss_mb": rss_mb(pids), "fds": open_fds(pids), "fd_kinds": fd_kinds(pids)}
    print(f"idle gateway (pid {gw.proc.pid}) after one call per agent: RSS {idle['rss_mb']} MB, "
          f"{idle['fds']} open fds", flush=True)
    print(f"{args.agents} agents, {args.rate:g} calls/s in all (one every {period:.2f} s each), "
          f"{args.minutes:g} min, a sample every {args.interval:g} s", flush=True)
    print(f"{'t (s)':>7} {'RSS MB':>7} {'fds':>5} {'responses':>10} {'records':>9} {'errors':>6} "
          f"{'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}", flush=True)

    start = loop.time() + 0.5
    stop = start + duration
    tasks = [loop.create_task(a.run(start + a.n * period / args.agents, stop)) for a in agents]
    samples: list[dict] = []
    last_responses, last_t = 0, start
    next_sample = start + args.interval
    while True:
        await asyncio.sleep(max(0.0, next_sample - loop.time()))
        now = loop.time()
        pids = process_tree(gw.proc.pid)
        lat, stats.latencies = stats.latencies, []
        sample = {
            "t": round(now - start, 1),
            "rss_mb": rss_mb(pids),
            "fds": open_fds(pids),
            "responses": stats.responses,
            "records": await asyncio.to_thread(records.count),
            "errors": sum(stats.errors.values()),
            "calls_per_s": round((stats.responses - last_responses) / (now - last_t), 1),
            "p50_ms": round(percentile(lat, 0.5) * 1000, 1) if lat else None,
            "p99_ms": round(percentile(lat, 0.99) * 1000, 1) if lat else None,
            "max_ms": round(max(lat) * 1000, 1) if lat else None,
        }
        samples.append(sample)
        last_responses, last_t = stats.responses, now
        print(f"{sample['t']:7.0f} {sample['rss_mb']:7.1f} {sample['fds']:5d} {sample['responses']:10d} "
              f"{sample['records']:9d} {sample['errors']:6d} {sample['calls_per_s']:8.1f} "
              f"{sample['p50_ms'] if sample['p50_ms'] is not None else '-':>7} "
              f"{sample['p99_ms'] if sample['p99_ms'] is not None else '-':>7} "
              f"{sample['max_ms'] if sample['max_ms'] is not None else '-':>7}", flush=True)
        if gw.proc.poll() is not None:
            print(f"soak: the gateway exited with {gw.proc.returncode}", flush=True)
            break
        if now >= stop:
            break
        next_sample += args.interval
    await asyncio.gather(*tasks)  # each agent closes its connection when done

    # settle: the records stop changing, the agents' connections are gone
    settled_at = loop.time() + 10
    count = await asyncio.to_thread(records.count)
    while loop.time() < settled_at:
        await asyncio.sleep(1)
        again = await asyncio.to_thread(records.count)
        if again == count and again >= stats.responses:
            break
        count = again
    await asyncio.sleep(2)
    pids = process_tree(gw.proc.pid)
    after = {"rss_mb": rss_mb(pids), "fds": open_fds(pids), "fd_kinds": fd_kinds(pids)}
    per_principal = await asyncio.to_thread(records.by_principal)
    records.close()

    planned = int(duration / period) * args.agents + args.agents  # and the priming calls
    return {"idle": idle, "after": after, "samples": samples, "stats": stats, "agents": agents,
            "records": count, "per_principal": per_principal, "planned": planned, "period": period}


def judge(args, run: dict) -> dict:
    samples, stats = run["samples"], run["stats"]
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 5)
    after_warmup = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    base = after_warmup[0]
    end_rss = statistics.median(s["rss_mb"] for s in samples[-3:])
    growth = round(end_rss - base["rss_mb"], 1)
    fd_peak = max(s["fds"] for s in after_warmup)
    mismatched = {a.sub: (stats.per_agent[a.n], run["per_principal"].get(a.sub, (0, 0))[0])
                  for a in run["agents"] if run["per_principal"].get(a.sub, (0, 0))[0] != stats.per_agent[a.n]}
    errors = dict(stats.errors)
    made = stats.sent
    bounds = {
        "rss": {"ok": growth <= args.rss_growth_mb,
                "says": f"RSS {base['rss_mb']} MB after the warm-up ({warmup:g} s), {end_rss} MB at the end: "
                        f"{growth:+.1f} MB (bound {args.rss_growth_mb:g} MB)"},
        "fds": {"ok": fd_peak - base["fds"] <= args.fd_slack and run["after"]["fds"] - run["idle"]["fds"] <= args.fd_slack,
                "says": f"{base['fds']} after the warm-up, at most {fd_peak} during the run; {run['idle']['fds']} idle "
                        f"before the load, {run['after']['fds']} after the agents left (bound +{args.fd_slack})"},
        "records": {"ok": run["records"] == stats.responses and not mismatched,
                    "says": f"{run['records']} records for {stats.responses} responses received"
                            + (f"; agents whose counts differ (responses, records): {mismatched}" if mismatched else "")},
        "errors": {"ok": not errors, "says": f"{sum(errors.values())} errors {errors or ''}".rstrip()},
        "rate": {"ok": made >= 0.9 * run["planned"],
                 "says": f"{made} calls made of {run['planned']} planned ({stats.late} started late), "
                         f"{stats.responses / duration:.1f} answered per second"},
    }
    return {"warmup_s": warmup, "rss_growth_mb": growth, "fd_peak": fd_peak, "bounds": bounds,
            "ok": all(b["ok"] for b in bounds.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the load runs (default 30)")
    ap.add_argument("--agents", type=int, default=50, help="simulated agents, one connection each (default 50)")
    ap.add_argument("--rate", type=float, default=50.0, help="calls per second, all agents together (default 50)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the memory and fd baselines are taken (default a fifth of the run, at most 120)")
    ap.add_argument("--rss-growth-mb", type=float, default=16.0, help="bound on RSS growth after the warm-up (default 16)")
    ap.add_argument("--fd-slack", type=int, default=8, help="bound on open fds above their baseline (default 8)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds an agent waits for an answer (default 30)")
    ap.add_argument("--db", default=None, help="the store's URL (default: SQLite in the temporary home)")
    ap.add_argument("--postgres", action="store_true",
                    help="run the store on a throwaway PostgreSQL server (initdb and pg_ctl must be installed)")
    ap.add_argument("--durability", choices=["sync", "async"], default="sync")
    ap.add_argument("--out", default=None, help="the JSON report (default bench-results/soak-<time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home (store, log) for inspection")
    args = ap.parse_args()
    for name in ("minutes", "rate", "interval"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name} must be above 0")
    if args.agents < 1:
        ap.error("--agents must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="agentgate-soak-"))
    out = Path(args.out) if args.out else ROOT / "bench-results" / f"soak-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    if args.postgres and args.db:
        ap.error("--postgres and --db: choose one")
    pg = None
    if args.postgres:
        from tests.support.postgres import PostgresServer, PostgresUnavailable

        try:
            pg = PostgresServer().start()
        except PostgresUnavailable as e:
            raise SystemExit(f"soak: {e}") from None
    upstream, port = start_upstream(tmp)
    issuer = OIDCIssuer().start()
    db = pg.url if pg else args.db or f"sqlite:///{tmp / 'gw' / 'agentgate.db'}"
    gw = Gateway(tmp / "gw", issuer=issuer.issuer, upstream=f"http://127.0.0.1:{port}",
                 aws_key=("AKIASOAKGATEWAY00000", "soak-gateway-secret"),
                 settings={"db": db, "durability": args.durability})
    gw.db_url = db
    try:
        gw.start()
        run = asyncio.run(soak(args, gw, issuer))
        verdict = judge(args, run)
    finally:
        gw.stop()
        upstream.terminate()
        upstream.wait()
        issuer.stop()
        if pg is not None:
            pg.cleanup()
    stats = run["stats"]
    report = {
        "settings": {**vars(args), "db": db.split("@")[-1] if pg else db},
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "idle": run["idle"], "after": run["after"], "samples": run["samples"],
        "totals": {"calls": stats.sent, "responses": stats.responses, "by_status": dict(stats.by_status),
                   "errors": dict(stats.errors), "records": run["records"], "connects": stats.connects,
                   "late": stats.late},
        **verdict,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    for name, b in verdict["bounds"].items():
        print(f"{'PASS' if b['ok'] else 'FAIL'}  {name:8} {b['says']}")
    print(f"\nreport: {out}" + (f"\nhome kept: {tmp}" if args.keep else ""))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if verdict["ok"] else 1)


if __name__ == "__main__":
    main()
