"""A raw keep-alive load generator for the benchmarks: small AWS JSON calls, not boto3, so that the
client is not what is measured.

N connections run at once, one thread each, blocking sockets. Through a proxy each one sends CONNECT (with the agent's token as the
proxy password, transport A), then TLS trusting the proxy's CA; direct, it opens TLS straight to
the upstream. Then it sends one pre-built request over and over on that connection: a DynamoDB
GetItem, signed once with botocore and an arbitrary key (a gateway strips and re-signs it). Every
connection is set up before the warm-up starts; the warm-up is not measured; the figures cover
the requests that completed within the measured window.

    python scripts/loadgen.py --proxy 127.0.0.1:8080 --token JWT --ca CA.pem -c 8 --duration 5
    python scripts/loadgen.py --direct 127.0.0.1:8443 --ca upstream-ca.pem -c 8 --duration 5

``--watch NAME=PID`` (repeatable) adds the CPU seconds that PID and its descendants used within
the window, read from /proc/<pid>/stat (utime + stime), to the result; and, for PID itself, how
that splits between its main thread (a proxy's event loop) and its other threads, and how many
times each slept and was woken (voluntary context switches, /proc/<pid>/task/*/status). One JSON object is printed
on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time

HOST = "dynamodb.us-east-1.amazonaws.com"
BODY = b'{"TableName": "bench", "Key": {"id": {"S": "1"}}}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------- /proc readings

def _stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/<pid>/stat (of its thread ``tid``: /proc/<pid>/task/<tid>/stat) after the
    command name (state is [0], ppid [1])."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_ticks(pids: list[int]) -> dict[tuple[int, str], int]:
    """utime + stime (clock ticks) of each live process, keyed by (pid, start time)."""
    out = {}
    for p in pids:
        f = _stat_fields(p)
        if f is not None:
            out[(p, f[19])] = int(f[11]) + int(f[12])
    return out


def thread_readings(pid: int) -> dict:
    """Process ``pid``'s CPU clock ticks (utime + stime: its live threads' and its ended threads'),
    and, per live thread keyed by (thread id, start time): whether it is the main thread, its
    ticks, and how many times it slept and was woken (voluntary context switches)."""
    out: dict = {"process": 0, "threads": {}}
    f = _stat_fields(pid)
    if f is None:
        return out
    out["process"] = int(f[11]) + int(f[12])
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for name in tids:
        tid = int(name)
        fields = _stat_fields(pid, tid)
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        if fields is None:
            continue
        i = status.find(b"\nvoluntary_ctxt_switches:")
        sleeps = int(status[i + 25:status.index(b"\n", i + 1)]) if i >= 0 else 0
        out["threads"][(tid, fields[19])] = (tid == pid, int(fields[11]) + int(fields[12]), sleeps)
    return out


def thread_split(before: dict, after: dict) -> dict[str, float]:
    """Between two ``thread_readings``: the CPU seconds of the main thread and of all the others
    (the process's, less the main thread's), and how many times each slept (the others: those
    alive at the end; a thread new since ``before`` counts from 0)."""
    main_ticks = main_sleeps = threads_sleeps = 0
    for key, (main, ticks, sleeps) in after["threads"].items():
        _, ticks0, sleeps0 = before["threads"].get(key, (main, 0, 0))
        if main:
            main_ticks, main_sleeps = ticks - ticks0, sleeps - sleeps0
        else:
            threads_sleeps += sleeps - sleeps0
    process = after["process"] - before["process"]
    return {"main_cpu_s": round(main_ticks / CLK_TCK, 3), "threads_cpu_s": round((process - main_ticks) / CLK_TCK, 3),
            "main_sleeps": main_sleeps, "threads_sleeps": threads_sleeps}


def cpu_seconds_between(before: dict, after: dict) -> float:
    """CPU seconds used between two ``cpu_ticks`` readings (a process new in ``after`` counts from 0)."""
    return sum(t - before.get(k, 0) for k, t in after.items()) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds a process tree has used since it started (utime + stime of each live process)."""
    return sum(cpu_ticks(descendants(pid)).values()) / CLK_TCK


