"""`agentgate policy check | explain` through click's CliRunner."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from addons.commands.policy import policy

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(policy, list(args), catch_exceptions=False)
    return invoke


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def claims(tmp_path) -> Path:
    return write(tmp_path, "claims.json", json.dumps(
        {"sub": "agent-7", "iss": "https://issuer.test", "aud": "agentgate", "groups": ["dev"],
         "act": {"sub": "alice@example.com"}}))


# ------------------------------------------------------------------------------ check


def test_check_passes_the_shipped_policies(run):
    result = run("check", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "5 files, 26 rules, 2 roles: OK" in result.output


def test_check_defaults_to_the_policies_setting(run, monkeypatch, tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "p")
    monkeypatch.setenv("AGENTGATE_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTGATE_POLICIES", str(tmp_path / "p"))
    result = run("check")
    assert result.exit_code == 0 and ": OK" in result.output


def test_check_reports_load_errors_with_file_and_line(run, tmp_path):
    write(tmp_path, "bad.yaml", """
        version: 1
        rules:
          - id: reads
            access_level: [List, Read]
            decision: allow
            colour: blue
          - id: bad-when
            action: s3:GetObject
            when: "params.[Bucket"
            decision: allow
          - id: bad-glob
            action: "s3 GetObject"
            decision: allow
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    assert "bad.yaml:6: unknown key 'colour' in a rule" in result.output
    assert "bad.yaml:9: rule bad-when: bad jmespath in when `params.[Bucket`" in result.output
    assert "bad.yaml:12: rule bad-glob: bad action 's3 GetObject'" in result.output
    assert "3 errors in" in result.output
    assert "Traceback" not in result.output


def test_check_knows_actions_and_offers_did_you_mean(run, tmp_path):
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - id: typo
            action: ec2:TerminateInstance
            decision: approve
            approvers: {groups: [sre]}
          - id: prefix-typo
            action: [ec:DescribeInstances]
            decision: allow
          - id: nothing-matches
            action: ec2:Frobnicate*
            decision: allow
          - id: fine
            action: [s3:GetObject, "s3:headobject", "s3:List*", "*:ListTagsForResource", unknown]
            decision: allow
          - id: botocore-only
            action: awsssoportal:GetRoleCredentials
            decision: deny
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    out = result.output
    assert ("p.yaml:3: rule typo: unknown action ec2:TerminateInstance: neither IAM's data nor botocore knows it; "
            "did you mean ec2:TerminateInstances?") in out
    assert "p.yaml:7: rule prefix-typo: unknown action ec:DescribeInstances" in out
    assert "did you mean ec2:DescribeInstances?" in out
    assert "p.yaml:10: rule nothing-matches: action ec2:Frobnicate* matches no action" in out
    assert "rule fine" not in out and "botocore-only" not in out
    assert "3 errors in" in out


