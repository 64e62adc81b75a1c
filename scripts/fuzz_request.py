"""Coverage-guided fuzzing of the request path with atheris (libFuzzer): bytes become one agent
request (a protocol's host and headers, then fuzzed method, path, query, headers and body), which
goes through what the gateway does with it, in order: read the agent's signature (core.sigv4),
classify it (core.classifier, without its safety net), decide it with the shipped policies
(core.policy), render the refusal in the request's protocol (core.awserrors), mask it for the record
(core.masking) and re-sign it (core.sigv4). Any exception other than the documented ones is a crash,
and libFuzzer keeps the input that caused it.

    .venv/bin/pip install atheris
    .venv/bin/python scripts/fuzz_request.py -max_total_time=300 -artifact_prefix=/tmp/fuzz- [CORPUS_DIR]

Every libFuzzer flag works (-runs=N, -jobs=N, -dict=FILE, ...). A crash input replays with
``.venv/bin/python scripts/fuzz_request.py /tmp/fuzz-crash-...``.
"""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["addons"]):
    from addons.core import awserrors, classifier, masking, policy, sigv4

# (host, signing name, headers, method, path) of one service per protocol
TEMPLATES = [
    ("dynamodb.us-east-1.amazonaws.com", "dynamodb",
     {"X-Amz-Target": "DynamoDB_20120810.GetItem", "Content-Type": "application/x-amz-json-1.0"}, "POST", "/"),
    ("lambda.us-east-1.amazonaws.com", "lambda", {"Content-Type": "application/json"}, "POST",
     "/2015-03-31/functions/f/invocations"),
    ("b.s3.amazonaws.com", "s3", {"Content-Type": "application/xml"}, "PUT", "/key"),
    ("sqs.us-east-1.amazonaws.com", "sqs", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", "/"),
    ("ec2.us-east-1.amazonaws.com", "ec2", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", "/"),
    ("monitoring.us-east-1.amazonaws.com", "monitoring",
     {"Smithy-Protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"}, "POST",
     "/service/GraniteServiceVersion20100801/operation/ListMetrics"),
    ("secretsmanager.us-east-1.amazonaws.com", "secretsmanager",
     {"X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"}, "POST", "/"),
    ("sts.amazonaws.com", "sts", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", "/"),
]
HEADER_NAMES = ["X-Amz-Target", "Content-Type", "Content-Encoding", "X-Amz-Content-SHA256", "X-Amz-Security-Token",
                "Authorization", "X-Amz-Meta-Note", "Range", "Smithy-Protocol", "Transfer-Encoding",
                "X-Amz-Region-Set", "Content-Length"]
POLICIES = policy.PolicySet.load(ROOT / "policies")
MASKER = masking.Masker(b"fuzz-fingerprint-key-00000000000")
PRINCIPAL = types.SimpleNamespace(sub="fuzz-agent", iss="https://issuer", groups=("data-agents",), on_behalf_of=None,
                                  claims={"groups": ["data-agents"]})
CREDENTIALS = types.SimpleNamespace(access_key="ASIAFUZZ", secret_key="fuzz-secret", token="fuzz-token")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def text(fdp: atheris.FuzzedDataProvider, most: int) -> str:
    """Text as mitmproxy hands it on: bytes decoded with surrogateescape."""
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, most)).decode("utf-8", "surrogateescape")


def request_from(data: bytes) -> tuple[str, str, str, str, list[tuple[str, str]], bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    host, signing, base, method, path = TEMPLATES[fdp.ConsumeIntInRange(0, len(TEMPLATES) - 1)]
    headers = [("Host", host), *base.items()]
    if fdp.ConsumeBool():
        scope = signing if fdp.ConsumeBool() else text(fdp, 20)
        headers.append(("Authorization", f"AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20260101/us-east-1/{scope}/"
                                         f"aws4_request, SignedHeaders=host, Signature={'0' * 64}"))
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        headers.append((HEADER_NAMES[fdp.ConsumeIntInRange(0, len(HEADER_NAMES) - 1)], text(fdp, 80)))
    if fdp.ConsumeBool():
        method = text(fdp, 8) or method
    if fdp.ConsumeBool():
        path = path.rstrip("/") + "/" + text(fdp, 60)
    query = text(fdp, 120) if fdp.ConsumeBool() else ""
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    return method, host, path, query, headers, body


def one_input(data: bytes) -> None:
    method, host, path, query, headers, body = request_from(data)
    auth = sigv4.parse_auth(method, path, query, headers)
    call = classifier.default_classifier().classify(method, host, path, query, dict(headers), body)
    if call.error and call.action != classifier.UNKNOWN:
        call.action, call.access_level = classifier.UNKNOWN, None  # as the classify stage does
    decision = POLICIES.evaluate(PRINCIPAL, call)
    if decision.decision == "deny":
        protocol = call.protocol or awserrors.guess_protocol({k.lower(): v for k, v in headers}, path)
        refusal = awserrors.Refusal(403, "AccessDenied", f"agentgate denied {call.action}: {decision.reason}",
                                    "policy")
        awserrors.render(refusal, protocol)
    part = MASKER.request(call, query=query, headers=headers, body=body, policy=decision.mask_for_agent,
                          content_type=dict((k.lower(), v) for k, v in headers).get("content-type", ""))
    if part.body is not None and not isinstance(part.body, str):
        raise AssertionError("the record's body is text or nothing")
    try:
        MASKER.params(call, decision.mask_for_agent)
    except masking.Unmaskable:
        pass  # the masking stage keeps no parameters then
    try:
        sigv4.resign(method, host, path, query, headers, None if sigv4.streams(auth, headers) else body,
                     credentials=CREDENTIALS, region="us-east-1", signing_name=auth.service or "s3", now=NOW,
                     auth=auth)
    except ValueError:
        pass  # the signer answers 400 InvalidRequest with the reason


def main() -> None:
    classifier.prepare(["dynamodb", "lambda", "s3", "sqs", "ec2", "cloudwatch", "secretsmanager", "sts"])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
