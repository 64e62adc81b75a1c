"""recorder: writes one Record per flow to the store (core.store): forwarded, refused, tunnelled,
failed upstream, or abandoned by the client. With ``durability = "sync"`` (the default) the
response waits in the ``response`` hook until its record is committed; when the store cannot
write, the call is refused with an AWS-shaped 503 instead (fail closed) unless ``fail_open``. The
record of a call refused that way is kept and written when the store is back, and says that the
agent got the 503 (``refused_by_store``). While the store is known to be down, calls are refused
before they go upstream (``request``). A response whose body streams (below) has reached the agent
before its ``response`` hook, so it cannot be refused any more: its record is kept all the same.

Large response bodies (S3 objects) stream through; their SHA-256 and size are computed on the way.
"""

from __future__ import annotations

import hashlib
import logging
import time

from mitmproxy import http

from .core import sigv4
from .core.awserrors import Refusal, render
from .core.records import Record, redact_headers
from .core.store import Store, StoreError, StoreUnavailable
from .masking import MASKED
from .stage import APPROVAL, BODY_DIGEST, CALL, DECISION, HOST, PRINCIPAL, REFUSAL, SIGNED, TUNNEL, answer, due

log = logging.getLogger("agentgate.recorder")

STREAM_RESPONSES_OVER = 1 << 20  # bytes; larger (or unknown-length binary) responses stream
RESPONSE_DIGEST = "agentgate.response_body"


