"""Masking end to end: secrets planted through a real gateway (Secrets Manager, SSM SecureString,
Lambda environment, an IAM access key, a DynamoDB item, EC2 user data, free text) are read back by
unmodified boto3 and AWS CLI agents; the agent gets AGENT_MARKER (no fingerprint) where policy says so and everything
still parses (DynamoDB's x-amz-crc32 included); then every byte of the store is searched for the
secrets: none is there. On SQLite, and on PostgreSQL (the tables and the server's files)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from addons.core.masking import AGENT_MARKER
from tests.conftest import run_agent
from tests.support.gateway import Gateway

POLICY = """\
version: 1
default: deny
roles:
  - principal: {groups: [data-agents]}
    role_arn: arn:aws:iam::123456789012:role/agent-role
    duration: 1h
rules:
  - id: what-these-tests-do
    action: ["secretsmanager:*", "ssm:*", "lambda:*", "dynamodb:*", "ec2:*", "iam:CreateAccessKey",
             "iam:CreateUser", "sts:GetCallerIdentity", "s3:*", "glue:*", "mq:*", "cloudformation:*"]
    decision: allow
  - id: personal-data-in-items
    action: "dynamodb:*"
    decision: allow
    mask_for_agent: [Item.ssn]
  - id: masked-object-text
    action: s3:GetObject
    when: "length(resource[?contains(@, '/masked/')]) > `0`"
    decision: allow
    mask_for_agent: [Body]
""" + (Path(__file__).resolve().parent.parent / "policies" / "secrets.yaml").read_text().split("\nrules:\n", 1)[1]
# ^ the shipped masking rules themselves (policies/secrets.yaml), so that what ships is what is tested

MARKER = "agentgate:masked:hmac-"  # the record's markers: a keyed fingerprint each
MARKER_B64 = base64.b64encode(MARKER.encode()).decode()[:24]  # how a record's blob marker starts
AGENT_ITEM = {"S": AGENT_MARKER}  # what the agent gets for a masked DynamoDB attribute value


@pytest.fixture(scope="module")
def masking_moto():
    """A moto of its own, whose agent role may do everything (IAM and EC2 writes included)."""
    from tests.support.moto_server import MotoServer, _policy

    server = MotoServer()
    server.start()
    try:
        server.broker = server.setup_jit_broker()
        iam = server.client("iam")
        iam.put_role_policy(RoleName="agent-role", PolicyName="masking-tests", PolicyDocument=_policy(["*"]))
        server.enable_auth()
        yield server
    finally:
        server.stop()


def make_gateway(home: Path, issuer, moto, settings: dict | None = None) -> Gateway:
    return Gateway(home, issuer=issuer.issuer, upstream=moto.url,
                   aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), policy=POLICY,
                   settings={"oidc_leeway": 1, **(settings or {})})


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, masking_moto):
    with make_gateway(tmp_path_factory.mktemp("masking-gw"), issuer, masking_moto) as g:
        yield g


def agent_client(gw: Gateway, token: str, service: str, **config):
    """A boto3 client an agent would make: proxied through ``gw`` with ``token``, one attempt."""
    import boto3
    import botocore.config

    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file), config=botocore.config.Config(
                            proxies={"https": gw.proxy_url(token)}, retries={"total_max_attempts": 1}, **config))


def planted(tag: str) -> dict[str, str]:
    """Secrets no test could find by chance, one per place they are planted."""
    r = lambda name: f"{name}-{tag}-{secrets.token_hex(12)}"  # noqa: E731
    return {"secret_string": r("smstring"), "secret_binary": r("smbinary"), "secure_string": r("ssmsecure"),
            "lambda_env": r("lambdaenv"), "ssn": r("ddbssn"), "free_text": r("freetext"), "user_data": r("userdata"),
            "object_text": r("objecttext")}


AGENT = textwrap.dedent("""
    import base64, io, json, sys, zipfile, boto3
    s = json.loads(sys.argv[1])
    tag = s["tag"]
    out = {}
    sm = boto3.client("secretsmanager")
    sm.create_secret(Name=f"db-{tag}", SecretString=s["secret_string"])
    sm.create_secret(Name=f"bin-{tag}", SecretBinary=s["secret_binary"].encode())
    first = sm.get_secret_value(SecretId=f"db-{tag}")
    out["secret_string"] = [first["SecretString"], sm.get_secret_value(SecretId=f"db-{tag}")["SecretString"]]
    out["secret_binary"] = sm.get_secret_value(SecretId=f"bin-{tag}")["SecretBinary"].decode("ascii")
    out["secret_name"] = first["Name"]

    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=f"/app-{tag}/db-password", Value=s["secure_string"], Type="SecureString")
    ssm.put_parameter(Name=f"/app-{tag}/region", Value="eu-west-1", Type="String")
    out["parameter"] = ssm.get_parameter(Name=f"/app-{tag}/db-password", WithDecryption=True)["Parameter"]["Value"]
    out["parameters"] = sorted(p["Value"] for p in ssm.get_parameters_by_path(
        Path=f"/app-{tag}", WithDecryption=True)["Parameters"])

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\\n    return event\\n")
    lam = boto3.client("lambda")
    lam.create_function(FunctionName=f"fn-{tag}", Runtime="python3.12", Handler="handler.handler",
                        Role="arn:aws:iam::123456789012:role/agent-role", Code={"ZipFile": zipped.getvalue()},
                        Environment={"Variables": {"DB_PASSWORD": s["lambda_env"], "STAGE": "test"}})
    env = lam.get_function(FunctionName=f"fn-{tag}")["Configuration"]["Environment"]["Variables"]
    out["lambda_env"] = env
    out["lambda_env_config"] = lam.get_function_configuration(FunctionName=f"fn-{tag}")["Environment"]["Variables"]
    out["lambda_env_listed"] = [f["Environment"]["Variables"] for f in lam.list_functions()["Functions"]
                                if f["FunctionName"] == f"fn-{tag}"]
    out["lambda_env_versions"] = [v["Environment"]["Variables"]
                                  for v in lam.list_versions_by_function(FunctionName=f"fn-{tag}")["Versions"]]
    # a write whose answer echoes the environment (no rule masks it: one would have to allow it)
    out["lambda_env_updated"] = lam.update_function_configuration(FunctionName=f"fn-{tag}", Timeout=10)[
        "Environment"]["Variables"]

    iam = boto3.client("iam")
    iam.create_user(UserName=f"app-{tag}")
    key = iam.create_access_key(UserName=f"app-{tag}")["AccessKey"]
    out["iam_secret"] = key["SecretAccessKey"]

    ddb = boto3.client("dynamodb")
    ddb.create_table(TableName=f"people-{tag}", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=f"people-{tag}", Item={"k": {"S": "alice"}, "ssn": {"S": s["ssn"]},
                                                  "note": {"S": "password=" + s["free_text"]}})
    item = ddb.get_item(TableName=f"people-{tag}", Key={"k": {"S": "alice"}})["Item"]
    out["item"] = item
    out["scan"] = ddb.scan(TableName=f"people-{tag}")["Items"]
    # the attribute that path names, read by every other operation that returns an item
    people, alice = f"people-{tag}", {"k": {"S": "alice"}}
    out["other_reads"] = {
        "Query": ddb.query(TableName=people, KeyConditionExpression="k = :k",
                           ExpressionAttributeValues={":k": {"S": "alice"}})["Items"][0],
        "BatchGetItem": ddb.batch_get_item(RequestItems={people: {"Keys": [alice]}})["Responses"][people][0],
        "TransactGetItems": ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": people, "Key": alice}}])["Responses"][0]["Item"],
        "ExecuteStatement": ddb.execute_statement(Statement='SELECT * FROM "' + people + '" WHERE k = ' + "'alice'")["Items"][0],
        "UpdateItem": ddb.update_item(TableName=people, Key=alice, UpdateExpression="SET seen = :t",
                                      ExpressionAttributeValues={":t": {"S": "yes"}},
                                      ReturnValues="ALL_OLD")["Attributes"],
    }

    ec2 = boto3.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    script = "#!/bin/sh\\nexport DB_PASSWORD=" + s["user_data"] + "\\n"
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, UserData=script)["Instances"][0]["InstanceId"]
    attr = ec2.describe_instance_attribute(InstanceId=instance, Attribute="userData")
    out["user_data"] = attr["UserData"]["Value"]
    ec2.create_launch_template(LaunchTemplateName=f"lt-{tag}", LaunchTemplateData={
        "ImageId": image, "UserData": base64.b64encode(script.encode()).decode()})
    out["template_user_data"] = [v["LaunchTemplateData"]["UserData"] for v in ec2.describe_launch_template_versions(
        LaunchTemplateName=f"lt-{tag}")["LaunchTemplateVersions"]]

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=f"objects-{tag}")
    s3.put_object(Bucket=f"objects-{tag}", Key="notes.txt", Body=("token=" + s["object_text"]).encode(),
                  ContentType="text/plain")
    out["object"] = s3.get_object(Bucket=f"objects-{tag}", Key="notes.txt")["Body"].read().decode()
    print(json.dumps(out))
