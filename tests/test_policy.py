"""The policy engine (addons/core/policy.py): loading, matching, deciding, reloading, and the
shipped default policies."""

from __future__ import annotations

import functools
import json
import os
import re
import textwrap
import time
import types
from pathlib import Path
from types import SimpleNamespace

import jmespath
import pytest

from addons.core import policy as engine
from addons.core.policy import Decision, PolicyError, PolicySet, PolicyStore, RoleBinding

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def principal(sub="agent-1", groups=("dev",), claims=None, on_behalf_of=None):
    claims = dict(claims or {})
    claims.setdefault("sub", sub)
    claims.setdefault("groups", list(groups))
    return SimpleNamespace(sub=sub, iss="https://issuer.test", aud=("agentgate",), groups=tuple(groups),
                           on_behalf_of=on_behalf_of, exp=time.time() + 600,
                           claims=types.MappingProxyType(claims))


def call(action, access_level=None, params=None, resources=(), region="us-east-1", account="123456789012",
         error=None):
    service, _, operation = action.partition(":")
    return SimpleNamespace(service=service, operation=operation or action, protocol="json", signing_name=service,
                           region=region, account=account, params=params or {}, resources=list(resources),
                           action=action, access_level=access_level, error=error)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str, name: str = "p.yaml") -> PolicySet:
    write(tmp_path, name, text)
    return PolicySet.load(tmp_path)


def errors_of(tmp_path: Path) -> list[str]:
    with pytest.raises(PolicyError) as e:
        PolicySet.load(tmp_path)
    assert str(e.value) == "\n".join(e.value.errors)
    return e.value.errors


# ------------------------------------------------------------------------------ actions


def test_action_globs_are_iam_style_and_case_insensitive(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: describe, action: "ec2:Describe*", decision: allow}
          - {id: one-char, action: "s3:Get?bject", decision: allow}
          - {id: listed, action: [sqs:SendMessage, "SNS:publish"], decision: allow}
          - {id: any-prefix, action: "*:ListTagsForResource", decision: allow}
    """)
    who = principal()
    assert ps.evaluate(who, call("ec2:DescribeInstances")).rule == "describe"
    assert ps.evaluate(who, call("EC2:describeinstances")).rule == "describe"
    assert ps.evaluate(who, call("ec2:DescribeVpcs")).decision == "allow"
    assert ps.evaluate(who, call("ec2:RunInstances")).decision == "deny"
    assert ps.evaluate(who, call("s3:GetObject")).rule == "one-char"
    assert ps.evaluate(who, call("s3:GetXbject")).rule == "one-char"
    assert ps.evaluate(who, call("s3:GetObjectAcl")).decision == "deny"  # ? is one character, and globs are whole
    assert ps.evaluate(who, call("sqs:sendmessage")).rule == "listed"
    assert ps.evaluate(who, call("sns:Publish")).rule == "listed"
    assert ps.evaluate(who, call("rds:ListTagsForResource")).rule == "any-prefix"
    assert ps.evaluate(who, call("rds:ListTagsForResources")).decision == "deny"


def test_star_and_actionless_rules_do_not_match_unknown_calls(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: everything, action: "*", decision: allow}
          - {id: no-action, decision: allow, mask_for_agent: [X]}
    """)
    assert ps.evaluate(principal(), call("anything:AtAll")).rule == "everything"
    d = ps.evaluate(principal(), call("unknown", error="no operation matches POST /"))
    assert (d.decision, d.rule, d.considered) == ("deny", None, ())
    assert "could not be classified (no operation matches POST /)" in d.reason
    assert d.reason.endswith("default is deny")
    # a call with no action at all counts as unknown
    nameless = call("x:Y")
    nameless.action = None
    assert ps.evaluate(principal(), nameless).decision == "deny"


def test_unknown_matches_only_a_rule_that_names_it(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: allow-unknown-for-sre, action: [unknown], principal: {groups: sre}, decision: allow}
          - {id: also-s3, action: [Unknown, "s3:*"], decision: approve, approvers: {groups: [sre]}}
    """)
    d = ps.evaluate(principal(groups=("sre",)), call("unknown"))
    assert (d.decision, d.rule, d.considered) == ("approve", "also-s3", ("allow-unknown-for-sre", "also-s3"))
    assert ps.evaluate(principal(), call("s3:GetObject", "Read")).rule == "also-s3"
    assert ps.evaluate(principal(), call("ec2:RunInstances", "Write")).rule is None


def test_default_allow_still_denies_unknown(tmp_path):
    ps = load(tmp_path, """
        version: 1
        default: allow
    """)
    d = ps.evaluate(principal(), call("ec2:RunInstances", "Write"))
    assert (d.decision, d.rule, d.reason) == ("allow", None, "no rule matches ec2:RunInstances; default is allow")
    assert ps.evaluate(principal(), call("unknown")).decision == "deny"


def test_access_levels(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: reads, access_level: [List, read], decision: allow}
          - id: perms
            access_level: Permissions Management
            decision: approve
            approvers: {groups: [sre]}
          - {id: writes, access_level: [Write], decision: deny}
    """)
    who = principal()
    assert ps.evaluate(who, call("ec2:DescribeInstances", "List")).rule == "reads"
    assert ps.evaluate(who, call("s3:GetObject", "Read")).rule == "reads"
    assert ps.evaluate(who, call("s3:PutObject", "Write")).rule == "writes"
    # IAM's data gives some actions two levels: the specific one counts
    d = ps.evaluate(who, call("s3:PutBucketPolicy", "Permissions management, Write"))
    assert (d.decision, d.rule, d.considered) == ("approve", "perms", ("perms",))
    assert ps.evaluate(who, call("s3:PutBucketPolicy", "Permissions management")).rule == "perms"
    assert ps.evaluate(who, call("ec2:CreateTags", "Tagging, Write")).rule is None
    # no access level (IAM's data has no entry): the deny on Write matches (below)
    assert ps.evaluate(who, call("s3:HeadObject", None)).rule == "writes"


@pytest.mark.parametrize("action", ["iam:UpdateOpenIDConnectProvider", "s3:RenameObject"])
def test_an_action_of_no_access_level_is_kept_back_by_rules_on_write_never_let_through_by_one(tmp_path, action):
    """IAM's data gives some operations no access level (newer than the data, or of a service it
    lacks): a rule that denies or holds Write matches them, so "deny Write" beside "allow iam:*"
    does not let them through; an allow on a level never matches them (what they do is not known);
    the call's access_level stays null."""
    from addons.core import actions

    service, _, operation = action.partition(":")
    assert actions.iam_action(service, operation) == (action, None)  # IAM's data, as shipped
    who, unlevelled = principal(), call(action, None)
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: iam-and-s3, action: ["iam:*", "s3:*"], decision: allow}
          - {id: no-writes, access_level: [Write], decision: deny}
    """)
    d = ps.evaluate(who, unlevelled)
    assert (d.decision, d.rule) == ("deny", "no-writes") and unlevelled.access_level is None
    text = engine.explain(ps, who, unlevelled)
    assert f"action: {action} (access level: not in IAM data; deny and approve rules on Write match it)" in text
    assert "[match] no-writes (p.yaml:4, deny): matches: any action; no access level in IAM data, matched as Write" in text
    held = load(tmp_path / "held", """
        version: 1
        rules:
          - {id: named, action: "iam:*", decision: allow}
          - {id: writes-need-a-human, access_level: [Write, Tagging], decision: approve, approvers: {groups: [sre]}}
          - {id: no-reads, access_level: [Read], decision: deny}
    """)
    assert held.evaluate(who, unlevelled).rule == "writes-need-a-human"  # Read and Tagging alone would not
    allowed = load(tmp_path / "allowed", """
        version: 1
        rules:
          - {id: writes, access_level: [List, Read, Write, Tagging, Permissions management], decision: allow}
    """)
    d = allowed.evaluate(who, unlevelled)
    assert (d.decision, d.rule) == ("deny", None)  # no allow on levels lets it through: only one naming it
    assert "[   no] writes (p.yaml:3, allow): the action has no access level in IAM data" in engine.explain(
        allowed, who, unlevelled)


def test_a_deny_on_write_whose_condition_fails_keeps_back_an_action_of_no_access_level(tmp_path):
    """A deny rule on Write whose condition cannot be evaluated on a call of no access level counts
    as matching it (fails closed), and explain says both why the level matched and the condition
    failed; policy explain's region question names it among the rules that may decide the call."""
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: iam, action: "iam:*", decision: allow}
          - {id: no-big-writes, access_level: [Write], decision: deny, when: "params.MaxItems > `100` || region == 'x'"}
          - {id: levels, access_level: [Read, Write], decision: allow, when: "params.Nope > `1`"}
    """)
    who, unlevelled = principal(), call("iam:UpdateOpenIDConnectProvider", None, params={"MaxItems": "7"})
    d = ps.evaluate(who, unlevelled)
    assert (d.decision, d.rule) == ("deny", "no-big-writes") and "a deny rule fails closed" in d.reason
    text = engine.explain(ps, who, unlevelled)
    assert ("[match] no-big-writes (p.yaml:4, deny): matches: any action; no access level in IAM data, matched as "
            "Write by a deny rule; condition failed: when `params.MaxItems > `100` || region == 'x'`: ") in text
    assert "[   no] levels (p.yaml:5, allow): the action has no access level in IAM data" in text
    assert [r.id for r in ps.rules_reading("region", who, unlevelled)] == ["no-big-writes"]


def test_check_knows_a_rule_on_write_matches_actions_of_no_level(tmp_path):
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: deny-renames, action: s3:RenameObject, access_level: Write, decision: deny}
          - {id: allow-renames, action: s3:RenameObject, access_level: Write, decision: allow}
    """)
    found = engine.check(tmp_path)
    assert not any("deny-renames" in line for line in found), found
    assert any("rule allow-renames matches no known action" in line and "s3:RenameObject is of no access level"
               in line for line in found), found


def test_access_level_of():
    assert engine.access_level_of("Permissions management, Write") == "Permissions management"
    assert engine.access_level_of("Tagging, Write") == "Tagging"
    assert engine.access_level_of("write") == "Write"
    assert engine.access_level_of(None) is None
    assert engine.access_level_of("Bogus") is None


# ------------------------------------------------------------------------------ principals


def test_principal_sub_groups_and_claims(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: by-sub, action: "s3:GetObject", principal: {sub: alice}, decision: allow}
          - {id: by-sub-list, action: "s3:PutObject", principal: {sub: [bob, "ci-*"]}, decision: allow}
          - {id: by-group, action: "ec2:Describe*", principal: {groups: [ops, sre]}, decision: allow}
          - id: by-claims
            action: "rds:Describe*"
            principal: {claims: "contains(scopes, 'rds') && tenant == 'acme'"}
            decision: allow
          - id: all-keys
            action: "sqs:*"
            principal: {sub: carol, groups: sre, claims: "mfa"}
            decision: allow
    """)
    assert ps.evaluate(principal("alice"), call("s3:GetObject")).decision == "allow"
    assert ps.evaluate(principal("alice2"), call("s3:GetObject")).decision == "deny"
    assert ps.evaluate(principal("bob"), call("s3:PutObject")).decision == "allow"
    assert ps.evaluate(principal("ci-build-7"), call("s3:PutObject")).decision == "allow"
    assert ps.evaluate(principal("xci-build"), call("s3:PutObject")).decision == "deny"
    assert ps.evaluate(principal(groups=("dev", "sre")), call("ec2:DescribeVpcs")).decision == "allow"
    assert ps.evaluate(principal(groups=("dev",)), call("ec2:DescribeVpcs")).decision == "deny"
    assert ps.evaluate(principal(groups=()), call("ec2:DescribeVpcs")).decision == "deny"
    good = principal(claims={"scopes": ("rds", "s3"), "tenant": "acme"})  # tuples, as a frozen Principal holds
    assert ps.evaluate(good, call("rds:DescribeDBInstances")).decision == "allow"
    assert ps.evaluate(principal(claims={"scopes": ["rds"], "tenant": "other"}),
                       call("rds:DescribeDBInstances")).decision == "deny"
    # a claims expression that fails (scopes missing: contains(null, ...)) does not allow: a failing
    # condition counts as holding only for deny and approve rules, which so fail closed
    assert ps.evaluate(principal(claims={"tenant": "acme"}), call("rds:DescribeDBInstances")).decision == "deny"
    assert ps.evaluate(principal("carol", ("sre",), {"mfa": True}), call("sqs:SendMessage")).decision == "allow"
    assert ps.evaluate(principal("carol", ("sre",), {"mfa": False}), call("sqs:SendMessage")).decision == "deny"
    assert ps.evaluate(principal("carol", ("dev",), {"mfa": True}), call("sqs:SendMessage")).decision == "deny"
    assert ps.evaluate(None, call("s3:GetObject")).decision == "deny"


def test_contains_on_a_claim_given_as_a_string_is_a_substring_test(tmp_path):
    """The trap policies/README.md warns of: a groups claim given as one string makes
    `contains(groups, 'admins')` a substring test; `principal.groups` (always a list of whole
    names) and the `groups:` matcher are not fooled."""
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: by-claim, action: "s3:GetObject", principal: {claims: "contains(groups, 'admins')"}, decision: allow}
          - {id: by-when, action: "s3:PutObject", when: "contains(principal.groups, 'admins')", decision: allow}
          - {id: by-groups, action: "s3:DeleteObject", principal: {groups: [admins]}, decision: allow}
    """)
    observer = principal(groups=("readonly-admins-observer",), claims={"groups": "readonly-admins-observer"})
    assert ps.evaluate(observer, call("s3:GetObject")).decision == "allow"  # the trap
    assert ps.evaluate(observer, call("s3:PutObject")).decision == "deny"
    assert ps.evaluate(observer, call("s3:DeleteObject")).decision == "deny"
    admin = principal(groups=("admins",), claims={"groups": "admins"})
    assert ps.evaluate(admin, call("s3:PutObject")).decision == "allow"
    assert ps.evaluate(admin, call("s3:DeleteObject")).decision == "allow"


def test_principal_matches_helper_for_approvers():
    sre = principal("dana", ("sre",))
    assert engine.principal_matches({"groups": ("sre",)}, sre)
    assert engine.principal_matches({"groups": "sre"}, sre)
    assert not engine.principal_matches({"groups": ["dba"]}, sre)
    assert engine.principal_matches({"sub": ["dana", "erin"]}, sre)
    assert engine.principal_matches({"claims": "contains(groups, 'sre')"}, sre)
    assert not engine.principal_matches({"sub": ["dana"], "groups": ["dba"]}, sre)
    assert not engine.principal_matches({"groups": ["sre"]}, None)


# ------------------------------------------------------------------------------ conditions


