"""Every operation of every botocore service model, built by botocore and classified back.

For each operation, minimal input parameters are generated from its input shape (required members,
recursively), botocore's own client serializes, resolves the endpoint and signs the request (fake
credentials; a ``before-send`` handler stops it before the network), and the classifier must name
the same service and operation and read back the generated parameters. Operations botocore cannot
build from such input (validation, endpoint rules, auth schemes it cannot sign) are counted as not
buildable. Counts per protocol and every failure go to tests/output/classifier-coverage.json.

Run alone: ``.venv/bin/python tests/test_classifier_coverage.py [service ...]``; with
``COVERAGE_EVERY_MEMBER=1`` every member (not only the required ones) is generated, to a depth of 4.
"""

from __future__ import annotations

import base64
import datetime
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.awsrequest
import botocore.config
import botocore.model
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.core import classifier  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "output" / "classifier-coverage.json"
REGION = "us-east-1"
BAR = 0.99
TIMESTAMP = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
STRING_CANDIDATES = (
    "aaa", "abc", "a1b2c3", "AAA", "Abc1", "111", "a-b", "a_b", "a.b", "abc123", "a1", "1",
    "arn:aws:iam::123456789012:role/a", "arn:aws:s3:::abc", "https://example.com", "a@example.com",
    "i-12345678", "sg-12345678", "vpc-12345678", "subnet-12345678", "2026-01-01", "12345678-1234-1234-1234-123456789012",
)


class Captured(Exception):
    """Raised from before-send: the request was built, nothing is sent."""


# ---------------------------------------------------------------------------------------------
# Minimal parameters


def sample_string(shape: botocore.model.Shape) -> str:
    """A short string that satisfies the shape's enum, length and (where practical) pattern."""
    if shape.enum:
        return shape.enum[0]
    low = shape.metadata.get("min", 0)
    high = shape.metadata.get("max", 1 << 30)
    pattern = shape.metadata.get("pattern")
    regex = None
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error:
            regex = None
    candidates = list(STRING_CANDIDATES) + ["a" * max(low, 3), "1" * max(low, 3), "A" * max(low, 3)]
    if regex is not None and "arn" in pattern:
        candidates = arn_candidates(pattern) + candidates
    for candidate in candidates:
        if len(candidate) < low:
            candidate = candidate + "a" * (low - len(candidate))
        if len(candidate) > high:
            continue
        if regex is None or regex.fullmatch(candidate):
            return candidate
    return ("a" * max(low, 3))[: max(high, 1)]


def arn_candidates(pattern: str) -> list[str]:
    """ARNs that may fit an ARN pattern: the service and resource types named in it."""
    services = re.findall(r":([a-z][a-z0-9-]+):", pattern) or ["aaa"]
    types = re.findall(r"([a-z][a-z-]+)/", pattern) + ["aaa"]
    return [f"arn:aws:{s}:us-east-1:123456789012:{t}/aaa" for s in services for t in types]


def minimal_params(shape: botocore.model.Shape, depth: int = 0, every_member: bool = False) -> Any:
    """Required members only (or every member, ``every_member``), recursively; one-element lists
    and maps; numbers at their minimum."""
    kind = shape.type_name
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            return {"a": "b"}
        if depth > (4 if every_member else 12):
            return {}
        members = shape.members
        required = list(shape.required_members)
        if every_member and not shape.is_tagged_union:
            required = [n for n, m in members.items() if not m.serialization.get("eventstream")
                        and not m.metadata.get("deprecated")]
        if shape.is_tagged_union and not required and members:
            scalars = [n for n, m in members.items() if m.type_name not in ("structure", "list", "map")]
            required = [scalars[0] if scalars else next(iter(members))]
        return {name: minimal_params(members[name], depth + 1, every_member) for name in required}
    if kind == "list":
        return [minimal_params(shape.member, depth + 1, every_member) for _ in range(max(shape.metadata.get("min", 1), 1))]
    if kind == "map":
        return {sample_string(shape.key): minimal_params(shape.value, depth + 1, every_member)}
    if kind == "string":
        return sample_string(shape)
    if kind in ("integer", "long"):
        return int(shape.metadata.get("min", 1))
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 1))
    if kind == "boolean":
        return True
    if kind == "blob":
        return b"aaa"
    if kind == "timestamp":
        return TIMESTAMP
    raise ValueError(f"no sample for shape type {kind}")


