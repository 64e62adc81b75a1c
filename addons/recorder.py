"""recorder: writes exactly one Record per flow to the store (core.store): forwarded, refused
(by a stage, or held for an approval), tunnelled, failed upstream, or abandoned by the client.

With ``durability = "sync"`` (the default) nothing of an answer reaches the agent before its
record is committed:

- ``response``: a buffered answer waits in the hook until its record is committed;
- ``responseheaders``: an answer whose body streams (over 1 MB, S3 objects) is recorded before
  its first byte, headers included, goes to the agent. Its record cannot hold the body's SHA-256
  (the body has not passed yet); it notes the length upstream declared, and upstream's ETag and
  checksum headers are among its response headers. A stream that breaks afterwards is logged; it
  makes no second record.

An answer over 1 MB that masking holds whole to mask it for the agent (``HELD``) is not streamed:
it is buffered, masked and recorded in ``response`` like any other, and so is refusable there.

When the store cannot write, the call is refused with an AWS-shaped 503 instead (fail closed;
``fail_open`` answers it all the same, loudly), with one log line. Its record is kept and written
when the store is back, and says that the agent got the 503 (``refused_by_store``). While the store
is known to be down, calls are refused before they go upstream (``request``).

A client that leaves while its answer waits for the commit gets nothing, and its record says so
(outcome ``client_gone``): core.store changes a record still queued, and stops a commit under way
to change it; a commit that went through first stands (the record says what the agent was to be
given), and a log line says that the client left.

Which hook sees a client leave (mitmproxy 12): while upstream is slow or a body streams, and while
a request hook holds the call (approval), the ``error`` hook, with "Client disconnected."; while the
``response`` hook waits for the commit, none: mitmproxy drops the answer after the hook. The
recorder does not read the words: a client has left when its connection can no longer be read
(``approval.client_gone``), which mitmproxy records before it tells any hook.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import time

from mitmproxy import http

from .approval import client_gone
from .core import chain, sigv4
from .core.awserrors import Refusal, render
from .core.masking import header_pairs
from .core.records import Record, redact_headers
from .core.store import Store, StoreError, StoreUnavailable
from .masking import MASKED
from .stage import (APPROVAL, BODY_DIGEST, CALL, DECISION, FAILED_STATUS, HELD, HOST, PRINCIPAL, REFUSAL, SIGNED, TOKEN,
                    TUNNEL, answer, declares_body, due, own_request_id)

log = logging.getLogger("agentgate.recorder")
calls_log = logging.getLogger("agentgate.calls")  # a line per call, at DEBUG (run -v)
DEFAULT_RULE = "agentgate:default"  # a record's rule when no rule matched and `default` decided

STREAM_RESPONSES_OVER = 1 << 20  # bytes; larger (or unknown-length binary) responses stream
RESPONSE_DIGEST = "agentgate.response_body"  # (sha256, size) of a body upstream sent, when it differs from the agent's
RECORDED = "agentgate.recorded"  # [record id, what the agent got ("answered", "refused", "gone"), "METHOD URL"]
INTEGRITY_HEADERS = ("etag", "content-md5", "x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme",
                     "x-amz-checksum-sha1", "x-amz-checksum-sha256", "x-amz-checksum-type")


class StreamedBody:
    """The stream callable of an answer recorded before its body: passes the body on, counting it."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, data: bytes) -> bytes:
        self.sent += len(data)
        return data