def test_when_conditions_over_the_call_and_principal(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - id: terminate-some
            action: ec2:TerminateInstances
            when: "length(params.InstanceIds) > `0` && region == 'eu-west-1'"
            decision: allow
          - id: own-bucket
            action: "s3:GetObject"
            when: "length(resource) > `0` && !(resource[?!starts_with(@, 'arn:aws:s3:::alice-')])"
            decision: allow
          - id: on-behalf
            action: "s3:PutObject"
            when: "principal.on_behalf_of != null && principal.claims.team == 'data' && account == '123456789012'"
            decision: allow
          - id: by-names
            action: "dynamodb:*"
            when: "service == 'dynamodb' && operation == 'GetItem' && action == 'dynamodb:GetItem' && access_level == 'Read'"
            decision: allow
          - id: groups-in-when
            action: "sqs:*"
            when: "contains(principal.groups, 'dev')"
            decision: allow
    """)
    who = principal("alice")
    assert ps.evaluate(who, call("ec2:TerminateInstances", params={"InstanceIds": ["i-1"]}, region="eu-west-1")).decision == "allow"
    assert ps.evaluate(who, call("ec2:TerminateInstances", params={"InstanceIds": []}, region="eu-west-1")).decision == "deny"
    assert ps.evaluate(who, call("ec2:TerminateInstances", params={"InstanceIds": ["i-1"]})).decision == "deny"
    # a runtime type error (length of null): an allow rule does not allow so
    assert ps.evaluate(who, call("ec2:TerminateInstances", region="eu-west-1")).decision == "deny"
    assert ps.evaluate(who, call("s3:GetObject", resources=["arn:aws:s3:::alice-data/k"])).decision == "allow"
    assert ps.evaluate(who, call("s3:GetObject", resources=["arn:aws:s3:::alice-data/k", "arn:aws:s3:::bob/k"])).decision == "deny"
    team = principal("svc", claims={"team": "data"}, on_behalf_of="alice")
    assert ps.evaluate(team, call("s3:PutObject")).decision == "allow"
    assert ps.evaluate(principal("svc", claims={"team": "data"}), call("s3:PutObject")).decision == "deny"
    assert ps.evaluate(team, call("s3:PutObject", account="999999999999")).decision == "deny"
    assert ps.evaluate(who, call("dynamodb:GetItem", "Read")).decision == "allow"
    assert ps.evaluate(who, call("dynamodb:GetItem", "Write")).decision == "deny"
    assert ps.evaluate(who, call("sqs:SendMessage")).decision == "allow"
    assert ps.evaluate(principal(groups=("ops",)), call("sqs:SendMessage")).decision == "deny"


def test_a_deny_or_approve_rule_whose_condition_fails_on_a_call_matches_it(tmp_path):
    """A condition that cannot be evaluated on a call counts as holding for deny and approve rules:
    a BatchWriteItem names no TableName, and `starts_with(null, ...)` let it past the deny to the
    broader allow; Route 53's MaxItems is a string, and `> `100`` raised, so the deny never matched."""
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: data, action: ["dynamodb:*", "route53:*", "ec2:*"], decision: allow}
          - id: audit-tables
            action: "dynamodb:*"
            when: "starts_with(params.TableName, 'audit-')"
            decision: deny
            reason: audit tables are append-only
          - id: big-pages
            action: "route53:*"
            when: "params.MaxItems > `100`"
            decision: deny
          - id: terminate-tagged
            action: ec2:TerminateInstances
            when: "length(params.InstanceIds) > `1`"
            decision: approve
            approvers: {groups: [sre]}
    """)
    who = principal()
    d = ps.evaluate(who, call("dynamodb:BatchWriteItem", "Write", {"RequestItems": {"audit-log": []}}, ["audit-log"]))
    assert (d.decision, d.rule) == ("deny", "audit-tables")
    assert d.reason == (
        "the condition of rule audit-tables could not be evaluated on this call (when `starts_with(params.TableName, "
        "'audit-')`: starts_with() takes string, not null), so the rule"
        " counts as matching it: a deny rule fails closed; guard what it reads, e.g. "
        "`params.TableName && starts_with(params.TableName, 'audit-')`, or read `resource`, which lists what every "
        "call names")
    # where the condition evaluates, it decides as written
    d = ps.evaluate(who, call("dynamodb:PutItem", "Write", {"TableName": "audit-2024"}))
    assert (d.decision, d.reason) == ("deny", "audit tables are append-only")
    assert ps.evaluate(who, call("dynamodb:PutItem", "Write", {"TableName": "orders"})).rule == "data"
    d = ps.evaluate(who, call("route53:ListHostedZones", "List", {"MaxItems": "200"}))
    assert (d.decision, d.rule) == ("deny", "big-pages")
    assert ("(when `params.MaxItems > `100``: '>' not supported between instances of 'str' and 'int'), so the rule "
            "counts as matching it: a deny rule fails closed; make it hold for the types this call's members have "
            "(to_number(), to_string())") in d.reason
    assert ps.evaluate(who, call("route53:ListHostedZones", "List")).rule == "data"  # null > 100 is null: no match
    d = ps.evaluate(who, call("ec2:TerminateInstances", "Write"))
    assert (d.decision, d.rule, dict(d.approvers)) == ("approve", "terminate-tagged", {"groups": ("sre",)})
    assert d.reason.startswith("the condition of rule terminate-tagged could not be evaluated on this call (when "
                               "`length(params.InstanceIds) > `1``: length() takes string or array or object, not null")
    assert "so the rule counts as matching it: an approve rule fails closed" in d.reason
    assert ps.evaluate(who, call("ec2:TerminateInstances", "Write", {"InstanceIds": ["i-1"]})).rule == "data"


def test_a_failing_principal_claims_condition_counts_for_deny_but_does_not_allow(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: s3, action: "s3:*", decision: allow}
          - {id: no-contractors, action: "s3:Put*", principal: {claims: "starts_with(dept, 'contract')"}, decision: deny}
          - {id: mfa-reads, action: "kms:*", principal: {claims: "contains(amr, 'mfa')"}, decision: allow}
    """)
    d = ps.evaluate(principal(claims={"dept": "contracting"}), call("s3:PutObject", "Write"))
    assert (d.decision, d.reason) == ("deny", "rule no-contractors denies s3:PutObject")
    assert ps.evaluate(principal(claims={"dept": "eng"}), call("s3:PutObject", "Write")).rule == "s3"
    d = ps.evaluate(principal(), call("s3:PutObject", "Write"))  # a token without a dept claim
    assert (d.decision, d.rule) == ("deny", "no-contractors")
    assert "(principal claims `starts_with(dept, 'contract')`: starts_with() takes string, not null)" in d.reason and "e.g. `dept && starts_with(dept, 'contract')`" in d.reason
    assert ps.evaluate(principal(claims={"amr": ["pwd", "mfa"]}), call("kms:Decrypt", "Write")).rule == "mfa-reads"
    d = ps.evaluate(principal(), call("kms:Decrypt", "Write"))  # no amr claim: the allow does not allow
    assert (d.decision, d.rule) == ("deny", None)
    # role bindings and approvers stay as they were: a failing claims expression grants nothing
    assert not engine.principal_matches({"claims": "contains(amr, 'mfa')"}, principal())


def test_an_allow_rule_whose_condition_fails_does_not_allow_but_its_masks_hold(tmp_path):
    """Masks protect: an allow rule whose condition cannot be evaluated must not unmask what it
    masks when another rule allows the call."""
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: reads, access_level: [List, Read], decision: allow}
          - id: prod-secrets-masked
            action: secretsmanager:GetSecretValue
            when: "starts_with(params.SecretId, 'prod/')"
            mask_for_agent: [SecretString]
            decision: allow
          - id: owner-masks
            action: secretsmanager:GetSecretValue
            when: "principal.claims.team == 'data' && length(principal.on_behalf_of) > `0`"
            mask_for_agent: [SecretBinary]
            decision: allow
    """)
    who = principal(claims={"team": "data"})
    d = ps.evaluate(who, call("secretsmanager:GetSecretValue", "Read", {"SecretId": "prod/db"}))
    assert (d.decision, d.rule, d.mask_for_agent) == ("allow", "reads", ("SecretString", "SecretBinary"))
    assert d.considered == ("reads", "prod-secrets-masked", "owner-masks")
    d = ps.evaluate(who, call("secretsmanager:GetSecretValue", "Read", {"SecretId": "dev/db"}))
    assert d.mask_for_agent == ("SecretBinary",)
    d = ps.evaluate(who, call("secretsmanager:GetSecretValue", "Read", {"SecretId": 7}))  # a type error
    assert (d.decision, d.rule, d.mask_for_agent) == ("allow", "reads", ("SecretString", "SecretBinary"))
    # alone, a failing allow rule allows nothing
    ps = load(tmp_path, """
        version: 1
        rules:
          - id: prod-secrets-masked
            action: secretsmanager:GetSecretValue
            when: "starts_with(params.SecretId, 'prod/')"
            mask_for_agent: [SecretString]
            decision: allow
    """)
    d = ps.evaluate(who, call("secretsmanager:GetSecretValue", "Read"))
    assert (d.decision, d.rule) == ("deny", None)


def test_explain_says_which_condition_failed_and_how_it_counted(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: data, action: "dynamodb:*", decision: allow}
          - {id: audit-tables, action: "dynamodb:*", when: "starts_with(params.TableName, 'audit-')", decision: deny}
          - {id: masked, action: "dynamodb:*", when: "length(params.Key) > `0`", decision: allow,
             mask_for_agent: [Item.ssn]}
    """)
    text = engine.explain(ps, principal(), call("dynamodb:BatchWriteItem", "Write", {"RequestItems": {}}))
    assert "decision: deny" in text and "decided by: rule audit-tables (p.yaml:4)" in text
    assert "reason: the condition of rule audit-tables could not be evaluated on this call" in text
    assert ("[match] audit-tables (p.yaml:4, deny): matches: action matches dynamodb:*; condition failed: when "
            "`starts_with(params.TableName, 'audit-')`: starts_with() takes string, not null, counted as matching") in text
    assert ("[   no] masked (p.yaml:5, allow): condition failed: when `length(params.Key) > `0``: "
            "length() takes string or array or object, not null, so it does not allow; its mask_for_agent still applies") in text


def test_check_warns_about_a_deny_rule_whose_condition_fails_on_every_call_of_some_operations(tmp_path):
    """With a failing condition counted as matching, `starts_with(params.TableName, ...)` on
    dynamodb:* denies every BatchWriteItem, ListTables, ... call: check says so, where it is
    certain (the condition reads only parameters and what the operation fixes)."""
    write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: data, action: "dynamodb:*", decision: allow}
          - id: audit-tables
            action: "dynamodb:*"
            when: "starts_with(params.TableName, 'audit-')"
            decision: deny
          - id: guarded
            action: "dynamodb:*"
            when: "params.TableName && starts_with(params.TableName, 'audit-')"
            decision: deny
          - id: scoped
            action: "dynamodb:*"
            when: "operation == 'PutItem' && starts_with(params.TableName, 'audit-')"
            decision: approve
            approvers: {groups: [sre]}
          - id: by-principal
            action: "dynamodb:*"
            when: "principal.sub == 'x' && starts_with(params.TableName, 'audit-')"
            decision: deny
          - id: whole-params
            action: "dynamodb:*"
            when: "starts_with(values(params)[0], 'audit-')"
            decision: deny
          - id: allow-fails
            action: "dynamodb:*"
            when: "starts_with(params.TableName, 'dev-')"
            decision: allow
          - id: sliced
            action: "dynamodb:*"
            when: "length(params.TableName[::-1]) > `50`"
            decision: deny
    """)
    found = [p for p in engine.check(tmp_path) if "when fails" in p]
    assert len(found) == 2
    assert found[1].startswith("p.yaml:31: warning: rule sliced: when fails on every call of dynamodb.BatchGetItem, ")
    assert found[0].startswith(
        "p.yaml:6: warning: rule audit-tables: when fails on every call of dynamodb.BatchGetItem, "
        "dynamodb.BatchWriteItem, dynamodb.CreateGlobalTable or ")
    assert found[0].endswith(
        " more, which take no params.TableName, and a deny rule whose condition fails counts as matching: it denies "
        "them all; if it is not meant for them, guard what it reads (`params.TableName && ...`) or narrow its action")
    assert "dynamodb.PutItem" not in found[0] and "dynamodb.TransactWriteItems" not in found[0]


@pytest.mark.parametrize("expression", [
    "a", "a.b.c", "a[0]", "a[-1]", "a[1:3]", "a[::-1]", "a[*].b", "a[].b", "a[]", "*.b", "a.*",
    "a[?b == `1`].c", "a[?b > `1`]", "a[?b >= `1` && c != 'x']", "a[?!b]", "!a", "!`0`", "!`[]`", "!c",
    "a || c", "c && a", "x || `null`", "[a, c]", "{x: a, y: c}", "a | [0]", "length(a)", "length(c)",
    "contains(a, `1`)", "contains(c, 'x')", "contains(`null`, 'x')", "starts_with(c, 'x')", "ends_with(c, 'z')",
    "starts_with(a, 'x')", "sort_by(a, &b)[].b", "max_by(a, &b).b", "keys(@)", "to_string(a)", "not_null(x, c)",
    "`1` == `true`", "`0` == `false`", "c == 'xyz'", "c < 'y'", "a < `1`", "@", "d.e || 'none'", "a[?b]|[0].b",
    "length(a[?b > `1`]) > `0`", "type(a)", "join(',', [c, c])", "map(&b, a)",
])
def test_compiled_expressions_agree_with_jmespath(expression):
    data = {"a": [{"b": 1, "c": "x"}, {"b": 2}, {"b": 3, "c": "y"}], "c": "xyz", "d": {"e": ""}}
    def run(f):
        try:
            return ("ok", f())
        except Exception as e:
            return ("error", type(e).__name__)
    expected = run(lambda: jmespath.search(expression, data))
    assert run(lambda: engine.compile_expression(expression)(data)) == expected


# ------------------------------------------------------------------------------ deciding


def test_deny_beats_approve_beats_allow_whatever_the_order_and_file(tmp_path):
    write(tmp_path, "a.yaml", """
        version: 1
        rules:
          - {id: allow-all-ec2, action: "ec2:*", decision: allow, mask_for_agent: [A]}
          - {id: approve-terminate, action: "ec2:Terminate*", decision: approve, approvers: {groups: [sre]}, expires: 30m}
    """)
    write(tmp_path, "b.yaml", """
        version: 1
        rules:
          - {id: deny-prod, action: "ec2:TerminateInstances", when: "region == 'us-east-1'", decision: deny,
             reason: production instances are never terminated by agents}
          - {id: allow-terminate, action: "ec2:TerminateInstances", decision: allow}
          - {id: approve-again, action: "ec2:TerminateInstances", decision: approve, approvers: {sub: [root]}}
    """)
    ps = PolicySet.load(tmp_path)
    d = ps.evaluate(principal(), call("ec2:TerminateInstances", "Write", region="us-east-1"))
    assert d.decision == "deny" and d.rule == "deny-prod"
    assert d.reason == "production instances are never terminated by agents"
    assert d.considered == ("allow-all-ec2", "approve-terminate", "deny-prod", "allow-terminate", "approve-again")
    assert d.approvers is None and d.expires is None
    assert d.mask_for_agent == ("A",)  # masks of matching allow rules apply whichever rule decided
    d = ps.evaluate(principal(), call("ec2:TerminateInstances", "Write", region="eu-west-1"))
    # two approve rules naming different approvers: one approval cannot stand for both
    assert (d.decision, d.rule) == ("deny", "agentgate:approvers-differ")
    assert "approve-terminate (approvers: group sre)" in d.reason and "approve-again (approvers: sub root)" in d.reason
    (tmp_path / "b.yaml").write_text(textwrap.dedent("""
        version: 1
        rules:
          - {id: deny-prod, action: "ec2:TerminateInstances", when: "region == 'us-east-1'", decision: deny,
             reason: production instances are never terminated by agents}
          - {id: allow-terminate, action: "ec2:TerminateInstances", decision: allow}
          - {id: approve-again, action: "ec2:TerminateInstances", decision: approve, approvers: {groups: [sre]}}
    """))
    ps = PolicySet.load(tmp_path)
    d = ps.evaluate(principal(), call("ec2:TerminateInstances", "Write", region="eu-west-1"))
    assert (d.decision, d.rule) == ("approve", "approve-terminate")  # the same approvers: first in file order
    assert dict(d.approvers) == {"groups": ("sre",)} and d.expires == 1800
    assert d.reason == "rule approve-terminate requires a human approval for ec2:TerminateInstances"
    d = ps.evaluate(principal(), call("ec2:DescribeInstances", "List"))
    assert (d.decision, d.rule, d.reason) == ("allow", "allow-all-ec2", "rule allow-all-ec2 allows ec2:DescribeInstances")



def test_approve_rules_naming_the_same_approvers_in_another_order_hold_the_call(tmp_path):
    """Approvers are compared as sets, as an approval's are (approvals.approver_unfit): two approve
    rules naming the same approvers in another order, a name twice, a name alone or as a list of
    one, their keys in another order, hold the call for one approval, named by the first rule; only
    approvers that differ refuse it. A call's parts are compared so too."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: all-deletes, action: "*:Delete*", decision: approve, approvers: {groups: [sre, dba]}}
          - {id: table-deletes, action: dynamodb:DeleteTable, decision: approve, approvers: {groups: [dba, sre]}}
          - {id: bucket-deletes, action: s3:DeleteBucket, decision: approve, approvers: {groups: [sre, dba, sre]}}
          - {id: purge-a, action: sqs:PurgeQueue, decision: approve, approvers: {groups: [sre, dba], sub: [carol]}}
          - {id: purge-b, action: sqs:PurgeQueue, decision: approve, approvers: {sub: carol, groups: [dba, sre]}}
          - {id: topic-deletes, action: sns:DeleteTopic, decision: approve, approvers: {groups: [sre]}}
          - {id: put-audit, action: dynamodb:PutItem, decision: approve, approvers: {groups: [dba, sre, dba]}}
        """)
    who = principal()
    for action, rule in (("dynamodb:DeleteTable", "all-deletes"), ("s3:DeleteBucket", "all-deletes"),
                         ("sqs:PurgeQueue", "purge-a")):
        d = ps.evaluate(who, call(action, "Write"))
        assert (d.decision, d.rule) == ("approve", rule), (action, d.reason)
        assert d.reason == f"rule {rule} requires a human approval for {action}"
    d = ps.evaluate(who, call("sns:DeleteTopic", "Write"))
    assert (d.decision, d.rule) == ("deny", "agentgate:approvers-differ")
    assert d.reason == ("it needs approval under rule all-deletes (approvers: group sre or dba) and under rule "
                        "topic-deletes (approvers: group sre): one approval cannot stand for both")
    # a transaction's parts: a delete and a put whose rules name the same approvers in another order
    key = {"id": {"S": "1"}}
    both = ps.evaluate(who, run(capture("dynamodb", "transact_write_items", TransactItems=[
        {"Delete": {"TableName": "orders", "Key": key}}, {"Put": {"TableName": "audit", "Item": key}}])))
    assert (both.decision, both.rule) == ("approve", "all-deletes"), both.reason
    assert not engine.same_approvers({"groups": ["sre"]}, {"groups": ["sre"], "sub": ["carol"]})


def test_default_deny(tmp_path):
    ps = load(tmp_path, """
        version: 1
        default: deny
        rules:
          - {id: reads, access_level: [List, Read], decision: allow}
    """)
    d = ps.evaluate(principal(), call("s3:PutObject", "Write"))
    assert d == Decision("deny", None, "no rule allows s3:PutObject; default is deny", ps.version, None, (),
                         None, None, ())


def test_mask_for_agent_is_the_union_of_matching_allow_rules(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: reads, access_level: Read, decision: allow}
          - {id: mask-1, action: "secretsmanager:Get*", decision: allow, mask_for_agent: [SecretString, SecretBinary]}
          - {id: mask-2, action: "secretsmanager:GetSecretValue", decision: allow, mask_for_agent: [SecretBinary, Extra]}
          - {id: mask-3, action: "secretsmanager:GetSecretValue", principal: {groups: [other]}, decision: allow,
             mask_for_agent: [NotMine]}
    """)
    d = ps.evaluate(principal(), call("secretsmanager:GetSecretValue", "Read"))
    assert (d.decision, d.rule) == ("allow", "reads")
    assert d.mask_for_agent == ("SecretString", "SecretBinary", "Extra")
    assert d.considered == ("reads", "mask-1", "mask-2")