class ResponseDigest:
    def __init__(self, flow: http.HTTPFlow) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.flow = flow

    def __call__(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.size += len(data)
        if not data:
            self.flow.metadata[RESPONSE_DIGEST] = (self.sha.hexdigest(), self.size)
        return data


def should_stream(response: http.Response) -> bool:
    length = response.headers.get("content-length")
    if length is not None:
        return length.isdigit() and int(length) > STREAM_RESPONSES_OVER
    ctype = response.headers.get("content-type", "")
    return "chunked" in response.headers.get("transfer-encoding", "") and not any(
        t in ctype for t in ("json", "xml", "cbor", "text/")
    )


def _digest(content: bytes | None) -> tuple[str | None, int | None]:
    if content is None:
        return None, None
    return hashlib.sha256(content).hexdigest(), len(content)


def build_record(flow: http.HTTPFlow, outcome: str | None = None, error: str | None = None) -> Record:
    md = flow.metadata
    req, resp = flow.request, flow.response
    principal = md.get(PRINCIPAL)
    call = md.get(CALL)
    decision = md.get(DECISION)
    grant = md.get(SIGNED)
    refusal: Refusal | None = md.get(REFUSAL)
    host = md.get(HOST) or req.host_header or req.host
    path, _, query = req.path.partition("?")
    query = sigv4.scrub_query(query) if query else ""
    r = Record(time=req.timestamp_start or time.time())
    r.kind = "connect" if req.method == "CONNECT" else "call"
    r.client = f"{flow.client_conn.peername[0]}:{flow.client_conn.peername[1]}" if flow.client_conn.peername else None
    if principal is not None:
        r.principal, r.issuer, r.on_behalf_of = principal.sub, principal.iss, principal.on_behalf_of
        r.groups = list(principal.groups)
    if call is not None:
        r.service, r.operation, r.action, r.access_level = call.service, call.operation, call.action, call.access_level
        r.region, r.account, r.resources, r.params = call.region, call.account, list(call.resources), call.params
    if decision is not None:
        r.decision, r.rule, r.reason, r.policy_version = decision.decision, decision.rule, decision.reason, decision.policy_version
        if decision.role is not None:
            r.role = decision.role.role_arn
    if (approval := md.get(APPROVAL)) is not None:
        r.approval_id, r.approver = approval.id, approval.approver
    if grant is not None:
        r.session_id, r.role = grant.session_id, grant.role_arn
        if grant.assumed_role_arn and not r.account:
            r.account = grant.assumed_role_arn.split(":")[4] or None
    r.method, r.host = req.method, host
    r.url = f"https://{host}{path}" + (f"?{query}" if query else "") if r.kind == "call" else f"{host}"
    r.request_headers = redact_headers(req.headers)
    if md.get(BODY_DIGEST):
        r.request_body_sha256, r.request_body_size = md[BODY_DIGEST]
    elif not req.stream:
        r.request_body_sha256, r.request_body_size = _digest(req.raw_content)
    if refusal is not None:
        r.outcome = refusal.outcome
        r.error = f"{refusal.code}: {refusal.message}"
        if refusal.stage not in ("policy", "approval"):  # refused for a reason other than the rules
            r.decision, r.rule, r.reason = "deny", f"agentgate:{refusal.stage}", refusal.message
    elif md.get(TUNNEL):
        r.outcome = "tunnelled"
    else:
        r.outcome = "forwarded"
    if outcome:
        r.outcome = outcome
    if error:
        r.error = error
    if resp is not None:
        r.status = resp.status_code
        r.response_headers = redact_headers(resp.headers)
        r.aws_request_id = resp.headers.get("x-amzn-requestid") or resp.headers.get("x-amz-request-id")
        if md.get(RESPONSE_DIGEST):
            r.response_body_sha256, r.response_body_size = md[RESPONSE_DIGEST]
        elif not resp.stream:
            r.response_body_sha256, r.response_body_size = _digest(resp.raw_content)
        end = resp.timestamp_end or time.time()
    else:
        end = time.time()
    masked = md.get(MASKED)  # core.masking.MaskedCall: bodies, headers and parameters as masked
    if masked is not None:
        r.request_body, r.response_body, r.masked, r.body_note = (
            masked.request_body, masked.response_body, masked.masked, masked.note)
        if masked.request_headers is not None:
            r.request_headers = masked.request_headers
        if masked.response_headers is not None and resp is not None:
            r.response_headers = masked.response_headers
        if masked.query is not None and r.kind == "call":
            r.url = f"https://{host}{path}?{masked.query}"
        if masked.params_masked:
            r.params = masked.params
        if masked.resources is not None:
            r.resources = masked.resources
    r.bytes_in = r.request_body_size
    r.bytes_out = r.response_body_size
    r.latency_ms = round((end - r.time) * 1000, 3)
    return r


STORE_DOWN = Refusal(503, "ServiceUnavailable", "agentgate cannot record this call right now (its evidence store "
                     "is unavailable), so it is not answered; retry shortly", "store")


def refused_by_store(record: Record) -> dict:
    """What ``record`` says instead when its call is refused because the store could not commit it
    (fail closed): the agent got STORE_DOWN's 503. The error keeps what had happened before; the
    AWS request id and response digest stay upstream's, whose answer the agent did not get."""
    if record.rule == "agentgate:store":  # refused before it went anywhere: it says so already
        return {}
    if record.outcome == "refused":
        before = f"it had been refused with {record.status}: {record.error}"
    elif record.kind == "connect":
        before = "the tunnel was not opened"
    elif record.status is not None:
        before = f"upstream had answered {record.status}" + (
            f" (request id {record.aws_request_id})" if record.aws_request_id else "")
    else:
        before = "it had not been answered"
    return {"outcome": "refused", "status": STORE_DOWN.status,
            "error": f"{STORE_DOWN.code} (agentgate:store): {STORE_DOWN.message}; {before}"}


class Recorder:
    def __init__(self, store: Store, *, fail_open: bool = False) -> None:
        self.store = store
        self.fail_open = fail_open

    async def _write(self, record: Record, refusable: bool = False) -> bool:
        """Write ``record``. False when its call must be refused: the store cannot write and
        ``fail_open`` is off. ``refusable``: the call can still be refused (nothing reached the agent)."""
        what = f"{record.method} {record.url}"
        try:
            await self.store.write(record, if_refused=refused_by_store(record) if refusable and not self.fail_open else None)
            return True
        except StoreUnavailable as e:
            if self.fail_open:
                log.warning("FAIL OPEN: the store cannot write (%s); %s is answered all the same", e, what)
                return True
            if refusable:
                log.error("refusing %s with 503: the store cannot write (%s)", what, e)
            else:
                log.error("the store cannot write the record of %s (%s)", what, e)
            return False
        except StoreError as e:
            if refusable and not self.fail_open:
                log.error("refusing %s with 503: the store refused its record (%s)", what, e)
            else:
                log.error("the store refused the record of %s (%s)", what, e)
            return self.fail_open

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # a refused CONNECT
            await self._write(build_record(flow))
        elif flow.metadata.get(TUNNEL) and not await self._write(build_record(flow), refusable=True):
            flow.response = http.Response.make(STORE_DOWN.status, f"agentgate: {STORE_DOWN.message}\n",
                                               {"content-type": "text/plain; charset=utf-8"})

    def _refuse_while_down(self, flow: http.HTTPFlow) -> None:
        # The store is known to be down: refuse before the call goes upstream, not after AWS did it.
        if not self.fail_open and not self.store.healthy:
            answer(flow, STORE_DOWN)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            self._refuse_while_down(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            self._refuse_while_down(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and not flow.response.stream and should_stream(flow.response):
            flow.response.stream = ResponseDigest(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        refusable = not flow.response.stream  # a streamed body has already reached the agent
        if not await self._write(build_record(flow), refusable) and refusable:
            status, headers, body = render(STORE_DOWN, getattr(flow.metadata.get(CALL), "protocol", None))
            flow.response = http.Response.make(status, body, headers)

    async def error(self, flow: http.HTTPFlow) -> None:
        msg = flow.error.msg if flow.error else "unknown error"
        outcome = "client_gone" if "client" in msg.lower() and ("disconnect" in msg.lower() or "closed" in msg.lower()) else "failed"
        await self._write(build_record(flow, outcome=outcome, error=msg))
