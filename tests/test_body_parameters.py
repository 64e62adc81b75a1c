"""Parameters in a request body are read before a call is decided, whatever the agent declares.

A declared payload hash (``X-Amz-Content-SHA256``) lets a body stream past the stages, which is
right for data (an S3 object) and wrong for parameters: a call decided without its body would be
decided, bound to an approval and recorded without them. boto3 declares it on every S3 call (so
S3's XML bodies: DeleteObjects' keys, a bucket policy), and any agent can add it to a JSON call.
Through a real gateway, against moto with authentication on."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.gateway import Gateway

WORKLOAD_ROLE = "arn:aws:iam::123456789012:role/agent-role"  # moto has it: a function may be created with it

POLICY = f"""\
version: 1
default: deny
roles:
  - principal: {{groups: [data-agents]}}
    role_arn: arn:aws:iam::123456789012:role/agent-role
rules:
  - id: data-plane
    action: ["s3:*", "dynamodb:*", "lambda:*", "sts:GetCallerIdentity"]
    decision: allow
  - id: guarded-table
    action: dynamodb:PutItem
    when: "params.TableName == 'guarded'"
    decision: deny
    reason: nothing is written to the guarded table
  - id: only-the-workload-role
    action: lambda:CreateFunction
    when: "params.Role != '{WORKLOAD_ROLE}'"
    decision: deny
    reason: functions run as the workload role
  - id: no-public-bucket-policies
    action: s3:PutBucketPolicy
    when: "contains(params.Policy, '\\"*\\"')"
    decision: deny
    reason: buckets are never public
  - id: no-reading-conf
    action: s3:GetObject
    when: "length(resource[?starts_with(@, 'body-parameters/conf/')]) > `0`"
    decision: deny
    reason: configuration files are not read by agents
  - id: tables-stay
    action: dynamodb:DeleteTable
    decision: deny
    reason: tables are not deleted by agents
  - id: own-account-only
    action: dynamodb:*
    when: "account != `null` && account != '123456789012'"
    decision: deny
    reason: agents stay in their own account
  - id: deleting-needs-sre
    action: s3:DeleteObject
    decision: approve
    approvers: {{groups: [sre]}}
    reason: deleting cannot be undone
