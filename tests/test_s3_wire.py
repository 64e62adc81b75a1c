"""S3 on the wire through the gateway: aws-chunked uploads with trailing checksums, 1 KB to
100 MB, multipart, path and virtual-host style, presigned URLs (SigV2 and SigV4) fetched by a
plain HTTP client."""

from __future__ import annotations

import json
import ssl
import textwrap
import time

import httpx
import pytest

from tests.conftest import run_agent
from tests.test_data_path import agent, check

TRANSFER = textwrap.dedent("""
    import hashlib, json, os, sys, boto3
    from botocore.config import Config
    style, size = sys.argv[1], int(sys.argv[2])
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": style}))
    bucket = f"xfer-{style}"
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    body = os.urandom(size)
    s3.put_object(Bucket=bucket, Key=f"obj-{size}", Body=body)
    got = s3.get_object(Bucket=bucket, Key=f"obj-{size}")["Body"].read()
    print(json.dumps({"sent": hashlib.sha256(body).hexdigest(), "got": hashlib.sha256(got).hexdigest(), "len": len(got)}))
""")


def _transfer(gateway, env, style, size):
    p = run_agent(env, TRANSFER.replace("sys.argv[1], int(sys.argv[2])", f"{style!r}, {size}"))
    out = check(p)
    assert out["len"] == size and out["sent"] == out["got"]


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_put_and_get_1kb(gateway, token_file, tmp_path, style):
    _transfer(gateway, agent(gateway, token_file, tmp_path), style, 1024)


@pytest.mark.slow
def test_put_and_get_64mb_streams_through(gateway, token_file, tmp_path):
    _transfer(gateway, agent(gateway, token_file, tmp_path), "virtual", 64 << 20)
    rec = [r for r in gateway.records() if r["action"] == "s3:PutObject" and r["url"].endswith(f"obj-{64 << 20}")][-1]
    assert rec["status"] == 200 and rec["request_body_size"] > 64 << 20  # aws-chunked framing around the 64 MiB


@pytest.mark.slow
def test_multipart_upload_file_100mb(gateway, token_file, tmp_path):
    env = agent(gateway, token_file, tmp_path)
    out = check(run_agent(env, textwrap.dedent(f"""
        import hashlib, json, os, boto3
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="multi")
        src = os.path.join({str(tmp_path)!r}, "big.bin")
        with open(src, "wb") as f:
            for _ in range(100):
                f.write(os.urandom(1 << 20))
        s3.upload_file(src, "multi", "big.bin")
        dst = src + ".back"
        s3.download_file("multi", "big.bin", dst)
        h = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
        print(json.dumps({{"same": h(src) == h(dst), "size": os.path.getsize(dst)}}))
    """)))
    assert out == {"same": True, "size": 100 << 20}
    actions = [r["action"] for r in gateway.records() if "multi" in (r["url"] or "")]
    assert "s3:PutObject" in actions  # CreateMultipartUpload/UploadPart/Complete are authorised as s3:PutObject


def presigned(env: dict, signature: str, key: str, body: bytes, expires_in: tuple[int, ...] = (3600,)) -> list[str]:
    """As the agent (boto3, signature version ``signature``): put ``body`` at presigned/``key`` and
    presign GETs of it, one per ``expires_in``."""
    return check(run_agent(env, textwrap.dedent(f"""
        import json, boto3
        from botocore.config import Config
        s3 = boto3.client("s3", config=Config(signature_version={signature!r}))
        try:
            s3.create_bucket(Bucket="presigned")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_object(Bucket="presigned", Key={key!r}, Body={body!r})
        print(json.dumps([s3.generate_presigned_url("get_object", Params={{"Bucket": "presigned", "Key": {key!r}}},
                                                    ExpiresIn=seconds) for seconds in {list(expires_in)!r}]))
    """)))


def fetch(gateway, env: dict, url: str) -> httpx.Response:
    """``url`` fetched through the gateway by a plain HTTP client, with the agent's proxy token."""
    token = env["HTTPS_PROXY"].split("agent:", 1)[1].rsplit("@", 1)[0]
    return httpx.get(url, proxy=gateway.proxy_url(token), verify=ssl.create_default_context(cafile=str(gateway.ca_file)),
                     timeout=30)