def tree_rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        f = _stat_fields(p)
        if f is not None:
            total += int(f[21]) * PAGE
    return total / (1 << 20)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total


# ---------------------------------------------------------------------------------- the request

def build_request(host: str = HOST, region: str = "us-east-1") -> bytes:
    """DynamoDB GetItem as one HTTP/1.1 request, SigV4-signed by botocore with a made-up key."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest("POST", f"https://{host}/", data=BODY, headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "User-Agent": "agentgate-loadgen",
    })
    SigV4Auth(Credentials("AKIABENCHLOADGEN0000", "bench-loadgen-secret"), "dynamodb", region).add_auth(req)
    headers = [(k, v) for k, v in req.prepare().headers.items() if k.lower() not in ("host", "content-length")]
    lines = ["POST / HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers),
             "Accept-Encoding: identity", f"Content-Length: {len(BODY)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


def parse_response(buf: bytearray, connect: bool = False) -> tuple[int, int] | None:
    """(status, bytes used) of the first complete response in ``buf``, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    status = int(buf[9:12])
    head = bytes(buf[:end]).lower()
    start = end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17:j if j >= 0 else len(head)])
        return (status, start + length) if len(buf) >= start + length else None
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                if buf[eol + 2:eol + 4] == b"\r\n":
                    return status, eol + 4
                return (status, trailer_end + 4) if trailer_end >= 0 else None
            pos = eol + 2 + size + 2
            if len(buf) < pos:
                return None
    if connect or status in (204, 304) or 100 <= status < 200:
        return status, start
    raise ConnectionError(f"a response without a length (status {status}) is not supported")


class Agent(threading.Thread):
    """One connection, one thread: blocking sockets, the request sent again as soon as the answer
    is in (the ssl module does TLS in C with the GIL released, cheaper per call than asyncio's)."""

    def __init__(self, run: "Run") -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.total = 0
        self.connected = threading.Event()

    def open(self) -> ssl.SSLSocket:
        a = self.run_.args
        if a.direct:
            host, port = a.direct.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=a.io_timeout)
        else:
            host, port = a.proxy.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=a.io_timeout)
            lines = [f"CONNECT {a.host}:443 HTTP/1.1", f"Host: {a.host}:443"]
            if a.token:
                lines.append("Proxy-Authorization: Basic " + base64.b64encode(f"agent:{a.token}".encode()).decode())
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            buf = bytearray()
            try:
                while (got := parse_response(buf, connect=True)) is None:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the proxy closed the connection after CONNECT")
                    buf += data
            except BaseException:
                sock.close()
                raise
            if got[0] != 200:
                sock.close()
                self.run_.fatal = f"CONNECT answered {got[0]}: {bytes(buf[:300])!r}"
                raise ConnectionError(self.run_.fatal)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self.run_.ctx.wrap_socket(sock, server_hostname=a.host)
        except BaseException:
            sock.close()
            raise

    def run(self) -> None:
        r = self.run_
        request, perf = r.request, time.perf_counter
        while not r.stop:
            try:
                sock = self.open()
            except (OSError, ConnectionError) as e:
                self.errors.append(f"connect: {e!r}")
                if r.fatal:
                    return
                time.sleep(0.2)
                continue
            self.connected.set()
            buf = bytearray()
            try:
                while not r.stop:
                    t0 = perf()
                    sock.sendall(request)
                    while (got := parse_response(buf)) is None:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("the server closed the connection")
                        buf += data
                    t1 = perf()
                    del buf[:got[1]]
                    self.total += 1
                    if r.window[0] <= t1 <= r.window[1]:
                        self.latencies.append(t1 - t0)
                        self.statuses[got[0]] = self.statuses.get(got[0], 0) + 1
            except (OSError, ValueError, ConnectionError) as e:
                if not r.stop:
                    self.errors.append(f"request: {e!r}")
            finally:
                sock.close()


