#!/usr/bin/env python3
"""How long PolicySet.evaluate takes: the shipped policies plus extra rules (about 30 in all),
evaluated for representative calls. Prints the median and 99th percentile per call, in µs.

    .venv/bin/python scripts/bench_policy.py [--policies DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.core.policy import PolicySet  # noqa: E402

EXTRA = """\
version: 1
rules:
"""
for i in range(8):
    EXTRA += f"""\
  - id: team-{i}-reads-its-buckets
    action: [s3:GetObject, s3:ListBucket]
    principal: {{groups: [team-{i}]}}
    when: "length(resource[?starts_with(@, 'arn:aws:s3:::team-{i}-')]) > `0`"
    decision: allow
  - id: team-{i}-no-prod-writes
    access_level: [Write, Tagging]
    principal: {{claims: "contains(teams || `[]`, 'team-{i}')"}}
    when: "region == 'eu-west-1' && params.Tags != null"
    decision: deny
"""


def principal(groups=("dev", "team-3")):
    claims = {"sub": "agent-1", "groups": list(groups), "teams": ["team-3"], "act": {"sub": "alice"}}
    return SimpleNamespace(sub="agent-1", iss="https://issuer.example", aud=("agentgate",), groups=tuple(groups),
                           on_behalf_of="alice", exp=0.0, claims=claims)


def call(action, level, params=None, resources=()):
    service, _, operation = action.partition(":")
    return SimpleNamespace(service=service, operation=operation, protocol="json", signing_name=service,
                           region="us-east-1", account="123456789012", params=params or {},
                           resources=list(resources), action=action, access_level=level, error=None)


CALLS = {
    "ec2:DescribeInstances": call("ec2:DescribeInstances", "List"),
    "s3:GetObject (when)": call("s3:GetObject", "Read", {"Bucket": "team-3-data", "Key": "k"},
                                ["arn:aws:s3:::team-3-data/k"]),
    "secretsmanager:GetSecretValue": call("secretsmanager:GetSecretValue", "Read", {"SecretId": "db"}),
    "iam:CreateAccessKey": call("iam:CreateAccessKey", "Write", {"UserName": "bob"}),
    "ec2:TerminateInstances": call("ec2:TerminateInstances", "Write", {"InstanceIds": ["i-1"]}),
    "lambda:CreateFunction (when)": call("lambda:CreateFunction", "Write",
                                         {"Role": "arn:aws:iam::123456789012:role/admin"}),
    "unknown": call("unknown", None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default=str(Path(__file__).resolve().parent.parent / "policies"))
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.policies, tmp, dirs_exist_ok=True)
        (Path(tmp) / "zz-bench.yaml").write_text(EXTRA)
        policy_set = PolicySet.load(tmp)
    print(f"{len(policy_set.rules)} rules in {len(policy_set.files)} files, version {policy_set.version}")
    who = principal()
    worst = 0.0
    for name, c in CALLS.items():
        for _ in range(1000):
            policy_set.evaluate(who, c)
        samples = []
        clock = time.perf_counter_ns
        for _ in range(args.rounds):
            t0 = clock()
            policy_set.evaluate(who, c)
            samples.append(clock() - t0)
        samples.sort()
        median = statistics.median(samples) / 1000
        p99 = samples[int(len(samples) * 0.99)] / 1000
        worst = max(worst, median)
        decision = policy_set.evaluate(who, c)
        print(f"  {name:34} {decision.decision:8} median {median:6.1f} µs   p99 {p99:6.1f} µs")
    print(f"slowest median: {worst:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