# ---------------------------------------------------------------------------------------------
# Building requests with botocore's own client


class FakeRaw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_: Any):
        yield self.body


def discovered_endpoint(request: Any) -> botocore.awsrequest.AWSResponse:
    """An answer to an endpoint-discovery call, so the real operation gets built next."""
    host = urlsplit(request.url).netloc
    body = json.dumps({"Endpoints": [{"Address": host, "CachePeriodInMinutes": 10}]}).encode()
    return botocore.awsrequest.AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.0"}, FakeRaw(body))


def make_client(session: boto3.session.Session, service: str) -> Any:
    config = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=1)
    client = session.client(service, region_name=REGION, config=config)
    state: dict[str, Any] = {}

    def before_send(request: Any, event_name: str, **_: Any) -> Any:
        if not event_name.endswith("." + state["operation"]):
            return discovered_endpoint(request)
        state["request"] = request
        raise Captured()

    client.meta.events.register("before-send", before_send)
    client._coverage_state = state  # type: ignore[attr-defined]
    return client


def wire_request(request: Any) -> tuple[str, str, str, str, dict[str, str], bytes | None]:
    """(method, host, path, query, headers, body) as the gateway would see them."""
    url = urlsplit(request.url)
    headers = {k: v.decode("latin-1") if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif isinstance(body, bytearray):
        body = bytes(body)
    elif not isinstance(body, bytes):
        body = None  # a stream: the gateway would not have it in hand
    return request.method, url.netloc, url.path or "/", url.query, headers, body


def build(client: Any, operation: str, params: dict) -> tuple | str:
    """The wire request botocore builds for one call, or why it could not."""
    state = client._coverage_state
    state["operation"] = operation
    state.pop("request", None)
    try:
        client._make_api_call(operation, params)
    except Captured:
        return wire_request(state["request"])
    except Exception as exc:  # botocore refused to build it
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "the call returned without sending"


# ---------------------------------------------------------------------------------------------
# Comparing parameters


def same_value(sent: Any, read: Any, shape: botocore.model.Shape) -> bool:
    kind = shape.type_name
    if kind == "structure" and not getattr(shape, "is_document_type", False):
        return isinstance(read, dict) and all(
            name in read and same_value(value, read[name], shape.members[name]) for name, value in sent.items()
        )
    if kind == "list":
        return isinstance(read, list) and len(read) == len(sent) and all(
            same_value(s, r, shape.member) for s, r in zip(sent, read))
    if kind == "map":
        return isinstance(read, dict) and all(k in read and same_value(v, read[k], shape.value) for k, v in sent.items())
    if kind == "blob":
        raw = sent if isinstance(sent, bytes) else str(sent).encode()
        return read in (raw.decode("latin-1"), base64.b64encode(raw).decode())
    if kind == "timestamp":
        try:
            return classifier.timestamp_text(read) == classifier.timestamp_text(sent)
        except (TypeError, ValueError):
            return False
    if kind in ("float", "double"):
        return isinstance(read, (int, float)) and float(read) == float(sent)
    return read == sent


def without_empty(value: Any) -> Any:
    """A value without the empty structures (and lists of them) the Query protocols leave no trace of."""
    if isinstance(value, dict):
        pruned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not (isinstance(v, (dict, list)) and not v)}
    if isinstance(value, list):
        items = [without_empty(v) for v in value]
        return [] if items and all(i == {} for i in items) else items
    return value