def test_every_decision_carries_the_version_and_the_role(tmp_path):
    ps = load(tmp_path, """
        version: 1
        roles:
          - {principal: {groups: [data]}, role_arn: "arn:aws:iam::111122223333:role/data", id: data}
          - {role_arn: "arn:aws:iam::111122223333:role/everyone"}
        rules:
          - {id: r, action: "s3:*", decision: deny}
    """)
    d = ps.evaluate(principal(groups=("data",)), call("s3:GetObject"))
    assert d.policy_version == ps.version and len(ps.version) == 16
    assert d.role == RoleBinding("arn:aws:iam::111122223333:role/data", None, 3600, False, "data")
    assert ps.evaluate(principal(), call("s3:GetObject")).role.role_arn.endswith("role/everyone")


# ------------------------------------------------------------------------------ roles


def test_role_selection_is_the_first_matching_binding(tmp_path):
    write(tmp_path, "session/scoped.json", '{\n  "Version": "2012-10-17",\n  "Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]\n}\n')
    ps = load(tmp_path, """
        version: 1
        roles:
          - id: by-sub
            principal: {sub: alice}
            role_arn: arn:aws:iam::111122223333:role/alice
            duration: 15m
            web_identity: true
          - id: by-group
            principal: {groups: [data]}
            role_arn: arn:aws:iam::111122223333:role/data
            session_policy: session/scoped.json
            duration: "1h30m"
          - id: by-claims
            principal: {claims: "tier == 'gold'"}
            role_arn: arn:aws-us-gov:iam::111122223333:role/gold
            duration: 900
    """)
    alice = ps.role_for(principal("alice", ("data",)))
    assert alice == RoleBinding("arn:aws:iam::111122223333:role/alice", None, 900, True, "by-sub")
    data = ps.role_for(principal("bob", ("data",)))
    assert data.rule_id == "by-group" and data.duration == 5400 and not data.web_identity
    assert json.loads(data.session_policy) == {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}
    assert "\n" not in data.session_policy and " " not in data.session_policy  # packed for sts:AssumeRole
    assert ps.role_for(principal("carol", claims={"tier": "gold"})).duration == 900
    assert ps.role_for(principal("dave")) is None
    assert ps.evaluate(principal("dave"), call("s3:GetObject")).role is None
    assert "session/scoped.json" in ps.text  # the version covers the session policy too


@pytest.mark.parametrize("value,seconds", [
    (900, 900), ("900", 900), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("12h", 43200), ("2d", 172800)])
def test_parse_duration(value, seconds):
    assert engine.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "15x", "m15", "1.5h", True, None, [1], "-5m"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        engine.parse_duration(value)