def test_check_warns_about_rules_that_can_never_decide(run, tmp_path):
    write(tmp_path, "a.yaml", """
        version: 1
        rules:
          - {id: no-iam, action: "iam:*", decision: deny}
          - {id: iam-reads, action: "iam:Get*", decision: allow}
          - {id: iam-reads-for-sre, action: "iam:List*", principal: {groups: [sre]}, decision: allow}
          - {id: conditional-deny, action: "s3:*", when: "region == 'eu-west-1'", decision: deny}
          - {id: s3-reads, action: "s3:Get*", decision: allow}
          - {id: no-perms, access_level: Permissions management, decision: deny}
          - {id: attach, action: "iam:AttachRolePolicy", decision: approve, approvers: {groups: [sre]}}
          - {id: kms-policy, action: "kms:PutKeyPolicy", decision: approve, approvers: {groups: [sre]}}
    """)
    write(tmp_path, "roles.yaml", """
        version: 1
        roles:
          - {id: everyone, role_arn: "arn:aws:iam::123456789012:role/a"}
          - {id: data-team, principal: {groups: [x]}, role_arn: "arn:aws:iam::123456789012:role/b"}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "a.yaml:4: warning: rule iam-reads can never decide: deny rule no-iam (a.yaml:3) covers it" in out
    assert "a.yaml:5: warning: rule iam-reads-for-sre can never decide: deny rule no-iam (a.yaml:3) covers it" in out
    assert "s3-reads can never" not in out  # the s3 deny has a condition
    assert "a.yaml:10: warning: rule kms-policy can never decide: deny rule no-perms (a.yaml:8) covers it" in out
    assert "rule attach can never decide: deny rule no-iam" in out
    assert ("roles.yaml:4: warning: role binding data-team can never apply: the binding at roles.yaml:3 matches "
            "every principal") in out
    assert "2 files, 8 rules, 2 roles: OK (5 warnings)" in out


def test_check_warns_about_item_masks_that_other_reads_get_around(run, tmp_path):
    """A rule masking an item attribute for GetItem alone leaves Query, Scan, ... to return it."""
    write(tmp_path, "a.yaml", """
        version: 1
        rules:
          - {id: ssn-on-get, action: dynamodb:GetItem, decision: allow, mask_for_agent: [Item.ssn]}
          - {id: ssn-everywhere, action: "dynamodb:*", decision: allow, mask_for_agent: ["Items[].ssn"]}
          - {id: reads, action: "dynamodb:*", access_level: Read, decision: allow, mask_for_agent: [Item.card]}
          - {id: not-an-item, action: dynamodb:DescribeTable, decision: allow, mask_for_agent: [Table.TableName]}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert ("a.yaml:3: warning: rule ssn-on-get masks item attributes for agents, but dynamodb:Query, dynamodb:Scan, "
            "dynamodb:BatchGetItem, dynamodb:PartiQLSelect, dynamodb:GetRecords also "
            "return items and this rule does not match them") in result.output
    # TransactGetItems is decided item by item as dynamodb:GetItem: a rule on GetItem, or on Read, covers it
    assert "TransactGetItems" not in result.output and "rule reads masks" not in result.output
    assert "ssn-everywhere masks" not in result.output and "not-an-item" not in result.output
    assert "OK (1 warning)" in result.output


def test_check_warns_about_default_allow_and_refuses_a_missing_dir(run, tmp_path):
    write(tmp_path, "p.yaml", "version: 1\ndefault: allow\n")
    result = run("check", str(tmp_path))
    assert result.exit_code == 0
    assert "p.yaml:2: warning: default: allow" in result.output
    result = run("check", str(tmp_path / "nope"))
    assert result.exit_code != 0
    assert "is not a directory of policy files" in result.output


# ------------------------------------------------------------------------------ explain


def test_explain_a_denied_call(run, claims):
    result = run("explain", "--principal-file", str(claims), "--action", "iam:CreateAccessKey",
                 "--policies", str(SHIPPED))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "decision: deny" in out
    assert "decided by: rule no-credential-vending (guardrails.yaml:" in out
    assert "reason: agents never hold AWS credentials" in out
    assert "action: iam:CreateAccessKey (access level: Write)" in out
    assert "principal: agent-7 (groups: dev) on behalf of alice@example.com" in out
    assert "role: arn:aws:iam::123456789012:role/agent-role (binding default-agent-role, 3600s)" in out
    assert "[match] no-credential-vending" in out and "[   no] read-only" in out


def test_explain_with_params_resources_and_masks(run, claims, tmp_path):
    result = run("explain", "--principal-file", str(claims), "--action", "secretsmanager:getsecretvalue",
                 "--params", '{"SecretId": "db"}', "--region", "eu-west-1", "--account", "123456789012",
                 "--policies", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "action: secretsmanager:GetSecretValue (access level: Read)" in result.output
    assert "mask_for_agent: SecretString, SecretBinary" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "iam:PassRole",
                 "--resource", "arn:aws:iam::123456789012:role/admin", "--policies", str(SHIPPED))
    assert "decided by: rule pass-only-listed-roles" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "ec2:TerminateInstances",
                 "--params", '{"InstanceIds": ["i-1"]}', "--policies", str(SHIPPED))
    assert "decision: approve" in result.output and "approvers: groups ['sre']" in result.output
    assert "approval expires: 900s" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "unknown", "--policies", str(SHIPPED))
    assert "decision: deny" in result.output and "no rule allows unknown" in result.output