class InsteadOfBody:
    """The stream callable of a streamed answer refused after upstream began it: the agent gets
    ``body`` (the refusal's), and none of upstream's bytes."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent = 0

    def __call__(self, data: bytes) -> list[bytes]:
        if self.body is None:
            return []  # an empty piece would end a chunked body: send nothing
        body, self.body = self.body, None
        return [body]


def should_stream(response: http.Response, method: str = "GET") -> bool:
    if method == "HEAD" or response.status_code in (204, 304) or response.status_code < 200:
        return False  # no body, whatever Content-Length says (a HEAD's is the object's)
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


def streamed_note(response: http.Response) -> str:
    """What the record of an answer recorded before its body says about that body."""
    length = response.headers.get("content-length")
    declared = f"upstream declared {length} bytes" if length is not None else "upstream did not declare its length"
    names = [n for n in INTEGRITY_HEADERS if n in response.headers]
    integrity = f"; its {', '.join(names)} {'is' if len(names) == 1 else 'are'} in the response headers" if names else ""
    return (f"response: body streamed to the agent after this record was committed, so not kept and its SHA-256 "
            f"and size are not here; {declared}{integrity}")


def build_record(flow: http.HTTPFlow, outcome: str | None = None, error: str | None = None,
                 streamed: bool = False) -> Record:
    """The Record of ``flow`` as the stages left it. ``streamed``: its answer's body has not passed
    yet (the record is written before it)."""
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
    # the id an answer the gateway made itself carries (a refusal, a failed call's 502), or the one the
    # approval stage gave it, which the approval the call used names: one id for the call throughout
    r = Record(time=req.timestamp_start or time.time(), id=own_request_id(flow))
    r.kind = "connect" if req.method == "CONNECT" else "call"
    r.client = f"{flow.client_conn.peername[0]}:{flow.client_conn.peername[1]}" if flow.client_conn.peername else None
    if principal is not None:
        r.principal, r.issuer, r.on_behalf_of = principal.sub, principal.iss, principal.on_behalf_of
        r.groups = list(principal.groups)
    if call is not None:
        r.service, r.operation, r.action, r.access_level = call.service, call.operation, call.action, call.access_level
        r.region, r.account, r.resources, r.params = call.region, call.account, list(call.resources), call.params
    if decision is not None:
        r.decision, r.reason, r.policy_version = decision.decision, decision.reason, decision.policy_version
        r.rule = decision.rule or DEFAULT_RULE  # no rule matched: the policies' `default` decided
        if decision.role is not None:
            r.role = decision.role.role_arn
    if (approval := md.get(APPROVAL)) is not None:
        r.approval_id, r.approver = approval.id, approval.approver
    if grant is not None:
        r.session_id, r.role = grant.session_id, grant.role_arn
        if grant.assumed_role_arn and not r.account:
            r.account = grant.assumed_role_arn.split(":")[4] or None
    r.method, r.host = req.method, host
    # the scheme the agent used: https in an intercepted tunnel; http for a plain-HTTP request (refused)
    scheme = "https" if flow.client_conn.tls else "http"
    r.url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "") if r.kind == "call" else f"{host}"
    masked = md.get(MASKED)  # core.masking.MaskedCall: bodies, headers and parameters as masked
    if masked is not None:
        masked.finish()  # the request's masking, if it was left for after the request went upstream
    if masked is None or masked.request_headers is None:
        r.request_headers = redact_headers(req.headers)
    if md.get(BODY_DIGEST):
        r.request_body_sha256, r.request_body_size = md[BODY_DIGEST]
    elif not req.stream:
        r.request_body_sha256, r.request_body_size = _digest(req.raw_content)
    elif not declares_body(req):  # streamed, and nothing to stream: the empty body's
        r.request_body_sha256, r.request_body_size = _digest(b"")
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
        r.error = error if r.error is None else f"{error} (it had been answered {r.error})"
    if resp is not None:
        r.status = resp.status_code
        if masked is None or masked.response_headers is None:
            r.response_headers = redact_headers(resp.headers)
        rid = resp.headers.get("x-amzn-requestid") or resp.headers.get("x-amz-request-id")
        # an answer the gateway made itself carries the record's own id (stage.own_request_id): AWS never saw it
        r.aws_request_id = rid if rid != r.id else None
        if streamed:
            pass  # the body has not passed yet: nothing of it is known but what upstream declared
        elif md.get(RESPONSE_DIGEST):
            r.response_body_sha256, r.response_body_size = md[RESPONSE_DIGEST]
        elif not resp.stream:
            r.response_body_sha256, r.response_body_size = _digest(resp.raw_content)
        end = resp.timestamp_end or time.time()
    else:
        end = time.time()
    if masked is not None:
        r.request_body, r.response_body, r.masked, r.body_note = (
            masked.request_body, masked.response_body, masked.masked, masked.note)
        if masked.request_headers is not None:
            r.request_headers = masked.request_headers
        if masked.response_headers is not None and resp is not None:
            r.response_headers = masked.response_headers
        if masked.path is not None and r.kind == "call":
            path = masked.path
            r.url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
        if masked.query is not None and r.kind == "call":
            r.url = f"{scheme}://{host}{path}" + (f"?{masked.query}" if masked.query else "")
        if masked.params_masked:
            r.params = masked.params
        if masked.resources is not None:
            r.resources = masked.resources
    if streamed and resp is not None:
        r.body_note = "; ".join(n for n in (r.body_note, streamed_note(resp)) if n)
    if (token := md.get(TOKEN)) and (r.request_body or r.response_body or r.params or r.resources
                                     or "?" in r.url or token in r.url):
        _without_the_token(r, token)
    r.bytes_in = r.request_body_size
    r.bytes_out = r.response_body_size
    r.latency_ms = round((end - r.time) * 1000, 3)
    return r


@functools.lru_cache(maxsize=1024)  # an agent's token comes with each of its calls: encoded once
def token_forms(token: str) -> tuple[str, ...]:
    """How the agent's token can appear in a body: as it is, and inside base64 (standard or URL
    alphabet) at each of the three offsets a base64 encoder can meet it at (an S3 POST policy's
    ``x-amz-security-token`` condition, say), each without its edges, which depend on its neighbours."""
    raw = token.encode()
    forms = [token]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[4 if offset else 0:len(encoded) - 4]
        if len(core) >= 16:
            forms += [core, core.replace("+", "-").replace("/", "_")]
    return tuple(forms)


def _without_the_token(r: Record, token: str) -> None:
    """A body that holds the agent's token in some encoding is not kept (masking found it in none
    of the forms it reads): no token reaches the store."""
    forms = token_forms(token)
    for form in forms:  # in the URL's path or query (masking reads JWTs, not every encoding of one)
        if r.url and form in r.url:
            r.url = r.url.replace(form, "agentgate:masked:agent-token")
        if r.resources and any(form in x for x in r.resources):
            r.resources = [x.replace(form, "agentgate:masked:agent-token") for x in r.resources]
    if r.params and any(f in chain.json_text(r.params) for f in forms):  # a member's value, base64 say
        r.params = {"agentgate:not-kept": "the parameters held the agent's token (encoded): not kept"}
        r.body_note = "; ".join(n for n in (r.body_note, "parameters: held the agent's token (encoded), not kept")
                                if n)
    for which in ("request_body", "response_body"):
        text = getattr(r, which)
        if text and any(f in text for f in forms):
            setattr(r, which, None)
            note = f"{which.split('_')[0]}: held the agent's token (encoded), not kept"
            r.body_note = "; ".join(n for n in (r.body_note, note) if n)


def head_record(data) -> Record:
    """The Record of a request head refused before it was read as a request (limits.RefusedHead), or
    of an HTTP/2 agent's frames refused by mitmproxy's h2 layer: who sent it on which connection,
    where it was going, why it was refused, and the SHA-256 and size of its bytes (not kept: they
    may hold credentials)."""
    client = data.client
    r = Record(time=data.time)
    r.kind = "call"
    r.client = f"{client.peername[0]}:{client.peername[1]}" if client.peername else None
    if (principal := data.principal) is not None:
        r.principal, r.issuer, r.on_behalf_of = principal.sub, principal.iss, principal.on_behalf_of
        r.groups = list(principal.groups)
    host = client.sni or None
    r.method, r.host = data.method, host
    if host:
        r.url = f"https://{host}{data.path or '/'}"
    code = "RequestHeaderSectionTooLarge" if data.status == 431 else "InvalidRequest"
    r.decision, r.rule, r.reason = "deny", "agentgate:egress", data.reason
    r.outcome, r.status, r.error = "refused", data.status, f"{code}: {data.reason}"
    if data.http2:
        r.body_note = (f"HTTP/2 frames refused before they were read as a request, and the connection closed "
                       f"(GOAWAY, PROTOCOL_ERROR): {data.head_size} bytes, SHA-256 {data.head_sha256} (not kept: "
                       f"they may hold credentials)")
    else:
        r.body_note = (f"request head refused before it was read as a request: {data.head_size} bytes, SHA-256 "
                       f"{data.head_sha256} (not kept: it may hold credentials)")
    r.latency_ms = round((time.time() - data.time) * 1000, 3)
    return r


STORE_DOWN = Refusal(503, "ServiceUnavailable", "agentgate cannot record this call right now (its evidence store "
                     "is unavailable), so it is not answered; retry shortly", "store")
STOPPING = Refusal(503, "ServiceUnavailable", "agentgate is stopping and takes no new calls on this connection; "
                   "retry (a new connection reaches another gateway, or this one once it is back)", "stopping")
DRAIN_SECONDS = 30.0  # how long a stopping gateway waits for the calls in flight to be answered and recorded


def _before(record: Record) -> str:
    """What the gateway had for the agent when it could not give it: for a record's error."""
    if record.outcome == "refused":
        return f"it had been refused with {record.status}: {record.error}"
    if record.kind == "connect":
        return "the tunnel was not opened"
    if record.status is not None:
        return f"upstream had answered {record.status}" + (
            f" (request id {record.aws_request_id})" if record.aws_request_id else "")
    return "it had not been answered"