@pytest.mark.parametrize("signature", ["s3", "s3v4"])
def test_presigned_get_with_a_plain_http_client(gateway, token_file, tmp_path, signature):
    env = agent(gateway, token_file, tmp_path)
    [url] = presigned(env, signature, "hello.txt", b"hello, presigned")
    assert ("X-Amz-Signature=" in url) == (signature == "s3v4")
    r = fetch(gateway, env, url)
    assert r.status_code == 200, r.text
    assert r.text == "hello, presigned"


@pytest.mark.parametrize("signature", ["s3", "s3v4"])
def test_an_expired_presigned_url_is_refused_as_aws_would(gateway, token_file, tmp_path, signature):
    """The gateway signs again, so the URL's own signature does not count; its end does, as for AWS:
    a URL past its expiry gets S3's 403 "Request has expired" and is recorded as refused."""
    env = agent(gateway, token_file, tmp_path, sub=f"expired-{signature}")
    short, long = presigned(env, signature, "soon.txt", b"gone soon", expires_in=(1, 3600))
    time.sleep(2.1)
    r = fetch(gateway, env, short)
    assert r.status_code == 403, r.text
    assert "<Code>AccessDenied</Code>" in r.text and "Request has expired: the presigned URL was good until" in r.text
    assert fetch(gateway, env, long).text == "gone soon"
    [refused] = [x for x in gateway.records() if x["principal"] == f"expired-{signature}" and x["status"] == 403]
    assert (refused["outcome"], refused["rule"], refused["action"]) == ("refused", "agentgate:egress", "s3:GetObject")


def test_a_presigned_post_is_refused_saying_what_to_use_instead(gateway, token_file, tmp_path):
    """boto3's generate_presigned_post (S3's browser-form upload, POST Object) is not supported
    (README): the agent's HTTP client is told so in S3's error shape, with the calls that do work,
    and the record says the same; a presigned PUT of the same object goes through."""
    env = agent(gateway, token_file, tmp_path, sub="form-poster")
    post, put = check(run_agent(env, textwrap.dedent("""
        import json, boto3
        s3 = boto3.client("s3")
        try:
            s3.create_bucket(Bucket="presigned")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        print(json.dumps([s3.generate_presigned_post("presigned", "form.txt"),
                          s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "form.txt"})]))
    """)))
    token = env["HTTPS_PROXY"].split("agent:", 1)[1].rsplit("@", 1)[0]
    kw = dict(proxy=gateway.proxy_url(token), verify=ssl.create_default_context(cafile=str(gateway.ca_file)), timeout=30)
    r = httpx.post(post["url"], data=post["fields"], files={"file": ("form.txt", b"from a form")}, **kw)
    assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text, r.text
    assert "browser-form upload (POST Object" in r.text and "upload with put_object, or a presigned PUT URL" in r.text
    [rec] = [x for x in gateway.records() if x["principal"] == "form-poster" and x["method"] == "POST"]
    assert (rec["action"], rec["decision"], rec["outcome"]) == ("unknown", "deny", "refused")
    assert "upload with put_object" in rec["reason"]
    assert httpx.put(put, content=b"from a presigned PUT", **kw).status_code == 200
    assert fetch(gateway, env, put).text == "from a presigned PUT"  # the gateway signs again: GET reads it


def test_presigned_urls_of_the_javascript_sdk_go_through(gateway, token_file, tmp_path):
    """The AWS SDK for JavaScript v3 (s3-request-presigner) presigns with
    X-Amz-Content-Sha256=UNSIGNED-PAYLOAD and x-id in the query, GET and PUT alike. They were
    refused as calls naming no operation; they are re-signed as any other presigned URL."""
    env = agent(gateway, token_file, tmp_path, sub="js-presigner")
    get, put = check(run_agent(env, textwrap.dedent("""
        import json, boto3
        from botocore.config import Config
        s3 = boto3.client("s3", config=Config(signature_version="s3v4"))
        try:
            s3.create_bucket(Bucket="presigned")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        urls = [s3.generate_presigned_url(op, Params={"Bucket": "presigned", "Key": "js.txt"})
                for op in ("get_object", "put_object")]
        print(json.dumps([f"{url}&X-Amz-Content-Sha256=UNSIGNED-PAYLOAD&x-id={op}"
                          for url, op in zip(urls, ("GetObject", "PutObject"))]))
    """)))
    token = env["HTTPS_PROXY"].split("agent:", 1)[1].rsplit("@", 1)[0]
    kw = dict(proxy=gateway.proxy_url(token), verify=ssl.create_default_context(cafile=str(gateway.ca_file)), timeout=30)
    r = httpx.put(put, content=b"from a JavaScript agent", **kw)
    assert r.status_code == 200, r.text
    r = fetch(gateway, env, get)
    assert (r.status_code, r.text) == (200, "from a JavaScript agent")
    recs = [x for x in gateway.records() if x["principal"] == "js-presigner" and "js.txt" in (x["url"] or "")]
    assert [(x["action"], x["decision"], x["outcome"]) for x in recs] == [
        ("s3:PutObject", "allow", "forwarded"), ("s3:GetObject", "allow", "forwarded")]


