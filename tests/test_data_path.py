"""The data path end to end: agents that follow only `agentgate env`, boto3 and the AWS CLI as
subprocesses, through a real gateway, re-signed with credentials moto issued through STS."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.conftest import run_agent


def agent(gateway, token_file, tmp_path, **kw):
    return gateway.agent_env(token_file(**kw) if callable(token_file) else token_file, tmp_path / "agent-home")


def check(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, f"agent failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_env_prints_both_transports_and_the_ca(gateway, token_file):
    f = token_file()
    out = gateway.cli("env", "--token-file", str(f)).stdout
    token = f.read_text().strip()
    assert f"export HTTPS_PROXY=http://agent:{token}@127.0.0.1:{gateway.port}\n" in out
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert f"export {var}={gateway.ca_file}" in out
    assert f"aws-credentials --token-file {f}" in out
    assert "credential_process" in out


WHO_AM_I = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()['Arn']))"


def test_without_the_token_in_the_proxy_url_a_refreshed_token_file_is_all_it_takes(gateway, token_file, tmp_path):
    """--no-proxy-token: HTTPS_PROXY names the gateway only, and the SDK presents the token it reads
    from the file (transport B), so a token replaced in the file is the one the next call carries;
    with the token in the proxy URL (transport A) the environment keeps the old one."""
    f = token_file("refresh-1")
    env = gateway.agent_env(f, tmp_path / "b", args="--no-proxy-token")
    assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{gateway.port}"
    assert check(run_agent(env, WHO_AM_I)).endswith("/refresh-1")
    pinned = gateway.agent_env(f, tmp_path / "a")
    fresh = token_file("refresh-2").read_text()
    f.write_text(fresh)
    assert check(run_agent(env, WHO_AM_I)).endswith("/refresh-2")
    p = run_agent(pinned, WHO_AM_I)  # transport A still carries refresh-1's token, the file refresh-2's
    assert p.returncode != 0 and fresh not in pinned["HTTPS_PROXY"]
    assert "name different subjects ('refresh-1' and 'refresh-2')" in p.stderr


def test_aws_credentials_prints_the_token_as_session_token(gateway, token_file, issuer, tmp_path):
    f = token_file()
    out = json.loads(gateway.cli("aws-credentials", "--token-file", str(f)).stdout)
    assert out["Version"] == 1 and out["SessionToken"] == f.read_text().strip()
    assert out["Expiration"].endswith("Z")
    expired = tmp_path / "old.jwt"
    expired.write_text(issuer.mint("agent-1", expires_in=-60))
    p = gateway.cli("aws-credentials", "--token-file", str(expired), check=False)
    assert p.returncode != 0 and "expired" in p.stderr and "Traceback" not in p.stderr
    p = gateway.cli("aws-credentials", "--token-file", str(tmp_path / "missing"), check=False)
    assert p.returncode != 0 and "cannot read the token file" in p.stderr


BOTO3_EACH_PROTOCOL = textwrap.dedent("""
    import json, boto3
    out = {}
    sts = boto3.client("sts")
    out["arn"] = sts.get_caller_identity()["Arn"]                           # query
    ddb = boto3.client("dynamodb")                                          # json
    ddb.create_table(TableName="t1", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName="t1", Item={"k": {"S": "a"}, "v": {"S": "hello"}})
    out["item"] = ddb.get_item(TableName="t1", Key={"k": {"S": "a"}})["Item"]["v"]["S"]
    s3 = boto3.client("s3")                                                 # rest-xml
    s3.create_bucket(Bucket="proto-bucket")
    s3.put_object(Bucket="proto-bucket", Key="k.txt", Body=b"x" * 1024)
    out["s3"] = len(s3.get_object(Bucket="proto-bucket", Key="k.txt")["Body"].read())
    out["lambda"] = boto3.client("lambda").list_functions()["Functions"]   # rest-json
    out["ec2"] = len(boto3.client("ec2").describe_regions()["Regions"]) > 0  # ec2
    sqs = boto3.client("sqs")
    out["queue"] = sqs.create_queue(QueueName="q1")["QueueUrl"].endswith("/q1")
    print(json.dumps(out))