def refused_by_store(record: Record) -> dict:
    """What ``record`` says instead when its call is refused because the store could not commit it
    (fail closed): the agent got STORE_DOWN's 503. The error keeps what had happened before; the
    AWS request id and response digest stay upstream's, whose answer the agent did not get."""
    if record.rule == "agentgate:store":  # refused before it went anywhere: it says so already
        return {}
    return {"outcome": "refused", "status": STORE_DOWN.status,
            "error": f"{STORE_DOWN.code} (agentgate:store): {STORE_DOWN.message}; {_before(record)}"}


def gone_before_answer(record: Record) -> dict:
    """What ``record`` says instead when its client left while the answer waited for the commit:
    the agent got nothing."""
    return {"outcome": "client_gone",
            "error": f"Client disconnected while its answer waited for this record to be committed; {_before(record)}"}


class Arrivals:
    """Ahead of the chain: a call is in flight (``Recorder.inflight``) from the first hook that hears
    of it, not from the recorder's own, so that a stopping gateway keeps the connection of a call an
    earlier stage is still holding (an approval, a streamed call's stages in ``requestheaders``, a
    fetch of the issuer's keys or of credentials) and answers and records it, instead of closing it
    as idle."""

    def __init__(self, recorder: "Recorder") -> None:
        self.recorder = recorder

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.recorder.inflight[flow.id] = flow