def test_approve_rule_defaults_and_durations(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: a, action: "s3:DeleteObject", decision: approve, approvers: {sub: dana}}
          - {id: b, action: "s3:DeleteBucket", decision: approve, approvers: {groups: [sre], claims: "mfa"}, expires: 2h}
    """)
    d = ps.evaluate(principal(), call("s3:DeleteObject"))
    assert d.expires == engine.DEFAULT_APPROVAL_EXPIRES and dict(d.approvers) == {"sub": ("dana",)}
    d = ps.evaluate(principal(), call("s3:DeleteBucket"))
    assert d.expires == 7200 and dict(d.approvers) == {"groups": ("sre",), "claims": "mfa"}


# ------------------------------------------------------------------------------ load errors


def test_a_misspelt_or_misused_function_is_a_load_error_not_a_rule_that_never_matches(tmp_path):
    """jmespath finds an unknown function or a wrong number of arguments only when it runs, where a
    failing ``when`` does not match: a deny rule so written would silently never deny."""
    write(tmp_path, "a.yaml", """
        version: 1
        default: allow
        rules:
          - id: no-big-gpus
            action: ec2:RunInstances
            when: "starts_whit(params.InstanceType, 'p4')"
            decision: deny
          - id: two-lengths
            action: ec2:RunInstances
            when: "length(resource, params) > `0`"
            decision: deny
          - id: no-args
            action: ec2:RunInstances
            when: "not_null()"
            decision: deny
        roles:
          - principal: {claims: "contans(groups, 'sre')"}
            role_arn: arn:aws:iam::123456789012:role/sre
    """)
    assert errors_of(tmp_path) == [  # in file order, as a person reads the file
        "a.yaml:6: rule no-big-gpus: bad jmespath in when `starts_whit(params.InstanceType, 'p4')`: Unknown "
        "function: starts_whit() (did you mean starts_with()?)",
        "a.yaml:10: rule two-lengths: bad jmespath in when `length(resource, params) > `0``: Expected 1 argument "
        "for function length(), received 2",
        "a.yaml:14: rule no-args: bad jmespath in when `not_null()`: Expected at least 1 argument for function "
        "not_null(), received 0",
        "a.yaml:17: bad jmespath in principal.claims `contans(groups, 'sre')`: Unknown function: contans() (did you "
        "mean contains()?)",
    ]


def test_a_string_in_double_quotes_or_an_unquoted_boolean_is_a_load_error_not_a_test_for_null(tmp_path):
    """In jmespath "prod-data" is a field name and true unquoted a field named true: both read null,
    so `department == "platform"` matched every principal without a department claim, the deny on
    "prod-data" never denied, and approvers written `contains(groups, "sre")` matched no one."""
    write(tmp_path, "a.yaml", """
        version: 1
        roles:
          - principal: {claims: 'department == "platform"'}
            role_arn: arn:aws:iam::123456789012:role/platform
        rules:
          - id: no-prod-writes
            action: s3:PutObject
            when: 'resource[?starts_with(@, "prod-")]'
            decision: deny
          - id: deletes
            action: s3:DeleteObject
            decision: approve
            approvers: {claims: 'contains(groups, "sre")'}
          - id: key-enabled
            action: s3:PutObject
            when: "params.BucketKeyEnabled == true"
            decision: deny
          - id: many-keys
            action: s3:ListBucket
            when: "params.MaxKeys > 100"
            decision: deny
    """)
    assert errors_of(tmp_path) == [
        "a.yaml:3: bad jmespath in principal.claims `department == \"platform\"`: \"platform\" in double quotes is "
        "a field name in jmespath, not a string, and reads as null where nothing has a member so named: write "
        "'platform' in single quotes (for the member so named, @.\"platform\")",
        "a.yaml:8: rule no-prod-writes: bad jmespath in when `resource[?starts_with(@, \"prod-\")]`: \"prod-\" in "
        "double quotes is a field name in jmespath, not a string, and reads as null where nothing has a member so "
        "named: write 'prod-' in single quotes (for the member so named, @.\"prod-\")",
        "a.yaml:13: bad jmespath in approvers.claims `contains(groups, \"sre\")`: \"sre\" in double quotes is a "
        "field name in jmespath, not a string, and reads as null where nothing has a member so named: write 'sre' "
        "in single quotes (for the member so named, @.\"sre\")",
        "a.yaml:16: rule key-enabled: bad jmespath in when `params.BucketKeyEnabled == true`: true unquoted is a "
        "field name in jmespath, not the boolean, and reads as null: write `true` in backticks",
        "a.yaml:20: rule many-keys: bad jmespath in when `params.MaxKeys > 100`: invalid token: Parse error at "
        "column 17, token \"100\" (NUMBER), for expression: \"params.MaxKeys > 100\" ^; a number is written in "
        "backticks in jmespath: `100`",
    ]
    # written as meant, they load and decide so; a quoted name read as a member (after a dot, or a
    # namespaced claim as a function's first argument) is no slip
    (tmp_path / "a.yaml").unlink()
    ps = load(tmp_path, """
        version: 1
        roles:
          - principal: {claims: "department == 'platform' || contains(\\"https://example.com/groups\\", 'platform')"}
            role_arn: arn:aws:iam::123456789012:role/platform
        rules:
          - id: no-prod-writes
            action: s3:PutObject
            when: "params.Bucket == 'prod-data' || params.Metadata.\\"x-owner\\" == 'prod' || params.BucketKeyEnabled == `true`"
            decision: deny
          - id: writes
            action: s3:PutObject
            decision: allow
    """)
    assert ps.role_for(principal(claims={"department": "platform"})) is not None
    assert ps.role_for(principal(claims={"https://example.com/groups": ["platform"]})) is not None
    assert ps.role_for(principal(claims={})) is None
    assert ps.evaluate(principal(), call("s3:PutObject", params={"Bucket": "prod-data"})).decision == "deny"
    assert ps.evaluate(principal(), call("s3:PutObject", params={"Bucket": "b", "Metadata": {"x-owner": "prod"}})).decision == "deny"
    assert ps.evaluate(principal(), call("s3:PutObject", params={"Bucket": "b", "BucketKeyEnabled": True})).decision == "deny"
    assert ps.evaluate(principal(), call("s3:PutObject", params={"Bucket": "b"})).decision == "allow"


def test_an_empty_file_or_a_link_to_nothing_is_an_error_not_a_file_left_out(tmp_path):
    write(tmp_path, "a.yaml", """
        version: 1
        rules:
          - id: read
            access_level: [List, Read]
            decision: allow
    """)
    (tmp_path / "b.yaml").write_text("# to be written\n")
    (tmp_path / "c.yaml").symlink_to(tmp_path / "gone.yaml")
    assert errors_of(tmp_path) == ["b.yaml:1: the file is empty: a policy file needs at least `version: 1`",
                                   "c.yaml: cannot read: No such file or directory"]


def test_load_errors_name_file_and_line_for_every_kind(tmp_path):
    write(tmp_path, "a.yaml", """
        version: 1
        colour: blue
        rules:
          - id: dup
            action: ec2:Describe*
            decision: allow
            reasons: "x"
          - id: bad-glob
            action: [ec2:Describe*, "ec2 Describe", "s3"]
            decision: allow
          - id: bad-level
            access_level: [Read, Writes]
            decision: allow
          - id: bad-when
            action: s3:GetObject
            when: "params.[Bucket"
            decision: allow
          - id: bad-claims
            principal: {claims: "a ==", team: x}
            decision: deny
          - id: bad-decision
            decision: maybe
          - action: s3:GetObject
            decision: allow
          - id: approve-without-approvers
            action: s3:DeleteObject
            decision: approve
          - id: approvers-on-allow
            action: s3:GetObject
            decision: allow
            approvers: {groups: [sre]}
            expires: 15m
          - id: mask-on-deny
            action: s3:GetObject
            decision: deny
            mask_for_agent: [Body]
          - id: bad-expires
            action: s3:DeleteBucket
            decision: approve
            approvers: {groups: [sre]}
            expires: soon
        roles:
          - role_arn: "arn:aws:iam::12345:role/short-account"
          - role_arn: arn:aws:iam::123456789012:role/ok
            duration: 5m
          - role_arn: arn:aws:iam::123456789012:role/ok
            session_policy: session/missing.json
          - role_arn: arn:aws:iam::123456789012:role/ok
            session_policy: broken.json
            web_identity: "yes"
          - principal: {groups: [a]}
    """)
    write(tmp_path, "broken.json", '{"Version": "2012-10-17",\n "Statement": [}\n')
    write(tmp_path, "b.yaml", """
        version: 2
        default: allow
        rules:
          - id: dup
            decision: deny
    """)
    write(tmp_path, "c.yaml", """
        version: 1
        default: deny
        rules:
          - id: x
            decision: allow
            decision: deny
    """)
    write(tmp_path, "d.yml", """
        version: 1
        rules:
          - id: y
            action: [s3:GetObject
    """)
    write(tmp_path, ".hidden.yaml", "this is: [not read\n")
    errors = errors_of(tmp_path)
    expected = [
        "a.yaml:2: unknown key 'colour'",
        "a.yaml:7: unknown key 'reasons' in a rule",
        "a.yaml:9: rule bad-glob: bad action 'ec2 Describe'",
        "a.yaml:9: rule bad-glob: bad action 's3'",
        "a.yaml:12: rule bad-level: unknown access level 'Writes'",
        "a.yaml:16: rule bad-when: bad jmespath in when `params.[Bucket`",
        "a.yaml:19: bad jmespath in principal.claims `a ==`",
        "a.yaml:19: unknown key 'team' in principal",
        "a.yaml:22: rule bad-decision: decision must be allow, deny or approve, not 'maybe'",
        "a.yaml:23: rule has no id",
        "a.yaml:25: rule approve-without-approvers: an approve rule needs approvers",
        "a.yaml:31: rule approvers-on-allow: approvers only applies to approve rules",
        "a.yaml:32: rule approvers-on-allow: expires only applies to approve rules",
        "a.yaml:36: rule mask-on-deny: mask_for_agent only applies to allow rules",
        "a.yaml:41: rule bad-expires: expires 'soon' is not a duration",
        "a.yaml:43: role_arn 'arn:aws:iam::12345:role/short-account' is not an IAM role ARN",
        "a.yaml:45: duration '5m' is 300s; AWS accepts 900s to 43200s",
        "a.yaml:47: session policy session/missing.json: cannot read",
        "a.yaml:49: session policy broken.json is not valid JSON",
        "a.yaml:50: web_identity must be true or false",
        "a.yaml:51: role binding has no role_arn",
        "b.yaml:1: version must be 1, not 2",
        "c.yaml:2: default deny contradicts default allow at b.yaml:2",
        "b.yaml:4: rule id 'dup' is already used at a.yaml:4",
        "c.yaml:6: duplicate key 'decision' (also at line 5)",
        "d.yml:5: not valid YAML",
    ]
    for want in expected:
        assert any(e.startswith(want) for e in errors), f"{want!r} not in:\n" + "\n".join(errors)
    assert not any(".hidden" in e for e in errors)
    assert "did you mean 'reason'?" in next(e for e in errors if "'reasons'" in e)


def test_version_is_required_and_top_level_must_be_a_mapping(tmp_path):
    write(tmp_path, "a.yaml", "rules: []\n")
    write(tmp_path, "b.yaml", "- just\n- a list\n")
    write(tmp_path, "c.yaml", "version: 1\nrules: {id: x}\nroles: nope\n")
    errors = errors_of(tmp_path)
    assert errors[0] == "a.yaml:1: missing `version: 1`"
    assert errors[1].startswith("b.yaml:1: a policy file is a mapping")
    assert "c.yaml:2: rules must be a list" in errors and "c.yaml:3: roles must be a list" in errors


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(PolicyError) as e:
        PolicySet.load(tmp_path / "nope")
    assert "no such policies directory" in e.value.errors[0]
    empty = PolicySet.load(tmp_path)
    assert empty.evaluate(principal(), call("s3:GetObject", "Read")).decision == "deny"


# ------------------------------------------------------------------------------ versions and reloading


def test_version_follows_content(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\nrules: []\n")
    v1 = PolicySet.load(tmp_path).version
    assert PolicySet.load(tmp_path).version == v1
    write(tmp_path, "a.yaml", "version: 1\nrules: []\n# a comment\n")
    v2 = PolicySet.load(tmp_path)
    assert v2.version != v1
    assert v2.text.startswith("--- a.yaml\nversion: 1\n") and "# a comment" in v2.text
    (tmp_path / "a.yaml").rename(tmp_path / "b.yaml")  # the same content under another name
    assert PolicySet.load(tmp_path).version not in (v1, v2.version)


def _bump(path: Path) -> None:
    """Move a file's mtime forward, so a change within one clock tick is still seen."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_store_reloads_on_change_and_keeps_the_last_good_set(tmp_path):
    path = write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: reads, access_level: Read, decision: allow}
    """)
    reported: list[PolicyError] = []
    store = PolicyStore(tmp_path, on_error=reported.append, check_interval=0)
    first = store.current
    assert first.evaluate(principal(), call("s3:GetObject", "Read")).decision == "allow"
    assert store.current is first  # unchanged files: the same set

    path.write_text("version: 1\nrules:\n  - {id: reads, access_level: Read, decision: deny}\n")
    _bump(path)
    second = store.current
    assert second.version != first.version
    assert second.evaluate(principal(), call("s3:GetObject", "Read")).decision == "deny"
    # a call decided before the change keeps its set
    assert first.evaluate(principal(), call("s3:GetObject", "Read")).decision == "allow"

    path.write_text("version: 1\nrules:\n  - {id: reads, access_level: Read, decision: deny}\n  - {id: x, decision: perhaps}\n")
    _bump(path)
    assert store.current is second  # broken: the last good set stays in force
    assert len(reported) == 1 and reported[0].errors == [
        "p.yaml:4: rule x: decision must be allow, deny or approve, not 'perhaps'"]
    _bump(path)  # touched, not changed: not reported again
    assert store.current is second and len(reported) == 1
    write(tmp_path, "q.yaml", "version: [\n")  # another broken version: reported
    assert store.current is second and len(reported) == 2
    assert any(e.startswith("q.yaml:") for e in reported[1].errors)

    (tmp_path / "q.yaml").unlink()
    path.write_text("version: 1\nrules:\n  - {id: reads, access_level: [List, Read], decision: allow}\n")
    _bump(path)
    third = store.current
    assert third.version not in (first.version, second.version)
    assert third.evaluate(principal(), call("ec2:DescribeInstances", "List")).decision == "allow"


def test_store_watches_session_policies_and_new_files(tmp_path):
    session = write(tmp_path, "s.json", '{"Statement": []}')
    write(tmp_path, "roles.yaml", """
        version: 1
        roles:
          - {role_arn: "arn:aws:iam::123456789012:role/r", session_policy: s.json}
    """)
    store = PolicyStore(tmp_path, check_interval=0)
    v1 = store.current.version
    session.write_text('{"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}')
    _bump(session)
    assert store.current.version != v1
    assert "Deny" in store.current.role_for(principal()).session_policy
    write(tmp_path, "more.yaml", "version: 1\nrules: [{id: r, action: 's3:*', decision: allow}]\n")
    assert [r.id for r in store.current.rules] == ["r"]


def test_store_checks_at_most_every_interval(tmp_path):
    path = write(tmp_path, "p.yaml", "version: 1\n")
    store = PolicyStore(tmp_path, check_interval=3600)
    v1 = store.current.version
    path.write_text("version: 1\nrules: []\n")
    _bump(path)
    assert store.current.version == v1


# two versions of a directory of policy files: neither allows dynamodb:ListTables, but A's 10.yaml
# with B's 20.yaml would
VERSION_A = {"10.yaml": "version: 1\nrules:\n  - {id: allow-ddb, action: 'dynamodb:*', decision: allow}\n",
             "20.yaml": "version: 1\nrules:\n  - {id: no-table-listing, action: 'dynamodb:ListTables', decision: deny}\n"}
VERSION_B = {"10.yaml": "version: 1\nrules:\n  - {id: allow-sts, action: 'sts:*', decision: allow}\n",
             "20.yaml": "version: 1\nrules:\n  - {id: no-iam, action: 'iam:*', decision: deny}\n"}


def _copy(files: dict[str, str], directory: Path) -> None:
    """Write ``files`` into ``directory`` one after another, as cp or rsync does."""
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        path = directory / name
        existed = path.exists()
        path.write_text(text)
        if existed:
            _bump(path)


def _switch(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` in one step (a new link renamed over the old one)."""
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    os.replace(new, link)


def _after_reading(monkeypatch, name: str, action) -> None:
    """Run ``action`` once, when a parse has read the policy file ``name`` and before it reads the
    next: where a switch of the directory or a copy into it lands in the middle of a read."""
    parse_file = engine._parse_file
    pending = [action]

    def hooked(parsed, read, *rest):
        parse_file(parsed, read, *rest)
        if read == name and pending:
            pending.pop()()

    monkeypatch.setattr(engine, "_parse_file", hooked)


def _whole(seen: list[PolicySet], tmp_path: Path) -> list[str]:
    """The versions in ``seen``, as "A" or "B"; each checked to be one of them, whole, and to refuse
    dynamodb:ListTables as both do."""
    _copy(VERSION_A, tmp_path / "whole-A")
    _copy(VERSION_B, tmp_path / "whole-B")
    names = {PolicySet.load(tmp_path / "whole-A").version: "A", PolicySet.load(tmp_path / "whole-B").version: "B"}
    for policy_set in seen:
        assert policy_set.version in names, f"a version that mixes A and B was put in force:\n{policy_set.text}"
        assert policy_set.evaluate(principal(), call("dynamodb:ListTables", "List")).decision == "deny"
    return [names[s.version] for s in seen]


def test_a_linked_directory_switched_while_read_puts_one_version_in_force(tmp_path, monkeypatch):
    """``policies`` a link switched between two directories: a reload that has listed and read part of
    one directory when the link moves reads the rest from the same directory, and the next check
    puts in force the one the link points to."""
    _copy(VERSION_A, tmp_path / "A")
    _copy(VERSION_B, tmp_path / "B")
    link = tmp_path / "policies"
    link.symlink_to(tmp_path / "B")
    seen: list[PolicySet] = []
    store = PolicyStore(link, check_interval=0, on_version=seen.append)
    _switch(link, tmp_path / "A")
    _after_reading(monkeypatch, "10.yaml", lambda: _switch(link, tmp_path / "B"))
    store.current
    store.current
    assert _whole(seen, tmp_path) == ["B", "A", "B"]
    assert store.current is seen[-1]


def test_files_copied_while_read_are_read_again_whole(tmp_path, monkeypatch, caplog):
    """A directory copied into file by file while a reload reads it: what was read mixes the old
    10.yaml with the new 20.yaml, so it is not put in force; the old version stays until the next
    check reads the new one whole."""
    import logging

    directory = tmp_path / "policies"
    _copy(VERSION_A, directory)
    seen: list[PolicySet] = []
    store = PolicyStore(directory, check_interval=0, on_version=seen.append)
    _bump(directory / "10.yaml")  # a change starts a reload ...
    _after_reading(monkeypatch, "10.yaml", lambda: _copy(VERSION_B, directory))  # ... that the copy overtakes
    with caplog.at_level(logging.INFO, logger="agentgate.policy"):
        assert store.current is seen[0]
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "changed while read" in caplog.records[0].getMessage()
    store.current
    assert _whole(seen, tmp_path) == ["A", "B"]
    assert store.current is seen[-1]


def test_a_store_started_while_its_files_are_copied_starts_with_them_whole(tmp_path, monkeypatch):
    directory = tmp_path / "policies"
    _copy(VERSION_A, directory)
    _after_reading(monkeypatch, "10.yaml", lambda: _copy(VERSION_B, directory))
    seen: list[PolicySet] = []
    PolicyStore(directory, on_version=seen.append)
    assert _whole(seen, tmp_path) == ["B"]


def test_a_listener_added_later_hears_the_version_in_force_then_each_new_one(tmp_path):
    """The gateway listens for versions (to check them) only once its store is open: a start that
    fails runs no check. The listener hears the version in force at once, then each new one."""
    path = write(tmp_path, "p.yaml", "version: 1\nrules:\n  - {id: a, action: s3:GetObject, decision: allow}\n")
    store = PolicyStore(tmp_path, check_interval=0)
    first = store.current
    seen: list[PolicySet] = []
    store.listen(seen.append)
    assert seen == [first]
    store.current
    assert seen == [first]  # nothing changed: nothing heard
    path.write_text("version: 1\nrules:\n  - {id: a, action: s3:GetObject, decision: deny}\n")
    _bump(path)
    assert store.current is not first and seen == [first, store.current]


def test_the_gateway_logs_what_check_finds_in_each_version_it_puts_in_force(tmp_path, caplog):
    """Policies that load but that check faults (an action no call is named by) are in force: the
    gateway logs check's errors and warnings for each version it loads, once, one line each."""
    import logging

    from addons.policy import check_in_background

    path = write(tmp_path, "p.yaml", """
        version: 1
        rules:
          - {id: no-invoke, action: lambda:Invoke, decision: deny}
    """)
    seen: list[PolicySet] = []
    threads = []

    def on_version(policy_set: PolicySet) -> None:
        seen.append(policy_set)
        threads.append(check_in_background(policy_set))

    with caplog.at_level(logging.WARNING, logger="agentgate.policy"):
        store = PolicyStore(tmp_path, check_interval=0, on_version=on_version)
        threads[-1].join(60)
        assert [r.getMessage() for r in caplog.records] == [
            f"policy version {store.current.version}: p.yaml:3: rule no-invoke: lambda:Invoke is an API operation's "
            "name, never a call's action: the gateway names this call lambda:InvokeFunction"]
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        _bump(path)  # touched, not changed: no new version, no new check
        store.current
        assert len(seen) == 1
        path.write_text("version: 1\nrules:\n  - {id: typo, action: s3:GetObject, when: \"params.bucket == 'x'\", "
                        "decision: deny}\n")
        _bump(path)
        store.current
        assert len(seen) == 2 and seen[1] is store.current
        threads[-1].join(60)
        assert f"policy version {seen[1].version}: p.yaml:3: warning: rule typo: when reads params.bucket" in \
            caplog.records[-1].getMessage()


def test_store_refuses_to_start_on_broken_policies(tmp_path):
    write(tmp_path, "p.yaml", "version: 1\nrules: [{id: x}]\n")
    with pytest.raises(PolicyError) as e:
        PolicyStore(tmp_path)
    assert e.value.errors == ["p.yaml:2: rule x has no decision (allow, deny or approve)"]


# ------------------------------------------------------------------------------ explain


def test_explain_names_the_deciding_rule_and_every_rule_considered(tmp_path):
    ps = load(tmp_path, """
        version: 1
        roles:
          - {id: main, role_arn: "arn:aws:iam::123456789012:role/agent-role", duration: 15m}
        rules:
          - {id: reads, access_level: [List, Read], decision: allow}
          - {id: sre-only, action: "ec2:Terminate*", principal: {groups: [sre]}, decision: allow}
          - id: big-ones
            action: ec2:TerminateInstances
            when: "length(params.InstanceIds) > `2`"
            decision: approve
            approvers: {groups: [sre]}
    """)
    text = engine.explain(ps, principal(on_behalf_of="alice"),
                          call("ec2:TerminateInstances", "Write", {"InstanceIds": ["a", "b", "c"]}))
    assert "decision: approve" in text
    assert "decided by: rule big-ones (p.yaml:7)" in text
    assert "role: arn:aws:iam::123456789012:role/agent-role (binding main, 900s)" in text
    assert "on behalf of alice" in text
    assert "approvers: groups ['sre']" in text
    assert "[   no] reads (p.yaml:5, allow): access level Write is not one of List, Read" in text
    assert "[   no] sre-only (p.yaml:6, allow): groups ['dev'] include none of ['sre']" in text
    assert "[match] big-ones (p.yaml:7, approve): matches: action matches ec2:TerminateInstances; when" in text
    text = engine.explain(ps, principal(), call("ec2:TerminateInstances", "Write", {"InstanceIds": ["a"]}))
    assert "decided by: the default (no rule matched)" in text
    assert "when `length(params.InstanceIds) > `2`` is false" in text


# ------------------------------------------------------------------------------ the shipped policies


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return PolicySet.load(SHIPPED)


@pytest.mark.parametrize("action,level,decision,rule", [
    ("ec2:DescribeInstances", "List", "allow", "read-only"),
    ("s3:GetObject", "Read", "allow", "read-only"),
    ("sts:GetCallerIdentity", "Read", "allow", "read-only"),
    ("iam:CreateAccessKey", "Write", "deny", "no-credential-vending"),
    ("sts:AssumeRole", "Write", "deny", "no-credential-vending"),
    ("sts:GetSessionToken", "Read", "deny", "no-credential-vending"),
    ("sts:GetFederationToken", "Write", "deny", "no-credential-vending"),
    ("awsssoportal:GetRoleCredentials", None, "deny", "no-credential-vending"),
    ("cognito-identity:GetCredentialsForIdentity", "Read", "deny", "no-credential-vending"),
    ("iam:AttachRolePolicy", "Permissions management, Write", "deny", "no-privilege-escalation"),
    ("iam:PutUserPolicy", "Permissions management, Write", "deny", "no-privilege-escalation"),
    ("iam:UpdateAssumeRolePolicy", "Permissions management, Write", "deny", "no-privilege-escalation"),
    ("iam:CreatePolicyVersion", "Permissions management, Write", "deny", "no-privilege-escalation"),
    ("ec2:TerminateInstances", "Write", "approve", "destroying-needs-a-human"),
    ("s3:DeleteBucket", "Write", "approve", "destroying-needs-a-human"),
    ("dynamodb:DeleteItem", "Write", "approve", "destroying-needs-a-human"),
    ("dynamodb:PartiQLDelete", "Write", "approve", "destroying-needs-a-human"),
    ("s3:PutBucketPolicy", "Permissions management, Write", "approve", "permission-changes-need-a-human"),
    ("kms:Decrypt", "Write", "allow", "mask-decrypted-plaintext"),
    ("s3:PutObject", "Write", "deny", None),
    ("ec2:CreateTags", "Tagging, Write", "deny", None),
    ("unknown", None, "deny", None),
])
def test_shipped_policies_decide_as_documented(shipped, action, level, decision, rule):
    d = shipped.evaluate(principal(), call(action, level))
    assert (d.decision, d.rule) == (decision, rule), d.reason
    assert d.reason


def test_shipped_policies_leave_awss_public_parameters_readable(shipped):
    """AWS's public parameters (/aws/service/: the latest AMI ids, regions) are the same for every
    account, and an agent reads one to launch an instance: masked, it got a marker for an AMI id.
    Every other name stays masked: a secret read through SSM (/aws/reference/secretsmanager/), a
    call that names any other name beside them, a name that climbs out with `..`."""
    who = principal()
    ami = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

    def masks(action, **params):
        d = shipped.evaluate(who, call(action, "Read", params))
        assert d.decision == "allow", d.reason
        return d.mask_for_agent

    assert masks("ssm:GetParameter", Name=ami) == ()
    assert masks("ssm:GetParameterHistory", Name=ami) == ()
    assert masks("ssm:GetParameters", Names=[ami, "/aws/service/global-infrastructure/regions/eu-west-1"]) == ()
    assert masks("ssm:GetParametersByPath", Path="/aws/service/ami-amazon-linux-latest", Recursive=True) == ()
    assert masks("ssm:GetParametersByPath", Path="/aws/service") == ()
    for action, params in (
            ("ssm:GetParameter", {"Name": "/prod/db/password", "WithDecryption": True}),
            ("ssm:GetParameter", {"Name": "/aws/reference/secretsmanager/prod-db", "WithDecryption": True}),
            ("ssm:GetParameter", {"Name": "/aws/service/../reference/secretsmanager/prod-db"}),
            ("ssm:GetParameter", {"Name": f"arn:aws:ssm:us-east-1:123456789012:parameter{ami}"}),
            ("ssm:GetParameter", {"Name": "/aws/servicex/x"}),
            ("ssm:GetParameter", {"Name": ["/aws/service/x"]}),  # not a string: the condition fails, masks hold
            ("ssm:GetParameter", {}),
            ("ssm:GetParameters", {"Names": [ami, "/prod/db/password"]}),
            ("ssm:GetParameters", {"Names": []}),
            ("ssm:GetParametersByPath", {"Path": "/", "Recursive": True}),
            ("ssm:GetParametersByPath", {"Path": "/aws", "Recursive": True}),
            ("ssm:GetParameterHistory", {"Name": "/prod/db/password"})):
        assert {"Parameter.Value", "Parameters[].Value"} <= set(masks(action, **params)), (action, params)


def test_shipped_policies_let_an_operator_allow_a_queues_consumer_to_delete_what_it_received(tmp_path):
    """Deleting a message it received is how a queue's consumer acknowledges it: the shipped
    policies do not hold sqs:DeleteMessage for approval (an operator's allow could not override an
    approve), they refuse it as any write until a rule allows it; purging or deleting the queue is
    still held."""
    import shutil

    shipped_only = PolicySet.load(SHIPPED)
    who = principal()
    acked = shipped_only.evaluate(who, call("sqs:DeleteMessage", "Write", {"QueueUrl": "q", "ReceiptHandle": "r"}))
    assert (acked.decision, acked.rule) == ("deny", None), acked.reason
    directory = tmp_path / "policies"
    shutil.copytree(SHIPPED, directory)
    write(directory, "consumers.yaml", """
        version: 1
        rules:
          - id: agents-consume-queues
            action: [sqs:SendMessage, sqs:DeleteMessage]
            decision: allow
        """)
    with_consumers = PolicySet.load(directory)
    for operation in ("DeleteMessage", "SendMessage"):
        d = with_consumers.evaluate(who, call(f"sqs:{operation}", "Write", {"QueueUrl": "q"}))
        assert (d.decision, d.rule) == ("allow", "agents-consume-queues"), d.reason
    for action in ("sqs:PurgeQueue", "sqs:DeleteQueue", "dynamodb:DeleteItem", "s3:DeleteObject"):
        d = with_consumers.evaluate(who, call(action, "Write", {"QueueUrl": "q"}))
        assert (d.decision, d.rule) == ("approve", "destroying-needs-a-human"), (action, d.reason)


def test_shipped_policies_masks_roles_and_approvals(shipped):
    who = principal()
    d = shipped.evaluate(who, call("secretsmanager:GetSecretValue", "Read", {"SecretId": "db"}))
    assert d.decision == "allow" and {"SecretString", "SecretBinary"} <= set(d.mask_for_agent)
    assert "Parameter.Value" in shipped.evaluate(who, call("ssm:GetParameter", "Read")).mask_for_agent
    assert "Parameters[].Value" in shipped.evaluate(who, call("ssm:GetParametersByPath", "Read")).mask_for_agent
    assert "Plaintext" in shipped.evaluate(who, call("kms:Decrypt", "Write")).mask_for_agent
    assert "Configuration.Environment.Variables" in shipped.evaluate(who, call("lambda:GetFunction", "Read")).mask_for_agent
    for action in ("ecr:GetAuthorizationToken", "ecr-public:GetAuthorizationToken", "codeartifact:GetAuthorizationToken"):
        registry = shipped.evaluate(who, call(action, "Read"))
        assert (registry.decision, registry.rule) == ("deny", "no-credential-vending"), action
    assert d.role == RoleBinding("arn:aws:iam::123456789012:role/agent-role", None, 3600, False, "default-agent-role")
    scoped = shipped.role_for(principal(groups=("read-only-agents",)))
    assert scoped.duration == 900 and json.loads(scoped.session_policy)["Statement"]
    approve = shipped.evaluate(who, call("ec2:TerminateInstances", "Write", {"InstanceIds": ["i-1"]}))
    assert dict(approve.approvers) == {"groups": ("sre",)} and approve.expires == 900


def test_a_copy_is_decided_as_its_write_and_the_read_of_its_source(tmp_path):
    ps = load(tmp_path, """
        version: 1
        rules:
          - id: writes
            action: s3:PutObject
            decision: allow
          - id: reads
            action: s3:GetObject*
            decision: allow
            mask_for_agent: [Body]
          - id: no-conf
            action: s3:GetObject
            when: "length(resource[?starts_with(@, 'b/conf/')]) > `0`"
            decision: deny
            reason: configuration is not read
          - id: archive-needs-a-human
            action: s3:GetObject
            when: "length(resource[?starts_with(@, 'b/archive/')]) > `0`"
            decision: approve
            approvers: {groups: [sre]}
    """)

    def copy(source: str):
        c = call("s3:PutObject", "Write", {"Bucket": "b", "Key": "pub/x"}, resources=["b/pub/x", source])
        c.implied = (call("s3:GetObject", "Read", {"Bucket": "b", "Key": source[2:]}, resources=[source]),)
        return c

    denied = PolicySet.evaluate(ps, principal(), copy("b/conf/app.env"))
    assert (denied.decision, denied.rule) == ("deny", "no-conf")
    assert denied.reason == "it also asks for s3:GetObject on b/conf/app.env: configuration is not read"
    held = ps.evaluate(principal(), copy("b/archive/2019"))
    assert (held.decision, held.rule, dict(held.approvers)) == ("approve", "archive-needs-a-human", {"groups": ("sre",)})
    allowed = ps.evaluate(principal(), copy("b/docs/readme"))
    assert (allowed.decision, allowed.rule, allowed.mask_for_agent) == ("allow", "writes", ())  # the copy's own masks
    no_read_rule = load(tmp_path / "w", "version: 1\nrules:\n  - {id: writes, action: s3:PutObject, decision: allow}\n")
    assert no_read_rule.evaluate(principal(), copy("b/docs/readme")).decision == "deny"  # as IAM: both must be allowed


def test_a_partiql_batch_is_decided_by_its_strongest_statement(shipped):
    from addons.core.classifier import Classification

    def batch(*actions: tuple[str, str]) -> Classification:
        (first, level), rest = actions[0], actions[1:]
        c = Classification(service="dynamodb", operation="BatchExecuteStatement", action=first, access_level=level)
        c.implied = tuple(Classification(service="dynamodb", operation="BatchExecuteStatement", action=a,
                                         access_level=lv) for a, lv in rest)
        return c
    assert shipped.evaluate(principal(), batch(("dynamodb:PartiQLSelect", "Read"))).decision == "allow"
    mixed = shipped.evaluate(principal(), batch(("dynamodb:PartiQLSelect", "Read"), ("dynamodb:PartiQLInsert", "Write")))
    assert mixed.decision == "deny" and "it also asks for dynamodb:PartiQLInsert" in mixed.reason  # the default
    # a DELETE is held for approval, as DeleteItem is
    deleting = shipped.evaluate(principal(), batch(("dynamodb:PartiQLSelect", "Read"), ("dynamodb:PartiQLDelete", "Write")))
    assert (deleting.decision, deleting.rule) == ("approve", "destroying-needs-a-human")
    assert "it also asks for dynamodb:PartiQLDelete" in deleting.reason


def test_a_dynamodb_transaction_is_decided_by_its_items_with_their_own_parameters(tmp_path, shipped):
    """Each item as the call IAM authorises it as, with its own members: a rule on GetItem whose
    condition reads params.TableName decides a TransactGetItems item the same; the strongest item
    decides; every allowed item's masks hold for the one answer."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: orders, action: dynamodb:GetItem, when: "params.TableName == 'orders'", decision: allow}
          - {id: people, action: dynamodb:GetItem, when: "params.TableName == 'people'", decision: allow,
             mask_for_agent: [Item.ssn]}
          - {id: payroll, action: "dynamodb:*", when: "contains(resource, 'payroll')", decision: deny,
             reason: payroll is off limits}
          - {id: writes, action: dynamodb:PutItem, decision: approve, approvers: {groups: [sre]}}
        """)
    key = {"id": {"S": "1"}}

    def tx_get(*tables: str):
        return run(capture("dynamodb", "transact_get_items",
                           TransactItems=[{"Get": {"TableName": t, "Key": key}} for t in tables]))
    assert ps.evaluate(principal(), tx_get("orders")).rule == "orders"
    both = ps.evaluate(principal(), tx_get("orders", "people"))
    assert (both.decision, both.mask_for_agent) == ("allow", ("Item.ssn",))  # people's masks, whichever item was first
    denied = ps.evaluate(principal(), tx_get("orders", "payroll"))
    assert (denied.decision, denied.rule) == ("deny", "payroll")
    assert denied.reason == "it also asks for dynamodb:GetItem on payroll: payroll is off limits"
    assert ps.evaluate(principal(), tx_get("stock")).decision == "deny"  # no rule allows that item: the default
    write_tx = run(capture("dynamodb", "transact_write_items", TransactItems=[
        {"ConditionCheck": {"TableName": "orders", "Key": key, "ConditionExpression": "attribute_exists(id)"}},
        {"Put": {"TableName": "orders", "Item": key}}]))
    assert (write_tx.action, write_tx.access_level) == ("dynamodb:PutItem", "Write")
    held = ps.evaluate(principal(), write_tx)
    assert (held.decision, held.rule) == ("deny", None)  # ConditionCheckItem: no rule allows it
    # the shipped policies: a transaction of reads is a read, one that writes is a write
    assert shipped.evaluate(principal(), tx_get("orders", "people")).decision == "allow"
    assert shipped.evaluate(principal(), write_tx).decision == "deny"


