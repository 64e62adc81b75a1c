"""Raw bytes through a real gateway: a CONNECT of our own making, then TLS trusting its CA, for the
requests no SDK would send."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time


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



def read_answer(tls: ssl.SSLSocket) -> bytes:
    """Everything the gateway answers on ``tls`` before it closes the connection, goes quiet for
    the socket's timeout, or has sent a whole answer (its head and the body its Content-Length
    gives)."""
    data = b""
    try:
        while chunk := tls.recv(65536):
            data += chunk
            top, sep, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", top)
            if sep and length and len(rest) >= int(length[1]):
                break
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return data


def exchange(gw, token: str | None, raw: bytes, host: str = "sts.amazonaws.com", timeout: float = 3.0) -> bytes:
    """``raw`` sent in a tunnel to ``host``: the answer as ``read_answer`` reads it, waiting at
    most ``timeout`` seconds at a time."""
    return exchanges(gw, token, [raw], host, timeout)[0]


def exchanges(gw, token: str | None, requests: list[bytes], host: str = "sts.amazonaws.com",
              timeout: float = 3.0) -> list[bytes]:
    """Each of ``requests`` sent in turn on one tunnel to ``host``, each answer read as
    ``read_answer`` reads it before the next is sent."""
    tls = tunnel(gw, token, host)
    tls.settimeout(timeout)
    try:
        answers = []
        for raw in requests:
            tls.sendall(raw)
            answers.append(read_answer(tls))
        return answers
    finally:
        tls.close()


def s3_signed(method: str, url: str) -> dict[str, str]:
    """The headers of an S3 request signed as an agent signs it (its fake key: the gateway re-signs)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    request = AWSRequest(method=method, url=url)
    S3SigV4Auth(ReadOnlyCredentials("agentgate", "x", None), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


class Http2ConnectionTerminated(AssertionError):
    """The gateway ended the HTTP/2 connection (GOAWAY) instead of answering."""

    def __init__(self, error_code: int, additional_data: bytes | None) -> None:
        super().__init__(f"the gateway ended the connection (GOAWAY {error_code}): {additional_data!r}")
        self.error_code, self.additional_data = error_code, additional_data


def _h2_connection(gw, token: str | None, host: str, validate: bool = True):
    """An HTTP/2 connection to ``host`` through the gateway ``gw``, preface sent: (TLS socket,
    h2 connection)."""
    import h2.config
    import h2.connection

    s, data = connect(gw.port, f"{host}:443", token)
    if not data.startswith(b"HTTP/1.1 200"):
        s.close()
        raise AssertionError(f"the gateway refused the tunnel: {data!r}")
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(s, server_hostname=host)
    if tls.selected_alpn_protocol() != "h2":
        tls.close()
        raise AssertionError(f"the gateway did not speak HTTP/2: {tls.selected_alpn_protocol()!r}")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=validate,
        normalize_outbound_headers=validate))
    conn.initiate_connection()
    return tls, conn


def _h2_head(host: str, method: str, path: bytes, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", path),
            *((k.lower().encode(), v.encode()) for k, v in headers.items() if k.lower() != "host")]