""")


def test_unmodified_boto3_works_for_every_protocol(gateway, token_file, tmp_path):
    env = agent(gateway, token_file, tmp_path, sub="proto-agent")
    out = check(run_agent(env, BOTO3_EACH_PROTOCOL))
    assert out["arn"] == "arn:aws:sts::123456789012:assumed-role/agent-role/proto-agent"
    assert out["item"] == "hello" and out["s3"] == 1024 and isinstance(out["lambda"], list) and out["ec2"] and out["queue"]
    records = [r for r in gateway.records() if r["principal"] == "proto-agent"]
    actions = {r["action"] for r in records}
    assert {"sts:GetCallerIdentity", "dynamodb:PutItem", "s3:PutObject", "s3:GetObject",
            "lambda:ListFunctions", "ec2:DescribeRegions", "sqs:CreateQueue"} <= actions
    assert all(r["decision"] == "allow" and r["status"] == 200 for r in records if r["action"] in actions)


def test_aws_cli_works_with_only_the_printed_environment(gateway, token_file, tmp_path, aws_cli):
    env = agent(gateway, token_file, tmp_path, sub="cli-agent")
    def aws(*args):
        p = subprocess.run([aws_cli, *args, "--output", "json"], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if p.stdout.strip() else {}
    ident = aws("sts", "get-caller-identity")
    assert ident["Arn"] == "arn:aws:sts::123456789012:assumed-role/agent-role/cli-agent"
    aws("s3api", "create-bucket", "--bucket", "cli-bucket")
    assert "Buckets" in aws("s3api", "list-buckets")
    assert "TableNames" in aws("dynamodb", "list-tables")
    assert aws("ec2", "describe-regions")["Regions"]
    assert isinstance(aws("lambda", "list-functions")["Functions"], list)  # other tests may have made some


def test_curl_works_with_only_the_printed_environment(gateway, token_file, tmp_path):
    """curl finds the gateway's CA through CURL_CA_BUNDLE (Debian's curl reads no SSL_CERT_FILE) and
    its token in the proxy URL; the gateway signs the unsigned request."""
    env = agent(gateway, token_file, tmp_path, sub="curl-agent")
    p = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", "Accept: application/json",
                        "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "assumed-role/agent-role/curl-agent" in p.stdout


def test_a_call_that_is_not_re_signed_fails(moto, issuer):
    """moto has authentication on: the agent's own (fake) keys, or its token as a session token,
    are refused when sent straight to it. Only the gateway's re-signing makes calls pass."""
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                      aws_access_key_id="agentgate", aws_secret_access_key="agentgate-not-a-secret",
                      aws_session_token=issuer.mint("agent-1"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_buckets()
    assert e.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "InvalidClientTokenId", "AccessDenied")


def test_iam_is_denied_by_policy_with_an_aws_shaped_error(gateway, token_file, tmp_path):
    env = agent(gateway, token_file, tmp_path)
    out = check(run_agent(env, textwrap.dedent("""
        import json, boto3, botocore.exceptions
        try:
            boto3.client("iam").list_users()
            print(json.dumps({"ok": True}))
        except botocore.exceptions.ClientError as e:
            print(json.dumps(e.response["Error"]))
    """)))
    assert out["Code"] == "AccessDenied"
    assert "no-iam-for-agents" in out["Message"] and "agents do not manage IAM" in out["Message"]


