"""agentgate benchmarks, side by side in one run on loopback.

Scenarios:
  transfer  1 GB S3 upload and download: direct to the upstream, through stock mitmdump
            (streaming bodies over 1 MB), and through the gateway's full chain. MB/s and the
            peak RSS of each proxy process.
  sts       1,000 calls by one principal through the gateway: how many STS calls it made.
  decide    classification plus policy decision per call, in process (median and p99 µs).

The upstream is a fast canned stand-in for AWS (scripts/bench_upstream.py), not moto, so the
proxies are what is measured. Figures go to --json FILE (default bench-results/latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import TEST_POLICY, Gateway, free_port, wait_port  # noqa: E402
from tests.support.oidc import OIDCIssuer  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent


class RSSSampler(threading.Thread):
    """Samples a process's resident set size every 20 ms; ``peak_mb`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 1024, 1)

    def stop(self) -> float:
        self.stopped.set()
        self.join()
        return self.peak_mb


def rss_mb(pid: int) -> float | None:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def start_upstream(tmp: Path) -> tuple[subprocess.Popen, int]:
    ready = tmp / "upstream.port"
    p = subprocess.Popen([PY, str(ROOT / "scripts" / "bench_upstream.py"), "--ready-file", str(ready)],
                         stdout=subprocess.DEVNULL)
    for _ in range(200):
        if ready.exists() and ready.read_text():
            return p, int(ready.read_text())
        time.sleep(0.05)
    raise RuntimeError("the bench upstream did not start")