def h2_request(gw, token: str | None, host: str, method: str, path: bytes, headers: dict[str, str], body: bytes = b"",
               validate: bool = True, extra: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, dict[str, str], bytes]:
    """One request over HTTP/2 through the gateway ``gw``; ``validate=False`` sends what an HTTP/2
    client library would refuse to (a :path with a space, say), and ``extra`` header fields as given
    (not lower-cased). The status, headers and body of the answer; Http2ConnectionTerminated when
    the gateway sends GOAWAY instead."""
    import h2.events

    tls, conn = _h2_connection(gw, token, host, validate)
    try:
        # the headers go out with the body's first frames, in one write: a gateway that refuses the
        # headers may close the connection before a second write could be made
        conn.send_headers(1, [*_h2_head(host, method, path, headers), *extra], end_stream=not body)
        status, got, answer, sent = 0, {}, b"", 0
        tls.settimeout(15)
        while True:
            while sent < len(body):  # as much as the gateway's flow-control windows take now
                n = min(len(body) - sent, conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(1, body[sent:sent + n], end_stream=sent + n == len(body))
                sent += n
            tls.sendall(conn.data_to_send())
            data = tls.recv(65536)
            if not data:
                raise AssertionError("the gateway closed the connection before the answer ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got = dict(event.headers)
                    status = int(got.pop(":status"))
                elif isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise Http2ConnectionTerminated(event.error_code, event.additional_data)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"the stream was reset ({event.error_code})")
                elif isinstance(event, h2.events.StreamEnded):
                    return status, got, answer
    finally:
        tls.close()


def h2_calls(gw, token: str | None, host: str,
             calls: list[tuple[str, bytes, dict[str, str], bytes, tuple[tuple[str, str], ...]]],
             timeout: float = 15) -> list[tuple[int, dict[str, str], bytes]]:
    """Requests one after another on one HTTP/2 connection through ``gw`` (streams 1, 3, 5, ...),
    each ``(method, path, headers, body, trailers)``: when ``trailers`` are given, they follow the
    body in a HEADERS frame that ends the stream, as a client that sends a checksum after the
    body does. Each answer's status, headers and body, in the order given; Http2ConnectionTerminated
    when the gateway sends GOAWAY instead."""
    import h2.events

    tls, conn = _h2_connection(gw, token, host)
    answers = []
    try:
        tls.settimeout(timeout)
        for i, (method, path, headers, body, trailers) in enumerate(calls):
            sid, sent, done = 1 + 2 * i, 0, False
            status, got, answer = 0, {}, b""
            conn.send_headers(sid, _h2_head(host, method, path, headers), end_stream=not (body or trailers))
            while not done:
                while sent < len(body):  # as much as the gateway's flow-control windows take now
                    n = min(len(body) - sent, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    conn.send_data(sid, body[sent:sent + n], end_stream=not trailers and sent + n == len(body))
                    sent += n
                if trailers and sent == len(body):
                    conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in trailers], end_stream=True)
                    trailers = ()
                tls.sendall(conn.data_to_send())
                data = tls.recv(65536)
                if not data:
                    raise AssertionError("the gateway closed the connection before the answer ended")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                        got = dict(event.headers)
                        status = int(got.pop(":status"))
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id == sid:
                            answer += event.data
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise Http2ConnectionTerminated(event.error_code, event.additional_data)
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                        raise AssertionError(f"stream {sid} was reset ({event.error_code})")
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                        done = True
            answers.append((status, got, answer))
            tls.sendall(conn.data_to_send())
        return answers
    finally:
        tls.close()


def h2_cancel(gw, token: str, host: str, method: str, path: bytes, headers: dict[str, str], after: float,
              linger: float) -> None:
    """Send one request over HTTP/2 through ``gw``, reset its stream (CANCEL, as an SDK whose
    context is cancelled does) ``after`` seconds later, and keep the connection open ``linger``
    seconds more: the agent gave up on the call, not on the connection."""
    import h2.errors

    tls, conn = _h2_connection(gw, token, host)
    try:
        conn.send_headers(1, _h2_head(host, method, path, headers), end_stream=True)
        tls.sendall(conn.data_to_send())
        time.sleep(after)
        conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        tls.sendall(conn.data_to_send())
        tls.settimeout(0.2)
        end = time.monotonic() + linger
        while time.monotonic() < end:
            try:
                data = tls.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                continue
            if not data:
                raise AssertionError("the gateway closed the connection after the stream was reset")
            conn.receive_data(data)
            tls.sendall(conn.data_to_send())
    finally:
        tls.close()


def h2_requests(gw, token: str, host: str, requests: list[tuple[str, bytes, dict[str, str]]],
                timeout: float = 30) -> list[tuple[int, bytes, float]]:
    """Several bodiless requests at once on one HTTP/2 connection through ``gw``, as an SDK that
    shares a connection between concurrent calls sends them (one stream each). Each one's status,
    body and the seconds it took, in the order given."""
    import h2.events

    tls, conn = _h2_connection(gw, token, host)
    try:
        started = time.monotonic()
        streams = {}
        for i, (method, path, headers) in enumerate(requests):
            sid = 1 + 2 * i
            streams[sid] = i
            conn.send_headers(sid, _h2_head(host, method, path, headers), end_stream=True)
        tls.sendall(conn.data_to_send())
        results: dict[int, list] = {sid: [0, b"", 0.0] for sid in streams}
        open_streams = set(streams)
        tls.settimeout(timeout)
        while open_streams:
            data = tls.recv(65536)
            if not data:
                raise AssertionError("the gateway closed the connection before every answer ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    results[event.stream_id][0] = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    results[event.stream_id][1] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    results[event.stream_id][2] = time.monotonic() - started
                    open_streams.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream {event.stream_id} was reset ({event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise Http2ConnectionTerminated(event.error_code, event.additional_data)
            tls.sendall(conn.data_to_send())
        return [tuple(results[sid]) for sid in sorted(streams)]
    finally:
        tls.close()
