"""One record per flow for calls held for a human, through a real gateway in front of moto (auth on),
boto3 as the agent: a call approved while held, one denied while held, one whose hold runs out
(ApprovalPending) and its retry after approval, and one whose agent hangs up while held. Every flow
carries a unique object key; each key must have exactly the records its flows made, no more (no
second record from another hook) and no fewer."""

from __future__ import annotations

import secrets
import threading
import time

import botocore.exceptions
import pytest

from tests.test_approval_e2e import console, held, pending, s3, start_gateway, wait_for

BUCKET = "holds-bucket"
HOLD = 4.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    g = start_gateway(tmp_path_factory.mktemp("holds"), issuer, moto, approval_hold=HOLD)
    try:
        s3(g, issuer.mint("setup")).create_bucket(Bucket=BUCKET)
        yield g
    finally:
        g.stop()
        print(g.log()[-4000:])


def marker(case: str) -> str:
    return f"hold-{case}-{secrets.token_hex(4)}"


def records_of(gw, key: str, at_least: int, quiet: float = 1.0, timeout: float = 10.0) -> list[dict]:
    """The records whose URL names ``key``, once there are ``at_least`` and ``quiet`` s pass with no more."""
    deadline = time.monotonic() + timeout
    found = []
    while time.monotonic() < deadline:
        found = [r for r in gw.records() if key in (r["url"] or "")]
        if len(found) >= at_least:
            break
        time.sleep(0.1)
    time.sleep(quiet)
    return [r for r in gw.records() if key in (r["url"] or "")]


def asked_for(gw, key: str) -> dict:
    return wait_for(lambda: [a for a in pending(gw) if a["resources"] == [f"{BUCKET}/{key}"]], timeout=HOLD)[0]


def decide(gw, issuer, approval_id: str, verb: str, approver: str, reason: str) -> None:
    with console(gw, issuer.mint(approver, groups=["sre"])) as c:
        r = c.post(f"/api/approvals/{approval_id}/{verb}", json={"reason": reason})
    assert r.status_code == 200, r.text


def in_thread(call) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["result"] = call()
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_call_approved_while_held_has_one_record_forwarded(gw, issuer):
    key = marker("approved")
    client = s3(gw, issuer.mint("agent-h1"))
    t, out = in_thread(lambda: client.delete_object(Bucket=BUCKET, Key=key))
    asked = asked_for(gw, key)
    decide(gw, issuer, asked["id"], "approve", "alice", "ticket 1")
    t.join(HOLD + 5)
    assert out["result"]["ResponseMetadata"]["HTTPStatusCode"] == 204
    [r] = records_of(gw, key, 1)
    assert (r["outcome"], r["status"], r["decision"], r["rule"]) == ("forwarded", 204, "approve", "deleting-needs-sre")
    assert (r["approval_id"], r["approver"], r["principal"]) == (asked["id"], "alice", "agent-h1")


def test_a_call_denied_while_held_has_one_record_refused(gw, issuer):
    key = marker("denied")
    client = s3(gw, issuer.mint("agent-h2"))
    t, out = in_thread(lambda: held(lambda: client.delete_object(Bucket=BUCKET, Key=key)))
    asked = asked_for(gw, key)
    decide(gw, issuer, asked["id"], "deny", "carol", "that object is evidence")
    t.join(HOLD + 5)
    code, message, approval_id = out["result"]
    assert (code, approval_id) == ("ApprovalDenied", asked["id"]) and "that object is evidence" in message
    [r] = records_of(gw, key, 1)
    assert (r["outcome"], r["status"], r["decision"]) == ("refused", 403, "approve")
    assert (r["approval_id"], r["approver"]) == (asked["id"], "carol") and r["error"].startswith("ApprovalDenied: ")