"""

BUCKET = "body-parameters"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    with Gateway(tmp_path_factory.mktemp("body-parameters"), issuer=issuer.issuer, upstream=moto.url, policy=POLICY,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 settings={"approval_hold": 0.5}) as g:
        yield g


def client(gw: Gateway, token: str, service: str, declare_hash: bool = False):
    c = boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                     verify=str(gw.ca_file),
                     config=botocore.config.Config(proxies={"https": gw.proxy_url(token)},
                                                   retries={"total_max_attempts": 1}))
    if declare_hash:
        def declare(request, **_):
            body = request.body or b""
            body = body.encode() if isinstance(body, str) else body
            request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
        c.meta.events.register("before-sign", declare)
    return c


def refused(call) -> tuple[str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def record(gw: Gateway, principal: str, action: str) -> dict:
    """The latest record of ``principal``'s ``action``, its parameters and resources read from their
    JSON columns."""
    found = [r for r in gw.records() if r["principal"] == principal and r["action"] == action][-1]
    return {k: json.loads(v) if k in ("params", "resources") and isinstance(v, str) else v for k, v in found.items()}


def function_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return out.getvalue()


@pytest.mark.parametrize("declare_hash", [False, True], ids=["as-sent", "payload-hash-declared"])
def test_a_json_call_is_decided_on_its_body_whatever_hash_it_declares(gw, issuer, declare_hash):
    who = f"json-agent-{declare_hash}"
    token = issuer.mint(who)
    ddb = client(gw, token, "dynamodb", declare_hash)
    code, message = refused(lambda: ddb.put_item(TableName="guarded", Item={"k": {"S": "v"}}))
    assert code == "AccessDenied" and "guarded-table" in message
    assert record(gw, who, "dynamodb:PutItem")["params"]["TableName"] == "guarded"

    lam = client(gw, token, "lambda", declare_hash)
    code, message = refused(lambda: lam.create_function(
        FunctionName=f"f-{declare_hash}", Runtime="python3.12", Handler="handler.handler",
        Role="arn:aws:iam::123456789012:role/admin", Code={"ZipFile": function_zip()}))
    assert code == "AccessDenied" and "only-the-workload-role" in message
    rec = record(gw, who, "lambda:CreateFunction")
    assert rec["params"]["Role"] == "arn:aws:iam::123456789012:role/admin" and rec["outcome"] == "refused"
    # the call the rules allow goes through with its body read, recorded with its parameters
    created = lam.create_function(FunctionName=f"ok-{declare_hash}", Runtime="python3.12", Handler="handler.handler",
                                  Role=WORKLOAD_ROLE, Code={"ZipFile": function_zip()})
    assert created["Role"] == WORKLOAD_ROLE
    rec = record(gw, who, "lambda:CreateFunction")
    assert rec["params"]["Role"] == WORKLOAD_ROLE and rec["outcome"] == "forwarded" and rec["status"] == 201


def test_s3_xml_bodies_are_decided_on_their_parameters(gw, issuer):
    token = issuer.mint("s3-agent")
    s3 = client(gw, token, "s3")  # boto3 declares the payload hash of every S3 call
    s3.create_bucket(Bucket=BUCKET)
    public = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]})
    code, message = refused(lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy=public))
    assert code == "AccessDenied" and "no-public-bucket-policies" in message
    assert record(gw, "s3-agent", "s3:PutBucketPolicy")["params"]["Policy"] == public
    private = public.replace('"*"', '{"AWS": "arn:aws:iam::123456789012:role/reader"}')
    s3.put_bucket_policy(Bucket=BUCKET, Policy=private)
    assert json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"]) == json.loads(private)
    # an upload is data: it still streams past the stages, its digest recorded
    s3.put_object(Bucket=BUCKET, Key="kept", Body=b"x" * 100_000)
    upload = record(gw, "s3-agent", "s3:PutObject")
    assert upload["outcome"] == "forwarded" and "body streamed" in (upload["body_note"] or "")


def test_an_approval_to_delete_some_objects_releases_no_other(gw, issuer):
    token = issuer.mint("deleting-agent")
    s3 = client(gw, token, "s3")
    s3.create_bucket(Bucket=BUCKET)
    for key in ("old-log", "precious-1", "precious-2"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"data")

    def delete(*keys):
        return s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})

    code, message = refused(lambda: delete("old-log"))
    assert code == "ApprovalPending"
    approval_id = record(gw, "deleting-agent", "s3:DeleteObject")["approval_id"]
    shown = json.loads(gw.cli("approvals", "show", approval_id, "--json").stdout)
    assert shown["params"]["Delete"]["Objects"] == [{"Key": "old-log"}]  # what the approver is asked
    approver = gw.home / "sre.jwt"
    approver.write_text(issuer.mint("sre-sam", groups=["sre"]))
    gw.cli("approvals", "approve", approval_id, "--token-file", str(approver))

    code, _ = refused(lambda: delete("precious-1", "precious-2"))
    assert code == "ApprovalPending", "an approval to delete old-log released deleting other keys"
    assert record(gw, "deleting-agent", "s3:DeleteObject")["approval_id"] != approval_id
    assert {"old-log", "precious-1", "precious-2"} <= _keys(s3)
    assert delete("old-log")["Deleted"] == [{"Key": "old-log"}]
    assert "old-log" not in _keys(s3) and {"precious-1", "precious-2"} <= _keys(s3)


def _keys(s3) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_a_copy_is_decided_as_the_read_of_its_source_too(gw, issuer):
    """IAM authorises CopyObject as s3:PutObject on the target and s3:GetObject on the source: a
    rule that denies reading the source denies copying it somewhere readable."""
    token = issuer.mint("copying-agent")
    s3 = client(gw, token, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="conf/app.env", Body=b"DB_PASSWORD=hunter2")
    assert refused(lambda: s3.get_object(Bucket=BUCKET, Key="conf/app.env"))[0] == "AccessDenied"
    code, message = refused(lambda: s3.copy_object(Bucket=BUCKET, Key="pub/app.env",
                                                   CopySource={"Bucket": BUCKET, "Key": "conf/app.env"}))
    assert code == "AccessDenied" and "no-reading-conf" in message and f"{BUCKET}/conf/app.env" in message
    rec = record(gw, "copying-agent", "s3:PutObject")
    assert rec["rule"] == "no-reading-conf" and rec["outcome"] == "refused"
    assert rec["resources"] == [f"{BUCKET}/pub/app.env", f"{BUCKET}/conf/app.env"]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="pub/parts")["UploadId"]
    code, _ = refused(lambda: s3.upload_part_copy(Bucket=BUCKET, Key="pub/parts", UploadId=upload, PartNumber=1,
                                                  CopySource=f"{BUCKET}/conf/app.env"))
    assert code == "AccessDenied"
    assert "pub/app.env" not in _keys(s3)
    # a source the rules let the agent read is copied as before
    s3.put_object(Bucket=BUCKET, Key="docs/readme", Body=b"hello")
    s3.copy_object(Bucket=BUCKET, Key="pub/readme", CopySource=f"{BUCKET}/docs/readme")
    assert s3.get_object(Bucket=BUCKET, Key="pub/readme")["Body"].read() == b"hello"


def test_a_query_call_that_declares_its_payload_hash_is_read_for_its_action(gw, issuer):
    """Hand-rolled signers send X-Amz-Content-SHA256 on every call: an STS form POST with one named
    no operation until its body was read (the Action is in the body), and was refused."""
    token = issuer.mint("hashing-agent")
    sts = client(gw, token, "sts", declare_hash=True)
    assert sts.get_caller_identity()["Arn"].endswith("/hashing-agent")
    assert record(gw, "hashing-agent", "sts:GetCallerIdentity")["outcome"] == "forwarded"


def test_a_body_its_operation_has_no_member_for_is_read_not_streamed_past_the_stages(gw, issuer):
    """DescribeLimits takes no input; under a declared payload hash its body streamed upstream
    unread, and moto read an Action from it: DeleteTable ran under a DescribeLimits decision. Only
    data (a streaming payload) streams now; this body is read, and refused for what it says."""
    token = issuer.mint("limits-agent")
    ddb = client(gw, token, "dynamodb")
    table = "victim-of-a-streamed-body"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    sneaky = client(gw, token, "dynamodb")

    def smuggle(request, **_):
        request.data = json.dumps({"TableName": table, "x": "&Action=DeleteTable&"}).encode()
        request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(request.data).hexdigest()
    sneaky.meta.events.register("before-sign.dynamodb.DescribeLimits", smuggle)
    code, message = refused(lambda: sneaky.describe_limits())
    assert code == "AccessDenied" and "could not be classified" in message, message
    assert table in ddb.list_tables()["TableNames"]  # nothing ran
    rec = record(gw, "limits-agent", "unknown")
    assert rec["operation"] == "DescribeLimits" and rec["outcome"] == "refused"
    assert "body streamed" not in (rec["body_note"] or "")
    # a body that is data still streams: an object upload (boto3 declares STREAMING-UNSIGNED-PAYLOAD-TRAILER)
    s3 = client(gw, token, "s3")
    s3.put_object(Bucket=BUCKET, Key="streamed/data.bin", Body=b"x" * 100_000)
    assert "body streamed" in (record(gw, "limits-agent", "s3:PutObject")["body_note"] or "")


def test_a_transaction_that_cannot_be_read_one_way_is_decided_as_a_whole(gw, issuer):
    """A transaction is decided item by item; one whose body cannot be read one way (here an
    Action inside an attribute value, which moto reads as the operation) is `unknown` as a whole:
    decided by its items it was allowed, and moto deleted the table a rule keeps."""
    token = issuer.mint("tx-reader")
    ddb = client(gw, token, "dynamodb")
    for table in ("tx-kept", "tx-scratch"):
        ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
    sneaky = client(gw, token, "dynamodb")

    def smuggle(request, **_):
        request.data = json.dumps({"TableName": "tx-kept", "TransactItems": [{"ConditionCheck": {
            "TableName": "tx-scratch", "Key": {"id": {"S": "1"}}, "ConditionExpression": "attribute_exists(id)",
            "ExpressionAttributeValues": {":x": {"S": "&Action=DeleteTable&"}}}}]}).encode()
    sneaky.meta.events.register("before-sign.dynamodb.TransactWriteItems", smuggle)
    code, message = refused(lambda: sneaky.transact_write_items(TransactItems=[{"ConditionCheck": {
        "TableName": "tx-scratch", "Key": {"id": {"S": "1"}}, "ConditionExpression": "attribute_exists(id)"}}]))
    assert code == "AccessDenied" and "could not be classified" in message, message
    assert "tx-kept" in ddb.list_tables()["TableNames"]  # nothing ran
    rec = record(gw, "tx-reader", "unknown")
    assert (rec["operation"], rec["decision"], rec["outcome"]) == ("TransactWriteItems", "deny", "refused")


def test_the_account_a_policy_reads_is_the_one_the_call_names_not_a_header(gw, issuer):
    """DynamoDB ignores an x-amz-account-id header; the gateway read the call's account from it
    ahead of the table's ARN, so a header naming the agent's own account let a call on another
    account's table through a rule keeping agents in their own."""
    token = issuer.mint("account-agent")
    ddb = client(gw, token, "dynamodb")
    other = "arn:aws:dynamodb:us-east-1:999999999999:table/ledger"

    def own_account(request, **_):
        request.headers["x-amz-account-id"] = "123456789012"
    ddb.meta.events.register("before-sign.dynamodb.PutItem", own_account)
    code, message = refused(lambda: ddb.put_item(TableName=other, Item={"id": {"S": "1"}}))
    assert code == "AccessDenied" and "own-account-only" in message, message
    rec = [r for r in gw.records() if r["principal"] == "account-agent"][-1]
    assert (rec["account"], rec["decision"], rec["rule"]) == ("999999999999", "deny", "own-account-only")