def test_an_http2_agent_is_re_signed_decided_and_recorded_like_any_other(gateway, issuer):
    """The gateway offers HTTP/2 to agents (Go and Rust SDKs, curl take it) and speaks HTTP/1.1
    upstream: an agent's calls over HTTP/2 are classified, re-signed with moto's credentials (auth
    is on), answered, refused by policy, and recorded, as over HTTP/1.1."""
    from tests.support.raw import h2_request

    sub = "agent-h2-data-path"
    token = issuer.mint(sub)
    signed = "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/{}/aws4_request, " \
             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    status, _, answer = h2_request(gateway, token, "sts.amazonaws.com", "POST", b"/", {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Amz-Date": "20260101T000000Z",
        "Authorization": signed.format("sts"), "Content-Length": str(len(body))}, body)
    assert status == 200 and b":assumed-role/agent-role/" in answer, answer[:400]
    status, _, answer = h2_request(gateway, token, "dynamodb.us-east-1.amazonaws.com", "POST", b"/", {
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "X-Amz-Date": "20260101T000000Z", "Authorization": signed.format("dynamodb"), "Content-Length": "2"}, b"{}")
    assert status == 200 and "TableNames" in json.loads(answer), answer[:400]
    body = b"Action=ListUsers&Version=2010-05-08"
    status, _, answer = h2_request(gateway, token, "iam.amazonaws.com", "POST", b"/", {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Amz-Date": "20260101T000000Z",
        "Authorization": signed.format("iam"), "Content-Length": str(len(body))}, body)
    assert status == 403 and b"<Code>AccessDenied</Code>" in answer and b"no-iam-for-agents" in answer, answer[:400]
    mine = [r for r in gateway.records() if r["principal"] == sub]
    assert [(r["action"], r["outcome"], r["status"]) for r in mine] == [
        ("sts:GetCallerIdentity", "forwarded", 200), ("dynamodb:ListTables", "forwarded", 200),
        ("iam:ListUsers", "refused", 403)]


