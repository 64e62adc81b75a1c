"""masking: masks each call for the record, always, and the response for the agent where policy
says so (core.masking).

- ``request`` (``requestheaders`` for a streamed body): the request's headers, query string, body
  and parameters as the record keeps them.
- ``response``: the response as the record keeps it; and, where the Decision's ``mask_for_agent``
  names members, the agent's copy rewritten so that its SDK still parses it (Content-Length set,
  DynamoDB's ``x-amz-crc32`` recomputed, checksums that would no longer match dropped). The record
  keeps the SHA-256 and size of the body as upstream sent it.
- ``responseheaders``: a response with members to mask for the agent is held whole (``HELD``),
  never streamed, whatever its size or encoding, up to the most the masker parses; it is masked,
  recorded and sent like any other buffered response, so nothing of it reaches the agent before its
  record is committed. One that is larger is withheld (an AWS-shaped error, recorded), as is any
  buffered response that passes ``max_body_bytes`` (addons/limits.py).

The masked copy travels to the recorder in ``flow.metadata["agentgate.masked"]``
(core.masking.MaskedCall). Masking never breaks a call: whatever fails leaves the agent's response
as it was, and the record keeps no body it could not mask.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import secrets
from urllib.parse import quote

from mitmproxy import http

from .core import sigv4
from .core.masking import OBJECT_CAP, AgentCopy, MaskedCall, Masker, checksum_headers, inflate
from .core.awserrors import Refusal, render
from .core.startkeys import OPERATIONS as SENT_BACK
from .core.startkeys import StartKeyError, StartKeys
from .stage import (CALL, DECISION, HELD, OVER_CAP, POLICIES, PRINCIPAL, REFUSAL, SIGNED, STREAM, answer,
                    declares_body, due, own_request_id)
from .stage import header_pairs as stage_header_pairs

log = logging.getLogger("agentgate.masking")

MASKED = "agentgate.masked"  # core.masking.MaskedCall: the call as the record keeps it
READS = ("List", "Read")  # IAM's access levels of calls that only read
THREAD_OVER = 256 * 1024  # bytes: larger bodies are masked off the event loop


async def _run(size: int, work):
    """``work()``, in a worker thread when its body is large, so other calls are not held up."""
    return await asyncio.to_thread(work) if size > THREAD_OVER else work()


def _header(pairs: list[tuple[str, str]], name: str) -> str:
    """The first value of header ``name`` (lower case) in ``pairs``, or ""."""
    size = len(name)
    for k, v in pairs:
        if len(k) == size and k.lower() == name:
            return v
    return ""


def _content(message: http.Message, pairs: list[tuple[str, str]], limit: int) -> bytes | None:
    """The body with its content-encoding undone, to ``limit`` + 1 bytes at most (core.masking.inflate):
    a longer result is over the masker's limit whatever follows, and a small compressed body (an S3
    object stored with a Content-Encoding, say) must not take the gateway's memory."""
    raw = message.raw_content
    return inflate(raw, _header(pairs, "content-encoding"), limit) if raw else raw


def query_form_of_json_model(call) -> bool:
    """A call sent as a Query form to a service whose botocore model is JSON and which accepts such
    forms (awsQueryCompatible: SQS from older SDKs): what the form and its XML answer name, the
    model does not, so masks cannot find members in them."""
    if call is None or getattr(call, "protocol", None) != "query":
        return False
    from .core import classifier

    entry = classifier.default_classifier().catalogue.by_name.get(call.service)
    return entry is not None and entry.query_compatible and entry.protocol != "query"


JIT_MARKER = b"agentgate:masked:jit-credential"


def scrub_jit_credentials(flow: http.HTTPFlow, body: bytes | None) -> bytes | None:
    """``body`` with the gateway's own JIT credentials (the key id, secret and session token it
    signed this call with) replaced by JIT_MARKER, wherever upstream echoed them (S3's
    SignatureDoesNotMatch quotes the key id and the canonical request, its token included): they
    reach neither the agent nor the record. ``body`` itself when none is in it."""
    creds = getattr(flow.metadata.get(SIGNED), "credentials", None)
    if creds is None or not body:
        return body
    for form in jit_forms(creds.token, creds.secret_key, creds.access_key):
        if form in body:
            body = body.replace(form, JIT_MARKER)
    return body


@functools.lru_cache(maxsize=256)  # per credentials: the same for every call they sign
def jit_forms(*secrets_: str | None) -> tuple[bytes, ...]:
    """How upstream may quote the gateway's credentials: as they are, URL-encoded (a canonical
    query), and as S3's CanonicalRequestBytes writes the canonical request (hex bytes, one space
    between)."""
    forms = []
    for secret in secrets_:
        if secret:
            raw = secret.encode()
            forms += [raw, quote(secret, safe="-_.~").encode(), " ".join(f"{b:02x}" for b in raw).encode()]
    return tuple(dict.fromkeys(forms))