def test_no_form_of_the_agents_token_reaches_the_store(gw, issuer):
    """An S3 POST form (boto3's generate_presigned_post, with the token as the session token) holds
    the token in its base64 policy: the call is refused (a POST form is no call the gateway
    re-signs) and its record keeps no body holding the token, in any encoding."""
    from tests.test_fuzz_gateway import _request, exchange

    token = issuer.mint("posting-agent")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                      aws_session_token=token)
    post = s3.generate_presigned_post(BUCKET, "planted.txt")
    assert token not in post["fields"]["policy"]  # base64: the raw token is not in it
    boundary = "agentgate-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in post["fields"].items()]
    body = ("".join(parts) + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
            f"agent-wrote-this\r\n--{boundary}--\r\n").encode()
    host = urlsplit(post["url"]).netloc
    status, _, _ = exchange(gw, token, host, _request("POST", host, b"/", {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}, body))
    assert status == 403
    rec = [r for r in gw.records() if r["principal"] == "posting-agent"][-1]
    stored = json.dumps(rec, default=str)
    from addons.recorder import token_forms
    assert not any(f in stored for f in token_forms(token)), "the agent's token is in its record"
    assert rec["request_body"] is None and "could not be classified" in rec["body_note"]
    # a call that is classified, whose body holds the token in a form masking does not read
    # (base64, as an attribute's value): neither body nor parameters keep it
    import base64

    ddb = client(gw, token, "dynamodb")
    ddb.put_item(TableName="tokens-in-items", Item={"k": {"S": base64.b64encode(token.encode()).decode()}}) \
        if "tokens-in-items" in ddb.list_tables()["TableNames"] else None
    with pytest.raises(botocore.exceptions.ClientError):
        ddb.put_item(TableName="no-such-table", Item={"k": {"S": base64.b64encode(token.encode()).decode()}})
    rec = [r for r in gw.records() if r["principal"] == "posting-agent" and r["action"] == "dynamodb:PutItem"][-1]
    stored = json.dumps(rec, default=str)
    assert not any(f in stored for f in token_forms(token)), "the agent's token is in its record"
    assert rec["request_body"] is None and "held the agent's token" in rec["body_note"]
