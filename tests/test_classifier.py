"""The classifier against real requests built and signed by botocore (nothing is sent), and bad input."""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import os
import random
import re
import zlib
from urllib.parse import urlsplit

import boto3
import botocore.config
import pytest

from addons.core import classifier, masking
from addons.core.classifier import classify

ACCOUNT = "123456789012"
QUEUE_URL = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/jobs"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:{ACCOUNT}:jobs"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT}:alerts"


class Captured(Exception):
    """Raised from before-send: the request is built and signed, nothing leaves the process."""


@pytest.fixture(autouse=True)
def no_aws_config(monkeypatch):
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_USE_FIPS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def client(service: str, region: str = "us-east-1", **config):
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x", region_name=region)
    return session.client(service, config=botocore.config.Config(**config) if config else None)


def wire(request) -> dict:
    """A botocore prepared request as the gateway sees it: host, raw path and query, str headers."""
    url = urlsplit(request.url)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    body = request.body
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, type(None))):
        body = None  # a stream: the gateway does not have it in hand
    return {"method": request.method, "host": url.netloc, "path": url.path or "/", "query": url.query,
            "headers": headers, "body": body}


def capture(service: str, method: str, region: str = "us-east-1", config: dict | None = None, **params) -> dict:
    c = client(service, region, **(config or {}))
    seen = {}

    def before_send(request, **_):
        seen["request"] = request
        raise Captured()

    c.meta.events.register("before-send", before_send)
    with pytest.raises(Captured):
        getattr(c, method)(**params)
    return wire(seen["request"])


def run(request: dict) -> classifier.Classification:
    return classify(request["method"], request["host"], request["path"], request["query"], request["headers"],
                    request["body"])


# ---------------------------------------------------------------------------------------------
# S3 (rest-xml)


def test_s3_get_object_virtual_host():
    request = capture("s3", "get_object", Bucket="reports", Key="2026/q1 summary.csv", Range="bytes=0-9")
    assert request["host"] == "reports.s3.amazonaws.com"
    got = run(request)
    assert (got.service, got.operation, got.protocol, got.signing_name) == ("s3", "GetObject", "rest-xml", "s3")
    assert got.params["Bucket"] == "reports" and got.params["Key"] == "2026/q1 summary.csv"
    assert got.params["Range"] == "bytes=0-9"
    assert got.resources == ["reports/2026/q1 summary.csv"]
    assert (got.action, got.access_level, got.region, got.error) == ("s3:GetObject", "Read", "us-east-1", None)


def test_s3_get_object_path_style():
    request = capture("s3", "get_object", region="eu-west-1", config={"s3": {"addressing_style": "path"}},
                      Bucket="reports", Key="a/b/c.txt", VersionId="v1")
    assert request["host"] == "s3.eu-west-1.amazonaws.com" and request["path"] == "/reports/a/b/c.txt"
    got = run(request)
    assert (got.operation, got.region) == ("GetObject", "eu-west-1")
    assert got.params == {"Bucket": "reports", "Key": "a/b/c.txt", "VersionId": "v1",
                          "ChecksumMode": "ENABLED"}
    assert got.resources == ["reports/a/b/c.txt"]


def test_s3_put_object_aws_chunked_body_streams():
    request = capture("s3", "put_object", Bucket="uploads", Key="data.bin", Body=b"x" * 1024,
                      ContentType="application/octet-stream", Metadata={"owner": "alice"})
    assert request["headers"]["Content-Encoding"] == "aws-chunked"
    assert request["headers"]["X-Amz-Content-SHA256"].startswith("STREAMING-")
    assert request["body"] is None
    got = run(request)
    assert (got.service, got.operation, got.action, got.access_level) == ("s3", "PutObject", "s3:PutObject", "Write")
    assert got.params["Bucket"] == "uploads" and got.params["Key"] == "data.bin"
    assert got.params["ContentType"] == "application/octet-stream"
    assert got.params["Metadata"] == {"owner": "alice"}
    assert got.params["ChecksumAlgorithm"] == "CRC32"
    assert "ContentEncoding" not in got.params  # aws-chunked frames the upload, it is not the object's
    assert "Body" not in got.params
    assert got.error is None


def test_s3_list_objects_v2():
    got = run(capture("s3", "list_objects_v2", Bucket="logs", Prefix="2026/", MaxKeys=10, Delimiter="/"))
    assert (got.operation, got.action, got.access_level) == ("ListObjectsV2", "s3:ListBucket", "List")
    assert got.params["Prefix"] == "2026/" and got.params["MaxKeys"] == 10 and got.params["Delimiter"] == "/"
    assert got.resources == ["logs"]


def test_s3_list_objects_v1_is_not_v2():
    assert run(capture("s3", "list_objects", Bucket="logs")).operation == "ListObjects"


def test_s3_multipart_upload():
    created = run(capture("s3", "create_multipart_upload", Bucket="big", Key="file.iso"))
    assert (created.operation, created.action) == ("CreateMultipartUpload", "s3:PutObject")
    part = run(capture("s3", "upload_part", Bucket="big", Key="file.iso", UploadId="u-1", PartNumber=2, Body=b"x"))
    assert (part.operation, part.params["PartNumber"], part.params["UploadId"]) == ("UploadPart", 2, "u-1")
    done = run(capture("s3", "complete_multipart_upload", Bucket="big", Key="file.iso", UploadId="u-1",
                       MultipartUpload={"Parts": [{"ETag": '"e1"', "PartNumber": 1}, {"ETag": '"e2"', "PartNumber": 2}]}))
    assert done.operation == "CompleteMultipartUpload"
    assert done.params["MultipartUpload"] == {"Parts": [{"ETag": '"e1"', "PartNumber": 1},
                                                        {"ETag": '"e2"', "PartNumber": 2}]}
    copy = run(capture("s3", "upload_part_copy", Bucket="big", Key="file.iso", UploadId="u-1", PartNumber=3,
                       CopySource="src/obj"))
    assert copy.operation == "UploadPartCopy" and copy.params["CopySource"] == "src/obj"


def test_s3_sigv2_presigned_url_resolves_from_the_host():
    url = client("s3").generate_presigned_url("get_object", Params={"Bucket": "shared", "Key": "doc.pdf"})
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    parts = urlsplit(url)
    got = classify("GET", parts.netloc, parts.path, parts.query, {}, None)
    assert (got.service, got.operation, got.action) == ("s3", "GetObject", "s3:GetObject")
    assert got.params == {"Bucket": "shared", "Key": "doc.pdf"}
    assert got.error is None


def test_s3_sigv4_presigned_url_takes_the_region_from_the_credential():
    c = client("s3", "eu-central-1", signature_version="s3v4")
    url = c.generate_presigned_url("get_object", Params={"Bucket": "shared", "Key": "doc.pdf"})
    parts = urlsplit(url)
    got = classify("GET", parts.netloc, parts.path, parts.query, {}, None)
    assert (got.operation, got.region) == ("GetObject", "eu-central-1")
    assert "X-Amz-Signature" not in json.dumps(got.params)


@pytest.mark.parametrize("operation, method", [("get_object", "GET"), ("put_object", "PUT")])
def test_a_presigned_url_of_the_javascript_sdk_is_its_operation(operation, method):
    """The AWS SDK for JavaScript v3 presigns with X-Amz-Content-Sha256=UNSIGNED-PAYLOAD and x-id in
    the query: signing metadata and a hint, not the operation's input."""
    c = client("s3", "us-east-1", signature_version="s3v4")
    url = c.generate_presigned_url(operation, Params={"Bucket": "shared", "Key": "doc.pdf"})
    op = "GetObject" if method == "GET" else "PutObject"
    parts = urlsplit(f"{url}&X-Amz-Content-Sha256=UNSIGNED-PAYLOAD&x-id={op}")
    got = classify(method, parts.netloc, parts.path, parts.query, {}, None)
    assert (got.operation, got.error) == (op, None)
    assert got.params == {"Bucket": "shared", "Key": "doc.pdf"}


def test_s3_xml_body():
    got = run(capture("s3", "put_bucket_tagging", Bucket="b1",
                      Tagging={"TagSet": [{"Key": "team", "Value": "data"}]}))
    assert got.operation == "PutBucketTagging"
    assert got.params["Tagging"] == {"TagSet": [{"Key": "team", "Value": "data"}]}
    assert got.action == "s3:PutBucketTagging" and got.access_level == "Tagging"


@pytest.mark.parametrize("host", [
    "b1.s3.dualstack.us-west-2.amazonaws.com",
    "b1.s3-fips.us-west-2.amazonaws.com",
    "b1.s3-us-west-2.amazonaws.com",
    "b1.s3-accelerate.amazonaws.com",
    "b1.s3.us-west-2.api.aws",
    "my.dotted.bucket.s3.us-west-2.amazonaws.com",
])
def test_s3_host_forms(host):
    got = classify("GET", host, "/k", "", {}, None)
    assert (got.service, got.operation) == ("s3", "GetObject")
    assert got.params["Bucket"] == host.split(".s3")[0]


def test_s3_region_from_host_without_scope():
    assert classify("GET", "b1.s3.dualstack.ap-south-1.amazonaws.com", "/k", "", {}, None).region == "ap-south-1"


def test_s3control_account():
    got = run(capture("s3control", "get_public_access_block", AccountId=ACCOUNT))
    assert (got.service, got.operation, got.account) == ("s3control", "GetPublicAccessBlock", ACCOUNT)
    assert got.action == "s3:GetAccountPublicAccessBlock"


# ---------------------------------------------------------------------------------------------
# json, query, ec2, rest-json, cbor


def test_dynamodb_get_and_put_item():
    got = run(capture("dynamodb", "get_item", TableName="orders", Key={"id": {"S": "42"}}, ConsistentRead=True))
    assert (got.service, got.operation, got.protocol) == ("dynamodb", "GetItem", "json")
    assert got.params == {"TableName": "orders", "Key": {"id": {"S": "42"}}, "ConsistentRead": True}
    assert (got.resources, got.action, got.access_level) == (["orders"], "dynamodb:GetItem", "Read")
    item = {"id": {"S": "42"}, "n": {"N": "1"}, "tags": {"L": [{"S": "a"}]}, "m": {"M": {"x": {"BOOL": True}}}}
    put = run(capture("dynamodb", "put_item", TableName="orders", Item=item))
    assert (put.operation, put.params["Item"], put.access_level) == ("PutItem", item, "Write")


def test_dynamodb_batch_and_transaction_calls_name_their_tables():
    batch = run(capture("dynamodb", "batch_write_item", RequestItems={
        "orders": [{"PutRequest": {"Item": {"id": {"S": "1"}}}}], "audit": [{"DeleteRequest": {"Key": {"id": {"S": "2"}}}}]}))
    assert batch.resources == ["orders", "audit"]
    got = run(capture("dynamodb", "batch_get_item", RequestItems={"orders": {"Keys": [{"id": {"S": "1"}}]}}))
    assert got.resources == ["orders"]
    tx = run(capture("dynamodb", "transact_write_items", TransactItems=[
        {"Put": {"TableName": "orders", "Item": {"id": {"S": "1"}}}},
        {"ConditionCheck": {"TableName": "limits", "Key": {"id": {"S": "x"}}, "ConditionExpression": "attribute_exists(id)"}}]))
    assert tx.resources == ["orders", "limits"]
    # IAM authorises a transaction item by item: the call is named after its first write, and
    # decided by its items, each with its own members and table
    assert (tx.action, tx.access_level, tx.by_parts) == ("dynamodb:PutItem", "Write", True)
    # (the call's own members beside each item's: boto3 fills in ClientRequestToken)
    assert [(p.operation, p.action, p.access_level, p.resources, sorted(p.params)) for p in tx.implied] == [
        ("PutItem", "dynamodb:PutItem", "Write", ["orders"], ["ClientRequestToken", "Item", "TableName"]),
        ("ConditionCheckItem", "dynamodb:ConditionCheckItem", "Read", ["limits"],
         ["ClientRequestToken", "ConditionExpression", "Key", "TableName"])]
    reads = run(capture("dynamodb", "transact_get_items", TransactItems=[
        {"Get": {"TableName": "orders", "Key": {"id": {"S": "1"}}}}]))
    assert (reads.action, reads.access_level, [p.action for p in reads.implied]) == (
        "dynamodb:GetItem", "Read", ["dynamodb:GetItem"])
    # an item that names no operation of its kind, or none, or two: not decided (the classify stage
    # decides a call with an error as unknown)
    for items in ([{"Put": {"TableName": "orders", "Item": {}}}], [{}], [{"Get": {"TableName": "a"}, "Put": {}}]):
        odd = run(capture("dynamodb", "transact_get_items", TransactItems=[
            {"Get": {"TableName": "orders", "Key": {"id": {"S": "1"}}}}]) | {"body": json.dumps(
                {"TransactItems": items}).encode()})
        assert odd.error and "agentgate decides no such call" in odd.error, items


