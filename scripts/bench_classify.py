"""How long classify() takes: module import, the first call (catalogue and model loading), and the
median warm call for typical small requests built by botocore itself (nothing is sent).

    .venv/bin/python scripts/bench_classify.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Captured(Exception):
    pass


def build(service: str, method: str, region: str = "us-east-1", **params) -> tuple:
    """(method, host, path, query, headers, body) of one request botocore would send."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x", region_name=region)
    client = session.client(service)
    seen = {}

    def before_send(request, **_):
        seen["request"] = request
        raise Captured()

    client.meta.events.register("before-send", before_send)
    try:
        getattr(client, method)(**params)
    except Captured:
        pass
    request = seen["request"]
    url = urlsplit(request.url)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    body = request.body if isinstance(request.body, bytes) else (
        request.body.encode() if isinstance(request.body, str) else None)
    return request.method, url.netloc, url.path, url.query, headers, body


CALLS = {
    "s3 GetObject": ("s3", "get_object", {"Bucket": "my-bucket", "Key": "reports/2026/q1.csv"}),
    "dynamodb GetItem": ("dynamodb", "get_item", {"TableName": "orders", "Key": {"id": {"S": "42"}}}),
    "ec2 DescribeInstances": ("ec2", "describe_instances", {"InstanceIds": ["i-0123456789abcdef0"]}),
    "sts GetCallerIdentity": ("sts", "get_caller_identity", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()

    importlib.import_module("botocore.loaders")  # the gateway has botocore loaded already

    started = time.perf_counter()
    from addons.core import classifier

    print(f"import addons.core.classifier: {(time.perf_counter() - started) * 1000:.1f} ms")
    requests = {name: build(service, method, **params) for name, (service, method, params) in CALLS.items()}

    started = time.perf_counter()
    classifier.classify(*requests["sts GetCallerIdentity"])
    print(f"first call (service catalogue, STS model): {(time.perf_counter() - started) * 1000:.1f} ms")
    for name, request in requests.items():
        started = time.perf_counter()
        result = classifier.classify(*request)
        print(f"  first {name}: {(time.perf_counter() - started) * 1000:.1f} ms -> {result.action}")

    for _ in range(200):
        for request in requests.values():
            classifier.classify(*request)
    for name, request in requests.items():
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter_ns()
            classifier.classify(*request)
            times.append(time.perf_counter_ns() - started)
        print(f"{name:24} median {statistics.median(times) / 1000:6.1f} µs   "
              f"p90 {sorted(times)[int(len(times) * 0.9)] / 1000:6.1f} µs")


if __name__ == "__main__":
    main()
