"""egress: where a connection may go, what a request may look like, and whether its body streams.

At CONNECT: AWS hosts (from botocore's partition data) are intercepted; hosts on ``allow_hosts``
are tunnelled untouched (no TLS interception) and logged as connections; everything else is
refused. Plain HTTP proxy requests (``GET http://…`` to the proxy) are refused: agents reach AWS
over HTTPS.

Destinations (core.destinations): an address that is loopback, link-local, cloud metadata,
private, unspecified, multicast or reserved is refused unless ``allow_private`` allows it, whether
it is named directly or reached through a DNS name that resolves there. A name is resolved once,
off the event loop, every address it has is judged, and the connection is made to the address that
was judged (the name stays in TLS SNI and in Host), so a second resolution cannot rebind it. An
``allow_hosts`` tunnel is judged at CONNECT; an intercepted call is judged before it goes anywhere,
once per agent connection, unless ``upstream`` is set: then every AWS call goes to the endpoint the
operator chose. ``server_connect`` judges any other connection the proxy would open.

Requests inside a tunnel: origin-form only (no ``GET http://host/`` inside TLS), no control
characters in header values, a head (request line and headers) of at most ``max_header_bytes``
and a URL of at most ``max_url_bytes``; refused with an AWS-shaped 4xx naming the cap and a record.
A request whose body is read into memory (no declared payload hash) may carry at most
``max_body_bytes`` (enforced in mitmproxy's HTTP layer: addons/limits.py, which also refuses
ambiguous framing that mitmproxy's parser would let through).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import weakref
from urllib.parse import urlsplit

from mitmproxy import exceptions, http, tls
from mitmproxy.proxy import layers, server_hooks
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.utils import human

from . import closing, h2buffers, limits, reads
from .core import destinations, endpoints, sigv4
from .core.awserrors import Refusal
from .stage import AUTH, HOST, REFUSAL, STREAM, TUNNEL, answer, header_pairs, refuse_connect

log = logging.getLogger("agentgate.egress")

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_URL_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but horizontal tab
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f]")  # whitespace or CTLs: no HTTP/1 request line holds them
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # an HTTP token (RFC 9110), as a request line needs


def host_matches(host: str, port: int, patterns: list[str]) -> bool:
    """``host`` or ``host:port`` against glob patterns (``*.example.com``, ``pypi.org:443``)."""
    h = host.strip("[]").lower()
    for p in patterns:
        p = p.lower()
        if ":" in p and not p.startswith("["):
            ph, _, pp = p.rpartition(":")
            if pp.isdigit() and int(pp) != port:
                continue
            p = ph
        if fnmatch.fnmatchcase(h, p):
            return True
    return False


def connect_verdict(host: str, port: int, allow_hosts: list[str],
                    allowed: list[destinations.Allowed]) -> tuple[str, str]:
    """("intercept" | "tunnel" | "refuse", reason) for a CONNECT to host:port, before any lookup."""
    early = destinations.check_name(host.strip("[]"), port, allowed)
    if early is not None and early.refusal:
        return "refuse", early.refusal
    if endpoints.is_aws_host(host):
        return "intercept", ""
    if host_matches(host, port, allow_hosts):
        return "tunnel", ""
    return "refuse", (
        f"{host}:{port} is not an AWS endpoint and not on this gateway's allow_hosts; "
        "ask the operator to add it if the agent needs it"
    )


def head_size(method: bytes, target: bytes, version: bytes, fields) -> int:
    """Bytes of an HTTP/1 request head as it came: request line, header lines, blank line."""
    return len(method) + len(target) + len(version) + 4 + sum(len(k) + len(v) + 4 for k, v in fields) + 2


def _cap_message(what: str, size: int, name: str, cap: int) -> str:
    return (f"{what} is {size} bytes, over this gateway's {name} ({cap}); an operator can raise it "
            f"({name} in agentgate.toml, or AGENTGATE_{name.upper()})")


def shape_problem(req: http.Request, max_header_bytes: int, max_url_bytes: int) -> Refusal | None:
    """What makes a request inside a tunnel unfit to forward, or None."""
    if req.authority and not (req.is_http2 or req.is_http3):
        return Refusal(400, "InvalidRequest", f"an absolute-form request target (http(s)://{req.authority}/…) is "
                       "refused inside the tunnel: send the path only (origin-form), as HTTPS clients do", "egress")
    if not req.path.startswith("/"):
        return Refusal(400, "InvalidRequest", "the request target must be a path starting with /", "egress")
    if not _METHOD.fullmatch(req.data.method):  # an HTTP/2 :method may be any bytes
        return Refusal(400, "InvalidRequest", f"the request method {req.data.method[:40]!r} is not an HTTP token; "
                       "agentgate refuses it so that no server behind it reads another request line than it did",
                       "egress")
    if (m := _TARGET_BAD.search(req.data.path)) is not None:  # an HTTP/2 :path may hold them; HTTP/1 upstream reads them apart
        return Refusal(400, "InvalidRequest", f"the request target holds a space or control character "
                       f"(0x{m.group()[0]:02x}); agentgate refuses it so that no server behind it reads another "
                       "request line than it did", "egress")
    url = len(req.data.path)
    if url > max_url_bytes:
        return Refusal(414, "RequestURITooLong", _cap_message("the request's URL", url, "max_url_bytes", max_url_bytes),
                       "egress")
    size = head_size(req.data.method, req.data.path, req.data.http_version, req.headers.fields)
    if size > max_header_bytes:
        return Refusal(431, "RequestHeaderSectionTooLarge",
                       _cap_message("the request's head (request line and headers)", size, "max_header_bytes",
                                    max_header_bytes), "egress")
    codings = []
    amz: set[bytes] = set()
    for name, value in req.headers.fields:
        if (name[:6].lower() == b"x-amz-" and name[6:11].lower() != b"meta-") or (
                len(name) == 12 and name.lower() == b"content-type"):
            # a member header given twice (x-amz-copy-source, x-amz-bypass-governance-retention, ...):
            # policy would read the two joined, a service perhaps one of them; and Content-Type,
            # by which a service reads its body (JSON, a form) and S3 stores an object's type
            lower = name.lower()
            if lower in amz:
                return Refusal(400, "InvalidRequest", f"header {name.decode(errors='replace')[:60]} is given more than "
                               "once: which one the service acts on is not known, so agentgate decides neither",
                               "egress")
            amz.add(lower)
        if len(name) == 7 and name.lower() == b"upgrade":
            # a WebSocket handshake (or h2c): once the connection switches, what it carries are no
            # longer calls any stage reads, decides, masks or records (mitmproxy would relay them)
            shown = value.decode(errors="replace")[:40]
            return Refusal(400, "InvalidRequest", f"the request asks to switch its connection to another protocol "
                           f"(Upgrade: {shown}); agentgate carries AWS calls, each read, decided and recorded, and "
                           "what a switched connection carries would be none of that, so it refuses the switch",
                           "egress")
        if len(name) == 6 and name.lower() == b"action":
            # no AWS API reads an operation from a header, but moto, an upstream for tests and
            # sandboxes, reads one from an Action header before the path
            return Refusal(400, "InvalidRequest", "a header named Action names an operation beside the one the "
                           "request is decided as; agentgate refuses it", "egress")
        if (m := _CONTROL.search(value)) is not None:
            return Refusal(400, "InvalidRequest", f"header {name.decode(errors='replace')} carries a control character "
                           f"(0x{m.group()[0]:02x}); agentgate refuses it so that no server behind it reads other "
                           "headers than it did", "egress")
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            codings.append(value)
    # mitmproxy also reads "gzip, chunked" (a coding, then chunked); HTTP/2 has no Transfer-Encoding
    if codings and [c.strip().lower() for c in codings] != [b"chunked"] and not (req.is_http2 or req.is_http3):
        shown = b", ".join(codings).decode(errors="replace")[:80]
        return Refusal(400, "InvalidRequest", f"the request's transfer-encoding is {shown!r}: agentgate takes chunked "
                       "alone, so that no server behind it reads another body than it did", "egress")
    return None


def _elsewhere(host: str, target: str, sni: str | None) -> Refusal | None:
    """A request inside a tunnel whose Host (or HTTP/2 :authority), or whose TLS server name, is not
    the host the tunnel was opened to: it would be decided and signed for one host and sent to
    another (the CONNECT's), which an agent could own (an execute-api or *.on.aws endpoint) and
    collect signed requests and unmasked answers at."""
    tunnel = target.lower().rstrip(".")
    for what, name in (("Host", host), ("TLS server name", sni)):
        if name and name.lower().rstrip(".") != tunnel:
            return Refusal(400, "InvalidRequest", f"the request's {what} ({name[:100]}) is not the host its tunnel "
                           f"was opened to ({target[:100]}); agentgate sends a call only where the CONNECT said, "
                           "and decides and signs it for that host", "egress")
    return None


def _refuse_connect(flow: http.HTTPFlow, status: int, code: str, reason: str) -> None:
    """Answer a CONNECT with ``status``, the reason in the body and a header (like stage.refuse_connect)."""
    flow.metadata[REFUSAL] = Refusal(status, code, reason, "egress")
    flow.response = http.Response.make(status, f"agentgate: {reason}\n", {
        "content-type": "text/plain; charset=utf-8", "x-agentgate-reason": reason})


class Egress:
    def __init__(self, allow_hosts: list[str] | None = None, allow_private: list[str] | None = None, *,
                 upstream: str = "", max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_url_bytes: int = DEFAULT_MAX_URL_BYTES, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.tunnelled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.allow_hosts = list(allow_hosts or [])
        self.allowed = destinations.parse_allowed(list(allow_private or []))
        u = urlsplit(upstream) if upstream else None
        self.upstream = (u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)) if u else None
        self.caps = {"max_header_bytes": max_header_bytes, "max_url_bytes": max_url_bytes,
                     "max_body_bytes": max_body_bytes}  # as the options say once configured
        # client connection -> {(host, port) as the proxy will ask to connect: (checked address, name)}
        self.pins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # client connection -> {(host, port): Verdict} of intercepted destinations, judged once per connection
        self.judged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def from_settings(cls, settings) -> "Egress":
        return cls(settings.allow_hosts, settings.allow_private, upstream=settings.upstream,
                   max_header_bytes=settings.max_header_bytes, max_url_bytes=settings.max_url_bytes,
                   max_body_bytes=settings.max_body_bytes)

    # -- options ---------------------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option("max_header_bytes", int, self.caps["max_header_bytes"],
                          "Bytes a request head (request line and headers) may take; larger ones are refused (431).")
        loader.add_option("max_url_bytes", int, self.caps["max_url_bytes"],
                          "Bytes a request URL may take; longer ones are refused (414).")
        loader.add_option("max_body_bytes", int, self.caps["max_body_bytes"],
                          "Bytes of a request body read into memory (no declared payload hash); larger ones are "
                          "refused (413). Streamed bodies are not capped.")
        limits.install()
        closing.install()  # a connection limits (or any layer) closes from a hook's task is closed
        reads.install()  # a read takes what has arrived, not 64 KiB at most
        h2buffers.install()  # an HTTP/2 agent's answer is read from upstream no faster than the agent takes it

    def configure(self, updated) -> None:
        from mitmproxy import ctx

        for name in self.caps:
            if name in updated:
                value = getattr(ctx.options, name)
                if value <= 0:
                    raise exceptions.OptionsError(f"{name} must be a positive number of bytes, not {value}")
                self.caps[name] = value

    def _cap(self, name: str) -> int:
        return self.caps[name]

    # -- CONNECT ---------------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host, port = req.host, req.port
        size = head_size(req.data.method, req.data.authority, req.data.http_version, req.headers.fields)
        if size > (cap := self._cap("max_header_bytes")):
            reason = _cap_message("the CONNECT request's head", size, "max_header_bytes", cap)
            log.warning("refused CONNECT from %s to %s:%s: %s", human.format_address(flow.client_conn.peername), host, port, reason)
            _refuse_connect(flow, 431, "RequestHeaderSectionTooLarge", reason)
            return
        verdict, reason = connect_verdict(host, port, self.allow_hosts, self.allowed)
        if verdict == "refuse":
            log.warning("refused CONNECT from %s to %s:%s: %s", human.format_address(flow.client_conn.peername), host, port, reason)
            refuse_connect(flow, 403, reason, "egress")
            return
        if verdict == "intercept":
            return
        flow.metadata[TUNNEL] = True
        self.tunnelled[flow.client_conn] = True
        if not req.headers.get("proxy-authorization"):
            return  # the auth stage refuses it (407) before anything is looked up
        checked = await destinations.check(host, port, self.allowed)
        if not checked.ok:
            reason = checked.refusal or f"agentgate cannot reach {host}:{port}: {checked.unresolved}"
            log.warning("refused CONNECT from %s to %s:%s: %s", human.format_address(flow.client_conn.peername), host, port, reason)
            if checked.refusal:
                refuse_connect(flow, 403, reason, "egress")
            else:
                _refuse_connect(flow, 502, "BadGateway", reason)
            return
        self._pin(flow.client_conn, (host, port), checked.address, host)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.tunnelled.get(data.context.client):
            data.ignore_connection = True

    def next_layer(self, nextlayer) -> None:
        """Inside an intercepted tunnel, HTTP only. mitmproxy's next_layer (its ``rawtcp`` option)
        takes a tunnel whose first bytes are too few to look like a request line (fewer than three,
        no space yet: a slow client, one that writes its verb on its own) for another protocol and
        relays it raw to the host: nothing of it would be read, decided, signed or recorded, and
        an agent could reach AWS with keys of its own. Such a tunnel is read as HTTP instead (a
        request that is not HTTP gets a 400); tunnels to ``allow_hosts`` stay untouched."""
        if isinstance(nextlayer.layer, layers.TCPLayer) and not self.tunnelled.get(nextlayer.context.client):
            nextlayer.layer = layers.HttpLayer(nextlayer.context, HTTPMode.transparent)

    # -- requests --------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.error is not None:  # mitmproxy refused its framing (Content-Length and Transfer-Encoding, …)
            if flow.request.method.upper() == "CONNECT":  # mitmproxy's words are about its own modes
                reason = ("a CONNECT inside a tunnel is refused: the tunnel carries AWS calls to the host it was "
                          "opened to, and agentgate opens no tunnel within it")
            else:
                reason = (f"the request's framing is ambiguous ({_framing_problem(flow.error.msg)}); agentgate refuses "
                          "it so that no server behind it reads another request than it did")
            flow.metadata[REFUSAL] = Refusal(400, "InvalidRequest", reason, "egress")
            flow.error.msg = reason
            log.warning("refused a request from %s: %s", human.format_address(flow.client_conn.peername), reason)
            return
        if flow.response:
            return
        req = flow.request
        host = flow.metadata[HOST] = req.host_header or req.host
        if not flow.client_conn.tls:
            answer(flow, Refusal(403, "Forbidden", "agentgate forwards AWS calls over HTTPS only (CONNECT); "
                                 "plain HTTP proxy requests are refused", "egress"))
            return
        host = host if host.startswith("[") else host.rsplit(":", 1)[0]
        if not endpoints.is_aws_host(host):
            answer(flow, Refusal(403, "Forbidden", f"{host} is not an AWS endpoint; this connection only carries AWS calls", "egress"))
            return
        path, _, query = req.path.partition("?")
        pairs = header_pairs(flow, req)
        auth = sigv4.parse_auth(req.method, path, query, pairs)
        flow.metadata[AUTH] = auth
        flow.metadata[STREAM] = sigv4.streams(auth, pairs)
        problem = shape_problem(req, self._cap("max_header_bytes"), self._cap("max_url_bytes")) or _elsewhere(
            host, req.host, flow.client_conn.sni)
        if problem is None and auth.error and auth.kind in sigv4.SCOPED_KINDS:
            # a SigV4 signature that cannot be read one way (a Credential given twice, a scope of the
            # wrong shape): its scope could decide one region or service and another be signed for
            problem = Refusal(400, "IncompleteSignature", f"the request's signature cannot be read: {auth.error}; "
                              "agentgate decides and signs a call by its one credential scope", "egress")
        if problem is None and auth.presigned and (why := sigv4.expired(auth)) is not None:
            problem = Refusal(403, "AccessDenied", why, "egress")  # AWS would refuse it so; the new signature would not
        if problem is not None:
            log.warning("refused %s from %s: %s", req.method, human.format_address(flow.client_conn.peername), problem.message)
            flow.metadata[REFUSAL] = problem  # answered once the protocol is known (classify), after auth named who asked
            return
        if self.upstream is None:
            await self._judge_destination(flow)

    async def _judge_destination(self, flow: http.HTTPFlow) -> None:
        """Check where this call would go (the tunnel's host) and pin it there, or refuse it."""
        req = flow.request
        key = (req.host, req.port)
        judged = self.judged.setdefault(flow.client_conn, {})
        verdict = judged.get(key)
        if verdict is None:
            verdict = judged[key] = await destinations.check(req.host, req.port, self.allowed)
        if not verdict.ok:
            if verdict.refusal:
                refusal = Refusal(403, "AccessDenied", f"agentgate refused to connect: {verdict.refusal}", "egress")
            else:
                refusal = Refusal(503, "ServiceUnavailable", f"agentgate cannot reach {req.host}:{req.port}: "
                                  f"{verdict.unresolved}; retry shortly", "egress", outcome="failed")
            log.warning("refused %s %s from %s: %s", req.method, req.host, human.format_address(flow.client_conn.peername), refusal.message)
            # answered once the protocol is known (classify), after auth has named who asked
            flow.metadata[REFUSAL] = refusal
            return
        self._pin(flow.client_conn, (verdict.address, req.port), verdict.address, req.host)
        req.data.host = verdict.address  # Host and TLS SNI keep the name (server_connect)

    def error(self, flow: http.HTTPFlow) -> None:
        """A request the HTTP/1 layer refused with 400 mid-body (addons/limits.py): recorded as refused."""
        if flow.error is None or not flow.error.msg.startswith(limits.REFUSED) or flow.response is not None:
            return
        reason = flow.error.msg[len(limits.REFUSED):]
        flow.metadata[REFUSAL] = Refusal(400, "InvalidRequest", reason, "egress")
        flow.error.msg = reason

    # -- the connection itself -------------------------------------------------------------------

    def _pin(self, client, asked: tuple[str, int], address: str, name: str) -> None:
        self.pins.setdefault(client, {})[asked] = (address, name)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.error or not server.address:
            return
        host, port = server.address[0], server.address[1]
        pinned = self.pins.get(data.client, {}).get((host, port))
        if pinned is not None:
            address, name = pinned
            server.address = (address, port)
            if server.sni is None or server.sni == address:
                server.sni = data.client.sni or name
            return
        if self.upstream is not None and (host, port) == self.upstream:
            return  # the endpoint the operator chose for all AWS traffic
        verdict = await destinations.check(host, port, self.allowed)
        if not verdict.ok:
            server.error = verdict.refusal or f"cannot reach {host}:{port}: {verdict.unresolved}"
            log.warning("refused a connection to %s:%s for %s: %s", host, port, human.format_address(data.client.peername), server.error)
            return
        if verdict.address != host:
            server.address = (verdict.address, port)
            if server.sni is None:
                server.sni = host


def _framing_problem(msg: str) -> str:
    """mitmproxy's validation message without its advice (which is about mitmproxy's own options)."""
    m = re.match(r"Received (.*) from client, refusing", msg)
    return m.group(1) if m else msg
