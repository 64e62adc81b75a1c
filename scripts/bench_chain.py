#!/usr/bin/env python3
"""The chain's own cost per call, without mitmproxy's proxy core: the gateway's master and its
add-ons (egress, auth, classify, policy, approval, signer, masking, recorder) driven hook by hook
over in-memory flows, as the proxy server would drive them, for a small DynamoDB GetItem whose
upstream answer is canned. A real OIDC issuer, a canned STS upstream and a real store (SQLite on
disk, durability sync) stand behind it; each record is committed inline, as the gateway does while
up to three agents are connected (``--writer-thread``: by the store's writer thread, as with more). Prints
CPU µs per call (median of rounds) and, with --profile FILE, writes a cProfile of the whole run.
It runs with PYTHONOPTIMIZE=1, as the gateway does (scripts/run), re-executing itself when that is
not set (an explicit PYTHONOPTIMIZE is kept), and reports what the cycle collector freed per call:
objects left in reference cycles, which a call should leave none of.

    .venv/bin/python scripts/bench_chain.py [--calls 2000] [--rounds 5] [--db URL] [--writer-thread] [--profile FILE]
    .venv/bin/python scripts/bench_chain.py --against DIR [--pairs 4] [--per-stage]
    .venv/bin/python scripts/bench_chain.py --instructions [--against DIR --pairs 1]

--instructions runs the same under valgrind's callgrind and counts the machine instructions the
process executes per call in user space (the kernel's work, such as the commit's writes, is not
in it), counters zeroed after the warm-up and read after the last call. A count does not drift
with the machine's speed or with other work: the same code counts the same within about a per
cent, so one run on each side shows a change of a few per cent that CPU times on a shared machine
cannot. It runs about fifty times slower (400 calls by default: about a minute and a half).

--against DIR compares this tree with another checkout of agentgate (``git worktree add DIR REV``):
the two run one after the other, PAIRS times, alternating which goes first, each in a process of
its own with this interpreter; printed are each side's runs, their medians and the ratio. On a
shared machine whose speed drifts by more than a small change saves, only such alternating runs
tell the change from the drift.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mitmproxy import http, options  # noqa: E402
from mitmproxy.proxy.layers.http import (  # noqa: E402
    HttpConnectHook, HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook)
from mitmproxy.test import tflow  # noqa: E402

from tests.support.gateway import TEST_POLICY  # noqa: E402
from tests.support.oidc import OIDCIssuer  # noqa: E402

HOST = "dynamodb.us-east-1.amazonaws.com"
BODY = b'{"TableName": "bench", "Key": {"id": {"S": "1"}}}'
ANSWER = b'{"Item": {"id": {"S": "1"}, "name": {"S": "bench"}}}'
UNDER_CALLGRIND = "AGENTGATE_BENCH_UNDER_CALLGRIND"  # set in the run callgrind watches


def callgrind_control(option: str) -> None:
    """Zero (-z) or dump (-d) this process's callgrind counters, when it runs under callgrind."""
    if os.environ.get(UNDER_CALLGRIND):
        subprocess.run(["callgrind_control", option, str(os.getpid())], check=True, capture_output=True)


def under_callgrind(argv: list[str]) -> int:
    """Run this script with ``argv`` under callgrind; print its figures with the instructions per call."""
    from scripts.bench import callgrind_summary

    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"bench_chain: --instructions needs valgrind's callgrind ({', '.join(missing)} not found; "
              "on Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-chain-cg-") as tmp:
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", sys.executable,
                            str(Path(__file__).resolve()), *argv],
                           env={**os.environ, UNDER_CALLGRIND: "1"}, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"bench_chain: the run under callgrind failed:\n{p.stderr[-2000:]}", file=sys.stderr)
            return 1
        figures = json.loads(p.stdout.strip().splitlines()[-1])
        dump = Path(tmp) / f"cg.{figures.pop('pid')}.1"  # the dump taken after the last call
        total = callgrind_summary(dump)  # what ran between the zeroing and the dump
        if total is None:
            print(f"bench_chain: no instruction count in {dump.name}", file=sys.stderr)
            return 1
    calls = figures["calls"]
    print(json.dumps({"instructions_per_call": round(total / calls), "calls": calls,
                      "note": "user-space instructions under callgrind; CPU times under it are not the machine's",
                      **{k: v for k, v in figures.items() if k not in ("calls",)}}))
    return 0


