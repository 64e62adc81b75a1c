"""Policy through a real gateway: refusals in each protocol's own error shape (boto3 raises
ClientError AccessDenied naming the rule; the AWS CLI prints it), reload without dropping
connections, and calls that are not AWS at all decided as `unknown` and recorded."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import textwrap
import time

import botocore.exceptions
import pytest

from tests.conftest import ROOT, run_agent
from tests.support.gateway import TEST_POLICY, Gateway
from tests.test_data_path import agent, check
from tests.test_identity_e2e import client

REFUSED_CALLS = textwrap.dedent("""
    import json, boto3, botocore.exceptions
    calls = {
        "query": lambda: boto3.client("iam").list_users(),
        "json": lambda: boto3.client("kms").list_keys(),
        "ec2": lambda: boto3.client("ec2").run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1),
        "rest-xml": lambda: boto3.client("route53").list_hosted_zones(),
        "rest-json": lambda: boto3.client("efs").describe_file_systems(),
    }
    out = {}
    for protocol, call in calls.items():
        try:
            call()
            out[protocol] = None
        except botocore.exceptions.ClientError as e:
            out[protocol] = [e.response["Error"]["Code"], e.response["Error"]["Message"],
                             e.response["ResponseMetadata"]["HTTPStatusCode"]]
    print(json.dumps(out))
""")


def test_refusals_are_shaped_for_each_protocol(gateway, token_file, tmp_path):
    env = agent(gateway, token_file, tmp_path, sub="refused-agent")
    out = check(run_agent(env, REFUSED_CALLS))
    assert out["query"][0] == "AccessDenied" and "rule 'no-iam-for-agents'" in out["query"][1]
    assert "agents do not manage IAM" in out["query"][1]
    for protocol, action in (("json", "kms:ListKeys"), ("ec2", "ec2:RunInstances"),
                             ("rest-xml", "route53:ListHostedZones"), ("rest-json", "elasticfilesystem:DescribeFileSystems")):
        code, message, status = out[protocol]
        assert (code, status) == ("AccessDenied", 403), (protocol, out[protocol])
        assert action in message and "default" in message, (protocol, message)
    records = {r["action"]: r for r in gateway.records() if r["principal"] == "refused-agent"}
    assert records["iam:ListUsers"]["rule"] == "no-iam-for-agents"
    assert records["kms:ListKeys"]["decision"] == "deny" and records["kms:ListKeys"]["outcome"] == "refused"
    assert records["kms:ListKeys"]["rule"] == "agentgate:default"  # no rule matched: the policies' default decided
    assert all(r["policy_version"] for r in records.values())
    # `agentgate run -v` (as the test gateways run) logs a line per call
    log = gateway.log()
    assert "DEBUG agentgate.calls: refused-agent iam:ListUsers deny refused by no-iam-for-agents (POST https://iam" in log
    assert f"{records['kms:ListKeys']['id']}" in log.split("DEBUG agentgate.calls: refused-agent kms:ListKeys", 1)[1].split("\n")[0]


def test_the_aws_cli_prints_the_refusal(gateway, token_file, tmp_path, aws_cli):
    env = agent(gateway, token_file, tmp_path, sub="cli-refused")
    p = subprocess.run([aws_cli, "iam", "list-users"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "AccessDenied" in p.stderr and "no-iam-for-agents" in p.stderr and "agents do not manage IAM" in p.stderr


def test_the_aws_cli_is_told_why_a_registry_login_is_refused(tmp_path, issuer, moto, aws_cli):
    """`aws ecr get-login-password` with the shipped guardrails: refused, with the reason, not a
    token (masked, it would be of no use, and the CLI failed on it with a Python error)."""
    guardrails = (ROOT / "policies" / "guardrails.yaml").read_text()
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=guardrails,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        token = tmp_path / "agent.jwt"
        token.write_text(issuer.mint("registry-agent", groups=["data-agents"]))
        env = gw.agent_env(token, tmp_path / "agent-home")
        p = subprocess.run([aws_cli, "ecr", "get-login-password", "--region", "us-east-1"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and not p.stdout
        assert "AccessDenied" in p.stderr and "no-credential-vending" in p.stderr, p.stderr
        assert "agents never hold AWS credentials, passwords or keys" in p.stderr and "Traceback" not in p.stderr
        [record] = [r for r in gw.records() if r["principal"] == "registry-agent"]
        assert (record["action"], record["decision"]) == ("ecr:GetAuthorizationToken", "deny")


def _raw_call(conn: http.client.HTTPSConnection, method: str, path: str, body: bytes = b"", headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


# the test policy and one rule more: a change to put in force while a gateway runs
NO_TABLE_LISTING = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
    - id: no-table-listing
      action: dynamodb:ListTables
      decision: deny
      reason: tables are not listed today
    """), "  ")