HIVE_KEY = "data/dt=2024-05-22/mac@2x (1).png"  # as data lakes name objects; a plain client sends '=', '@', '(' as they are


def test_a_plain_http_clients_path_goes_to_s3_encoded_as_s3_signs_it(tmp_path, issuer, token_file):
    """S3 reads the path it signs with every byte but the unreserved ones and '/' percent-encoded
    (its CanonicalRequest for /data/dt=1/k reads /data/dt%3D1/k). An SDK encodes a key so; httpx,
    requests and curl send '=', '@', '(' as they are. The gateway signed such a path as it came,
    so S3 refused the call with SignatureDoesNotMatch (moto, which signs the path as it gets it,
    did not). Now the path goes upstream in S3's form, signed so, and the record's URL is the one
    sent; the key decided and recorded is the agent's."""
    import botocore.auth
    import botocore.awsrequest
    from botocore.credentials import ReadOnlyCredentials

    from tests.support.gateway import Gateway
    from tests.support.upstream import CannedUpstream
    from tests.test_recording_e2e import GATEWAY_KEY

    with CannedUpstream() as up:
        with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=up.url, aws_key=GATEWAY_KEY) as gw:
            env = agent(gw, token_file, tmp_path, sub="hive-reader")
            r = fetch(gw, env, f"https://hive.s3.amazonaws.com/{HIVE_KEY}")
            assert r.status_code == 200, r.text
            [(method, path, headers)] = [x for x in up.requests if x[1].startswith("/data/")]
            [rec] = [x for x in gw.records() if x["principal"] == "hive-reader"]
    assert path == "/data/dt%3D2024-05-22/mac%402x%20%281%29.png"
    sent = dict((k.lower(), v) for k, v in headers)
    date = sent["x-amz-date"]
    request = botocore.awsrequest.AWSRequest(method, f"https://hive.s3.amazonaws.com{path}", headers={
        "Host": sent["host"], "X-Amz-Date": date, "X-Amz-Security-Token": sent["x-amz-security-token"],
        "X-Amz-Content-SHA256": sent["x-amz-content-sha256"]})
    request.context["timestamp"] = date
    signer = botocore.auth.S3SigV4Auth(ReadOnlyCredentials(up.access_key, up.secret_key, up.session_token),
                                       "s3", "us-east-1")
    canonical = signer.canonical_request(request)  # S3's: the path as sent upstream, already in S3's form
    assert sent["authorization"].endswith("Signature=" + signer.signature(signer.string_to_sign(request, canonical),
                                                                          request))
    assert rec["url"] == f"https://hive.s3.amazonaws.com{path}"  # as it went to S3
    assert (rec["action"], json.loads(rec["params"])["Key"]) == ("s3:GetObject", HIVE_KEY)


def test_a_plain_http_client_reads_the_object_its_unencoded_path_names(gateway, token_file, tmp_path):
    """The path re-encoded for S3 names the same key: an object put by boto3 under a key holding
    '=', '@', ' ', '(' and '+' is what a plain client's GET of the same key, sent unencoded, reads."""
    env = agent(gateway, token_file, tmp_path, sub="hive-plain")
    key = HIVE_KEY.replace("(1)", "(1)+x")
    check(run_agent(env, textwrap.dedent(f"""
        import json, boto3
        s3 = boto3.client("s3")
        try:
            s3.create_bucket(Bucket="hive")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_object(Bucket="hive", Key={key!r}, Body=b"partitioned")
        print(json.dumps({{}}))
    """)))
    r = fetch(gateway, env, f"https://hive.s3.amazonaws.com/{key}")
    assert r.status_code == 200, r.text
    assert r.text == "partitioned"
