"""Raw bytes through a real gateway: a CONNECT of our own making, then TLS trusting its CA, for the
requests no SDK would send."""

from __future__ import annotations

import base64
import socket
import ssl


def connect(port: int, target: str, token: str | None) -> tuple[socket.socket, bytes]:
    """A CONNECT to ``target`` (host:port) through the gateway on ``port``, with the agent's token
    as proxy credentials when given: the socket and the head of the gateway's answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if token:
        head += f"Proxy-Authorization: Basic {base64.b64encode(f'agent:{token}'.encode()).decode()}\r\n"
    s.sendall((head + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return s, data


def tunnel(gw, token: str | None, host: str = "sts.amazonaws.com") -> ssl.SSLSocket:
    """A TLS connection to ``host`` through the gateway ``gw`` (tests.support.gateway.Gateway)."""
    s, data = connect(gw.port, f"{host}:443", token)
    if not data.startswith(b"HTTP/1.1 200"):
        s.close()
        raise AssertionError(f"the gateway refused the tunnel: {data!r}")
    return ssl.create_default_context(cafile=str(gw.ca_file)).wrap_socket(s, server_hostname=host)