def test_an_http2_agent_uploads_and_downloads_an_object_streamed(gateway, issuer):
    """S3 over HTTP/2: a 3 MiB PutObject with a declared payload hash (streamed through, not
    buffered) reaches moto intact, and GetObject brings the same bytes back."""
    import hashlib
    import os

    from tests.support.raw import h2_request

    token = issuer.mint("agent-h2-s3")
    signed = "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/s3/aws4_request, " \
             "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64
    empty = hashlib.sha256(b"").hexdigest()
    host = "h2-bucket.s3.amazonaws.com"
    status, _, answer = h2_request(gateway, token, host, "PUT", b"/", {
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": empty, "Authorization": signed}, b"")
    assert status == 200, answer[:400]
    data = os.urandom(3 << 20)
    status, _, answer = h2_request(gateway, token, host, "PUT", b"/blob", {
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": hashlib.sha256(data).hexdigest(),
        "Content-Length": str(len(data)), "Authorization": signed}, data)
    assert status == 200, answer[:400]
    status, headers, answer = h2_request(gateway, token, host, "GET", b"/blob", {
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": empty, "Authorization": signed})
    assert status == 200 and len(answer) == len(data) and answer == data
    [put] = [r for r in gateway.records() if r["principal"] == "agent-h2-s3" and r["operation"] == "PutObject"]
    assert put["outcome"] == "forwarded" and put["request_body_sha256"] == hashlib.sha256(data).hexdigest(), put
    assert put["request_body_size"] == len(data) and "body streamed, not kept" in put["body_note"], put


def test_an_http2_agent_with_its_token_as_the_session_token_is_known_on_every_stream(gateway, issuer):
    """Transport B over HTTP/2: a tunnel opened without proxy credentials (to an AWS host only),
    the agent's token in each request's X-Amz-Security-Token. Each stream is authenticated on its
    own: with the token the call goes through, recorded under its subject; without, it is refused."""
    from tests.support.raw import h2_request

    sub = "agent-h2-transport-b"
    token = issuer.mint(sub)
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    head = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Amz-Date": "20260101T000000Z",
            "Content-Length": str(len(body)),
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/sts/aws4_request, "
                             "SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=" + "0" * 64}
    status, _, answer = h2_request(gateway, None, "sts.amazonaws.com", "POST", b"/",
                                   {**head, "X-Amz-Security-Token": token}, body)
    assert status == 200 and b":assumed-role/agent-role/" in answer, answer[:400]
    status, _, answer = h2_request(gateway, None, "sts.amazonaws.com", "POST", b"/", head, body)
    assert status == 403 and b"no token" in answer, answer[:400]
    [mine] = [r for r in gateway.records() if r["principal"] == sub]
    assert (mine["action"], mine["outcome"]) == ("sts:GetCallerIdentity", "forwarded")


@pytest.mark.parametrize("pieces", ["byte at a time", "verb first"])
def test_a_request_sent_in_small_pieces_is_read_as_a_request(gateway, issuer, pieces):
    """An agent whose first write inside the tunnel is shorter than its request line (a slow
    client, one that writes the verb on its own, a byte a time) is read as HTTP like any other:
    mitmproxy took such a start for another protocol and relayed the tunnel's bytes raw, so
    the agent's call was never read, decided or recorded (and here, where AWS does not
    resolve, the connection was closed under it)."""
    import http.client
    import ssl
    import time

    from tests.support.raw import connect

    sub = f"agent-slow-{pieces.split()[0]}"
    s, head = connect(gateway.port, "sts.amazonaws.com:443", issuer.mint(sub))
    assert head.startswith(b"HTTP/1.1 200"), head
    tls = ssl.create_default_context(cafile=str(gateway.ca_file)).wrap_socket(s, server_hostname="sts.amazonaws.com")
    tls.settimeout(15)
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    request = (b"POST / HTTP/1.1\r\nHost: sts.amazonaws.com\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    cuts = range(1, len(request) + 1) if pieces == "byte at a time" else (4, len(request))
    start = 0
    for cut in cuts:
        tls.sendall(request[start:cut])
        start = cut
        time.sleep(0.1 if cut <= 8 else 0)  # each of the first bytes on its own, as a slow client sends them
    answer = http.client.HTTPResponse(tls)
    answer.begin()
    text = answer.read().decode()
    tls.close()
    assert answer.status == 200 and f"assumed-role/agent-role/{sub}" in text, text
    recs = [r for r in gateway.records() if r["principal"] == sub]
    assert [(r["action"], r["decision"], r["status"]) for r in recs] == [("sts:GetCallerIdentity", "allow", 200)]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_an_http2_upload_that_ends_with_trailers_is_refused_and_not_stored(gateway, issuer, length):
    """S3 over HTTP/2, streamed (a declared payload hash): a PutObject whose body is followed by
    trailer fields (x-amz-checksum-crc32 in a HEADERS frame that ends the stream) cannot reach
    moto as sent (upstream is spoken to in HTTP/1): mitmproxy crashed on it, and the object was
    stored without its checksum, recorded as forwarded. The agent gets an AWS-shaped 400 saying
    what to do instead, moto stores nothing (with a Content-Length, the body's last byte waits for
    the end of the agent's stream; without, the chunked body's last chunk does), one record says
    refused, and the same connection carries the next calls."""
    import hashlib
    import zlib

    from tests.support.raw import h2_calls

    sub = f"agent-h2-s3-trailers-{length}"
    signed = "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/s3/aws4_request, " \
             "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64
    empty = hashlib.sha256(b"").hexdigest()
    head = {"X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": empty, "Authorization": signed}
    data = b"checksummed after the body " * 10000
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    put = {"X-Amz-Date": "20260101T000000Z", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", "Authorization": signed,
           **({"Content-Length": str(len(data))} if length else {})}
    before_log = len(gateway.log())
    answers = h2_calls(gateway, issuer.mint(sub), f"h2-trailers-{str(length).lower()}.s3.amazonaws.com", [
        ("PUT", b"/", head, b"", ()),
        ("PUT", b"/with-trailers", put, data, (("x-amz-checksum-crc32", crc),)),
        ("GET", b"/with-trailers", head, b"", ()),
        ("PUT", b"/without", put, data, ()),
        ("GET", b"/without", head, b"", ()),
    ])
    [made, (status, headers, answer), (missing, _, _), (stored, _, _), (got, _, back)] = answers
    assert made[0] == 200, made
    assert status == 400 and b"<Code>InvalidRequest</Code>" in answer, (status, answer[:400])
    assert b"trailer fields (x-amz-checksum-crc32)" in answer and b"send them as headers" in answer, answer[:600]
    assert missing == 404  # moto did not store the object
    assert (stored, got, back) == (200, 200, data)
    mine = [r for r in gateway.records() if r["principal"] == sub]
    assert [(r["operation"], r["outcome"], r["status"]) for r in mine] == [
        ("CreateBucket", "forwarded", 200), ("PutObject", "refused", 400), ("GetObject", "forwarded", 404),
        ("PutObject", "forwarded", 200), ("GetObject", "forwarded", 200)], mine
    refused = mine[1]
    assert "trailer fields (x-amz-checksum-crc32)" in refused["error"] and crc not in json.dumps(refused), refused
    assert "has crashed" not in gateway.log()[before_log:], gateway.log()[before_log:]