""")


def run_planting_agent(gw: Gateway, token_file, tmp_path: Path, tag: str) -> tuple[dict, dict]:
    secrets_ = planted(tag)
    env = gw.agent_env(token_file(f"masking-{tag}"), tmp_path / f"agent-{tag}")
    p = subprocess.run([sys.executable, "-c", AGENT, json.dumps({**secrets_, "tag": tag})],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"agent failed:\n{p.stdout}\n{p.stderr}\n{gw.log()[-4000:]}"
    return secrets_, json.loads(p.stdout.strip().splitlines()[-1])


def marker(gw: Gateway, value: bytes | str) -> str:
    key = (gw.home / "keys" / "fingerprint.key").read_bytes().strip()
    data = value.encode() if isinstance(value, str) else value
    return MARKER + hmac.new(key, data, hashlib.sha256).hexdigest()[:12]


def forms(value: str) -> set[str]:
    """The ways a secret can be written in a body, a header, a URL or a JSON column."""
    found = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
             base64.b64encode(value.encode()).decode()}
    return {f for f in found if f}


def user_data_forms(user_data_secret: str) -> set[str]:
    script = f"#!/bin/sh\nexport DB_PASSWORD={user_data_secret}\n"
    encoded = base64.b64encode(script.encode()).decode()
    return {user_data_secret, encoded, quote(encoded, safe="")}


def scan_bytes(blobs: dict[str, bytes], needles: dict[str, set[str]]) -> list[str]:
    hits = []
    for where, data in blobs.items():
        for name, values in needles.items():
            for v in values:
                if v.encode() in data:
                    hits.append(f"{name} ({v[:16]}...) in {where}")
    return hits


def sqlite_files(gw: Gateway) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in gw.home.glob("agentgate.db*")}


def check_agent_view(gw: Gateway, s: dict, out: dict) -> None:
    # no fingerprint anywhere the agent read (it would tell which secrets are equal), as text or base64
    seen = json.dumps(out)
    assert MARKER not in seen and MARKER_B64 not in seen
    # Secrets Manager: the fixed marker, the same secret read twice too; blobs stay base64
    assert out["secret_string"] == [AGENT_MARKER, AGENT_MARKER]
    assert out["secret_binary"] == AGENT_MARKER  # boto3 decoded the base64
    assert out["secret_name"].startswith("db-")  # the rest of the response is untouched
    # SSM: the SecureString masked, the String not named... by this path, all values are masked
    assert out["parameter"] == AGENT_MARKER
    assert out["parameters"] == [AGENT_MARKER, AGENT_MARKER]
    # Lambda: variable values masked, names kept
    assert out["lambda_env"] == {"DB_PASSWORD": AGENT_MARKER, "STAGE": AGENT_MARKER}
    assert out["lambda_env_config"] == {"DB_PASSWORD": AGENT_MARKER, "STAGE": AGENT_MARKER}
    # ... and from every read that returns it: listing functions and their versions
    assert out["lambda_env_listed"] == [out["lambda_env"]] and out["lambda_env_versions"]
    assert all(v == out["lambda_env"] for v in out["lambda_env_versions"])
    assert out["lambda_env_updated"] == {"DB_PASSWORD": AGENT_MARKER, "STAGE": AGENT_MARKER}
    # IAM: no policy path, but a write's answer never hands over a curated secret (the new key's)
    assert out["iam_secret"] == AGENT_MARKER
    # DynamoDB: the attribute policy names is masked as a string attribute; the rest as it was
    assert out["item"]["ssn"] == AGENT_ITEM
    assert out["item"]["note"] == {"S": "password=" + s["free_text"]} and out["item"]["k"] == {"S": "alice"}
    assert out["scan"][0]["ssn"] == AGENT_ITEM
    for operation, got in out["other_reads"].items():
        assert got["ssn"] == AGENT_ITEM and got["k"] == {"S": "alice"}, operation
    # EC2: user data is base64 on the wire; the agent gets a valid base64 marker
    assert base64.b64decode(out["user_data"]).decode() == AGENT_MARKER
    assert out["template_user_data"] and all(base64.b64decode(u).decode() == AGENT_MARKER
                                             for u in out["template_user_data"])
    # S3 objects are not masked by default
    assert out["object"] == "token=" + s["object_text"]


def needles_for(s: dict, out: dict) -> dict[str, set[str]]:
    needles = {name: forms(value) for name, value in s.items() if name != "user_data"}
    needles["user_data"] = user_data_forms(s["user_data"])
    return needles


@pytest.fixture(scope="module")
def planting(gw, issuer, tmp_path_factory):
    """One planting run on the SQLite gateway (tag "shared"), for the tests that look at it."""
    tmp = tmp_path_factory.mktemp("planting")

    def token_file(sub: str) -> Path:
        path = tmp / f"{sub}.jwt"
        path.write_text(issuer.mint(sub))
        return path

    return run_planting_agent(gw, token_file, tmp, "shared")


def test_planted_secrets_never_reach_the_store(gw, planting, tmp_path):
    s, out = planting
    check_agent_view(gw, s, out)
    files = sqlite_files(gw)
    assert scan_bytes(files, {"control": {"db-shared", "people-shared"}})  # what is not secret is there
    hits = scan_bytes(files, needles_for(s, out))
    assert hits == [], hits
    assert scan_bytes({"gateway.log": gw.log().encode()}, needles_for(s, out)) == []
    records = [r for r in gw.records() if r["principal"] == "masking-shared"]
    assert {r["status"] for r in records} <= {200, 201}, [(r["action"], r["status"], r["error"]) for r in records]
    assert len(records) >= 20
    # every export format, too
    exports = {}
    for fmt in ("jsonl", "ocsf", "mitm", "oscal"):
        target = tmp_path / f"export.{fmt}"
        gw.cli("export", "--format", fmt, "-o", str(target))
        exports.update({p.name: p.read_bytes() for p in tmp_path.glob("export.*")})
    assert len(exports) >= 4
    assert scan_bytes(exports, {"control": {"db-shared"}})
    assert scan_bytes(exports, needles_for(s, out)) == []


def test_each_record_lists_what_was_masked_never_the_values(gw, planting):
    s, out = planting
    records = {(r["action"], r["seq"]): r for r in gw.records() if r["principal"] == "masking-shared"}

    def masked(action: str) -> list[dict]:
        """What the records of ``action`` list as masked, all of them."""
        found = [r for (a, _), r in sorted(records.items()) if a == action]
        assert found, action
        return [m for r in found for m in json.loads(r["masked"])]

    get = masked("secretsmanager:GetSecretValue")
    assert {"part": "response", "path": "SecretString", "by": "sensitive", "count": 1} in get
    assert {"part": "agent", "path": "SecretString", "by": "policy", "count": 1} in get
    assert {"part": "request", "path": "SecretString", "by": "sensitive", "count": 1} in masked("secretsmanager:CreateSecret")
    assert any(m["part"] == "params" and m["path"] == "SecretString" for m in masked("secretsmanager:CreateSecret"))
    assert {"part": "response", "path": "AccessKey.SecretAccessKey", "by": "sensitive", "count": 1} in masked(
        "iam:CreateAccessKey")
    put = masked("dynamodb:PutItem")
    assert {"part": "request", "path": "Item.ssn", "by": "policy", "count": 1} in put
    assert {"part": "request", "path": "Item.*.S", "by": "assignment", "count": 1} in put
    assert {"part": "response", "path": "UserData.Value", "by": "curated", "count": 1} in masked(
        "ec2:DescribeInstanceAttribute")
    assert {"part": "request", "path": "UserData", "by": "sensitive", "count": 1} in masked("ec2:RunInstances")
    text = json.dumps([r["masked"] for r in records.values()])
    assert not any(v in text for vs in needles_for(s, out).values() for v in vs)
    obj = next(r for (a, _), r in records.items() if a == "s3:GetObject")
    assert obj["response_body"] is None and "object data not kept" in obj["body_note"]
    secret = next(r for (a, _), r in sorted(records.items()) if a == "secretsmanager:GetSecretValue")
    body = json.loads(secret["response_body"])
    assert body["SecretString"] == marker(gw, s["secret_string"]) and body["Name"].startswith("db-")
    assert int(secret["response_body_size"]) > len(secret["response_body"].encode()) - 64  # upstream's size
    # the record, not the agent, shows that the same secret was read twice: the same fingerprint
    reads = [json.loads(r["response_body"]) for (a, _), r in sorted(records.items())
             if a == "secretsmanager:GetSecretValue"]
    kept = [b["SecretString"] for b in reads if b["Name"] == "db-shared"]
    assert kept == [marker(gw, s["secret_string"])] * 2 and out["secret_string"] == [AGENT_MARKER] * 2
    assert [b["SecretBinary"] for b in reads if b["Name"] == "bin-shared"] == [
        base64.b64encode(marker(gw, s["secret_binary"]).encode()).decode()]


def test_aws_cli_gets_a_masked_item_with_a_correct_crc32(gw, planting, token_file, tmp_path, aws_cli):
    s, _ = planting
    env = gw.agent_env(token_file("masking-cli"), tmp_path / "cli-home")
    p = subprocess.run([aws_cli, "dynamodb", "get-item", "--table-name", "people-shared", "--key", '{"k": {"S": "alice"}}',
                        "--output", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    item = json.loads(p.stdout)["Item"]
    assert item["ssn"] == AGENT_ITEM and MARKER not in p.stdout
    assert "crc32" not in p.stderr.lower()
    p = subprocess.run([aws_cli, "secretsmanager", "get-secret-value", "--secret-id", "db-shared", "--output", "json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["SecretString"] == AGENT_MARKER and MARKER not in p.stdout


def test_the_aws_cli_reads_awss_public_parameters_in_clear_and_secure_strings_masked(tmp_path, issuer, moto, aws_cli):
    """The shipped policies: `aws ssm get-parameter` of AWS's public latest-AMI parameter, as an
    agent reads it before `run-instances`, answers the AMI id (it answered the marker, which
    run-instances then refused as a malformed image id); a SecureString read with decryption in
    the same session, and a path that is not /aws/service/, stay masked."""
    import boto3
    import shutil

    from tests.conftest import ROOT

    b = moto.broker
    sts = boto3.client("sts", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=b.access_key_id,
                       aws_secret_access_key=b.secret_access_key)
    c = sts.assume_role(RoleArn=b.role_arn, RoleSessionName="planting")["Credentials"]
    ssm = boto3.client("ssm", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=c["AccessKeyId"],
                       aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
    password = "ssm-" + secrets.token_hex(8)
    ssm.put_parameter(Name="/public-test/db/password", Value=password, Type="SecureString", Overwrite=True)
    ami_name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
    ami = ssm.get_parameter(Name=ami_name)["Parameter"]["Value"]
    assert ami.startswith("ami-")
    g = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, aws_key=(b.access_key_id, b.secret_access_key))
    g.init()
    (g.home / "policies" / "test.yaml").unlink()
    for f in (ROOT / "policies").glob("*.yaml"):
        shutil.copy(f, g.home / "policies" / f.name)
    shutil.copytree(ROOT / "policies" / "session", g.home / "policies" / "session", dirs_exist_ok=True)
    token = tmp_path / "agent.jwt"
    token.write_text(issuer.mint("ssm-reader", groups=["data-agents"]))
    with g:
        env = g.agent_env(token, tmp_path / "agent-home")

        def aws(*args):
            p = subprocess.run([aws_cli, "ssm", *args, "--region", "us-east-1", "--output", "json"], env=env,
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)

        assert aws("get-parameter", "--name", ami_name)["Parameter"]["Value"] == ami
        listed = aws("get-parameters-by-path", "--path", "/aws/service/ami-amazon-linux-latest")["Parameters"]
        assert listed and all(p["Value"].startswith("ami-") for p in listed), listed
        assert aws("get-parameter", "--name", "/public-test/db/password",
                   "--with-decryption")["Parameter"]["Value"] == AGENT_MARKER
        assert {p["Value"] for p in aws("get-parameters-by-path", "--path", "/public-test", "--recursive",
                                        "--with-decryption")["Parameters"]} == {AGENT_MARKER}
        mixed = aws("get-parameters", "--names", ami_name, "/public-test/db/password", "--with-decryption")
        assert {p["Value"] for p in mixed["Parameters"]} == {AGENT_MARKER}
        records = [r for r in g.records() if r["principal"] == "ssm-reader"]
        assert [(r["action"], r["decision"], r["outcome"]) for r in records][:2] == [
            ("ssm:GetParameter", "allow", "forwarded"), ("ssm:GetParametersByPath", "allow", "forwarded")]
        assert all(password not in json.dumps(r) for r in records)


def test_boto3_parses_the_masked_response_and_its_crc32_matches(gw, planting, token_file, tmp_path):
    """botocore checks x-amz-crc32 and retries on a mismatch: a stale one would show as retries."""
    env = gw.agent_env(token_file("masking-crc"), tmp_path / "crc-home")
    p = run_agent(env, textwrap.dedent("""
        import json, boto3
        ddb = boto3.client("dynamodb")
        r = ddb.get_item(TableName="people-shared", Key={"k": {"S": "alice"}})
        print(json.dumps({"retries": r["ResponseMetadata"]["RetryAttempts"], "ssn": r["Item"]["ssn"]["S"],
                          "crc": r["ResponseMetadata"]["HTTPHeaders"].get("x-amz-crc32")}))
    """))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["retries"] == 0 and out["ssn"] == AGENT_MARKER and out["crc"]


def test_postgresql_store_holds_no_planted_secret(tmp_path_factory, issuer, masking_moto, token_file, tmp_path):
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    from tests.support.postgres import PostgresUnavailable, shared_server

    try:
        server = shared_server()
        url = server.fresh_database()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    with make_gateway(tmp_path_factory.mktemp("masking-pg"), issuer, masking_moto, {"db": url}) as g:
        s, out = run_planting_agent(g, token_file, tmp_path, "pg")
        check_agent_view(g, s, out)
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        dump = {t: "\n".join(str(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{t}"'))).encode()
                for t in tables}
    assert dump["calls"].count(b"masking-pg") >= 20
    needles = needles_for(s, out)
    assert scan_bytes(dump, needles) == []
    files = {str(p): p.read_bytes() for p in Path(server.data).rglob("*") if p.is_file() and p.stat().st_size < 64 << 20}
    assert scan_bytes(files, {"control": {"people-pg"}})  # the server's files hold the calls
    assert scan_bytes(files, needles) == []


def test_a_response_over_1_mib_is_held_and_masked_for_the_agent(gw, token_file, tmp_path):
    """The recorder streams responses over 1 MiB; one with members to mask for the agent is held
    whole instead, masked, and sent with its new Content-Length and x-amz-crc32."""
    env = gw.agent_env(token_file("masking-big"), tmp_path / "big-home")
    p = run_agent(env, textwrap.dedent("""
        import json, boto3
        ddb = boto3.client("dynamodb")
        ddb.create_table(TableName="big", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        many = {f"a{n:02d}": {"N": "1"} for n in range(60)}  # small attributes: much JSON per byte of data
        for start in range(0, 300, 25):
            ddb.batch_write_item(RequestItems={"big": [{"PutRequest": {"Item": {
                "k": {"S": f"{i:04d}"}, "ssn": {"S": f"big-ssn-{i:04d}"}, "pad": {"S": "p" * 3000}, **many}}}
                for i in range(start, start + 25)]})
        r = ddb.scan(TableName="big")
        print(json.dumps({"n": len(r["Items"]), "ssn": sorted({i["ssn"]["S"] for i in r["Items"]}),
                          "retries": r["ResponseMetadata"]["RetryAttempts"],
                          "length": r["ResponseMetadata"]["HTTPHeaders"].get("content-length")}))
    """))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["n"] > 0 and out["ssn"] == [AGENT_MARKER] and out["retries"] == 0 and int(out["length"]) > 1 << 20
    scan = [r for r in gw.records() if r["principal"] == "masking-big" and r["action"] == "dynamodb:Scan"][-1]
    assert scan["response_body_size"] > 1 << 20 and "big-ssn-" not in (scan["response_body"] or "")
    assert {"part": "agent", "path": "Items[].ssn", "by": "policy", "count": out["n"]} in json.loads(scan["masked"])


def test_an_http2_agent_gets_its_masked_answer_whole(gw, issuer):
    """Over HTTP/2 the masked answer is a different length from AWS's: the agent's HTTP/2 client
    (which checks a body against its Content-Length) gets it whole, valid JSON, the secret masked."""
    from tests.support.raw import h2_request

    tag = secrets.token_hex(6)
    secret = f"h2-secret-{tag}-{secrets.token_hex(12)}"
    token = issuer.mint(f"agent-h2-mask-{tag}")
    host = "secretsmanager.us-east-1.amazonaws.com"

    def call(target: str, payload: dict) -> tuple[int, dict]:
        body = json.dumps(payload).encode()
        status, headers, answer = h2_request(gw, token, host, "POST", b"/", {
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"secretsmanager.{target}",
            "X-Amz-Date": "20260101T000000Z", "Content-Length": str(len(body)),
            "Authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/secretsmanager/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64}, body)
        assert int(headers.get("content-length", len(answer))) == len(answer), (headers, len(answer))
        return status, json.loads(answer)

    status, _ = call("CreateSecret", {"Name": f"h2-{tag}", "SecretString": secret})
    assert status == 200
    status, got = call("GetSecretValue", {"SecretId": f"h2-{tag}"})
    assert status == 200 and got["Name"] == f"h2-{tag}", got
    assert got["SecretString"] == AGENT_MARKER and secret not in json.dumps(got), got


def test_an_object_whose_body_is_masked_is_read_whole_masked_or_not_at_all(gw, issuer):
    """mask_for_agent: [Body] on s3:GetObject. The object's text comes masked; a Range (a secret cut
    across parts passes the detectors in pieces, each kept in its record) is refused; an object
    the detectors cannot read (said not to be text by ?response-content-type=, or over 1 MiB) is
    withheld (ResponseWithheld), not handed over as stored."""
    import botocore.exceptions

    tag = secrets.token_hex(6)
    key_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f"db_password=Sup3rS3cret-{tag}\naws_secret_access_key={key_secret}\n"
    s3 = agent_client(gw, issuer.mint(f"agent-body-{tag}"), "s3")
    bucket = f"bodies-{tag}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="masked/app.env", Body=text.encode(), ContentType="text/plain")
    s3.put_object(Bucket=bucket, Key="masked/big.txt", Body=(text * 30_000).encode(), ContentType="text/plain")
    whole = s3.get_object(Bucket=bucket, Key="masked/app.env")["Body"].read().decode()
    assert whole == f"db_password={AGENT_MARKER}\naws_secret_access_key={AGENT_MARKER}\n"  # no fingerprint

    def refused(**kw) -> tuple[str, str]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=bucket, **kw)["Body"].read()
        return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]

    code, message = refused(Key="masked/app.env", Range="bytes=0-7")
    assert code == "AccessDenied" and "a Range is refused" in message
    assert "(rule 'masked-object-text')" in message, message  # the rule that masks, not the one that allowed
    code, message = refused(Key="masked/app.env", ResponseContentType="application/octet-stream")
    assert code == "ResponseWithheld" and "not text" in message
    code, message = refused(Key="masked/big.txt")
    assert code == "ResponseWithheld"
    records = [r for r in gw.records() if r["principal"] == f"agent-body-{tag}"]
    assert not any(f"Sup3rS3cret-{tag}"[:8] in json.dumps(r) for r in records)


def test_a_condition_on_a_masked_attribute_is_refused(gw, issuer):
    """Item.ssn masked for agents: a scan that counts the items whose ssn begins with a guess would
    tell the value a character at a time (Select=COUNT answers no item to mask), so a condition that
    reads a masked attribute is refused, in expressions, legacy filters and PartiQL; one on another
    attribute goes."""
    import botocore.exceptions

    tag = secrets.token_hex(6)
    ddb = agent_client(gw, issuer.mint(f"agent-guess-{tag}"), "dynamodb")
    table = f"guess-{tag}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"k": {"S": "alice"}, "ssn": {"S": "123-45-6789"}})
    guesses = [
        lambda: ddb.scan(TableName=table, Select="COUNT", FilterExpression="begins_with(ssn, :p)",
                         ExpressionAttributeValues={":p": {"S": "1"}}),
        lambda: ddb.scan(TableName=table, Select="COUNT", FilterExpression="begins_with(#s, :p)",
                         ExpressionAttributeNames={"#s": "ssn"}, ExpressionAttributeValues={":p": {"S": "1"}}),
        lambda: ddb.scan(TableName=table, ScanFilter={"ssn": {"AttributeValueList": [{"S": "1"}],
                                                              "ComparisonOperator": "BEGINS_WITH"}}),
        lambda: ddb.execute_statement(Statement=f'SELECT k FROM "{table}" WHERE begins_with("ssn", \'1\')'),
        lambda: ddb.put_item(TableName=table, Item={"k": {"S": "alice"}}, ConditionExpression="ssn = :v",
                             ExpressionAttributeValues={":v": {"S": "123-45-6789"}}),
    ]
    for guess in guesses:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            guess()
        assert e.value.response["Error"]["Code"] == "AccessDenied", e.value.response
        assert "masks ssn for agents, and this call's condition reads it" in e.value.response["Error"]["Message"]
    got = ddb.scan(TableName=table, FilterExpression="k = :k", ExpressionAttributeValues={":k": {"S": "alice"}})
    assert got["Count"] == 1 and got["Items"][0]["ssn"] == AGENT_ITEM
    refused = [r for r in gw.records() if r["principal"] == f"agent-guess-{tag}" and r["decision"] == "deny"]
    assert len(refused) == len(guesses) and {r["rule"] for r in refused} == {"agentgate:masked-condition"}


def test_an_error_that_carries_an_item_is_masked_as_its_answer_would_be(gw, issuer):
    """A write that fails its condition answers with the item it checked
    (ReturnValuesOnConditionCheckFailure): the error is masked against its exception's shape,
    for the agent and the record, as a read of the item is."""
    import botocore.exceptions

    tag = secrets.token_hex(6)
    ssn = f"ssn-in-an-error-{tag}"
    ddb = agent_client(gw, issuer.mint(f"agent-err-{tag}"), "dynamodb")
    table = f"errors-{tag}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"k": {"S": "alice"}, "ssn": {"S": ssn}})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ddb.put_item(TableName=table, Item={"k": {"S": "alice"}}, ConditionExpression="attribute_not_exists(k)",
                     ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert e.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert e.value.response["Item"] == {"k": {"S": "alice"}, "ssn": AGENT_ITEM}
    [failed] = [r for r in gw.records() if r["principal"] == f"agent-err-{tag}" and r["status"] == 400]
    assert ssn not in json.dumps(failed) and marker(gw, ssn) in failed["response_body"]


def test_tokens_in_the_url_and_agent_written_headers_never_reach_the_record(gw, issuer):
    """The agent's own token, or another JWT, as a path segment (an S3 key), and a JWT in the
    User-Agent: the record's URL and headers hold markers, the store's bytes none of the tokens."""
    import botocore.exceptions

    tag = secrets.token_hex(6)
    own = issuer.mint(f"agent-url-{tag}")
    other = issuer.mint(f"someone-else-{tag}")
    s3 = agent_client(gw, own, "s3", user_agent_extra=f"reset/{other}")
    bucket = f"urls-{tag}"
    s3.create_bucket(Bucket=bucket)
    for key in (f"reset/{own}", f"reset/{other}"):
        with pytest.raises(botocore.exceptions.ClientError):
            s3.get_object(Bucket=bucket, Key=key)
    records = [r for r in gw.records() if r["principal"] == f"agent-url-{tag}" and r["operation"] == "GetObject"]
    assert len(records) == 2
    for r in records:
        assert own not in r["url"] and other not in r["url"] and "/reset/agentgate:masked:" in r["url"], r["url"]
        assert other not in json.dumps(r["request_headers"])
    data = gw.db_path.read_bytes() + (gw.db_path.with_name(gw.db_path.name + "-wal").read_bytes()
                                      if gw.db_path.with_name(gw.db_path.name + "-wal").exists() else b"")
    for token in (own, other):
        assert token.encode() not in data and token.split(".")[2].encode() not in data


def test_a_masked_object_is_not_copied_to_where_it_would_be_read_unmasked(gw, issuer):
    """A copy reads its source (s3:GetObject) and writes its destination: copying an object whose
    Body a rule masks to a key that no such rule covers would let the agent read it unmasked
    there. Refused, for CopyObject and UploadPartCopy; a copy to where the same mask holds goes."""
    import botocore.exceptions

    tag = secrets.token_hex(6)
    text = f"db_password=C0pyS3cret-{tag}\n"
    s3 = agent_client(gw, issuer.mint(f"agent-copy-{tag}"), "s3")
    bucket = f"copies-{tag}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="masked/app.env", Body=text.encode(), ContentType="text/plain")
    source = {"Bucket": bucket, "Key": "masked/app.env"}

    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="public/app.env", CopySource=source)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    message = e.value.response["Error"]["Message"]
    assert "masked-object-text masks Body" in message and f"{bucket}/public/app.env" in message, message
    upload = s3.create_multipart_upload(Bucket=bucket, Key="public/parts.env")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.upload_part_copy(Bucket=bucket, Key="public/parts.env", UploadId=upload, PartNumber=1, CopySource=source)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    s3.abort_multipart_upload(Bucket=bucket, Key="public/parts.env", UploadId=upload)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="public/app.env")
    assert e.value.response["Error"]["Code"] == "404"  # nothing was copied

    # a version of the object is the object: copying it names s3:GetObjectVersion, masked as a read
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket=bucket, Key="masked/app.env", Body=text.encode(),
                            ContentType="text/plain")["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="public/versioned.env", CopySource={**source, "VersionId": version})
    assert e.value.response["Error"]["Code"] == "AccessDenied" and "masks Body" in e.value.response["Error"]["Message"]
    s3.copy_object(Bucket=bucket, Key="masked/copy.env", CopySource=source)  # the same mask holds there
    copied = s3.get_object(Bucket=bucket, Key="masked/copy.env")["Body"].read().decode()
    assert copied == f"db_password={AGENT_MARKER}\n"  # no fingerprint
    refused = [r for r in gw.records() if r["principal"] == f"agent-copy-{tag}" and r["decision"] == "deny"]
    assert [r["operation"] for r in refused] == ["CopyObject", "UploadPartCopy", "CopyObject"]
    assert {r["rule"] for r in refused} == {"agentgate:masked-source"}


def test_secrets_named_as_such_never_reach_the_record(gw, issuer):
    """Random passwords (no detector finds one by its form) where AWS carries them by name: a Glue
    connection's properties (a map), a job's arguments (``--db_password``), Amazon MQ's users (a
    member no model marks), CloudFormation's parameters ({ParameterKey, ParameterValue}, in a query
    body and an XML answer). The record keeps markers in their place, in the parameters and both
    bodies, and lists them as ``named-secret``; names, identifiers and the rest stay as they were."""
    tag = secrets.token_hex(6)
    pw = {k: "".join(secrets.choice("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(17))
          for k in ("connection", "job", "broker", "user", "stack")}
    token = issuer.mint(f"agent-named-{tag}")

    glue = agent_client(gw, token, "glue")
    glue.create_connection(ConnectionInput={"Name": f"db-{tag}", "ConnectionType": "JDBC", "ConnectionProperties": {
        "USERNAME": "admin", "PASSWORD": pw["connection"], "JDBC_CONNECTION_URL": "jdbc:mysql://db.internal:3306/app"}})
    glue.create_job(Name=f"nightly-{tag}", Role="arn:aws:iam::123456789012:role/glue",
                    Command={"Name": "glueetl", "ScriptLocation": "s3://scripts/nightly.py"},
                    DefaultArguments={"--db_password": pw["job"], "--job-language": "python"})
    # (the shipped policies mask a job's arguments for the agent too)
    assert glue.get_job(JobName=f"nightly-{tag}")["Job"]["DefaultArguments"]["--db_password"] == AGENT_MARKER

    mq = agent_client(gw, token, "mq")
    broker = mq.create_broker(BrokerName=f"broker-{tag}", DeploymentMode="SINGLE_INSTANCE", EngineType="ACTIVEMQ",
                              EngineVersion="5.17.6", HostInstanceType="mq.t3.micro", PubliclyAccessible=False,
                              AutoMinorVersionUpgrade=True,
                              Users=[{"Username": "admin", "Password": pw["broker"]}])["BrokerId"]
    mq.create_user(BrokerId=broker, Username="app", Password=pw["user"], ConsoleAccess=False)

    cfn = agent_client(gw, token, "cloudformation")
    template = {"Parameters": {"DBPassword": {"Type": "String"}}, "Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}
    cfn.create_stack(StackName=f"stack-{tag}", TemplateBody=json.dumps(template),
                     Parameters=[{"ParameterKey": "DBPassword", "ParameterValue": pw["stack"]}])
    [stack] = cfn.describe_stacks(StackName=f"stack-{tag}")["Stacks"]
    assert stack["Parameters"] == [{"ParameterKey": "DBPassword", "ParameterValue": pw["stack"]}]  # the agent's copy

    records = {r["operation"]: r for r in gw.records() if r["principal"] == f"agent-named-{tag}"}
    assert {r["status"] for r in records.values()} == {200}, [(r["operation"], r["status"]) for r in records.values()]
    kept = json.dumps(list(records.values()))
    assert scan_bytes({"records": kept.encode()}, {k: forms(v) for k, v in pw.items()}) == []
    assert scan_bytes(sqlite_files(gw), {k: forms(v) for k, v in pw.items()}) == []

    def masked(operation: str) -> list[dict]:
        return json.loads(records[operation]["masked"])

    def by_name_or_place(entries: list[dict], part: str, path: str) -> bool:
        """Masked by its name (named-secret) or by where it sits (a curated target names it too)."""
        return any(e["part"] == part and e["path"].startswith(path) and e["by"] in ("named-secret", "curated")
                   for e in entries)

    for r in records.values():
        r["params"] = json.loads(r["params"])

    connection = records["CreateConnection"]
    assert connection["params"]["ConnectionInput"]["ConnectionProperties"] == {
        "USERNAME": "admin", "PASSWORD": marker(gw, pw["connection"]), "JDBC_CONNECTION_URL": "jdbc:mysql://db.internal:3306/app"}
    assert json.loads(connection["request_body"])["ConnectionInput"]["ConnectionProperties"]["PASSWORD"] == marker(
        gw, pw["connection"])
    assert by_name_or_place(masked("CreateConnection"), "params", "ConnectionInput.ConnectionProperties.")
    job = json.loads(records["GetJob"]["response_body"])["Job"]
    assert job["Name"] == f"nightly-{tag}" and job["DefaultArguments"]["--db_password"] == marker(gw, pw["job"])
    # (its other arguments too: the curated list masks a job's arguments by where they sit)
    assert by_name_or_place(masked("GetJob"), "response", "Job.DefaultArguments")
    assert records["CreateBroker"]["params"]["Users"] == [{"Username": "admin", "Password": marker(gw, pw["broker"])}]
    assert json.loads(records["CreateUser"]["request_body"]) == {
        "password": marker(gw, pw["user"]), "consoleAccess": False}
    assert records["CreateUser"]["params"]["BrokerId"] == broker and broker in records["CreateUser"]["url"]
    assert by_name_or_place(masked("CreateUser"), "request", "Password")
    assert f"Parameters.member.1.ParameterValue={marker(gw, pw['stack'])}" in records["CreateStack"]["request_body"]
    assert records["CreateStack"]["params"]["Parameters"] == [
        {"ParameterKey": "DBPassword", "ParameterValue": marker(gw, pw["stack"])}]
    described = records["DescribeStacks"]["response_body"]
    assert f"<ParameterValue>{marker(gw, pw['stack'])}</ParameterValue>" in described
    assert f"<StackName>stack-{tag}</StackName>" in described and "<ParameterKey>DBPassword</ParameterKey>" in described


def test_secrets_written_in_a_template_never_reach_the_record(gw, issuer, tmp_path):
    """A CloudFormation template holds secrets no detector finds by their form or their key: a
    NoEcho parameter's ``Default``, a literal ``SecretString``, an IAM user's console password. An
    agent creates a stack with such a YAML template through boto3 and reads it back with
    GetTemplate: the agent gets the template as written; the record (``agentgate calls show``, the
    export, the store's files) keeps markers in the secrets' places and every other byte of the
    template, a ``!Ref`` and comments included."""
    tag = secrets.token_hex(6)
    pw = {k: "".join(secrets.choice("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(17))
          for k in ("default", "secret_string", "console")}
    template = textwrap.dedent(f"""\
        # the application's secrets
        Parameters:
          AdminPin:
            Type: String
            NoEcho: true
            Default: {pw["default"]}
        Resources:
          AppSecret:
            Type: AWS::SecretsManager::Secret
            Properties:
              Name: app-{tag}
              SecretString: '{pw["secret_string"]}'
          RefSecret:
            Type: AWS::SecretsManager::Secret
            Properties:
              Name: ref-{tag}
              SecretString: !Ref AdminPin
          Operator:
            Type: AWS::IAM::User
            Properties:
              UserName: operator-{tag}
              LoginProfile:
                Password: {pw["console"]}
          Queue:
            Type: AWS::SQS::Queue
            Properties:
              QueueName: queue-{tag}
        """)
    token = issuer.mint(f"agent-template-{tag}")
    cfn = agent_client(gw, token, "cloudformation")
    cfn.create_stack(StackName=f"stack-{tag}", TemplateBody=template)
    assert cfn.get_template(StackName=f"stack-{tag}")["TemplateBody"] == template  # the agent's copy: as written

    records = {r["operation"]: r for r in gw.records() if r["principal"] == f"agent-template-{tag}"}
    assert set(records) == {"CreateStack", "GetTemplate"}
    assert {r["status"] for r in records.values()} == {200}, [(r["operation"], r["error"]) for r in records.values()]
    needles = {k: forms(v) for k, v in pw.items()}
    exported = tmp_path / "export.jsonl"
    gw.cli("export", "--format", "jsonl", "-o", str(exported))
    shown = {op: gw.cli("calls", "show", r["id"], "--json").stdout for op, r in records.items()}
    assert scan_bytes({"export": exported.read_bytes(), **{op: s.encode() for op, s in shown.items()}},
                      needles) == []
    assert scan_bytes(sqlite_files(gw), needles) == []

    # the template the record keeps: the secrets' markers in their places, the rest as written
    expected = (template.replace(f"Default: {pw['default']}", f'Default: "{marker(gw, pw["default"])}"')
                .replace(f"SecretString: '{pw['secret_string']}'",
                         f'SecretString: "{marker(gw, pw["secret_string"])}"')
                .replace(f"Password: {pw['console']}", f'Password: "{marker(gw, pw["console"])}"'))
    created = json.loads(shown["CreateStack"])
    assert created["params"]["TemplateBody"] == expected
    got = json.loads(shown["GetTemplate"])
    assert f"<TemplateBody>{expected}</TemplateBody>" in got["response_body"]
    for call in (created, got):
        part = "params" if call is created else "response"
        by = {(e["path"].rsplit("TemplateBody.", 1)[-1], e["by"]) for e in call["masked"] if e["part"] == part}
        assert by == {("Parameters.AdminPin.Default", "template-noecho"),
                      ("Resources.AppSecret.Properties.SecretString", "template-property"),
                      ("Resources.Operator.Properties.LoginProfile.Password", "template-property")}, call["masked"]


def noecho_template(tag: str, values: list[str]) -> str:
    """A template whose NoEcho parameter is named as no secret (``AdminPin``): ``values[0]`` its
    default, all of them the values it allows; ``Env`` an ordinary parameter."""
    return textwrap.dedent(f"""\
        Parameters:
          AdminPin:
            Type: String
            NoEcho: true
            Default: {values[0]}
            AllowedValues: [{", ".join(values)}]
          Env:
            Type: String
            Default: production
        Resources:
          Queue:
            Type: AWS::SQS::Queue
            Properties:
              QueueName: !Sub "queue-${{Env}}-{tag}"
              Tags:
                - Key: pin
                  Value: !Ref AdminPin
        """)


def random_values(*names: str) -> dict[str, str]:
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return {k: "".join(secrets.choice(alphabet) for _ in range(17)) for k in names}


def records_of(gw: Gateway, principal: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for r in gw.records():
        if r["principal"] == principal:
            found.setdefault(r["operation"], []).append(r)
    return found


def store_scan(gw: Gateway, tmp_path: Path, needles: dict[str, set[str]]) -> list[str]:
    """Where in the export and the store's files any of ``needles`` is."""
    exported = tmp_path / "export.jsonl"
    gw.cli("export", "--format", "jsonl", "-o", str(exported))
    return scan_bytes({"export": exported.read_bytes(), **sqlite_files(gw)}, needles)


def shown(gw: Gateway, record: dict) -> dict:
    return json.loads(gw.cli("calls", "show", record["id"], "--json").stdout)


def test_a_noecho_parameters_default_in_get_template_summary_never_reaches_the_record(gw, issuer, tmp_path):
    """GetTemplateSummary describes a template's parameters, a NoEcho one's default and allowed
    values included, whether asked of a template or of a stack: through boto3 the agent gets what
    moto answers; the record masks the NoEcho parameter's (``AdminPin``, a name that says no secret)
    and keeps the ordinary one's (``Env``)."""
    tag = secrets.token_hex(6)
    pw = random_values("default", "allowed")
    template = noecho_template(tag, [pw["default"], pw["allowed"]])
    principal = f"agent-summary-{tag}"
    cfn = agent_client(gw, issuer.mint(principal), "cloudformation")
    summary = cfn.get_template_summary(TemplateBody=template)["Parameters"]
    assert {p["ParameterKey"]: p.get("DefaultValue") for p in summary} == {"AdminPin": pw["default"],
                                                                           "Env": "production"}  # the agent's copy
    cfn.create_stack(StackName=f"stack-{tag}", TemplateBody=template)
    cfn.get_template_summary(StackName=f"stack-{tag}")

    records = records_of(gw, principal)
    assert {op: len(rs) for op, rs in records.items()} == {"GetTemplateSummary": 2, "CreateStack": 1}
    assert store_scan(gw, tmp_path, {k: forms(v) for k, v in pw.items()}) == []
    for record in records["GetTemplateSummary"]:
        call = shown(gw, record)
        body = call["response_body"]
        assert f"<DefaultValue>{marker(gw, pw['default'])}</DefaultValue>" in body
        assert f"<member>{marker(gw, pw['allowed'])}</member>" in body
        assert "<DefaultValue>production</DefaultValue>" in body and "<ParameterKey>AdminPin</ParameterKey>" in body
        assert {(e["path"], e["by"]) for e in call["masked"] if e["part"] == "response"} == {
            ("Parameters[].DefaultValue", "curated"), ("Parameters[].ParameterConstraints", "curated")}


def test_a_value_given_to_a_noecho_parameter_never_reaches_the_record(gw, issuer, tmp_path):
    """CreateStack and CreateStackSet give a NoEcho parameter (``AdminPin``, a name that says no
    secret) its value beside the template, and DescribeStackSet returns it beside the stack set's
    template: through boto3 the agent gets what moto answers; the record masks the value there and
    keeps the ordinary parameter's (``Env``). DescribeStacks carries no template: AWS answers ``****``
    for the value, moto the value itself, which the record keeps then unless the parameter's name
    says it is a secret (README, Masking); an ordinary parameter's value stays."""
    tag = secrets.token_hex(6)
    pw = random_values("default", "stack", "set")
    template = noecho_template(tag, [pw["default"], pw["stack"], pw["set"]])
    principal = f"agent-noecho-{tag}"
    cfn = agent_client(gw, issuer.mint(principal), "cloudformation")
    cfn.create_stack(StackName=f"stack-{tag}", TemplateBody=template,
                     Parameters=[{"ParameterKey": "AdminPin", "ParameterValue": pw["stack"]},
                                 {"ParameterKey": "Env", "ParameterValue": "staging"}])
    [stack] = cfn.describe_stacks(StackName=f"stack-{tag}")["Stacks"]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["Env"] == "staging"
    cfn.create_stack_set(StackSetName=f"set-{tag}", TemplateBody=template,
                         Parameters=[{"ParameterKey": "AdminPin", "ParameterValue": pw["set"]}])
    described = cfn.describe_stack_set(StackSetName=f"set-{tag}")["StackSet"]
    assert described["Parameters"] == [{"ParameterKey": "AdminPin", "ParameterValue": pw["set"]}]  # the agent's copy

    records = records_of(gw, principal)
    assert {op: len(rs) for op, rs in records.items()} == {
        "CreateStack": 1, "DescribeStacks": 1, "CreateStackSet": 1, "DescribeStackSet": 1}
    assert {r[0]["status"] for r in records.values()} == {200}
    kept = {op: json.dumps(rs).encode() for op, rs in records.items() if op != "DescribeStacks"}
    assert scan_bytes(kept, {k: forms(v) for k, v in pw.items()}) == []
    assert store_scan(gw, tmp_path, {k: forms(pw[k]) for k in ("default", "set")}) == []

    created = shown(gw, records["CreateStack"][0])
    assert created["params"]["Parameters"] == [{"ParameterKey": "AdminPin", "ParameterValue": marker(gw, pw["stack"])},
                                               {"ParameterKey": "Env", "ParameterValue": "staging"}]
    assert f"Parameters.member.1.ParameterValue={marker(gw, pw['stack'])}" in created["request_body"]
    assert "Parameters.member.2.ParameterValue=staging" in created["request_body"]
    assert {(e["part"], e["path"], e["by"]) for e in created["masked"] if e["path"].endswith("ParameterValue")} == {
        ("params", "Parameters[].ParameterValue", "template-noecho"),
        ("request", "Parameters.member[].ParameterValue", "template-noecho")}
    assert "<ParameterValue>staging</ParameterValue>" in records["DescribeStacks"][0]["response_body"]
    assert shown(gw, records["CreateStackSet"][0])["params"]["Parameters"] == [
        {"ParameterKey": "AdminPin", "ParameterValue": marker(gw, pw["set"])}]
    answer = shown(gw, records["DescribeStackSet"][0])
    assert f"<ParameterValue>{marker(gw, pw['set'])}</ParameterValue>" in answer["response_body"]
    assert ("StackSet.Parameters[].ParameterValue", "template-noecho") in {
        (e["path"], e["by"]) for e in answer["masked"] if e["part"] == "response"}


def test_a_template_in_create_stack_refactor_never_reaches_the_record(gw, issuer, tmp_path):
    """CreateStackRefactor carries its templates in ``StackDefinitions[].TemplateBody``: through
    boto3 (moto does not implement the call and answers 500; the request is what carries the
    template), the record keeps the template as CreateStack's is kept, markers in the NoEcho
    parameter's default and allowed values, the rest as written."""
    tag = secrets.token_hex(6)
    pw = random_values("default", "allowed")
    template = noecho_template(tag, [pw["default"], pw["allowed"]])
    principal = f"agent-refactor-{tag}"
    cfn = agent_client(gw, issuer.mint(principal), "cloudformation")
    with pytest.raises(Exception):  # moto answers 500
        cfn.create_stack_refactor(StackDefinitions=[{"StackName": f"stack-{tag}", "TemplateBody": template}])

    [record] = records_of(gw, principal)["CreateStackRefactor"]
    assert record["status"] == 500
    assert store_scan(gw, tmp_path, {k: forms(v) for k, v in pw.items()}) == []
    call = shown(gw, record)
    expected = template.replace(f"Default: {pw['default']}", f'Default: "{marker(gw, pw["default"])}"').replace(
        f"[{pw['default']}, {pw['allowed']}]", f'["{marker(gw, pw["default"])}", "{marker(gw, pw["allowed"])}"]')
    assert call["params"]["StackDefinitions"] == [{"StackName": f"stack-{tag}", "TemplateBody": expected}]
    assert {(e["part"], e["path"]) for e in call["masked"]} == {
        (part, f"{prefix}TemplateBody.Parameters.AdminPin.{member}")
        for part, prefix in (("params", "StackDefinitions[]."), ("request", "StackDefinitions.member[]."))
        for member in ("Default", "AllowedValues[]")}
