"""signer: forwards. Gets JIT credentials for the decided role (core.credentials), strips the
agent's own auth, re-signs with botocore's signer (core.sigv4) and, when ``upstream`` is set,
re-targets the connection there while keeping the original Host. A streamed body starts flowing
upstream only after this stage has signed its headers."""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlsplit

from mitmproxy import http

from .core import endpoints, sigv4
from .core.awserrors import Refusal
from .core.credentials import CredentialBroker, CredentialError
from .stage import AUTH, BODY_DIGEST, CALL, DECISION, HOST, PRINCIPAL, SIGNED, TOKEN, answer, due

log = logging.getLogger("agentgate.signer")


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
        out = self.transform(data)
        # An empty piece mid-body would end a chunked upstream body early: send nothing instead.
        return out if out or not data else []


class Signer:
    def __init__(self, broker: CredentialBroker, upstream: str = "") -> None:
        self.broker = broker
        self.upstream = urlsplit(upstream) if upstream else None

    async def _run(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        call = flow.metadata[CALL]
        decision = flow.metadata[DECISION]
        principal = flow.metadata[PRINCIPAL]
        try:
            grant = await self.broker.grant(principal, decision.role, flow.metadata.get(TOKEN))
        except CredentialError as e:
            log.error("no credentials for %s: %s", principal.sub, e)
            answer(flow, Refusal(403, "AccessDenied", f"agentgate could not obtain credentials: {e}", "signer"))
            return
        if flow.response:  # answered while we waited (client gone, shutdown)
            return
        host = flow.metadata.get(HOST) or req.host_header or req.host
        bare_host = host if host.startswith("[") else host.rsplit(":", 1)[0]
        auth = flow.metadata.get(AUTH)
        region = sigv4.region_for(auth, bare_host) if auth is not None else call.region
        info = endpoints.parse_host(bare_host)
        signing_name = (auth.service if auth is not None else None) or call.signing_name or (info.endpoint_prefix if info else None)
        if not signing_name:
            answer(flow, Refusal(403, "AccessDenied", "agentgate cannot tell which AWS service this request is for, "
                                 "so it cannot sign it", "signer"))
            return
        path, _, query = req.path.partition("?")
        streamed = bool(req.stream) or flow.metadata.get("agentgate.stream")
        try:
            signed = sigv4.resign(
                req.method, host, path, query, list(req.headers.items(multi=True)),
                None if streamed else req.raw_content,
                credentials=grant.credentials, region=region, signing_name=signing_name,
            )
        except ValueError as e:
            answer(flow, Refusal(400, "InvalidRequest", f"agentgate cannot re-sign this request: {e}", "signer"))
            return
        req.headers = http.Headers([(k.encode(), v.encode()) for k, v in signed.headers])
        req.path = signed.path + (f"?{signed.query}" if signed.query else "")
        if streamed:
            req.stream = BodyDigest(flow, signed.body_transform)
        if self.upstream is not None:
            req.scheme = self.upstream.scheme
            req.data.host = self.upstream.hostname or "127.0.0.1"
            req.data.port = self.upstream.port or (443 if self.upstream.scheme == "https" else 80)
        flow.metadata[SIGNED] = grant

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
