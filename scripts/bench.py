"""agentgate benchmarks: side by side in one run, on loopback, rounds interleaved, medians reported.

    scripts/bench [--quick] [--json FILE] [--only small,transfer,sts,decide,instructions,phases] [--targets direct,chain,...]

Parts (--only; all by default):
  small     small JSON calls (DynamoDB GetItem, ~50 bytes each way) at 1, 8 and 32 concurrent agents
            from a raw keep-alive load generator (scripts/loadgen.py: one thread per connection,
            CONNECT with the agent's token, TLS through the proxy, the same signed request again
            and again). Requests/s, p50/p99 latency, the proxy's CPU µs per call (utime + stime of
            its whole process tree within the measured window), its peak RSS.
  transfer  a 1 GB S3 upload and download (boto3 put_object / get_object): MB/s and peak RSS.
  sts       1,000 calls by one principal through the full chain: how many STS calls it made.
  decide    classification plus policy decision per call, in process (median and p99 µs).
  instructions  the floor and the chain, each under valgrind's callgrind with 8 agents calling:
            machine instructions per call in user space, in all and by shared object, which do not
            drift with the machine's speed as CPU times do (needs valgrind).
  phases    one agent's call through mitmdump, the floor and the chain, phase by phase: a probe in
            each proxy's event loop (scripts/phase_probe.py) times each socket read and write, and
            the medians of the request path (agent's request read to upstream written), the wait
            for upstream, the response path (upstream's answer read to the agent's written) and the
            agent's turn (answer written to the next request read) are reported: the median over
            cycles (--phase-cycles) in which each proxy in turn has one agent for --phase-duration s.

Targets (--targets; all by default):
  direct    (a) straight to the upstream over TLS, no proxy: the harness's own ceiling.
  mitmdump  (b) stock `mitmdump -q`, with only scripts/bench_retarget.py and
            connection_strategy=lazy (which re-targeting needs: otherwise it would connect to the
            real AWS host at CONNECT); for the transfer part a second one with stream_large_bodies=1m.
  floor     (c) the gateway's own master, on its own event loop, with a no-op add-on that only
            re-targets (scripts/bench_floor.py): mitmproxy's cost, below which no chain can go.
  chain     (d) `agentgate run`, full chain, recording to SQLite, durability sync.
  chain-pg  (e) the same recording to a real PostgreSQL (tests/support/postgres.py, fsync on).
  workers2  (f) the same as (d) with `workers = 2`: two processes on one port. Reported as not
            available when this agentgate cannot run several workers.
  chain-process (g) the same as (d) with `store_writer = "process"`: the store's writer in a
            process of its own instead of a thread of the gateway's process.

The upstream (scripts/bench_upstream.py) is a fast canned stand-in for AWS, not moto (slower than
the gateway): plain HTTP behind the proxies, TLS for `direct`; it also answers the gateway's STS
AssumeRole calls. The floor and the gateways run with PYTHONOPTIMIZE=1 (as scripts/run does);
mitmdump runs as a user runs it, without. Every process started is stopped at the end, also on
Ctrl-C. Figures go to --json FILE (default bench-results/latest.json).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.loadgen import descendants, tree_cpu_seconds, tree_rss_mb  # noqa: E402
from tests.support.gateway import AGENTGATE, TEST_POLICY, Gateway, free_port, wait_port  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent
PARTS = ("small", "transfer", "sts", "decide", "instructions", "phases")
TARGETS = {
    "direct": ("a", "direct to the upstream (TLS)"),
    "mitmdump": ("b", "stock mitmdump -q"),
    "floor": ("c", "floor: GatewayMaster + re-target only"),
    "chain": ("d", "agentgate, full chain, SQLite"),
    "chain-pg": ("e", "agentgate, full chain, PostgreSQL"),
    "workers2": ("f", "agentgate, full chain, SQLite, 2 workers"),
    "chain-process": ("g", "agentgate, full chain, SQLite, writer process"),
}
TRANSFER_TARGETS = ("direct", "mitmdump", "chain", "chain-process")
OPTIMIZED_ENV = {"PYTHONOPTIMIZE": "1"}


class Unavailable(Exception):
    """A target cannot run here; the message says why."""


# ----------------------------------------------------------------------------- Python and machine

def python_build() -> dict:
    """The interpreter every proxy here runs on (this venv's), and whether it is a PGO/LTO build."""
    args = sysconfig.get_config_var("CONFIG_ARGS") or ""
    import mitmproxy.version

    return {
        "executable": PY,
        "base": getattr(sys, "_base_executable", PY),
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pgo": "--enable-optimizations" in args,
        "lto": "--with-lto" in args or "-flto" in args,
        "shared_libpython": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
        "optimised": "--enable-optimizations" in args and ("--with-lto" in args or "-flto" in args),
        "mitmproxy": mitmproxy.version.VERSION,
    }


def optimised_pythons() -> list[str]:
    """PGO/LTO builds of Python >= 3.12 installed here (pyenv, /usr/bin, /usr/local/bin)."""
    import glob

    roots = [os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")]
    found = set(glob.glob(f"{roots[0]}/versions/3.1[2-9]*/bin/python3"))
    for d in ("/usr/bin", "/usr/local/bin"):
        found.update(glob.glob(f"{d}/python3.1[2-9]"))
    probe = ("import sys, sysconfig; a = sysconfig.get_config_var('CONFIG_ARGS') or ''; "
             "sys.exit(0 if sys.version_info >= (3, 12) and '--enable-optimizations' in a and "
             "('--with-lto' in a or '-flto' in a) else 1)")
    out = []
    for exe in sorted(found):
        try:
            if subprocess.run([exe, "-c", probe], capture_output=True, timeout=10).returncode == 0:
                out.append(exe)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return out


def describe_python(py: dict) -> str:
    build = "PGO+LTO" if py["optimised"] else ("PGO" if py["pgo"] else "LTO" if py["lto"] else "no PGO/LTO")
    return f"{py['implementation']} {py['version']} ({build}{', shared libpython' if py['shared_libpython'] else ''})"


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"arch": platform.machine(), "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


# -------------------------------------------------------------------------------------- processes

class Procs:
    """Every process the bench starts, each in its own session (Ctrl-C reaches only the bench,
    which then stops them in order); ``close`` stops them all, their children included."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], *, env: dict | None = None, cwd: Path | None = None,
              log: Path | None = None, stdout=None) -> subprocess.Popen:
        log = log or self.logdir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout or f, stderr=f, start_new_session=True)
        p.name = name
        p.log = log
        self.items.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> None:
        if p in self.items:
            self.items.remove(p)
        tree = [(pid, _starttime(pid)) for pid in descendants(p.pid)] if p.poll() is None else []
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for pid, start in tree:  # children that outlived their parent (workers)
            if pid != p.pid and start is not None and _starttime(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for p in reversed(list(self.items)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                print(f"could not stop {p.name} ({p.pid}): {e}", file=sys.stderr)


def _starttime(pid: int) -> str | None:
    try:
        data = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[19].decode()


class RSSSampler(threading.Thread):
    """The summed resident set size of a process tree every 50 ms; ``peak_mb`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0.0, threading.Event()

    def run(self) -> None:
        pids, refreshed = descendants(self.pid), time.monotonic()
        while not self.stopped.is_set():
            if time.monotonic() - refreshed > 1:
                pids, refreshed = descendants(self.pid), time.monotonic()
            self.peak = max(self.peak, tree_rss_mb(pids))
            time.sleep(0.05)

    def __enter__(self) -> "RSSSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak, 1)


# ---------------------------------------------------------------------------------------- targets

class Proxy:
    """A running proxy: where agents connect, the CA they trust, the process tree to measure."""

    def __init__(self, name: str, port: int, ca: Path, proc: subprocess.Popen, token: str | None = None,
                 db_pid: int | None = None, gateway: Gateway | None = None) -> None:
        self.name, self.port, self.ca, self.proc, self.token = name, port, ca, proc, token
        self.db_pid, self.gateway = db_pid, gateway

    @property
    def pid(self) -> int:
        return self.proc.pid

    def proxy_url(self) -> str:
        return f"http://agent:{self.token}@127.0.0.1:{self.port}" if self.token else f"http://127.0.0.1:{self.port}"


class Lab:
    """Starts what the parts need, once, and stops all of it at the end."""

    def __init__(self, tmp: Path, procs: Procs, issuer) -> None:
        self.tmp, self.procs, self.issuer = tmp, procs, issuer
        self.proxies: dict[str, Proxy] = {}
        self.unavailable: dict[str, str] = {}
        self.pg = None
        self.upstream_proc = None
        self.token = issuer.mint("bench-agent", expires_in=6 * 3600)
        self.commands: dict[str, str] = {}
        self.answered: dict[str, int] = {}  # calls each gateway answered

    # -- the upstream
    def upstream(self) -> tuple[int, int]:
        if self.upstream_proc is None:
            ready = self.tmp / "upstream.ready"
            self.upstream_ca = self.tmp / "upstream-ca.pem"
            self.upstream_proc = self.procs.spawn("upstream", [
                PY, str(ROOT / "scripts" / "bench_upstream.py"), "--tls-port", "0",
                "--tls-ca-out", str(self.upstream_ca), "--ready-file", str(ready)], stdout=subprocess.DEVNULL)
            deadline = time.time() + 20
            while not (ready.exists() and ready.read_text().strip()):
                if self.upstream_proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the bench upstream did not start:\n{self.upstream_proc.log.read_text()[-2000:]}")
                time.sleep(0.05)
            self.upstream_port, self.upstream_tls_port = map(int, ready.read_text().split())
        return self.upstream_port, self.upstream_tls_port

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream()[0]}"

    def upstream_stats(self) -> dict:
        import urllib.request

        return json.load(urllib.request.urlopen(f"{self.upstream_url}/__stats", timeout=10))

    # -- proxies
    def start(self, names: list[str]) -> None:
        """Start the named targets not running yet, side by side; a target that cannot start is
        recorded in ``unavailable`` with the reason."""
        self.upstream()
        pending: list[tuple[str, Proxy]] = []
        gateways = [n for n in names if n.startswith(("chain", "workers")) and n not in self.proxies]
        if "chain-pg" in gateways and self.pg is None:
            try:
                from tests.support.postgres import PostgresServer, PostgresUnavailable

                self.pg = PostgresServer(fsync=True)
                self.pg.start()
            except PostgresUnavailable as e:
                self.unavailable["chain-pg"] = str(e)
                gateways.remove("chain-pg")
        if "workers2" in gateways:
            reason = self.workers_unsupported()
            if reason:
                self.unavailable["workers2"] = reason
                gateways.remove("workers2")
        # agentgate init for each gateway, side by side
        made = {}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for name, fut in [(n, pool.submit(self.init_gateway, n)) for n in gateways]:
                try:
                    made[name] = fut.result()
                except (AssertionError, OSError, subprocess.SubprocessError) as e:
                    self.unavailable[name] = f"agentgate init failed: {e}"
        for name in names:
            if name in self.proxies or name in self.unavailable or name == "direct":
                continue
            if name == "mitmdump":
                pending.append((name, self.spawn_mitmdump("mitmdump")))
            elif name == "mitmdump-stream":
                pending.append((name, self.spawn_mitmdump("mitmdump-stream", stream=True)))
            elif name == "floor":
                pending.append((name, self.spawn_floor()))
            elif name in made:
                pending.append((name, self.spawn_gateway(name, made[name])))
        for name, proxy in pending:
            try:
                wait_port(proxy.port, timeout=60, proc=proxy.proc)
            except (RuntimeError, TimeoutError) as e:
                self.unavailable[name] = f"did not start ({e}); its log ends: {proxy.proc.log.read_text()[-600:]}"
                print(f"{name}: {self.unavailable[name]}", file=sys.stderr, flush=True)
                self.procs.stop(proxy.proc)
                continue
            self.proxies[name] = proxy
        if "workers2" in self.proxies and any(n == "workers2" for n, _ in pending):
            self.check_workers(self.proxies["workers2"], 2)
        for name, proxy in pending:
            if name in self.proxies and proxy.gateway is not None:
                self.settle(proxy)

    @staticmethod
    def settle(proxy: "Proxy", timeout: float = 120.0) -> None:
        """Wait for a gateway's check of its policy version (a child process,
        ``addons.policy.check_findings``) to end: it runs once after start, and what it spends is
        not what calls cost."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            checking = False
            for pid in descendants(proxy.pid):
                with contextlib.suppress(OSError):
                    if b"addons.core.policy import check" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        checking = True
            if not checking:
                return
            time.sleep(0.1)

    def spawn_mitmdump(self, name: str, stream: bool = False, wrap: tuple[str, ...] = ()) -> Proxy:
        port = free_port()
        confdir = self.tmp / name
        argv = [*wrap, str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy",
                "-s", str(ROOT / "scripts" / "bench_retarget.py"), "--set", f"bench_upstream_port={self.upstream()[0]}"]
        if stream:
            argv += ["--set", "stream_large_bodies=1m"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}
        self.commands[name] = " ".join(["mitmdump", *argv[len(wrap) + 1:]]).replace(str(ROOT) + "/", "").replace(str(self.tmp), "$TMP")
        return Proxy(name, port, confdir / "mitmproxy-ca-cert.pem", self.procs.spawn(name, argv, env=env))

    def spawn_floor(self, name: str = "floor", wrap: tuple[str, ...] = (), env: dict | None = None) -> Proxy:
        port = free_port()
        confdir = self.tmp / name
        argv = [*wrap, PY, str(ROOT / "scripts" / "bench_floor.py"), "--listen", f"127.0.0.1:{port}",
                "--upstream-port", str(self.upstream()[0]), "--confdir", str(confdir)]
        if name == "floor":
            self.commands["floor"] = "PYTHONOPTIMIZE=1 python scripts/bench_floor.py ..."
        return Proxy(name, port, confdir / "mitmproxy-ca-cert.pem",
                     self.procs.spawn(name, argv, env={**os.environ, **OPTIMIZED_ENV, **(env or {})}))

    def init_gateway(self, name: str) -> Gateway:
        settings: dict = {"durability": "sync"}
        if name == "chain-pg":
            settings["db"] = self.pg.url
        if name == "workers2":
            settings["workers"] = 2
        if name == "chain-process":
            settings["store_writer"] = "process"
        gw = Gateway(self.tmp / name, issuer=self.issuer.issuer, upstream=self.upstream_url,
                     aws_key=("bench", "bench"), policy=TEST_POLICY, settings=settings, env=dict(OPTIMIZED_ENV))
        gw.init()
        return gw

    def spawn_gateway(self, name: str, gw: Gateway, wrap: tuple[str, ...] = ()) -> Proxy:
        # `agentgate run` as an operator runs it: no -v (which logs every call)
        argv = [*wrap, *([PY] if wrap else []), AGENTGATE, "run", "--listen", f"127.0.0.1:{gw.port}",
                "--upstream", self.upstream_url]
        if not wrap:
            self.commands[name] = "PYTHONOPTIMIZE=1 agentgate run --upstream URL  # agentgate.toml: " + ", ".join(
                f"{k} = {json.dumps(v) if k != 'db' else 'postgresql://…'}" for k, v in gw.settings.items()
                if k != "console_listen")
        proc = self.procs.spawn(name, argv, env=gw.env, cwd=gw.home, log=gw.log_path)
        gw.proc = proc
        db_pid = self.pg_pid() if name == "chain-pg" else None
        return Proxy(name, gw.port, gw.ca_file, proc, token=self.token, db_pid=db_pid, gateway=gw)

    def pg_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.pg.data / "postmaster.pid").read_text().split()[0])
        return None

    @staticmethod
    def workers_unsupported() -> str | None:
        p = subprocess.run([AGENTGATE, "run", "--help"], capture_output=True, text=True, timeout=60)
        if "--workers" not in p.stdout:
            return "this agentgate runs one process only (`agentgate run --help` has no --workers)"
        return None

    def check_workers(self, proxy: Proxy, n: int) -> None:
        """The gateway must really be n processes serving; otherwise the target is not available."""
        deadline = time.time() + 30
        while time.time() < deadline:
            if len(descendants(proxy.pid)) >= n:
                time.sleep(2)  # the last worker may still be starting to listen
                return
            if proxy.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.unavailable[proxy.name] = (f"`workers = {n}` did not give {n} processes (found "
                                        f"{len(descendants(proxy.pid))}); its log ends: {proxy.proc.log.read_text()[-600:]}")
        self.procs.stop(proxy.proc)
        del self.proxies[proxy.name]

    def stop(self, name: str) -> None:
        proxy = self.proxies.pop(name, None)
        if proxy is not None:
            self.procs.stop(proxy.proc)

    def close(self) -> None:
        self.procs.close()
        if self.pg is not None:
            self.pg.cleanup()


# ------------------------------------------------------------------------------------ small calls

def run_loadgen(lab: Lab, name: str, concurrency: int, args) -> dict:
    watch = []
    if name == "direct":
        _, tls_port = lab.upstream()
        where = ["--direct", f"127.0.0.1:{tls_port}", "--ca", str(lab.upstream_ca)]
        proxy = None
    else:
        proxy = lab.proxies[name]
        where = ["--proxy", f"127.0.0.1:{proxy.port}", "--ca", str(proxy.ca), "--token", lab.token]
        watch += ["--watch", f"proxy={proxy.pid}"]
        if proxy.db_pid:
            watch += ["--watch", f"db={proxy.db_pid}"]
    watch += ["--watch", f"upstream={lab.upstream_proc.pid}"]
    argv = [PY, str(ROOT / "scripts" / "loadgen.py"), *where, "-c", str(concurrency),
            "--duration", str(args.duration), "--warmup", str(args.warmup), *watch]
    p = lab.procs.spawn(f"loadgen-{name}-c{concurrency}", argv, stdout=subprocess.PIPE)
    try:
        with contextlib.ExitStack() as stack:
            sampler = stack.enter_context(RSSSampler(proxy.pid)) if proxy else None
            out, _ = p.communicate(timeout=args.warmup + args.duration + 120)
    finally:
        lab.procs.stop(p)
    if p.returncode != 0:
        raise RuntimeError(f"the load generator failed against {name} (c={concurrency}):\n{p.log.read_text()[-3000:]}")
    r = json.loads(out)
    if proxy is not None and proxy.gateway is not None:
        lab.answered[name] = lab.answered.get(name, 0) + r["total_requests"]
    n = r["requests"] or 1
    window = r["window_s"]
    cpu = r["cpu_s"]
    others = r["machine_busy_cpus"] - sum(cpu.values()) / window if r["machine_busy_cpus"] is not None else None
    return {
        "rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "requests": r["requests"],
        "non_2xx": r["requests"] - r["ok"], "errors": r["errors"], "error_sample": r["error_sample"],
        "statuses": r["statuses"], "total_requests": r["total_requests"],
        "cpu_us_per_call": round(cpu["proxy"] / n * 1e6) if "proxy" in cpu else None,
        "db_cpu_us_per_call": round(cpu["db"] / n * 1e6) if "db" in cpu else None,
        "upstream_cpu_us_per_call": round(cpu["upstream"] / n * 1e6),
        "loadgen_cpu_us_per_call": round(cpu["loadgen"] / n * 1e6),
        "loadgen_cpu_pct": round(cpu["loadgen"] / window * 100),
        "proxy_cpu_pct": round(cpu["proxy"] / window * 100) if "proxy" in cpu else None,
        "other_load_cpus": round(max(others, 0.0), 2) if others is not None else None,
        "processes": r["processes"].get("proxy"),
        "peak_rss_mb": sampler.peak_mb if proxy else None,
        **thread_figures(r.get("threads", {}).get("proxy"), n),
    }


THREAD_FIGURES = ("loop_cpu_us_per_call", "threads_cpu_us_per_call", "loop_sleeps_per_call", "threads_sleeps_per_call")


def thread_figures(split: dict | None, calls: int) -> dict:
    """Per call, from loadgen's reading of the proxy's own process: its main thread's CPU (the
    event loop's) and its other threads' (the store's writer among them), and how many times each
    slept and was woken. Each sleep is a wake-up to pay for, which is what made one agent's calls
    dear before the inline commit; None for a proxy not watched."""
    if not split:
        return dict.fromkeys(THREAD_FIGURES)
    return {"loop_cpu_us_per_call": round(split["main_cpu_s"] / calls * 1e6),
            "threads_cpu_us_per_call": round(split["threads_cpu_s"] / calls * 1e6),
            "loop_sleeps_per_call": round(split["main_sleeps"] / calls, 2),
            "threads_sleeps_per_call": round(split["threads_sleeps"] / calls, 2)}


def small(args, lab: Lab) -> list[dict]:
    targets = [t for t in args.targets]
    lab.start(targets)
    targets = [t for t in targets if t not in lab.unavailable]
    runs: dict[tuple[str, int], list[dict]] = {}
    total = args.rounds * len(args.concurrency) * len(targets)
    i = 0
    for rnd in range(args.rounds):
        for c in args.concurrency:
            for name in targets:
                i += 1
                if name in lab.unavailable:
                    continue
                try:
                    r = run_loadgen(lab, name, c, args)
                except RuntimeError as e:  # one target failing does not lose the others' figures
                    lab.unavailable[name] = f"failed at {c} agents: {str(e)[-500:]}"
                    print(f"[{i}/{total}] {name}: {e}", file=sys.stderr, flush=True)
                    continue
                r["round"] = rnd + 1
                runs.setdefault((name, c), []).append(r)
                flag = f"  {r['non_2xx']} non-2xx, {r['errors']} errors {r['error_sample'][:1]}" if r["non_2xx"] or r["errors"] else ""
                print(f"[{i}/{total}] round {rnd + 1} c={c:<2} {name:<9} {r['rps']:>7.1f} req/s  p50 {r['p50_ms']} ms  "
                      f"p99 {r['p99_ms']} ms  cpu {r['cpu_us_per_call']} µs/call  load {r['other_load_cpus']}{flag}",
                      file=sys.stderr, flush=True)
    out = []
    for name in args.targets:
        letter, label = TARGETS[name]
        for c in args.concurrency:
            base = {"part": "small", "id": letter, "name": name, "label": label, "concurrency": c}
            if name in lab.unavailable:
                out.append({**base, "available": False, "reason": lab.unavailable[name]})
                continue
            rs = runs[(name, c)]

            def med(key):
                vals = [r[key] for r in rs if r[key] is not None]
                return round(statistics.median(vals), 3) if vals else None

            out.append({
                **base, "available": True, "rounds": len(rs),
                "rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                "cpu_us_per_call": med("cpu_us_per_call"),
                "peak_rss_mb": max((r["peak_rss_mb"] for r in rs if r["peak_rss_mb"]), default=None),
                "db_cpu_us_per_call": med("db_cpu_us_per_call"),
                "upstream_cpu_us_per_call": med("upstream_cpu_us_per_call"),
                "loadgen_cpu_us_per_call": med("loadgen_cpu_us_per_call"),
                "loadgen_cpu_pct": med("loadgen_cpu_pct"),
                "proxy_cpu_pct": med("proxy_cpu_pct"),
                "other_load_cpus": med("other_load_cpus"),
                **{k: med(k) for k in THREAD_FIGURES},
                "processes": max((r["processes"] or 0) for r in rs) or None,
                "requests": sum(r["requests"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs), "errors": sum(r["errors"] for r in rs),
                "error_sample": next((r["error_sample"] for r in rs if r["error_sample"]), []),
                "per_round": [{k: r[k] for k in ("round", "rps", "p50_ms", "p99_ms", "cpu_us_per_call", "peak_rss_mb",
                                                 "other_load_cpus")} for r in rs],
            })
    if args.pairs:
        out.append({"part": "alternating", "available": True,
                    "figures": alternating_figures(alternate(args, lab), args.pair_duration)})
    return out


# The goals' small-call figures measured again in short slices that alternate between the targets
# compared, so that the two slices of a pair run seconds apart: (figure, target, against, key, agents, how).
ALTERNATING = (
    ("chain_vs_mitmdump_rps_c1", "chain", "mitmdump", "rps", 1, "ratio"),
    ("chain_added_p50_ms_c1", "chain", "mitmdump", "p50_ms", 1, "difference"),
    ("chain_vs_mitmdump_rps_c8", "chain", "mitmdump", "rps", 8, "ratio"),
    ("chain_vs_floor_cpu_c8", "chain", "floor", "cpu_us_per_call", 8, "ratio"),
    ("workers2_vs_chain_rps_c32", "workers2", "chain", "rps", 32, "ratio"),
)


def alternate(args, lab: "Lab") -> dict:
    """``args.pairs`` cycles per agent count of the targets the goals compare, each target once per
    cycle for ``args.pair_duration`` s, the order rotating from cycle to cycle (A B, B A, ...):
    {agents: {target: [slice result per cycle]}}."""
    slices = argparse.Namespace(duration=args.pair_duration, warmup=args.warmup)
    out: dict[int, dict[str, list]] = {}
    for c in sorted({f[4] for f in ALTERNATING} & set(args.concurrency)):
        names = sorted({n for f in ALTERNATING if f[4] == c for n in f[1:3]}, key=list(TARGETS).index)
        names = [n for n in names if n in lab.proxies and n not in lab.unavailable]
        if len(names) < 2:
            continue
        runs = out[c] = {n: [] for n in names}
        for cycle in range(args.pairs):
            for name in names[cycle % len(names):] + names[:cycle % len(names)]:
                try:
                    r = run_loadgen(lab, name, c, slices)
                except RuntimeError as e:
                    print(f"alternating c={c} {name}: {e}", file=sys.stderr, flush=True)
                    r = None
                runs[name].append(r)
            print(f"alternating c={c} cycle {cycle + 1}/{args.pairs}: " + ", ".join(
                f"{n} {runs[n][-1]['rps']:.1f} req/s {runs[n][-1]['cpu_us_per_call']} µs/call"
                for n in names if runs[n][-1] is not None), file=sys.stderr, flush=True)
    return out


def alternating_figures(runs: dict, slice_s: float) -> dict:
    """The figures of ``alternate``'s slices: each cycle's target against what it is compared with
    in the same cycle; the median and every cycle's value."""
    out = {}
    for figure, target, against, key, c, how in ALTERNATING:
        mine, theirs = runs.get(c, {}).get(target), runs.get(c, {}).get(against)
        if not mine or not theirs:
            continue
        pairs = [(a[key], b[key]) for a, b in zip(mine, theirs)
                 if a is not None and b is not None and a.get(key) is not None and b.get(key)]
        if not pairs:
            continue
        values = [round(a / b, 2) if how == "ratio" else round(a - b, 3) for a, b in pairs]
        out[figure] = {"median": round(statistics.median(values), 3), "cycles": values, "slice_s": slice_s}
    return out


# --------------------------------------------------------------------------------------- transfer

TRANSFER_CLIENT = """
import json, os, sys, time, boto3, botocore.config
mode, endpoint, proxy, ca, path, size = sys.argv[1:7]
size = int(size)
kw = dict(region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x")
cfg = botocore.config.Config(proxies={"https": proxy} if proxy != "-" else None, read_timeout=300,
                             s3={"addressing_style": "path"})
s3 = boto3.client("s3", endpoint_url=None if endpoint == "-" else endpoint, verify=ca, config=cfg, **kw)
t = time.time()
with open(path, "rb") as f:
    s3.put_object(Bucket="bench", Key="up", Body=f)
up = time.time() - t
t = time.time()
body = s3.get_object(Bucket="bench", Key=f"big-{size}")["Body"]
n = 0
for chunk in body.iter_chunks(1 << 20):
    n += len(chunk)
down = time.time() - t
if n != size:
    sys.exit(f"downloaded {n} bytes, expected {size}")
print(json.dumps({"up_s": up, "down_s": down}))
"""


def transfer(args, lab: Lab) -> list[dict]:
    size = args.size_mb << 20
    blob = lab.tmp / "blob.bin"
    with open(blob, "wb") as f:
        f.truncate(size)  # sparse: reading it costs no disk
    names = [n for n in TRANSFER_TARGETS if n in args.targets]
    lab.start([("mitmdump-stream" if n == "mitmdump" else n) for n in names])
    names = [n for n in names if n == "direct" or ("mitmdump-stream" if n == "mitmdump" else n) in lab.proxies]
    try:
        targets = {}
        for n in names:
            if n == "direct":
                targets[n] = (f"https://127.0.0.1:{lab.upstream()[1]}", "-", str(lab.upstream_ca), None)
            else:
                proxy = lab.proxies["mitmdump-stream" if n == "mitmdump" else n]
                targets[n] = ("-", proxy.proxy_url(), str(proxy.ca), proxy.pid)
        results: dict[str, list] = {k: [] for k in targets}
        peaks: dict[str, float] = {}
        cpu: dict[str, list[float]] = {k: [] for k in targets}
        idle = {n: round(tree_rss_mb(descendants(t[3])), 1) for n, t in targets.items() if t[3]}
        for rnd in range(args.transfer_rounds):
            for name, (endpoint, proxy_url, ca, pid) in targets.items():
                with contextlib.ExitStack() as stack:
                    sampler = stack.enter_context(RSSSampler(pid)) if pid else None
                    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
                    p = lab.procs.spawn(f"transfer-{name}", [PY, "-c", TRANSFER_CLIENT, name, endpoint, proxy_url, ca,
                                                             str(blob), str(size)], stdout=subprocess.PIPE)
                    try:
                        out, _ = p.communicate(timeout=1800)
                    finally:
                        lab.procs.stop(p)
                    if pid:
                        cpu[name].append(tree_cpu_seconds(pid) - cpu0)
                if sampler:
                    peaks[name] = max(peaks.get(name, 0), sampler.peak_mb)
                if p.returncode != 0:
                    raise RuntimeError(f"{name} transfer failed:\n{p.log.read_text()[-2000:]}")
                r = json.loads(out.decode().strip().splitlines()[-1])
                results[name].append(r)
                if name in lab.proxies and lab.proxies[name].gateway is not None:
                    lab.answered[name] = lab.answered.get(name, 0) + 2
                mb = size / (1 << 20)
                print(f"transfer round {rnd + 1} {name:<9} up {mb / r['up_s']:.1f} MB/s  down {mb / r['down_s']:.1f} MB/s"
                      f"  peak RSS {peaks.get(name)}", file=sys.stderr, flush=True)
    finally:
        lab.stop("mitmdump-stream")
    out = []
    mb = size / (1 << 20)
    for name, runs in results.items():
        letter, label = TARGETS[name]
        if name == "mitmdump":
            label += ", stream_large_bodies=1m"
        out.append({
            "part": "transfer", "id": letter, "name": name, "label": label, "available": True, "size_mb": args.size_mb,
            "rounds": len(runs),
            "upload_mb_s": round(mb / statistics.median(r["up_s"] for r in runs), 1),
            "download_mb_s": round(mb / statistics.median(r["down_s"] for r in runs), 1),
            "idle_rss_mb": idle.get(name),
            "peak_rss_mb": peaks.get(name),
            "cpu_s_per_gb": round(statistics.median(cpu[name]) / (2 * mb / 1024), 2) if cpu[name] else None,
        })
    return out


# ---------------------------------------------------------------------------------------- sts, decide

STS_CLIENT = """
import boto3, botocore.config, sys
proxy, ca, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                 verify=ca, config=botocore.config.Config(proxies={"https": proxy}))
for _ in range(n):
    c.list_tables()
print("done")
"""


def sts(args, lab: Lab) -> list[dict]:
    lab.start(["chain"])
    if "chain" not in lab.proxies:
        return [{"part": "sts", "id": "d", "name": "chain", "available": False, "reason": lab.unavailable.get("chain")}]
    gw = lab.proxies["chain"]
    before = lab.upstream_stats()["sts_calls"]
    token = lab.issuer.mint("sts-bench-agent", expires_in=6 * 3600)
    t = time.time()
    p = lab.procs.spawn("sts-client", [PY, "-c", STS_CLIENT, f"http://agent:{token}@127.0.0.1:{gw.port}",
                                       str(gw.ca), str(args.calls)], stdout=subprocess.PIPE)
    try:
        p.communicate(timeout=1800)
    finally:
        lab.procs.stop(p)
    if p.returncode != 0:
        raise RuntimeError(f"the STS client failed:\n{p.log.read_text()[-2000:]}")
    elapsed = time.time() - t
    lab.answered["chain"] = lab.answered.get("chain", 0) + args.calls
    made = lab.upstream_stats()["sts_calls"] - before
    return [{"part": "sts", "id": "d", "name": "chain", "label": TARGETS["chain"][1], "available": True,
             "calls": args.calls, "sts_calls": made, "sts_calls_per_1000": round(made * 1000 / args.calls, 2),
             "seconds": round(elapsed, 1)}]


INSTRUCTION_TARGETS = ("floor", "chain")
INSTRUCTIONS_AGENTS = 8
IDLE_SETTLE = 3.0  # seconds for the last calls to leave the proxy before its idle work is counted


def instructions(args, lab: Lab) -> list[dict]:
    """Machine instructions per call that the floor and the full chain execute in user space, each
    run under valgrind's callgrind with 8 agents calling: a count that does not move with the
    machine's speed or other work, as CPU times on a shared machine do. Counters are zeroed once
    the proxy is warm and dumped after ``args.instructions_window`` seconds; the calls in between
    are those the upstream answered. Both run with the busy poll off (its polling is counted by the
    time it takes, which is valgrind's here, not the machine's). The kernel's work (socket reads
    and writes, the store's writes to its file) is not in the count."""
    names = [n for n in INSTRUCTION_TARGETS if n in args.targets]
    missing = [t for t in ("valgrind", "callgrind_control") if shutil.which(t) is None]
    if missing:
        reason = f"needs valgrind's callgrind ({', '.join(missing)} not found; on Debian: apt-get install valgrind)"
        for name in names:
            lab.unavailable[f"{name} (instructions)"] = reason
        return [{"part": "instructions", "id": TARGETS[n][0], "name": n, "label": TARGETS[n][1], "available": False,
                 "reason": reason} for n in names]
    return [_count_instructions(args, lab, name) for name in names]


def _wait_ready(proxy: Proxy, target: str, port_timeout: float, ca_timeout: float) -> None:
    """Until ``proxy`` listens and has written its CA (the floor may listen before it has)."""
    wait_port(proxy.port, timeout=port_timeout, proc=proxy.proc)
    deadline = time.time() + ca_timeout
    while not proxy.ca.exists():
        if proxy.proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{target} wrote no CA at {proxy.ca}")
        time.sleep(0.2)


def _count_instructions(args, lab: Lab, name: str) -> dict:
    out_dir = Path(args.callgrind_dir) if args.callgrind_dir else lab.tmp / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = f"{name}-instructions"
    wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/{target}.%p")
    quiet = {"AGENTGATE_BUSY_POLL_US": "0"}
    row = {"part": "instructions", "id": TARGETS[name][0], "name": name, "label": TARGETS[name][1],
           "concurrency": INSTRUCTIONS_AGENTS}
    if name == "floor":
        proxy = lab.spawn_floor(target, wrap=wrap, env=quiet)
    else:
        try:
            gw = lab.init_gateway(target)
        except (AssertionError, OSError, subprocess.SubprocessError) as e:
            lab.unavailable[f"{name} (instructions)"] = f"agentgate init failed: {e}"
            return {**row, "available": False, "reason": f"agentgate init failed: {e}"}
        gw.env.update(quiet)
        proxy = lab.spawn_gateway(target, gw, wrap=wrap)
    loadgen = None
    try:
        _wait_ready(proxy, target, 900, 300)  # valgrind starts a Python program slowly
        loadgen = lab.procs.spawn(f"loadgen-{target}", [
            PY, str(ROOT / "scripts" / "loadgen.py"), "--proxy", f"127.0.0.1:{proxy.port}", "--ca", str(proxy.ca),
            "--token", lab.token, "-c", str(INSTRUCTIONS_AGENTS), "--duration", "36000", "--warmup", "0",
            "--connect-timeout", "600", "--io-timeout", "600"], stdout=subprocess.DEVNULL)
        start = lab.upstream_stats()["requests"]
        deadline = time.time() + 900
        while lab.upstream_stats()["requests"] - start < args.instructions_warmup:
            if loadgen.poll() is not None or proxy.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{target} did not warm up (exit codes: proxy {proxy.proc.poll()}, load generator "
                                   f"{loadgen.poll()}); the load generator's log ends: {loadgen.log.read_text()[-400:]}; "
                                   f"the proxy's: {proxy.proc.log.read_text()[-400:]}")
            time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True, timeout=120)
        before = lab.upstream_stats()["requests"]
        time.sleep(args.instructions_window)
        subprocess.run(["callgrind_control", "-d", "measured", str(proxy.pid)], check=True, capture_output=True,
                       timeout=120)
        calls = lab.upstream_stats()["requests"] - before
        dumps = sorted(out_dir.glob(f"{target}.{proxy.pid}.*"))
        if not dumps or calls <= 0:
            raise RuntimeError(f"no callgrind dump or no calls ({calls}) for {target}")
        total, by_object = callgrind_dump(dumps[-1])
        lines = sum(by_object.values()) or 1
        row.update(available=True, calls=calls, instructions_per_call=round(total / calls),
                   by_object={k: round(v * total / lines / calls) for k, v in by_object.most_common()})
        # What the proxy executes with no call under way (its timers: policy looks, the approvals'
        # poll, housekeeping) runs by the clock, not by the call; under callgrind the proxy serves
        # some fifty times fewer calls per second than on the machine, so that work would weigh
        # fifty times more per call than it does. Counted alone, with the agents gone, and taken off.
        lab.procs.stop(loadgen)
        loadgen = None
        time.sleep(IDLE_SETTLE)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True, timeout=120)
        time.sleep(args.instructions_idle)
        subprocess.run(["callgrind_control", "-d", "idle", str(proxy.pid)], check=True, capture_output=True,
                       timeout=120)
        idle_dumps = sorted(set(out_dir.glob(f"{target}.{proxy.pid}.*")) - set(dumps))
        idle = callgrind_dump(idle_dumps[-1])[0] if idle_dumps else None
        if idle is not None and args.instructions_idle > 0:
            per_second = idle / args.instructions_idle
            row.update(idle_instructions_per_second=round(per_second),
                       instructions_per_call_net=round((total - per_second * args.instructions_window) / calls))
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
        lab.unavailable[f"{name} (instructions)"] = str(e)[:600]
        row.update(available=False, reason=str(e)[:600])
    finally:
        if loadgen is not None:
            lab.procs.stop(loadgen)
        lab.procs.stop(proxy.proc)
    return row


PHASE_TARGETS = ("mitmdump", "floor", "chain")
PHASE_STEPS = ("request_us", "upstream_us", "response_us", "turn_us")


def phases(args, lab: Lab) -> list[dict]:
    """One agent's call, phase by phase, through each of PHASE_TARGETS (see scripts/phase_probe.py):
    the proxies started with the probe and kept running, then ``args.phase_cycles`` cycles in
    which each in turn (the order turning from cycle to cycle, so that the machine's drift hits
    all alike) has one agent calling for ``args.phase_duration`` seconds after a warm-up, the
    probe's events read back and cut into calls. Each phase is the median of the cycles' medians."""
    names = [n for n in PHASE_TARGETS if n in args.targets]
    rows = {n: {"part": "phases", "id": TARGETS[n][0], "name": n, "label": TARGETS[n][1], "concurrency": 1}
            for n in names}
    running: dict[str, tuple[Proxy, Path]] = {}
    cycles: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for name in names:
            try:
                running[name] = _phase_proxy(lab, name)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                _phase_failed(lab, rows[name], e)
        for cycle in range(args.phase_cycles):
            order = [n for n in (names if cycle % 2 == 0 else names[::-1]) if n in running and "reason" not in rows[n]]
            for name in order:
                try:
                    cycles[name].append(_phase_cycle(args, lab, name, *running[name], warm=cycle == 0))
                except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError, ValueError) as e:
                    _phase_failed(lab, rows[name], e)
    finally:
        for proxy, _ in running.values():
            lab.procs.stop(proxy.proc)
    for name, row in rows.items():
        if "reason" in row:
            continue
        found = cycles[name]
        row.update(available=True, calls=sum(c["calls"] for c in found), cycles=found,
                   **{k: round(statistics.median(c[k] for c in found), 1) for k in PHASE_STEPS})
        row["sum_us"] = round(sum(row[k] for k in PHASE_STEPS), 1)
    return list(rows.values())


def _phase_failed(lab: Lab, row: dict, e: BaseException) -> None:
    lab.unavailable[f"{row['name']} (phases)"] = str(e)[:600]
    row.update(available=False, reason=str(e)[:600])


def _phase_proxy(lab: Lab, name: str) -> tuple[Proxy, Path]:
    """``name`` started with the probe (scripts/phase_probe.py), ready for calls; where its probe writes."""
    out = lab.tmp / f"phases-{name}.json"
    wrap = (PY, str(ROOT / "scripts" / "phase_probe.py"), str(out))
    target = f"{name}-phases"
    if name == "mitmdump":
        proxy = lab.spawn_mitmdump(target, wrap=wrap)
    elif name == "floor":
        proxy = lab.spawn_floor(target, wrap=wrap)
    else:
        proxy = lab.spawn_gateway(target, lab.init_gateway(target), wrap=wrap)
    try:
        _wait_ready(proxy, target, 120, 60)
        if proxy.gateway is not None:
            lab.settle(proxy)
    except BaseException:
        lab.procs.stop(proxy.proc)
        raise
    return proxy, out


def _phase_cycle(args, lab: Lab, name: str, proxy: Proxy, out: Path, warm: bool) -> dict:
    """One agent calling ``proxy`` for ``args.phase_duration`` seconds with its probe keeping
    events (after a warm-up, longer the first time): the phases of those calls."""
    from scripts import phase_probe

    loadgen = lab.procs.spawn(f"loadgen-{name}-phases", [
        PY, str(ROOT / "scripts" / "loadgen.py"), "--proxy", f"127.0.0.1:{proxy.port}", "--ca", str(proxy.ca),
        "--token", lab.token, "-c", "1", "--duration", str(args.phase_duration + args.warmup + 5),
        "--warmup", "0"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(args.warmup + 1 if warm else 1)
        os.kill(proxy.pid, phase_probe.SIGNAL)  # keep from now
        time.sleep(args.phase_duration)
        os.kill(proxy.pid, phase_probe.SIGNAL)  # write what was kept
        deadline = time.time() + 30
        while not out.exists():
            if proxy.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name}'s probe wrote nothing to {out}; the proxy's log ends: "
                                   f"{proxy.proc.log.read_text()[-400:]}")
            time.sleep(0.2)
        if loadgen.poll() is not None:
            raise RuntimeError(f"the load generator stopped early against {name}: {loadgen.log.read_text()[-400:]}")
        events = json.loads(out.read_text())
        out.unlink()
    finally:
        lab.procs.stop(loadgen)
    found = phase_probe.phases(events, lab.upstream()[0])
    if found is None:
        raise RuntimeError(f"{name}'s probe saw no whole call")
    return found


def callgrind_dump(path: Path) -> tuple[int, collections.Counter[str]]:
    """A callgrind dump's instructions (Ir): the total it summarises, and by shared object.

    The total is the dump's ``summary:``, what ran between the counters' zeroing and the dump (a
    run of 200 calls and one of 800 give the same per call); the cost lines also hold a fixed
    amount from before the zeroing (the same in both runs), so the objects' shares are read from
    them and scaled to the summary."""
    summary = callgrind_summary(path)
    counts = callgrind_objects(path)
    return (sum(counts.values()) if summary is None else summary), counts


def callgrind_summary(path: Path) -> int | None:
    """The instructions a callgrind dump's ``summary:`` line gives (see ``callgrind_dump``), if any."""
    return next((int(line.split()[1]) for line in path.read_text(errors="replace").splitlines()
                 if line.startswith("summary:")), None)


def callgrind_objects(path: Path) -> collections.Counter[str]:
    """Instructions (Ir) of a callgrind dump's cost lines by the shared object whose code executed
    them (libpython3.12.so, libsqlite3.so, ...): each function's own cost, not what it called."""
    names: dict[str, str] = {}
    obj, skip = "?", False
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2) is not None:
                    names[m.group(1)] = Path(m.group(2)).name
                if line.startswith("ob="):
                    obj = names.get(m.group(1), "?")
        elif line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost, counted where it was spent
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if len(fields) >= 2:
                if skip:
                    skip = False
                else:
                    counts[obj] += int(fields[1])
    return counts


DECIDE_CALLS = [
    ("s3", "get_object", {"Bucket": "b", "Key": "k"}),
    ("dynamodb", "get_item", {"TableName": "t", "Key": {"k": {"S": "v"}}}),
    ("ec2", "describe_instances", {}),
    ("sts", "get_caller_identity", {}),
    ("ec2", "terminate_instances", {"InstanceIds": ["i-0123456789abcdef0"]}),
    ("iam", "create_access_key", {}),
]


def decide(args, lab: Lab | None = None) -> list[dict]:
    """Classification plus decision per call, in process, on requests botocore built (the
    shipped default policies)."""
    from scripts.bench_classify import build

    from addons.core import classifier
    from addons.core.identity import Principal
    from addons.core.policy import PolicySet

    policies = PolicySet.load(ROOT / "policies")
    who = Principal(sub="agent-1", iss="https://issuer.example", aud=("agentgate",), groups=("data-agents",),
                    on_behalf_of=None, exp=time.time() + 3600, claims={"sub": "agent-1", "groups": ["data-agents"]})
    calls = []
    for service, method, params in DECIDE_CALLS:
        req = build(service, method, **params)
        for _ in range(50):  # warm: models loaded, matchers compiled
            policies.evaluate(who, classifier.classify(*req))
        samples = []
        for _ in range(args.decide_rounds):
            t = time.perf_counter()
            call = classifier.classify(*req)
            decision = policies.evaluate(who, call)
            samples.append(time.perf_counter() - t)
        samples.sort()
        calls.append({"action": call.action, "decision": decision.decision,
                      "median_us": round(statistics.median(samples) * 1e6, 1),
                      "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1)})
    return [{"part": "decide", "name": "in-process", "available": True, "rounds": args.decide_rounds, "calls": calls,
             "median_of_medians_us": round(statistics.median(c["median_us"] for c in calls), 1)}]


# ----------------------------------------------------------------------------------- ratios, checks

GOALS = {
    "chain_vs_mitmdump_rps_c1": (">=", 1.0),
    "chain_vs_mitmdump_rps_c8": (">=", 1.0),
    "chain_added_p50_ms_c1": ("<=", 0.0),
    "chain_vs_floor_cpu_c8": ("<=", 1.5),
    "stream_1gb_vs_mitmdump": (">=", 0.8),
    "rss_mb_1gb": ("<", 150.0),
    "workers2_vs_chain_rps_c32": (">=", 1.3),
}


def _scenario(scenarios: list[dict], part: str, name: str, c: int | None = None) -> dict | None:
    """The measured scenario of ``part`` for target ``name`` (at ``c`` agents), if any."""
    for s in scenarios:
        if s["part"] == part and s["name"] == name and s.get("available") and (c is None or s.get("concurrency") == c):
            return s
    return None


def ratios(scenarios: list[dict]) -> tuple[dict, float | None]:
    def get(part, name, key, c=None):
        s = _scenario(scenarios, part, name, c)
        return None if s is None else s.get(key)

    def div(a, b, nd=2):
        return round(a / b, nd) if a is not None and b else None

    r = {
        "chain_vs_mitmdump_rps_c8": div(get("small", "chain", "rps", 8), get("small", "mitmdump", "rps", 8)),
        "chain_vs_mitmdump_rps_c1": div(get("small", "chain", "rps", 1), get("small", "mitmdump", "rps", 1)),
        "chain_vs_floor_cpu_c8": div(get("small", "chain", "cpu_us_per_call", 8), get("small", "floor", "cpu_us_per_call", 8)),
        "chain_added_p50_ms_c1": None,
        "workers2_vs_chain_rps_c32": div(get("small", "workers2", "rps", 32), get("small", "chain", "rps", 32)),
        "stream_1gb_vs_mitmdump": None,
    }
    c1, m1 = get("small", "chain", "p50_ms", 1), get("small", "mitmdump", "p50_ms", 1)
    if c1 is not None and m1 is not None:
        r["chain_added_p50_ms_c1"] = round(c1 - m1, 3)
    up = div(get("transfer", "chain", "upload_mb_s"), get("transfer", "mitmdump", "upload_mb_s"))
    down = div(get("transfer", "chain", "download_mb_s"), get("transfer", "mitmdump", "download_mb_s"))
    if up is not None and down is not None:
        r["stream_1gb_vs_mitmdump"] = min(up, down)  # the worse direction
    # the same figures for the other variants and concurrencies, for reading the table
    r["upload_vs_mitmdump"], r["download_vs_mitmdump"] = up, down
    r["chain_vs_mitmdump_rps_c32"] = div(get("small", "chain", "rps", 32), get("small", "mitmdump", "rps", 32))
    r["chain_pg_vs_mitmdump_rps_c8"] = div(get("small", "chain-pg", "rps", 8), get("small", "mitmdump", "rps", 8))
    r["chain_pg_vs_floor_cpu_c8"] = div(get("small", "chain-pg", "cpu_us_per_call", 8), get("small", "floor", "cpu_us_per_call", 8))
    r["floor_vs_mitmdump_cpu_c8"] = div(get("small", "floor", "cpu_us_per_call", 8), get("small", "mitmdump", "cpu_us_per_call", 8))
    for c in (1, 8):
        r[f"chain_process_vs_mitmdump_rps_c{c}"] = div(get("small", "chain-process", "rps", c), get("small", "mitmdump", "rps", c))
    r["chain_process_vs_floor_cpu_c8"] = div(get("small", "chain-process", "cpu_us_per_call", 8),
                                             get("small", "floor", "cpu_us_per_call", 8))
    r["chain_process_rss_mb_1gb"] = get("transfer", "chain-process", "peak_rss_mb")
    r["chain_vs_floor_instructions_c8"] = div(get("instructions", "chain", "instructions_per_call"),
                                              get("instructions", "floor", "instructions_per_call"))
    r["chain_vs_floor_instructions_net_c8"] = div(get("instructions", "chain", "instructions_per_call_net"),
                                                  get("instructions", "floor", "instructions_per_call_net"))
    return r, get("transfer", "chain", "peak_rss_mb")


# (figure, target, against, key, concurrency, how): each round's target next to what it is compared with
PAIRED = (
    ("chain_vs_mitmdump_rps_c1", "chain", "mitmdump", "rps", 1, "ratio"),
    ("chain_vs_mitmdump_rps_c8", "chain", "mitmdump", "rps", 8, "ratio"),
    ("chain_added_p50_ms_c1", "chain", "mitmdump", "p50_ms", 1, "difference"),
    ("chain_vs_floor_cpu_c8", "chain", "floor", "cpu_us_per_call", 8, "ratio"),
    ("chain_process_vs_mitmdump_rps_c1", "chain-process", "mitmdump", "rps", 1, "ratio"),
    ("chain_process_vs_mitmdump_rps_c8", "chain-process", "mitmdump", "rps", 8, "ratio"),
    ("workers2_vs_chain_rps_c32", "workers2", "chain", "rps", 32, "ratio"),
)


def paired(scenarios: list[dict]) -> dict:
    """The goals' small-call figures round by round: within a round the targets run one after the
    other, so a round's ratio compares them under the same load, and drift between rounds (a shared
    machine's) cancels out. Median and every round's value."""
    def rounds(name, c, key) -> dict:
        s = _scenario(scenarios, "small", name, c)
        return {} if s is None else {r.get("round", i + 1): r.get(key) for i, r in enumerate(s.get("per_round", []))}

    out = {}
    for figure, target, against, key, c, how in PAIRED:
        mine, theirs = rounds(target, c, key), rounds(against, c, key)
        pairs = [(mine[n], theirs[n]) for n in sorted(mine.keys() & theirs.keys())
                 if mine[n] is not None and theirs[n]]
        if not pairs:
            continue
        values = [round(a / b, 2) if how == "ratio" else round(a - b, 3) for a, b in pairs]
        out[figure] = {"median": round(statistics.median(values), 3), "rounds": values}
    return out


def goals(r: dict, rss: float | None) -> dict:
    values = {**r, "rss_mb_1gb": rss}
    out = {}
    for key, (op, target) in GOALS.items():
        v = values.get(key)
        met = None if v is None else (v >= target if op == ">=" else v <= target if op == "<=" else v < target)
        out[key] = {"value": v, "goal": f"{op} {target:g}", "met": met}
    return out


def count_records(lab: Lab, name: str) -> int | None:
    proxy = lab.proxies.get(name)
    if proxy is None or proxy.gateway is None:
        return None
    try:
        if name == "chain-pg":
            import psycopg

            with psycopg.connect(host="127.0.0.1", port=lab.pg.port, user="postgres", dbname=lab.pg.database) as c:
                return c.execute("select count(*) from calls").fetchone()[0]
        import sqlite3

        con = sqlite3.connect(f"file:{proxy.gateway.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("select count(*) from calls").fetchone()[0]
        finally:
            con.close()
    except Exception as e:  # a figure we could not read is reported as missing, not fatal
        print(f"could not count {name}'s records: {e}", file=sys.stderr)
        return None


# ---------------------------------------------------------------------------------------- output

def _small_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["config"]["concurrency"]:
        for s in (s for s in report["scenarios"] if s["part"] == "small" and s["concurrency"] == c):
            name = f"({s['id']}) {s['name']}"
            if not s["available"]:
                rows.append([name, str(c), "n/a", "", "", "", "", "", "", "", ""])
                continue
            cpu = f"{s['cpu_us_per_call']:.0f}" if s["cpu_us_per_call"] is not None else "–"
            if s.get("db_cpu_us_per_call") is not None:
                cpu += f" +{s['db_cpu_us_per_call']:.0f} db"
            rows.append([name, str(c), f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", cpu,
                         f"{s['peak_rss_mb']:.0f}" if s["peak_rss_mb"] else "–",
                         f"{s['upstream_cpu_us_per_call']:.0f}", f"{s['loadgen_cpu_pct']:.0f}",
                         f"{s['other_load_cpus']:.2f}" if s["other_load_cpus"] is not None else "–",
                         str(s["non_2xx"] + s["errors"])])
    return rows


SMALL_COLUMNS = ("scenario", "agents", "req/s", "p50 ms", "p99 ms", "proxy CPU µs/call", "peak RSS MB",
                 "upstream CPU µs/call", "loadgen % of a core", "other load (CPUs)", "errors")


def _thread_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["config"]["concurrency"]:
        for s in report["scenarios"]:
            if (s["part"] != "small" or s["concurrency"] != c or not s["available"]
                    or s.get("loop_cpu_us_per_call") is None):
                continue
            if not s["loop_cpu_us_per_call"] and not s["threads_cpu_us_per_call"]:
                continue  # a supervisor whose workers are its children (workers2): nothing of its own
            rows.append([f"({s['id']}) {s['name']}", str(c), f"{s['loop_cpu_us_per_call']:.0f}",
                         f"{s['threads_cpu_us_per_call']:.0f}", f"{s['loop_sleeps_per_call']:.2f}",
                         f"{s['threads_sleeps_per_call']:.2f}"])
    return rows


THREAD_COLUMNS = ("scenario", "agents", "main thread CPU µs/call", "other threads CPU µs/call",
                  "main thread sleeps/call", "other threads sleeps/call")
THREAD_TITLE = ("The proxy's own process (not its child processes) per call: its main thread (the event loop) "
                "and its other threads (the store's writer among them), CPU and how often each slept and was woken")


def _transfer_rows(report: dict) -> list[list[str]]:
    return [[f"({s['id']}) {s['name']}", f"{s['upload_mb_s']}", f"{s['download_mb_s']}", str(s["idle_rss_mb"] or "–"),
             str(s["peak_rss_mb"] or "–"), str(s["cpu_s_per_gb"] or "–")]
            for s in report["scenarios"] if s["part"] == "transfer"]


TRANSFER_COLUMNS = ("scenario", "upload MB/s", "download MB/s", "idle RSS MB", "peak RSS MB", "proxy CPU s/GB")


def _instruction_rows(report: dict) -> list[list[str]]:
    rows = []
    for s in report["scenarios"]:
        if s["part"] != "instructions" or not s["available"]:
            continue
        per_call = s["instructions_per_call"]
        objects = s["by_object"]
        python = sum(v for k, v in objects.items() if k.startswith("libpython"))
        top = [f"{k} {v / per_call:.0%}" for k, v in objects.items() if not k.startswith("libpython")][:4]
        net = s.get("instructions_per_call_net")
        idle = s.get("idle_instructions_per_second")
        rows.append([f"({s['id']}) {s['name']}", str(s["concurrency"]), str(s["calls"]), f"{per_call / 1e6:.2f} M",
                     "–" if net is None else f"{net / 1e6:.2f} M ({idle / 1e6:.1f} M/s idle)",
                     f"{python / per_call:.0%}", ", ".join(top)])
    return rows


INSTRUCTION_COLUMNS = ("scenario", "agents", "calls counted", "instructions/call", "net of the idle proxy's", "in libpython",
                       "then (share of the instructions)")
INSTRUCTION_TITLE = ("Instructions per call in user space, counted under valgrind's callgrind (busy poll off; "
                     "the kernel's work not counted)")


def _phase_rows(report: dict) -> list[list[str]]:
    return [[f"({s['id']}) {s['name']}", str(s["calls"]), *(f"{s[k]:g}" for k in PHASE_STEPS), f"{s['sum_us']:g}"]
            for s in report["scenarios"] if s["part"] == "phases" and s["available"]]


PHASE_COLUMNS = ("scenario", "calls", "request path µs", "wait for upstream µs", "response path µs", "agent's turn µs",
                 "sum µs")
PHASE_TITLE = ("One agent's call, phase by phase (medians; a probe in the proxy's event loop times each socket read "
               "and write)")


def _paired_rows(report: dict) -> list[list[str]]:
    return [[k, str(v["median"]), ", ".join(str(x) for x in v["rounds"])] for k, v in report["paired"].items()]


def _alternating_rows(report: dict) -> list[list[str]]:
    return [[k, str(v["median"]), ", ".join(str(x) for x in v["cycles"])] for k, v in report["alternating"].items()]


def _header(report: dict) -> list[str]:
    py, m = report["python"], report["machine"]
    lines = [f"{report['date']}, {m['arch']}, {m['cpus']} CPUs ({m['cpu_model']}), load {m['loadavg_start'][0]} at the start "
             f"and {m['loadavg_end'][0]} at the end; Python {describe_python(py)} ({py['base']}), mitmproxy {py['mitmproxy']}."]
    if not py["optimised"]:
        if report["optimised_pythons"]:
            lines.append(f"Not a PGO/LTO build; optimised builds installed here: {', '.join(report['optimised_pythons'])} "
                         "(to use one: rm -rf .venv && AGENTGATE_PYTHON=<path> scripts/bench).")
        else:
            lines.append("Not a PGO/LTO build, and no PGO/LTO build of Python >= 3.12 is installed here.")
    lines.append("The floor and the gateways run with PYTHONOPTIMIZE=1; stock mitmdump runs without it.")
    return lines


def _legend(report: dict) -> list[str]:
    seen = []
    for s in report["scenarios"]:
        if s["part"] in ("small", "transfer") and (s["id"], s["label"]) not in seen:
            seen.append((s["id"], s["label"]))
    lines = [f"({i}) {label}" for i, label in seen]
    for name, why in report.get("unavailable", {}).items():
        lines.append(f"{name}: not available: {why}")
    return lines


def markdown(report: dict) -> str:
    """The tables as Markdown, for the README."""
    out = [" ".join(_header(report)), ""]

    def table(cols, rows):
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out.extend("| " + " | ".join(r) + " |" for r in rows)
        out.append("")

    if any(s["part"] == "small" for s in report["scenarios"]):
        out.append(f"Small JSON calls (DynamoDB GetItem), median of {report['config']['rounds']} round(s) of "
                   f"{report['config']['duration']:g} s:")
        out.append("")
        table(SMALL_COLUMNS, _small_rows(report))
        if _thread_rows(report):
            out.append(THREAD_TITLE + ":")
            out.append("")
            table(THREAD_COLUMNS, _thread_rows(report))
    if any(s["part"] == "transfer" for s in report["scenarios"]):
        size = next(s["size_mb"] for s in report["scenarios"] if s["part"] == "transfer")
        out.append(f"{size} MB S3 object (put_object, get_object):")
        out.append("")
        table(TRANSFER_COLUMNS, _transfer_rows(report))
    if _instruction_rows(report):
        out.append(INSTRUCTION_TITLE + ":")
        out.append("")
        table(INSTRUCTION_COLUMNS, _instruction_rows(report))
        if report["ratios"].get("chain_vs_floor_instructions_c8"):
            out.append(f"Chain against floor, instructions per call: {report['ratios']['chain_vs_floor_instructions_c8']}×"
                       + (f" ({report['ratios']['chain_vs_floor_instructions_net_c8']}× net of the idle proxy's)"
                          if report["ratios"].get("chain_vs_floor_instructions_net_c8") else ""))
            out.append("")
    if _phase_rows(report):
        out.append(PHASE_TITLE + ":")
        out.append("")
        table(PHASE_COLUMNS, _phase_rows(report))
    out.extend(f"- {line}" for line in _legend(report))
    out.append("")
    for s in report["scenarios"]:
        if s["part"] == "sts" and s["available"]:
            out.append(f"JIT credentials: {s['sts_calls']} STS call(s) for {s['calls']} calls by one principal.")
            out.append("")
        if s["part"] == "decide":
            table(("classification plus decision, in process", "decision", "median µs", "p99 µs"),
                  [[c["action"], c["decision"], f"{c['median_us']}", f"{c['p99_us']}"] for c in s["calls"]])
    table(("figure", "value", "goal", "met"),
          [[k, "–" if g["value"] is None else str(g["value"]), g["goal"],
            "–" if g["met"] is None else "yes" if g["met"] else "no"] for k, g in report["goals"].items()])
    if report.get("paired"):
        table(("figure, paired by round", "median", "each round"), _paired_rows(report))
    if report.get("alternating"):
        table(("figure, alternating slices", "median", "each cycle"), _alternating_rows(report))
    return "\n".join(out)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 150)
    con.print("[bold]agentgate bench[/bold]")
    for line in _header(report):
        con.print(line)

    def table(title, cols, rows):
        t = Table(title=title, title_justify="left")
        for col in cols:
            t.add_column(col, justify="left" if col in ("scenario", "figure", "action", "decision") else "right")
        last = None
        for r in rows:
            if cols in (SMALL_COLUMNS, THREAD_COLUMNS) and last is not None and r[1] != last:
                t.add_section()
            last = r[1]
            t.add_row(*r)
        con.print(t)

    if any(s["part"] == "small" for s in report["scenarios"]):
        table(f"Small JSON calls (DynamoDB GetItem), median of {report['config']['rounds']} round(s) of "
              f"{report['config']['duration']:g} s", SMALL_COLUMNS, _small_rows(report))
        if _thread_rows(report):
            table(THREAD_TITLE, THREAD_COLUMNS, _thread_rows(report))
    if any(s["part"] == "transfer" for s in report["scenarios"]):
        size = next(s["size_mb"] for s in report["scenarios"] if s["part"] == "transfer")
        table(f"{size} MB S3 object (put_object, get_object)", TRANSFER_COLUMNS, _transfer_rows(report))
    if _instruction_rows(report):
        table(INSTRUCTION_TITLE, INSTRUCTION_COLUMNS, _instruction_rows(report))
        if report["ratios"].get("chain_vs_floor_instructions_c8"):
            con.print(f"Chain against floor, instructions per call: {report['ratios']['chain_vs_floor_instructions_c8']}×"
                      + (f" ({report['ratios']['chain_vs_floor_instructions_net_c8']}× net of the idle proxy's)"
                         if report["ratios"].get("chain_vs_floor_instructions_net_c8") else ""))
    if _phase_rows(report):
        table(PHASE_TITLE, PHASE_COLUMNS, _phase_rows(report))
    for line in _legend(report):
        con.print(line)
    for s in report["scenarios"]:
        if s["part"] == "sts" and s["available"]:
            con.print(f"JIT credentials: {s['sts_calls']} STS call(s) for {s['calls']} calls by one principal "
                      f"({s['sts_calls_per_1000']} per 1,000)")
        if s["part"] == "decide":
            table("Classification plus decision per call, in process", ("action", "decision", "median µs", "p99 µs"),
                  [[c["action"], c["decision"], f"{c['median_us']}", f"{c['p99_us']}"] for c in s["calls"]])
    table("Ratios and goals", ("figure", "value", "goal", "met"),
          [[k, "–" if g["value"] is None else str(g["value"]), g["goal"],
            "–" if g["met"] is None else "[green]yes[/green]" if g["met"] else "[red]no[/red]"]
           for k, g in report["goals"].items()])
    if report.get("paired"):
        table("The same figures paired by round (a round's targets run back to back)", ("figure", "median", "each round"),
              _paired_rows(report))
    if report.get("alternating"):
        slice_s = next(iter(report["alternating"].values()))["slice_s"]
        table(f"The same figures from short slices alternating between the targets compared ({slice_s:g} s each)",
              ("figure", "median", "each cycle"), _alternating_rows(report))
    for s in report["scenarios"]:
        if s.get("non_2xx") or s.get("errors"):
            con.print(f"[red]({s['id']}) {s['name']} c={s.get('concurrency')}: {s['non_2xx']} non-2xx answers, "
                      f"{s['errors']} errors[/red] {s['error_sample'][:2]}")
    for name, chk in report.get("records", {}).items():
        con.print(f"{name}: {chk['records']} records for {chk['answered']} calls answered"
                  + ("" if chk["ok"] else "  [red]fewer records than calls answered[/red]"))
    if report["machine"]["loadavg_end"][0] > 0.5 + (report["machine"]["cpus"] or 1) / 2:
        con.print(f"[yellow]The machine was busy (load {report['machine']['loadavg_end']} at the end; see 'other load'): "
                  "compare figures within this run only.[/yellow]")


# ------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help=f"parts to run (same as --only): {', '.join(PARTS)}")
    ap.add_argument("--only", default=None, help=f"comma-separated parts: {','.join(PARTS)} (default: all)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated targets (default: {','.join(TARGETS)})")
    ap.add_argument("--quick", action="store_true",
                    help="one round of 2 s per scenario, 64 MB transfers, 100 STS calls (about 2 minutes)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the small calls (default 3; --quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="seconds measured per scenario and round (default 5; --quick 2)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default 1; --quick 0.5)")
    ap.add_argument("--concurrency", default="1,8,32", help="concurrent agents (default 1,8,32)")
    ap.add_argument("--pairs", type=int, default=None,
                    help="after the rounds, cycles of short slices alternating between the targets each small-call "
                         "goal compares (default 8; --quick 2; 0: none)")
    ap.add_argument("--pair-duration", type=float, default=2.0, help="seconds measured per alternating slice (default 2)")
    ap.add_argument("--phase-duration", type=float, default=None,
                    help="seconds one agent's calls are probed per target and cycle for phases (default 5; --quick 3)")
    ap.add_argument("--phase-cycles", type=int, default=None,
                    help="cycles through the targets for phases, the order turning each time (default 3; --quick 1)")
    ap.add_argument("--size-mb", type=int, default=None, help="S3 object size (default 1024; --quick 64)")
    ap.add_argument("--transfer-rounds", type=int, default=None, help="rounds of the transfers (default: --rounds)")
    ap.add_argument("--calls", type=int, default=None, help="calls by one principal for sts (default 1000; --quick 100)")
    ap.add_argument("--decide-rounds", type=int, default=None, help="samples per call for decide (default 5000; --quick 1000)")
    ap.add_argument("--instructions-window", type=float, default=None,
                    help="seconds counted under callgrind per target for instructions (default 60; --quick 20)")
    ap.add_argument("--instructions-warmup", type=int, default=None,
                    help="calls before counting, for instructions (default 200; --quick 100)")
    ap.add_argument("--instructions-idle", type=float, default=None,
                    help="seconds the idle proxy is counted for, after the calls (default 20; --quick 10)")
    ap.add_argument("--callgrind-dir", default=None,
                    help="keep the instruction counts' callgrind dumps here, for callgrind_annotate "
                         "(default: a temporary directory, removed at the end)")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "latest.json"), help="where the figures go")
    args = ap.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.pairs = args.pairs if args.pairs is not None else (2 if q else 8)
    args.duration = args.duration or (2.0 if q else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    args.size_mb = args.size_mb or (64 if q else 1024)
    args.transfer_rounds = args.transfer_rounds or args.rounds
    args.calls = args.calls or (100 if q else 1000)
    args.decide_rounds = args.decide_rounds or (1000 if q else 5000)
    args.phase_duration = args.phase_duration or (3.0 if q else 5.0)
    args.phase_cycles = args.phase_cycles or (1 if q else 3)
    args.instructions_window = args.instructions_window or (20.0 if q else 60.0)
    args.instructions_warmup = args.instructions_warmup or (100 if q else 200)
    args.instructions_idle = args.instructions_idle if args.instructions_idle is not None else (10.0 if q else 20.0)
    parts = [p.strip() for p in (args.only.split(",") if args.only else args.parts or PARTS) if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    args.parts = [p for p in PARTS if p in parts]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown target(s) {', '.join(bad)}; choose from {', '.join(TARGETS)}")
    args.targets = [t for t in TARGETS if t in targets]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        ap.error(f"--concurrency must be comma-separated numbers, not {args.concurrency!r}")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    py = python_build()
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "python": py,
        "optimised_pythons": optimised_pythons(),
        "config": {"quick": args.quick, "parts": args.parts, "targets": args.targets, "rounds": args.rounds,
                   "duration": args.duration, "warmup": args.warmup, "concurrency": args.concurrency,
                   "size_mb": args.size_mb, "transfer_rounds": args.transfer_rounds, "calls": args.calls,
                   "pairs": args.pairs, "pair_duration": args.pair_duration, "phase_duration": args.phase_duration,
                   "phase_cycles": args.phase_cycles,
                   "pythonoptimize": {"mitmdump": False, "floor": True, "gateways": True},
                   "upstream": "scripts/bench_upstream.py: plain HTTP behind the proxies, TLS for direct",
                   "loadgen": "scripts/loadgen.py: one process, one thread per connection, blocking TLS sockets"},
    }
    print(f"Python {describe_python(py)}; parts {', '.join(args.parts)}; targets {', '.join(args.targets)}",
          file=sys.stderr, flush=True)
    scenarios: list[dict] = []
    t0 = time.time()
    from tests.support.oidc import OIDCIssuer

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentgate-bench-")))
        issuer = stack.enter_context(OIDCIssuer())
        procs = Procs(tmp / "logs")
        lab = Lab(tmp, procs, issuer)
        stack.callback(lab.close)
        try:
            # decide first: in process, it is then not disturbed by the proxies this run starts
            for part in sorted(args.parts, key=("decide", "small", "transfer", "sts", "instructions", "phases").index):
                print(f"--- {part}", file=sys.stderr, flush=True)
                scenarios += {"small": small, "transfer": transfer, "sts": sts, "decide": decide,
                              "instructions": instructions, "phases": phases}[part](args, lab)
            # every call a gateway answered (refusals too) must have its record, committed before the answer
            report["records"] = {}
            for name, answered in lab.answered.items():
                n = count_records(lab, name)
                report["records"][name] = {"records": n, "answered": answered, "ok": n is not None and n >= answered}
            report["commands"] = lab.commands
            report["unavailable"] = lab.unavailable
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            return 130
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.time() - t0)
    report["scenarios"] = scenarios
    report["ratios"], report["rss_mb_1gb"] = ratios(scenarios)
    report["goals"] = goals(report["ratios"], report["rss_mb_1gb"])
    report["paired"] = paired(scenarios)
    report["alternating"] = next((s["figures"] for s in scenarios if s["part"] == "alternating"), {})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    md = Path(args.json).with_suffix(".md")
    md.write_text(markdown(report))
    print_report(report)
    print(f"figures written to {args.json} and {md} ({report['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