def agent_request() -> http.Request:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    aws = AWSRequest(method="POST", url=f"https://{HOST}/", data=BODY, headers={
        "X-Amz-Target": "DynamoDB_20120810.GetItem", "Content-Type": "application/x-amz-json-1.0"})
    SigV4Auth(ReadOnlyCredentials("AKIDAGENT", "x", None), "dynamodb", "us-east-1").add_auth(aws)
    headers = [(b"Host", HOST.encode())] + [(k.encode(), v.encode()) for k, v in aws.headers.items()]
    headers.append((b"Content-Length", str(len(BODY)).encode()))
    return http.Request(HOST, 443, b"POST", b"https", b"", b"/", b"HTTP/1.1", http.Headers(headers),
                        BODY, None, time.time(), time.time())


HOOKS = ("http_connect", "requestheaders", "request", "responseheaders", "response", "error")


def _time_hooks(stage, spent: dict[str, float]) -> None:
    """Wrap ``stage``'s hooks to add the loop thread's CPU time they take to ``spent`` (an async
    hook's time is counted up to its first wait and from each resumption)."""
    import functools
    import inspect

    name = type(stage).__name__
    for hook in HOOKS:
        func = getattr(stage, hook, None)
        if func is None:
            continue
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def timed(*a, _f=func):
                coro = _f(*a)
                result = None
                while True:
                    t = time.thread_time()
                    try:
                        waiting = coro.send(result)
                    except StopIteration as stop:
                        spent[name] = spent.get(name, 0.0) + time.thread_time() - t
                        return stop.value
                    spent[name] = spent.get(name, 0.0) + time.thread_time() - t
                    result = await _Yield(waiting)
        else:
            @functools.wraps(func)
            def timed(*a, _f=func):
                t = time.thread_time()
                try:
                    return _f(*a)
                finally:
                    spent[name] = spent.get(name, 0.0) + time.thread_time() - t
        setattr(stage, hook, timed)


class _Yield:
    """Passes what a wrapped coroutine yielded (a future) up to the event loop, and its result back."""

    def __init__(self, value) -> None:
        self.value = value

    def __await__(self):
        return (yield self.value)


