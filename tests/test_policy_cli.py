"""`agentgate policy check | explain` through click's CliRunner."""

from __future__ import annotations

import base64
import json
import os
import shutil
import textwrap
import time
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
    assert "5 files, 31 rules, 2 roles: OK" in result.output


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
            action: [s3:GetObject, "s3:getobjectacl", "s3:List*", "*:ListTagsForResource", unknown]
            decision: allow
          - id: botocore-only
            action: awsssoportal:GetRoleCredentials
            decision: deny
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    out = result.output
    # each at its action's line
    assert ("p.yaml:4: rule typo: unknown action ec2:TerminateInstance: neither IAM's data nor botocore knows it; "
            "did you mean ec2:TerminateInstances?") in out
    assert "p.yaml:8: rule prefix-typo: unknown action ec:DescribeInstances" in out
    assert "did you mean ec2:DescribeInstances?" in out
    assert "p.yaml:11: rule nothing-matches: action ec2:Frobnicate* matches no action" in out
    assert "rule fine" not in out and "botocore-only" not in out
    assert "3 errors in" in out



def test_check_points_at_the_line_of_each_action_and_list_item(run, tmp_path):
    """An action's error names the line of the `action:` key, or of its item in a block list, as
    errors in when, access_level and expires name theirs; so do a mask path's warning and a bad
    item of principal, approvers or mask_for_agent, not the rule's first line."""
    write(tmp_path, "a.yaml", """
        version: 1
        rules:
          - id: typo
            decision: allow
            action: s3:GetObjekt
          - id: renamed
            decision: allow
            action: ["s3:GetObject", "lambda:Invoke"]
          - id: listed
            decision: allow
            action:
              - ec2:DescribeInstances
              - ec2:DescribeInstanzes
              - s3:ListObjectsV2
              - "s3:*Objekt*"
          - id: masked
            action: secretsmanager:GetSecretValue
            decision: allow
            mask_for_agent:
              - SecretString
              - SecretStrng
    """)
    write(tmp_path, "b.yaml", """
        version: 1
        rules:
          - id: bad-items
            action: s3:GetObject
            principal:
              groups:
                - sre
                - [nested]
            decision: approve
            approvers:
              sub:
                - carol
                - 7
          - id: bad-mask
            action: s3:GetObject
            decision: allow
            mask_for_agent:
              - Body
              - has space
          - id: bad-action-item
            decision: allow
            action:
              - s3:GetObject
              - 5
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    out = result.output
    assert "a.yaml:5: rule typo: unknown action s3:GetObjekt" in out
    assert "a.yaml:8: rule renamed: lambda:Invoke is an API operation's name" in out
    assert "a.yaml:13: rule listed: unknown action ec2:DescribeInstanzes" in out
    assert "a.yaml:14: rule listed: s3:ListObjectsV2 is an API operation's name" in out
    assert "a.yaml:15: rule listed: action s3:*Objekt* matches no action IAM's data or botocore knows" in out
    assert "a.yaml:21: warning: rule masked: mask_for_agent path SecretStrng names nothing" in out
    assert "b.yaml:8: principal.groups must be a string or a list of strings" in out
    assert "b.yaml:13: approvers.sub must be a string or a list of strings" in out
    assert "b.yaml:19: rule bad-mask: mask_for_agent must be a list of response member paths" in out
    assert "b.yaml:24: rule bad-action-item: action must be a string or a non-empty list of strings" in out
    assert "9 errors in" in out and "(1 warning)" in out


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


def test_check_refuses_api_operation_names_the_gateway_names_otherwise(run, tmp_path):
    """A rule on an operation's own name where the gateway names the call by another action never
    matches: check names the action the gateway uses."""
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: no-invoke, action: lambda:Invoke, decision: deny}
          - {id: lambda, action: "lambda:*", decision: allow}
          - {id: s3-ops, action: [s3:ListObjectsV2, s3:HeadObject, s3:HeadBucket], decision: deny}
          - {id: partiql, action: dynamodb:ExecuteStatement, decision: deny}
          - {id: v-glob, action: "s3:ListObjects*", decision: deny}
          - {id: named-so, action: [awsssoportal:GetRoleCredentials, "s3:ListBucket"], decision: deny}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    out = result.output
    assert ("p.yaml:3: rule no-invoke: lambda:Invoke is an API operation's name, never a call's action: the gateway "
            "names this call lambda:InvokeFunction") in out
    assert "p.yaml:5: rule s3-ops: s3:ListObjectsV2 is an API operation's name" in out
    assert "the gateway names this call s3:ListBucket" in out
    assert "s3:HeadObject is an API operation's name, never a call's action: the gateway names this call s3:GetObject" in out
    assert "s3:HeadBucket is an API operation's name" in out
    assert ("p.yaml:6: rule partiql: dynamodb:ExecuteStatement is an API operation's name, never a call's action: the "
            "gateway names such calls dynamodb:PartiQLSelect or dynamodb:PartiQLInsert") in out
    assert ("p.yaml:7: rule v-glob: action s3:ListObjects* matches only API operations' names (ListObjects, "
            "ListObjectsV2), never a call's action: the gateway names these calls s3:ListBucket") in out
    assert "named-so" not in out
    assert "6 errors in" in out


def test_explain_refuses_operation_names_and_unknown_actions(run, claims):
    for action, message in (("s3:ListObjectsV2", "the gateway names this call s3:ListBucket (--operation "
                                                  "s3.ListObjectsV2 describes that operation)"),
                            ("ec2:TerminateInstance", "unknown action ec2:TerminateInstance: neither IAM's data nor "
                                                      "botocore knows it; did you mean ec2:TerminateInstances?")):
        result = run("explain", "--principal-file", str(claims), "--action", action, "--policies", str(SHIPPED))
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = run("explain", "--principal-file", str(claims), "--operation", "s3.ListObjectsV3", "--policies", str(SHIPPED))
    assert result.exit_code != 0 and "botocore's s3 has no operation 'ListObjectsV3'; did you mean" in result.output
    result = run("explain", "--principal-file", str(claims), "--operation", "s3.ListObjectsV2", "--action",
                 "s3:GetObject", "--policies", str(SHIPPED))
    assert result.exit_code != 0 and "--operation s3.ListObjectsV2 is the action s3:ListBucket, not s3:GetObject" in result.output


def test_check_warns_about_mask_paths_that_name_nothing_in_the_answer(run, tmp_path):
    """A mask_for_agent path that names no member of what the rule's calls answer masks nothing: the
    secret reaches the agent."""
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - id: env
            action: lambda:GetFunctionConfiguration
            decision: allow
            mask_for_agent: [Configuration.Environment.Variables]
          - {id: secret, action: secretsmanager:GetSecretValue, decision: allow, mask_for_agent: [SecretStrng]}
          - id: right
            action: [lambda:GetFunction, lambda:GetFunctionConfiguration, "ssm:GetParameter*", "dynamodb:*"]
            decision: allow
            mask_for_agent: [Configuration.Environment.Variables, Environment.Variables, "Parameters[].Value",
                             Parameter.Value, Item.ssn, "Items[].card"]
          - {id: item-nowhere, action: dynamodb:DescribeTable, decision: allow, mask_for_agent: [Item.ssn]}
          - {id: no-service, access_level: Read, decision: allow, mask_for_agent: [Whatever]}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert ("p.yaml:6: warning: rule env: mask_for_agent path Configuration.Environment.Variables names nothing in the "
            "answer of any call the rule matches, so it masks nothing (answers: lambda.GetFunctionConfiguration: "
            "FunctionName, ") in out
    assert "did you mean Environment.Variables?" in out
    assert ("p.yaml:7: warning: rule secret: mask_for_agent path SecretStrng names nothing in the answer of any call "
            "the rule matches, so it masks nothing (answers: secretsmanager.GetSecretValue: ARN, Name, VersionId, "
            "SecretBinary, SecretString, VersionStages, CreatedDate); did you mean SecretString?") in out
    assert "rule right" not in out and "no-service" not in out
    assert "p.yaml:13: warning: rule item-nowhere: mask_for_agent path Item.ssn names nothing" in out
    assert "OK (3 warnings)" in out


def test_check_warns_about_names_in_when_that_no_call_has(run, tmp_path):
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - id: typos
            action: s3:GetObject
            when: "params.bucket == 'dev-data' || contains(principal.group, 'sre') || regoin == 'eu-west-1'"
            decision: deny
          - id: fine
            action: ["s3:*", dynamodb:ConditionCheckItem, execute-api:Invoke, dynamodb:PartiQLSelect]
            when: >-
              params.Bucket == 'x' || params.Tags[?Key == 'env'] || length(params.Key) > `3` || roles[0] == 'r'
              || principal.claims.tenant || contains(principal.groups, 'x') || principal.on_behalf_of
              || params.TableName == 't' || params.method == 'GET' || params.Statement || account || service
              || operation == 'ListObjectsV2' || resource[0] || action || access_level || params.ACL
            decision: deny
          - {id: any-action, when: "params.anything == 'x'", decision: deny}
          - {id: unset-key, action: s3:GetObject, when: "params.Key == null", decision: deny}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    # `null` unquoted is a field named null, which reads as null: it works, but is not what it says
    assert ("p.yaml:16: warning: rule unset-key: when reads null, which is not a fact (params, principal, resource, "
            "region, account, service, operation, action, access_level, roles): it is always null; jmespath's null "
            "is written `null` in backticks") in out
    assert ("p.yaml:5: warning: rule typos: when reads params.bucket, which is not a parameter of any call the rule "
            "matches: it is always null; did you mean params.Bucket?") in out
    assert ("p.yaml:5: warning: rule typos: when reads principal.group, which is not a field of principal (sub, iss, "
            "groups, on_behalf_of, actors, claims): it is always null; did you mean principal.groups?") in out
    assert "p.yaml:5: warning: rule typos: when reads regoin, which is not a fact" in out and "did you mean region?" in out
    assert "rule fine" not in out and "any-action" not in out
    assert "OK (4 warnings)" in out


def test_check_warns_about_a_rule_whose_action_and_access_level_contradict(run, tmp_path):
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: contradiction, action: ec2:TerminateInstances, access_level: [Read], decision: allow}
          - {id: fine, action: "ec2:*", access_level: [Read], decision: allow}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert ("p.yaml:3: warning: rule contradiction matches no known action: no action ec2:TerminateInstances has access "
            "level Read (ec2:TerminateInstances is Write)") in result.output
    assert "rule fine" not in result.output and "OK (1 warning)" in result.output



def test_check_knows_a_deny_or_approve_rule_on_write_matches_actions_of_no_access_level(run, claims, tmp_path):
    """s3:RenameObject has no access level in IAM's data: a deny or approve rule listing Write
    matches it (the gateway decides it so), so check does not warn that such a rule matches no known
    action; an allow rule on Write does not match it, and check still says so."""
    write(tmp_path, "p.yaml", """
        version: 1
        roles: [{role_arn: "arn:aws:iam::123456789012:role/a"}]
        rules:
          - id: no-renames
            access_level: Write
            action: "s3:Rename*"
            decision: deny
          - {id: hold-renames, action: "s3:Renam*", access_level: [Write], decision: approve, approvers: {groups: [sre]}}
          - {id: allow-renames, action: "s3:Rename*", access_level: Write, decision: allow}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "matches no known action" not in result.output.replace("rule allow-renames matches", ""), result.output
    # the deny matches s3:RenameObject, so the approve over it can never decide
    assert "p.yaml:8: warning: rule hold-renames can never decide: deny rule no-renames (p.yaml:4) covers it" \
        in result.output
    assert ("p.yaml:9: warning: rule allow-renames matches no known action: no action s3:Rename* has access level "
            "Write") in result.output
    assert "OK (2 warnings)" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "s3:RenameObject", "--region", "us-east-1",
                 "--policies", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("decision: deny\ndecided by: rule no-renames (p.yaml:4)\n"), result.output
    assert "  [match] hold-renames (p.yaml:8, approve): matches: action matches s3:Renam*; no access level in IAM " \
        "data, matched as Write by an approve rule" in result.output


def test_check_refuses_a_session_policy_that_is_no_iam_policy(run, tmp_path):
    write(tmp_path, "session/bad.json", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allowed", "Actions": ["s3:*"], "Resource": "*"}, {"Effect": "Deny", "Action": "s3:Delete*"}]}))
    write(tmp_path, "session/good.json", json.dumps({"Version": "2012-10-17", "Statement": {
        "Effect": "Allow", "NotAction": "iam:*", "Resource": ["*"], "Condition": {"Bool": {"aws:SecureTransport": "true"}}}}))
    write(tmp_path, "roles.yaml", """
        version: 1
        roles:
          - {id: bad, principal: {groups: [a]}, role_arn: "arn:aws:iam::123456789012:role/a", session_policy: session/bad.json}
          - {id: good, role_arn: "arn:aws:iam::123456789012:role/a", session_policy: session/good.json}
    """)
    result = run("check", str(tmp_path))
    assert result.exit_code != 0
    out = result.output
    assert "roles.yaml:3: role binding bad: session policy session/bad.json: statement 1: unknown key 'Actions'; did you mean Action?" in out
    assert "roles.yaml:3: role binding bad: session policy session/bad.json: statement 1: Effect must be Allow or Deny, not 'Allowed'" in out
    assert "session/bad.json: statement 1: needs Action or NotAction" in out
    assert "session/bad.json: statement 2: needs Resource or NotResource" in out
    assert "good" not in out and "4 errors in" in out


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


def test_explain_names_the_gateways_built_in_rules(run, claims, tmp_path):
    """A decision by the gateway's own rules (a condition on a masked attribute, a copy that would
    unmask its source) is explained, not a traceback."""
    write(tmp_path, "p.yaml", """
        version: 1
        roles: [{role_arn: "arn:aws:iam::123456789012:role/a"}]
        rules:
          - {id: items, action: "dynamodb:*", mask_for_agent: [Item.ssn], decision: allow}
          - {id: s3, action: "s3:*", decision: allow}
          - {id: masked-src, action: s3:GetObject, when: "starts_with(resource[0], 'src/')", mask_for_agent: [Body],
             decision: allow}
    """)
    result = run("explain", "--principal-file", str(claims), "--action", "dynamodb:Query", "--params",
                 '{"TableName": "t", "FilterExpression": "ssn = :s"}', "--policies", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "decision: deny" in result.output
    assert "decided by: the gateway's built-in rule agentgate:masked-condition" in result.output
    assert "reason: items masks ssn for agents, and this call's condition reads it" in result.output
    result = run("explain", "--principal-file", str(claims), "--operation", "s3.CopyObject", "--params",
                 '{"Bucket": "dst", "Key": "k", "CopySource": "src/k"}', "--policies", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "decided by: the gateway's built-in rule agentgate:masked-source" in result.output
    assert "reason: it also asks for s3:GetObject on src/k: masked-src masks Body of this source for agents" in result.output


def test_explain_shows_the_item_masks_a_write_gets_from_the_reads_of_its_table(run, claims, tmp_path):
    """A write of a table whose reads a rule masks gets those item masks (explain lists the read
    and its masks), and a copy of the masked attribute is refused by the gateway's own rule."""
    write(tmp_path, "p.yaml", """
        version: 1
        roles: [{role_arn: "arn:aws:iam::123456789012:role/a"}]
        rules:
          - {id: items, action: "dynamodb:*", access_level: [List, Read], mask_for_agent: [Item.ssn], decision: allow}
          - {id: writes, action: "dynamodb:*", access_level: Write, decision: allow}
    """)
    result = run("explain", "--principal-file", str(claims), "--operation", "dynamodb.UpdateItem", "--params",
                 '{"TableName": "people", "Key": {"k": {"S": "a"}}, "UpdateExpression": "SET a = :a", '
                 '"ExpressionAttributeValues": {":a": {"N": "1"}}, "ReturnValues": "ALL_OLD"}',
                 "--policies", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "decided by: rule writes" in result.output and "mask_for_agent: Item.ssn\n" in result.output
    assert "item masks of a read of its tables (masks only, not decided):\n  dynamodb:GetItem on people: Item.ssn\n" \
        in result.output
    result = run("explain", "--principal-file", str(claims), "--operation", "dynamodb.UpdateItem", "--params",
                 '{"TableName": "people", "Key": {"k": {"S": "a"}}, "UpdateExpression": "SET b = ssn"}',
                 "--policies", str(tmp_path))
    assert "decided by: the gateway's built-in rule agentgate:masked-source (a copy whose source" in result.output
    assert "reason: items masks ssn for agents, and this call copies it into b" in result.output


EXPLAINED = """
    version: 1
    roles: [{role_arn: "arn:aws:iam::123456789012:role/a"}]
    rules:
      - {id: s3, action: "s3:*", decision: allow}
      - {id: no-secret-bucket, action: s3:GetObject, when: "starts_with(resource[0], 'secret/')", decision: deny}
      - {id: no-public, action: s3:PutObjectAcl, decision: deny}
      - {id: no-v2, action: s3:ListBucket, when: "operation == 'ListObjectsV2' && service == 's3'", decision: deny}
      - {id: no-old-deletes, action: s3:DeleteObjectVersion, decision: deny}
      - {id: ddb, action: "dynamodb:*", decision: allow}
      - {id: no-t2, action: [dynamodb:PutItem, "dynamodb:PartiQL*"], when: "contains(resource, 't2')", decision: deny}
      - {id: no-tagging, access_level: Tagging, decision: deny}
      - {id: kms, action: "kms:*", decision: allow}
      - {id: no-archive, action: kms:ReEncryptTo, when: "contains(resource, 'alias/archive')", decision: deny}
"""


@pytest.mark.parametrize("service, method, kwargs", [
    ("s3", "copy_object", {"Bucket": "dst", "Key": "k", "CopySource": {"Bucket": "secret", "Key": "x"}}),
    ("s3", "copy_object", {"Bucket": "dst", "Key": "k", "CopySource": {"Bucket": "open", "Key": "x"}}),
    ("s3", "put_object", {"Bucket": "dst", "Key": "k", "Body": b"x", "ACL": "public-read"}),
    ("s3", "put_object", {"Bucket": "dst", "Key": "k", "Body": b"x"}),
    ("s3", "list_objects_v2", {"Bucket": "b"}),
    ("s3", "list_objects", {"Bucket": "b"}),
    ("dynamodb", "transact_write_items", {"TransactItems": [
        {"Put": {"TableName": "t1", "Item": {"id": {"S": "1"}}}}, {"Put": {"TableName": "t2", "Item": {"id": {"S": "2"}}}}]}),
    ("dynamodb", "transact_write_items", {"TransactItems": [{"Put": {"TableName": "t1", "Item": {"id": {"S": "1"}}}}]}),
    ("dynamodb", "execute_statement", {"Statement": "DELETE FROM t2 WHERE id = 'x'"}),
    ("dynamodb", "batch_write_item", {"RequestItems": {"t2": [{"PutRequest": {"Item": {"id": {"S": "1"}}}}]}}),
    ("s3", "get_object", {"Bucket": "secret", "Key": "x", "VersionId": "v1"}),
    ("s3", "delete_object", {"Bucket": "dst", "Key": "k", "VersionId": "v1"}),
    ("dynamodb", "create_table", {"TableName": "t1", "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                                  "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                                  "BillingMode": "PAY_PER_REQUEST", "Tags": [{"Key": "env", "Value": "prod"}]}),
    ("kms", "re_encrypt", {"CiphertextBlob": b"x", "DestinationKeyId": "alias/archive"}),
    ("kms", "re_encrypt", {"CiphertextBlob": b"x", "DestinationKeyId": "alias/other"}),
])
def test_explain_decides_as_the_gateway(run, claims, tmp_path, monkeypatch, service, method, kwargs):
    """explain describes the call the gateway's classifier makes (botocore service and operation,
    resources, implied actions, transaction items, PartiQL statements) and decides it as the gateway
    does: its decision and rule are PolicySet.evaluate's on the classification of the same call built
    with boto3."""
    from addons.commands.policy import principal_from_claims
    from addons.core.policy import PolicySet
    from tests.test_classifier import capture, run as classify_request

    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    write(tmp_path, "policies/p.yaml", EXPLAINED)
    got = classify_request(capture(service, method, **kwargs))
    expected = PolicySet.load(tmp_path / "policies").evaluate(principal_from_claims(json.loads(claims.read_text())), got)
    params = json.dumps(got.params, default=str)
    result = run("explain", "--principal-file", str(claims), "--operation", f"{got.service}.{got.operation}",
                 "--params", params, "--region", got.region, "--policies", str(tmp_path / "policies"))
    assert result.exit_code == 0, result.output
    assert f"decision: {expected.decision}\n" in result.output
    assert (f"decided by: rule {expected.rule} (" if expected.rule else "decided by: the default") in result.output
    assert f"reason: {expected.reason}\n" in result.output
    assert f"action: {got.action} " in result.output and f"operation: {got.service}.{got.operation}\n" in result.output


def test_explain_lists_the_tagging_and_the_destination_key_a_call_asks_for(run, claims, tmp_path):
    """Tags set with a create are the service's tagging action too, a ReEncrypt is kms:ReEncryptTo on
    its destination key too: explain lists each with its own decision."""
    write(tmp_path, "policies/p.yaml", EXPLAINED)
    result = run("explain", "--principal-file", str(claims), "--action", "dynamodb:CreateTable", "--params",
                 '{"TableName": "t1", "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}], '
                 '"AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}], '
                 '"Tags": [{"Key": "env", "Value": "prod"}]}', "--policies", str(tmp_path / "policies"))
    assert "decision: deny\n" in result.output and "decided by: rule no-tagging" in result.output
    assert ("also decided (the actions it asks for beside its own):\n  dynamodb:TagResource on t1: deny by rule "
            "no-tagging") in result.output
    result = run("explain", "--principal-file", str(claims), "--operation", "kms.ReEncrypt", "--params",
                 '{"CiphertextBlob": "eA==", "SourceKeyId": "alias/src", "DestinationKeyId": "alias/archive"}',
                 "--policies", str(tmp_path / "policies"))
    assert "decision: deny\n" in result.output and "decided by: rule no-archive" in result.output
    assert ("decided part by part (each as IAM authorises it):\n  kms:ReEncryptFrom on alias/src: allow by rule kms: "
            "rule kms allows kms:ReEncryptFrom\n  kms:ReEncryptTo on alias/archive: deny by rule no-archive") in result.output


def test_explain_describes_an_action_as_one_of_its_operations(run, claims):
    """An action that stands for several operations is described as one of them, and explain says
    which; --operation picks another."""
    result = run("explain", "--principal-file", str(claims), "--action", "s3:ListBucket", "--params",
                 '{"Bucket": "b"}', "--policies", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "operation: s3.HeadBucket" in result.output and "resources: b" in result.output
    assert "note: s3:ListBucket stands for 3 operations; described as s3.HeadBucket (--operation picks another: " \
           "s3.ListObjects, s3.ListObjectsV2)" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "lambda:InvokeFunction", "--policies", str(SHIPPED))
    assert "operation: lambda.Invoke\n" in result.output and "note: lambda:InvokeFunction stands for 2" in result.output


def test_explain_on_broken_policies_lists_the_errors(run, claims, tmp_path):
    write(tmp_path, "p.yaml", "version: 1\nrules:\n  - {id: x, decision: sometimes}\n")
    result = run("explain", "--principal-file", str(claims), "--action", "s3:GetObject", "--policies", str(tmp_path))
    assert result.exit_code != 0
    assert "p.yaml:3: rule x: decision must be allow, deny or approve" in result.output
    assert "do not load" in result.output


def test_a_pipe_among_the_policy_files_is_named_not_waited_on(tmp_path):
    """A FIFO (or another file that is not a regular one) named *.yaml in the policies directory made
    `policy check`, `policy explain` and `run` wait for a writer for ever. It is never opened for
    reading now: each names it, in one line, as not a regular file."""
    import subprocess
    import sys

    from tests.support.gateway import free_port

    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED, policies)
    os.mkfifo(policies / "zz.yaml")
    agentgate = str(Path(sys.executable).parent / "agentgate")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AGENTGATE_HOME": str(tmp_path)}
    said = ("zz.yaml: cannot read: not a regular file but a named pipe (FIFO): policies are read from regular files; "
            "remove it, or move it out of the directory")
    claims = write(tmp_path, "claims.json", '{"sub": "agent-7"}')
    for args in (["policy", "check", str(policies)],
                 ["policy", "explain", "--principal-file", str(claims), "--action", "s3:GetObject",
                  "--policies", str(policies)]):
        p = subprocess.run([agentgate, *args], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and said in p.stdout + p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert subprocess.run([agentgate, "init"], env=env, capture_output=True, timeout=120).returncode == 0
    p = subprocess.run([agentgate, "run", "--listen", f"127.0.0.1:{free_port()}"],
                       env={**env, "AGENTGATE_CONSOLE_LISTEN": ""}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"  {said}" in p.stderr.splitlines() and "Traceback" not in p.stderr, p.stderr


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


# -- the region, the actors and the groups the gateway reads -----------------------------------

@pytest.mark.parametrize("since, until", [("2026-11-29", "2026-11-28"), ("2026-11-28", "2026-11-28"),
                                          ("2026-11-28T01:00:00+01:00", "2026-11-28T00:00:00Z")])
def test_versions_refuse_a_period_that_ends_before_it_starts(home, since, until):
    """As `calls list`, `export` and `report` do: --since at or after --until is a slip of the
    command line, not a period in which no policy decided a call (exit 0, "no policy versions")."""
    from addons.cli import main
    from tests.test_export import write_synthetic

    url = f"sqlite:///{home / 'agentgate.db'}"
    write_synthetic(url, "gw-test")
    result = CliRunner().invoke(main, ["policy", "versions", "--db", url, "--since", since, "--until", until])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: --since (") and "is not before --until" in line, line


AS_THE_GATEWAY = """
    version: 1
    roles: [{role_arn: "arn:aws:iam::123456789012:role/agent-role"}]
    rules:
      - {id: data, action: ["dynamodb:*", "sns:*", "iam:List*", "ec2:Describe*"], decision: allow}
      - {id: us-east-1-only, action: "*", when: "region != 'us-east-1'", decision: deny, reason: agents work in us-east-1}
      - {id: ec2-in-eu, action: "ec2:*", when: "starts_with(region, 'eu-')", decision: approve, approvers: {groups: [sre]}}
      - {id: no-mallory, action: "*", when: "contains(principal.actors, 'mallory')", decision: deny}
      - {id: no-contractors, principal: {groups: [contractors]}, action: "*", decision: deny}
"""


def test_explain_reads_the_region_the_gateway_reads(run, claims, tmp_path):
    """The gateway reads the region of the endpoint a call is sent to. explain takes --region; else
    a global service's (IAM is signed for us-east-1 whatever the SDK's region), else the one the
    call's ARNs name; a call with none of these is refused when a rule that may decide it reads
    region (it was decided as if in no region: a deny outside us-east-1 denied what the gateway
    allowed), and otherwise explained as in none, saying so."""
    write(tmp_path, "p/p.yaml", AS_THE_GATEWAY)
    policies = ("--policies", str(tmp_path / "p"))

    def explain(*args: str):
        return run("explain", "--principal-file", str(claims), *args, *policies)

    result = explain("--action", "dynamodb:ListTables")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the call names no region, and rule us-east-1-only (p.yaml:5), which may decide it, reads region: "
        "give --region, the region of the endpoint the call is sent to, which the gateway reads"]
    result = explain("--action", "dynamodb:ListTables", "--region", "us-east-1")
    assert result.exit_code == 0, result.output
    assert "decision: allow\n" in result.output and "\nregion: us-east-1\n" in result.output
    assert "decided by: rule us-east-1-only" in explain("--action", "dynamodb:ListTables", "--region", "eu-west-1").output

    arn = "arn:aws:sns:eu-west-1:123456789012:alerts"
    result = explain("--action", "sns:GetTopicAttributes", "--params", json.dumps({"TopicArn": arn}))
    assert result.exit_code == 0, result.output
    assert "decided by: rule us-east-1-only (p.yaml:5)" in result.output
    assert "\nregion: eu-west-1 (the region the call's ARN names; the gateway reads the endpoint's: --region names " \
           "it where it differs)\n" in result.output

    for region in ((), ("--region", "eu-west-1")):
        result = explain("--action", "iam:ListUsers", *region)
        assert result.exit_code == 0, result.output
        assert "decided by: rule data (p.yaml:4)" in result.output, result.output
        assert "\nregion: us-east-1 (iam's endpoint is global: the aws partition's calls are signed for us-east-1, " \
               "whatever region the SDK is set to" + ("; not eu-west-1 as --region says" if region else "") + ")\n" \
               in result.output

    # the rules that read region and may decide the call are named, those that cannot decide it left out
    result = explain("--action", "ec2:DescribeInstances")
    assert "rules us-east-1-only (p.yaml:5), ec2-in-eu (p.yaml:6), which may decide it, read region" in result.output
    result = run("explain", "--principal-file", str(claims), "--action", "s3:GetObject", "--params",
                 '{"Bucket": "b", "Key": "k"}', "--policies", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert "\nregion: none (no rule that may decide the call reads it; give --region, the region of the endpoint " \
           "the call is sent to, which the gateway reads)\n" in result.output

    for bad in ("eu-wst1", "us east 1", ""):
        result = explain("--action", "dynamodb:ListTables", "--region", bad)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [
            f"Error: --region {bad!r} is no region of any AWS partition, e.g. us-east-1"], result.output


def test_explain_makes_the_principal_as_the_gateway_does(run, tmp_path, monkeypatch):
    """explain builds the principal with the gateway's own code (identity.principal_of): every actor
    of a nested act claim (a rule on principal.actors denied at the gateway and allowed here), and
    the groups of the groups_claim setting, nested claims walked (`realm_access.roles` read as a
    top-level claim gave no groups); a token file is read as well as a JSON file of claims."""
    from addons.commands.policy import principal_from_claims
    from addons.core import identity

    write(tmp_path, "p/p.yaml", AS_THE_GATEWAY)
    monkeypatch.setenv("AGENTGATE_HOME", str(tmp_path))
    for name in ("AGENTGATE_CONFIG", "AGENTGATE_GROUPS_CLAIM"):
        monkeypatch.delenv(name, raising=False)
    write(tmp_path, "agentgate.toml", 'groups_claim = "realm_access.roles"\n')
    chain = {"sub": "agent-7", "aud": "agentgate", "exp": 4102444800, "act": {"sub": "alice", "act": {"sub": "mallory"}}}
    contractor = {"sub": "agent-8", "aud": "agentgate", "exp": 4102444800, "realm_access": {"roles": ["contractors"]}}
    for claims in (chain, contractor):
        assert principal_from_claims(claims, "realm_access.roles") == identity.principal_from_claims(
            claims, audiences=["agentgate"], groups_claim="realm_access.roles")

    def explain(claims: dict | str):
        path = write(tmp_path, "who", claims if isinstance(claims, str) else json.dumps(claims))
        return run("explain", "--principal-file", str(path), "--action", "dynamodb:ListTables", "--region", "us-east-1",
                   "--policies", str(tmp_path / "p"))

    result = explain(chain)
    assert result.exit_code == 0, result.output
    assert "decided by: rule no-mallory (p.yaml:7)" in result.output
    assert "principal: agent-7 on behalf of alice (actors: alice, mallory)\n" in result.output
    result = explain(contractor)
    assert "decided by: rule no-contractors (p.yaml:8)" in result.output
    assert "principal: agent-8 (groups: contractors)\n" in result.output
    assert "note: groups are read from the claim realm_access.roles (the groups_claim setting)" in result.output
    # the token an agent holds, its claims read without checking its signature
    token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                     for part in ({"alg": "RS256"}, contractor)) + ".c2ln"
    result = explain(token + "\n")
    assert result.exit_code == 0 and "decided by: rule no-contractors (p.yaml:8)" in result.output, result.output
    assert "decision: allow" in explain({"sub": "agent-9", "realm_access": {"roles": ["data-agents"]}}).output

    for claims, words in (({"sub": "a", "act": {"act": {"sub": "b"}}}, "its act claim is not an object with a sub"),
                          ({"sub": "a", "realm_access": {"roles": "x,y".split(",") + [1]}},
                           "its 'realm_access.roles' claim is not a list of strings"),
                          ("e30.e30.x.y", "is not JSON"), ("e30.bm90IGpzb24.c2ln", "the claims is not JSON")):
        result = explain(claims)
        assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_explain_agrees_with_a_gateway(tmp_path, issuer, moto, monkeypatch):
    """The same calls, made through a real gateway (upstream moto) by agents holding tokens, and
    explained in the gateway's home with those token files: both decide each alike, by the same
    rule, in the same region. The region is the endpoint's (a global service's whatever the SDK's
    region, else the one the ARN names); the actors of a nested act claim and groups under a nested
    claim count."""
    import boto3
    import botocore.config
    import botocore.exceptions

    from tests.support.gateway import Gateway

    tokens = {
        "agent-plain": issuer.mint("agent-plain", groups=None, extra={"realm_access": {"roles": ["data-agents"]}}),
        "agent-chain": issuer.mint("agent-chain", groups=None, act={"sub": "alice", "act": {"sub": "mallory"}}),
        "agent-contractor": issuer.mint("agent-contractor", groups=None,
                                        extra={"realm_access": {"roles": ["contractors"]}}),
    }
    topic = "arn:aws:sns:eu-west-1:123456789012:alerts"
    list_tables = ("dynamodb", "list_tables", {}, ["--action", "dynamodb:ListTables"])
    cases = [  # who, the SDK's region, the call, explain's arguments; the rule that decides it
        ("agent-plain", "us-east-1", list_tables, ["--region", "us-east-1"], "data"),
        ("agent-plain", "eu-west-1", list_tables, ["--region", "eu-west-1"], "us-east-1-only"),
        ("agent-plain", "eu-west-1", ("sns", "get_topic_attributes", {"TopicArn": topic},
                                      ["--action", "sns:GetTopicAttributes", "--params", json.dumps({"TopicArn": topic})]),
         [], "us-east-1-only"),
        ("agent-plain", "eu-west-1", ("iam", "list_users", {}, ["--action", "iam:ListUsers"]), [], "data"),
        ("agent-chain", "us-east-1", list_tables, ["--region", "us-east-1"], "no-mallory"),
        ("agent-contractor", "us-east-1", list_tables, ["--region", "us-east-1"], "no-contractors"),
    ]
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=textwrap.dedent(AS_THE_GATEWAY),
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 settings={"groups_claim": "realm_access.roles"}) as gw:
        monkeypatch.setenv("AGENTGATE_HOME", str(gw.home))
        made: dict[str, int] = {}
        for who, region, (service, method, kwargs, described), where, rule in cases:
            client = boto3.client(service, region_name=region, aws_access_key_id="agentgate", aws_secret_access_key="x",
                                  verify=str(gw.ca_file), config=botocore.config.Config(
                                      proxies={"https": gw.proxy_url(tokens[who])}, retries={"total_max_attempts": 1}))
            try:
                getattr(client, method)(**kwargs)
            except botocore.exceptions.ClientError:
                pass
            made[who] = made.get(who, 0) + 1
            deadline = time.monotonic() + 10
            while len(found := [r for r in gw.records() if r["principal"] == who and r["kind"] == "call"]) < made[who]:
                assert time.monotonic() < deadline, f"the gateway recorded no {method} of {who}"
                time.sleep(0.05)
            record = found[-1]
            assert (record["action"], record["rule"]) == (described[1], rule), record
            payload = tokens[who].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            for principal_file in (write(tmp_path, f"{who}.json", json.dumps(claims)),
                                   write(tmp_path, f"{who}.jwt", tokens[who])):
                result = CliRunner().invoke(policy, ["explain", "--principal-file", str(principal_file), *described,
                                                     *where])
                assert result.exit_code == 0, result.output
                said = (principal_file.name, record["decision"], record["rule"], record["region"])
                assert f"decision: {record['decision']}\n" in result.output, (said, result.output)
                assert f"decided by: rule {record['rule']} (" in result.output, (said, result.output)
                assert f"\nregion: {record['region']}" in result.output, (said, result.output)


def test_the_format_example_of_the_policies_readme_loads_and_decides_as_annotated(run, tmp_path):
    """policies/README.md's annotated example is what an author copies first: it loads, and its
    approve rule holds a terminate in eu-west-1 for group sre (it once carried mask_for_agent, which
    only allow rules take, and did not load)."""
    text = (SHIPPED / "README.md").read_text()
    example = text.split("## Format", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    write(tmp_path / "p", "format.yaml", example)
    shutil.copytree(SHIPPED / "session", tmp_path / "p" / "session")
    result = run("check", str(tmp_path / "p"))
    assert result.exit_code == 0 and ": OK; version " in result.output, result.output
    claims = write(tmp_path, "agent.json", json.dumps({"sub": "agent-7", "groups": ["agents", "data-agents"]}))
    result = run("explain", "--policies", str(tmp_path / "p"), "--principal-file", str(claims),
                 "--action", "ec2:TerminateInstances", "--region", "eu-west-1")
    assert result.exit_code == 0 and "decision: approve" in result.output, result.output
    assert "prod-terminate-needs-a-human" in result.output and "sre" in result.output


def test_check_warns_that_contains_on_resource_tests_a_whole_name(run, tmp_path):
    """`resource` is a list of names: contains(resource, 'prod/') holds only for a resource named
    exactly prod/, so a deny meant for every secret under prod/ never matched, silently. check says
    so, with the prefix's form; a whole name is what contains() is for, and is not warned."""
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - id: prod-secrets-stay
            action: "secretsmanager:*"
            when: "contains(resource, 'prod/') || contains(resource, 'logs-*')"
            decision: deny
          - id: one-secret-stays
            action: "secretsmanager:*"
            when: "contains(resource, 'prod/db')"
            decision: deny
        """)
    result = run("check", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert ("p.yaml:5: warning: rule prod-secrets-stay: when tests contains(resource, 'prod/'): resource is a list "
            "of names, so this holds only for a name equal to 'prod/', not for names starting with it; for a prefix "
            "write length(resource[?starts_with(@, 'prod/')]) > `0`") in result.output
    assert "contains(resource, 'logs-*'): resource is a list of names" in result.output
    assert "one-secret-stays" not in result.output and "(2 warnings)" in result.output