def _upstream_request_id(response: http.Response | None) -> str | None:
    """AWS's request id of the answer the agent does not get: the call went through, and its error
    and record carry that id (for CloudTrail and AWS support), not one of the gateway's."""
    if response is None:
        return None
    return response.headers.get("x-amzn-requestid") or response.headers.get("x-amz-request-id") or None


def _response_digest() -> str:
    """The recorder's key for the SHA-256 and size of the body upstream sent (it imports this module)."""
    from .recorder import RESPONSE_DIGEST

    return RESPONSE_DIGEST


class Masking:
    def __init__(self, fingerprint_key: bytes | None, *, object_cap: int = OBJECT_CAP) -> None:
        if not fingerprint_key:
            fingerprint_key = secrets.token_bytes(32)
            log.warning("no fingerprint key (keys/fingerprint.key, written by `agentgate init`): masked values get "
                        "fingerprints from a key that lasts until the gateway stops")
        self.masker = Masker(fingerprint_key, object_cap=object_cap)
        self.start_keys = StartKeys(fingerprint_key)

    @staticmethod
    def masked(flow: http.HTTPFlow) -> MaskedCall:
        found = flow.metadata.get(MASKED)
        if found is None:
            found = flow.metadata[MASKED] = MaskedCall()
        return found

    @staticmethod
    def policy(flow: http.HTTPFlow) -> tuple[str, ...]:
        return tuple(getattr(flow.metadata.get(DECISION), "mask_for_agent", None) or ())

    # -- the request, for the record

    def _request_work(self, flow: http.HTTPFlow):
        """The request's masking as a function of what it needs from the flow (so that a large body
        can be masked off the event loop), with the size of its body; None when it is done."""
        mc = self.masked(flow)
        mc.finish()  # left for after the request went upstream (``request``): done now, before anything reads it
        if mc.request_done:
            return None, 0
        mc.request_done = True
        req = flow.request
        call = flow.metadata.get(CALL)
        policy = self.policy(flow)
        path, _, query = req.path.partition("?")
        streamed = bool(flow.metadata.get(STREAM) or req.stream)
        try:
            headers = stage_header_pairs(flow, req)
            body = None if streamed else _content(req, headers, self.masker.parse_limit)
            streamed = streamed and declares_body(req)  # a GET's nothing is not a body streamed
            query = sigv4.scrub_query(query) if query else ""
            content_type = _header(headers, "content-type")
        except Exception as e:  # noqa: BLE001
            mc.notes.append(f"request: not masked: {type(e).__name__}")
            return None, 0

        def work() -> None:
            mc.add(self.masker.request(call, query=query, headers=headers, body=body, streamed=streamed,
                                       policy=policy, content_type=content_type), "request")
            if query_form_of_json_model(call) and mc.request_body is not None:
                # the service's model is JSON and names none of the form's members as the form does
                # (SQS as older SDKs send it): the masker cannot find a member in it, so the body is
                # not kept (the parameters, read into the model's names, are masked as usual)
                mc.request_body = None
                mc.notes.append("request: a Query form of a service whose model is JSON, whose members the masks "
                                "cannot find in it: body not kept")
            if getattr(call, "action", "unknown") == "unknown":
                # refused as unknown: no model says which of its members are secrets (an operation
                # newer than the models, a member the shape does not have, a query parameter a json
                # call has not): its body is not kept (its SHA-256 and size are), its query's values
                # are kept as fingerprints only
                if mc.request_body is not None:
                    mc.request_body = None
                    mc.notes.append("request: the call could not be classified, so no model says which of its "
                                    "members are secrets: body not kept")
                if query:
                    mc.query = self.masker.fingerprint_query(query)
            try:
                if call is not None and call.params:
                    params, counts = self.masker.params(call, policy)
                    if counts:
                        mc.params, mc.params_masked = params, True
                        mc.counts.update({("params",) + k[1:]: n for k, n in counts.items()})
                if call is not None and call.resources:
                    mc.resources = self.masker.resources(list(call.resources))
                masked_query = mc.query if mc.query is not None else query
                new_path, new_query, n = self.masker.url_parts(
                    path, masked_query, getattr(call, "params", None), mc.params if mc.params_masked else None)
                if n:
                    mc.path = new_path
                    mc.query = new_query if new_query != query else mc.query
                    mc.counts[("request.url", "*", "detectors or parameters")] += n
            except Exception as e:  # noqa: BLE001 - parameters that cannot be masked are not kept
                mc.params, mc.params_masked = None, True
                mc.notes.append(f"parameters: not masked ({type(e).__name__}), not kept")

        return work, len(body or b"")

    def mask_request(self, flow: http.HTTPFlow) -> None:
        work, _ = self._request_work(flow)
        if work is not None:
            work()

    async def _mask_request(self, flow: http.HTTPFlow) -> None:
        work, size = self._request_work(flow)
        if work is not None:
            await _run(size, work)

    def _refuse_a_part_of_a_masked_body(self, flow: http.HTTPFlow) -> None:
        """A rule masks the object's body for the agent (``mask_for_agent: [Body]``): a part of it
        (a Range, a part number) is refused, since a secret cut across parts passes the detectors
        in pieces, each piece kept in its record."""
        req = flow.request
        if flow.response is not None or not self.masker.names_payload(flow.metadata.get(CALL), self._for_agent(flow)):
            return
        query = req.path.partition("?")[2]
        asked = "a Range" if "range" in req.headers else "a part number" if "partnumber=" in query.lower() else None
        if asked is not None:
            call, decision, policies = flow.metadata.get(CALL), flow.metadata.get(DECISION), flow.metadata.get(POLICIES)
            by = policies.rules_masking(decision, lambda m: self.masker.names_payload(call, (m,))) \
                if policies is not None and decision is not None else []
            rules = f"rule{'s' if len(by) > 1 else ''} {', '.join(repr(r) for r in by)}" if by else "a rule"
            answer(flow, Refusal(403, "AccessDenied", f"agentgate masks this object's body for the agent ({rules}), "
                                 f"so it is read whole: {asked} is refused; read the object without it", "masking"))

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(STREAM) and flow.request.method != "CONNECT":
            self._refuse_a_part_of_a_masked_body(flow)
            await self._mask_request(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(STREAM):
            self._refuse_a_part_of_a_masked_body(flow)
            work, size = self._request_work(flow)
            if work is None:
                return
            if flow.response is not None or size > THREAD_OVER:
                await _run(size, work)
                return
            # The request's masked copy is for its record only: it is made once the request has gone
            # upstream (the loop's next turn), while upstream answers, or before, by whatever reads it first.
            mc = self.masked(flow)
            mc.pending = work
            asyncio.get_running_loop().call_soon(mc.finish)

    async def error(self, flow: http.HTTPFlow) -> None:
        if flow.request.method != "CONNECT":
            await self._mask_request(flow)

    # -- the response: the record's copy, and the agent's

    def _for_agent(self, flow: http.HTTPFlow) -> tuple[str, ...]:
        """The paths to mask in the agent's copy, only for responses that came from upstream: the
        policy's, and for a call that is not a read (List, Read), the curated secrets its answer
        echoes too: the shipped policies mask each in the reads that return it, and a write a rule
        allows (UpdateFunctionConfiguration answers with the function's environment) must not hand
        it over, as no rule can mask for it without allowing it."""
        if flow.metadata.get(REFUSAL) is not None or flow.metadata.get(SIGNED) is None:
            return ()
        paths = self.policy(flow)
        call = flow.metadata.get(CALL)
        if call is not None and getattr(call, "access_level", None) not in READS:
            echoed = self.masker.curated_outputs(call.service, call.operation)
            if echoed:
                paths = paths + tuple(p for p in echoed if p not in paths)
        return paths

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or resp.stream or not self._masks_for_agent(flow):
            return
        flow.metadata[HELD] = self.masker.parse_limit  # buffered whole (limits.py caps it), masked in ``response``

    def _masks_for_agent(self, flow: http.HTTPFlow) -> bool:
        """Whether policy names members of this response to mask in the agent's copy."""
        policy = self._for_agent(flow)
        return bool(policy) and self.masker.names_output(flow.metadata.get(CALL), policy)

    def _response_work(self, flow: http.HTTPFlow):
        """The response's masking, as ``_request_work``; the agent's copy is applied after it."""
        mc = self.masked(flow)
        resp = flow.response
        if mc.response_done or resp is None:
            return None, 0
        mc.response_done = True
        streamed = bool(resp.stream)
        try:
            headers = stage_header_pairs(flow, resp)
            body = None if streamed else _content(resp, headers, self.masker.parse_limit)
            scrubbed = scrub_jit_credentials(flow, body)
            if scrubbed is not body:  # for the agent too, masked or not
                flow.metadata[_response_digest()] = (hashlib.sha256(resp.raw_content or b"").hexdigest(),
                                                     len(resp.raw_content or b""))
                resp.content = body = scrubbed
                headers = stage_header_pairs(flow, resp)
                mc.notes.append("response: the gateway's own JIT credentials, which upstream echoed, replaced by "
                                f"{JIT_MARKER.decode()}")
            content_type = _header(headers, "content-type")
        except Exception as e:  # noqa: BLE001
            mc.notes.append(f"response: not masked: {type(e).__name__}")
            return None, 0
        call, status, policy = flow.metadata.get(CALL), resp.status_code, self._for_agent(flow)

        def work():
            part, copy = self.masker.response(call, status=status, headers=headers, body=body, streamed=streamed,
                                              policy=policy, content_type=content_type)
            if query_form_of_json_model(call) and body:
                # its answer is XML in the Query model's names, which the JSON model does not have:
                # no mask finds a member in it. Not kept; and withheld from an agent that policy
                # masks anything for (fail closed), since the masks would pass it unmasked
                part = dataclasses.replace(part, body=None, note="; ".join(n for n in (part.note, (
                    "an XML answer to a Query form of a service whose model is JSON, whose members the masks "
                    "cannot find in it: body not kept")) if n))
                if policy and self.masker.names_output(call, policy):
                    copy = AgentCopy(withheld="the answer to a Query form of this service cannot be masked (its model "
                                     "is JSON): send the call as JSON (a current SDK does)")
            mc.add(part, "response")
            return copy

        return work, len(body or b"")

    def _apply(self, flow: http.HTTPFlow, copy) -> None:
        if copy is None:
            return
        mc = self.masked(flow)
        if copy.withheld is not None:
            mc.notes.append(f"response: agent's copy not masked ({copy.withheld}): withheld from the agent")
            self._withhold(flow, copy.withheld)
            return
        try:
            self._seal_keys(flow, copy)
            flow.response = self._agent_response(flow, copy)
            mc.counts.update(copy.masked)
        except Exception as e:  # noqa: BLE001
            mc.notes.append(f"response: agent's copy not masked: {type(e).__name__}")
            if self._for_agent(flow):
                self._withhold(flow, type(e).__name__)

    def _seal_keys(self, flow: http.HTTPFlow, copy: AgentCopy) -> None:
        """A DynamoDB answer whose keys or items the agent sends back (a Query's or Scan's
        ``LastEvaluatedKey``, a BatchGetItem's ``UnprocessedKeys``, a BatchWriteItem's
        ``UnprocessedItems``) with an attribute masked for the agent: that attribute sealed instead
        (core.startkeys), so that the agent can ask for the next page or send them again. Left
        masked if it cannot be sealed."""
        call = flow.metadata.get(CALL)
        if (copy.body is None or getattr(call, "service", None) != "dynamodb"
                or getattr(call, "operation", None) not in SENT_BACK or flow.response.status_code != 200):
            return
        try:
            sealed = self.start_keys.seal_page(call.operation, call.params or {},
                                               getattr(flow.metadata.get(PRINCIPAL), "sub", None),
                                               flow.response.content or b"", copy.body)
        except Exception as e:  # noqa: BLE001 - the value stays masked: the agent cannot send it back, nor read it
            log.warning("a DynamoDB key or item could not be sealed (%s): it stays masked", type(e).__name__)
            return
        if sealed is not None:
            copy.body = sealed

    def _over_cap(self, flow: http.HTTPFlow) -> None:
        """A buffered response whose body passed its cap (addons/limits.py): the gateway kept only its
        SHA-256 and size, so the agent gets an error instead of a partial body."""
        sha256, size, cap = flow.metadata[OVER_CAP]
        mc = self.masked(flow)
        mc.response_done = True
        flow.metadata[_response_digest()] = (sha256, size)
        if flow.metadata.get(HELD):
            why = f"its body is over {cap} bytes, the most agentgate holds to mask"
            mc.notes.append(f"response: {why}: not kept, and withheld from the agent")
            self._withhold(flow, why)
            return
        mc.notes.append(f"response: over max_body_bytes ({cap}) without a declared length: not kept, and "
                        "withheld from the agent")
        refusal = Refusal(502, "ResponseTooLarge", f"upstream's response body passed {cap} bytes without a declared "
                          "length; agentgate holds such a body in memory to record it, and max_body_bytes bounds "
                          "that, so the response is withheld; the call itself went through", "masking")
        status, headers, body = render(refusal, getattr(flow.metadata.get(CALL), "protocol", None),
                                       _upstream_request_id(flow.response) or own_request_id(flow),
                                       flow.request.headers.get("content-type"))
        flow.response = http.Response.make(status, body, headers)

    def _withhold(self, flow: http.HTTPFlow, why: str) -> None:
        """Policy says the agent gets this response masked and masking failed: the agent gets an
        error instead of the secret (fail closed)."""
        refusal = Refusal(400, "ResponseWithheld", f"agentgate could not mask this response as policy requires "
                          f"({why}), so it is withheld; the call itself went through", "masking")
        status, headers, body = render(refusal, getattr(flow.metadata.get(CALL), "protocol", None),
                                       _upstream_request_id(flow.response) or own_request_id(flow),
                                       flow.request.headers.get("content-type"))
        if _response_digest() not in flow.metadata and flow.response is not None:
            raw = flow.response.raw_content or b""  # what upstream sent, for the record
            flow.metadata[_response_digest()] = (hashlib.sha256(raw).hexdigest(), len(raw))
        flow.response = http.Response.make(status, body, headers)

    def mask_response(self, flow: http.HTTPFlow) -> None:
        """The response hook's work, on the event loop whatever the size (tests, benchmarks)."""
        if flow.request.method == "CONNECT":
            return
        self.mask_request(flow)
        work, _ = self._response_work(flow)
        if work is not None:
            self._apply(flow, work())

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.request.method == "CONNECT":
            return
        await self._mask_request(flow)
        if flow.metadata.get(OVER_CAP) is not None:
            self._over_cap(flow)
            return
        work, size = self._response_work(flow)
        if work is not None and size > self.masker.parse_limit and self._masks_for_agent(flow):
            why = f"its body is over {self.masker.parse_limit} bytes, the most agentgate masks"
            self.masked(flow).notes.append(f"response: {why}: withheld from the agent")
            work()  # the record's copy (it keeps no body that large)
            self._withhold(flow, why)
            return
        if work is not None:
            try:
                copy = await _run(size, work)
            except Exception as e:  # noqa: BLE001 - masking never breaks the call
                self.masked(flow).notes.append(f"response: not masked: {type(e).__name__}")
                if self._for_agent(flow):
                    self._withhold(flow, type(e).__name__)
                return
            self._apply(flow, copy)

    def _agent_response(self, flow: http.HTTPFlow, copy) -> http.Response:
        upstream = flow.response
        raw = upstream.raw_content or b""
        new = upstream.copy()
        if copy.body is not None:
            new.headers.pop("transfer-encoding", None)  # sent whole, with its length
            new.content = copy.body
        for name, value in copy.headers.items():
            new.headers[name] = value
        if copy.body is not None:
            for name, value in checksum_headers(list(new.headers.keys()), new.raw_content or b"").items():
                if value is None:
                    new.headers.pop(name, None)
                else:
                    new.headers[name] = value
            flow.metadata[_response_digest()] = (hashlib.sha256(raw).hexdigest(), len(raw))
        return new


class SealedKeys:
    """Before a DynamoDB Query, Scan, BatchGetItem or BatchWriteItem is signed: the values of its
    ``ExclusiveStartKey`` or ``RequestItems`` that the agent was given sealed (``Masking._seal_keys``:
    a page's ``LastEvaluatedKey``, a batch's ``UnprocessedKeys`` or ``UnprocessedItems``), put back
    as upstream sent them; one sealed for another table, index, principal or place is refused."""

    def __init__(self, masking: Masking) -> None:
        self.keys = masking.start_keys

    def request(self, flow: http.HTTPFlow) -> None:
        if not due(flow, "request"):
            return
        call = flow.metadata.get(CALL)
        if getattr(call, "service", None) != "dynamodb" or call.operation not in SENT_BACK or not call.params:
            return
        try:
            members = self.keys.unseal_request(call.operation, call.params,
                                               getattr(flow.metadata.get(PRINCIPAL), "sub", None))
        except StartKeyError as e:
            if e.where == "ExclusiveStartKey":
                why = (f"ExclusiveStartKey's {e.attribute} is a start key agentgate sealed for another table, index "
                       "or principal, or it was altered; start from the LastEvaluatedKey of this table's (or "
                       "index's) last page")
            else:
                answered = "UnprocessedKeys" if call.operation == "BatchGetItem" else "UnprocessedItems"
                why = (f"{e.where}'s {e.attribute} is a value agentgate sealed for another table, principal or "
                       f"place, or it was altered; send this table's {answered} as the last {call.operation} "
                       "answered them")
            answer(flow, Refusal(400, "ValidationException", f"agentgate: {why}", "masking"))
            return
        if members is None:
            return
        body = json.loads(flow.request.content or b"{}")
        body.update(members)
        flow.request.content = json.dumps(body, separators=(",", ":")).encode()
        call.params.update(members)
