"""signer: forwards. Gets JIT credentials for the decided role (core.credentials), strips the
agent's own auth, re-signs with botocore's signer (core.sigv4) and, when ``upstream`` is set,
re-targets the connection there while keeping the original Host. A streamed body starts flowing
upstream only after this stage has signed its headers.

Upstream gets ``upstream_timeout`` seconds, from the end of the request body, to send its response
headers; past that the gateway closes the upstream connection, the agent gets a 502 (which SDKs
retry) and the record says the call failed and why. mitmproxy itself has no such bound (its
``tcp_timeout`` only closes idle client connections)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from urllib.parse import urlsplit

from mitmproxy import ctx, http

from . import failures
from .core import endpoints, sigv4
from .core.awserrors import Refusal
from .core.credentials import CredentialBroker, CredentialError
from .stage import (AUTH, BODY_DIGEST, CALL, DECISION, HOST, PRINCIPAL, RELEASED, SIGNED, TOKEN, answer, due,
                    header_pairs)

log = logging.getLogger("agentgate.signer")

TIMED_OUT = "agentgate.upstream_timeout"  # set on a flow whose upstream did not answer in time
BODY_ERROR = "agentgate.body_error"  # why a streamed body could not be re-signed


class BodyDigest:
    """A mitmproxy stream callable: passes chunks through ``transform`` (if any) and keeps the
    SHA-256 and size of what the agent sent, for the record."""

    def __init__(self, flow: http.HTTPFlow, transform=None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.transform = transform
        self.flow = flow

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        self.sha.update(data)
        self.size += len(data)
        if not data:
            self.flow.metadata[BODY_DIGEST] = (self.sha.hexdigest(), self.size)
        if self.transform is None:
            return data
        if BODY_ERROR in self.flow.metadata:
            return []
        try:
            out = self.transform(data)
        except ValueError as e:
            # A malformed body cannot be re-signed: nothing more goes upstream, and the upstream
            # connection is closed so the call ends as failed (and is recorded) instead of hanging.
            self.flow.metadata[BODY_ERROR] = f"agentgate cannot re-sign this request body: {e}"
            log.warning("%s: closing the upstream connection", self.flow.metadata[BODY_ERROR])
            close_upstream(self.flow)
            return []
        # An empty piece mid-body would end a chunked upstream body early: send nothing instead.
        return out if out or not data else []


def forwardable(call, decision, principal, released) -> bool:
    """May a call go upstream? Only with a principal, a classification and a decision that allows
    it: ``allow``, or ``approve`` released by the approval stage."""
    if call is None or principal is None or decision is None:
        return False
    return decision.decision == "allow" or (decision.decision == "approve" and bool(released))


def frame_for_http1(req: http.Request, streamed: bool) -> None:
    """An HTTP/2 (or 3) request goes upstream as HTTP/1.1, where a body needs framing that HTTP/2
    does not: mitmproxy sends the head as it is, so a body without Content-Length would be read
    upstream as the start of another request (unsigned, undecided, unrecorded). A buffered body
    gets its Content-Length, a streamed one chunked transfer coding (mitmproxy then chunks it)."""
    if "content-length" in req.headers or "transfer-encoding" in req.headers:
        return
    if streamed:
        req.headers["transfer-encoding"] = "chunked"
    elif req.raw_content or req.method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
        req.headers["content-length"] = str(len(req.raw_content or b""))


class Signer:
    def __init__(self, broker: CredentialBroker, upstream: str = "", upstream_timeout: float = 0.0) -> None:
        self.broker = broker
        self.upstream = urlsplit(upstream) if upstream else None
        self.upstream_timeout = upstream_timeout  # seconds; 0: no bound
        self.timers: dict[str, asyncio.TimerHandle] = {}  # flow id -> its upstream deadline

    def load(self, loader) -> None:
        failures.install()  # a call that fails on its way upstream is answered AWS-shaped

    async def _run(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        call = flow.metadata.get(CALL)
        decision = flow.metadata.get(DECISION)
        principal = flow.metadata.get(PRINCIPAL)
        if not forwardable(call, decision, principal, flow.metadata.get(RELEASED)):
            # Every earlier stage must have passed the call; if one failed without answering it,
            # nothing goes upstream (fail closed).
            log.error("refusing to sign %s %s: no allow decision for it", req.method, req.pretty_url)
            answer(flow, Refusal(500, "InternalFailure", "agentgate has no decision allowing this call, so it is not "
                                 "forwarded; the gateway's log has the details", "signer"))
            return
        try:
            grant = await self.broker.grant(principal, decision.role, flow.metadata.get(TOKEN))
        except CredentialError as e:
            log.error("no credentials for %s: %s", principal.sub, e)
            if e.unavailable:  # not the agent's fault, and a retry may succeed
                answer(flow, Refusal(503, "ServiceUnavailable", f"agentgate could not obtain credentials: {e}; "
                                     "retry shortly", "signer"))
            else:
                answer(flow, Refusal(403, "AccessDenied", f"agentgate could not obtain credentials: {e}", "signer"))
            return
        if flow.response:  # answered while we waited (client gone, shutdown)
            return
        host = flow.metadata.get(HOST) or req.host_header or req.host
        bare_host = host if host.startswith("[") else host.rsplit(":", 1)[0]
        auth = flow.metadata.get(AUTH)
        # signed for the region and service the call was decided for, whatever else the request says
        region = call.region or (sigv4.region_for(auth, bare_host) if auth is not None else None)
        info = endpoints.parse_host(bare_host)
        signing_name = call.signing_name or (auth.service if auth is not None else None) or (
            info.endpoint_prefix if info else None)
        if not signing_name:
            answer(flow, Refusal(403, "AccessDenied", "agentgate cannot tell which AWS service this request is for, "
                                 "so it cannot sign it", "signer"))
            return
        path, _, query = req.path.partition("?")
        streamed = bool(req.stream) or flow.metadata.get("agentgate.stream")
        try:
            signed = sigv4.resign(
                req.method, host, path, query, header_pairs(flow, req),
                None if streamed else req.raw_content,
                credentials=grant.credentials, region=region, signing_name=signing_name, auth=auth,
            )
        except ValueError as e:
            answer(flow, Refusal(400, "InvalidRequest", f"agentgate cannot re-sign this request: {e}", "signer"))
            return
        # mitmproxy decodes header bytes with surrogateescape: encode them back to the bytes sent (set
        # as the Headers' fields: bytes pairs, as mitmproxy's Headers keep them, without its per-field checks)
        req.headers.fields = tuple((k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                                   for k, v in signed.headers)
        req.path = signed.path + (f"?{signed.query}" if signed.query else "")
        if streamed:
            req.stream = BodyDigest(flow, signed.body_transform)
        if req.is_http2 or req.is_http3:
            frame_for_http1(req, streamed)
        if self.upstream is not None:
            req.scheme = self.upstream.scheme
            req.data.host = self.upstream.hostname or "127.0.0.1"
            req.data.port = self.upstream.port or (443 if self.upstream.scheme == "https" else 80)
        flow.metadata[SIGNED] = grant

    # -- the upstream deadline

    def _arm(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        self.timers[flow.id] = asyncio.get_running_loop().call_later(self.upstream_timeout, self._expire, flow)

    def _disarm(self, flow: http.HTTPFlow) -> None:
        timer = self.timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow) -> None:
        self.timers.pop(flow.id, None)
        if flow.response is not None or flow.error is not None or not flow.live:
            return
        flow.metadata[TIMED_OUT] = True
        host = flow.metadata.get(HOST) or flow.request.host_header
        log.warning("upstream did not answer %s %s%s within %g s: closing the upstream connection",
                    flow.request.method, host, flow.request.path.partition("?")[0], self.upstream_timeout)
        close_upstream(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        if flow.metadata.get(BODY_ERROR) and flow.error is not None:  # the record says why, not "server closed"
            flow.error.msg = flow.metadata[BODY_ERROR]
        elif flow.metadata.get(TIMED_OUT) and flow.error is not None:  # the record says why, not "server closed"
            flow.error.msg = (f"upstream did not answer within {self.upstream_timeout:g} s (upstream_timeout); "
                              "agentgate closed the upstream connection")

    def response(self, flow: http.HTTPFlow) -> None:
        # An upstream that closes its connections (moto does) must not end the agent's tunnel:
        # Connection is hop-by-hop. mitmproxy's upstream side keeps the original response (and
        # closes that connection); the agent gets a copy without the header.
        resp = flow.response
        if resp is not None and not resp.stream and flow.metadata.get(SIGNED) is not None \
                and resp.headers.get("connection", "").lower() == "close":
            copy = resp.copy()
            del copy.headers["connection"]
            flow.response = copy

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            await self._run(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            await self._run(flow)
        # The request is whole now (a streamed body has passed): upstream's time starts.
        if self.upstream_timeout > 0 and flow.metadata.get(SIGNED) is not None and not flow.response and not flow.error:
            self._arm(flow)


def close_upstream(flow: http.HTTPFlow) -> bool:
    """Close the upstream connection ``flow`` waits on (or is still opening), so mitmproxy ends the
    flow as failed. mitmproxy cannot kill a flow in transit (its issue 4711), so this cancels the
    connection's task in the proxy server, as a server that hung up would end it."""
    proxyserver = ctx.master.addons.get("proxyserver") if ctx.master is not None else None
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver is not None else None
    if handler is None:
        return False
    io = handler.transports.get(flow.server_conn)
    if io is not None and io.handler is not None and flow.server_conn.address == (flow.request.host, flow.request.port):
        io.handler.cancel("upstream timeout")
        return True
    opening = [io for conn, io in handler.transports.items()  # not connected yet: flow.server_conn is not it
               if conn is not flow.client_conn and conn.address == (flow.request.host, flow.request.port)
               and conn.timestamp_tcp_setup is None and io.handler is not None]
    for io in opening:
        io.handler.cancel("upstream timeout")
    return bool(opening)