async def main(args) -> None:
    from addons import chain
    from addons.core.credentials import CredentialBroker
    from addons.core.identity import TokenValidator
    from addons.core.policy import PolicyStore
    from addons.core.store import Store
    from addons.gateway import GatewayMaster, _warm_up
    from addons.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    ready = tmp / "upstream.port"
    up = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), "--ready-file", str(ready)],
                          stdout=subprocess.DEVNULL)
    issuer = OIDCIssuer()
    issuer.__enter__()
    try:
        while not (ready.exists() and ready.read_text()):
            await asyncio.sleep(0.05)
        upstream = f"http://127.0.0.1:{ready.read_text()}"
        (tmp / "policies").mkdir()
        (tmp / "policies" / "test.yaml").write_text(TEST_POLICY)
        settings = Settings(oidc_issuer=issuer.issuer, upstream=upstream, db=args.db or f"sqlite:///{tmp}/a.db",
                            policies=str(tmp / "policies"), certs=str(tmp / "certs"), keys=str(tmp / "keys"),
                            console_listen="").resolved()
        store = Store(settings.db, durability=args.durability)
        store.migrate()
        store.start()
        # calls come one after another, as from one agent: the gateway then commits each record
        # inline (gateway.InlineCommits); --writer-thread hands every one to the writer thread
        store.commit_inline = not args.writer_thread
        import os
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIABENCH")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "x")
        policies = PolicyStore(settings.policies)
        validator = TokenValidator(settings.oidc_issuer, [settings.oidc_audience])
        broker = CredentialBroker(endpoint_url=upstream)
        _warm_up()
        m = GatewayMaster(options.Options(confdir=settings.certs))
        stages = chain(settings, store=store, policies=policies, validator=validator, broker=broker)
        spent: dict[str, float] = {}
        if args.per_stage:
            for stage in stages:
                _time_hooks(stage, spent)
        m.addons.add(*stages)
        store.store_policy_version(policies.current.version, policies.current.text)
        token = issuer.mint("agent-1", groups=["data-agents"], expires_in=86400)
        proxy_auth = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
        client = tflow.tclient_conn()
        client.tls = True
        client.sni = HOST  # the agent's TLS, inside the tunnel, names the tunnel's host  # the requests arrive inside the CONNECT tunnel, decrypted

        connect = http.HTTPFlow(client, tflow.tserver_conn())
        connect.request = http.Request.make("CONNECT", f"https://{HOST}:443/", b"", {"Proxy-Authorization": proxy_auth})
        connect.request.authority = f"{HOST}:443"
        connect.request.host, connect.request.port = HOST, 443
        await m.addons.handle_lifecycle(HttpConnectHook(connect))
        if connect.response is not None:
            raise SystemExit(f"CONNECT refused: {connect.response.status_code} {connect.response.text}")
        base = agent_request()

        async def one() -> None:
            f = http.HTTPFlow(client, tflow.tserver_conn())
            f.request = base.copy()
            f.request.timestamp_start = time.time()
            await m.addons.handle_lifecycle(HttpRequestHeadersHook(f))
            await m.addons.handle_lifecycle(HttpRequestHook(f))
            if f.response is None:
                f.response = http.Response.make(200, ANSWER, {"Content-Type": "application/x-amz-json-1.0",
                                                              "x-amzn-RequestId": "bench", "x-amz-crc32": "0"})
                await m.addons.handle_lifecycle(HttpResponseHeadersHook(f))
            await m.addons.handle_lifecycle(HttpResponseHook(f))
            if f.response.status_code != 200:
                raise SystemExit(f"the call was refused: {f.response.status_code} {f.response.text[:300]}")

        for _ in range(200):  # warm up: STS, JWKS, caches
            await one()
        from addons.gateway import settle_heap
        settle_heap()  # as the gateway does before it serves: start-up's objects out of the collector's sight
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
        import gc
        gc.collect()  # what the warm-up left
        gc_time = [0.0, 0.0, 0, 0]  # time, start, collections, objects freed

        def on_gc(phase, info):
            if phase == "start":
                gc_time[1] = time.thread_time()
            else:
                gc_time[0] += time.thread_time() - gc_time[1]
                gc_time[2] += 1
                gc_time[3] += info["collected"]

        gc.callbacks.append(on_gc)
        per_call = []
        callgrind_control("-z")
        t_all = time.thread_time()
        for _ in range(args.rounds):
            t0 = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(args.calls):
                await one()
            if profiler:
                profiler.disable()
            per_call.append((time.process_time() - t0) / args.calls * 1e6)
        t_all = time.thread_time() - t_all
        callgrind_control("-d")
        calls = args.calls * args.rounds
        gc_share = gc_time[0] / t_all
        gc_collections = gc_time[2]
        gc.collect()  # what the calls left in reference cycles, were there any, counted below
        gc.callbacks.remove(on_gc)
        if profiler:
            profiler.dump_stats(args.profile)
        print(json.dumps({"cpu_us_per_call_median": round(statistics.median(per_call), 1),
                          "cpu_us_per_call_min": round(min(per_call), 1),
                          "gc_share_of_loop_thread": round(gc_share, 3), "gc_collections": gc_collections,
                          "cyclic_garbage_per_call": round(gc_time[3] / calls, 2), "optimize": sys.flags.optimize,
                          "rounds": [round(x, 1) for x in per_call], "db": settings.db.split(":")[0],
                          "calls": calls, **({"pid": os.getpid()} if os.environ.get(UNDER_CALLGRIND) else {}),
                          "durability": args.durability,
                          **({"stage_us_per_call": {k: round(v / calls * 1e6, 1) for k, v in
                                                   sorted(spent.items(), key=lambda kv: -kv[1])}} if spent else {})}))
        await asyncio.to_thread(store.close)
        await validator.aclose()
    finally:
        up.terminate()
        up.wait()
        issuer.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)  # the store, policies and CA of this run