def test_a_batch_write_names_its_requests_and_item_calls_the_reads_of_their_tables():
    """A BatchWriteItem stays dynamodb:BatchWriteItem, with each request beside it as the call it
    stands for (PutItem of its Item, DeleteItem of its Key, on its table); a call whose answer or
    conditions carry a table's items names a GetItem of each table (``item_reads``), whose item
    masks hold for it; a batch write, which answers with nothing read, names none."""
    key = {"id": {"S": "1"}}
    batch = run(capture("dynamodb", "batch_write_item", ReturnConsumedCapacity="TOTAL", RequestItems={
        "orders": [{"PutRequest": {"Item": key}}], "audit": [{"DeleteRequest": {"Key": key}}]}))
    assert (batch.action, batch.access_level, batch.by_parts, batch.item_reads) == (
        "dynamodb:BatchWriteItem", "Write", False, ())
    assert [(p.operation, p.action, p.resources, p.params) for p in batch.implied] == [
        ("PutItem", "dynamodb:PutItem", ["orders"], {"ReturnConsumedCapacity": "TOTAL", "TableName": "orders", "Item": key}),
        ("DeleteItem", "dynamodb:DeleteItem", ["audit"], {"ReturnConsumedCapacity": "TOTAL", "TableName": "audit",
                                                          "Key": key})]
    for requests in ([{}], [{"PutRequest": {"Item": key}, "DeleteRequest": {"Key": key}}], [{"DeleteRequest": {}}],
                     [{"DeleteRequest": {"Key": key}}] * 26):  # more than DynamoDB takes in a batch
        odd = run(capture("dynamodb", "batch_write_item", RequestItems={"orders": [{"PutRequest": {"Item": key}}]})
                  | {"body": json.dumps({"RequestItems": {"orders": requests}}).encode()})
        assert odd.error and "agentgate decides no such call" in odd.error, requests

    def reads(method: str, **params) -> list[tuple[str, list[str], dict]]:
        return [(r.action, r.resources, r.params) for r in run(capture("dynamodb", method, **params)).item_reads]
    assert reads("update_item", TableName="people", Key=key, UpdateExpression="SET a = :a",
                 ExpressionAttributeValues={":a": {"N": "1"}}) == [
        ("dynamodb:GetItem", ["people"], {"TableName": "people", "Key": key})]
    assert reads("transact_write_items", TransactItems=[{"Put": {"TableName": "a", "Item": key}},
                                                        {"Delete": {"TableName": "b", "Key": key}}]) == [
        ("dynamodb:GetItem", ["a"], {"TableName": "a"}), ("dynamodb:GetItem", ["b"], {"TableName": "b"})]
    assert reads("execute_statement", Statement='DELETE FROM "people" WHERE id = 1') == [
        ("dynamodb:GetItem", ["people"], {"TableName": "people"})]
    assert reads("get_item", TableName="people", Key=key) == []  # the read itself
    assert reads("describe_table", TableName="people") == []


def test_an_s3_copy_names_its_source_and_reads_it():
    got = run(capture("s3", "copy_object", Bucket="dst", Key="pub/app.env",
                      CopySource={"Bucket": "src", "Key": "conf/app env", "VersionId": "v7"}))
    assert got.action == "s3:PutObject" and got.resources == ["dst/pub/app.env", "src/conf/app env"]
    read, plain = got.implied  # the version read, and the object's own read beside it
    assert (read.action, read.access_level, read.params, read.resources) == (
        "s3:GetObjectVersion", "Read", {"Bucket": "src", "Key": "conf/app env", "VersionId": "v7"}, ["src/conf/app env"])
    assert (plain.action, plain.params, plain.lands_as) == (
        "s3:GetObject", {"Bucket": "src", "Key": "conf/app env"}, read.lands_as)
    part = run(capture("s3", "upload_part_copy", Bucket="dst", Key="k", UploadId="u", PartNumber=1,
                       CopySource="src/big"))
    assert [(r.action, r.resources) for r in part.implied] == [("s3:GetObject", ["src/big"])]
    assert run(capture("s3", "put_object", Bucket="dst", Key="k", Body=b"x")).implied == ()
    # an ACL set with a copy is on the object written, not on the source
    acl = run(capture("s3", "copy_object", Bucket="dst", Key="k", CopySource="src/keep/b", ACL="public-read"))
    assert [(p.action, p.resources) for p in acl.implied] == [("s3:PutObjectAcl", ["dst/k"]),
                                                              ("s3:GetObject", ["src/keep/b"])]


def test_dynamodb_table_arn_gives_the_account():
    arn = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/orders"
    got = run(capture("dynamodb", "describe_table", TableName=arn))
    assert got.account == ACCOUNT and arn in got.resources


def test_sts_get_caller_identity_query():
    got = run(capture("sts", "get_caller_identity"))
    assert (got.service, got.operation, got.protocol) == ("sts", "GetCallerIdentity", "query")
    assert (got.params, got.action, got.error) == ({}, "sts:GetCallerIdentity", None)


def test_sts_assume_role_query_members():
    got = run(capture("sts", "assume_role", RoleArn=f"arn:aws:iam::{ACCOUNT}:role/agent", RoleSessionName="s1",
                      DurationSeconds=900, Tags=[{"Key": "k", "Value": "v"}]))
    assert got.operation == "AssumeRole"
    assert got.params == {"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/agent", "RoleSessionName": "s1",
                          "DurationSeconds": 900, "Tags": [{"Key": "k", "Value": "v"}]}
    assert got.resources == [f"arn:aws:iam::{ACCOUNT}:role/agent"] and got.account == ACCOUNT


def test_ec2_describe_instances():
    got = run(capture("ec2", "describe_instances", InstanceIds=["i-1", "i-2"],
                      Filters=[{"Name": "tag:team", "Values": ["a", "b"]}], MaxResults=5))
    assert (got.service, got.operation, got.protocol) == ("ec2", "DescribeInstances", "ec2")
    assert got.params == {"InstanceIds": ["i-1", "i-2"], "Filters": [{"Name": "tag:team", "Values": ["a", "b"]}],
                          "MaxResults": 5}
    assert got.resources == ["i-1", "i-2"]
    assert (got.action, got.access_level) == ("ec2:DescribeInstances", "List")


def test_ec2_terminate_instances():
    got = run(capture("ec2", "terminate_instances", InstanceIds=["i-0abc"], region="eu-west-3"))
    assert (got.operation, got.params, got.resources, got.region) == (
        "TerminateInstances", {"InstanceIds": ["i-0abc"]}, ["i-0abc"], "eu-west-3")
    assert got.action == "ec2:TerminateInstances" and got.access_level == "Write"


def test_lambda_invoke_and_get_function():
    got = run(capture("lambda", "invoke", FunctionName="resize", Payload=b'{"w": 10}', InvocationType="Event",
                      Qualifier="live"))
    assert (got.service, got.operation, got.protocol) == ("lambda", "Invoke", "rest-json")
    assert got.params == {"FunctionName": "resize", "Payload": '{"w": 10}', "InvocationType": "Event",
                          "Qualifier": "live"}
    assert (got.resources, got.action) == (["resize"], "lambda:InvokeFunction")
    arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:resize"
    get = run(capture("lambda", "get_function", FunctionName=arn))
    assert (get.operation, get.params, get.account, get.action) == (
        "GetFunction", {"FunctionName": arn}, ACCOUNT, "lambda:GetFunction")


def test_a_rest_path_with_a_trailing_slash_is_the_operation_without_it():
    """AWS routes /2015-03-31/functions/ as /2015-03-31/functions (older models wrote ListFunctions
    so): the operation of the path without its last slash, with its labels; not for S3, whose keys
    may end with one, and not for a path that ends with two."""
    listed = capture("lambda", "list_functions")
    got = run({**listed, "path": listed["path"] + "/"})
    assert (got.operation, got.action, got.error) == ("ListFunctions", "lambda:ListFunctions", None)
    config = capture("lambda", "get_function_configuration", FunctionName="resize")
    got = run({**config, "path": config["path"] + "/"})
    assert (got.operation, got.params) == ("GetFunctionConfiguration", {"FunctionName": "resize"})
    assert run({**listed, "path": listed["path"] + "//"}).action == "unknown"
    folder = run(capture("s3", "get_object", Bucket="b", Key="dir/"))
    assert (folder.operation, folder.params["Key"]) == ("GetObject", "dir/")


def test_secretsmanager_get_secret_value():
    got = run(capture("secretsmanager", "get_secret_value", SecretId="prod/db", VersionStage="AWSCURRENT"))
    assert (got.service, got.operation, got.params) == (
        "secretsmanager", "GetSecretValue", {"SecretId": "prod/db", "VersionStage": "AWSCURRENT"})
    assert got.resources == ["prod/db"] and got.action == "secretsmanager:GetSecretValue"


def test_sqs_json_and_legacy_query():
    got = run(capture("sqs", "send_message", QueueUrl=QUEUE_URL, MessageBody="hello", DelaySeconds=1))
    assert (got.service, got.operation, got.protocol) == ("sqs", "SendMessage", "json")
    assert got.params == {"QueueUrl": QUEUE_URL, "MessageBody": "hello", "DelaySeconds": 1}
    assert (got.resources, got.account, got.action) == ([QUEUE_URL, "jobs"], ACCOUNT, "sqs:SendMessage")
    signed = capture("sqs", "send_message", QueueUrl=QUEUE_URL, MessageBody="x")
    body = f"Action=SendMessage&Version=2012-11-05&QueueUrl={QUEUE_URL}&MessageBody=hi&DelaySeconds=2".encode()
    headers = {"Authorization": signed["headers"]["Authorization"],
               "Content-Type": "application/x-www-form-urlencoded"}
    legacy = classify("POST", "sqs.us-east-1.amazonaws.com", "/", "", headers, body)
    assert (legacy.operation, legacy.protocol) == ("SendMessage", "query")
    assert legacy.params == {"QueueUrl": QUEUE_URL, "MessageBody": "hi", "DelaySeconds": 2}


def test_ssm_get_parameter():
    got = run(capture("ssm", "get_parameter", Name="/app/db/password", WithDecryption=True))
    assert (got.operation, got.params, got.resources) == (
        "GetParameter", {"Name": "/app/db/password", "WithDecryption": True}, ["/app/db/password"])
    assert got.action == "ssm:GetParameter"


def test_iam_create_access_key_and_user():
    got = run(capture("iam", "create_access_key", UserName="bob"))
    assert (got.service, got.operation, got.protocol, got.region) == ("iam", "CreateAccessKey", "query", "us-east-1")
    assert (got.params, got.action, got.access_level) == ({"UserName": "bob"}, "iam:CreateAccessKey", "Write")
    user = run(capture("iam", "create_user", UserName="carol", Tags=[{"Key": "team", "Value": "x"}]))
    assert user.params == {"UserName": "carol", "Tags": [{"Key": "team", "Value": "x"}]}


def test_smithy_rpc_v2_cbor():
    got = run(capture("cloudwatchomni", "list_spaces", maxResults=5))
    assert got.protocol == "smithy-rpc-v2-cbor"
    assert (got.service, got.operation, got.params) == ("cloudwatchomni", "ListSpaces", {"maxResults": 5})
    request = capture("cloudwatchomni", "list_spaces", maxResults=5)
    assert request["body"][:1] == b"\xa1"  # a map of one pair: make it two, naming maxResults again
    doubled = run(dict(request, body=b"\xa2" + request["body"][1:] + request["body"][1:]))
    assert "key 'maxResults' given more than once in one map" in doubled.error, doubled.error
    # named first with a null (which botocore's reader drops), then with a value: still two readings
    key = request["body"][1:].split(b"\x05")[0]  # text(10) "maxResults", then the integer 5
    null_first = run(dict(request, body=b"\xa2" + key + b"\xf6" + request["body"][1:]))
    assert "key 'maxResults' given more than once in one map" in null_first.error, null_first.error
    assert run(dict(request, body=b"\xa1" + key + b"\xf6")).params == {}  # a null alone is no value


def java_cbor(value) -> bytes:
    """CBOR as the AWS SDKs for Java write a json call's body (Jackson): maps and arrays of
    indefinite length, blobs as byte strings, timestamps as tag 1 and epoch milliseconds."""
    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        size = next(s for s in (1, 2, 4, 8) if n < 1 << (8 * s))
        return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")

    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    if isinstance(value, list):
        return b"\x9f" + b"".join(java_cbor(v) for v in value) + b"\xff"
    if isinstance(value, dict):
        return b"\xbf" + b"".join(java_cbor(k) + java_cbor(v) for k, v in value.items()) + b"\xff"
    if isinstance(value, datetime.datetime):
        return b"\xc1" + java_cbor(round(value.timestamp() * 1000))
    raise TypeError(type(value))