class Run:
    def __init__(self, args, request: bytes) -> None:
        self.args = args
        self.request = request
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self.stop = False
        self.fatal: str | None = None
        self.ctx = ssl.create_default_context(cafile=args.ca)
        self.ctx.set_alpn_protocols(["http/1.1"])

    def main(self) -> dict:
        a = self.args
        watch = {name: int(pid) for name, pid in (w.split("=", 1) for w in a.watch)}
        agents = [Agent(self) for _ in range(a.concurrency)]
        for agent in agents:
            agent.start()
        deadline = time.perf_counter() + a.connect_timeout
        while not all(agent.connected.is_set() for agent in agents):
            if self.fatal or time.perf_counter() > deadline:
                self.stop = True
                errors = [e for agent in agents for e in agent.errors]
                up = sum(agent.connected.is_set() for agent in agents)
                raise SystemExit(f"loadgen: only {up} of {a.concurrency} connections were set up: "
                                 f"{self.fatal or (errors[-1] if errors else 'timeout')}")
            time.sleep(0.01)
        time.sleep(a.warmup)
        trees = {name: descendants(pid) for name, pid in watch.items()}
        cpu0 = {name: cpu_ticks(pids) for name, pids in trees.items()}
        threads0 = {name: thread_readings(pid) for name, pid in watch.items()}
        own0, mach0 = time.process_time(), machine_ticks()
        start = time.perf_counter()
        self.window = (start, start + a.duration)
        time.sleep(a.duration)
        end = time.perf_counter()
        own1, mach1 = time.process_time(), machine_ticks()
        cpu1 = {name: cpu_ticks(descendants(pid)) for name, pid in watch.items()}
        threads1 = {name: thread_readings(pid) for name, pid in watch.items()}
        self.window = (start, end)
        self.stop = True
        for agent in agents:
            agent.join(a.io_timeout)
        lat = sorted(x for agent in agents for x in agent.latencies)
        statuses: dict[int, int] = {}
        for agent in agents:
            for k, v in agent.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        errors = [e for agent in agents for e in agent.errors]
        n = len(lat)
        elapsed = end - start
        busy, total = mach1[0] - mach0[0], mach1[1] - mach0[1]
        ok = sum(c for s, c in statuses.items() if 200 <= s < 300)
        return {
            "concurrency": a.concurrency,
            "window_s": round(elapsed, 3),
            "requests": n,
            "ok": ok,
            "rps": round(n / elapsed, 1),
            "p50_ms": round(lat[n // 2] * 1000, 3) if n else None,
            "p90_ms": round(lat[min(n - 1, int(n * 0.90))] * 1000, 3) if n else None,
            "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 3) if n else None,
            "max_ms": round(lat[-1] * 1000, 3) if n else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 3) if n else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": len(errors),
            "error_sample": errors[:3],
            "total_requests": sum(agent.total for agent in agents),
            "cpu_s": {**{name: round(cpu_seconds_between(cpu0[name], cpu1[name]), 3) for name in watch},
                      "loadgen": round(own1 - own0, 3)},
            "processes": {name: len(pids) for name, pids in trees.items()},
            # the watched process itself (not its children): its main thread, and its other threads
            "threads": {name: thread_split(threads0[name], threads1[name]) for name in watch},
            "machine_busy_cpus": round(busy / total * os.cpu_count(), 2) if total else None,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--proxy", help="HOST:PORT of the proxy (CONNECT, then TLS through it)")
    where.add_argument("--direct", help="HOST:PORT of a TLS server to call without a proxy")
    ap.add_argument("--token", help="the agent's token, sent as the proxy password (transport A)")
    ap.add_argument("--ca", required=True, help="CA certificate to trust (the proxy's, or the upstream's)")
    ap.add_argument("--host", default=HOST, help=f"the AWS host called (default {HOST})")
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring, not counted")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to set up every connection")
    ap.add_argument("--io-timeout", type=float, default=60.0, help="seconds a request may take before it fails")
    ap.add_argument("--watch", action="append", default=[], metavar="NAME=PID",
                    help="report the CPU seconds of PID's process tree within the window")
    args = ap.parse_args()
    request = build_request(args.host)
    try:
        result = Run(args, request).main()
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