class Recorder:
    def __init__(self, store: Store, *, fail_open: bool = False, masking=None) -> None:
        self.store = store
        self.fail_open = fail_open
        self.masking = masking  # the Masking addon: masks a streamed answer's headers before it is recorded
        self.inflight: dict[str, http.HTTPFlow] = {}  # the calls read and not yet answered and recorded
        self.stopping = False  # the gateway is stopping: new calls are answered STOPPING
        self.stopped_by = "SIGTERM"  # the signal that stopped it, named in the records of calls the stop cuts off

    def busy_clients(self) -> frozenset:
        """The ids of the client connections that have a call in flight (a stopping gateway closes
        the others at once)."""
        return frozenset(flow.client_conn.id for flow in self.inflight.values())

    def _last_on_connection(self, flow: http.HTTPFlow) -> None:
        """(The gateway is stopping.) The answer tells an HTTP/1 agent that its connection closes
        after it: its next call opens a new one, which reaches another gateway (or this one once it
        is back), instead of being refused here."""
        if self.stopping and flow.response is not None and flow.request.http_version.startswith("HTTP/1"):
            flow.response.headers["connection"] = "close"

    async def drain(self, timeout: float = DRAIN_SECONDS) -> int:
        """(The gateway is stopping.) Answer new calls STOPPING, and wait up to ``timeout`` seconds
        for the calls in flight to be answered and recorded: the store is closed after, and a call
        answered then could not be. The number still in flight when it gave up."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = [f for f in self.inflight.values() if RECORDED not in f.metadata]
        if self.inflight:
            log.warning("stopping with %d calls still in flight after %.0f s: they are cut off, each recorded as "
                        "failed", len(self.inflight), timeout)
        for flow in left:  # recorded now, while the store still writes: what went upstream has its evidence
            sent = flow.metadata.get(SIGNED) is not None
            why = (f"the gateway stopped ({self.stopped_by}) with this call still in flight after its {timeout:.0f} s for "
                   "calls in flight, and cut it off" + ("; it had gone upstream, where AWS may have carried it out"
                                                        if sent else "; it had not gone upstream"))
            await self._write(flow, build_record(flow, outcome="failed", error=why))
        return len(self.inflight)

    async def _write(self, flow: http.HTTPFlow, record: Record, refusable: bool = False) -> str:
        """Write ``flow``'s record: what the agent gets then. "answered": go on; "refused": answer
        503 (the store cannot write; ``fail_open`` is off); "gone": the client left before the
        record was committed, and the record says so. ``refusable``: nothing reached the agent yet."""
        what = f"{record.method} {record.url}"
        done = flow.metadata[RECORDED] = [record.id, "answered", what]
        try:
            committed = await self.store.write(
                record, if_refused=refused_by_store(record) if refusable and not self.fail_open else None,
                if_gone=gone_before_answer(record) if refusable else None,
                gone=(lambda: client_gone(flow)) if refusable else None)
        except StoreUnavailable as e:
            if self.fail_open:
                log.warning("FAIL OPEN: the store cannot write (%s); %s is answered all the same", e, what)
            elif refusable:
                log.error("refusing %s with 503: the store cannot write (%s)", what, e)
                done[1] = "refused"
            else:
                log.error("the store cannot write the record of %s (%s)", what, e)
            return self._logged(record, what, done[1])
        except StoreError as e:
            if refusable and not self.fail_open:
                log.error("refusing %s with 503: the store refused its record (%s)", what, e)
                done[1] = "refused"
            else:
                log.error("the store refused the record of %s (%s)", what, e)
            return self._logged(record, what, done[1])
        if not committed:
            log.info("the client of %s left while its answer waited for the commit; record %s says client_gone",
                     what, record.id)
            done[1] = "gone"
        elif refusable and client_gone(flow):
            log.warning("the client of %s left as its record %s was being committed; the record says what it was "
                        "to be given, which it did not get", what, record.id)
        return self._logged(record, what, done[1])

    @staticmethod
    def _logged(record: Record, what: str, then: str) -> str:
        """``then``, after a line for the call at DEBUG (`agentgate run -v`)."""
        if calls_log.isEnabledFor(logging.DEBUG):
            calls_log.debug("%s %s %s %s by %s (%s) %s %s%s%s", record.principal or "-", record.action or "-",
                            record.decision or "-", record.outcome or "-", record.rule or "-", what,
                            record.status if record.status is not None else "-", record.id,
                            f" {record.latency_ms:.1f} ms" if record.latency_ms is not None else "",
                            "" if then == "answered" else "; the agent got a 503: the store could not write"
                            if then == "refused" else "; the agent had left")
        return then

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # a refused CONNECT
            await self._write(flow, build_record(flow))
        elif flow.metadata.get(TUNNEL) and await self._write(flow, build_record(flow), refusable=True) == "refused":
            flow.response = http.Response.make(STORE_DOWN.status, f"agentgate: {STORE_DOWN.message}\n",
                                               {"content-type": "text/plain; charset=utf-8"})

    def _refuse_while_down(self, flow: http.HTTPFlow) -> None:
        # The store is known to be down: refuse before the call goes upstream, not after AWS did it.
        if not self.fail_open and not self.store.healthy:
            answer(flow, STORE_DOWN)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.inflight[flow.id] = flow
        if self.stopping and flow.response is None:
            answer(flow, STOPPING)  # recorded as any refusal; the agent retries elsewhere
            flow.response.headers["connection"] = "close"
        if due(flow, "requestheaders"):
            self._refuse_while_down(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            self._refuse_while_down(flow)

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if (resp is None or resp.stream or flow.error or RECORDED in flow.metadata or flow.metadata.get(HELD)
                or flow.metadata.get(REFUSAL) is not None or not should_stream(resp, flow.request.method)):
            return  # buffered or held whole by masking (recorded in ``response``), or answered here already
        resp.stream = StreamedBody()  # nothing of it goes to the agent before this hook returns
        self._last_on_connection(flow)
        self._mask_headers(flow)
        record = build_record(flow, streamed=True)
        if await self._write(flow, record, refusable=True) == "refused":
            status, headers, body = render(STORE_DOWN, getattr(flow.metadata.get(CALL), "protocol", None), record.id,
                                           request_content_type=flow.request.headers.get("content-type"))
            if flow.request.http_version.startswith("HTTP/1"):
                headers["connection"] = "close"  # the agent hangs up after the 503; upstream's stream is cut then
            refused = http.Response.make(status, body, headers)
            refused.stream = InsteadOfBody(body)
            flow.response = refused

    def _mask_headers(self, flow: http.HTTPFlow) -> None:
        """Mask a streamed answer's headers for its record, as ``masking`` would after its body."""
        if self.masking is None:
            return
        self.masking.mask_request(flow)
        masked = self.masking.masked(flow)
        if not masked.response_done:
            resp = flow.response
            part, _ = self.masking.masker.response(flow.metadata.get(CALL), status=resp.status_code,
                                                   headers=header_pairs(resp.headers), body=None, agent=False)
            masked.add(part, "response")

    async def response(self, flow: http.HTTPFlow) -> None:
        try:
            if RECORDED in flow.metadata:  # a streamed answer, recorded before its first byte
                return
            refusable = not flow.response.stream  # a body that streamed past the recorder has reached the agent
            self._last_on_connection(flow)
            record = build_record(flow)
            if await self._write(flow, record, refusable) == "refused":
                status, headers, body = render(STORE_DOWN, getattr(flow.metadata.get(CALL), "protocol", None),
                                               record.id, request_content_type=flow.request.headers.get("content-type"))
                flow.response = http.Response.make(status, body, headers)
                self._last_on_connection(flow)
            if flow.request.method == "HEAD" and flow.response.raw_content and not flow.response.stream:
                # an answer the gateway made (a refusal) carries no body to a HEAD: the agent would read
                # it as the next answer on the connection (the record keeps it)
                flow.response.content = b""
        finally:
            self.inflight.pop(flow.id, None)

    async def refused_head(self, data) -> None:
        """A request head refused before it was read as a request (addons/limits.py): no flow, one
        record all the same, written before the agent gets its 4xx."""
        record = head_record(data)
        try:
            await self.store.write(record)
        except (StoreUnavailable, StoreError) as e:
            log.error("the store cannot write the record of a refused request head from %s (%s)", record.client, e)

    async def error(self, flow: http.HTTPFlow) -> None:
        try:
            await self._error(flow)
        finally:
            self.inflight.pop(flow.id, None)

    async def _error(self, flow: http.HTTPFlow) -> None:
        msg = flow.error.msg if flow.error else "unknown error"
        done = flow.metadata.get(RECORDED)
        refusal = flow.metadata.get(REFUSAL)
        if done is None and refusal is not None and msg == refusal.message:
            record = build_record(flow)  # refused inside mitmproxy's HTTP layer (egress, limits): no response object
            record.status = refusal.status
            await self._write(flow, record)
            return
        if done is None:
            gone = client_gone(flow)
            record = build_record(flow, outcome="client_gone" if gone else "failed", error=msg)
            if not gone:  # what the agent gets once this hook returns: mitmproxy's 502 (failures.py)
                record.status = flow.metadata.get(FAILED_STATUS)
            await self._write(flow, record)
            return
        record_id, got, what = done
        stream = flow.response.stream if flow.response is not None else None
        if got == "answered" and isinstance(stream, StreamedBody):
            length = flow.response.headers.get("content-length", "?")
            who = "the client left" if client_gone(flow) else "upstream failed"
            log.warning("the answer to %s broke after %d of %s bytes (%s: %s); record %s says it was forwarded",
                        what, stream.sent, length, who, msg, record_id)