def comparable(params: dict, operation: botocore.model.OperationModel, body_sent: bool) -> dict:
    """The generated members the classifier is expected to read back: not streaming payloads,
    not event streams, and not body members when the body streamed."""
    shape = operation.input_shape
    if operation.service_model.resolved_protocol in ("query", "ec2"):
        params = without_empty(params)
    out = {}
    for name, value in params.items():
        member = shape.members[name]
        if classifier.is_streaming(member) or member.type_name in ("blob", "string") and member.serialization.get("eventstream"):
            continue
        if operation.has_event_stream_input and shape.serialization.get("payload") == name:
            continue
        if not body_sent and not member.serialization.get("location") and not member.serialization.get("hostLabel"):
            continue
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Running


def same_wire(expected: str, got: str | None) -> bool:
    """Services whose requests are byte-for-byte the same (the classifier's curated preference)."""
    for preferred, others, _ in classifier.SAME_WIRE_PREFERENCE:
        group = (preferred,) + others
        if expected in group and got in group:
            return True
    return False


def deprecated_twin(service: str, expected: str, got: str | None) -> bool:
    """A deprecated operation sent exactly like a current one (S3 GetBucketLifecycle and
    GetBucketLifecycleConfiguration): the classifier names the current one. (Read from a pristine
    model: botocore's S3 client rewrites the http traits of the models it uses.)"""
    operations = classifier.default_classifier().routing(service).operations
    if got not in operations:
        return False
    old, new = operations[expected], operations[got]
    same = all(old["http"].get(k) == new["http"].get(k) for k in ("method", "requestUri"))
    return bool(old.get("deprecated")) and not new.get("deprecated") and same


def names_as_in(read: dict, sent: dict) -> dict:
    """``read`` with its top-level member names spelt as in ``sent`` where they differ only in case."""
    spelling = {k.lower(): k for k in sent}
    return {spelling.get(k.lower(), k): v for k, v in read.items()}


EVERY_MEMBER = os.environ.get("COVERAGE_EVERY_MEMBER") == "1"


def check_operation(client: Any, service: str, model: botocore.model.ServiceModel, operation: str) -> dict:
    op_model = model.operation_model(operation)
    result: dict[str, Any] = {"service": service, "operation": operation, "protocol": model.resolved_protocol}
    try:
        params = minimal_params(op_model.input_shape, every_member=EVERY_MEMBER) if op_model.input_shape else {}
    except Exception as exc:
        result["not_buildable"] = f"no parameters: {exc}"
        return result
    built = build(client, operation, params)
    if isinstance(built, str):
        result["not_buildable"] = built
        return result
    method, host, path, query, headers, body = built
    got = classifier.classify(method, host, path, query, headers, body)
    result["request"] = f"{method} {host}{path}{'?' + query if query else ''}"
    result["classified"] = f"{got.service}.{got.operation}"
    result["wire_protocol"] = got.protocol
    twin = got.service == service and deprecated_twin(service, operation, got.operation)
    result["operation_right"] = twin or got.operation == operation and (
        got.service == service or same_wire(service, got.service))
    result["same_wire"] = result["operation_right"] and (got.service != service or twin)
    if result["operation_right"]:
        expected = comparable(params, op_model, body is not None)
        read = got.params
        if got.service != service:  # read in the other service's model: member names may differ in case
            read = names_as_in(read, expected)
        ok = same_value(expected, read, op_model.input_shape) if op_model.input_shape else True
        result["params_right"] = ok
        if not ok:
            result["params_sent"] = repr(expected)[:400]
            result["params_read"] = repr(read)[:400]
    if got.error:
        result["error"] = got.error[:300]
    return result


def run_services(services: list[str]) -> list[dict]:
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x", region_name=REGION)
    results = []
    for service in services:
        try:
            client = make_client(session, service)
        except Exception as exc:
            results.append({"service": service, "operation": "*", "protocol": None,
                            "not_buildable": f"no client: {type(exc).__name__}: {exc}"})
            continue
        model = client.meta.service_model
        for operation in model.operation_names:
            results.append(check_operation(client, service, model, operation))
    return results


