"""The detectors against a corpus of AWS responses: no false positives on identifiers.

Account ids, ARNs, request ids, UUIDs, timestamps and resource ids are not secrets. The corpus:

- moto's real responses (raw bodies and headers, as the gateway sees them) to every List, Describe
  and Get operation that needs no parameters, of 40 services, plus calls on the resources created
  for them; errors included;
- botocore-shaped responses generated from the output shapes of operations of every service, with
  identifier-like values where the member names say so (ids, ARNs, account ids, request ids,
  tokens, digests, version ids, URLs, timestamps).

Each response goes through the masking engine as the record's copy; any detector finding in a
response with nothing planted in it is a false positive. Every identifier-like string is also run
through the detectors alone. A few secrets planted in free text (an item, a message, a log event, a
tag, a template) must be found. The figures go to ``tests/output/masking-corpus.json``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import random
import re
import uuid
import zipfile
from pathlib import Path

import botocore.config
import botocore.loaders
import pytest

from addons.core import detectors
from addons.core.classifier import Classification
from addons.core.masking import Masker

OUTPUT = Path(__file__).resolve().parent / "output" / "masking-corpus.json"
DETECTORS = {"private-key", "jwt", "aws-session-token", "aws-secret-access-key", "url-password", "bearer-token",
             "assignment", "named-secret"}

MOTO_SERVICES = [
    "s3", "sqs", "sns", "dynamodb", "iam", "ec2", "kms", "logs", "lambda", "secretsmanager", "ssm", "sts", "events",
    "cloudformation", "rds", "route53", "acm", "ecr", "ecs", "kinesis", "firehose", "glue", "athena",
    "stepfunctions", "apigateway", "cognito-idp", "autoscaling", "elbv2", "elb", "redshift", "emr", "batch",
    "cloudtrail", "config", "organizations", "ses", "codecommit", "efs", "elasticache", "eks",
]
PER_SERVICE = 40  # operations called per service, at most

IDENTIFIERS = {
    "account_id": re.compile(r"^\d{12}$"),
    "arn": re.compile(r"^arn:aws[a-z-]*:"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    "timestamp": re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"),
    "resource_id": re.compile(r"^[a-z][a-z0-9]{0,14}-[0-9a-f]{8,17}$|^[A-Z]{4}[A-Z0-9]{16,17}$|^E[A-Z0-9]{12,13}$"),
}

PLANTED = {
    "item": "password=Planted-Item-2b9f71c3",
    "message": "postgres://app:Planted-Message-8c1d0e@db.internal:5432/app",
    "log": "Authorization: Bearer Planted-Log-Token-6f3a9b2c1d0e",
    "tag": "Pl4ntedTagK3yAbCdEfGhIjKlMnOpQrStUvWx129",  # 40 characters, as an access key
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLXBsYW50ZWQtand0",
    "template": "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAPlanted\n-----END RSA PRIVATE KEY-----",
}


class Corpus:
    def __init__(self) -> None:
        self.responses: list[dict] = []

    def capture(self, http_response=None, parsed=None, model=None, **_):
        if http_response is None or model is None:
            return
        self.responses.append({
            "service": model.service_model.service_name, "operation": model.name,
            "protocol": model.service_model.resolved_protocol, "status": http_response.status_code,
            "headers": list(http_response.headers.items()), "body": http_response.content, "parsed": parsed,
            "source": "moto",
        })


def populate(moto, client) -> None:
    """Resources to list, with the planted secrets in free text."""
    s3 = client("s3")
    s3.create_bucket(Bucket="corpus-bucket")
    s3.put_object(Bucket="corpus-bucket", Key="a/b/c.txt", Body=b"hello")
    s3.put_bucket_tagging(Bucket="corpus-bucket", Tagging={"TagSet": [{"Key": "team", "Value": "data"}]})
    sqs = client("sqs")
    queue = sqs.create_queue(QueueName="corpus-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=PLANTED["message"])
    sqs.send_message(QueueUrl=queue, MessageBody="an ordinary message about order 1234")
    client("sns").create_topic(Name="corpus-topic")
    ddb = client("dynamodb")
    ddb.create_table(TableName="corpus-table", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName="corpus-table", Item={"k": {"S": "a"}, "note": {"S": PLANTED["item"]}})
    ddb.put_item(TableName="corpus-table", Item={"k": {"S": str(uuid.uuid4())}, "n": {"N": "42"}})
    iam = client("iam")
    iam.create_user(UserName="corpus-user")
    iam.create_role(RoleName="corpus-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    iam.create_policy(PolicyName="corpus-policy", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    ec2 = client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")
    ec2.create_security_group(GroupName="corpus-sg", Description="corpus", VpcId=vpc)
    ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "api-key", "Value": PLANTED["tag"]}, {"Key": "Name", "Value": "web"}]}])
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)
    kms = client("kms")
    kms.create_key(Description="corpus key")
    logs = client("logs")
    logs.create_log_group(logGroupName="/corpus/app")
    logs.create_log_stream(logGroupName="/corpus/app", logStreamName="s1")
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)
    logs.put_log_events(logGroupName="/corpus/app", logStreamName="s1", logEvents=[
        {"timestamp": now - 1000, "message": PLANTED["log"]},
        {"timestamp": now, "message": "GET /health 200 3ms request_id=4f2a4c1e-7d6b-4e1f-9a3b-1c2d3e4f5a6b"}])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("h.py", "def h(e, c):\n    return e\n")
    client("lambda").create_function(FunctionName="corpus-fn", Runtime="python3.12", Handler="h.h",
                                     Role="arn:aws:iam::123456789012:role/corpus-role",
                                     Code={"ZipFile": zipped.getvalue()}, Description=f"token {PLANTED['jwt']}")
    client("ssm").put_parameter(Name="/corpus/region", Value="eu-west-1", Type="String")
    client("secretsmanager").create_secret(Name="corpus-secret", SecretString="not-listed")
    client("cloudformation").create_stack(StackName="corpus-stack", TemplateBody=json.dumps({
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Metadata": {"Note": PLANTED["template"]}}))
    client("events").put_rule(Name="corpus-rule", ScheduleExpression="rate(5 minutes)")
    client("kinesis").create_stream(StreamName="corpus-stream", ShardCount=1)
    client("ecr").create_repository(repositoryName="corpus-repo")
    client("stepfunctions").create_state_machine(
        name="corpus-sm", definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/corpus-role")


EXPLICIT = [  # calls that need parameters, on the resources above
    ("dynamodb", "scan", {"TableName": "corpus-table"}),
    ("dynamodb", "describe_table", {"TableName": "corpus-table"}),
    ("s3", "list_objects_v2", {"Bucket": "corpus-bucket"}),
    ("s3", "get_bucket_tagging", {"Bucket": "corpus-bucket"}),
    ("s3", "head_object", {"Bucket": "corpus-bucket", "Key": "a/b/c.txt"}),
    ("sqs", "receive_message", {"QueueUrl": "{queue}", "MaxNumberOfMessages": 10}),
    ("sqs", "get_queue_attributes", {"QueueUrl": "{queue}", "AttributeNames": ["All"]}),
    ("iam", "get_role", {"RoleName": "corpus-role"}),
    ("iam", "get_user", {"UserName": "corpus-user"}),
    ("iam", "list_access_keys", {"UserName": "corpus-user"}),
    ("lambda", "get_function", {"FunctionName": "corpus-fn"}),
    ("lambda", "get_function_configuration", {"FunctionName": "corpus-fn"}),
    ("logs", "get_log_events", {"logGroupName": "/corpus/app", "logStreamName": "s1"}),
    ("logs", "filter_log_events", {"logGroupName": "/corpus/app"}),
    ("ssm", "get_parameter", {"Name": "/corpus/region"}),
    ("secretsmanager", "describe_secret", {"SecretId": "corpus-secret"}),
    ("cloudformation", "get_template", {"StackName": "corpus-stack"}),
    ("cloudformation", "describe_stack_resources", {"StackName": "corpus-stack"}),
    ("kinesis", "describe_stream", {"StreamName": "corpus-stream"}),
    ("ecr", "describe_repositories", {}),
    ("sts", "get_caller_identity", {}),
    ("ec2", "describe_instances", {}),
    ("ec2", "describe_tags", {}),
    ("ec2", "describe_vpcs", {}),
    ("ec2", "describe_subnets", {}),
    ("ec2", "describe_security_groups", {}),
    ("ec2", "describe_volumes", {}),
]


@pytest.fixture(scope="module")
def moto_corpus():
    from tests.support.moto_server import MotoServer

    server = MotoServer()
    server.start()
    corpus = Corpus()
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=15, connect_timeout=5)
    clients = {}

    def client(service):
        if service not in clients:
            c = server.client(service, aws_access_key_id="testing", aws_secret_access_key="testing", config=config)
            c.meta.events.register("after-call.*.*", corpus.capture)
            clients[service] = c
        return clients[service]

    try:
        populate(server, client)
        queue = client("sqs").get_queue_url(QueueName="corpus-queue")["QueueUrl"]
        corpus.responses.clear()  # the corpus is what reading returns
        for service, method, params in EXPLICIT:
            params = {k: (v.format(queue=queue) if isinstance(v, str) else v) for k, v in params.items()}
            try:
                getattr(client(service), method)(**params)
            except Exception:  # noqa: BLE001 - an error response is part of the corpus too
                pass
        for service in MOTO_SERVICES:
            c = client(service)
            model = c.meta.service_model
            called = 0
            for name in model.operation_names:
                if called >= PER_SERVICE or not name.startswith(("List", "Describe", "Get")):
                    continue
                op = model.operation_model(name)
                if op.input_shape is not None and op.input_shape.required_members:
                    continue
                if op.has_streaming_output or op.has_event_stream_output:
                    continue
                called += 1
                try:
                    getattr(c, botocore.xform_name(name))()
                except Exception:  # noqa: BLE001
                    pass
        yield corpus.responses
    finally:
        server.stop()


# -- botocore-shaped responses, generated from output shapes


WORDS = ["alpha", "service", "running", "default", "primary", "us-east-1", "enabled", "standard", "web", "data",
         "Created by the platform team", "nightly backup of the orders database", "ok"]


def b64(n: int, rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(n)).decode()


def identifier(name: str, service: str, shape: dict, rng: random.Random, doc: str = "") -> str:
    """A realistic value for a string member, by what its name says it holds; an ARN where its
    documentation says it holds one (a secret's, a role's: ``CdnIdentifierSecret``, API Gateway's
    ``credentials``), whatever its name."""
    value = by_name(name, service, shape, rng)
    if "(ARN)" in doc and not shape.get("enum") and not IDENTIFIERS["arn"].match(value):
        return f"arn:aws:{service}:us-east-1:123456789012:{name.lower()}/{hashlib.sha1(value.encode()).hexdigest()[:8]}"
    return value


def by_name(name: str, service: str, shape: dict, rng: random.Random) -> str:
    n = name.lower()
    hexs = lambda k: "".join(rng.choice("0123456789abcdef") for _ in range(k))  # noqa: E731
    upper = lambda k: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(k))  # noqa: E731
    if shape.get("enum"):
        return shape["enum"][0]
    if n.endswith("arn") or n.endswith("arns"):
        return f"arn:aws:{service}:us-east-1:{rng.randrange(10**11, 10**12)}:{rng.choice(WORDS[:4])}/{name}-{hexs(8)}"
    if n.endswith("accountid") or n in ("owner", "ownerid", "awsaccountid", "account"):
        return str(rng.randrange(10**11, 10**12))
    if n.endswith("requestid"):
        return rng.choice([str(uuid.UUID(int=rng.getrandbits(128))), upper(16), hexs(16).upper()])
    if n.endswith("id") or n.endswith("ids"):
        return rng.choice([
            str(uuid.UUID(int=rng.getrandbits(128))), f"{rng.choice(['i', 'vol', 'vpc', 'subnet', 'sg', 'ami', 'eni'])}-{hexs(17)}",
            "AKIA" + upper(16), "AIDA" + upper(17), "AROA" + upper(17), "E" + upper(13), hexs(32),
            f"{rng.choice(['key', 'cert', 'stack'])}-{hexs(8)}", upper(26), "Z" + upper(13),
        ])
    if "token" in n or n.endswith("marker") or n.endswith("cursor"):
        return b64(rng.choice([24, 36, 48, 96, 150]), rng)
    if n.endswith("url") or n.endswith("uri") or "endpoint" in n or n.endswith("location"):
        return f"https://{service}.us-east-1.amazonaws.com/{rng.randrange(10**11, 10**12)}/{name.lower()}-{hexs(6)}"
    if "etag" in n:
        return f'"{hexs(32)}"'
    if any(k in n for k in ("sha", "hash", "digest", "checksum", "md5")):
        return rng.choice([b64(32, rng), hexs(64), "sha256:" + hexs(64), hexs(32), b64(20, rng)])
    if "version" in n:
        return rng.choice(["1", "$LATEST", b64(24, rng), str(uuid.UUID(int=rng.getrandbits(128))), "2012-10-17"])
    if "fingerprint" in n:
        return ":".join(hexs(2) for _ in range(20))
    if n.endswith("name") or n.endswith("names"):
        return f"{rng.choice(WORDS[:6])}-{name.lower()}-{rng.randrange(1000)}"
    if "time" in n or "date" in n:
        return datetime.datetime.fromtimestamp(rng.randrange(1_500_000_000, 1_800_000_000), datetime.timezone.utc).isoformat()
    if "region" in n:
        return "eu-west-1"
    return rng.choice(WORDS)


def generate(shapes: dict, shape_name: str, name: str, service: str, rng: random.Random, depth: int = 0,
             doc: str = ""):
    shape = shapes[shape_name]
    kind = shape["type"]
    if depth > 5:
        return None
    if kind == "structure":
        if shape.get("document") or shape.get("exception"):
            return {}
        out = {}
        for member, ref in list(shape.get("members", {}).items())[:25]:
            if ref.get("location") or shapes[ref["shape"]].get("sensitive") or shapes[ref["shape"]].get("eventstream"):
                continue
            value = generate(shapes, ref["shape"], member, service, rng, depth + 1, ref.get("documentation", ""))
            if value is not None:
                out[ref.get("locationName", member)] = value
        return out
    if kind == "list":
        return [v for v in (generate(shapes, shape["member"]["shape"], name, service, rng, depth + 1, doc)
                            for _ in range(2)) if v is not None]
    if kind == "map":
        return {f"key-{i}": generate(shapes, shape["value"]["shape"], name, service, rng, depth + 1) for i in range(2)}
    if kind == "string":
        return identifier(name, service, shape, rng, doc)
    if kind in ("integer", "long"):
        return rng.randrange(0, 10**6)
    if kind in ("float", "double"):
        return rng.random() * 100
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "timestamp":
        return rng.randrange(1_500_000_000, 1_800_000_000)
    if kind == "blob":
        return b64(rng.randrange(4, 64), rng)
    return None


def generated_corpus(count: int, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    loader = botocore.loaders.create_loader()
    services = [s for s in loader.list_available_services("service-2")]
    rng.shuffle(services)
    out = []
    for service in services:
        model = loader.load_service_model(service, "service-2")
        protocol = (model["metadata"].get("protocols") or [model["metadata"]["protocol"]])[0]
        if protocol not in ("json", "rest-json"):
            continue
        shapes = model["shapes"]
        ops = [n for n, op in model["operations"].items() if op.get("output")]
        for name in rng.sample(ops, min(4, len(ops))):
            output = shapes[model["operations"][name]["output"]["shape"]]
            if output.get("payload"):
                continue
            data = generate(shapes, model["operations"][name]["output"]["shape"], name, service, rng)
            out.append({"service": service, "operation": name, "protocol": protocol, "status": 200,
                        "headers": [("Content-Type", "application/json"),
                                    ("x-amzn-RequestId", str(uuid.UUID(int=rng.getrandbits(128))))],
                        "body": json.dumps(data).encode(), "parsed": data, "source": "generated"})
            if len(out) >= count:
                return out
    return out


# -- the test


def strings(value, name=None):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, k if isinstance(k, str) else name)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, name)
    elif isinstance(value, str):
        yield name, value
    elif isinstance(value, datetime.datetime):
        yield name, value.isoformat()


def test_detectors_find_no_identifier_in_the_corpus(moto_corpus):
    masker = Masker(b"corpus-fingerprint-key-000000000")
    corpus = list(moto_corpus) + generated_corpus(max(300, 520 - len(moto_corpus)))
    assert len(corpus) >= 500
    false_positives, notes, planted_found = [], [], set()
    identifiers = {k: 0 for k in IDENTIFIERS}
    identifiers["request_id"] = 0
    scanned = 0
    for r in corpus:
        call = Classification(service=r["service"], operation=r["operation"], protocol=r["protocol"])
        headers = [(k, v) for k, v in r["headers"]]
        part, _ = masker.response(call, status=r["status"], headers=headers, body=r["body"],
                                  content_type=dict((k.lower(), v) for k, v in headers).get("content-type", ""))
        if part.note and part.note.startswith("not masked"):
            notes.append((r["service"], r["operation"], part.note))
        body = r["body"].decode("utf-8", "replace")
        planted_here = [k for k, v in PLANTED.items() if v in body or json.dumps(v)[1:-1] in body]
        for k in planted_here:
            value = PLANTED[k]
            if part.body is not None and value not in part.body and json.dumps(value)[1:-1] not in part.body:
                planted_found.add(k)
        found = {key: n for key, n in part.masked.items() if key[2] in DETECTORS}
        if found and not planted_here:
            detail = [(n, v[:60], [f.detector for f in detectors.find(v, n)]) for n, v in strings(r["parsed"])
                      if detectors.find(v, n)]
            false_positives.append((r["source"], r["service"], r["operation"], found, detail))
        for name, value in list(strings(r["parsed"])) + [(k, v) for k, v in headers]:
            scanned += 1
            kinds = [k for k, pattern in IDENTIFIERS.items() if pattern.match(value)]
            if name and name.lower().endswith("requestid") or str(name).lower() in ("x-amzn-requestid", "x-amz-request-id"):
                kinds.append("request_id")
            for k in kinds:
                identifiers[k] += 1
            if kinds and detectors.find(value, name):
                false_positives.append((r["source"], r["service"], r["operation"], name, value))
    result = {
        "responses": len(corpus),
        "moto_responses": sum(1 for r in corpus if r["source"] == "moto"),
        "generated_responses": sum(1 for r in corpus if r["source"] == "generated"),
        "services": len({r["service"] for r in corpus}),
        "strings_scanned": scanned,
        "identifiers": identifiers,
        "false_positives": len(false_positives),
        "planted_secrets_found": f"{len(planted_found)}/{len(PLANTED)}",
    }
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    assert notes == []
    assert false_positives == [], false_positives[:10]
    assert planted_found == set(PLANTED), set(PLANTED) - planted_found
    assert result["moto_responses"] >= 250
    assert all(n > 0 for n in identifiers.values()), identifiers


def test_identifier_forms_alone_are_not_secrets():
    """The forms AWS uses for identifiers, digests and tokens, each through the detectors."""
    rng = random.Random(11)
    values = []
    for _ in range(2000):
        name = rng.choice(["Arn", "AccountId", "RequestId", "InstanceId", "NextToken", "ETag", "CodeSha256", "VersionId",
                           "KeyFingerprint", "QueueUrl", "CreationDate", "UserId", "Marker", "Digest", "Name"])
        values.append((name, identifier(name, "ec2", {}, rng)))
    values += [("x-amz-id-2", base64.b64encode(rng.randbytes(57)).decode()),
               ("ReceiptHandle", base64.b64encode(rng.randbytes(180)).decode()),
               ("CiphertextBlob", base64.b64encode(rng.randbytes(184)).decode()),
               ("CommitId", hashlib.sha1(b"x").hexdigest())]
    hits = [(n, v) for n, v in values if detectors.find(v, n)]
    assert hits == []