def test_a_write_gets_the_item_masks_a_read_of_its_table_gets(tmp_path):
    """README's idiom masks Item.ssn for reads only (access_level [List, Read]); a write that returns
    or tests the table's items (ReturnValues, a failed condition's Item, a transaction, PartiQL) gets
    the masks a GetItem of that table gets, so the masker masks its Attributes, Item,
    CancellationReasons and Items, and a condition or a copy reading ssn is refused. A
    BatchWriteItem's answer holds only what the agent sent: no masks (the SDK sends its
    UnprocessedItems again)."""
    from addons.core.policy import copied_attributes
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: personal, action: "dynamodb:*", access_level: [List, Read], decision: allow,
             mask_for_agent: [Item.ssn]}
          - {id: payroll-pay, action: dynamodb:GetItem, when: "params.TableName == 'payroll'", decision: allow,
             mask_for_agent: [Item.pay]}
          - {id: writes, action: "dynamodb:*", access_level: Write, decision: allow}
        """)
    key = {"k": {"S": "a"}}

    def decide(method: str, **params):
        return ps.evaluate(principal(), run(capture("dynamodb", method, **params)))
    for method, params in (
            ("update_item", dict(TableName="people", Key=key, UpdateExpression="SET #n = #n",
                                 ExpressionAttributeNames={"#n": "name"}, ReturnValues="ALL_OLD")),
            ("put_item", dict(TableName="people", Item=key, ReturnValuesOnConditionCheckFailure="ALL_OLD")),
            ("delete_item", dict(TableName="people", Key=key, ReturnValues="ALL_OLD")),
            ("transact_write_items", dict(TransactItems=[{"Update": {"TableName": "people", "Key": key,
                                                                     "UpdateExpression": "SET a = :a",
                                                                     "ExpressionAttributeValues": {":a": {"N": "1"}}}}])),
            ("execute_statement", dict(Statement="UPDATE people SET a = 1 WHERE k = 'a' RETURNING ALL OLD *"))):
        got = decide(method, **params)
        assert (got.decision, got.rule, got.mask_for_agent) == ("allow", "writes", ("Item.ssn",)), method
    # the read of each table the call names: a rule on one table's reads masks that table's writes
    payroll = decide("update_item", TableName="payroll", Key=key, UpdateExpression="SET a = :a",
                     ExpressionAttributeValues={":a": {"N": "1"}}, ReturnValues="ALL_NEW")
    assert set(payroll.mask_for_agent) == {"Item.ssn", "Item.pay"}
    batch = decide("batch_write_item", RequestItems={"people": [{"PutRequest": {"Item": key}}]})
    assert (batch.decision, batch.mask_for_agent) == ("allow", ())
    oracle = decide("update_item", TableName="people", Key=key, UpdateExpression="SET a = :a",
                    ConditionExpression="begins_with(ssn, :x)", ExpressionAttributeValues={":a": {"S": "1"}, ":x": {"S": "1"}})
    assert (oracle.decision, oracle.rule) == ("deny", "agentgate:masked-condition")
    assert oracle.reason.startswith("personal masks ssn for agents, and this call's condition reads it")
    copy = decide("update_item", TableName="people", Key=key, UpdateExpression="SET #n = ssn",
                  ExpressionAttributeNames={"#n": "name"})
    assert (copy.decision, copy.rule) == ("deny", "agentgate:masked-source")
    assert copy.reason.startswith("personal masks ssn for agents, and this call copies it into name, which a read")
    assert decide("update_item", TableName="people", Key=key, UpdateExpression="SET ssn = :v, b = :v",
                  ExpressionAttributeValues={":v": {"S": "1"}}).decision == "allow"  # writing it tells nothing
    assert copied_attributes({"UpdateExpression": "set #set = if_not_exists(#s, :v) REMOVE c ADD d :one",
                              "ExpressionAttributeNames": {"#set": "name", "#s": "ssn"}}) == {("ssn", "name")}
    assert copied_attributes({"Statement": "UPDATE t SET a = list_append(ssn, [1]), b = 'ssn' WHERE k = 'x'"}) == {
        ("ssn", "a")}


def test_a_batch_write_is_decided_as_each_of_its_requests_too(tmp_path, shipped):
    """IAM authorises a BatchWriteItem as dynamodb:BatchWriteItem; the gateway decides each request
    beside it, as the PutItem or DeleteItem it stands for on its table, so a rule holding deletes
    holds a batch that deletes, and a rule on a table's puts holds for the batch's puts."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: batches, action: dynamodb:BatchWriteItem, decision: allow}
          - {id: puts, action: dynamodb:PutItem, decision: allow}
          - {id: audit-stays, action: "dynamodb:*", when: "params.TableName == 'audit'", access_level: Write,
             decision: deny, reason: the audit table is written by the auditors}
        """)
    key = {"k": {"S": "a"}}

    def batch(requests: dict):
        return run(capture("dynamodb", "batch_write_item", RequestItems=requests))
    puts = batch({"orders": [{"PutRequest": {"Item": key}}]})
    assert (puts.action, puts.by_parts) == ("dynamodb:BatchWriteItem", False)
    assert ps.evaluate(principal(), puts).decision == "allow"
    deleting = ps.evaluate(principal(), batch({"orders": [{"PutRequest": {"Item": key}}, {"DeleteRequest": {"Key": key}}]}))
    assert (deleting.decision, deleting.rule) == ("deny", None)  # no rule allows DeleteItem: the default
    assert deleting.reason == "it also asks for dynamodb:DeleteItem on orders: no rule allows dynamodb:DeleteItem; " \
                              "default is deny"
    audit = ps.evaluate(principal(), batch({"orders": [{"PutRequest": {"Item": key}}], "audit": [{"PutRequest": {"Item": key}}]}))
    assert (audit.decision, audit.rule) == ("deny", "audit-stays")
    no_batches = load(tmp_path / "p", "version: 1\nrules:\n  - {id: puts, action: dynamodb:PutItem, decision: allow}\n")
    assert no_batches.evaluate(principal(), puts).decision == "deny"  # the batch's own action is decided too
    held = shipped.evaluate(principal(), batch({"orders": [{"DeleteRequest": {"Key": key}}]}))
    assert (held.decision, held.rule) == ("deny", None)  # the shipped set: BatchWriteItem is a write, on the default
    assert shipped.evaluate(principal(), run(capture("dynamodb", "execute_statement", Statement=(
        "DELETE FROM orders WHERE k = 'a'")))).rule == "destroying-needs-a-human"


def _aws_credential_paths(shape, path: str = "", depth: int = 0, seen: frozenset = frozenset()) -> list[str]:
    """Where an output shape carries AWS credentials: a structure with a secret access key (and its
    session token beside it), as member paths."""
    if depth > 10 or shape.name in seen:
        return []
    seen = seen | {shape.name}
    if shape.type_name == "structure":
        names = {n.lower(): n for n in shape.members}
        if "secretaccesskey" in names:
            return [f"{path}.{names[k]}".lstrip(".") for k in ("accesskeyid", "secretaccesskey", "sessiontoken")
                    if k in names]
        return [p for n, m in shape.members.items() for p in _aws_credential_paths(m, f"{path}.{n}", depth + 1, seen)]
    if shape.type_name == "list":
        return _aws_credential_paths(shape.member, f"{path}[]", depth + 1, seen)
    return []


def test_every_operation_whose_input_is_an_event_stream_is_denied(shipped):
    """The gateway does not read event-stream inputs (they stream for as long as the call lasts):
    a rule could decide such an operation only on its URI's parameters, so the guardrail denies
    each one botocore's models have, whatever an operator's allow."""
    import botocore.session

    from addons.core import actions

    session = botocore.session.get_session()
    found = []
    for service in session.get_available_services():
        model = session.get_service_model(service)
        for operation in model.operation_names:
            if model.operation_model(operation).has_event_stream_input:
                action, level = actions.iam_action(service, operation)
                c = call(action, level)
                c.service, c.operation = service, operation
                d = shipped.evaluate(principal(), c)
                found.append(action)
                assert (d.decision, d.rule) == ("deny", "no-unread-event-streams"), (action, d.decision, d.rule)
    assert "lex:StartConversation" in found and "qbusiness:Chat" in found


def test_no_call_that_answers_with_aws_credentials_reaches_an_agent_unmasked(shipped):
    """Agents never hold AWS credentials: every operation in botocore's models whose answer carries
    a secret access key (STS, S3 Access Grants and Express sessions, EKS pod identity, CodePipeline
    job credentials, ...) is denied by the guardrail whatever the default or an operator's allow,
    or (a read that carries them only beside configuration) has them masked for the agent."""
    import botocore.session

    from addons.core import actions

    session = botocore.session.get_session()
    checked = []
    for service in session.get_available_services():
        model = session.get_service_model(service)
        for operation in model.operation_names:
            shape = model.operation_model(operation).output_shape
            paths = _aws_credential_paths(shape) if shape is not None else []
            if not paths:
                continue
            action, level = actions.iam_action(service, operation)
            c = call(action, level)
            c.service, c.operation = service, operation
            d = shipped.evaluate(principal(), c)
            checked.append(action)
            if d.rule == "no-credential-vending":
                continue
            assert d.decision == "allow" and set(paths) <= set(d.mask_for_agent), (
                f"{action} answers with AWS credentials ({paths}) and is {d.decision} by {d.rule}, not denied by "
                "no-credential-vending nor masked")
    assert len(checked) > 30 and "s3:GetDataAccess" in checked and "sts:AssumeRole" in checked


def test_an_object_written_public_is_a_permission_change_under_the_shipped_policies(shipped, tmp_path):
    """An operator allows agents to write objects (as changes.yaml suggests): an object written with
    a public ACL still waits for an approver, as a ?acl call does."""
    from addons.core.classifier import Classification

    write(tmp_path, "writes.yaml", """
        version: 1
        rules:
          - id: agents-write-objects
            action: s3:PutObject
            decision: allow
    """)
    for f in SHIPPED.glob("*.yaml"):
        write(tmp_path, f.name, f.read_text())
    write(tmp_path, "session/readonly.json", (SHIPPED / "session" / "readonly.json").read_text())
    ps = PolicySet.load(tmp_path)
    put = Classification(service="s3", operation="PutObject", action="s3:PutObject", access_level="Write",
                         resources=["b/k"])
    assert ps.evaluate(principal(), put).decision == "allow"
    put.implied = (Classification(service="s3", operation="PutObject", action="s3:PutObjectAcl",
                                  access_level="Permissions management", resources=["b/k"]),)
    d = ps.evaluate(principal(), put)
    assert (d.decision, d.rule) == ("approve", "permission-changes-need-a-human")
    assert d.reason.startswith("it also asks for s3:PutObjectAcl on b/k")


# Secrets a read hands back that the shipped policies let agents see anyway, each with its reason.
SHIPPED_UNMASKED = {
    ("secretsmanager", "GetRandomPassword"): "a password generated for the caller to set somewhere; nobody's yet",
    # a NoEcho parameter's default: the template GetTemplate hands the agent as written holds it (README,
    # Masking: a template read to be changed and sent back must not carry markers)
    ("cloudformation", "ValidateTemplate"): "a default the template the agent may read holds as written",
    ("cloudformation", "GetTemplateSummary"): "a default the template the agent may read holds as written",
}


def test_shipped_policies_mask_for_agents_every_curated_secret_of_a_call_they_allow(shipped):
    """Where the record's curated list names a secret in a response (Lambda environments, user data,
    secret values, ...), a call the shipped policies allow gets that member masked for the agent too:
    a second read that returns the same secret (ListFunctions beside GetFunction) is no way round."""
    from addons.core import actions
    from addons.core.masking import CURATED

    allowed = []
    for target in (t for t in CURATED if t.direction == "output"):
        for operation in target.operations:
            action, level = actions.iam_action(target.service, operation)
            c = call(action, level)
            c.service, c.operation = target.service, operation
            d = shipped.evaluate(principal(), c)
            if d.decision != "allow" or (target.service, operation) in SHIPPED_UNMASKED:
                continue
            allowed.append(operation)
            missing = [p for p in target.paths if p not in d.mask_for_agent]
            assert not missing, f"{action} is allowed (rule {d.rule}) and returns {missing} unmasked to the agent"
    assert {"ListFunctions", "ListVersionsByFunction", "GetSecretValue", "DescribeLaunchTemplateVersions",
            "ListApiKeys", "GetJob", "GetJobRuns", "DescribeConfigurationSettings", "DescribeListeners",
            "GetFindings"} <= set(allowed)


# Members botocore marks `sensitive` in the answers of reads the shipped policies allow that reach
# the agent in clear, each (service, operation, member path) with why it is no secret that lets its
# holder in somewhere: the trait marks personal data, content and logic too, which the record masks
# and an agent that may read the resource reads. Globs: `*` is any text, case does not matter, `[]`
# is a list's items, `*` a map's values and `.<keys>` its keys.
_PERSONAL = "names, contact details and addresses (of people, devices, resources), ids of people: not a key to anything"
_CONTENT = "the content the read is made for (a model's answer, a message, a document, a result, an event), not a key"
_TEXT = "free text people write about a resource (a description, a comment, a title, instructions, a prompt)"
_PLACES = "places, positions and routes the call finds or computes: what it is made for"
_PRESIGNED = ("a presigned URL the read is made for (a download, an upload, a log, an embedded session): short-lived, "
              "for that one object, and of no use masked")
_PUBLIC = "public material: a certificate, a public key, a signing request"
_IDS = "an identifier: a key's, a secret's, a client's or a role's id or ARN, not the secret it names"
_LOGIC = "a query, expression, schema, template or code a resource runs: logic, not a credential"
_NETWORK = "network addresses, ports and address ranges"
_CONFIG = "a resource's settings that hold no credential (metadata, filters, rules, policies, routing)"
SENSITIVE_NOT_SECRET = [
    # across services: what the trait also marks
    ("*", "*", "*nexttoken", "a pagination token: it pages the call it came from"),
    ("*", "*", "*tags*", "resource tags: labels"),
    ("*", "*", "*name", _PERSONAL),
    ("*", "*", "*names[]", _PERSONAL),
    ("*", "*", "*email*", _PERSONAL),
    ("*", "*", "*phone*", _PERSONAL),
    ("*", "*", "*address*", _PERSONAL),
    ("*", "*", "*birth*", _PERSONAL),
    ("*", "*", "*gender*", _PERSONAL),
    ("*", "*", "*.city", _PERSONAL),
    ("*", "*", "*country*", _PERSONAL),
    ("*", "*", "*postalcode*", _PERSONAL),
    ("*", "*", "*street*", _PERSONAL),
    ("*", "*", "*contact*", _PERSONAL),
    ("*", "*", "*description", _TEXT),
    ("*", "*", "*comment", _TEXT),
    ("*", "*", "*title", _TEXT),
    ("*", "*", "*message", _TEXT),
    ("*", "*", "*instructions", _TEXT),
    ("*", "*", "*presignedurl", _PRESIGNED),
    ("*", "*", "*downloadurl", _PRESIGNED),
    ("*", "*", "*embedurl", _PRESIGNED),
    ("*", "*", "*arn", _IDS),
    ("*", "*", "*keyid", _IDS),
    ("*", "*", "*.<keys>", "the names of a map's entries: where its values are secrets, a rule masks them"),
    ("*", "*", "*port", _NETWORK),
    ("*", "*", "*ip", _NETWORK),
    ("*", "*", "*iprange", _NETWORK),
    ("*", "*", "*certificate", _PUBLIC),
    ("*", "*", "*certificates[]", _PUBLIC),
    ("*", "*", "*certificatechain", _PUBLIC),
    ("*", "*", "*certificatesigningrequest", _PUBLIC),
    ("*", "*", "*publickey", _PUBLIC),
    ("*", "*", "*publickeys[]", _PUBLIC),
    # services whose traits mark content, people and places
    ("geo-places", "*", "*", _PLACES),
    ("geo-routes", "*", "*", _PLACES),
    ("location", "*", "*", _PLACES),
    ("sagemaker-geospatial", "*", "*", _PLACES),
    ("networkmanager", "*", "*", _PLACES),
    ("qconnect", "*", "*", _CONTENT),
    ("wisdom", "*", "*", _CONTENT),
    ("bedrock", "*", "*", _CONTENT),
    ("bedrock-runtime", "*", "*", _CONTENT),
    ("bedrock-agent", "*", "*", _CONTENT),
    ("bedrock-agent-runtime", "*", "*", _CONTENT),
    ("bedrock-agentcore", "*", "*", _CONTENT),
    ("bedrock-agentcore-control", "*", "*", "prompts, tool schemas, model endpoints and OAuth request parameters "
     "(an audience, a scope): an agent's configuration, whose credentials sit in AgentCore Identity"),
    ("agent-registry*", "*", "*", "agent cards, tool descriptions and OAuth request parameters a registry publishes"),
    ("bedrock-data-automation", "*", "*", _CONTENT),
    ("comprehend", "*", "*", _CONTENT),
    ("lex-runtime", "*", "*", _CONTENT),
    ("lexv2-runtime", "*", "*", _CONTENT),
    ("polly", "*", "*", _CONTENT),
    ("rekognition", "*", "*", _CONTENT),
    ("translate", "*", "*", _CONTENT),
    ("sagemaker", "*", "*", _CONTENT),
    ("sagemaker-runtime", "*", "*", _CONTENT),
    ("sagemakertrainingsessionruntime", "*", "*", _CONTENT),
    ("personalize-runtime", "*", "*", _CONTENT),
    ("stepfunctions", "*", "*", "a workflow's input, output, state and definition: the data it processes"),
    ("lambda", "GetDurableExecution*", "*", "a durable execution's input, results and errors: the data it processes"),
    ("securityagent", "*", "*", "messages a test actor received, and CA certificates it trusts: what the read is for"),
    ("security-ir", "*", "*", _CONTENT),
    ("codebuild", "*", "commandExecutions[]*", "a sandbox command and its output: what the read is for"),
    ("ebs", "*", "*", "snapshot blocks: the data the read is made for"),
    ("cloudfront-keyvaluestore", "*", "*", "a key value store's values: the data the read is made for"),
    ("appconfig", "*", "*", "a configuration the read fetches (flags, settings): what it is made for"),
    ("appconfigdata", "*", "*", "a configuration the read fetches (flags, settings): what it is made for"),
    ("mpa", "*", "*", "approval requests and the policies they are decided by"),
    ("arc-region-switch", "*", "*", _CONTENT),
    ("backupsearch", "*", "*", "file paths and object keys a search finds"),
    ("rds", "DownloadDBLogFilePortion", "*", "a database log: what the read is made for"),
    ("rds", "DescribeDBProxyTargetGroups", "*", "SQL a proxy runs on each new connection (SET statements)"),
    ("supplychain", "*", "*", _LOGIC),
    ("timestream-query", "*", "*", _LOGIC),
    ("customer-profiles", "*", "*", _PERSONAL),
    ("identitystore", "*", "*", _PERSONAL),
    ("partnercentral-*", "*", "*", _PERSONAL),
    ("workdocs", "*", "*", _PERSONAL),
    ("workmail", "*", "*", _PERSONAL),
    ("ds-data", "*", "*", _PERSONAL),
    ("organizations", "*", "*", _PERSONAL),
    ("medical-imaging", "*", "*", _PERSONAL),
    ("connecthealth", "*", "*", _PERSONAL),
    ("connectcases", "*", "*", _PERSONAL),
    ("voice-id", "*", "*", _PERSONAL),
    ("payments", "*", "*", "the last digits and expiry of a card, and its holder: personal data"),
    ("taxsettings", "*", "*", _PERSONAL),
    ("invoicing", "*", "*", _PERSONAL),
    ("sesv2", "*", "*", _PERSONAL),
    ("chime*", "*", "*", _PERSONAL),
    ("connect", "*", "*", _PERSONAL),
    ("cognito-idp", "*", "*", "users' and devices' attributes, and app client ids (the client secret a rule masks)"),
    ("gamelift", "*", "*", "game session and player data, and fleets' ports and address ranges"),
    ("iot-managed-integrations", "*", "*", "devices' makes, models, serial numbers and owners, a claim certificate, "
     "an OAuth authorization URL (the device keys a rule masks)"),
    ("wellarchitected", "*", "*", _TEXT),
    ("proton", "*", "*", "templates, specs and their outputs: infrastructure as code"),
    ("deadline", "*", "*", "render job templates, parameters, scripts and paths"),
    ("verifiedpermissions", "*", "*", "policies, schemas and the claims an identity source maps"),
    ("auditmanager", "*", "*", _TEXT),
    ("frauddetector", "*", "*", "events, variables, lists and rules: what a detector decides on"),
    ("datazone", "*", "*", "catalog metadata, notebooks, schedules and lineage (the connection credentials a rule masks)"),
    ("quicksight", "*", "*", "datasets' SQL and filters, topics, prompts, automation payloads and OAuth endpoints "
     "(data source passwords a rule masks)"),
    ("workspaces-web", "*", "*", "browser policies, URL filters, IP rules, cookie names and log buckets "
     "(the identity provider's secret a rule masks)"),
    ("pipes", "*", "*", "a pipe's source and target settings: queues, partitions, SQL, templates, subnets "
     "(the headers and query parameters sent to HTTP targets a rule masks)"),
    ("eventbridgev2", "*", "*", "subscribers' targets, filters and transforms, and event sources' webhook URLs "
     "(the headers and query parameters sent to HTTP targets a rule masks)"),
    ("events", "ListTargetsByRule", "*", _LOGIC),
    ("firehose", "DescribeDeliveryStream", "*", "where a stream delivers: accounts, databases, tables, users, endpoints"),
    ("glue", "*", "*", "visual jobs' graphs, data quality results, sampled records and a dashboard URL"),
    ("iot", "*", "*", "a package version's attributes and recipe, a thing's connection addresses"),
    ("iotfleetwise", "*", "*", "campaigns' signals and where their data is stored"),
    ("iotsitewise", "*", "*", "portal contacts, searches and tasks' images, commands and roles"),
    ("iotwireless", "*", "*", "a device profile's public key and its fingerprint"),
    ("mailmanager", "*", "*", "rule conditions and actions, certificates an ingress point trusts, a presigned import URL"),
    ("transfer", "*", "*", "certificates (public) and a web app's branding"),
    ("cleanrooms", "*", "*", _LOGIC),
    ("cleanroomsml", "*", "*", _LOGIC),
    ("backup", "*", "*", "restore metadata (resource settings a restore applies) and access point metadata"),
    ("cloudcontrol", "*", "*", "a resource's properties as Cloud Control returns them, which never include "
     "write-only ones (passwords among them)"),
    ("cloudfront", "*", "*FunctionCode", "a function's code"),
    ("apprunner", "*", "*", "build and start commands, and the ARNs of the secrets a service's environment takes"),
    ("ecs", "*", "*repositoryCredentials", "the ARN of the secret a registry login is kept in"),
    ("amplify", "*", "*buildSpec", "a build specification: commands (the environment they read a rule masks)"),
    ("amplifybackend", "*", "*", "verification and reset messages, and social sign-in settings whose secrets a rule masks"),
    ("emr-serverless", "*", "*", "a job's entry point script, query and init file: where its code is"),
    ("emr-containers", "*", "*entryPoint", "a job's entry point script"),
    ("devicefarm", "*", "*", "presigned URLs of uploads, artifacts and reports, and remote access sessions' endpoints"),
    ("ec2", "*", "*", "a bundle's upload policy (its signature a rule masks), import manifests' and images' URLs, "
     "a TPM's public key, UEFI variables"),
    ("gameliftstreams", "*", "*", "a stream session's signaling and URL: what the read is made for"),
    ("inspector2", "*", "*", "a code repository integration's authorization URL, instance URL and CA certificate"),
    ("dms", "*", "*", "migration selection rules, public addresses and assessment reports' URLs"),
    ("endusermessaging", "*", "*", "brand attributes and message templates"),
    ("grafana", "*", "*", "SAML role values and organizational units"),
    ("healthlake", "*", "*", _CONFIG),
    ("resource-explorer-2", "*", "*", _CONFIG),
    ("resiliencehubv2", "*", "*", _CONFIG),
    ("continuum", "*", "*", "a resource policy"),
    ("discovery", "*", "*", _NETWORK),
    ("storagegateway", "*", "*", _NETWORK),
    ("drs", "*", "*", _TEXT),
    ("ds", "*", "*", _TEXT),
    ("pi", "*", "*", _TEXT),
    ("trustedadvisor", "*", "*", _TEXT),
    ("ssm", "*", "*OwnerInformation", _TEXT),
    ("personalize", "*", "*", _LOGIC),
    ("ssm-sap", "*", "*", _IDS),
    ("qbusiness", "*", "*", "a plugin's API schema and a KMS key id"),
    ("workspaces-thin-client", "*", "*", "a desktop's endpoint and the last user's id (activation codes a rule masks)"),
    ("secretsmanager", "GetRandomPassword", "*", "a password generated for the caller to set somewhere; nobody's yet"),
]


@functools.lru_cache(maxsize=1)
def _models() -> tuple[tuple[str, dict], ...]:
    """Every service botocore knows, with its model as botocore's JSON has it."""
    import botocore.loaders
    import botocore.session

    loader = botocore.loaders.create_loader()
    return tuple((service, loader.load_service_model(service, "service-2"))
                 for service in botocore.session.get_session().get_available_services())