def test_a_hold_that_runs_out_and_the_retry_after_approval_have_one_record_each(gw, issuer):
    key = marker("retry")
    client = s3(gw, issuer.mint("agent-h3"))
    started = time.monotonic()
    code, message, approval_id = held(lambda: client.delete_object(Bucket=BUCKET, Key=key))
    assert code == "ApprovalPending" and HOLD - 0.2 < time.monotonic() - started < HOLD + 3
    [first] = records_of(gw, key, 1)
    assert (first["outcome"], first["status"], first["approval_id"], first["approver"]) == ("held", 403, approval_id, None)
    assert first["error"].startswith("ApprovalPending: ") and approval_id in first["error"]
    decide(gw, issuer, approval_id, "approve", "alice", "go ahead")
    assert client.delete_object(Bucket=BUCKET, Key=key)["ResponseMetadata"]["HTTPStatusCode"] == 204
    rs = records_of(gw, key, 2)
    assert [r["id"] for r in rs].count(first["id"]) == 1 and len(rs) == 2
    [retry] = [r for r in rs if r["id"] != first["id"]]
    assert (retry["outcome"], retry["status"], retry["approval_id"], retry["approver"]) == ("forwarded", 204, approval_id, "alice")


def test_a_call_whose_agent_hangs_up_while_held_has_one_record_client_gone(gw, issuer):
    key = marker("gone")
    impatient = s3(gw, issuer.mint("agent-h4"), read_timeout=1, connect_timeout=2)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        impatient.delete_object(Bucket=BUCKET, Key=key)
    asked = asked_for(gw, key)
    [r] = records_of(gw, key, 1, quiet=HOLD)  # past the end of the hold: nothing more is written
    assert (r["outcome"], r["approval_id"], r["principal"]) == ("client_gone", asked["id"], "agent-h4")
    assert r["error"].startswith("Client disconnected.") and "ApprovalPending" in r["error"]
    assert [a["state"] for a in pending(gw) if a["id"] == asked["id"]] == ["pending"]  # still up for approval


def test_an_http2_agent_that_cancels_its_held_call_has_one_record_client_gone(gw, issuer):
    """An HTTP/2 agent resets the stream of a held call (its context cancelled) and keeps its
    connection: the hold ends at once, not when approval_hold runs out, and the one record says
    the client left; the approval stays up for a retry."""
    from tests.support.raw import h2_cancel, s3_signed

    key = marker("h2-cancel")
    host = f"{BUCKET}.s3.amazonaws.com"
    signed = s3_signed("DELETE", f"https://{host}/{key}")
    h2_cancel(gw, issuer.mint("agent-h6"), host, "DELETE", f"/{key}".encode(), signed,
              after=0.8, linger=HOLD + 0.5)  # the connection outlives the hold
    asked = asked_for(gw, key)
    [r] = records_of(gw, key, 1)
    assert (r["outcome"], r["approval_id"], r["principal"]) == ("client_gone", asked["id"], "agent-h6"), r
    assert r["latency_ms"] < (HOLD - 1.5) * 1000, r["latency_ms"]  # ended by the reset, not by the hold
    assert [a["state"] for a in pending(gw) if a["id"] == asked["id"]] == ["pending"]


def test_a_held_call_does_not_hold_the_other_calls_on_its_http2_connection(gw, issuer):
    """An SDK on HTTP/2 sends its concurrent calls to one host as streams of one connection: while
    one is held for approval, the others on that connection are answered at once, and each call
    has its own record."""
    from tests.support.raw import h2_requests, s3_signed

    key = marker("h2-shared")
    host = f"{BUCKET}.s3.amazonaws.com"

    def signed(method: str, path: str) -> tuple[str, bytes, dict[str, str]]:
        return method, path.encode(), s3_signed(method, f"https://{host}{path}")

    answers = h2_requests(gw, issuer.mint("agent-h7"), host, [
        signed("DELETE", f"/{key}"), *(signed("GET", f"/?list-type=2&prefix={key}-{i}") for i in range(4))])
    (held_status, held_body, held_took), *others = answers
    assert held_status == 403 and b"ApprovalPending" in held_body and held_took > HOLD - 0.5, answers[0]
    assert all(status == 200 and b"ListBucketResult" in body for status, body, _ in others), others
    assert max(took for _, _, took in others) < HOLD / 2, [took for _, _, took in others]
    rs = [r for r in gw.records() if r["principal"] == "agent-h7"]
    assert sorted((r["operation"], r["outcome"]) for r in rs) == [("DeleteObject", "held")] + [
        ("ListObjectsV2", "forwarded")] * 4