def run(services: list[str] | None = None, processes: int = 2) -> dict:
    os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_USE_FIPS_ENDPOINT",
                 "AWS_USE_DUALSTACK_ENDPOINT", "AWS_REQUEST_CHECKSUM_CALCULATION"):
        os.environ.pop(name, None)
    started = time.monotonic()
    services = services or boto3.session.Session().get_available_services()
    shards = [services[i::processes] for i in range(processes)]
    if processes > 1:
        with multiprocessing.get_context("forkserver").Pool(processes) as pool:
            results = [r for part in pool.map(run_services, shards) for r in part]
    else:
        results = run_services(services)
    return summarise(results, time.monotonic() - started)


def summarise(results: list[dict], seconds: float) -> dict:
    protocols: dict[str, dict[str, int]] = {}
    for r in results:
        counts = protocols.setdefault(r["protocol"] or "?", dict.fromkeys(
            ("operations", "buildable", "classified_right", "same_wire", "params_right", "with_error"), 0))
        counts["operations"] += 1
        if "not_buildable" in r:
            continue
        counts["buildable"] += 1
        counts["classified_right"] += bool(r.get("operation_right"))
        counts["same_wire"] += bool(r.get("same_wire"))
        counts["params_right"] += bool(r.get("params_right"))
        counts["with_error"] += "error" in r
    total = {k: sum(c[k] for c in protocols.values()) for k in ("operations", "buildable", "classified_right",
                                                                 "same_wire", "params_right", "with_error")}
    for counts in list(protocols.values()) + [total]:
        counts["classified_rate"] = round(counts["classified_right"] / counts["buildable"], 4) if counts["buildable"] else None
        counts["params_rate"] = round(counts["params_right"] / counts["buildable"], 4) if counts["buildable"] else None
    return {
        "seconds": round(seconds, 1),
        "overall": total,
        "by_protocol": protocols,
        "misclassified": [r for r in results if "not_buildable" not in r and not r.get("operation_right")],
        "params_wrong": [r for r in results if r.get("operation_right") and not r.get("params_right")],
        "with_error": [r for r in results if "error" in r and r.get("operation_right")][:200],
        "not_buildable": [{k: r[k] for k in ("service", "operation", "protocol", "not_buildable")}
                          for r in results if "not_buildable" in r],
    }


def write_report(report: dict) -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=1, sort_keys=False))


def summary_lines(report: dict) -> list[str]:
    lines = [f"classifier coverage ({report['seconds']} s):"]
    for name, c in sorted(report["by_protocol"].items()) + [("overall", report["overall"])]:
        lines.append(f"  {name:20} ops {c['operations']:6}  buildable {c['buildable']:6}  "
                     f"service+operation {c['classified_right']:6} ({c['classified_rate']})  "
                     f"params {c['params_right']:6} ({c['params_rate']})  same-wire {c['same_wire']}")
    return lines


@pytest.mark.timeout(900)
def test_every_buildable_operation_is_classified():
    report = run()
    write_report(report)
    print("\n".join(summary_lines(report)))
    assert report["overall"]["classified_rate"] >= BAR, report["misclassified"][:20]
    for protocol, counts in report["by_protocol"].items():
        if counts["buildable"]:
            assert counts["classified_rate"] >= BAR, (protocol, [m for m in report["misclassified"]
                                                                 if m["protocol"] == protocol][:20])


if __name__ == "__main__":
    chosen = sys.argv[1:] or None
    result = run(chosen, processes=1 if chosen else 2)
    if not chosen:
        write_report(result)
    print("\n".join(summary_lines(result)))
    for item in result["misclassified"][:40]:
        print("MISCLASSIFIED", item)
    for item in result["params_wrong"][:40]:
        print("PARAMS", item)