def _sensitive_members(shapes: dict, top: str) -> list[tuple[str, ...]]:
    """The steps to each member below ``top`` whose shape botocore marks sensitive (member names,
    ``[]`` for a list's items, ``*`` for a map's values, ``<keys>`` for its keys), down to the
    first sensitive shape of each branch, a recursive shape walked once."""
    found: list[tuple[str, ...]] = []

    def walk(name: str, steps: tuple[str, ...], seen: frozenset) -> None:
        shape = shapes[name]
        if shape.get("sensitive"):
            found.append(steps)
            return
        if name in seen:
            return
        seen = seen | {name}
        if shape["type"] == "structure":
            for member, ref in shape.get("members", {}).items():
                walk(ref["shape"], steps + (member,), seen)
        elif shape["type"] == "list":
            walk(shape["member"]["shape"], steps + ("[]",), seen)
        elif shape["type"] == "map":
            if shapes[shape["key"]["shape"]].get("sensitive"):
                found.append(steps + ("<keys>",))
            walk(shape["value"]["shape"], steps + ("*",), seen)

    walk(top, (), frozenset())
    return found


def _member_path(steps: tuple[str, ...]) -> str:
    return "".join(s if s == "[]" else ("." if i else "") + s for i, s in enumerate(steps))


def _glob(pattern: str) -> re.Pattern:
    return re.compile(".*".join(map(re.escape, pattern.split("*"))) + r"\Z", re.I | re.S)