def as_cbor(request: dict, body: bytes, content_type: str = "application/x-amz-cbor-1.1") -> dict:
    """``request`` (a json call botocore built) sent as the SDK for Java sends it: CBOR."""
    headers = {k: v for k, v in request["headers"].items() if k.lower() != "content-type"}
    return dict(request, headers={**headers, "Content-Type": content_type}, body=body)


AT = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
KINESIS_CALLS = [
    ("put_record", {"StreamName": "orders", "Data": b"\x00\xff{\"id\": 7}\n", "PartitionKey": "k1",
                    "SequenceNumberForOrdering": "49590338271490256608559692538361571095921575989136588898"}),
    ("put_records", {"StreamName": "orders", "Records": [
        {"Data": b"first", "PartitionKey": "a"},
        {"Data": b"\x80\x81 second", "PartitionKey": "b", "ExplicitHashKey": "340282366920938463463374607431768211455"},
        {"Data": b"", "PartitionKey": "c"}]}),
    ("get_records", {"ShardIterator": "AAAAAAAAAAHSywljv0zEgPX4NyKdZ5wryMzP9yALs8NeKbUjp1IxtZs1Sp+KEd9I6AJ9Z"
                                      "G4lNR1EMi+9Md/nHvtLyxpfhEzYvkTZ4D9DQVz/mBYWRO6OTZRKnW9gd+efGN2aHFdkH1rJl4BL",
                     "Limit": 100}),
    ("describe_stream_summary", {"StreamName": "orders"}),
    ("describe_stream_summary", {"StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"}),
    ("get_shard_iterator", {"StreamName": "orders", "ShardId": "shardId-000000000000",
                            "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": AT}),
    ("list_shards", {"StreamName": "orders", "StreamCreationTimestamp": AT, "MaxResults": 10,
                     "ShardFilter": {"Type": "FROM_TIMESTAMP", "Timestamp": AT}}),
]


@pytest.mark.parametrize("method, params", KINESIS_CALLS, ids=[c[0] for c in KINESIS_CALLS])
def test_a_json_call_sent_as_cbor_has_the_params_of_the_call_sent_as_json(method, params):
    """The AWS SDKs for Java (and the KCL and KPL) send Kinesis as CBOR: the same call, the same
    parameters, whichever form it came in (blobs as the JSON call's base64, timestamps as its text)."""
    request = capture("kinesis", method, **params)
    assert request["headers"]["Content-Type"] == "application/x-amz-json-1.1"
    as_json = run(request)
    assert as_json.error is None and as_json.protocol == "json"
    got = run(as_cbor(request, java_cbor(params)))
    assert got.error is None, got.error
    assert got.params == as_json.params
    assert (got.service, got.operation, got.protocol, got.action, got.access_level, got.resources, got.account) == (
        as_json.service, as_json.operation, "json", as_json.action, as_json.access_level, as_json.resources,
        as_json.account)
    # as much in a map of definite length, and with the content type written otherwise
    definite = masking.cbor_encode(params, millis=True)
    assert definite[:1] != b"\xbf"
    assert run(as_cbor(request, definite, "Application/X-Amz-Cbor-1.1; charset=utf-8")).params == as_json.params


def test_a_json_call_sent_as_cbor_reads_blobs_and_timestamps_as_the_json_call():
    request = capture("kinesis", "describe_stream_summary", StreamName="s")
    # {"StreamName": "s"} as a map of definite length, byte for byte
    got = run(as_cbor(request, bytes.fromhex("a1 6a 53747265616d4e616d65 61 73")))
    assert (got.action, got.params, got.error) == ("kinesis:DescribeStreamSummary", {"StreamName": "s"}, None)
    put = run(as_cbor(capture("kinesis", "put_record", StreamName="s", Data=b"x", PartitionKey="k"),
                      java_cbor({"StreamName": "s", "Data": b"\x00\x01hello", "PartitionKey": "k"})))
    assert put.params["Data"] == base64.b64encode(b"\x00\x01hello").decode() == "AAFoZWxsbw=="
    # timestamps are epoch milliseconds, tagged (as the SDKs write them) or not, to the millisecond
    iterator = capture("kinesis", "get_shard_iterator", StreamName="s", ShardId="shardId-0",
                       ShardIteratorType="AT_TIMESTAMP", Timestamp=AT)
    fields = {"StreamName": "s", "ShardId": "shardId-0", "ShardIteratorType": "AT_TIMESTAMP"}
    for stamp in (b"\xc1" + java_cbor(1704164645123), java_cbor(1704164645123)):
        body = java_cbor(fields)[:-1] + java_cbor("Timestamp") + stamp + b"\xff"
        assert run(as_cbor(iterator, body)).params["Timestamp"] == "2024-01-02T03:04:05.123000+00:00"
    as_json = run(dict(iterator, body=json.dumps({**fields, "Timestamp": 1704164645.5}).encode()))
    as_cbor_ = run(as_cbor(iterator, java_cbor({**fields, "Timestamp": datetime.datetime(
        2024, 1, 2, 3, 4, 5, 500000, tzinfo=datetime.timezone.utc)})))
    assert as_cbor_.params["Timestamp"] == as_json.params["Timestamp"] == "2024-01-02T03:04:05.500000+00:00"


def test_a_json_call_whose_cbor_body_does_not_read_is_refused_with_its_reason():
    """Read with the RPC v2 CBOR reader, with its refusals; the call is then decided as unknown."""
    put = capture("kinesis", "put_record", StreamName="s", Data=b"x", PartitionKey="k")
    iterator = capture("kinesis", "get_shard_iterator", StreamName="s", ShardId="0", ShardIteratorType="LATEST")
    good = java_cbor({"StreamName": "s", "Data": b"x", "PartitionKey": "k"})
    key = java_cbor("StreamName") + java_cbor("s")
    unreadable = "could not read the json request body, sent as application/x-amz-cbor-1.1: "
    cases = [
        (put, good + b"\x00", unreadable + "ValueError: trailing bytes after the CBOR data item"),
        (put, good[:-3], unreadable + "ResponseParserError: End of stream reached"),
        # a key named twice: which of the two the service acts on is not known
        (put, b"\xa2" + key + key, unreadable + "ValueError: key 'StreamName' given more than once in one map"),
        (put, b"\xbf" + key + key + b"\xff", unreadable + "ValueError: key 'StreamName' given more than once"),
        (put, b"\xa1" + java_cbor("StreamName") + b"\xc2" + java_cbor(b"\x01"),
         unreadable + "ResponseParserError: Found CBOR tag not supported by botocore: 2"),
        (put, java_cbor(["StreamName", "s"]), "body: expected an object"),
        (put, json.dumps({"StreamName": "s", "Data": "eA==", "PartitionKey": "k"}).encode(), unreadable),
        (put, b"\x9f" * 5000, unreadable),  # nested too deep
        (iterator, b"\xa1" + java_cbor("Timestamp") + b"\xc1\x1b" + b"\x7f" * 8, unreadable + "OverflowError"),
        (iterator, b"\xa1" + java_cbor("Timestamp") + b"\x1b" + b"\x7f" * 8, "Timestamp: expected timestamp"),
    ]
    for request, body, why in cases:
        got = run(as_cbor(request, body))
        assert got.error and got.error.startswith(why), (body[:40], got.error)
        assert got.service == "kinesis" and got.protocol == "json"
    # a CBOR body under a JSON content type, or under a content type the SDKs do not send for json
    # calls, is read as JSON, and does not read
    for ctype in ("application/x-amz-json-1.1", "application/cbor", "application/x-amz-cbor-1.0"):
        got = run(as_cbor(put, good, ctype))
        assert got.error.startswith("could not read the json request body: "), (ctype, got.error)


def test_a_json_call_on_another_path_than_the_root_is_ambiguous():
    """Every json operation's request URI is "/": an X-Amz-Target sent to an RPC v2 path (or any
    other) could be routed by that path to another operation by a server that reads both."""
    got = capture("dynamodb", "describe_limits")
    assert run(got).operation == "DescribeLimits"
    for path in ("/service/DynamoDB_20120810/operation/DeleteTable", "/anything/else"):
        other = run(dict(got, path=path))
        assert other.action == "unknown" and "the request is ambiguous" in other.error, other.error


def test_gzip_compressed_body():
    got = run(capture("cloudwatch", "put_metric_data", config={"request_min_compression_size_bytes": 1},
                      Namespace="App", MetricData=[{"MetricName": "latency", "Value": 1.5}]))
    assert (got.operation, got.action) == ("PutMetricData", "cloudwatch:PutMetricData")
    assert got.params == {"Namespace": "App", "MetricData": [{"MetricName": "latency", "Value": 1.5}]}


def test_shared_signing_name_disambiguated():
    assert run(capture("elbv2", "describe_load_balancers")).service == "elbv2"
    assert run(capture("elb", "describe_load_balancers")).service == "elb"
    assert run(capture("apigatewayv2", "get_apis")).service == "apigatewayv2"
    assert run(capture("bedrock-runtime", "converse", modelId="m1",
                       messages=[{"role": "user", "content": [{"text": "hi"}]}])).action == "bedrock:InvokeModel"
    assert run(capture("dynamodbstreams", "list_streams")).service == "dynamodbstreams"


def test_same_wire_services_get_the_preferred_name():
    got = run(capture("docdb", "describe_db_clusters"))
    assert (got.service, got.operation, got.action) == ("rds", "DescribeDBClusters", "rds:DescribeDBClusters")


def test_mitmproxy_headers_are_accepted():
    from mitmproxy.http import Headers

    request = capture("dynamodb", "get_item", TableName="t", Key={"id": {"S": "1"}})
    headers = Headers(**{k.lower().replace("-", "_"): v for k, v in request["headers"].items()})
    got = classify("POST", request["host"], "/", "", headers, request["body"])
    assert (got.operation, got.params["TableName"]) == ("GetItem", "t")


def test_streamed_json_body_keeps_the_operation():
    request = capture("dynamodb", "get_item", TableName="t", Key={"id": {"S": "1"}})
    got = classify("POST", request["host"], "/", "", request["headers"], None)
    assert (got.operation, got.params, got.error) == ("GetItem", {}, None)


# ---------------------------------------------------------------------------------------------
# Bad input: never raises


def signed_headers(service: str = "dynamodb") -> dict:
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/{service}/aws4_request, "
                             "SignedHeaders=host, Signature=00"}


@pytest.mark.parametrize("method, host, path, query, headers, body", [
    ("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", signed_headers(), random.Random(256).randbytes(256)),  # random bytes (seeded: the same in every test process)
    ("POST", "ec2.us-east-1.amazonaws.com", "/", "", signed_headers("ec2"), b'{"InstanceIds": ["i-1"]}'),  # json to ec2
    ("GET", "example.com", "/index.html", "", {"Host": "example.com"}, None),  # not AWS
    ("GET", "", "", "", {}, None),  # nothing at all
    ("POST", "sts.amazonaws.com", "/", "", {}, b"\xff\xfe\x00garbage"),  # no scope, not form
    ("GET", "example.org", "/", "", {"Authorization": "AWS4-HMAC-SHA256 Credential=garbage"}, None),
    ("POST", "foo.us-east-1.amazonaws.com", "/", "", signed_headers("nosuchservice"), b"{}"),
    ("GET", "[::1]:8080", "/", "", {}, None),
    ("POST", "lambda.us-east-1.amazonaws.com", "/2015-03-31/nope", "", signed_headers("lambda"), b""),
])
def test_bad_input_is_unknown_with_a_reason(method, host, path, query, headers, body):
    got = classify(method, host, path, query, headers, body)
    assert got.action == "unknown" and got.operation is None
    assert got.error


def test_garbled_credential_falls_back_to_the_host():
    got = classify("GET", "s3.amazonaws.com", "/", "", {"Authorization": "AWS4-HMAC-SHA256 Credential=x/y"}, None)
    assert (got.operation, got.action, got.signing_name) == ("ListBuckets", "s3:ListAllMyBuckets", "s3")


def test_none_headers_and_body():
    got = classify("GET", "example.com", "/", "", None, None)  # type: ignore[arg-type]
    assert got.action == "unknown" and got.error


@pytest.mark.parametrize("body", [
    random.Random(64).randbytes(64),
    b"<xml>not json</xml>",
    b"[1, 2, 3]",
    b"[" * 100000,  # nesting deeper than the parser's recursion limit
    json.dumps({"TableName": 5, "Key": "nope"}).encode(),
])
def test_unreadable_body_keeps_the_operation_and_says_why(body):
    request = capture("dynamodb", "get_item", TableName="t", Key={"id": {"S": "1"}})
    got = classify("POST", request["host"], "/", "", request["headers"], body)
    assert (got.operation, got.action) == ("GetItem", "dynamodb:GetItem")
    assert got.error


