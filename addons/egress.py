"""egress: where a connection may go, and whether a request's body streams.

AWS hosts (from botocore's partition data) are intercepted; hosts on ``allow_hosts`` are tunnelled
untouched (no TLS interception) and logged as connections; everything else is refused at CONNECT.
Loopback, link-local and metadata addresses are refused unless named in ``allow_private``. Plain
HTTP proxy requests are refused: agents reach AWS over HTTPS.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import weakref

from mitmproxy import http, tls

from .core import endpoints, sigv4
from .core.awserrors import Refusal
from .stage import AUTH, HOST, REFUSAL, STREAM, TUNNEL, answer, refuse_connect

log = logging.getLogger("agentgate.egress")


METADATA_HOSTS = {"169.254.169.254", "fd00:ec2::254", "169.254.170.2", "metadata.google.internal"}


def private_address(host: str) -> bool:
    """True for loopback, link-local, metadata and unspecified addresses (IP literals and localhost)."""
    h = host.strip("[]").lower()
    if h in METADATA_HOSTS or h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


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


def connect_verdict(host: str, port: int, allow_hosts: list[str], allow_private: list[str]) -> tuple[str, str]:
    """("intercept" | "tunnel" | "refuse", reason) for a CONNECT to host:port."""
    if private_address(host) and not host_matches(host, port, allow_private):
        return "refuse", (
            f"connections to {host} (loopback, link-local or metadata address) are refused; "
            "an operator can allow it with allow_private"
        )
    if endpoints.is_aws_host(host):
        return "intercept", ""
    if host_matches(host, port, allow_hosts):
        return "tunnel", ""
    return "refuse", (
        f"{host}:{port} is not an AWS endpoint and not on this gateway's allow_hosts; "
        "ask the operator to add it if the agent needs it"
    )



class Egress:
    def __init__(self, allow_hosts: list[str] | None = None, allow_private: list[str] | None = None) -> None:
        self.tunnelled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.allow_hosts = list(allow_hosts or [])
        self.allow_private = list(allow_private or [])

    def http_connect(self, flow: http.HTTPFlow) -> None:
        host, port = flow.request.host, flow.request.port
        verdict, reason = connect_verdict(host, port, self.allow_hosts, self.allow_private)
        if verdict == "refuse":
            log.warning("refused CONNECT from %s to %s:%s: %s", flow.client_conn.peername, host, port, reason)
            refuse_connect(flow, 403, reason, "egress")
        elif verdict == "tunnel":
            flow.metadata[TUNNEL] = True
            self.tunnelled[flow.client_conn] = True

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.tunnelled.get(data.context.client):
            data.ignore_connection = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        req = flow.request
        flow.metadata[HOST] = req.host_header or req.host
        if not flow.client_conn.tls:
            answer(flow, Refusal(403, "Forbidden", "agentgate forwards AWS calls over HTTPS only (CONNECT); "
                                 "plain HTTP proxy requests are refused", "egress"))
            return
        host = req.host_header or req.host
        host = host if host.startswith("[") else host.rsplit(":", 1)[0]
        if not endpoints.is_aws_host(host):
            answer(flow, Refusal(403, "Forbidden", f"{host} is not an AWS endpoint; this connection only carries AWS calls", "egress"))
            return
        path, _, query = req.path.partition("?")
        auth = sigv4.parse_auth(req.method, path, query, req.headers)
        flow.metadata[AUTH] = auth
        flow.metadata[STREAM] = sigv4.streams(auth, req.headers)