def _masked_for_agent(steps: tuple[str, ...], paths: tuple[str, ...]) -> bool:
    """Whether one of a decision's mask_for_agent paths masks the member: it names the member or
    one around it, or what inside the member holds the secret (an environment's values, whose
    names stay readable; a client secret beside its client id). A map's keys no path masks."""
    from addons.core.masking import parse_path

    member = tuple(s for s in steps if s != "[]")
    if "<keys>" in member:
        return False
    for path in paths:
        steps_ = parse_path(path)
        n = min(len(steps_), len(member))
        if steps_[:n] == member[:n]:
            return True
    return False


def test_shipped_policies_mask_for_agents_every_sensitive_member_of_a_read_they_allow(shipped):
    """A member botocore marks `sensitive` in the answer of a read the shipped policies allow
    (List, Read) reaches the agent masked, a rule in secrets.yaml naming it, or is listed in
    SENSITIVE_NOT_SECRET with why it is no secret. The record masks every such member; a password,
    key or token among them (a DMS endpoint's password, a virtual MFA device's seed, an ACME
    account binding's MAC key, a Location Service API key) must not reach the agent in clear from
    a read that is allowed. Every entry of the list still matches a member."""
    from addons.core import actions

    exempt = [(_glob(s), _glob(o), _glob(p)) for s, o, p, _ in SENSITIVE_NOT_SECRET]
    used: set[int] = set()
    unmasked: list[str] = []
    masked: set[str] = set()
    for service, model in _models():
        shapes = model["shapes"]
        for operation, spec in model["operations"].items():
            members = _sensitive_members(shapes, spec["output"]["shape"]) if "output" in spec else []
            if not members:
                continue
            action, level = actions.iam_action(service, operation)
            c = call(action, level)
            c.service, c.operation = service, operation
            d = shipped.evaluate(principal(), c)
            if d.decision != "allow":
                continue
            for steps in members:
                path = _member_path(steps)
                if _masked_for_agent(steps, d.mask_for_agent):
                    masked.add(f"{action} {path}")
                    continue
                hit = next((i for i, (s, o, p) in enumerate(exempt)
                            if s.match(service) and o.match(operation) and p.match(path)), None)
                if hit is None:
                    unmasked.append(f"{action} ({service} {operation}) {path}")
                else:
                    used.add(hit)
    assert not unmasked, (f"reads the shipped policies allow (rule read-only) hand the agent {len(unmasked)} "
                          "members botocore marks sensitive in clear: " + "; ".join(unmasked[:25]))
    stale = [SENSITIVE_NOT_SECRET[i][:3] for i in range(len(SENSITIVE_NOT_SECRET)) if i not in used]
    assert not stale, f"SENSITIVE_NOT_SECRET entries that match no member: {stale}"
    assert {"acm:GetAcmeExternalAccountBindingCredentials MacKey", "geo:DescribeKey Key",
            "iam:ListVirtualMFADevices VirtualMFADevices[].Base32StringSeed",
            "dms:DescribeEndpoints Endpoints[].PostgreSQLSettings.Password",
            "route53globalresolver:GetAccessToken value", "bedrock-agentcore:GetAgentRuntime environmentVariables",
            "iotmanagedintegrations:GetManagedThing DeviceSpecificKey",
            "interconnect:GetConnection connection.activationKey",
            "evs:GetEnvironment environment.licenseInfo[].vsanKey"} <= masked


def test_every_mask_for_agent_path_of_the_shipped_policies_is_masked_in_the_record_too(shipped):
    """What secrets.yaml masks for the agent the record masks too, whatever policies an operator
    runs: each mask_for_agent path, in the answer of every operation its rule matches where it
    names something, is a curated target of that operation (or inside one) or a member botocore
    marks sensitive (or inside one, or a map or list whose values are)."""
    from addons.core import actions
    from addons.core.masking import CURATED, parse_path, policy_path_reaches

    checked, unrecorded = 0, []
    for service, model in _models():
        shapes = model["shapes"]
        for operation, spec in model["operations"].items():
            if "output" not in spec:
                continue
            action, level = actions.iam_action(service, operation)
            c = call(action, level)
            c.service, c.operation = service, operation
            d = shipped.evaluate(principal(), c)
            if d.decision != "allow" or not d.mask_for_agent:
                continue
            curated = [parse_path(p) for t in CURATED if t.service == service and operation in t.operations
                       and t.direction == "output" for p in t.paths]
            for path in d.mask_for_agent:
                if not policy_path_reaches(service, operation, path):
                    continue
                checked += 1
                steps = parse_path(path)
                if any(steps[:len(target)] == target for target in curated):
                    continue
                shape, sensitive = shapes[spec["output"]["shape"]], False
                for step in steps:
                    while shape["type"] == "list":
                        shape = shapes[shape["member"]["shape"]]
                    ref = shape["value"] if shape["type"] == "map" else shape.get("members", {}).get(step)
                    if ref is None:
                        break
                    shape = shapes[ref["shape"]]
                    if shape.get("sensitive"):
                        sensitive = True
                        break
                else:
                    while not sensitive and shape["type"] in ("list", "map"):
                        shape = shapes[shape["member" if shape["type"] == "list" else "value"]["shape"]]
                        sensitive = bool(shape.get("sensitive"))
                if not sensitive:
                    unrecorded.append(f"{action} ({service} {operation}) {path} (rule {d.rule})")
    assert not unrecorded, ("the shipped policies mask for the agent what the record keeps in clear (neither "
                            "curated nor sensitive): " + "; ".join(unrecorded))
    assert checked > 300


def test_shipped_policies_keep_roles_to_the_listed_ones(shipped):
    who = principal()
    listed = "arn:aws:iam::123456789012:role/agent-workload"
    other = "arn:aws:iam::123456789012:role/admin"
    d = shipped.evaluate(who, call("lambda:CreateFunction", "Write", {"FunctionName": "f", "Role": other}))
    assert (d.decision, d.rule) == ("deny", "no-handing-unlisted-roles-to-services")
    d = shipped.evaluate(who, call("lambda:CreateFunction", "Write", {"FunctionName": "f", "Role": listed}))
    assert (d.decision, d.rule) == ("deny", None)  # writes stay on the default
    d = shipped.evaluate(who, call("ec2:RunInstances", "Write", {"IamInstanceProfile": {"Name": "admin"}}))
    assert d.rule == "no-handing-unlisted-roles-to-services"
    assert shipped.evaluate(who, call("iam:PassRole", "Write", resources=[other])).rule == "pass-only-listed-roles"
    assert shipped.evaluate(who, call("iam:PassRole", "Write", resources=[listed])).rule is None
    # a read that names a role is not a hand-over
    assert shipped.evaluate(who, call("iam:GetRole", "Read", {"RoleArn": other})).decision == "allow"


@pytest.mark.parametrize("service, method, params", [
    ("events", "put_targets", {"Rule": "r", "Targets": [{"Id": "1", "Arn": "arn:aws:sqs:us-east-1:123456789012:q",
                                                        "RoleArn": "arn:aws:iam::123456789012:role/admin"}]}),
    ("scheduler", "create_schedule", {"Name": "s", "ScheduleExpression": "rate(1 hour)", "FlexibleTimeWindow":
                                      {"Mode": "OFF"}, "Target": {"Arn": "arn:aws:sqs:us-east-1:123456789012:q",
                                                                  "RoleArn": "arn:aws:iam::123456789012:role/admin"}}),
    ("codebuild", "create_project", {"name": "project", "source": {"type": "NO_SOURCE", "buildspec": "x"},
                                     "artifacts": {"type": "NO_ARTIFACTS"}, "environment": {
                                         "type": "LINUX_CONTAINER", "image": "i", "computeType": "BUILD_GENERAL1_SMALL"},
                                     "serviceRole": "admin"}),
    ("autoscaling", "create_launch_configuration", {"LaunchConfigurationName": "lc", "IamInstanceProfile": "admin",
                                                    "ImageId": "ami-1", "InstanceType": "t3.micro"}),
    ("ec2", "create_launch_template", {"LaunchTemplateName": "lt", "LaunchTemplateData": {
        "IamInstanceProfile": {"Arn": "arn:aws:iam::123456789012:instance-profile/admin"}}}),
    ("ecs", "create_service", {"serviceName": "s", "role": "admin"}),
    ("emr", "run_job_flow", {"Name": "j", "Instances": {}, "JobFlowRole": "admin", "ServiceRole": "agent-workload"}),
])
def test_no_write_hands_an_unlisted_role_to_a_service_wherever_it_names_it(shipped, service, method, params):
    """The guardrail reads every role a call's parameters name, at any depth and under any member
    name services use, not a fixed list of top-level members."""
    from tests.test_classifier import capture, run

    got = run(capture(service, method, **params))
    assert got.access_level in ("Write", "Permissions management"), got
    d = shipped.evaluate(principal(), got)
    assert (d.decision, d.rule) == ("deny", "no-handing-unlisted-roles-to-services"), (got.action, d.rule, d.reason)
    listed = run(capture("lambda", "create_function", FunctionName="f", Role="arn:aws:iam::123456789012:role/agent-workload",
                         Code={"ZipFile": b"x"}, Runtime="python3.12", Handler="h.h"))
    assert shipped.evaluate(principal(), listed).rule is None  # a listed role: writes stay on the default
    assert shipped.evaluate(principal(), run(capture("iam", "create_role", RoleName="new-role",
                                                     AssumeRolePolicyDocument="{}"))).rule != \
        "no-handing-unlisted-roles-to-services"  # IAM's own calls name the roles they manage


def test_shipped_policies_pass_check():
    assert engine.check(SHIPPED) == []


# ------------------------------------------------------------------------------ speed


def test_evaluating_a_call_compiles_nothing(shipped, tmp_path, monkeypatch):
    """About 30 rules, several with conditions: every expression is compiled when the policies load,
    none on the path of a call (scripts/bench_policy.py measures what an evaluation costs)."""
    for f in SHIPPED.glob("*.yaml"):
        write(tmp_path, f.name, f.read_text())
    write(tmp_path, "session/readonly.json", (SHIPPED / "session/readonly.json").read_text())
    extra = "version: 1\nrules:\n" + "".join(
        f"  - {{id: team-{i}, action: 's3:GetObject', principal: {{groups: [team-{i}]}}, "
        f"when: \"length(resource[?starts_with(@, 'arn:aws:s3:::team-{i}-')]) > `0`\", decision: allow}}\n"
        for i in range(16))
    write(tmp_path, "zz.yaml", extra)
    ps = PolicySet.load(tmp_path)
    assert len(ps.rules) == 47
    who = principal(groups=("dev", "team-3"))
    calls = [call("ec2:DescribeInstances", "List"), call("iam:CreateAccessKey", "Write"),
             call("s3:GetObject", "Read", resources=["arn:aws:s3:::team-3-x/k"]),
             call("lambda:CreateFunction", "Write", {"Role": "arn:aws:iam::1:role/x"})]
    before = [ps.evaluate(who, c) for c in calls]
    assert [d.decision for d in before] == ["allow", "deny", "allow", before[3].decision]

    def compiled(*args, **kwargs):
        raise AssertionError("a jmespath expression was compiled while a call was evaluated")
    monkeypatch.setattr(jmespath, "compile", compiled)
    monkeypatch.setattr(jmespath.parser.Parser, "parse", compiled)
    for _ in range(3):
        assert [ps.evaluate(who, c) for c in calls] == before


