"""Fuzzing the policy loader (core.policy) and ``agentgate policy check``: any file text, any shape
of YAML, alias bombs, deep nesting, huge numbers and characters YAML refuses either load or are
refused with PolicyError, every problem one line "file:line: message" of bounded length, in bounded
time; evaluating any call against a loaded policy never raises. FUZZ_EXAMPLES raises the number
of examples per property."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core import policy
from addons.core.policy import PolicyError, PolicySet
from tests.support.bounds import HANG

AGENTGATE = str(Path(sys.executable).parent / "agentgate")
PROBLEM = re.compile(r"^p\.yaml(?::\d+)?: \S.*$")


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=3000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def load(directory: Path, text: str) -> PolicySet | list[str]:
    """The policy set, or its problems (each checked to be one readable line)."""
    (directory / "p.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    started = time.perf_counter()
    try:
        loaded = PolicySet.load(directory)
    except PolicyError as e:
        assert e.errors and str(e) == "\n".join(e.errors)
        for line in e.errors:
            assert PROBLEM.match(line) and len(line) < 2000, line[:300]
        return e.errors
    finally:
        took = time.perf_counter() - started
        assert took < HANG, f"{took:.1f} s to load"
    return loaded


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs in YAML: ``levels`` anchors, each a list of ``width`` references to the last."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.sampled_from(["allow", "deny", "approve", "s3:GetObject", "ec2:Describe*", "*", "unknown", "Read", "Write",
                     "15m", "1h", "0", "-1", "9" * 40, "arn:aws:iam::123456789012:role/r", "length(params) > `0`",
                     "params.[", "`", "SecretString", "Parameters[].Value", "sre", "1e999"]),
)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(policy.RULE_KEYS + policy.ROLE_KEYS
                                                             + policy.PRINCIPAL_KEYS) | st.text(max_size=8),
                                             inner, max_size=5), max_leaves=25)


@st.composite
def policy_documents(draw) -> str:
    """A document with the policy's shape whose values are anything YAML can say."""
    doc = {}
    for key in draw(st.lists(st.sampled_from(policy.TOP_KEYS + ("extra",)), max_size=5, unique=True)):
        if key in ("rules", "roles"):
            doc[key] = draw(st.lists(st.dictionaries(
                st.sampled_from(policy.RULE_KEYS if key == "rules" else policy.ROLE_KEYS), yaml_values, max_size=8),
                max_size=4) | yaml_values)
        else:
            doc[key] = draw(st.sampled_from([1, "deny", "allow"]) | yaml_values)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@given(text=st.text(max_size=400) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
@fuzz(300)
@example(text="\x00version: 1")  # the loader raised ReaderError
@example(text="version: 1\nrules:\n - id: x\n   decision: allow\n   action: " + "[" * 20_000 + "]" * 20_000)
@example(text="version: 1\nroles:\n - principal: {groups: [a]}\n   role_arn: arn:aws:iam::123456789012:role/x\n"
              "   duration: " + "9" * 5000)  # a number too long for int(): ValueError escaped
@example(text="version: 1\nrules: !!python/object/apply:os.system [id]\n")
def test_any_text_loads_or_is_refused_line_by_line(tmp_path_factory, text):
    load(tmp_path_factory.mktemp("p"), text)


@given(policy_documents())
@fuzz(150)
@example('version: 1\ndefault: 1\nroles:\n- session_policy: "\\0"\n')  # read_text raised ValueError
@example("version: 1\ndefault: 1\nroles:\n- session_policy: '0\n\n    '\n")  # a file name with a newline: two-line problem
def test_any_document_of_the_policy_shape(tmp_path_factory, text):
    loaded = load(tmp_path_factory.mktemp("p"), text)
    if isinstance(loaded, PolicySet):  # whatever loaded decides every call
        call = types.SimpleNamespace(action="s3:GetObject", access_level="Read", params={"Bucket": "b"},
                                     resources=["b"], region="us-east-1", account=None, service="s3",
                                     operation="GetObject", error=None)
        who = types.SimpleNamespace(sub="agent", iss="https://issuer", groups=("sre",), on_behalf_of=None, claims={})
        assert loaded.evaluate(who, call).decision in policy.DECISIONS
        policy.explain(loaded, who, call)


@pytest.mark.parametrize("where", [
    "version: *l8\n",
    "version: 1\ndefault: *l8\n",
    "version: 1\nrules:\n - id: *l8\n   decision: allow\n",
    "version: 1\nrules:\n - id: r\n   decision: *l8\n",
    "version: 1\nrules:\n - id: r\n   decision: allow\n   when: *l8\n",
    "version: 1\nrules:\n - id: r\n   decision: approve\n   approvers: {groups: [a]}\n   expires: *l8\n",
    "version: 1\nroles:\n - role_arn: *l8\n",
    "version: 1\nroles:\n - role_arn: arn:aws:iam::123456789012:role/r\n   duration: *l8\n",
    "version: 1\nroles:\n - role_arn: arn:aws:iam::123456789012:role/r\n   web_identity: *l8\n",
])
def test_billion_laughs_is_refused_at_once(tmp_path, where):
    """An alias bomb quoted in a problem was repr()'d whole: 9**9 items, minutes and gigabytes."""
    started = time.perf_counter()
    problems = load(tmp_path, alias_bomb() + where)
    assert time.perf_counter() - started < HANG
    assert isinstance(problems, list) and sum(len(p) for p in problems) < 10_000


def test_deep_nesting_is_refused_as_invalid_yaml(tmp_path):
    started = time.perf_counter()
    problems = load(tmp_path, "version: 1\nrules: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert problems == ["p.yaml:2: not valid YAML: [ and { nest more than 100 deep"]
    problems = load(tmp_path, "version: 1\nrules:\n" + "- " * 100_000 + "x\n")  # block collections
    assert problems == ["p.yaml: not valid YAML: it nests too deeply"]
    assert time.perf_counter() - started < HANG


def test_a_deeply_nested_expression_is_a_problem_not_a_crash(tmp_path):
    problems = load(tmp_path, "version: 1\nrules:\n - id: x\n   decision: allow\n   when: \""
                    + "length(" * 3000 + "@" + ")" * 3000 + "\"\n")
    assert len(problems) == 1 and problems[0].startswith("p.yaml:5: rule x: bad jmespath in when")
    assert problems[0].endswith("it nests too deeply")
    problems = load(tmp_path, "version: 1\nrules:\n - id: x\n   decision: allow\n   principal: {claims: \""
                    + "!" * 5000 + "@\"}\n")
    assert len(problems) == 1 and "bad jmespath in principal.claims" in problems[0]


def test_numbers_too_long_to_read_are_problems_with_their_line(tmp_path):
    problems = load(tmp_path, "version: 1\nroles:\n - principal: {groups: [a]}\n"
                    "   role_arn: arn:aws:iam::123456789012:role/x\n   duration: " + "9" * 5000 + "\n")
    assert problems[0].startswith("p.yaml:5: value of 'duration' cannot be read: Exceeds the limit")


def test_an_approval_cannot_outlive_a_year(tmp_path):
    """expires: 10**30 seconds loaded, then every held call failed on a date beyond year 9999."""
    problems = load(tmp_path, "version: 1\nrules:\n - id: x\n   decision: approve\n   approvers: {groups: [a]}\n"
                    "   expires: " + "9" * 30 + "\n")
    assert problems == ["p.yaml:6: rule x: expires 999999999999999999999999999999 is over a year; "
                        f"approvals last at most {policy.MAX_APPROVAL_EXPIRES}s"]
    assert isinstance(load(tmp_path, "version: 1\nrules:\n - id: x\n   decision: approve\n   approvers: {groups: [a]}\n"
                           "   expires: 365d\n"), PolicySet)


def test_a_character_yaml_refuses_names_its_line(tmp_path):
    assert load(tmp_path, "version: 1\n\x07rules: []\n") == [
        "p.yaml:2: not valid YAML: special characters are not allowed (character #x0007)"]


@given(st.dictionaries(st.text(max_size=6), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=30), max_size=6), st.dictionaries(st.text(max_size=6), st.text(max_size=8), max_size=4))
@fuzz(200)
def test_evaluating_any_call_never_raises(params, claims):
    """Conditions over any parameters and claims: a failing expression counts as matching for a deny
    or approve rule and allows nothing for an allow rule, never an error."""
    loaded = _CONDITIONS
    call = types.SimpleNamespace(action="dynamodb:PutItem", access_level="Write", params=params, resources=[],
                                 region="us-east-1", account="123456789012", service="dynamodb",
                                 operation="PutItem", error=None)
    who = types.SimpleNamespace(sub="agent", iss="https://issuer", groups=("data",), on_behalf_of=None, claims=claims)
    decision = loaded.evaluate(who, call)
    assert decision.decision in policy.DECISIONS
    policy.explain(loaded, who, call)


def _conditions() -> PolicySet:
    import tempfile

    directory = Path(tempfile.mkdtemp())
    (directory / "p.yaml").write_text("""\
version: 1
default: deny
rules:
  - {id: a, action: "dynamodb:*", decision: allow, when: "length(params.Item) > `2`"}
  - {id: b, action: "dynamodb:*", decision: deny, when: "contains(keys(params), 'TableName') && params.TableName == 'x'"}
  - {id: c, action: "dynamodb:*", decision: approve, approvers: {groups: [sre]}, when: "max(params.*[]) > `10`"}
  - {id: d, action: "dynamodb:*", decision: deny, principal: {claims: "starts_with(dept, 'contract')"}}
  - {id: e, action: "dynamodb:*", decision: allow, when: "sort_by(params.Items || `[]`, &name)[0].name == 'a'"}
  - {id: f, action: "dynamodb:*", decision: deny, when: "to_number(params.Limit) > `1000`"}
""")
    return PolicySet.load(directory)


_CONDITIONS = _conditions()


@given(text=policy_documents() | st.text(max_size=200))
@fuzz(40)
@example(text=alias_bomb() + "version: 1\nrules:\n - id: *l8\n   action: s3:GetObject\n   decision: allow\n")
def test_policy_check_reports_any_file(tmp_path_factory, text):
    """``policy check`` (the function behind the command) returns problems; it never raises."""
    directory = tmp_path_factory.mktemp("p")
    (directory / "p.yaml").write_text(text, encoding="utf-8")
    started = time.perf_counter()
    problems = policy.check(directory)
    assert time.perf_counter() - started < HANG
    assert all(isinstance(p, str) and p.startswith(("p.yaml", str(directory))) for p in problems)


@pytest.mark.parametrize("text", [
    alias_bomb() + "version: 1\ndefault: *l8\n",
    "version: 1\nrules: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "\x00",
])
def test_policy_check_command_exits_with_one_line_reasons(tmp_path, text):
    """The CLI: a bad file is a non-zero exit with file:line reasons, never a traceback."""
    (tmp_path / "p.yaml").write_text(text)
    started = time.perf_counter()
    run = subprocess.run([AGENTGATE, "policy", "check", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "AGENTGATE_HOME": str(tmp_path)})
    assert run.returncode != 0 and "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    assert "p.yaml" in run.stderr + run.stdout
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.json", "session/../../outside.json"])
def test_a_session_policy_is_read_only_from_inside_the_policies_directory(tmp_path, where):
    (tmp_path / "outside.json").write_text('{"Statement": []}')
    policies = tmp_path / "policies"
    policies.mkdir()
    problems = load(policies, "version: 1\nroles:\n - role_arn: arn:aws:iam::123456789012:role/r\n"
                    f"   session_policy: {where}\n")
    assert problems == [f"p.yaml:4: session_policy '{where}' must be a file name relative to the policies "
                        "directory, inside it"]
