"""auth: who is calling. Validates the agent's OIDC token and attaches a Principal to each flow.

Transport A: the token is the password of the proxy URL, sent as ``Proxy-Authorization`` on
CONNECT; the token is remembered per client connection and checked again on every request (its
expiry, and the issuer's keys: one withdrawn, or past its cache lifetime while the issuer cannot
be reached, refuses the calls still made on that connection). Transport B: the token is the AWS
session token (``X-Amz-Security-Token``) of each request. A CONNECT without proxy credentials is
let through only to AWS hosts, and every request in it must then carry transport B's token. When
both are present they must name the same subject.
"""

from __future__ import annotations

import logging
import time
import weakref

from mitmproxy import http

from .core import identity
from .core.awserrors import Refusal
from .stage import AUTH, PRINCIPAL, REFUSAL, TOKEN, TUNNEL, refuse_connect

log = logging.getLogger("agentgate.auth")



class Auth:
    def __init__(self, validator: identity.TokenValidator | None) -> None:
        self.validator = validator
        # client connection -> (Principal, token) from transport A
        self.connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def _validate(self, token: str | None) -> identity.Principal:
        if self.validator is None:
            raise identity.TokenError("this gateway has no oidc_issuer configured, so it accepts no token", "unconfigured")
        if token:
            cached = self.validator.validate_cached(token)
            if cached is not None:
                return cached
        return await self.validator.validate(token)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:  # refused already (egress: where it asked to go): the record names who asked, if anyone
            await self._name_who_asked(flow)
            return
        if flow.metadata.get(TUNNEL) and not flow.request.headers.get("proxy-authorization"):
            refuse_connect(flow, 407, f"proxy credentials (the agent's token) are required to reach {flow.request.host}", "auth")
            return
        header = flow.request.headers.get("proxy-authorization")
        if not header:
            return  # AWS host: each request must then carry transport B's token
        token = identity.token_from_basic_auth(header)
        try:
            principal = await self._validate(token)
        except identity.TokenError as e:
            log.warning("refused CONNECT from %s: %s", flow.client_conn.peername, e.reason)
            refuse_connect(flow, 407, f"the agent's token was refused: {e.reason}", "auth")
            return
        flow.metadata[PRINCIPAL] = principal
        self.connections[flow.client_conn] = (principal, token)

    async def _name_who_asked(self, flow: http.HTTPFlow) -> None:
        """For the record of a request another stage refused (a CONNECT, for where it asked to go; a
        plain-HTTP proxy request, sent without one): the principal its proxy credentials name, when
        they are a valid token (the refusal stands either way, and nothing is kept)."""
        header = flow.request.headers.get("proxy-authorization")
        if not header:
            return
        try:
            flow.metadata[PRINCIPAL] = await self._validate(identity.token_from_basic_auth(header))
        except identity.TokenError:
            pass  # unnamed, as before: the refusal it got says where it asked to go, not who it is

    def _connection_principal(self, client) -> identity.Principal | None:
        """Who the connection's token (transport A) named at CONNECT, for a request refused before
        it could be read: not checked again, since nothing of it goes anywhere."""
        a = self.connections.get(client)
        return a[0] if a is not None else None

    def refused_head(self, data) -> None:
        """A request head refused before it was read as a request (addons/limits.py)."""
        data.principal = self._connection_principal(data.client)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            # answered already (egress: a plain-HTTP request in a tunnel to port 80 or sent without
            # CONNECT, a Host that is not AWS) or refused in mitmproxy's HTTP layer (its framing):
            # the record names who holds the connection, or else whom the request's own proxy
            # credentials name (a plain-HTTP proxy request carries them itself)
            if PRINCIPAL not in flow.metadata:
                if (principal := self._connection_principal(flow.client_conn)) is not None:
                    flow.metadata[PRINCIPAL] = principal
                else:
                    await self._name_who_asked(flow)
            return
        refusal = await self._authenticate(flow)
        if refusal is not None:
            flow.metadata[REFUSAL] = refusal

    async def _authenticate(self, flow: http.HTTPFlow) -> Refusal | None:
        a = self.connections.get(flow.client_conn)
        auth = flow.metadata.get(AUTH)
        token_b = auth.security_token if auth is not None else None
        principal_b = None
        if token_b:
            try:
                principal_b = await self._validate(token_b)
            except identity.TokenError as e:
                return _refusal(e)
        if a is not None:
            principal_a, token_a = a
            if principal_a.expired(time.time(), leeway=self.validator.leeway if self.validator else 0.0):
                return Refusal(403, "ExpiredToken", "the agent's token (proxy credentials) has expired; "
                               "reconnect with a fresh token", "auth")
            try:  # again on every request: the issuer's keys may have been withdrawn or outlived their cache lifetime
                principal_a = await self._validate(token_a)
            except identity.TokenError as e:
                return _refusal(e)
            if principal_b is not None and not identity.same_subject(principal_a, principal_b):
                flow.metadata[PRINCIPAL] = principal_a  # the record names who holds the tunnel; the reason, both
                return Refusal(403, "AccessDenied", "the proxy credentials and the AWS session token name different "
                               f"subjects ({principal_a.sub!r} and {principal_b.sub!r}); present one identity", "auth")
            flow.metadata[PRINCIPAL] = principal_b or principal_a
            flow.metadata[TOKEN] = token_b or token_a
            return None
        if principal_b is None:
            # no "token:" in the words: the recorder's masking reads "token: <word>" as a secret assigned
            return Refusal(403, "AccessDenied", "no token was presented; present the agent's OIDC token in the "
                           "proxy URL (HTTPS_PROXY=http://agent:<token>@gateway) or as the AWS session token "
                           "(agentgate aws-credentials)", "auth")
        flow.metadata[PRINCIPAL] = principal_b
        flow.metadata[TOKEN] = token_b
        return None


def _refusal(e: identity.TokenError) -> Refusal:
    if e.code == "issuer_unreachable":  # the token may be good: it cannot be checked now
        return Refusal(503, "ServiceUnavailable", f"agentgate cannot verify the agent's token right now: {e.reason}; "
                       "retry shortly", "auth")
    if e.code == "issuer_misconfigured":  # no token can be accepted until the setting changes: do not retry
        return Refusal(403, "AccessDenied", f"agentgate cannot verify any token until its configuration is corrected: "
                       f"{e.reason}", "auth")
    code = "ExpiredToken" if e.code == "expired" else "InvalidClientTokenId" if e.code in ("malformed", "missing") else "AccessDenied"
    return Refusal(403, code, f"the agent's token was refused: {e.reason}", "auth")

