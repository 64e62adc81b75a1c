"""A large answer that policy masks for the agent is held whole, masked, recorded and only then sent,
like any buffered answer; buffered answers are bounded in memory. Through a real gateway on SQLite
in front of the canned upstream (DynamoDB Scan answers of any size, with or without a length),
boto3 as the agent:

- a Scan answer over 1 MiB, with a Content-Length or chunked: the agent gets it masked, with a
  Content-Length and an ``x-amz-crc32`` that match, and its record keeps the masked body;
- while another connection holds the store's lock, the agent gets nothing until its record is
  committed; when the commit is later than ``commit_timeout``, it gets a 503 (and none of upstream's
  body) and its record says so;
- an answer to mask over what the gateway holds (here ``max_body_bytes``) is withheld with an
  AWS-shaped error; a buffered answer without a length that passes ``max_body_bytes`` gets a 502;
  both are recorded with the SHA-256 and size of what upstream sent."""

from __future__ import annotations

import re
import threading
import time
import zlib

import botocore.exceptions
import pytest

from addons.core.masking import AGENT_MARKER, MARKER_PREFIX
from addons.core.store import Store
from tests.support.gateway import TEST_POLICY, Gateway
from tests.test_recording_commit import agent
from tests.test_store_faults import Lock

GATEWAY_KEY = ("AKIAGATEWAYHELDWHOLE", "gateway-secret-not-used-by-the-canned-upstream")
CAP = 3 << 20  # max_body_bytes here
COMMIT_TIMEOUT = 2.0
POLICY = TEST_POLICY + """
  - id: mask-ssn
    action: dynamodb:Scan
    decision: allow
    mask_for_agent: ["Items[].ssn"]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, upstream):
    home = tmp_path_factory.mktemp("held")
    g = Gateway(home, issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY, policy=POLICY,
                settings={"max_body_bytes": CAP, "commit_timeout": COMMIT_TIMEOUT})
    g.db_url = f"sqlite:///{g.db_path}"
    with g:
        yield g
    print(g.log()[-3000:])


def client(gw, issuer, service: str = "dynamodb"):
    return agent(gw, issuer, "held", service)


def scan_records(gw, table: str) -> list[dict]:
    """The records of Scans of ``table`` (each test names its own), once one is there."""
    deadline = time.monotonic() + 15
    while True:
        store = Store(gw.db_url)
        try:
            found = [r for r in store.calls(limit=None, newest_first=False)
                     if r["action"] == "dynamodb:Scan" and table in (r["request_body"] or "")]
        finally:
            store.engine.dispose()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def table(size: int, chunked: bool) -> str:
    return f"{'chunked-' if chunked else ''}items-{size}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_answer_is_masked_for_the_agent_and_recorded_before_it_is_sent(gw, issuer, chunked):
    ddb = client(gw, issuer)
    got = ddb.scan(TableName=table(1_500_000, chunked))
    meta = got["ResponseMetadata"]
    assert got["Count"] > 1000 and all(i["ssn"] == {"S": AGENT_MARKER} for i in got["Items"])
    assert meta["RetryAttempts"] == 0  # the crc32 botocore checks matched
    sent = meta["HTTPHeaders"]
    assert "transfer-encoding" not in sent and int(sent["content-length"]) > 1 << 20
    assert int(sent["x-amz-crc32"]) >= 0
    [r] = scan_records(gw, table(1_500_000, chunked))
    assert (r["outcome"], r["status"]) == ("forwarded", 200)
    assert r["response_body_size"] > 1 << 20 and "canned-ssn-" not in r["response_body"]
    # the record's copy (kept to its cap, so cut short) has a fingerprint for each ssn, not AGENT_MARKER
    kept = re.findall(r'"ssn": ?\{"S": ?"([^"]*)"\}', r["response_body"])
    assert len(kept) > 100 and all(v.startswith(MARKER_PREFIX) for v in kept) and len(set(kept)) == len(kept)
    assert {"part": "agent", "path": "Items[].ssn", "by": "policy", "count": got["Count"]} in r["masked"]


def test_nothing_reaches_the_agent_before_its_record_is_committed(gw, issuer):
    ddb = client(gw, issuer)
    ddb.list_tables()  # tunnel and credentials ready
    lock = Lock(gw.db_url)
    threading.Timer(1.0, lock.release).start()
    started = time.monotonic()
    try:
        got = ddb.scan(TableName=table(1_200_000, False))
        waited = time.monotonic() - started
    finally:
        lock.release()
    assert waited >= 0.9 and got["Count"] > 1000, waited
    [r] = scan_records(gw, table(1_200_000, False))
    assert (r["outcome"], r["status"]) == ("forwarded", 200)


def test_a_commit_later_than_commit_timeout_answers_503_and_none_of_the_body(gw, issuer):
    ddb = client(gw, issuer)
    ddb.list_tables()
    lock = Lock(gw.db_url)
    try:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ddb.scan(TableName=table(1_300_000, True))
    finally:
        lock.release()
    meta = e.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], e.value.response["Error"]["Code"]) == (503, "ServiceUnavailable")
    assert int(meta["HTTPHeaders"]["content-length"]) < 1000 and "Items" not in e.value.response
    [r] = scan_records(gw, table(1_300_000, True))
    assert (r["outcome"], r["status"]) == ("refused", 503)
    assert "upstream had answered 200" in r["error"]
    assert ddb.scan(TableName=table(1_300_000, True))["Count"] > 1000  # the store is back: answered


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_to_mask_over_what_the_gateway_holds_is_withheld(gw, issuer, upstream, chunked):
    """The agent gets an error instead of the answer; the call went through at AWS, so the error
    and the record carry AWS's request id (for CloudTrail), not one of the gateway's."""
    ddb = client(gw, issuer)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ddb.scan(TableName=table(CAP + 500_000, chunked))
    assert e.value.response["Error"]["Code"] == "ResponseWithheld"
    assert f"over {CAP} bytes" in e.value.response["Error"]["Message"]
    [r] = scan_records(gw, table(CAP + 500_000, chunked))
    assert r["status"] == 400 and r["response_body"] is None and r["response_body_size"] > CAP
    assert "withheld from the agent" in r["body_note"]
    assert r["aws_request_id"] == e.value.response["ResponseMetadata"]["RequestId"]
    assert r["aws_request_id"] in upstream.request_ids


def test_a_buffered_answer_without_a_length_over_max_body_bytes_gets_502(gw, issuer, upstream):
    s3 = client(gw, issuer, "s3")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="held-bucket", Key=f"xml-{CAP + 100_000}")
    assert (e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]) \
        == (502, "ResponseTooLarge")
    store = Store(gw.db_url)
    try:
        [r] = [r for r in store.calls(limit=None) if f"xml-{CAP + 100_000}" in (r["url"] or "")]
    finally:
        store.engine.dispose()
    assert r["status"] == 502 and r["response_body_size"] > CAP and r["response_body"] is None
    assert "over max_body_bytes" in r["body_note"]
    assert r["aws_request_id"] == e.value.response["ResponseMetadata"]["RequestId"]
    assert r["aws_request_id"] in upstream.request_ids
    assert s3.get_object(Bucket="held-bucket", Key="xml-1000")["Body"].read().startswith(b"<ListBucketResult>")


def test_the_crc32_the_agent_checks_is_of_the_masked_body(gw, issuer):
    """botocore checks x-amz-crc32 itself; the raw answer shows it is recomputed, not dropped."""
    ddb = client(gw, issuer)
    raw = {}
    ddb.meta.events.register("before-parse.dynamodb.Scan",
                             lambda **kw: raw.update(body=kw["response_dict"]["body"],
                                                     crc=kw["response_dict"]["headers"]["x-amz-crc32"]))
    ddb.scan(TableName=table(1_100_000, True))
    assert int(raw["crc"]) == zlib.crc32(raw["body"]) and b"canned-ssn-" not in raw["body"]