def against(args) -> int:
    """Run this tree and ``args.against`` alternately; print both sides' figures and their ratio."""
    other = Path(args.against).resolve()
    if not (other / "scripts" / "bench_chain.py").is_file() or not (other / "addons").is_dir():
        print(f"bench_chain: {other} is not an agentgate checkout (no scripts/bench_chain.py and addons/)",
              file=sys.stderr)
        return 2
    trees = {"this": ROOT, "against": other}
    argv = ["--calls", str(args.calls), "--rounds", str(args.rounds), "--durability", args.durability,
            *(["--writer-thread"] if args.writer_thread else []), *(["--instructions"] if args.instructions else []),
            *(["--db", args.db] if args.db else []), *(["--per-stage"] if args.per_stage else [])]
    key, unit = ("instructions_per_call", "instructions/call") if args.instructions else ("cpu_us_per_call_median",
                                                                                        "µs/call")
    runs: dict[str, list[dict]] = {"this": [], "against": []}
    for pair in range(args.pairs):
        for side in (("against", "this") if pair % 2 == 0 else ("this", "against")):
            p = subprocess.run([sys.executable, str(trees[side] / "scripts" / "bench_chain.py"), *argv],
                               cwd=trees[side], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"bench_chain: the run in {trees[side]} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                return 1
            runs[side].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"pair {pair + 1}/{args.pairs} {side}: {runs[side][-1][key]} {unit}", file=sys.stderr, flush=True)

    def summary(side: str) -> dict:
        rs = runs[side]
        out = {"tree": str(trees[side]), key.removesuffix("_median"): [r[key] for r in rs],
               "median": round(statistics.median(r[key] for r in rs), 1)}
        if args.per_stage and not args.instructions:
            stages = sorted({k for r in rs for k in r.get("stage_us_per_call", {})})
            out["stage_medians"] = {k: round(statistics.median(r["stage_us_per_call"].get(k, 0.0) for r in rs), 1)
                                    for k in stages}
        return out

    this, base = summary("this"), summary("against")
    per_pair = [round(a[key] / b[key], 3) for a, b in zip(runs["this"], runs["against"])]
    print(json.dumps({"this": this, "against": base, "ratio_of_medians": round(this["median"] / base["median"], 3),
                      "ratio_per_pair": per_pair}))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=None, help="calls per round (default 2000; --instructions 400)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --instructions 1)")
    ap.add_argument("--db", default="")
    ap.add_argument("--durability", default="sync")
    ap.add_argument("--profile", default="")
    ap.add_argument("--writer-thread", action="store_true",
                    help="commit every record on the store's writer thread (as with several agents), not inline")
    ap.add_argument("--per-stage", action="store_true", help="also report each stage's CPU µs per call")
    ap.add_argument("--against", default="", metavar="DIR",
                    help="compare with another checkout of agentgate, runs alternating (see above)")
    ap.add_argument("--pairs", type=int, default=4, help="with --against: how many runs of each")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per call under valgrind's callgrind instead of timing (see above)")
    parsed = ap.parse_args()
    if not sys.flags.optimize and os.environ.get("PYTHONOPTIMIZE") is None:
        # as the gateway runs (scripts/run): without it mitmproxy type-checks every new message's
        # fields, and the TypeErrors its checks of optional fields raise and catch leave each
        # call's flow in reference cycles, for the collector (88 objects a call, 10 % more CPU)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONOPTIMIZE": "1"})
    if parsed.calls is None:
        parsed.calls = 400 if parsed.instructions else 2000
    if parsed.rounds is None:
        parsed.rounds = 1 if parsed.instructions else 5
    if parsed.against:
        sys.exit(against(parsed))
    if parsed.instructions and not os.environ.get(UNDER_CALLGRIND):
        if parsed.profile or parsed.per_stage:
            ap.error("--instructions counts the whole run: not with --profile or --per-stage")
        sys.exit(under_callgrind(sys.argv[1:]))
    asyncio.run(main(parsed))