def test_an_s3_call_naming_a_version_is_decided_as_the_version_and_as_the_object(tmp_path):
    """IAM authorises a call with a VersionId as the version's action (s3:GetObjectVersion,
    s3:DeleteObjectVersion, ...): a rule on the version action decides it; a rule on the object's
    own action still holds for its versions (naming a version is no way round a deny), and the
    object's masks hold for the version's answer."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: reads, access_level: [Read, List], decision: allow}
          - {id: dev-deletes, action: s3:DeleteObject, when: "params.Bucket == 'dev'", decision: allow}
          - {id: keep-history, action: [s3:DeleteObjectVersion, s3:GetObjectVersion], when: "params.Bucket == 'dev'",
             decision: deny, reason: old versions stay where they are}
          - {id: no-secrets, action: s3:GetObject, when: "starts_with(params.Key, 'secret/')", decision: deny,
             reason: secrets are not read}
          - {id: mask-bodies, action: s3:GetObject, when: "params.Bucket == 'masked'", decision: allow,
             mask_for_agent: [Body]}
        """)

    def decide(method: str, **params):
        return ps.evaluate(principal(), run(capture("s3", method, **params)))
    assert decide("delete_object", Bucket="dev", Key="k").rule == "dev-deletes"
    assert decide("delete_object", Bucket="dev", Key="k", VersionId="v1").rule == "keep-history"
    assert decide("get_object", Bucket="dev", Key="k", VersionId="v1").rule == "keep-history"
    assert decide("get_object", Bucket="dev", Key="k").decision == "allow"
    denied = decide("get_object", Bucket="other", Key="secret/db", VersionId="v1")
    assert (denied.decision, denied.rule) == ("deny", "no-secrets")
    assert denied.reason == "it also asks for s3:GetObject on other/secret/db: secrets are not read"
    assert decide("head_object", Bucket="other", Key="secret/db", VersionId="v1").rule == "no-secrets"
    masked = decide("get_object", Bucket="masked", Key="k", VersionId="v1")
    assert (masked.decision, masked.mask_for_agent) == ("allow", ("Body",))
    batch = decide("delete_objects", Bucket="dev", Delete={"Objects": [{"Key": "a"}, {"Key": "b", "VersionId": "v2"}]})
    assert (batch.decision, batch.rule) == ("deny", "keep-history")


def test_a_delete_objects_is_decided_object_by_object_and_a_copy_of_a_version_as_the_object(tmp_path):
    """DeleteObjects is authorised by IAM object by object (s3:DeleteObject, s3:DeleteObjectVersion
    for a version): a rule on a key or on resource decides each object, not only the bucket; a
    copy whose source names a version is a read of that version and of the object, so a deny on
    reading the object holds for the copy."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: s3, action: "s3:*", decision: allow}
          - {id: keep-audit, action: [s3:DeleteObject, s3:DeleteObjectVersion],
             when: "length(resource[?starts_with(@, 'bkt/audit/')]) > `0`", decision: deny, reason: audit stays}
          - {id: keep-by-key, action: s3:DeleteObject, when: "starts_with(params.Key, 'legal/')", decision: deny,
             reason: legal holds stay}
          - {id: no-secrets, action: s3:GetObject, when: "ends_with(params.Key, '.secret')", decision: deny,
             reason: secrets are not read}
          - {id: no-bypass, action: [s3:DeleteObject, s3:DeleteObjectVersion], when: "params.BypassGovernanceRetention",
             decision: deny, reason: governance holds}
        """)

    def decide(method: str, **params):
        return ps.evaluate(principal(), run(capture("s3", method, **params)))
    assert decide("delete_objects", Bucket="bkt", Delete={"Objects": [{"Key": "tmp/1"}]}).decision == "allow"
    for objects in ([{"Key": "tmp/1"}, {"Key": "audit/log1"}], [{"Key": "audit/log1", "VersionId": "v"}]):
        assert decide("delete_objects", Bucket="bkt", Delete={"Objects": objects}).rule == "keep-audit", objects
    assert decide("delete_objects", Bucket="bkt", Delete={"Objects": [{"Key": "legal/1"}]}).rule == "keep-by-key"
    # the call's own members hold for each object
    assert decide("delete_objects", Bucket="bkt", BypassGovernanceRetention=True,
                  Delete={"Objects": [{"Key": "tmp/1"}]}).rule == "no-bypass"
    copied = decide("copy_object", Bucket="bkt", Key="pub.txt",
                    CopySource={"Bucket": "bkt", "Key": "db.secret", "VersionId": "v"})
    assert (copied.decision, copied.rule) == ("deny", "no-secrets")
    assert decide("copy_object", Bucket="bkt", Key="pub.txt", CopySource={"Bucket": "bkt", "Key": "db.txt",
                                                                          "VersionId": "v"}).decision == "allow"


def test_a_rule_on_resource_sees_every_resource_a_call_names(tmp_path, monkeypatch):
    """A deny on `resource` cannot be padded past: the 33rd instance id is decided on as the first
    is (the record keeps 32 and says how many more); a call naming more than the classifier reads
    (100,000) is not decided at all."""
    from addons.core import classifier as classifier_module
    from addons.core.store import record_row
    from addons.core.records import Record
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: stops, action: ec2:StopInstances, decision: allow}
          - {id: protect-prod, action: ec2:StopInstances, when: "contains(resource, 'i-0prod')", decision: deny,
             reason: the production database stays up}
        """)
    ids = [f"i-{n:017x}" for n in range(40)] + ["i-0prod"]
    call = run(capture("ec2", "stop_instances", InstanceIds=ids))
    assert call.resources[-1] == "i-0prod" and len(call.resources) == 41
    assert ps.evaluate(principal(), call).rule == "protect-prod"
    row = record_row(Record(resources=call.resources))
    assert len(row["resources"]) == 33 and row["resources"][-1] == "agentgate:not-kept: 9 more"
    assert classifier_module.MAX_RESOURCES == 100_000
    monkeypatch.setattr(classifier_module, "MAX_RESOURCES", 40)  # (100,000 ids make a slow test)
    too_many = run(capture("ec2", "stop_instances", InstanceIds=ids))
    assert "more than 40 resources" in too_many.error  # the classify stage decides a call with an error as unknown
    # names of attributes are not resources
    received = run(capture("sqs", "receive_message", QueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/q",
                           AttributeNames=["All"], MessageAttributeNames=["a", "b"]))
    assert received.resources == ["https://sqs.us-east-1.amazonaws.com/123456789012/q", "q"]


def test_parts_needing_different_approvers_are_refused_and_masks_of_approved_parts_hold(tmp_path):
    """One approval releases the whole call: parts that rules give to different approvers make it
    refused (an agent could otherwise pick the easier group by ordering the parts); an approved
    part's masks hold for the answer as an allowed part's do, whichever part comes first."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: items, action: "dynamodb:*", access_level: [Read, Write], decision: allow}
          - {id: orders-delete, action: dynamodb:DeleteItem, when: "params.TableName == 'orders'", decision: approve,
             approvers: {groups: [sre]}}
          - {id: audit-put, action: dynamodb:PutItem, when: "params.TableName == 'audit'", decision: approve,
             approvers: {groups: [dba]}}
          - {id: people-mask, action: dynamodb:GetItem, when: "params.TableName == 'people'", decision: allow,
             mask_for_agent: [Item.ssn]}
          - {id: people-approve, action: dynamodb:GetItem, when: "params.TableName == 'people'", decision: approve,
             approvers: {groups: [privacy]}}
        """)
    key = {"id": {"S": "1"}}

    def decide(method: str, **params):
        return ps.evaluate(principal(), run(capture("dynamodb", method, **params)))
    both = decide("transact_write_items", TransactItems=[{"Delete": {"TableName": "orders", "Key": key}},
                                                         {"Put": {"TableName": "audit", "Item": key}}])
    assert (both.decision, both.rule) == ("deny", "agentgate:approvers-differ")
    assert "orders-delete (approvers: group sre)" in both.reason and "audit-put (approvers: group dba)" in both.reason
    one = decide("transact_write_items", TransactItems=[{"Delete": {"TableName": "orders", "Key": key}},
                                                        {"Put": {"TableName": "misc", "Item": key}}])
    assert (one.decision, one.rule) == ("approve", "orders-delete")
    # one action two approve rules give to different approvers: refused too
    two = load(tmp_path / "two", """
        version: 1
        rules:
          - {id: dst-sre, action: "s3:PutObject*", decision: approve, approvers: {groups: [sre]}}
          - {id: tags-dba, action: s3:PutObjectTagging, decision: approve, approvers: {groups: [dba]}}
        """)
    tagged = two.evaluate(principal(), run(capture("s3", "put_object_tagging", Bucket="dst", Key="o",
                                                    Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})))
    assert (tagged.decision, tagged.rule) == ("deny", "agentgate:approvers-differ")
    for tables in (["misc", "people"], ["people", "misc"]):
        held = decide("transact_get_items", TransactItems=[{"Get": {"TableName": t, "Key": key}} for t in tables])
        assert (held.decision, held.mask_for_agent) == ("approve", ("Item.ssn",)), tables


def test_the_check_of_a_version_reads_that_version_not_what_the_directory_holds_later(tmp_path, caplog):
    """The check runs a moment after a version is put in force; by then the directory may hold the
    next one: the findings logged under a version are that version's."""
    import logging

    from addons.policy import check_in_background

    path = write(tmp_path, "p.yaml", "version: 1\nrules:\n  - {id: first, action: lambda:Invoke, decision: deny}\n")
    first = PolicySet.load(tmp_path)
    path.write_text("version: 1\nrules:\n  - {id: second, action: s3:ListObjectsV2, decision: deny}\n")
    with caplog.at_level(logging.WARNING, logger="agentgate.policy"):
        check_in_background(first).join(60)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and logged[0].startswith(f"policy version {first.version}: p.yaml:3: rule first: "
                                                     "lambda:Invoke is an API operation's name"), logged


def test_a_table_named_by_its_arn_in_a_batch_or_a_write_meets_rules_on_its_name(tmp_path):
    """A BatchWriteItem's requests and a write's item reads named the table as sent: by its ARN, a
    rule on contains(resource, 'audit-log') missed the batch's delete, and the read's item masks
    missed the write (its ReturnValues handed the attribute over in clear)."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: tables, action: "dynamodb:*", decision: allow}
          - {id: audit-is-append-only, action: [dynamodb:DeleteItem, dynamodb:PutItem],
             when: "contains(resource, 'audit-log')", decision: deny}
          - {id: orders-ssn, action: "dynamodb:*", access_level: [List, Read], when: "contains(resource, 'orders')",
             decision: allow, mask_for_agent: [Item.ssn]}
    """)
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/{}"
    batch = run(capture("dynamodb", "batch_write_item", RequestItems={
        arn.format("audit-log"): [{"DeleteRequest": {"Key": {"id": {"S": "2"}}}}]}))
    d = ps.evaluate(principal(), batch)
    assert (d.decision, d.rule) == ("deny", "audit-is-append-only"), d
    write = run(capture("dynamodb", "update_item", TableName=arn.format("orders"), Key={"id": {"S": "1"}},
                        UpdateExpression="SET #n = #n", ExpressionAttributeNames={"#n": "name"}, ReturnValues="ALL_OLD"))
    d = ps.evaluate(principal(), write)
    assert d.decision == "allow" and "Item.ssn" in d.mask_for_agent, d


def test_a_failed_condition_is_said_without_the_values_it_failed_on(tmp_path):
    """jmespath's type error quotes the value: a reason holding it went to the agent, approvers and
    the record, with a secret the body masked (CreateSecret's SecretString) in clear."""
    from tests.test_classifier import capture, run

    ps = load(tmp_path, """
        version: 1
        rules:
          - {id: secrets, action: "secretsmanager:*", decision: allow}
          - {id: no-tags, action: "secretsmanager:*", when: "contains(params, 'Tags')", decision: deny}
    """)
    create = run(capture("secretsmanager", "create_secret", Name="app-db", SecretString="SuperSecretPassw0rd!"))
    d = ps.evaluate(principal(), create)
    assert (d.decision, d.rule) == ("deny", "no-tags")
    assert "SuperSecretPassw0rd!" not in d.reason and "contains() takes array or string, not object" in d.reason


def test_a_role_binding_whose_claims_cannot_be_tested_gives_no_role(tmp_path):
    """A binding narrowing contractors by their email claim: a token whose email came as a list
    fell through to the broad binding after it; it now gets no role."""
    ps = load(tmp_path, """
        version: 1
        roles:
          - principal: {claims: "ends_with(email, '@contractors.example')"}
            role_arn: arn:aws:iam::123456789012:role/contractor
          - role_arn: arn:aws:iam::123456789012:role/agent-role
        rules:
          - {id: all, action: "*", decision: allow}
    """)
    assert ps.role_for(principal(claims={"email": "bob@contractors.example"})).role_arn.endswith("/contractor")
    assert ps.role_for(principal(claims={"email": "ann@example.com"})).role_arn.endswith("/agent-role")
    assert ps.role_for(principal(claims={"email": ["bob@contractors.example"]})) is None
    assert ps.role_for(principal(claims={})) is None


def test_a_call_by_a_principal_with_no_role_is_refused_naming_the_binding_that_failed(tmp_path):
    """A principal no binding gives a role cannot have a call signed: one the rules allow or hold is
    refused (agentgate:roles), as the gateway refuses it and explain decides it; a call the rules
    deny stays denied by its rule. Where a binding's claims could not be evaluated for the
    principal, the reason names the binding, its error and a guard, not that nothing is mapped."""
    ps = load(tmp_path, """
        version: 1
        roles:
          - id: ops-role
            principal: {groups: [ops]}
            role_arn: arn:aws:iam::123456789012:role/ops
          - id: team-role
            principal: {claims: "starts_with(team, 'plat')"}
            role_arn: arn:aws:iam::123456789012:role/platform
          - role_arn: arn:aws:iam::123456789012:role/agent-role
        rules:
          - {id: reads, action: "sts:GetCallerIdentity", decision: allow}
          - {id: deletes, action: "sqs:DeleteQueue", decision: approve, approvers: {groups: [sre]}}
          - {id: no-purge, action: "sqs:PurgeQueue", decision: deny}
        """)
    erin = principal("erin", ("misc",), claims={})
    assert ps.role_for(erin) is None
    said = ("no role for principal 'erin': the claims of role binding team-role (p.yaml:6) could not be evaluated "
            "for this principal (principal claims `starts_with(team, 'plat')`: starts_with() takes string, not null), "
            "so it gives no role and the bindings after it are not tried; an operator guards what its claims read, "
            "e.g. `team && starts_with(team, 'plat')`")
    assert ps.no_role_reason(erin) == said
    for action, level in (("sts:GetCallerIdentity", "Read"), ("sqs:DeleteQueue", "Write")):
        d = ps.refused_without_role(erin, ps.evaluate(erin, call(action, level)))
        assert (d.decision, d.rule, d.reason) == ("deny", "agentgate:roles", said), action
        assert d.approvers is None and d.mask_for_agent == ()
        out = engine.explain(ps, erin, call(action, level))
        assert out.startswith(f"decision: deny\ndecided by: the gateway's built-in rule agentgate:roles (a call by a "
                              f"principal no role binding gives a role: it cannot be signed)\nreason: {said}\n"), out
        assert ("\nrole: none (the claims of role binding team-role (p.yaml:6) could not be evaluated for this "
                "principal (principal claims `starts_with(team, 'plat')`: starts_with() takes string, not null); the "
                "bindings after it are not tried; the call cannot be signed)\n") in out
    d = ps.refused_without_role(erin, ps.evaluate(erin, call("sqs:PurgeQueue", "Write")))
    assert (d.decision, d.rule) == ("deny", "no-purge")  # denied by the rules: the rule names it, as in the gateway
    # a claim of the wrong type: no guard to offer, the types to mend
    frank = principal("frank", ("misc",), claims={"team": 5})
    assert ps.no_role_reason(frank).endswith("(principal claims `starts_with(team, 'plat')`: starts_with() takes "
                                             "string, not number), so it gives no role and the bindings after it are "
                                             "not tried; an operator makes its claims hold for the types this "
                                             "principal's token has")
    # no binding at all: said as before
    bare = load(tmp_path / "bare", """
        version: 1
        roles: [{principal: {groups: [ops]}, role_arn: "arn:aws:iam::123456789012:role/ops"}]
        rules: [{id: reads, action: "sts:GetCallerIdentity", decision: allow}]
        """)
    d = bare.refused_without_role(erin, bare.evaluate(erin, call("sts:GetCallerIdentity", "Read")))
    assert (d.decision, d.rule) == ("deny", "agentgate:roles")
    assert d.reason == "no role in policies/ is mapped to principal 'erin'; an operator adds one under `roles`"
    assert "\nrole: none (no roles entry matches this principal; the call cannot be signed)\n" in engine.explain(
        bare, erin, call("sts:GetCallerIdentity", "Read"))
    # a principal with a role: the rules' decision stands
    ops = principal("olga", ("ops",))
    assert ps.refused_without_role(ops, ps.evaluate(ops, call("sts:GetCallerIdentity", "Read"))).rule == "reads"
