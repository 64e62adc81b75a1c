"""A large answer (a 5 MB S3 object, which streams) is recorded before any of it reaches the agent,
through a real gateway in front of moto (auth on), boto3 as the agent, on SQLite and PostgreSQL:
the record is committed by the time the agent has the headers (and while the store cannot commit,
the agent gets nothing); it says the body streamed and what upstream declared of it; there is one
record per download, however it ends. With the store unable to write when the GET comes, the agent
(PostgreSQL stopped; SQLite locked by another process) gets an AWS-shaped 503 and none of the
object, one log line, and its record says so."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

import botocore.exceptions
import pytest

from tests.support.postgres import shared_server
from tests.test_recording_commit import agent, records_for, start, store_url
from tests.test_store_faults import Lock

BUCKET = "streams-bucket"
SIZE = 5 << 20
OBJECT = secrets.token_bytes(1 << 16) * (SIZE >> 16)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request, tmp_path_factory, issuer, moto):
    tmp = tmp_path_factory.mktemp(f"streams-{request.param}")
    g = start(tmp, issuer, moto, store_url(request.param, tmp))
    g.backend = request.param
    try:
        s3 = agent(g, issuer, "setup")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="object", Body=OBJECT)
        yield g
    finally:
        g.stop()
        print(g.log()[-3000:])


def gets(gw, key: str = "object") -> list[dict]:
    return [r for r in records_for(gw, key) if r["method"] == "GET"]


def test_the_record_is_committed_before_the_first_byte(gw, issuer):
    s3 = agent(gw, issuer, "reader")
    before = {r["id"] for r in gets(gw)}
    body = s3.get_object(Bucket=BUCKET, Key="object")["Body"]
    [r] = [r for r in gets(gw) if r["id"] not in before]  # there already: committed before the headers left
    assert (r["outcome"], r["status"], r["action"]) == ("forwarded", 200, "s3:GetObject")
    assert (r["response_body_sha256"], r["response_body_size"]) == (None, None)
    assert "streamed to the agent after this record was committed" in r["body_note"]
    assert f"upstream declared {SIZE} bytes" in r["body_note"] and "etag" in r["body_note"]
    etag = dict((k.lower(), v) for k, v in r["response_headers"])["etag"]
    assert etag.strip('"') == hashlib.md5(OBJECT).hexdigest()  # the record names the body it let through
    assert body.read() == OBJECT
    time.sleep(0.5)
    assert [x["id"] for x in gets(gw) if x["id"] not in before] == [r["id"]]  # one record, however it ends
    # the GET itself had no body: its record says so (the empty body's digest), not that one streamed
    assert (r["request_body_sha256"], r["request_body_size"]) == (hashlib.sha256(b"").hexdigest(), 0)
    assert "request: body streamed" not in r["body_note"]


def test_a_head_of_the_large_object_is_not_a_body_streamed(gw, issuer):
    """A HEAD's Content-Length is the object's; no body follows it, and the record says nothing of one."""
    s3 = agent(gw, issuer, "header-reader")
    assert s3.head_object(Bucket=BUCKET, Key="object")["ContentLength"] == SIZE
    [r] = [r for r in records_for(gw, "object") if r["method"] == "HEAD" and r["principal"].startswith("header-reader-")]
    assert (r["outcome"], r["status"], r["action"]) == ("forwarded", 200, "s3:GetObject")
    assert "streamed" not in (r["body_note"] or ""), r["body_note"]
    assert (r["response_body_sha256"], r["response_body_size"]) == (hashlib.sha256(b"").hexdigest(), 0)


def test_nothing_reaches_the_agent_while_its_record_cannot_be_committed(gw, issuer):
    """Another connection holds the store's lock for 1.5 s: the agent's GET gets no headers until
    the record is committed once the lock is gone."""
    s3 = agent(gw, issuer, "waiting-reader")
    s3.list_buckets()  # tunnel and credentials ready
    before = {r["id"] for r in gets(gw)}
    lock = Lock(gw.db_url)
    threading.Timer(1.5, lock.release).start()
    started = time.monotonic()
    try:
        body = s3.get_object(Bucket=BUCKET, Key="object")["Body"]
        waited = time.monotonic() - started
    finally:
        lock.release()
    assert waited >= 1.4, waited
    [r] = [r for r in gets(gw) if r["id"] not in before]
    assert (r["outcome"], r["status"]) == ("forwarded", 200)
    assert body.read() == OBJECT


class Unwritable:
    """The gateway's store made unwritable while the gateway is idle (it finds out when it records
    the GET's answer): PostgreSQL stopped; SQLite's write lock held by another process past its
    lock wait (5 s)."""

    def __init__(self, gw) -> None:
        self.lock = None
        if gw.backend == "postgresql":
            shared_server().stop()
        else:
            self.lock = Lock(gw.db_url)

    def __enter__(self) -> "Unwritable":
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()
        else:
            shared_server().start()


def test_a_store_that_cannot_write_refuses_the_download_with_503_and_no_body(gw, issuer):
    key = f"refused-{secrets.token_hex(4)}"
    s3 = agent(gw, issuer, "refused-reader")
    s3.put_object(Bucket=BUCKET, Key=key, Body=OBJECT)
    with Unwritable(gw):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=BUCKET, Key=key)
        meta = e.value.response["ResponseMetadata"]
        assert (meta["HTTPStatusCode"], e.value.response["Error"]["Code"]) == (503, "ServiceUnavailable")
        assert "evidence store is unavailable" in e.value.response["Error"]["Message"]
        assert int(meta["HTTPHeaders"]["content-length"]) < 1000  # the error document, none of the object
    deadline = time.monotonic() + 15
    while not gets(gw, key) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    [r] = gets(gw, key)
    assert (r["outcome"], r["status"], r["decision"], r["rule"]) == ("refused", 503, "allow", "data-plane")
    assert r["error"].startswith("ServiceUnavailable (agentgate:store): agentgate cannot record this call")
    assert "upstream had answered 200" in r["error"]
    lines = [ln for ln in gw.log().splitlines() if key in ln and "GET" in ln and "agentgate.calls" not in ln]
    assert len(lines) == 1 and "ERROR agentgate.recorder: refusing GET" in lines[0], lines
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == OBJECT  # recovered by itself


def test_a_streamed_upload_is_recorded_with_the_sha256_and_size_the_agent_sent(gw, issuer):
    """An upload whose payload hash is declared streams upstream; its record holds the SHA-256 and
    size of the body as the agent sent it."""
    s3 = agent(gw, issuer, "uploader", request_checksum_calculation="when_required")  # plain body, its SHA-256 declared
    body = secrets.token_bytes((3 << 20) + 12345)
    s3.put_object(Bucket=BUCKET, Key="uploaded", Body=body)
    assert s3.get_object(Bucket=BUCKET, Key="uploaded")["Body"].read() == body
    (r,) = [r for r in records_for(gw, "uploaded") if r["method"] == "PUT"]
    assert (r["outcome"], r["status"]) == ("forwarded", 200)
    assert (r["request_body_sha256"], r["request_body_size"]) == (hashlib.sha256(body).hexdigest(), len(body))