def test_explain_refuses_bad_input_in_one_line(run, claims, tmp_path):
    bad_json = write(tmp_path, "bad.json", "{not json")
    no_sub = write(tmp_path, "nosub.json", '{"groups": ["dev"]}')
    cases = [
        (["--principal-file", str(bad_json), "--action", "s3:GetObject"], "bad.json is not JSON"),
        (["--principal-file", str(no_sub), "--action", "s3:GetObject"], "the principal's claims have no sub"),
        (["--principal-file", str(tmp_path / "missing.json"), "--action", "s3:GetObject"], "cannot read"),
        (["--principal-file", str(claims), "--action", "GetObject"], "is not service:Action"),
        (["--principal-file", str(claims), "--action", "s3:Get Object"], "is not service:Action"),
        (["--principal-file", str(claims), "--action", "s3:GetObject", "--params", "[1]"], "--params must be a JSON object"),
        (["--principal-file", str(claims), "--action", "s3:GetObject", "--params", "{"], "--params is not JSON"),
    ]
    for args, message in cases:
        result = run("explain", *args, "--policies", str(SHIPPED))
        assert result.exit_code != 0, args
        assert message in result.output, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_explain_on_broken_policies_lists_the_errors(run, claims, tmp_path):
    write(tmp_path, "p.yaml", "version: 1\nrules:\n  - {id: x, decision: sometimes}\n")
    result = run("explain", "--principal-file", str(claims), "--action", "s3:GetObject", "--policies", str(tmp_path))
    assert result.exit_code != 0
    assert "p.yaml:3: rule x: decision must be allow, deny or approve" in result.output
    assert "do not load" in result.output


# -- the versions the store keeps ---------------------------------------------------------------


def test_versions_and_show_give_the_text_that_decided_calls(home, tmp_path):
    """`policy versions` lists each version that decided calls, with how many; `policy show` prints
    its text as stored (a unique start of its name will do); a text changed in the store after it
    was stored is shown as changed, and the command exits 1; unknown and malformed versions are
    one-line errors."""
    import sqlite3

    from addons.cli import main
    from tests.test_export import POLICY_TEXT, POLICY_VERSION, write_synthetic

    url = f"sqlite:///{home / 'agentgate.db'}"
    write_synthetic(url, "gw-test")
    runner = CliRunner()
    listed = runner.invoke(main, ["policy", "versions", "--db", url, "--json"])
    assert listed.exit_code == 0, listed.output
    [v] = json.loads(listed.output)
    assert (v["version"], v["calls"], v["holds"], v["text"]) == (POLICY_VERSION, 1, True, POLICY_TEXT)
    table = runner.invoke(main, ["policy", "versions", "--db", url])
    assert table.exit_code == 0 and POLICY_VERSION in table.output and "data.yaml" in table.output
    assert "no policy versions decided a call" in runner.invoke(
        main, ["policy", "versions", "--db", url, "--until", "2000-01-01"]).output
    shown = runner.invoke(main, ["policy", "show", POLICY_VERSION[:6], "--db", url])
    assert shown.exit_code == 0 and shown.output == POLICY_TEXT

    for args, code, words in ((["show", "0000abcd"], 1, "no policy version 0000abcd"),
                              (["show", "ab"], 2, "4 at least"), (["show", "not-hex!"], 2, "not a policy version")):
        result = runner.invoke(main, ["policy", *args, "--db", url])
        assert result.exit_code == code and words in result.output, (args, result.output)
        assert "Traceback" not in result.output

    with sqlite3.connect(home / "agentgate.db") as db:
        db.execute("update policy_versions set text = replace(text, 'deny', 'allow')")
    shown = runner.invoke(main, ["policy", "show", POLICY_VERSION, "--db", url])
    assert shown.exit_code == 1 and "default: allow" in shown.output
    assert "does not hash to its version: it was changed" in shown.output
    table = runner.invoke(main, ["policy", "versions", "--db", url])
    assert table.exit_code == 1 and "CHANGED" in table.output
