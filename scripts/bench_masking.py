"""What masking adds to a call: the masking stage's hooks (request, response) on a mitmproxy flow,
median over many rounds, for

- a 10 KB JSON response with nothing secret in it (the common case: the record's copy only);
- the same response with a policy path to mask for the agent (parsed, masked, written twice,
  x-amz-crc32 recomputed);
- a 10 KB JSON response with free-text secrets (the detectors walk every string);
- a 10 KB Secrets Manager response (sensitive members, record and agent);
- a streamed S3 object body of 1 MiB and of 1 GiB: the body is never parsed, so the cost does not
  depend on its size.

    .venv/bin/python scripts/bench_masking.py [--rounds 2000] [--repeats 3] [--json FILE]

Figures on a loaded machine vary: the script interleaves the cases, keeps the lowest median of a
few runs, and prints a yardstick (a json.loads and json.dumps of the same 10 KB body) to compare
machines by.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def items_body(target: int, with_secrets: bool = False) -> bytes:
    items, i = [], 0
    while True:
        item = {"pk": {"S": f"order#{i:06d}"}, "sk": {"S": str(uuid.UUID(int=i))},
                "customer": {"S": f"arn:aws:iam::123456789012:user/customer-{i}"}, "total": {"N": str(i * 7 % 1000)},
                "created": {"S": "2026-01-01T00:00:00Z"}, "ssn": {"S": f"{i:03d}-45-6789"},
                "note": {"S": f"password=hunter{i}x" if with_secrets and i % 5 == 0 else "delivered to the front desk"}}
        items.append(item)
        body = json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items)}).encode()
        if len(body) >= target:
            return body
        i += 1


def secret_body(target: int) -> bytes:
    body = {"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf", "Name": "prod/db",
            "VersionId": str(uuid.uuid4()), "VersionStages": ["AWSCURRENT"], "CreatedDate": 1.7e9}
    body["SecretString"] = json.dumps({"username": "app", "password": "x" * 32,
                                       "pad": "y" * max(0, target - 400)})
    return json.dumps(body).encode()


def make_flow(service: str, operation: str, body: bytes | None, policy=(), *, streamed: bool = False):
    from mitmproxy.test import tflow

    from addons.core.classifier import Classification
    from addons.core.policy import Decision
    from addons.stage import CALL, DECISION, SIGNED

    import types

    f = tflow.tflow(resp=True)
    s3 = service == "s3"
    f.request.method = "GET" if s3 else "POST"
    f.request.path = "/reports/2026/q1.csv" if s3 else "/"
    if not s3:
        f.request.headers["content-type"] = "application/x-amz-json-1.0"
        f.request.headers["x-amz-target"] = f"DynamoDB_20120810.{operation}"
    f.request.content = b"" if s3 else json.dumps({"TableName": "orders"}).encode()
    f.response.headers.clear()
    f.response.headers["content-type"] = "application/x-amz-json-1.0"
    if streamed:
        f.response.stream = True
        f.response.data.content = None
    else:
        f.response.content = body
        f.response.headers["x-amz-crc32"] = str(zlib.crc32(body))
    protocol = "rest-xml" if s3 else "json"
    params = {"Bucket": "my-bucket", "Key": "reports/2026/q1.csv"} if s3 else {"TableName": "orders"}
    f.metadata[CALL] = Classification(service=service, operation=operation, protocol=protocol, params=params)
    f.metadata[DECISION] = Decision("allow", "r", "allowed", "v", None, tuple(policy), None, None, ())
    f.metadata[SIGNED] = types.SimpleNamespace(session_id="s", role_arn="arn:aws:iam::123456789012:role/r",
                                               assumed_role_arn=None)
    return f


def hooks(addon, flow) -> int:
    """Nanoseconds the masking stage's request and response hooks take for one call."""
    t0 = time.perf_counter_ns()
    addon.mask_request(flow)  # the request and response hooks' work (bodies this size stay on the loop)
    addon.mask_response(flow)
    return time.perf_counter_ns() - t0


def measure(addon, cases: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median microseconds per case, the cases interleaved round by round (so that other load on
    the machine falls on all of them alike); the lowest median of ``repeats`` runs."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        times: dict[str, list[int]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, factory in cases.items():
                times[name].append(factory() if name.startswith("(") else hooks(addon, factory()))
        for name, values in times.items():
            median = statistics.median(values) / 1000
            best[name] = min(best.get(name, median), median)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from addons.masking import Masking

    addon = Masking(b"bench-fingerprint-key-0000000000")
    plain = items_body(10 * 1024)
    secrets = items_body(10 * 1024, with_secrets=True)
    secret = secret_body(10 * 1024)
    cases = {
        "10 KB JSON, nothing to mask (record only)": lambda: make_flow("dynamodb", "Query", plain),
        "10 KB JSON, Items[].ssn masked for the agent": lambda: make_flow("dynamodb", "Query", plain, ("Items[].ssn",)),
        "10 KB JSON, free-text secrets (detectors)": lambda: make_flow("dynamodb", "Query", secrets),
        "10 KB Secrets Manager GetSecretValue, masked for the agent": lambda: make_flow(
            "secretsmanager", "GetSecretValue", secret, ("SecretString", "SecretBinary")),
        "streamed S3 object body (1 MiB)": lambda: make_flow("s3", "GetObject", None, streamed=True),
        "streamed S3 object body (1 GiB)": lambda: make_flow("s3", "GetObject", None, streamed=True),
    }
    def json_round_trip() -> int:  # a yardstick: what any JSON handling of the body costs
        t0 = time.perf_counter_ns()
        json.dumps(json.loads(plain))
        return time.perf_counter_ns() - t0

    cases["(yardstick) json.loads + json.dumps of the 10 KB body"] = json_round_trip
    measure(addon, cases, 20, 1)  # models loaded, caches warm
    results = {name: round(us, 1) for name, us in measure(addon, cases, args.rounds, args.repeats).items()}
    for name, us in results.items():
        print(f"{name:62s} {us:8.1f} us median")
    print(f"(body sizes: {len(plain)}, {len(secrets)}, {len(secret)} bytes; lowest median of {args.repeats} runs of "
          f"{args.rounds} rounds, cases interleaved)")
    print("A streamed body is never parsed: the masking stage costs the same for any size of it; the record keeps "
          "its SHA-256 and size, which the recorder computes on the way.")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_us": results, "body_bytes": len(plain), "rounds": args.rounds,
                                               "repeats": args.repeats}, indent=2) + "\n")


if __name__ == "__main__":
    main()
