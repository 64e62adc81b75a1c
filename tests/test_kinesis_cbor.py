"""Kinesis as the AWS SDKs for Java (and the KCL and KPL) send it: a json-protocol call with a CBOR
body (``application/x-amz-cbor-1.1``). Decided on the parameters the same call sent as JSON has,
refused in CBOR, recorded with its parameters, and its CBOR answers masked for the agent as CBOR
(timestamps kept as epoch milliseconds)."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import ssl
import textwrap

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from addons.core.classifier import Classification, decode_cbor
from addons.core.masking import AGENT_MARKER, MARKER_PREFIX, Masker
from tests.support.gateway import Gateway
from tests.support.upstream import CannedUpstream
from tests.test_classifier import java_cbor

CBOR = "application/x-amz-cbor-1.1"
HOST = "kinesis.us-east-1.amazonaws.com"
KEY = b"fingerprint-key-for-tests-000001"
GATEWAY_KEY = ("AKIAGATEWAYKINESISCBOR", "gateway-secret-not-used-by-the-canned-upstream")
ARRIVED_MS = 1704164645123  # 2024-01-02T03:04:05.123Z

POLICY = textwrap.dedent("""\
    version: 1
    default: deny
    roles:
      - principal: {groups: [data-agents]}
        role_arn: arn:aws:iam::123456789012:role/agent-role
        duration: 1h
    rules:
      - id: kinesis-streams
        action: "kinesis:*"
        decision: allow
      - id: no-audit-writes
        action: kinesis:PutRecord
        when: "params.StreamName == 'audit'"
        decision: deny
        reason: the audit stream is written by the platform only
      - id: records-masked
        action: kinesis:GetRecords
        decision: allow
        mask_for_agent: ["Records[].Data"]
    """)


def get_records_answer() -> bytes:
    """A GetRecords answer as Kinesis writes it in CBOR: Data as byte strings, the arrival time as
    tag 1 and epoch milliseconds."""
    return java_cbor({"Records": [
        {"SequenceNumber": "4959", "ApproximateArrivalTimestamp": datetime.datetime.fromtimestamp(
            ARRIVED_MS / 1000, datetime.timezone.utc), "Data": b"card=4111111111111111", "PartitionKey": "p1"},
        {"SequenceNumber": "4960", "ApproximateArrivalTimestamp": datetime.datetime.fromtimestamp(
            ARRIVED_MS / 1000, datetime.timezone.utc), "Data": b"\x00\xffbinary", "PartitionKey": "p2",
         "EncryptionType": "NONE"}],
        "NextShardIterator": "AAAAnext", "MillisBehindLatest": 0})


def test_a_cbor_answer_masked_for_the_agent_stays_cbor_with_its_timestamps():
    masker = Masker(KEY)
    call = Classification(service="kinesis", operation="GetRecords", protocol="json")
    body = get_records_answer()
    stamp = b"\xc1" + java_cbor(ARRIVED_MS)
    assert body.count(stamp) == 2
    part, agent = masker.response(call, status=200, body=body, content_type=CBOR, policy=("Records[].Data",))
    # the agent's copy: CBOR, Data masked (a byte string), everything else as upstream sent it
    assert agent is not None and agent.withheld is None and agent.body is not None
    assert agent.body.count(stamp) == 2  # still epoch milliseconds, byte for byte
    got = decode_cbor(agent.body, millis=True)
    assert [r["Data"] for r in got["Records"]] == [AGENT_MARKER.encode()] * 2
    assert [r["PartitionKey"] for r in got["Records"]] == ["p1", "p2"]
    assert got["NextShardIterator"] == "AAAAnext" and got["MillisBehindLatest"] == 0
    assert {r["ApproximateArrivalTimestamp"] for r in got["Records"]} == {
        datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.timezone.utc)}
    assert b"4111111111111111" not in agent.body
    # the record: JSON, times read as milliseconds, Data as the agent saw it masked
    record = json.loads(part.body)
    assert part.note == "CBOR body kept as JSON"
    assert record["Records"][0]["ApproximateArrivalTimestamp"] == "2024-01-02T03:04:05.123000+00:00"
    assert record["Records"][0]["PartitionKey"] == "p1"
    assert base64.b64decode(record["Records"][0]["Data"]).startswith(MARKER_PREFIX.encode())


def signed(body: bytes, target: str) -> dict[str, str]:
    request = AWSRequest("POST", f"https://{HOST}/", data=body,
                         headers={"Content-Type": CBOR, "X-Amz-Target": f"Kinesis_20131202.{target}"})
    SigV4Auth(Credentials("agentgate", "x"), "kinesis", "us-east-1").add_auth(request)
    return dict(request.headers)


def tunnel(gw: Gateway, token: str) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ssl.create_default_context(cafile=str(gw.ca_file)),
                                       timeout=60)
    conn.set_tunnel(HOST, 443, headers={"Proxy-Authorization": "Basic " + base64.b64encode(
        f"agent:{token}".encode()).decode()})
    return conn


def send(conn: http.client.HTTPSConnection, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn.request("POST", "/", body=body, headers=signed(body, target))
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def test_a_cbor_call_is_decided_on_its_params_and_refused_in_cbor(tmp_path, issuer, moto):
    """Through a real gateway, SigV4-signed CBOR as the SDK for Java sends it: an allowed PutRecord
    is classified, recorded with its parameters and forwarded (moto answers CBOR with a 500); one a
    rule denies, and one whose body does not read, get a CBOR AccessDenied the SDK parses."""
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=POLICY,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        conn = tunnel(gw, issuer.mint("cbor-agent", groups=["data-agents"]))
        put = {"StreamName": "events", "Data": b"\x00\x01hello", "PartitionKey": "pk"}
        status, headers, body = send(conn, "PutRecord", java_cbor(put))
        assert status == 500, (status, body[:200])  # moto's answer to CBOR, passed on
        status, headers, body = send(conn, "PutRecord", java_cbor(dict(put, StreamName="audit")))
        assert (status, headers["content-type"], headers["x-amzn-errortype"]) == (403, CBOR, "AccessDenied")
        refusal = decode_cbor(body)
        assert set(refusal) == {"__type", "message"} and refusal["__type"] == "AccessDenied"
        assert "no-audit-writes" in refusal["message"] and "written by the platform only" in refusal["message"]
        status, headers, body = send(conn, "PutRecord", java_cbor(put) + b"\x00")  # a trailing byte
        assert (status, headers["content-type"]) == (403, CBOR)
        assert decode_cbor(body)["__type"] == "AccessDenied"
        conn.close()
        records = [r for r in gw.records() if r["principal"] == "cbor-agent"]
    assert len(records) == 3
    forwarded, denied, unreadable = records
    assert (forwarded["action"], forwarded["decision"], forwarded["outcome"], forwarded["status"]) == (
        "kinesis:PutRecord", "allow", "forwarded", 500)
    # the parameters the same call sent as JSON has: Data as its base64
    assert json.loads(forwarded["params"]) == {"StreamName": "events", "PartitionKey": "pk",
                                               "Data": base64.b64encode(b"\x00\x01hello").decode()}
    assert json.loads(forwarded["resources"]) == ["events"]
    assert (denied["action"], denied["decision"], denied["rule"], denied["outcome"]) == (
        "kinesis:PutRecord", "deny", "no-audit-writes", "refused")
    assert json.loads(denied["params"])["StreamName"] == "audit"
    assert (unreadable["action"], unreadable["decision"], unreadable["operation"]) == ("unknown", "deny", "PutRecord")
    assert "sent as application/x-amz-cbor-1.1" in unreadable["error"] and "trailing bytes" in unreadable["error"]


def test_a_cbor_answer_reaches_the_agent_masked_as_cbor(tmp_path, issuer):
    """mask_for_agent on GetRecords' Records[].Data: the Java SDK's CBOR answer comes back CBOR,
    Data masked, the arrival times as the milliseconds upstream sent."""
    with CannedUpstream() as upstream:
        upstream.answers["Kinesis_20131202.GetRecords"] = (200, CBOR, get_records_answer())
        with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY,
                     policy=POLICY) as gw:
            conn = tunnel(gw, issuer.mint("cbor-reader", groups=["data-agents"]))
            status, headers, body = send(conn, "GetRecords", java_cbor({"ShardIterator": "AAAA", "Limit": 10}))
            conn.close()
            [record] = [r for r in gw.records() if r["principal"] == "cbor-reader"]
    assert (status, headers["content-type"]) == (200, CBOR), body[:200]
    assert int(headers["content-length"]) == len(body)
    got = decode_cbor(body, millis=True)
    assert [r["Data"] for r in got["Records"]] == [AGENT_MARKER.encode()] * 2
    assert body.count(b"\xc1" + java_cbor(ARRIVED_MS)) == 2
    assert b"4111111111111111" not in body
    assert (record["action"], record["decision"], record["outcome"]) == ("kinesis:GetRecords", "allow", "forwarded")
    assert json.loads(record["params"]) == {"ShardIterator": "AAAA", "Limit": 10}
    assert any(m["path"] == "Records[].Data" for m in json.loads(record["masked"])), record["masked"]