def test_xml_entities_are_refused():
    request = capture("s3", "put_bucket_tagging", Bucket="b1", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    bomb = (b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet><Tag><Key>&b;</Key>'
            b'<Value>v</Value></Tag></TagSet></Tagging>')
    got = classify("PUT", request["host"], request["path"], request["query"], request["headers"], bomb)
    assert got.operation == "PutBucketTagging"
    assert "Tagging" not in got.params
    assert "could not read" in got.error


def test_bad_gzip_body():
    request = capture("cloudwatch", "put_metric_data", config={"request_min_compression_size_bytes": 1},
                      Namespace="App", MetricData=[{"MetricName": "m", "Value": 1.0}])
    got = classify("POST", request["host"], "/", "", request["headers"], b"\x1f\x8bnot gzip")
    assert got.operation == "PutMetricData" and got.error


def test_every_member_of_a_gzip_body_is_read_and_a_cut_or_padded_one_is_refused():
    """A service that reads every member of a gzip body (as zlib, Java's GZIPInputStream and moto
    do) must not act on parameters policy never saw: the second member here grants a second account."""
    request = capture("sns", "add_permission", TopicArn="arn:aws:sns:us-east-1:123456789012:alerts", Label="l1",
                      AWSAccountId=["111111111111"], ActionName=["Publish"])
    body = request["body"].encode() if isinstance(request["body"], str) else request["body"]
    query = "Action=AddPermission&Version=2010-03-31"  # in the URL: the compressed body holds the rest
    body = b"&".join(p for p in body.split(b"&") if not p.startswith((b"Action=", b"Version=")))
    headers = dict(request["headers"], **{"Content-Encoding": "gzip"})
    two = gzip.compress(body) + gzip.compress(b"&AWSAccountId.member.2=999999999999&ActionName.member.2=DeleteTopic")
    got = classify("POST", request["host"], "/", query, headers, two)
    assert got.error is None and got.params["AWSAccountId"] == ["111111111111", "999999999999"]
    assert got.params["ActionName"] == ["Publish", "DeleteTopic"]
    for bad, words in ((gzip.compress(body)[:-6], "ends before its compressed data does"),
                       (gzip.compress(body) + b"trailing", "could not read")):
        got = classify("POST", request["host"], "/", query, headers, bad)
        assert got.operation == "AddPermission" and words in (got.error or ""), got.error
    # a form body that cannot be read (a byte that is not UTF-8) is not decided on the URL's parameters alone
    plain = dict(request["headers"])
    unreadable = classify("POST", request["host"], "/", query, plain, body + b"&AWSAccountId.member.2=\xff9999")
    assert "could not read the form body: UnicodeDecodeError" in unreadable.error
    deflated = classify("POST", request["host"], "/", query, dict(headers, **{"Content-Encoding": "deflate"}),
                        zlib.compress(body) + zlib.compress(b"&Label=l2"))
    assert "Content-Encoding is 'deflate'" in deflated.error  # a coding services do not undo: not read at all
    # a gzip header's file name, which inflating drops, read by a service that takes x-gzip as sent
    named = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff&Action=DeleteTopic&\x00" + gzip.compress(body)[10:]
    for coding in ("x-gzip", "GZIP", "gzip, gzip", "br"):
        got = classify("POST", request["host"], "/", query, dict(headers, **{"Content-Encoding": coding}), named)
        assert got.operation == "AddPermission" and f"Content-Encoding is {coding!r}" in (got.error or ""), got.error
    assert classify("POST", request["host"], "/", query, headers, named).error is None  # gzip: inflated upstream too


def test_gzip_bomb_is_capped():
    request = capture("cloudwatch", "put_metric_data", config={"request_min_compression_size_bytes": 1},
                      Namespace="App", MetricData=[{"MetricName": "m", "Value": 1.0}])
    bomb = gzip.compress(b" " * (classifier.MAX_DECOMPRESSED_BODY + 1024))
    got = classify("POST", request["host"], "/", "", request["headers"], bomb)
    assert got.operation == "PutMetricData" and "too large" in got.error


def test_params_that_do_not_fit_the_shape():
    got = classify("POST", "ec2.us-east-1.amazonaws.com", "/", "", dict(signed_headers("ec2"), **{
        "Content-Type": "application/x-www-form-urlencoded"}),
        b"Action=DescribeInstances&Version=2016-11-15&MaxResults=lots&Bogus=1")
    assert got.operation == "DescribeInstances"
    assert got.params["MaxResults"] == "lots"
    assert "MaxResults" in got.error and "Bogus" in got.error


# A name given twice is ambiguous: which value a service acts on is not known, so the gateway must
# not decide (or record, or bind an approval to) one of them. Each case is a request botocore built,
# with one name doubled the way a hostile agent would.


def _with_body(request: dict, body: bytes, query: str | None = None) -> dict:
    return dict(request, body=body, query=request["query"] if query is None else query)


def test_a_query_action_in_the_url_and_another_in_the_body_is_refused_not_read_as_the_first():
    # Read as DescribeInstances (List, allowed by a read-only rule) while EC2 might run the other.
    terminate = capture("ec2", "terminate_instances", InstanceIds=["i-0abc"])
    got = run(_with_body(terminate, terminate["body"], query="Action=DescribeInstances"))
    assert got.operation == "DescribeInstances" and "Action: given more than once" in got.error
    doubled = run(_with_body(terminate, b"Action=DescribeInstances&" + terminate["body"]))
    assert "Action: given more than once" in doubled.error
    assert run(terminate).error is None  # the request as botocore sends it


def test_a_query_parameter_given_twice_is_refused():
    request = capture("sts", "assume_role", RoleArn=f"arn:aws:iam::{ACCOUNT}:role/read", RoleSessionName="agent")
    body = request["body"].encode() if isinstance(request["body"], str) else request["body"]
    got = run(_with_body(request, body + f"&RoleArn=arn:aws:iam::{ACCOUNT}:role/admin".encode()))
    assert got.operation == "AssumeRole" and "RoleArn: given more than once" in got.error
    # numbered list members are distinct names, not repeats
    listed = run(capture("ec2", "describe_instances", InstanceIds=["i-1", "i-2", "i-3"]))
    assert listed.error is None and listed.params["InstanceIds"] == ["i-1", "i-2", "i-3"]


@pytest.mark.parametrize("service, method, params, member", [
    ("dynamodb", "delete_table", {"TableName": "dev"}, "TableName"),
    ("lambda", "update_function_configuration", {"FunctionName": "f", "Timeout": 3}, "Timeout"),  # rest-json
])
def test_a_json_member_given_twice_is_refused(service, method, params, member):
    request = capture(service, method, **params)
    assert run(request).error is None
    document = json.loads(request["body"])
    text = json.dumps(document)[:-1] + f', "{member}": ' + json.dumps(document[member]) + "}"
    got = run(_with_body(request, text.encode()))
    assert f"member '{member}' given more than once" in got.error, got.error
    nested = run(_with_body(request, b'{"Key": {"a": {"S": "1"}, "a": {"S": "2"}}}'))
    assert "given more than once" in nested.error  # in a nested object too


def test_a_rest_query_parameter_given_twice_is_refused_but_a_list_may_repeat():
    request = capture("s3", "get_object", Bucket="bkt", Key="k", VersionId="v1")
    assert run(request).error is None
    got = run(dict(request, query=request["query"] + "&versionId=v2"))
    assert got.operation == "GetObject" and "query parameter 'versionId' given more than once" in got.error
    untag = capture("lambda", "untag_resource", Resource="arn:aws:lambda:us-east-1:123456789012:function:f",
                    TagKeys=["a", "b"])  # a list member is its name repeated, as botocore sends it
    assert "tagKeys=a&tagKeys=b" in untag["query"]
    listed = run(untag)
    assert listed.error is None and listed.params["TagKeys"] == ["a", "b"]


def test_an_xml_element_given_twice_is_refused():
    request = capture("s3", "put_bucket_versioning", Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
    assert run(request).error is None, run(request).error
    body = request["body"].replace(b"<Status>Enabled</Status>", b"<Status>Enabled</Status><Status>Suspended</Status>")
    got = run(dict(request, body=body, headers={k: v for k, v in request["headers"].items() if k.lower() != "content-md5"}))
    assert "element <Status> given more than once" in got.error, got.error
    # a flattened list's items repeat by design
    tags = run(capture("s3", "delete_objects", Bucket="bkt", Delete={"Objects": [{"Key": "a"}, {"Key": "b"}]}))
    assert tags.error is None and [o["Key"] for o in tags.params["Delete"]["Objects"]] == ["a", "b"]


def test_jsonvalue_and_blob_members():
    payload = base64.b64encode(b"\x00\x01").decode()
    got = run(capture("kms", "encrypt", KeyId="alias/app", Plaintext=b"\x00\x01"))
    assert got.params == {"KeyId": "alias/app", "Plaintext": payload}


# ---------------------------------------------------------------------------------------------
# Cheap to start


def test_import_and_creation_are_lazy():
    fresh = classifier.Classifier()
    assert fresh._catalogue is None and fresh._routing == {}
    fresh.classify("GET", "example.com", "/", "", {}, None)
    assert fresh._routing == {}


def test_host_parsing():
    partitions = classifier.read_partitions(classifier.default_classifier().loader)
    assert classifier.split_host("Sts.Amazonaws.Com:443", partitions) == classifier.HostParts(("sts",), None)
    assert classifier.split_host("kms-fips.us-gov-west-1.amazonaws.com", partitions).region == "us-gov-west-1"
    assert classifier.split_host("ec2.cn-north-1.amazonaws.com.cn", partitions).labels == ("ec2",)
    assert classifier.split_host("example.com", partitions) is None
    assert classifier.split_host("amazonaws.com.evil.com", partitions) is None


def test_s3_access_point_host():
    arn = f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint/reports"
    request = capture("s3", "get_object", region="us-west-2", Bucket=arn, Key="q1.csv")
    assert request["host"] == f"reports-{ACCOUNT}.s3-accesspoint.us-west-2.amazonaws.com"
    got = run(request)
    assert (got.operation, got.account, got.params["Key"]) == ("GetObject", ACCOUNT, "q1.csv")
    assert got.params["Bucket"] == f"reports-{ACCOUNT}"


def test_s3_object_lambda_write_get_object_response():
    got = run(capture("s3", "write_get_object_response", RequestRoute="route-1", RequestToken="t", Body=b"x"))
    assert (got.operation, got.params["RequestRoute"], got.params["RequestToken"]) == (
        "WriteGetObjectResponse", "route-1", "t")


def test_the_host_region_decides_and_a_scope_naming_another_is_an_error():
    request = capture("dynamodb", "get_item", region="eu-west-1", TableName="t", Key={"k": {"S": "1"}})
    assert run(request).region == "eu-west-1"
    other = dict(request, headers=dict(request["headers"], Authorization=request["headers"]["Authorization"].replace(
        "/eu-west-1/", "/us-east-1/")))
    got = run(other)
    assert got.region == "eu-west-1" and got.action == "unknown"
    assert "credential scope names region 'us-east-1'" in got.error
    # a host that names no region (the global S3 endpoint): the scope's region stands
    request = capture("s3", "get_object", region="eu-central-1", Bucket="b", Key="k")
    assert run(dict(request, host="b.s3.amazonaws.com")).region == "eu-central-1"


@pytest.mark.parametrize("region, signed_for", [("eu-west-1", "us-east-1"), ("us-west-2", "us-east-1"),
                                                ("cn-north-1", "cn-northwest-1")])
def test_a_global_service_at_a_regional_host_is_decided_for_the_region_botocore_signs_for(region, signed_for):
    """AWS Health: botocore sends to health.<region> signed for the partition's global endpoint's
    region (endpoints.json), as AWS authorises it: decided for that region, not refused as signed
    elsewhere; any other region in the scope still is."""
    request = capture("health", "describe_events", region=region)
    assert request["host"].startswith(f"health.{region}.")
    assert f"/{signed_for}/health/" in request["headers"]["Authorization"]
    got = run(request)
    assert (got.error, got.signed_region, got.region, got.action, got.access_level) == (
        None, None, signed_for, "health:DescribeEvents", "Read")
    other = next(r for r in ("ap-south-1", "eu-central-1") if r not in (region, signed_for))
    wrong = dict(request, headers=dict(request["headers"], Authorization=request["headers"]["Authorization"].replace(
        f"/{signed_for}/", f"/{other}/")))
    refused = run(wrong)
    assert refused.signed_region == other and f"credential scope names region {other!r}" in refused.error


def test_a_presigned_credential_is_read_whatever_its_case_and_only_once():
    scope = "AKID%2F20260101%2Feu-west-1%2Fs3%2Faws4_request"
    lower = classify("GET", "b.s3.amazonaws.com", "/k", f"x-amz-credential={scope}&X-Amz-Signature=00", {}, None)
    assert lower.region == "eu-west-1"
    twice = classify("GET", "b.s3.amazonaws.com", "/k",
                     f"X-Amz-Credential={scope}&x-amz-credential={scope.replace('eu-west-1', 'us-west-2')}", {}, None)
    # neither scope is read (the host's partition's default stands): the gateway refuses such a
    # request (test_signature_scope.py)
    assert twice.region == "us-east-1"


def test_partiql_statements_are_the_actions_iam_authorises_them_as():
    got = run(capture("dynamodb", "execute_statement", Statement='SELECT * FROM "orders" WHERE id = ?',
                      Parameters=[{"S": "1"}]))
    assert (got.operation, got.action, got.access_level, got.resources) == (
        "ExecuteStatement", "dynamodb:PartiQLSelect", "Read", ["orders"])
    batch = run(capture("dynamodb", "batch_execute_statement", Statements=[
        {"Statement": "SELECT * FROM orders WHERE id = 1"}, {"Statement": 'DELETE FROM "audit" WHERE id = 2'}]))
    assert (batch.action, batch.resources) == ("dynamodb:PartiQLSelect", ["orders", "audit"])
    assert [(c.action, c.access_level) for c in batch.implied] == [("dynamodb:PartiQLDelete", "Write")]
    tx = run(capture("dynamodb", "execute_transaction", TransactStatements=[
        {"Statement": "UPDATE orders SET a = 1 WHERE id = 1"}, {"Statement": "EXISTS(SELECT * FROM limits WHERE id = 2)"}]))
    assert (tx.action, [c.action for c in tx.implied]) == ("dynamodb:PartiQLUpdate", ["dynamodb:PartiQLSelect"])
    odd = run(capture("dynamodb", "execute_statement", Statement="EXPLAIN SELECT 1"))  # no verb DynamoDB runs
    assert odd.error and "Statement is not a PartiQL statement" in odd.error  # the classify stage: unknown


AUDIT_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/audit-x"


@pytest.mark.parametrize("statement, action, resources", [
    ('/* tidy up */ DELETE FROM "audit-x" WHERE id = 1', "dynamodb:PartiQLDelete", ["audit-x"]),
    ('-- tidy up\nDELETE FROM "audit-x" WHERE id = 1', "dynamodb:PartiQLDelete", ["audit-x"]),
    ('DELETE/**/FROM"audit-x"--\n WHERE id = 1', "dynamodb:PartiQLDelete", ["audit-x"]),
    ('SELECT "v FROM orders" FROM "audit-x"', "dynamodb:PartiQLSelect", ["audit-x"]),
    ('SELECT fromage, from$x, "from", a-b/c, x--FROM orders\n FROM "audit-x"', "dynamodb:PartiQLSelect", ["audit-x"]),
    ("SELECT 'it''s FROM orders' FROM \"audit-x\"", "dynamodb:PartiQLSelect", ["audit-x"]),
    ('select * from "audit-x"."by-date" where id = 1', "dynamodb:PartiQLSelect", ["audit-x"]),
    ("INSERT INTO \"audit-x\" VALUE {'id': 1, 'note': 'FROM orders'}", "dynamodb:PartiQLInsert", ["audit-x"]),
    ('UPDATE "say ""FROM orders""" SET a = 1 WHERE id = 1', "dynamodb:PartiQLUpdate", ['say "FROM orders"']),
    (f'DELETE FROM "{AUDIT_ARN}" WHERE id = 1', "dynamodb:PartiQLDelete", [AUDIT_ARN, "audit-x"]),
])
def test_a_partiql_statement_is_read_by_its_tokens(statement, action, resources):
    """The verb is the statement's first token and the table the identifier its grammar puts after
    FROM, INTO or UPDATE, past comments, strings and quoted identifiers that hold those words (a
    leading comment hid the verb: the call was dynamodb:ExecuteStatement, allowed by dynamodb:*; a
    FROM in a quoted name was read as the clause)."""
    got = run(capture("dynamodb", "execute_statement", Statement=statement))
    assert (got.action, got.resources, got.error) == (action, resources, None)
    tx = run(capture("dynamodb", "execute_transaction", TransactStatements=[
        {"Statement": statement}, {"Statement": 'EXISTS(/* first */ SELECT * FROM "limits" WHERE id = 2)'}]))
    assert (tx.action, tx.resources, [c.action for c in tx.implied], tx.error) == (
        action, resources + ["limits"], ["dynamodb:PartiQLSelect"] if action != "dynamodb:PartiQLSelect" else [], None)


@pytest.mark.parametrize("statement, why", [
    ("EXPLAIN SELECT * FROM orders", "is not a PartiQL statement DynamoDB runs"),
    ('(DELETE FROM "audit-x" WHERE id = 1)', "is not a PartiQL statement DynamoDB runs"),
    ('"DELETE" FROM "audit-x" WHERE id = 1', "is not a PartiQL statement DynamoDB runs"),
    ("SELECT * FROM 'audit-x'", "is a SELECT whose table cannot be read"),
    ("DELETE FROM ? WHERE id = 1", "is a DELETE whose table cannot be read"),
    ("DELETE FROM audit.x WHERE id = 1", "is a DELETE whose table cannot be read"),
    ("SELECT * FROM audit.x", "is a SELECT whose table cannot be read"),
    ("INSERT \"audit-x\" VALUE {'id': 1}", "is an INSERT whose table cannot be read"),
    ("EXISTS SELECT * FROM limits", "is an EXISTS that holds no SELECT"),
    ("DELETE FROM audit-x WHERE id = 1", "is a DELETE whose table cannot be read"),  # audit minus x
    ('UPDATE "audit-x" "x" SET a = 1', "is an UPDATE whose table cannot be read"),
    ('SELECT "v FROM orders', 'has a " at 7 that is never closed'),
    ('/* DELETE FROM "audit-x" WHERE id = 1', "has a /* at 0 that is never closed"),
])
def test_a_partiql_statement_whose_verb_or_table_cannot_be_read_is_not_decided(statement, why):
    """Not decided (the classify stage makes it unknown), alone, in a batch beside a statement that
    reads, or in a transaction: a rule could not decide it by what it does."""
    got = run(capture("dynamodb", "execute_statement", Statement=statement))
    assert got.error and f"Statement {why}" in got.error and "agentgate decides no such call" in got.error
    batch = run(capture("dynamodb", "batch_execute_statement", Statements=[
        {"Statement": "SELECT * FROM orders WHERE id = 1"}, {"Statement": statement}]))
    assert batch.error and f"Statements[1].Statement {why}" in batch.error
    tx = run(capture("dynamodb", "execute_transaction", TransactStatements=[{"Statement": statement}]))
    assert tx.error and f"TransactStatements[0].Statement {why}" in tx.error


@pytest.mark.parametrize("function", [
    "billing:1", "billing:prod", "arn:aws:lambda:us-east-1:123456789012:function:billing",
    "arn:aws:lambda:us-east-1:123456789012:function:billing:$LATEST", "123456789012:function:billing",
    "123456789012:function:billing:7",
])
def test_a_lambda_function_is_named_by_its_bare_name_too(function):
    """Each form Lambda's FunctionName takes (a name with a version or alias, an ARN, a qualified
    ARN, a partial ARN) names the function's bare name among the resources, after the spelling sent:
    a rule on contains(resource, 'billing') holds for every one (ends_with(params.FunctionName,
    ':function:billing') missed billing:1, a qualified ARN and the partial ARN)."""
    got = run(capture("lambda", "get_function_configuration", FunctionName=function))
    assert (got.action, got.resources, got.error) == ("lambda:GetFunctionConfiguration", [function, "billing"], None)
    plain = run(capture("lambda", "get_function_configuration", FunctionName="billing", Qualifier="1"))
    assert plain.resources == ["billing"]
    invoked = run(capture("lambda", "invoke", FunctionName=function, Payload=b"{}"))
    assert invoked.resources == [function, "billing"]


def test_a_table_arn_and_a_queue_url_are_named_by_their_bare_names_too():
    """A DynamoDB table's ARN (its index's too), wherever a call names it, and an SQS queue's URL,
    name the table or the queue beside them, in the order sent."""
    key = {"id": {"S": "1"}}
    got = run(capture("dynamodb", "get_item", TableName=AUDIT_ARN, Key=key))
    assert got.resources == [AUDIT_ARN, "audit-x"]
    index = f"{AUDIT_ARN}/index/by-date"
    assert run(capture("dynamodb", "query", TableName=AUDIT_ARN, IndexName="by-date",
                       KeyConditionExpression="id = :v", ExpressionAttributeValues={":v": {"S": "1"}})
               ).resources == [AUDIT_ARN, "audit-x", "by-date"]
    assert classifier.bare_names(index) == ("audit-x",)
    batch = run(capture("dynamodb", "batch_get_item", RequestItems={"orders": {"Keys": [key]}, AUDIT_ARN: {"Keys": [key]}}))
    assert batch.resources == ["orders", AUDIT_ARN, "audit-x"]
    tx = run(capture("dynamodb", "transact_write_items", TransactItems=[
        {"Put": {"TableName": "orders", "Item": key}}, {"Delete": {"TableName": AUDIT_ARN, "Key": key}}]))
    assert [p.resources for p in tx.implied] == [["orders"], [AUDIT_ARN, "audit-x"]]  # each item decided on its own
    sent = run(capture("sqs", "send_message", QueueUrl=QUEUE_URL, MessageBody="hello"))
    assert sent.resources == [QUEUE_URL, "jobs"]
    assert run(capture("sqs", "get_queue_url", QueueName="jobs")).resources == ["jobs"]


def test_a_secret_is_named_by_its_name_for_each_arn_and_in_a_batch():
    """Secrets Manager takes a secret by name, by its full ARN (with the six characters AWS adds)
    and by its partial ARN; BatchGetSecretValue by a list of them (SecretIdList, which named no
    resource). A full ARN's last six characters could also be the end of a partial ARN's name:
    both readings are named."""
    full = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"
    partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db"
    assert run(capture("secretsmanager", "get_secret_value", SecretId=full)).resources == [full, "prod/db", "prod/db-AbCdEf"]
    assert run(capture("secretsmanager", "describe_secret", SecretId=partial)).resources == [partial, "prod/db"]
    assert run(capture("secretsmanager", "get_secret_value", SecretId="prod/db")).resources == ["prod/db"]
    batch = run(capture("secretsmanager", "batch_get_secret_value", SecretIdList=["prod/cache", full]))
    assert (batch.action, batch.resources) == ("secretsmanager:BatchGetSecretValue",
                                               ["prod/cache", full, "prod/db", "prod/db-AbCdEf"])


@pytest.mark.parametrize("service, operation, params, resources", [
    ("resourcegroupstaggingapi", "get_resources", {"ResourceARNList": [QUEUE_ARN]}, [QUEUE_ARN]),
    ("cloudtrail", "describe_trails", {"trailNameList": ["audit"]}, ["audit"]),
    ("sns", "set_topic_attributes", {"TopicArn": TOPIC_ARN, "AttributeName": "DisplayName", "AttributeValue": "x"},
     [TOPIC_ARN]),
    ("iam", "create_open_id_connect_provider", {"Url": "https://issuer.example", "ClientIDList": ["sts.amazonaws.com"]},
     ["https://issuer.example"]),
    ("connect", "delete_data_table_attribute", {"InstanceId": "i-1", "DataTableId": "t-1", "AttributeName": "color"},
     ["i-1", "t-1", "color"]),  # in the path: the attribute is the thing deleted
])
def test_lists_of_identifiers_are_resources_and_attribute_names_are_not(service, operation, params, resources):
    assert run(capture(service, operation, **params)).resources == resources


@pytest.mark.parametrize("method, path, query, dispatched", [
    ("GET", "/", "session&x-id=ListObjects", "CreateSession"),  # S3 Express session credentials
    ("PUT", "/planted.txt", "acl&x-id=PutObject", "PutObjectAcl"),
    ("DELETE", "/", "publicAccessBlock&x-id=DeleteBucket", "DeletePublicAccessBlock"),
])
def test_an_x_id_hint_never_outranks_the_subresource_s3_dispatches_on(method, path, query, dispatched):
    """botocore adds ?x-id=<operation> as a hint; S3 acts on the subresource (?acl, ?session). A hint
    naming another operation than the one the request is decided as is ambiguous."""
    host = "mybkt--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com" if "session" in query \
        else "bkt.s3.amazonaws.com"
    service = "s3express" if "session" in query else "s3"
    headers = {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{service}/aws4_request, "
                                "SignedHeaders=host, Signature=00", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    got = classify(method, host, path, query, headers, None)
    assert got.action == "unknown" and f"is {dispatched} by its path and query, and says x-id=" in got.error, got
    honest = classify(method, host, path, query.split("&x-id")[0], headers, None)
    assert honest.operation == dispatched and honest.error is None


@pytest.mark.parametrize("service, method, params, raw, decoded", [
    # a Read turned into a read of the policy, into credentials, into a cancellation
    ("lambda", "get_function", {"FunctionName": "x/policy"}, "GetFunction", "GetPolicy"),
    ("deadline", "get_farm", {"farmId": "farm-1/fleets/fleet-1/read-roles"}, "GetFarm", "AssumeFleetRoleForRead"),
    ("deadline", "get_farm", {"farmId": "farm-1/queues/queue-1/read-roles"}, "GetFarm", "AssumeQueueRoleForRead"),
    ("snow-device-management", "describe_task", {"taskId": "t-1/cancel"}, "DescribeTask", "CancelTask"),
])
def test_an_encoded_slash_that_makes_the_decoded_path_another_operation_is_refused(service, method, params, raw,
                                                                                    decoded):
    """botocore encodes a slash in a non-greedy label as %2F (get_function(FunctionName="x/policy") is
    GET /2015-03-31/functions/x%2Fpolicy). Split at its raw slashes, as AWS and moto route, the path is
    one operation; a server that decodes the path before it routes runs another. Neither is decided."""
    request = capture(service, method, **params)
    assert "%2F" in request["path"], request["path"]
    got = run(request)
    assert (got.service, got.operation, got.action) == (service, raw, "unknown"), got
    assert got.decoded_as == got.error and f"is {raw} by its raw path" in got.error, got.error
    assert f"the path is {decoded}: the request is ambiguous" in got.error, got.error
    sent_so = run(dict(request, path=request["path"].replace("%2F", "/")))
    assert (sent_so.operation, sent_so.decoded_as) == (decoded, None), sent_so


def _template_path(uri: str, value) -> str:
    path = uri.partition("?")[0]
    return classifier.TEMPLATE_LABEL_RE.sub(lambda m: value(m.group(1).rstrip("+"), m.group(1).endswith("+")), path)


def _scoped(entry) -> dict:
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{entry.signing_name}/aws4_request, "
                             "SignedHeaders=host, Signature=00"}


def test_over_the_models_no_encoded_slash_in_a_name_makes_one_operation_decided_and_another_run():
    """For every REST operation A and every other operation B of a service with A's method: where B's
    path, decoded, is A's path with slashes inside A's non-greedy labels, A's path with those slashes
    encoded is not decided (the pairs number in the thousands: Deadline's GetFarm and
    AssumeFleetRoleForRead, snow-device-management's DescribeTask and CancelTask, ...). A slash in a
    greedy label ({Key+}) is part of its value either way: encoded or not, the call is decided."""
    c = classifier.default_classifier()
    refused, undecided_pairs, greedy = set(), [], 0
    for entry in c.catalogue.by_name.values():
        if not {"rest-json", "rest-xml"} & set(entry.protocols):
            continue
        routing, host, headers = c.routing(entry.name), f"{entry.endpoint_prefix}.us-east-1.amazonaws.com", _scoped(entry)
        routes = [route for method in ("GET", "PUT", "POST", "DELETE", "HEAD", "PATCH")
                  for route in (routing.routes(method).plain + [r for rs in routing.routes(method).by_literal.values()
                                                                 for r in rs])]
        for a in routes:
            op = routing.operations[a.operation]["http"]
            method, query = op.get("method", "POST"), op.get("requestUri", "/").partition("?")[2]
            if any(a.greedy):  # a slash in a greedy label, encoded: the same operation, decided
                path = _template_path(op["requestUri"], lambda name, g: "a%2Fb" if g else "x")
                got = classify(method, host, path, query, headers, None)
                if got.operation == a.operation:
                    greedy += 1
                    assert got.decoded_as is None, (entry.name, path, got.error)
            # A's template with each non-greedy label free to span slashes
            loose = re.compile("^" + "".join(
                re.escape(part) if i % 2 == 0 else ("(.+)" if part.endswith("+") else "(.+?)")
                for i, part in enumerate(classifier.TEMPLATE_LABEL_RE.split(op.get("requestUri", "/").partition("?")[0])))
                + "$")
            for name, other in routing.operations.items():
                if name == a.operation or other["http"].get("method", "POST") != method:
                    continue
                found = loose.match(_template_path(other["http"].get("requestUri", "/"), lambda n, g: "x"))
                if not found or not any(not g and "/" in v for g, v in zip(a.greedy, found.groups())):
                    continue
                values = iter(v if g else v.replace("/", "%2F") for g, v in zip(a.greedy, found.groups()))
                path = _template_path(op["requestUri"], lambda n, g: next(values))
                both = "&".join(q for q in (query, other["http"].get("requestUri", "/").partition("?")[2]) if q)
                got = classify(method, host, path, both, headers, None)
                if got.operation != a.operation:
                    continue  # another operation outranks A at the raw path: not this pair's
                if got.decoded_as and got.action == "unknown":
                    refused.add((entry.name, a.operation, name))
                else:
                    undecided_pairs.append((entry.name, a.operation, name, path, got.action))
    assert undecided_pairs == [], undecided_pairs[:20]
    assert len(refused) > 2500 and greedy > 100, (len(refused), greedy)
    for pair in [("deadline", "GetFarm", "AssumeFleetRoleForRead"), ("lambda", "GetFunction", "GetPolicy"),
                 ("snow-device-management", "DescribeTask", "CancelTask"), ("s3", "ListObjects", "GetObject")]:
        assert pair in refused, pair


@pytest.mark.parametrize("host, path, operation", [
    ("bkt.s3.amazonaws.com", "/reports%2F2026%2Fq1.csv", "GetObject"),  # a key is {Key+}
    ("s3.amazonaws.com", "/bkt/a%2f..%2Fb%2F", "GetObject"),
    ("bkt.s3.amazonaws.com", "/a%2F%2Fb%2F", "GetObject"),
    ("lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/x%2Fy%2Fz", "GetFunction"),  # decoded: no operation
    ("lambda.us-east-1.amazonaws.com", "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012"
                                       "%3Afunction%3Ax/policy", "GetPolicy"),
])
def test_an_encoded_slash_that_names_nothing_else_is_decided_as_sent(host, path, operation):
    service = "s3" if "s3." in host else "lambda"
    headers = {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{service}/aws4_request, "
                                "SignedHeaders=host, Signature=00", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    got = classify("GET", host, path, "", headers, None)
    assert (got.operation, got.action, got.decoded_as, got.error) == (operation, f"{service}:{operation}", None, None)


@pytest.mark.parametrize("path, reading", [
    ("/2015-03-31/functions/x%2F", "GetFunction of another FunctionName"),  # x, once the last slash is dropped
    ("/2015-03-31/functions/x%2F%2Fpolicy", "GetPolicy"),  # // folded
])
def test_an_encoded_slash_read_with_the_path_folded_is_refused_too(path, reading):
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/lambda/aws4_request, "
                                "SignedHeaders=host, Signature=00"}
    got = classify("GET", "lambda.us-east-1.amazonaws.com", path, "", headers, None)
    assert got.action == "unknown" and f"the path is {reading}" in got.decoded_as, got


def test_a_form_post_is_read_as_the_get_it_stands_for_only_where_the_sdk_sends_one():
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, "
                                "SignedHeaders=host, Signature=00", "Content-Type": "application/x-www-form-urlencoded"}
    upload = classify("POST", "bkt.s3.amazonaws.com", "/", "", headers, b"key=planted.txt&acl=public-read-write&file=x")
    assert upload.action == "unknown" and upload.operation != "GetBucketAcl"  # S3 reads it as POST Object
    assert upload.error.startswith("POST / matches no operation of s3")


def test_a_function_url_or_an_api_is_invoked_whatever_its_path_says():
    """A Lambda function URL runs the function whatever the path (read as the Lambda API, a POST to
    /2015-03-31/functions/x/configuration was decided as GetFunctionConfiguration, a Read); an API
    Gateway API's paths are the customer's. Each is the invoke action IAM authorises it as."""
    def auth(service: str) -> dict:
        return {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{service}/aws4_request, "
                                 "SignedHeaders=host, Signature=00"}
    url = classify("POST", "abcdefgh1234.lambda-url.us-east-1.on.aws", "/2015-03-31/functions/any/configuration",
                   "", auth("lambda"), b"action=transfer&amount=1000000")
    assert (url.action, url.access_level, url.resources, url.region) == (
        "lambda:InvokeFunctionUrl", "Write", ["abcdefgh1234.lambda-url.us-east-1.on.aws"], "us-east-1")
    api = classify("GET", "abc123.execute-api.us-east-1.amazonaws.com", "/prod/pets/7", "", auth("execute-api"), None)
    assert (api.action, api.resources, api.params) == (
        "execute-api:Invoke", ["abc123/prod/GET/pets/7"], {"method": "GET", "path": "/prod/pets/7"})
    # the WebSocket management API under its stage, as botocore sends it
    sent = capture("apigatewaymanagementapi", "post_to_connection", ConnectionId="c-1", Data=b"hi")
    manage = run(dict(sent, host="abc123.execute-api.us-east-1.amazonaws.com", path="/prod" + sent["path"]))
    assert (manage.operation, manage.action) == ("PostToConnection", "execute-api:ManageConnections")
    elsewhere = classify("GET", "abcdefgh1234.lambda-url.eu-west-1.on.aws", "/", "", auth("lambda"), None)
    assert elsewhere.action == "unknown" and "names region 'us-east-1'" in elsewhere.error


def test_a_multi_region_access_point_host_is_virtual_hosted():
    """<alias>.mrap.accesspoint.s3-global: read path-style, GET of an object was a ListObjects of a
    bucket named after the key, past a mask on s3:GetObject."""
    headers = {"Authorization": "AWS4-ECDSA-P256-SHA256 Credential=AKID/20260101/s3/aws4_request, "
                                "SignedHeaders=host;x-amz-region-set, Signature=00",
               "X-Amz-Region-Set": "*", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    host = "mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com"
    got = classify("GET", host, "/creds.csv", "", headers, None)
    assert (got.operation, got.action, got.params) == (
        "GetObject", "s3:GetObject", {"Bucket": "mfzwi23gnjvgw.mrap", "Key": "creds.csv"})
    assert classify("DELETE", host, "/creds.csv", "", headers, None).action == "s3:DeleteObject"


def test_an_s3_write_that_sets_an_acl_tags_or_a_lock_asks_for_those_actions_too():
    """IAM authorises x-amz-acl and x-amz-grant-* on PutObject as s3:PutObjectAcl, x-amz-tagging as
    s3:PutObjectTagging, and so on: a write allowed as s3:PutObject must not make an object public."""
    put = run(capture("s3", "put_object", Bucket="b", Key="k", Body=b"x", ACL="public-read-write", Tagging="a=b",
                      ObjectLockLegalHoldStatus="ON"))
    assert put.action == "s3:PutObject"
    assert [(c.action, c.access_level) for c in put.implied] == [
        ("s3:PutObjectAcl", "Permissions management"), ("s3:PutObjectTagging", "Tagging"),
        ("s3:PutObjectLegalHold", "Write")]
    bucket = run(capture("s3", "create_bucket", Bucket="bkt", ACL="public-read", ObjectOwnership="ObjectWriter"))
    assert [c.action for c in bucket.implied] == ["s3:PutBucketAcl", "s3:PutBucketOwnershipControls"]
    assert run(capture("s3", "put_object", Bucket="b", Key="k", Body=b"x")).implied == ()


TABLE = {"KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}],
         "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}], "BillingMode": "PAY_PER_REQUEST"}


@pytest.mark.parametrize("service, method, params, action", [
    ("ec2", "run_instances", {"ImageId": "ami-1", "MinCount": 1, "MaxCount": 1, "TagSpecifications": [
        {"ResourceType": "instance", "Tags": [{"Key": "env", "Value": "prod"}]}]}, "ec2:CreateTags"),
    ("sqs", "create_queue", {"QueueName": "jobs", "tags": {"env": "prod"}}, "sqs:TagQueue"),
    ("dynamodb", "create_table", {"TableName": "orders", "Tags": [{"Key": "env", "Value": "prod"}], **TABLE},
     "dynamodb:TagResource"),
    ("iam", "create_role", {"RoleName": "r", "AssumeRolePolicyDocument": "{}", "Tags": [{"Key": "a", "Value": "b"}]},
     "iam:TagRole"),  # IAM's data has one tagging action per resource type: the role's
    ("iam", "create_user", {"UserName": "u", "Tags": [{"Key": "a", "Value": "b"}]}, "iam:TagUser"),
    ("kinesis", "create_stream", {"StreamName": "s", "Tags": {"a": "b"}}, "kinesis:AddTagsToStream"),
    ("logs", "create_log_group", {"logGroupName": "g", "tags": {"a": "b"}}, "logs:TagResource"),  # curated
    ("sts", "assume_role", {"RoleArn": "arn:aws:iam::123456789012:role/r", "RoleSessionName": "agent",
                            "Tags": [{"Key": "a", "Value": "b"}]}, "sts:TagSession"),
    ("backup", "create_backup_vault", {"BackupVaultName": "v", "BackupVaultTags": {"a": "b"}}, "backup:TagResource"),
    ("acm", "request_certificate", {"DomainName": "example.com", "Tags": [{"Key": "a", "Value": "b"}]},
     "acm:AddTagsToCertificate"),  # by the operation's noun: IAM's data gives RequestCertificate no resource
])
def test_tags_set_with_a_call_ask_for_the_services_tagging_action(service, method, params, action):
    """IAM authorises tags set with a create as the service's tagging action too (ec2:CreateTags with
    ec2:CreateAction, sqs:TagQueue, dynamodb:TagResource, ...): the call implies it, with the
    call's parameters and resources, at access level Tagging; untagged, it implies nothing."""
    got = run(capture(service, method, **params))
    assert got.error is None
    [tagging] = got.implied
    assert (tagging.action, tagging.access_level) == (action, "Tagging")
    assert (tagging.params, tagging.resources, tagging.operation) == (got.params, got.resources, got.operation)
    tag_member = next(m for m in params if "Tag" in m or "tag" in m)
    untagged = run(capture(service, method, **{k: v for k, v in params.items() if k != tag_member}))
    assert untagged.implied == () and untagged.action == got.action


def test_tags_nested_beside_a_configuration_ask_for_tagging_too():
    """CloudFront's CreateDistributionWithTags holds the tags beside the distribution's
    configuration, one level down: cloudfront:TagResource beside cloudfront:CreateDistribution."""
    config = {"CallerReference": "r", "Comment": "", "Enabled": True, "Origins": {"Quantity": 1, "Items": [
        {"Id": "o", "DomainName": "b.s3.amazonaws.com", "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
        "DefaultCacheBehavior": {"TargetOriginId": "o", "ViewerProtocolPolicy": "allow-all", "MinTTL": 0,
                                 "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                                 "TrustedSigners": {"Enabled": False, "Quantity": 0}}}
    got = run(capture("cloudfront", "create_distribution_with_tags", DistributionConfigWithTags={
        "DistributionConfig": config, "Tags": {"Items": [{"Key": "env", "Value": "prod"}]}}))
    assert got.action == "cloudfront:CreateDistribution"
    assert [(c.action, c.access_level) for c in got.implied] == [("cloudfront:TagResource", "Tagging")]
    untagged = run(capture("cloudfront", "create_distribution_with_tags", DistributionConfigWithTags={
        "DistributionConfig": config, "Tags": {}}))
    assert untagged.implied == ()


SPOT_FLEET = {"IamFleetRole": "arn:aws:iam::123456789012:role/fleet", "TargetCapacity": 1,
              "LaunchSpecifications": [{"ImageId": "ami-1", "InstanceType": "t3.micro"}]}
WORKSPACE = {"DirectoryId": "d-1234567890", "UserName": "alice", "BundleId": "wsb-12345678"}
VIF = {"virtualInterfaceName": "v", "vlan": 101, "asn": 65000}


@pytest.mark.parametrize("service, method, params, untagged, action", [
    ("s3", "create_bucket", {"Bucket": "bkt", "CreateBucketConfiguration": {"Tags": [{"Key": "env", "Value": "p"}]}},
     {"Bucket": "bkt", "CreateBucketConfiguration": {"Tags": []}}, "s3:TagResource"),  # curated: the API reference's
    ("ec2", "request_spot_fleet", {"SpotFleetRequestConfig": {**SPOT_FLEET, "TagSpecifications": [
        {"ResourceType": "spot-fleet-request", "Tags": [{"Key": "env", "Value": "p"}]}]}},
     {"SpotFleetRequestConfig": SPOT_FLEET}, "ec2:CreateTags"),
    ("pinpoint", "create_app", {"CreateApplicationRequest": {"Name": "a", "tags": {"env": "p"}}},
     {"CreateApplicationRequest": {"Name": "a"}}, "mobiletargeting:TagResource"),
    ("directconnect", "create_private_virtual_interface", {"connectionId": "dxcon-1", "newPrivateVirtualInterface": {
        **VIF, "tags": [{"key": "env", "value": "p"}]}}, {"connectionId": "dxcon-1", "newPrivateVirtualInterface": VIF},
     "directconnect:TagResource"),
    # in a list: each item creates a workspace, any one's tags ask for tagging
    ("workspaces", "create_workspaces",
     {"Workspaces": [WORKSPACE, {**WORKSPACE, "Tags": [{"Key": "env", "Value": "p"}]}]},
     {"Workspaces": [WORKSPACE, WORKSPACE]}, "workspaces:CreateTags"),
])
def test_tags_one_level_down_ask_for_tagging_too(service, method, params, untagged, action):
    """Tags in a structure that describes what the call creates (S3 CreateBucket's
    CreateBucketConfiguration.Tags, a Spot Fleet request's, Pinpoint's and Direct Connect's
    creates, each item of CreateWorkspaces' list) are read as tags, from the models: the call
    implies the service's tagging action, as IAM authorises it; without them, or empty, nothing."""
    got = run(capture(service, method, **params))
    assert got.error is None
    [tagging] = got.implied
    assert (tagging.action, tagging.access_level) == (action, "Tagging")
    assert (tagging.params, tagging.resources, tagging.operation) == (got.params, got.resources, got.operation)
    bare = run(capture(service, method, **untagged))
    assert bare.error is None and bare.implied == () and bare.action == got.action


@pytest.mark.parametrize("service, method, params", [
    ("glue", "list_crawlers", {"Tags": {"team": "data"}}),  # a read's tags filter what it lists
    ("ses", "send_email", {"Source": "a@example.com", "Destination": {"ToAddresses": ["b@example.com"]},
                           "Message": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}},
                           "Tags": [{"Name": "campaign", "Value": "x"}]}),  # a message's tags, not a resource's
    ("ec2", "create_tags", {"Resources": ["i-1"], "Tags": [{"Key": "a", "Value": "b"}]}),  # the tagging itself
    ("rds", "copy_db_snapshot", {"SourceDBSnapshotIdentifier": "a", "TargetDBSnapshotIdentifier": "b",
                                 "CopyTags": True}),  # a flag: the source's tags, which IAM authorises apart
    # one level down: tags a launch template gives what is launched from it later
    ("ec2", "create_launch_template", {"LaunchTemplateName": "t", "LaunchTemplateData": {"TagSpecifications": [
        {"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]}}),
    # one level down: the tags an insight selects findings by
    ("securityhub", "create_insight", {"Name": "i", "GroupByAttribute": "ResourceId", "Filters": {
        "ResourceTags": [{"Key": "a", "Value": "b", "Comparison": "EQUALS"}]}}),
    # Pinpoint ignores the tags of an update
    ("pinpoint", "update_segment", {"ApplicationId": "a", "SegmentId": "s",
                                    "WriteSegmentRequest": {"Name": "n", "tags": {"a": "b"}}}),
])
def test_calls_that_name_tags_but_set_none_imply_no_tagging(service, method, params):
    assert run(capture(service, method, **params)).implied == ()


def test_every_operation_that_sets_tags_implies_a_tagging_action_of_its_own_prefix():
    """From the models and IAM's data, not a list of operations: every operation (botocore's
    models, all services) whose input sets tags, among its own members or one level down in a
    structure (or a list of them), implies a tagging action IAM's data has, under the call's own
    prefix, except where IAM's data has none that adds tags for that prefix."""
    import botocore.loaders

    from addons.core import actions

    loader = botocore.loaders.create_loader()
    tagging = implied = 0
    without: set[str] = set()
    nested: dict[tuple[str, str], str] = {}
    for service in loader.list_available_services("service-2"):
        model = loader.load_service_model(service, "service-2")
        for operation in model["operations"]:
            members = classifier.tag_members(service, model, operation)
            if not members:
                continue
            own, level = actions.iam_action(service, operation)
            if "Tagging" in (level or "") or actions.TAGS_OPERATION_RE.match(operation):
                continue
            tagging += 1
            prefix = own.partition(":")[0]
            found = actions.tagging_action(service, operation)
            if found is None:
                without.add(prefix)
                continue
            implied += 1
            assert found[0].partition(":")[0] == prefix and found[1] == "Tagging", (service, operation, found)
            assert found[0].partition(":")[2] in {n for n, _ in actions.tagging_actions(prefix)}
            if all("." in m for m in members):
                nested[(service, operation)] = found[0]
    assert tagging > 1_750 and implied / tagging > 0.97, (tagging, implied)
    assert all(not actions.tagging_actions(p) for p in without), without
    # tags one level down only: S3's bucket configuration, a Spot Fleet request's, Pinpoint's and
    # Direct Connect's creates, CloudFront's ...WithTags, each item of a list of workspaces
    assert len(nested) > 35, sorted(nested)
    assert {key: nested.get(key) for key in [
        ("s3", "CreateBucket"), ("ec2", "RequestSpotFleet"), ("pinpoint", "CreateApp"),
        ("directconnect", "CreatePrivateVirtualInterface"), ("cloudfront", "CreateDistributionWithTags"),
        ("workspaces", "CreateWorkspaces")]} == {
        ("s3", "CreateBucket"): "s3:TagResource", ("ec2", "RequestSpotFleet"): "ec2:CreateTags",
        ("pinpoint", "CreateApp"): "mobiletargeting:TagResource",
        ("directconnect", "CreatePrivateVirtualInterface"): "directconnect:TagResource",
        ("cloudfront", "CreateDistributionWithTags"): "cloudfront:TagResource",
        ("workspaces", "CreateWorkspaces"): "workspaces:CreateTags"}


def test_every_member_named_as_tags_one_level_down_is_read_as_tags_or_listed_with_a_reason():
    """Each member one level down named as tags (in a structure, or a list of them, that is not a
    tag member itself) is read as tags, or is among the curated members that are no resource's
    tags, each with its reason (filters, tags put later on what a template launches, ...), or its
    operation sets none (Pinpoint's updates); and every curated entry still names a member of the
    models, so none outlives the member it was written for."""
    import botocore.loaders

    loader = botocore.loaders.create_loader()
    listed = {key for key in classifier.NOT_TAG_MEMBERS if "." in key[1]}
    used: set[tuple[str, str]] = set()
    read = 0
    for service in loader.list_available_services("service-2"):
        model = loader.load_service_model(service, "service-2")
        shapes = model["shapes"]
        for operation, op in model["operations"].items():
            members = classifier.tag_members(service, model, operation)
            top = shapes.get((op.get("input") or {}).get("shape"), {})
            for name, ref in top.get("members", {}).items():
                inner, path = shapes[ref["shape"]], name
                if inner["type"] == "list":
                    inner, path = shapes[inner["member"]["shape"]], f"{name}[]"
                if inner["type"] != "structure" or classifier.named_as_tags(name, ref, shapes, operation):
                    continue
                for member, member_ref in inner.get("members", {}).items():
                    found = f"{path}.{member}"
                    if not classifier.named_as_tags(member, member_ref, shapes, operation):
                        continue
                    if (service, found) in listed:
                        used.add((service, found))
                        assert found not in members
                    elif found in members:
                        read += 1
                    else:  # a read, or an operation whose tags are not set
                        assert classifier.READ_NAME_RE.match(operation) or any(
                            service == s and operation.startswith(p) for s, p in classifier.TAGS_NOT_SET_BY), (
                            service, operation, found)
    assert read > 40
    assert used == listed, listed - used
    assert all(classifier.NOT_TAG_MEMBERS[key] for key in listed)


def test_the_tagging_action_is_chosen_from_iams_data():
    """Where a prefix has several actions that add tags: the one the own action's dependent
    actions name (the Service Authorization Reference's column, where IAM's data carries it),
    the curated one, the one on the own action's resource (the narrowest), the one named for the
    operation's noun, else TagResource."""
    from addons.core.actions import choose_tagging_action

    candidates = (("TagResource", frozenset({"stream", "consumer"})), ("AddTagsToStream", frozenset({"stream"})),
                  ("TagDashboard", frozenset()))
    stream = {"resourceTypes": [{"name": "stream", "required": True, "dependentActions": []}]}
    assert choose_tagging_action("CreateStream", stream, candidates) == "AddTagsToStream"
    assert choose_tagging_action("CreateStream", dict(stream, dependentActions=["kinesis:TagResource"]),
                                 candidates) == "TagResource"
    assert choose_tagging_action("CreateStream", stream, candidates, curated="TagResource") == "TagResource"
    assert choose_tagging_action("CreateDashboard", {}, candidates) == "TagDashboard"
    assert choose_tagging_action("CreateWidget", {}, candidates) == "TagResource"
    assert choose_tagging_action("CreateWidget", {}, candidates[1:2]) == "AddTagsToStream"
    assert choose_tagging_action("CreateWidget", {}, ()) is None


def test_a_reencrypt_is_reencryptfrom_on_its_source_and_reencryptto_on_its_destination():
    """IAM authorises kms:ReEncrypt as kms:ReEncryptFrom on the key that decrypts and
    kms:ReEncryptTo on the key that encrypts: decided part by part, each on its own key."""
    got = run(capture("kms", "re_encrypt", CiphertextBlob=b"x", SourceKeyId="alias/src", DestinationKeyId="alias/dst"))
    assert (got.action, got.access_level, got.by_parts, got.resources) == (
        "kms:ReEncryptFrom", "Write", True, ["alias/src", "alias/dst"])
    assert [(p.action, p.access_level, p.resources) for p in got.implied] == [
        ("kms:ReEncryptFrom", "Write", ["alias/src"]), ("kms:ReEncryptTo", "Write", ["alias/dst"])]
    unnamed = run(capture("kms", "re_encrypt", CiphertextBlob=b"x", DestinationKeyId="alias/dst"))
    assert [(p.action, p.resources) for p in unnamed.implied] == [
        ("kms:ReEncryptFrom", []), ("kms:ReEncryptTo", ["alias/dst"])]  # the ciphertext names the source key


def test_a_payload_too_large_or_not_text_to_keep_is_bound_by_its_digest():
    """Lambda Invoke's payload over 64 KiB (or not UTF-8) is not kept as text; it is a parameter all
    the same, as its SHA-256 and size, so that two invocations with different payloads are two
    calls to policy, to an approval's binding and to its approver (they were one: an approval of
    one released the other)."""
    from addons.core.approvals import binding_hash

    def invoke(action: str, pad: int = 70_000):
        return run(capture("lambda", "invoke", FunctionName="victim",
                           Payload=json.dumps({"action": action, "pad": "x" * pad}).encode()))
    report, drop = invoke("report"), invoke("drop_all_tables")
    assert report.error is None and set(report.params["Payload"]) == {"sha256", "size"}
    assert report.params["Payload"]["size"] == len(json.dumps({"action": "report", "pad": "x" * 70_000}))
    assert binding_hash("agent", None, "lambda", "Invoke", None, report.params) != binding_hash(
        "agent", None, "lambda", "Invoke", None, drop.params)
    assert invoke("report", pad=10).params["Payload"] == json.dumps({"action": "report", "pad": "x" * 10})


def test_a_query_parameter_a_rest_operation_does_not_have_is_ambiguous():
    """moto dispatches on an Action in the query string before the path: GET .../functions/victim
    ?Action=DeleteFunction was decided as GetFunction (a Read) and deleted the function."""
    request = capture("lambda", "get_function", FunctionName="victim")
    got = run(dict(request, query="Action=DeleteFunction"))  # an error: the classify stage decides it as unknown
    assert got.operation == "GetFunction" and "Action: not a query-string parameter of this operation" in got.error
    assert run(request).error is None


def test_an_unknown_nested_query_member_is_an_error_as_a_top_level_one_is():
    """IamInstanceProfile.arn (not .Arn) was dropped silently: policy's roles never saw it, where a
    service lenient about case would read it."""
    headers = dict(signed_headers("ec2"), **{"Content-Type": "application/x-www-form-urlencoded"})
    body = b"Action=RunInstances&Version=2016-11-15&ImageId=ami-1&MinCount=1&MaxCount=1&IamInstanceProfile.%s=arn"
    wrong = classify("POST", "ec2.us-east-1.amazonaws.com", "/", "", headers, body % b"arn")
    assert "IamInstanceProfile.arn: not a member of IamInstanceProfileSpecification" in wrong.error
    assert classify("POST", "ec2.us-east-1.amazonaws.com", "/", "", headers, body % b"Arn").error is None


@pytest.mark.parametrize("ids", [b"InstanceId.1=i-a&InstanceId.3=i-b", b"InstanceId.0=i-a&InstanceId.1=i-b",
                                 b"InstanceId.01=i-a", b"InstanceId.1=i-a&InstanceId.x=i-b"])
def test_list_items_numbered_otherwise_than_1_2_3_are_ambiguous(ids):
    """A gap (moto stops at it: the service may act on fewer items than policy saw), a 0, a leading zero."""
    headers = dict(signed_headers("ec2"), **{"Content-Type": "application/x-www-form-urlencoded"})
    got = classify("POST", "ec2.us-east-1.amazonaws.com", "/", "", headers,
                   b"Action=TerminateInstances&Version=2016-11-15&" + ids)
    assert "InstanceIds: list or map items not numbered 1, 2, 3" in got.error, got.error


@pytest.mark.parametrize("params, member", [
    ({"ContentType": "text/plain"}, "ContentType"), ({"Metadata": {"a": "b"}}, "Metadata"),
    ({"ServerSideEncryption": "AES256"}, "ServerSideEncryption"), ({"ACL": "public-read"}, "ACL"),
])
def test_a_presigned_url_carries_its_signed_headers_in_the_query_string_as_those_members(params, member):
    """boto3's default (SigV2) presigned PUT writes the headers it signed (content-type, x-amz-acl,
    x-amz-meta-*) into the query string: they are the header members they stand for, not unknown
    query parameters; an ACL there asks for s3:PutObjectAcl as the header does."""
    s3 = client("s3")
    url = urlsplit(s3.generate_presigned_url("put_object", Params={"Bucket": "b", "Key": "k", **params}))
    got = classify("PUT", url.netloc, url.path, url.query, {}, None)
    assert got.error is None and got.params[member] == params[member]
    assert [c.action for c in got.implied] == (["s3:PutObjectAcl"] if member == "ACL" else [])
    differ = classify("PUT", url.netloc, url.path, url.query, {"Content-Type": "image/png"}, None)
    assert member != "ContentType" or "with different values" in differ.error


def test_an_s3_browser_form_upload_names_no_operation():
    """POST Object (``generate_presigned_post``) is in no botocore model: unknown, so no rule but
    one naming unknown calls lets it through (README: not supported)."""
    fields = client("s3").generate_presigned_post("b", "k")
    boundary = "agentgate-form"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields["fields"].items()).encode() + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nd\r\n--{boundary}--\r\n').encode()
    url = urlsplit(fields["url"])
    got = classify("POST", url.netloc, "/", "", {"content-type": f"multipart/form-data; boundary={boundary}"}, body)
    assert got.action == "unknown" and got.access_level is None
    assert got.error == ("POST / is S3's browser-form upload (POST Object, what boto3's generate_presigned_post "
                         "makes), which no botocore model has and agentgate cannot sign again: upload with "
                         "put_object, or a presigned PUT URL (generate_presigned_url('put_object'))")


@pytest.mark.parametrize("extra", ["X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abab",
                                   "AWSAccessKeyId=AKIAX&Signature=c2ln&SignatureVersion=2",
                                   "SecurityToken=token", "X-Amz-Security-Token=token"])
def test_a_form_body_with_a_signature_or_credential_is_not_decided(extra):
    """SigV2 body signing (not supported), or a second signature or token beside the header's, in a
    query-protocol body: the service would read it, so the call is not decided (unknown)."""
    body = f"Action=GetCallerIdentity&Version=2011-06-15&{extra}".encode()
    got = classify("POST", "sts.us-east-1.amazonaws.com", "/", "", {"content-type": "application/x-www-form-urlencoded"},
                   body)
    assert got.error and "a signature parameter in the form body" in got.error
    plain = classify("POST", "sts.us-east-1.amazonaws.com", "/", "",
                     {"content-type": "application/x-www-form-urlencoded"}, b"Action=GetCallerIdentity&Version=2011-06-15")
    assert plain.error is None


@pytest.mark.parametrize("value", ["z\x00", "keep/n\x00", "bad\udcff"])
def test_a_parameter_with_a_nul_or_bytes_that_are_not_utf8_is_not_decided(value):
    """The store keeps such text as U+FFFD, so two values would be recorded, and bound to an
    approval, as one (an approval for "z\\ufffd" released a delete of "z\\x00"): not decided."""
    got = run(capture("dynamodb", "delete_item", TableName="orders", Key={"id": {"S": "x"}}) | {
        "body": json.dumps({"TableName": "orders", "Key": {"id": {"S": value}}}).encode("utf-8", "surrogatepass")})
    assert got.error and "holds a NUL or bytes that are not UTF-8" in got.error
    assert run(capture("dynamodb", "delete_item", TableName="orders", Key={"id": {"S": "z\ufffd"}})).error is None
    # the same bytes percent-encoded in a path, a query string or a form
    for path, query in (("/appr/x%ff", ""), ("/", "list-type=2&prefix=%ff")):
        got = classify("GET", "b.s3.amazonaws.com", path, query, {}, None)
        assert got.error and "not UTF-8" in got.error, (path, query)
    form = classify("POST", "sqs.us-east-1.amazonaws.com", "/", "", {"content-type": "application/x-www-form-urlencoded"},
                    b"Action=SendMessage&Version=2012-11-05&QueueUrl=https%3A%2F%2Fsqs.us-east-1.amazonaws.com"
                    b"%2F123456789012%2Fq&MessageBody=a%ffb")
    assert form.error and "not UTF-8" in form.error


def test_an_s3_object_whose_bytes_read_as_a_form_name_an_action_is_data_not_a_second_operation():
    """A body that names an Action when read as a form is refused where it is a document of the
    call's parameters (moto would dispatch on it); an S3 object's bytes are the object, whatever
    they say, and S3 (moto's too) never reads them as a form."""
    put = capture("s3", "put_object", Bucket="b", Key="form.txt", Body=b"Action=DeleteBucket&Bucket=b",
                  config={"request_checksum_calculation": "when_required"})
    got = run(put)
    assert got.operation == "PutObject" and got.error is None
    zone = capture("route53", "update_hosted_zone_comment", Id="Z1", Comment="Action=DeleteHostedZone")
    assert run(zone).error is None  # escaped inside the XML as written by an SDK: no form key of its own
    zone = dict(zone, body=zone["body"].replace(b"<Comment>", b"<Comment>&amp;x=1&Action=DeleteHostedZone&"))
    assert "read as a form, the body names an Action" in run(zone).error


def test_a_payload_naming_an_action_is_refused_only_where_upstream_would_read_the_body_as_a_form():
    """moto reads a body as a form only under a URL with no query: a Lambda payload that holds a
    queue URL with "&Action=SendMessage" in it goes through with a real query (a Qualifier), and is
    refused without one (or with only the agent's signature parameters, which re-signing drops)."""
    payload = json.dumps({"callback": "https://sqs.us-east-1.amazonaws.com/123456789012/q?Version=2012-11-05"
                                      "&Action=SendMessage"}).encode()
    with_query = capture("lambda", "invoke", FunctionName="f", Payload=payload, Qualifier="prod")
    assert with_query["query"] == "Qualifier=prod" and run(with_query).error is None
    bare = capture("lambda", "invoke", FunctionName="f", Payload=payload)
    assert "read as a form, the body names an Action" in run(bare).error
    assert "read as a form, the body names an Action" in run(dict(bare, query="AWSAccessKeyId=x")).error


@pytest.mark.parametrize("host,authorization", [
    ("walk-bucket.s3.amazonaws.com", None),  # unsigned (transport A carries who asked)
    ("walk-bucket.s3.amazonaws.com", "AWS agentgate:c2lnbmF0dXJl"),  # SigV2
    ("s3.amazonaws.com", None),
    ("walk-bucket.s3.eu-central-1.amazonaws.com", None),
    ("sts.amazonaws.com", None),
])
def test_a_call_is_decided_for_the_region_it_is_signed_for_and_reaches(host, authorization):
    """A request with no region in its host or a credential scope (SigV2, unsigned) is re-signed
    for its partition's default region; it was decided for no region, so a rule on `region` (a
    deny in us-east-1) did not hold for it."""
    from addons.core import sigv4

    headers = {"host": host, **({"authorization": authorization} if authorization else {})}
    path = "/region/a.bin" if host.startswith("walk-bucket") else "/"
    call = classify("PUT" if host.startswith("walk-bucket") else "GET", host, path, "", headers,
                    b"x" if host.startswith("walk-bucket") else None)
    auth = sigv4.parse_auth("PUT", path, "", list(headers.items()))
    assert call.region == sigv4.region_for(auth, host) and call.region is not None, (call.region, call.error)


def test_a_select_ended_by_a_semicolon_is_read_and_nothing_may_follow_it():
    assert classifier.partiql_statement("SELECT * FROM orders;") == ("SELECT", "orders")
    assert classifier.partiql_statement('SELECT * FROM "orders" WHERE id = 1;') == ("SELECT", "orders")
    for text in ("SELECT * FROM orders; DELETE FROM audit", "SELECT * FROM orders;;"):
        with pytest.raises(classifier.NotAuthorisable):
            classifier.partiql_statement(text)