def start_mitmdump(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    confdir = tmp / "mitmdump"
    p = subprocess.Popen([str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                          "--set", f"confdir={confdir}", "--set", "stream_large_bodies=1m",
                          "--set", "connection_strategy=lazy",
                          "-s", str(ROOT / "scripts" / "bench_retarget.py"),
                          "--set", f"bench_upstream_port={upstream_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc=p)
    return p, port, confdir / "mitmproxy-ca-cert.pem"


TRANSFER_CLIENT = """
import json, os, sys, time, boto3, botocore.config
mode, endpoint, proxy, ca, path, size = sys.argv[1:7]
size = int(size)
kw = dict(region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
          aws_session_token=os.environ.get("TOKEN"))
cfg = botocore.config.Config(proxies={"https": proxy} if proxy != "-" else None, read_timeout=300)
s3 = boto3.client("s3", endpoint_url=None if endpoint == "-" else endpoint, verify=ca if ca != "-" else None, config=cfg, **kw)
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
assert n == size, n
print(json.dumps({"up_s": up, "down_s": down}))
"""


def transfer(args, tmp: Path, issuer: OIDCIssuer, gw: Gateway, upstream_port: int) -> dict:
    size = args.size_mb << 20
    blob = tmp / "blob.bin"
    with open(blob, "wb") as f:
        f.truncate(size)  # sparse: reading it costs no disk
    md, md_port, md_ca = start_mitmdump(tmp, upstream_port)
    token = issuer.mint("bench-agent", expires_in=3600)
    targets = {
        "direct": ("-", f"http://127.0.0.1:{upstream_port}", "-", "-", None),
        "mitmdump": ("-", "-", f"http://127.0.0.1:{md_port}", str(md_ca), md.pid),
        "gateway": ("-", "-", gw.proxy_url(token), str(gw.ca_file), gw.proc.pid),
    }
    results: dict[str, list] = {k: [] for k in targets}
    peaks: dict[str, float] = {}
    idle = {name: rss_mb(t[4]) for name, t in targets.items() if t[4]}
    try:
        for _ in range(args.rounds):
            for name, (_, endpoint, proxy, ca, pid) in targets.items():
                sampler = RSSSampler(pid) if pid else None
                if sampler:
                    sampler.start()
                p = subprocess.run([PY, "-c", TRANSFER_CLIENT, name, endpoint, proxy, ca, str(blob), str(size)],
                                   capture_output=True, text=True, env={**os.environ, "TOKEN": token}, timeout=1800)
                if sampler:
                    peaks[name] = max(peaks.get(name, 0), sampler.stop())
                if p.returncode != 0:
                    raise RuntimeError(f"{name} transfer failed: {p.stderr[-2000:]}")
                results[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
    finally:
        md.terminate()
        md.wait()
    out = {}
    mb = size / (1 << 20)
    for name, runs in results.items():
        out[name] = {
            "upload_mb_s": round(mb / statistics.median(r["up_s"] for r in runs), 1),
            "download_mb_s": round(mb / statistics.median(r["down_s"] for r in runs), 1),
            "idle_rss_mb": idle.get(name),
            "peak_rss_mb": peaks.get(name),
        }
    out["gateway_vs_mitmdump_upload"] = round(out["gateway"]["upload_mb_s"] / out["mitmdump"]["upload_mb_s"], 2)
    out["gateway_vs_mitmdump_download"] = round(out["gateway"]["download_mb_s"] / out["mitmdump"]["download_mb_s"], 2)
    out["size_mb"] = args.size_mb
    return out


STS_CLIENT = """
import json, os, sys, boto3, botocore.config
proxy, ca, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                 verify=ca, config=botocore.config.Config(proxies={"https": proxy}))
for _ in range(n):
    c.list_tables()
print("done")
"""


def sts(args, tmp: Path, issuer: OIDCIssuer, gw: Gateway, upstream_port: int) -> dict:
    import urllib.request

    def stats() -> dict:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/__stats"))

    before = stats()["sts_calls"]
    token = issuer.mint("sts-bench-agent", expires_in=3600)
    t = time.time()
    subprocess.run([PY, "-c", STS_CLIENT, gw.proxy_url(token), str(gw.ca_file), str(args.calls)],
                   check=True, capture_output=True, timeout=1800)
    elapsed = time.time() - t
    return {"calls": args.calls, "sts_calls": stats()["sts_calls"] - before, "seconds": round(elapsed, 1)}


DECIDE_CALLS = [
    ("s3", "get_object", {"Bucket": "b", "Key": "k"}),
    ("dynamodb", "get_item", {"TableName": "t", "Key": {"k": {"S": "v"}}}),
    ("ec2", "describe_instances", {}),
    ("sts", "get_caller_identity", {}),
    ("ec2", "terminate_instances", {"InstanceIds": ["i-0123456789abcdef0"]}),
    ("iam", "create_access_key", {}),
]


def decide(args, *_unused) -> dict:
    """Classification plus decision per call, in process, on requests botocore built (the
    shipped default policies)."""
    from scripts.bench_classify import build

    from addons.core import classifier
    from addons.core.identity import Principal
    from addons.core.policy import PolicySet

    policies = PolicySet.load(ROOT / "policies")
    who = Principal(sub="agent-1", iss="https://issuer.example", aud=("agentgate",), groups=("data-agents",),
                    on_behalf_of=None, exp=time.time() + 3600, claims={"sub": "agent-1", "groups": ["data-agents"]})
    out = {}
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
        out[call.action] = {"decision": decision.decision, "median_us": round(statistics.median(samples) * 1e6, 1),
                            "p99_us": round(sorted(samples)[int(len(samples) * 0.99)] * 1e6, 1)}
    out["median_of_medians_us"] = round(statistics.median(v["median_us"] for v in out.values()), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["decide", "sts", "transfer"], help="decide, sts, transfer")
    ap.add_argument("--decide-rounds", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="small sizes: 64 MB transfers, 100 calls")
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "latest.json"))
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.calls = 64, 100
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as d, OIDCIssuer() as issuer:
        tmp = Path(d)
        upstream, upstream_port = start_upstream(tmp)
        gw = Gateway(tmp / "gw", issuer=issuer.issuer, upstream=f"http://127.0.0.1:{upstream_port}",
                     aws_key=("bench", "bench"), policy=TEST_POLICY)
        try:
            gw.start()
            for name in args.scenarios:
                fn = {"transfer": transfer, "sts": sts, "decide": decide}[name]
                print(f"running {name} ...", file=sys.stderr, flush=True)
                report["scenarios"][name] = fn(args, tmp, issuer, gw, upstream_port)
                print(json.dumps(report["scenarios"][name], indent=2), flush=True)
        finally:
            gw.stop()
            upstream.terminate()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