def test_policy_reloads_without_dropping_connections(tmp_path, issuer, moto):
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        c = client(gw, "dynamodb", proxy_token=issuer.mint("reload-agent"))
        c.list_tables()
        before = gw.records()[-1]["policy_version"]
        policy_file = gw.home / "policies" / "test.yaml"
        policy_file.write_text(NO_TABLE_LISTING)
        deadline = time.time() + 10
        while True:  # the same client, the same kept-alive tunnel
            try:
                c.list_tables()
            except botocore.exceptions.ClientError as e:
                assert "no-table-listing" in e.response["Error"]["Message"]
                break
            assert time.time() < deadline, "the new policy did not take effect"
            time.sleep(0.3)
        after = gw.records()[-1]["policy_version"]
        assert after != before
        import sqlite3

        con = sqlite3.connect(gw.db_path)
        texts = dict(con.execute("select version, text from policy_versions").fetchall())
        con.close()
        assert before in texts and after in texts and "no-table-listing" in texts[after]
        # a broken change keeps the last good version in force, and says where it broke
        policy_file.write_text(policy_file.read_text() + "  - id: broken\n    decision: maybe\n")
        time.sleep(2)
        with pytest.raises(botocore.exceptions.ClientError):
            c.list_tables()
        assert gw.records()[-1]["policy_version"] == after
        assert "test.yaml:" in gw.log() and "last good version" in gw.log()


def test_a_policy_change_is_put_in_force_and_logged_with_no_calls(tmp_path, issuer, moto):
    """With no calls at all, the gateway notices a policy change within about a second: it logs the
    new version and stores its text; a broken change is logged with its file:line at once, and the
    last good version stays in force for the calls that come after."""
    import json
    import re

    from tests.test_approval_e2e import wait_for

    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        first = re.search(r"policies: .* \(version (\w+)\)", gw.log()).group(1)  # as the banner says
        policy_file = gw.home / "policies" / "test.yaml"
        policy_file.write_text(NO_TABLE_LISTING)
        found = wait_for(lambda: re.search(r"INFO agentgate.policy: policy version (\w+) in force, replacing (\w+)",
                                           gw.log()), timeout=5)
        new = found.group(1)
        assert found.group(2) == first and new != first
        stored = {}

        def stored_text() -> bool:
            out = gw.cli("policy", "versions", "--json").stdout
            stored.update({v["version"]: v for v in json.loads(out)})
            return new in stored

        wait_for(stored_text, timeout=5)
        assert "no-table-listing" in stored[new]["text"] and stored[new]["calls"] == 0
        # a broken change: its file and line are logged without a call, and the last good version stays
        policy_file.write_text(policy_file.read_text() + "  - id: broken\n    decision: maybe\n")
        wait_for(lambda: re.search(r"ERROR agentgate.policy: policy change not applied, the last good version stays "
                                   r"in force: \S*test\.yaml:\d+: ", gw.log()), timeout=5)
        c = client(gw, "dynamodb", proxy_token=issuer.mint("idle-reload-agent"))
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            c.list_tables()
        assert "no-table-listing" in refused.value.response["Error"]["Message"]
        [record] = [r for r in gw.records() if r["principal"] == "idle-reload-agent"]
        assert record["policy_version"] == new
        assert "Traceback" not in gw.log()


