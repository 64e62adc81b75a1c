"""A call is decided and signed for one region and one service: the ones its host and its single
credential scope agree on. An agent's Authorization header that could be read two ways (a
Credential given twice, a scope of the wrong shape) or whose scope names another region than its
host is refused, whatever policy says, so that no call is decided for us-east-1 and signed for
(and run in) eu-west-1. S3 is refused as S3 refuses it, naming the region to sign for, so that the
SDK signs again and retries as it does against AWS. Through a real gateway, against moto with
authentication on (which, unlike AWS, accepts a signature scoped to another region than its host:
the gateway must not rely on upstream to refuse)."""

from __future__ import annotations

import json
import ssl
import subprocess
import textwrap
from xml.etree import ElementTree

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest

from tests.conftest import run_agent
from tests.support.gateway import EVEN_UNKNOWN, Gateway
from tests.test_data_path import agent, check
from tests.test_fuzz_gateway import _request, aws_error, exchange

EU = "dynamodb.eu-west-1.amazonaws.com"
TABLE = "scoped"


def ddb(gateway, token: str, region: str):
    return boto3.client("dynamodb", region_name=region, aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gateway.ca_file),
                        config=botocore.config.Config(proxies={"https": gateway.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}))


@pytest.fixture(scope="module")
def tables(gateway, issuer):
    token = issuer.mint("scope-setup")
    for region in ("us-east-1", "eu-west-1"):
        ddb(gateway, token, region).create_table(
            TableName=TABLE, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    return token


def put_item(credential: str, key: str) -> bytes:
    body = json.dumps({"TableName": TABLE, "Item": {"k": {"S": key}}}).encode()
    return _request("POST", EU, b"/", {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Target": "DynamoDB_20120810.PutItem",
        "Content-Type": "application/x-amz-json-1.0"}, body)


@pytest.mark.parametrize("credential, status, code, words", [
    ("agentgate/x/us-east-1/dynamodb/aws4_request", 400, "IncompleteSignature", "date must read YYYYMMDD"),
    ("agent/gate/20260101/us-east-1/dynamodb/aws4_request", 400, "IncompleteSignature", "the Credential must read"),
    ("agentgate/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=00, "
     "Credential=agentgate/20260101/eu-west-1/dynamodb/aws4_request", 400, "IncompleteSignature",
     "gives Credential more than once"),
    ("agentgate/20260101/us-east-1/dynamodb/aws4_request", 403, "AccessDenied",
     "credential scope names region 'us-east-1', and the host dynamodb.eu-west-1.amazonaws.com region 'eu-west-1'"),
], ids=["bad-date", "slash-in-key", "credential-twice", "other-region"])
def test_a_scope_that_can_be_read_two_ways_or_names_another_region_is_refused(gateway, issuer, tables, credential,
                                                                              status, code, words):
    sub = f"scope-agent-{code}-{len(credential)}"
    key = f"item-{len(credential)}"
    got, headers, body = exchange(gateway, issuer.mint(sub), EU, put_item(credential, key))
    assert got == status, body
    assert aws_error(headers, body)[0] == code and words in aws_error(headers, body)[1], body
    record = [r for r in gateway.records() if r["principal"] == sub][-1]
    assert record["outcome"] == "refused" and record["status"] == status
    for region in ("eu-west-1", "us-east-1"):  # nothing was written anywhere
        assert "Item" not in ddb(gateway, tables, region).get_item(TableName=TABLE, Key={"k": {"S": key}})


def test_the_scope_of_the_host_region_is_decided_and_signed_there(gateway, issuer, tables):
    sub = "scope-agent-eu"
    got, headers, body = exchange(gateway, issuer.mint(sub), EU,
                                  put_item("agentgate/20260101/eu-west-1/dynamodb/aws4_request", "in-eu"))
    assert got == 200, body
    record = [r for r in gateway.records() if r["principal"] == sub][-1]
    assert (record["region"], record["action"], record["outcome"]) == ("eu-west-1", "dynamodb:PutItem", "forwarded")
    assert "Item" in ddb(gateway, tables, "eu-west-1").get_item(TableName=TABLE, Key={"k": {"S": "in-eu"}})
    assert "Item" not in ddb(gateway, tables, "us-east-1").get_item(TableName=TABLE, Key={"k": {"S": "in-eu"}})


# -- S3: the region to sign for, as S3 names it --------------------------------------------------

S3_EU = "s3.eu-west-1.amazonaws.com"
BUCKET = "scoped-eu"

# As the agent: a fresh S3 client per call (botocore remembers a bucket's region once redirected),
# configured for us-east-1 and sent to eu-west-1's endpoint. The first answer botocore's redirector
# reads is kept: its status, S3's error and the x-amz-bucket-region header.
WRONG_REGION = textwrap.dedent("""
    import json, boto3
    out = {}
    for name in ("get_object", "head_object", "head_bucket", "list_objects_v2"):
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="https://s3.eu-west-1.amazonaws.com")
        first = []
        def keep(response, **kw):
            if response is not None and not first:
                http, parsed = response
                first.append({"status": http.status_code, "error": parsed.get("Error", {}),
                              "bucket_region": http.headers.get("x-amz-bucket-region")})
        s3.meta.events.register_first("needs-retry.s3", keep)
        params = {"Bucket": "scoped-eu", "Key": "k"} if name.endswith("_object") else {"Bucket": "scoped-eu"}
        got = getattr(s3, name)(**params)
        if name == "get_object":
            got = got["Body"].read().decode()
        elif name == "head_object":
            got = got["ContentLength"]
        elif name == "list_objects_v2":
            got = [o["Key"] for o in got["Contents"]]
        else:
            got = got["ResponseMetadata"]["HTTPStatusCode"]
        out[name] = {"got": got, "first": first[0] if first else None}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eu_bucket(gateway, issuer):
    token = issuer.mint("scope-setup")
    s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                      verify=str(gateway.ca_file),
                      config=botocore.config.Config(proxies={"https": gateway.proxy_url(token)}))
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"in eu-west-1")
    return BUCKET


def tries(gateway, sub: str) -> list[tuple]:
    """(method, decision, rule, region, status, signed) of each of ``sub``'s calls to eu-west-1's S3."""
    return [(r["method"], r["decision"], r["rule"], r["region"], r["status"], r["session_id"] is not None)
            for r in gateway.records() if r["principal"] == sub and r["host"] == S3_EU]


REFUSED_TRY = ("deny", "agentgate:classify", "eu-west-1", 400, False)  # answered before policy, never signed
ALLOWED_TRY = ("allow", "data-plane", "eu-west-1", 200, True)


def test_an_s3_client_signing_for_another_region_is_told_the_region_and_its_retry_reaches_the_object(
        gateway, token_file, tmp_path, eu_bucket):
    """boto3 configured for us-east-1 and sent to eu-west-1's endpoint: the gateway answers as S3
    does (400 AuthorizationHeaderMalformed, <Region>, x-amz-bucket-region; a HEAD the status and
    header alone), botocore signs again for eu-west-1 and retries, and that retry is decided, signed
    and forwarded in eu-west-1. Each try has its record."""
    env = agent(gateway, token_file, tmp_path, sub="scope-s3-boto3")
    out = check(run_agent(env, WRONG_REGION))
    assert out["get_object"]["got"] == "in eu-west-1" and out["head_object"]["got"] == len(b"in eu-west-1")
    assert out["head_bucket"]["got"] == 200 and out["list_objects_v2"]["got"] == ["k"]
    for name in ("get_object", "list_objects_v2"):
        first = out[name]["first"]
        assert (first["status"], first["error"]["Code"], first["error"]["Region"], first["bucket_region"]) == (
            400, "AuthorizationHeaderMalformed", "eu-west-1", "eu-west-1"), first
        assert "the region 'us-east-1' is wrong; expecting 'eu-west-1'" in first["error"]["Message"]
    for name in ("head_object", "head_bucket"):  # no body: the status and the header
        first = out[name]["first"]
        assert (first["status"], first["bucket_region"]) == (400, "eu-west-1"), first
    assert tries(gateway, "scope-s3-boto3") == [
        (method, *each) for method in ("GET", "HEAD", "HEAD", "GET") for each in (REFUSED_TRY, ALLOWED_TRY)]
    # each refused try's record names what it asked for, as its retry's does; it was decided as nothing
    named = [(r["service"], r["operation"], r["action"]) for r in gateway.records()
             if r["principal"] == "scope-s3-boto3" and r["host"] == S3_EU]
    assert named == [("s3", op, action) for op, allowed in (("GetObject", "s3:GetObject"), ("HeadObject", "s3:GetObject"),
                                                            ("HeadBucket", "s3:ListBucket"),
                                                            ("ListObjectsV2", "s3:ListBucket"))
                     for action in ("unknown", allowed)], named


def test_the_aws_cli_lists_and_reads_a_bucket_through_an_endpoint_of_another_region(
        gateway, token_file, tmp_path, eu_bucket, aws_cli):
    env = agent(gateway, token_file, tmp_path, sub="scope-s3-cli")
    where = ["--region", "us-east-1", "--endpoint-url", f"https://{S3_EU}"]
    listed = subprocess.run([aws_cli, "s3", "ls", f"s3://{BUCKET}", *where], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and listed.stdout.split()[-1] == "k", listed.stderr
    read = subprocess.run([aws_cli, "s3", "cp", f"s3://{BUCKET}/k", "-", *where], env=env, capture_output=True,
                          text=True, timeout=120)
    assert read.returncode == 0 and read.stdout == "in eu-west-1", read.stderr
    got = tries(gateway, "scope-s3-cli")
    assert got[:2] == [("GET", *REFUSED_TRY), ("GET", *ALLOWED_TRY)], got  # the listing
    assert ("GET", *ALLOWED_TRY) in got[2:] and all(t[1:] in (REFUSED_TRY, ALLOWED_TRY) for t in got), got


def test_a_presigned_s3_url_for_another_region_gets_s3s_answer_naming_the_region(gateway, issuer, eu_bucket):
    """What S3 answers a URL presigned for another region than its endpoint: the region to presign
    for, and nothing read."""
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"https://{S3_EU}", aws_access_key_id="agentgate",
                      aws_secret_access_key="x", config=botocore.config.Config(signature_version="s3v4"))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=600)
    assert "%2Fus-east-1%2Fs3%2F" in url
    sub = "scope-s3-presigned"
    got = httpx.get(url, proxy=gateway.proxy_url(issuer.mint(sub)), timeout=30,
                    verify=ssl.create_default_context(cafile=str(gateway.ca_file)))
    assert got.status_code == 400 and got.headers["x-amz-bucket-region"] == "eu-west-1", got.text
    root = ElementTree.fromstring(got.content)
    assert (root.findtext("Code"), root.findtext("Region")) == ("AuthorizationQueryParametersError", "eu-west-1")
    assert "the region 'us-east-1' is wrong; expecting 'eu-west-1'" in root.findtext("Message")
    assert "in eu-west-1" not in got.text
    assert tries(gateway, sub) == [("GET", *REFUSED_TRY)]


@pytest.fixture(scope="module")
def lenient(tmp_path_factory, issuer, moto):
    """A gateway whose policy allows calls it cannot name (`unknown`)."""
    with Gateway(tmp_path_factory.mktemp("lenient"), issuer=issuer.issuer, upstream=moto.url, policy=EVEN_UNKNOWN,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        yield gw


def test_no_rule_has_a_call_signed_for_another_region_than_its_agent_signed_for(lenient, gateway, issuer, tables,
                                                                                eu_bucket):
    """The gateway itself never signs a call again for the host's region when the agent signed it
    for another: not even a rule allowing `unknown` has it forwarded. The agent's own retry, signed
    for the host's region, is a call of its own."""
    sub = "scope-lenient"
    token = issuer.mint(sub)
    got, headers, body = exchange(lenient, token, EU, put_item("agentgate/20260101/us-east-1/dynamodb/aws4_request",
                                                               "lenient"))
    assert got == 403 and aws_error(headers, body)[0] == "AccessDenied", body
    assert "Item" not in ddb(gateway, tables, "eu-west-1").get_item(TableName=TABLE, Key={"k": {"S": "lenient"}})
    put = _request("PUT", S3_EU, f"/{BUCKET}/lenient".encode(), {
        "Authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/s3/aws4_request, "
                         f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}, b"planted")
    got, headers, body = exchange(lenient, token, S3_EU, put)
    assert got == 400 and aws_error(headers, body)[0] == "AuthorizationHeaderMalformed", body
    s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                      verify=str(gateway.ca_file),
                      config=botocore.config.Config(proxies={"https": gateway.proxy_url(tables)}))
    assert "lenient" not in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    records = [r for r in lenient.records() if r["principal"] == sub]
    assert [(r["decision"], r["rule"], r["region"], r["outcome"], r["session_id"]) for r in records] == [
        ("deny", "agentgate:classify", "eu-west-1", "refused", None)] * 2


def test_aws_health_from_another_region_is_decided_for_the_region_botocore_signs_for(gateway, issuer):
    """boto3's AWS Health client in eu-west-1 sends to health.eu-west-1.amazonaws.com signed for
    us-east-1 (the global endpoint's region in endpoints.json): the call is the SDK's own, decided by
    policy for us-east-1 (here: no rule allows it), not refused as signed for another region."""
    sub = "scope-health"
    client = boto3.client("health", region_name="eu-west-1", aws_access_key_id="agentgate",
                          aws_secret_access_key="x", verify=str(gateway.ca_file),
                          config=botocore.config.Config(proxies={"https": gateway.proxy_url(issuer.mint(sub))},
                                                        retries={"total_max_attempts": 1}))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.describe_events()
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied" and "no rule allows health:DescribeEvents" in error["Message"], error
    assert "region" not in error["Message"]
    record = [r for r in gateway.records() if r["principal"] == sub][-1]
    assert (record["host"], record["region"], record["action"], record["decision"], record["rule"]) == (
        "health.eu-west-1.amazonaws.com", "us-east-1", "health:DescribeEvents", "deny", "agentgate:default")