def test_requests_that_are_not_aws_are_decided_as_unknown(gateway, issuer):
    token = issuer.mint("odd-agent")
    import base64

    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, context=ctx, timeout=30)
    conn.set_tunnel("dynamodb.us-east-1.amazonaws.com", 443,
                    headers={"Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()})
    cases = [
        ("GET", "/index.html", b"", {}),                                         # not an AWS call at all
        ("POST", "/", b"\xff\xfe garbage", {"X-Amz-Target": "DynamoDB_20120810.GetItem",
                                            "Content-Type": "application/x-amz-json-1.0"}),  # body does not parse
        ("POST", "/", b"{}", {"X-Amz-Target": "NoSuchService_2020.DoIt",
                              "Content-Type": "application/x-amz-json-1.0"}),    # unknown target
    ]
    for method, path, body, headers in cases:
        status, text = _raw_call(conn, method, path, body, headers)
        assert status == 403, (path, status, text)
        assert b"AccessDenied" in text
    records = [r for r in gateway.records() if r["principal"] == "odd-agent"]
    assert len(records) == len(cases)
    assert all(r["decision"] == "deny" and r["outcome"] == "refused" for r in records)
    assert any(r["action"] == "unknown" for r in records)


def test_a_function_url_is_decided_and_recorded_as_invoking_it(gateway, issuer):
    """Through a real gateway: a Lambda function URL request, whatever its path, is the invoke IAM
    authorises it as (read as the Lambda API, it was a GetFunctionConfiguration, allowed as a read)."""
    from tests.test_fuzz_gateway import _request, exchange

    host = "abcdefgh1234.lambda-url.us-east-1.on.aws"
    request = _request("POST", host, b"/2015-03-31/functions/any/configuration", {
        "Authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/lambda/aws4_request, "
                         "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": "20260101T000000Z", "Content-Type": "application/x-www-form-urlencoded"},
        b"action=transfer&amount=1000000")
    exchange(gateway, issuer.mint("url-caller"), host, request)
    [record] = [r for r in gateway.records() if r["principal"] == "url-caller"]
    assert (record["action"], record["access_level"]) == ("lambda:InvokeFunctionUrl", "Write")
    assert host in record["resources"]


def test_a_dynamodb_transaction_is_decided_item_by_item(tmp_path, issuer, moto):
    """IAM authorises a transaction's items as GetItem, PutItem, UpdateItem, DeleteItem and
    ConditionCheckItem on their tables, and so does the gateway: a rule that keeps agents off a
    table's items keeps TransactGetItems and TransactWriteItems off them too, while a transaction
    on other tables goes through."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: payroll-items-are-off-limits
          action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:UpdateItem, dynamodb:DeleteItem]
          when: "contains(resource, 'payroll')"
          decision: deny
          reason: payroll rows are off limits
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        ddb = client(gw, "dynamodb", proxy_token=issuer.mint("tx-agent", groups=["data-agents"]))
        for table in ("payroll", "orders"):
            ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")
        key = {"id": {"S": "1"}}
        refused = []
        for call in (lambda: ddb.get_item(TableName="payroll", Key=key),
                     lambda: ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "orders", "Key": key}},
                                                                   {"Get": {"TableName": "payroll", "Key": key}}]),
                     lambda: ddb.transact_write_items(TransactItems=[
                         {"Put": {"TableName": "payroll", "Item": {"id": {"S": "1"}, "pay": {"N": "9"}}}}]),
                     lambda: ddb.transact_write_items(TransactItems=[
                         {"Put": {"TableName": "orders", "Item": {"id": {"S": "2"}}}},
                         {"Delete": {"TableName": "payroll", "Key": key}}])):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call()
            assert e.value.response["Error"]["Code"] == "AccessDenied"
            refused.append(e.value.response["Error"]["Message"])
        assert all("payroll-items-are-off-limits" in m for m in refused), refused
        assert "it also asks for dynamodb:GetItem on payroll" in refused[1]
        assert "Item" not in ddb.get_item(TableName="orders", Key={"id": {"S": "2"}})  # the refused write did nothing
        ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "orders", "Item": {"id": {"S": "3"}}}},
                                                {"ConditionCheck": {"TableName": "orders", "Key": {"id": {"S": "4"}},
                                                                    "ConditionExpression": "attribute_not_exists(x)"}}])
        got = ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "orders", "Key": {"id": {"S": "3"}}}}])
        assert got["Responses"][0]["Item"] == {"id": {"S": "3"}}
        records = [r for r in gw.records() if r["operation"] in ("TransactGetItems", "TransactWriteItems")]
        assert [(r["action"], r["access_level"], r["decision"]) for r in records] == [
            ("dynamodb:GetItem", "Read", "deny"), ("dynamodb:PutItem", "Write", "deny"),
            ("dynamodb:PutItem", "Write", "deny"), ("dynamodb:PutItem", "Write", "allow"),
            ("dynamodb:GetItem", "Read", "allow")]


def test_a_rule_on_a_name_holds_for_every_spelling_and_a_statement_behind_a_comment(tmp_path, issuer, moto):
    """Lambda takes a function as billing, billing:1, its ARN (with a version or not) and the
    partial ARN 123456789012:function:billing: `resource` holds the bare name beside the spelling
    sent, so one deny on contains(resource, 'billing') refuses them all (billing:1 and the partial
    ARN read the function's environment). A PartiQL DELETE behind a comment is dynamodb:PartiQLDelete
    on its table, refused by the rule keeping the table (it was dynamodb:ExecuteStatement on no
    table, allowed by dynamodb:*); one whose table cannot be read is unknown."""
    import io
    import zipfile

    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: billing-stays-private
          action: [lambda:GetFunction, lambda:GetFunctionConfiguration, lambda:InvokeFunction]
          when: "contains(resource, 'billing')"
          decision: deny
          reason: the billing function's environment holds the payment keys
        - id: audit-rows-stay
          action: [dynamodb:DeleteItem, dynamodb:PartiQLDelete]
          when: "contains(resource, 'audit-x')"
          decision: deny
          reason: audit rows are never deleted
        """), "  ")
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return event\n")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        token = issuer.mint("names-agent", groups=["data-agents"])
        lam = client(gw, "lambda", proxy_token=token)
        for name in ("billing", "reports"):
            lam.create_function(FunctionName=name, Runtime="python3.12", Handler="handler.handler",
                                Role=moto.broker.role_arn, Code={"ZipFile": code.getvalue()},
                                Environment={"Variables": {"PAYMENT_KEY": f"{name}-key"}})
        assert lam.publish_version(FunctionName="billing")["Version"] == "1"
        arn = "arn:aws:lambda:us-east-1:123456789012:function:billing"
        for spelling in ("billing", "billing:1", f"{arn}:1", arn, "123456789012:function:billing"):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                lam.get_function_configuration(FunctionName=spelling)
            assert e.value.response["Error"]["Code"] == "AccessDenied", spelling
            assert "billing-stays-private" in e.value.response["Error"]["Message"], spelling
        assert lam.get_function_configuration(FunctionName=arn.replace("billing", "reports"))["FunctionName"] == "reports"

        ddb = client(gw, "dynamodb", proxy_token=token)
        ddb.create_table(TableName="audit-x", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        ddb.put_item(TableName="audit-x", Item={"id": {"S": "1"}})
        messages = []
        for statement in ("/* tidy up */ DELETE FROM \"audit-x\" WHERE id = '1'",
                          "-- tidy up\nDELETE FROM \"audit-x\" WHERE id = '1'",
                          "/* tidy up */ DELETE FROM audit-x WHERE id = '1'"):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                ddb.execute_statement(Statement=statement)
            assert e.value.response["Error"]["Code"] == "AccessDenied", statement
            messages.append(e.value.response["Error"]["Message"])
        assert all("audit-rows-stay" in m for m in messages[:2]), messages
        assert "could not be classified" in messages[2], messages[2]  # audit minus x: no table to decide on
        assert ddb.get_item(TableName="audit-x", Key={"id": {"S": "1"}})["Item"] == {"id": {"S": "1"}}
        records = [r for r in gw.records() if r["principal"] == "names-agent" and r["operation"] == "ExecuteStatement"]
        assert [(r["action"], r["decision"]) for r in records] == [
            ("dynamodb:PartiQLDelete", "deny"), ("dynamodb:PartiQLDelete", "deny"), ("unknown", "deny")]


def test_a_rule_on_a_secrets_name_holds_for_its_arns_and_batch_reads(tmp_path, issuer, moto):
    """Secrets Manager takes a secret by name, by its full ARN (six characters AWS adds) or by its
    partial ARN, and BatchGetSecretValue by a list of any of them (SecretIdList): `resource`
    holds the secret's name for each, so one deny on contains(resource, 'prod/db') refuses them
    all (BatchGetSecretValue named no resource, and read the secret under the broader allow).
    Reading by Filters names no secret: the rule README shows for it refuses that too."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: prod-db-secret-stays
          action: "secretsmanager:*"
          when: "contains(resource, 'prod/db')"
          decision: deny
          reason: the production database's secret is for its service alone
        - id: secrets-are-read-by-name
          action: secretsmanager:BatchGetSecretValue
          when: "params.Filters"
          decision: deny
          reason: secrets are read by name, so that rules on names hold
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        sm = client(gw, "secretsmanager", proxy_token=issuer.mint("secrets-agent", groups=["data-agents"]))
        arn = None
        for name in ("prod/db", "prod/cache"):
            try:
                made = sm.create_secret(Name=name, SecretString=f"{name} password")
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "AccessDenied" and name == "prod/db", e
                continue
            assert name == "prod/cache", "prod/db was created"
            arn = made["ARN"]
        assert arn is not None and arn.rsplit(":", 1)[1].startswith("prod/cache-")
        db_arn = arn.replace("prod/cache", "prod/db")  # the same six characters: the rule reads the name
        partial = arn.rsplit("-", 1)[0].replace("prod/cache", "prod/db")
        attempts = [("get_secret_value", {"SecretId": spelling}) for spelling in ("prod/db", db_arn, partial)] + [
            ("describe_secret", {"SecretId": partial}),
            ("batch_get_secret_value", {"SecretIdList": ["prod/cache", "prod/db"]}),
            ("batch_get_secret_value", {"SecretIdList": [db_arn]}),
            ("batch_get_secret_value", {"Filters": [{"Key": "name", "Values": ["prod"]}]}),
        ]
        for operation, params in attempts:
            with pytest.raises(botocore.exceptions.ClientError) as e:
                getattr(sm, operation)(**params)
            assert e.value.response["Error"]["Code"] == "AccessDenied", (operation, params)
        read = sm.batch_get_secret_value(SecretIdList=["prod/cache", arn])["SecretValues"]
        assert [v["Name"] for v in read] == ["prod/cache", "prod/cache"]
        records = [r for r in gw.records() if r["principal"] == "secrets-agent" and r["decision"] == "deny"]
        assert [r["rule"] for r in records] == ["prod-db-secret-stays"] * 7 + ["secrets-are-read-by-name"]
        assert all("prod/db" in r["resources"] for r in records[:7])


def test_a_deny_rule_whose_condition_fails_on_a_call_refuses_it(tmp_path, issuer, moto):
    """A BatchWriteItem names its tables in RequestItems, not TableName: the deny rule's
    `starts_with(params.TableName, ...)` cannot be evaluated on it, and the rule counts as matching
    (fail closed) instead of letting the broader allow write to the audit table. The refusal and
    the record say which condition failed and how to guard it."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: audit-tables
          action: [dynamodb:PutItem, dynamodb:UpdateItem, dynamodb:DeleteItem, dynamodb:BatchWriteItem]
          when: "starts_with(params.TableName, 'audit-')"
          decision: deny
          reason: audit tables are written by the auditor only
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        ddb = client(gw, "dynamodb", proxy_token=issuer.mint("batch-agent", groups=["data-agents"]))
        for table in ("audit-batch", "batch-orders"):
            ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ddb.put_item(TableName="audit-batch", Item={"id": {"S": "1"}})
        assert "audit tables are written by the auditor only" in e.value.response["Error"]["Message"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ddb.batch_write_item(RequestItems={"audit-batch": [{"PutRequest": {"Item": {"id": {"S": "2"}}}}]})
        error = e.value.response["Error"]
        assert error["Code"] == "AccessDenied"
        assert error["Message"].startswith(
            "agentgate denied dynamodb:BatchWriteItem by rule 'audit-tables': the condition of rule audit-tables could "
            "not be evaluated on this call (when `starts_with(params.TableName, 'audit-')`: starts_with() takes string, "
            "not null)")
        assert "guard what it reads, e.g. `params.TableName && starts_with(params.TableName, 'audit-')`" in error["Message"]
        assert "Item" not in ddb.get_item(TableName="audit-batch", Key={"id": {"S": "2"}})  # nothing was written
        ddb.put_item(TableName="batch-orders", Item={"id": {"S": "3"}})  # where the condition evaluates, it decides
        records = [r for r in gw.records() if r["principal"] == "batch-agent" and r["operation"] == "BatchWriteItem"]
        assert [(r["decision"], r["rule"]) for r in records] == [("deny", "audit-tables")]
        assert "the condition of rule audit-tables could not be evaluated on this call" in records[0]["reason"]



def test_a_principal_whose_role_bindings_claims_fail_is_refused_as_explain_says(tmp_path, issuer, moto, monkeypatch):
    """A role binding narrowing by a claim the token lacks cannot be evaluated for it: it gives no
    role, and the catch-all after it is not tried. The gateway refuses the call the rules allow
    (agentgate:roles) naming the binding and the error; `policy explain`, in the gateway's home with
    the same token, decides it alike, by the same built-in rule, with the same reason (it said
    allow, adding only that there was no role)."""
    import json

    from click.testing import CliRunner

    from addons.commands.policy import policy as policy_command

    policy = textwrap.dedent("""\
        version: 1
        roles:
          - id: platform
            principal: {claims: "starts_with(team, 'plat')"}
            role_arn: arn:aws:iam::123456789012:role/agent-role
          - id: everyone
            role_arn: arn:aws:iam::123456789012:role/agent-role
        rules:
          - {id: who-am-i, action: sts:GetCallerIdentity, decision: allow}
        """)
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        token = issuer.mint("erin", groups=["misc"])
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client(gw, "sts", proxy_token=token).get_caller_identity()
        error = e.value.response["Error"]
        assert error["Code"] == "AccessDenied"
        assert error["Message"] == (
            "no role for principal 'erin': the claims of role binding platform (test.yaml:3) could not be evaluated "
            "for this principal (principal claims `starts_with(team, 'plat')`: starts_with() takes string, not null), "
            "so it gives no role and the bindings after it are not tried; an operator guards what its claims read, "
            "e.g. `team && starts_with(team, 'plat')`")
        [record] = [r for r in gw.records() if r["principal"] == "erin"]
        assert (record["decision"], record["rule"], record["reason"]) == ("deny", "agentgate:roles", error["Message"])
        monkeypatch.setenv("AGENTGATE_HOME", str(gw.home))
        token_file = tmp_path / "erin.jwt"
        token_file.write_text(token)
        result = CliRunner().invoke(policy_command, ["explain", "--principal-file", str(token_file),
                                                     "--action", "sts:GetCallerIdentity"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(
            "decision: deny\ndecided by: the gateway's built-in rule agentgate:roles (a call by a principal no role "
            f"binding gives a role: it cannot be signed)\nreason: {record['reason']}\n"), result.output
        # with the claim, the binding gives its role and the rule decides, in both
        pat = issuer.mint("pat", groups=["misc"], extra={"team": "platform"})
        assert client(gw, "sts", proxy_token=pat).get_caller_identity()["Arn"].endswith("/agent-role/pat")
        claims = {"sub": "pat", "groups": ["misc"], "team": "platform"}
        (tmp_path / "pat.json").write_text(json.dumps(claims))
        result = CliRunner().invoke(policy_command, ["explain", "--principal-file", str(tmp_path / "pat.json"),
                                                     "--action", "sts:GetCallerIdentity"])
        assert "decision: allow\ndecided by: rule who-am-i (" in result.output, result.output


def test_a_version_of_an_object_is_decided_as_its_version_and_as_the_object(tmp_path, issuer, moto):
    """A versioned bucket: deleting or reading an old version by its VersionId is s3:DeleteObjectVersion
    or s3:GetObjectVersion, which a rule keeps from agents while they may delete and read the
    current object; and a deny on the object's read holds for its versions."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: history-stays
          action: [s3:DeleteObjectVersion, s3:GetObjectVersion]
          decision: deny
          reason: old versions stay where they are
        - id: no-secrets
          action: s3:GetObject
          when: "starts_with(params.Key, 'secret/')"
          decision: deny
          reason: secrets are not read
        - id: keep-audit
          action: s3:DeleteObject
          when: "starts_with(params.Key, 'audit/')"
          decision: deny
          reason: audit logs stay
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        s3 = client(gw, "s3", proxy_token=issuer.mint("version-agent", groups=["data-agents"]))
        s3.create_bucket(Bucket="batch")
        for key in ("tmp/1", "audit/1"):
            s3.put_object(Bucket="batch", Key=key, Body=b"x")
        with pytest.raises(botocore.exceptions.ClientError) as e:  # a batch delete decided object by object
            s3.delete_objects(Bucket="batch", Delete={"Objects": [{"Key": "tmp/1"}, {"Key": "audit/1"}]})
        assert "keep-audit" in e.value.response["Error"]["Message"]
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="batch")["Contents"]) == ["audit/1", "tmp/1"]
        assert s3.delete_objects(Bucket="batch", Delete={"Objects": [{"Key": "tmp/1"}]})["Deleted"]
        s3.create_bucket(Bucket="versioned")
        s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
        first = s3.put_object(Bucket="versioned", Key="doc", Body=b"v1")["VersionId"]
        s3.put_object(Bucket="versioned", Key="doc", Body=b"v2")
        for call in (lambda: s3.get_object(Bucket="versioned", Key="doc", VersionId=first),
                     lambda: s3.delete_object(Bucket="versioned", Key="doc", VersionId=first)):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call()
            assert "history-stays" in e.value.response["Error"]["Message"]
        assert s3.get_object(Bucket="versioned", Key="doc")["Body"].read() == b"v2"
        versions = s3.list_object_versions(Bucket="versioned", Prefix="doc")["Versions"]
        assert first in [v["VersionId"] for v in versions]  # the old version is still there
        s3.put_object(Bucket="versioned", Key="secret/key", Body=b"s")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.head_object(Bucket="versioned", Key="secret/key", VersionId=versions[0]["VersionId"])
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        s3.delete_object(Bucket="versioned", Key="doc")  # the current object: a delete marker, allowed
        records = {(r["operation"], r["action"], r["decision"]) for r in gw.records() if r["principal"] == "version-agent"}
        assert {("GetObject", "s3:GetObjectVersion", "deny"), ("DeleteObject", "s3:DeleteObjectVersion", "deny"),
                ("HeadObject", "s3:GetObjectVersion", "deny"), ("DeleteObject", "s3:DeleteObject", "allow")} <= records


def test_a_refused_head_leaves_its_connection_usable(tmp_path, issuer, moto):
    """A HEAD refused by the gateway gets its status and headers and no body: a body would be read
    as the next answer on the kept-alive connection (a DELETE after it failed with a status line
    of XML). The record keeps the refusal's text."""
    import base64
    import socket

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: no-refused-bucket
          action: s3:GetObject
          when: "params.Bucket == 'refused'"
          decision: deny
          reason: this bucket is not read
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        host = "refused.s3.amazonaws.com"
        req = botocore.awsrequest.AWSRequest("HEAD", f"https://{host}/k")
        botocore.auth.S3SigV4Auth(botocore.credentials.Credentials("agentgate", "x"), "s3", "us-east-1").add_auth(req)
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        proxy_auth = base64.b64encode(f"agent:{issuer.mint('head-agent', groups=['data-agents'])}".encode()).decode()
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                    f"Proxy-Authorization: Basic {proxy_auth}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        tls = ssl.create_default_context(cafile=str(gw.ca_file)).wrap_socket(raw, server_hostname=host)
        head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
        tls.sendall(f"HEAD /k HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
        answer = b""
        deadline = time.time() + 5
        while b"\r\n\r\n" not in answer and time.time() < deadline:
            answer += tls.recv(65536)
        time.sleep(0.5)  # anything after the head would have come by now
        tls.settimeout(0.5)
        try:
            answer += tls.recv(65536)
        except (TimeoutError, socket.timeout):
            pass
        tls.close()
        status_and_headers, _, after = answer.partition(b"\r\n\r\n")
        assert status_and_headers.startswith(b"HTTP/1.1 403") and after == b"", answer
        [record] = [r for r in gw.records() if r["principal"] == "head-agent"]
        assert record["outcome"] == "refused" and "no-refused-bucket" in (record["response_body"] or "")


def no_tagging_gateway(tmp_path, issuer, moto, rule: str, action: str) -> Gateway:
    """A gateway on moto whose policy is the test policy, a rule ``rule`` allowing ``action``, and
    a rule denying every Tagging action ("agents do not tag resources")."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent(f"""\
        - id: {rule}
          action: {action}
          decision: allow
        - id: no-tagging
          access_level: [Tagging]
          decision: deny
          reason: agents do not tag resources
        """), "  ")
    return Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                   aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))


def test_tags_set_with_a_create_are_decided_as_tagging(tmp_path, issuer, moto):
    """IAM authorises tags set with a create as the service's tagging action too (ec2:CreateTags,
    sqs:TagQueue, dynamodb:TagResource), and so does the gateway: a rule that keeps agents from
    tagging keeps tagged launches, queues and tables from landing, while the same calls without
    tags go through."""
    with no_tagging_gateway(tmp_path, issuer, moto, "agents-launch", "ec2:RunInstances") as gw:
        token = issuer.mint("tagging-agent", groups=["data-agents"])
        ec2, sqs, ddb = (client(gw, s, proxy_token=token) for s in ("ec2", "sqs", "dynamodb"))
        image = ec2.describe_images()["Images"][0]["ImageId"]
        marker = f"tag-on-create-{time.time_ns()}"
        table = {"KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                 "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                 "BillingMode": "PAY_PER_REQUEST"}
        refused = []
        for call in (lambda: ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
                         {"ResourceType": "instance", "Tags": [{"Key": "env", "Value": marker}]}]),
                     lambda: sqs.create_queue(QueueName=f"{marker}-q", tags={"env": "prod"}),
                     lambda: ddb.create_table(TableName=f"{marker}-t", Tags=[{"Key": "env", "Value": "prod"}], **table)):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call()
            assert e.value.response["Error"]["Code"] == "AccessDenied"
            refused.append(e.value.response["Error"]["Message"])
        assert all("no-tagging" in m and "agents do not tag resources" in m for m in refused), refused
        assert "it also asks for ec2:CreateTags" in refused[0]
        assert f"it also asks for sqs:TagQueue on {marker}-q" in refused[1]
        assert f"it also asks for dynamodb:TagResource on {marker}-t" in refused[2]
        # nothing landed: no instance with the tag, no queue, no table
        tagged = ec2.describe_instances(Filters=[{"Name": "tag:env", "Values": [marker]}])["Reservations"]
        assert tagged == []
        assert f"{marker}-q" not in " ".join(sqs.list_queues(QueueNamePrefix=marker).get("QueueUrls", []))
        assert f"{marker}-t" not in ddb.list_tables()["TableNames"]
        # untagged, the same calls are allowed
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
        url = sqs.create_queue(QueueName=f"{marker}-q")["QueueUrl"]
        assert sqs.list_queue_tags(QueueUrl=url).get("Tags", {}) == {}
        ddb.create_table(TableName=f"{marker}-t", **table)
        records = [(r["action"], r["access_level"], r["decision"], r["rule"]) for r in gw.records()
                   if r["principal"] == "tagging-agent" and r["operation"] in ("RunInstances", "CreateQueue", "CreateTable")]
        assert records == [("ec2:RunInstances", "Write", "deny", "no-tagging"),
                           ("sqs:CreateQueue", "Write", "deny", "no-tagging"),
                           ("dynamodb:CreateTable", "Write", "deny", "no-tagging"),
                           ("ec2:RunInstances", "Write", "allow", "agents-launch"),
                           ("sqs:CreateQueue", "Write", "allow", "data-plane"),
                           ("dynamodb:CreateTable", "Write", "allow", "data-plane")]


def test_tags_one_level_down_are_decided_as_tagging(tmp_path, issuer, moto):
    """Tags in a structure that describes what a call creates are tags too: S3 CreateBucket's
    CreateBucketConfiguration.Tags is s3:TagResource, as S3 authorises it, and a Spot Fleet
    request's SpotFleetRequestConfig.TagSpecifications is ec2:CreateTags, so a rule that keeps
    agents from tagging keeps the tagged bucket and fleet from landing (both went through as
    their own action alone); untagged, the same calls are allowed. The record names the tagging
    action the call was refused for."""
    with no_tagging_gateway(tmp_path, issuer, moto, "agents-request-fleets", "ec2:RequestSpotFleet") as gw:
        token = issuer.mint("nested-tagging-agent", groups=["data-agents"])
        s3, ec2 = (client(gw, s, proxy_token=token) for s in ("s3", "ec2"))
        bucket = f"nested-tags-{time.time_ns()}"
        image = ec2.describe_images()["Images"][0]["ImageId"]
        fleet = {"IamFleetRole": "arn:aws:iam::123456789012:role/fleet", "TargetCapacity": 1,
                 "AllocationStrategy": "lowestPrice",
                 "LaunchSpecifications": [{"ImageId": image, "InstanceType": "t3.micro"}]}
        tags = [{"Key": "env", "Value": "prod"}]
        refused = []
        for call in (lambda: s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"Tags": tags}),
                     lambda: ec2.request_spot_fleet(SpotFleetRequestConfig={**fleet, "TagSpecifications": [
                         {"ResourceType": "spot-fleet-request", "Tags": tags}]})):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call()
            assert e.value.response["Error"]["Code"] == "AccessDenied"
            refused.append(e.value.response["Error"]["Message"])
        assert all("no-tagging" in m and "agents do not tag resources" in m for m in refused), refused
        assert f"it also asks for s3:TagResource on {bucket}" in refused[0]
        assert "it also asks for ec2:CreateTags" in refused[1]
        assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        before = {c["SpotFleetRequestId"] for c in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]}
        # untagged, the same calls are allowed
        s3.create_bucket(Bucket=bucket)
        assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        made = ec2.request_spot_fleet(SpotFleetRequestConfig=fleet)["SpotFleetRequestId"]
        assert made not in before
        records = [(r["action"], r["access_level"], r["decision"], r["rule"], r["reason"]) for r in gw.records()
                   if r["principal"] == "nested-tagging-agent"
                   and r["operation"] in ("CreateBucket", "RequestSpotFleet")]
        assert [r[:4] for r in records] == [("s3:CreateBucket", "Write", "deny", "no-tagging"),
                                            ("ec2:RequestSpotFleet", "Write", "deny", "no-tagging"),
                                            ("s3:CreateBucket", "Write", "allow", "data-plane"),
                                            ("ec2:RequestSpotFleet", "Write", "allow", "agents-request-fleets")]
        assert f"it also asks for s3:TagResource on {bucket}" in records[0][4]
        assert "it also asks for ec2:CreateTags" in records[1][4]


def test_a_reencrypt_is_decided_on_its_destination_key_too(tmp_path, issuer, moto):
    """IAM authorises kms:ReEncrypt as kms:ReEncryptFrom on the source key and kms:ReEncryptTo on
    the destination key: a rule on kms:ReEncryptTo holds (it matched no call: ReEncrypt was
    decided as ReEncryptFrom alone), on the destination key only."""
    archive, other = (f"alias/{name}-{time.time_ns()}" for name in ("archive", "other"))
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent(f"""\
        - id: agents-use-keys
          action: [kms:CreateKey, kms:CreateAlias, kms:Encrypt, kms:ReEncryptFrom, kms:ReEncryptTo]
          decision: allow
        - id: archive-key-stays-closed
          action: kms:ReEncryptTo
          when: "contains(resource, '{archive}')"
          decision: deny
          reason: nothing is moved under the archive key
        """), "  ")
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        kms = client(gw, "kms", proxy_token=issuer.mint("kms-agent", groups=["data-agents"]))
        source = kms.create_key(Description="source")["KeyMetadata"]["KeyId"]
        for alias in (archive, other):
            kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key(Description=alias)["KeyMetadata"]["KeyId"])
        blob = kms.encrypt(KeyId=source, Plaintext=b"payroll")["CiphertextBlob"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kms.re_encrypt(CiphertextBlob=blob, SourceKeyId=source, DestinationKeyId=archive)
        message = e.value.response["Error"]["Message"]
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        assert "archive-key-stays-closed" in message and f"it also asks for kms:ReEncryptTo on {archive}" in message
        moved = kms.re_encrypt(CiphertextBlob=blob, SourceKeyId=source, DestinationKeyId=other)
        assert moved["SourceKeyId"].endswith(source) and moved["CiphertextBlob"] != blob
        records = [(r["action"], r["decision"], r["rule"]) for r in gw.records()
                   if r["principal"] == "kms-agent" and r["operation"] == "ReEncrypt"]
        assert records == [("kms:ReEncryptFrom", "deny", "archive-key-stays-closed"),
                           ("kms:ReEncryptFrom", "allow", "agents-use-keys")]


def test_a_rule_naming_unknown_decides_a_target_that_names_no_operation(tmp_path, issuer, moto):
    """A request whose X-Amz-Target names no operation (a newer API than the gateway's models, or
    a typo) is the action `unknown`, which a rule naming `unknown` may let go on: it was refused
    at its head whatever the rules said. Where no rule lets `unknown` go on, it still is, unread."""
    policy = TEST_POLICY + textwrap.indent(textwrap.dedent("""\
        - id: carol-tries-new-apis
          action: [unknown]
          principal: {sub: carol}
          decision: allow
        """), "  ")

    def renamed(gw, sub: str):
        ddb = client(gw, "dynamodb", proxy_token=issuer.mint(sub, groups=["data-agents"]))
        ddb.meta.events.register("before-sign.dynamodb.ListTables", lambda request, **kw: request.headers.replace_header(
            "X-Amz-Target", "DynamoDB_20120810.ListTablesNextGen"))
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ddb.list_tables()
        return e.value.response

    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=policy,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        renamed(gw, "carol")
        refused = renamed(gw, "dave")
        assert refused["Error"]["Code"] == "AccessDenied" and "no rule allows unknown" in refused["Error"]["Message"]
        records = {r["principal"]: r for r in gw.records() if r["principal"] in ("carol", "dave")}
        assert (records["carol"]["action"], records["carol"]["decision"], records["carol"]["rule"],
                records["carol"]["outcome"]) == ("unknown", "allow", "carol-tries-new-apis", "forwarded")
        assert (records["dave"]["decision"], records["dave"]["rule"]) == ("deny", "agentgate:default")
    with Gateway(tmp_path / "plain", issuer=issuer.issuer, upstream=moto.url, policy=TEST_POLICY,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        refused = renamed(gw, "carol")
        assert "X-Amz-Target 'DynamoDB_20120810.ListTablesNextGen' names no operation" in refused["Error"]["Message"]
        [record] = [r for r in gw.records() if r["principal"] == "carol"]
        assert (record["action"], record["rule"]) == ("unknown", "agentgate:classify")
