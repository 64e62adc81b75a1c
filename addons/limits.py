"""limits: what one client can make the gateway hold in memory, and request heads whose reading
another parser could disagree with; enforced inside mitmproxy's HTTP layer, where no hook reaches.

mitmproxy 12 reads a request head until its blank line with no bound (its ``_http1.py`` notes the
missing protection against header-size denial of service in a comment), reads a buffered request body to its end whatever its size
(its ``body_size_limit`` would also cut responses and the streamed uploads that must flow), and
parses heads leniently: a bare LF ends a line, a bare CR stays inside a header value, a NUL is
kept, and an obs-fold continuation line is joined to the value before it. mitmproxy re-frames
what it forwards, but a bare CR or an obs-fold inside a value goes upstream as it came, where a
parser that reads them differently sees other headers than the gateway did. So:

1. ``Http1Server.read_headers``: a complete request head is checked before mitmproxy parses it.
   A bare CR or LF (not part of CRLF), a NUL byte, or a line starting with a space or tab
   (obs-fold): 400 and the connection closed. A head still without its blank line after
   ``max_header_bytes`` + 64 KiB: 431 and the connection closed. (A head over
   ``max_header_bytes`` that does end is parsed, and the egress stage refuses it with a record.)
2. ``Http1Server._handle_event``: bytes a client sends that the reader holds without consuming
   (a chunk-size line that never ends, data pipelined behind a request still in flight) are
   bounded the same way; past it, the connection is closed.
3. ``HttpStream.state_consume_request_body``: a request body that is buffered (not streamed) is
   refused with 413 once it passes ``max_body_bytes`` (at its first bytes when its Content-Length
   already says so); the flow gets one record saying so. Streamed bodies (S3 uploads: a declared
   payload hash) are not buffered and not capped.
4. ``HttpStream.state_consume_response_body``: a response body that is buffered (not streamed)
   is held up to a cap: ``max_body_bytes``, and for a response masking holds whole to mask it for
   the agent, no more than the most it masks (``flow.metadata[HELD]``). Past it, the rest is read, hashed and
   dropped; the flow's ``OVER_CAP`` says so, and the response stage answers the agent with an
   AWS-shaped error instead of an incomplete body (masking's ``response``), which is recorded.

5. ``Http2Server.protocol_error``: an HTTP/2 agent's frames that mitmproxy's h2 layer refuses (a
   header name with a space or an upper-case letter, a value with surrounding whitespace, a
   connection-specific header, a Content-Length the data does not match, pseudo-headers out of
   place) end the connection with GOAWAY (PROTOCOL_ERROR): no flow, no status. They are announced
   with ``refused_head`` too, carrying the SHA-256 and size of the bytes (frames) that held them,
   unless a stream is open on the connection: then the request the error ended (a body longer than
   its Content-Length, say) is a flow, and each open stream's flow is recorded with the error,
   refused (400) where the call had not gone upstream. Header values h2 quotes in its reason are
   left out of what is logged, sent and recorded (``h2_reason``).
6. ``HttpStream.state_consume_request_body`` and ``state_stream_request_body``: an HTTP/2 request
   that ends with trailer fields (a HEADERS frame after the body) is refused with 400, as trailer
   fields after an HTTP/1 chunked body are: upstream is spoken to in HTTP/1, where mitmproxy
   cannot send them (it crashed on them, and the request went upstream without them). Its flow
   gets one record saying so; the connection's other streams go on. A streamed body's upstream
   connection is closed before the body's end: its last chunk, or, with Content-Length framing,
   its last byte, which waits for the end of the agent's stream, so that upstream never has the
   body whole.
7. ``Http2Server._handle_event`` (at its start): the HTTP/2 header list an agent may send is
   ``max_header_bytes`` + 64 KiB (h2's own limit is 64 KiB, whatever the cap), announced in the
   connection's SETTINGS. A header block within it is read, and the egress stage refuses one over
   ``max_header_bytes`` with 431 on its stream, the connection going on, as for HTTP/1; past it,
   the h2 layer ends the connection (GOAWAY, ``ENHANCE_YOUR_CALM``), recorded as in 5.

1 and 2 happen where no flow exists yet: their answer is AWS-shaped all the same, in the protocol
the head's Content-Type and X-Amz-Target suggest (``_refusal``), and so is the error page
mitmproxy's own reader answers a head it cannot read with; 3 happens in mitmproxy's own error path
and is answered AWS-shaped (addons/failures.py) and recorded with its flow. A head refused in 1,
before mitmproxy read it as a request, has no flow: it is announced to the add-ons with the
``refused_head`` hook (``RefusedHeadHook``, carrying a ``RefusedHead``) before the agent is
answered, so the auth stage names who sent it and the recorder records it, and so is a head whose
request line mitmproxy's reader cannot read (no flow either); 2 concerns bytes behind a request
whose flow is recorded already, and is logged.
The caps are mitmproxy options (declared by the egress stage) read from each connection's
context. ``install()`` checks the shape of what it patches first; if mitmproxy has changed it
logs an error and patches nothing (the egress stage's own checks still apply).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import time
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import commands as proxy_commands
from mitmproxy.utils import human

from . import failures
from .core.awserrors import Refusal, guess_protocol
from .stage import BODY_DIGEST, HELD, OVER_CAP, REFUSAL, SIGNED

log = logging.getLogger("agentgate.limits")

_PASSED = "agentgate.limits.passed"  # _Over: a buffered response body past its cap, while it goes by
_DISCARDED = "agentgate.limits.discarded"  # [sha256, size] of the body of a request answered before it came
SLACK = 64 * 1024  # bytes past max_header_bytes a head may take before its reading stops
_BLANK_LINE = re.compile(rb"\n\r?\n")  # where h11's ReceiveBuffer ends a head
_OBS_FOLD = re.compile(rb"\n[ \t]")
_BARE_LF = re.compile(rb"(?<!\r)\n")

# how a flow's error starts when the HTTP/1 layer answered its request with 400 (see Egress.error)
REFUSED = "agentgate refused the request with 400: "


def trailers_refusal(names: list[str] | None = None) -> str:
    """Why a request that ends with trailer fields is refused (``names``: theirs, when known; their
    values are never said: a trailer may carry a credential)."""
    named = f" ({', '.join(names)})" if names else ""
    return (f"the request body ends with trailer fields{named}, which the gateway does not take: send them as "
            "headers before the body instead, or, for a checksum, as the aws-chunked body's trailer "
            "(x-amz-trailer, as AWS SDKs send it)")


_LAST_BYTE = "_agentgate_last_byte"  # on an HttpStream: the byte of a streamed body held back (6 below)

_installed = False


def head_problem(head: bytes) -> str | None:
    """What is wrong with a complete request head (request line, headers, blank line) that
    mitmproxy's parser would let through, or None."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        return "a line of the request head ends with a bare LF instead of CRLF"
    if head.count(b"\r") != crlf:
        return "the request head holds a bare CR (not followed by LF)"
    if b"\0" in head:
        return "the request head holds a NUL byte"
    if _OBS_FOLD.search(head[:-2]):
        return "a header line starts with a space or tab (obs-fold line folding)"
    return None


@dataclasses.dataclass
class RefusedHead:
    """A request head refused before mitmproxy read it as a request: no flow exists for it. The
    head itself is not kept (it may hold credentials); its SHA-256 and size are."""

    client: connection.Client
    status: int
    reason: str
    head_sha256: str
    head_size: int
    method: str | None = None  # from the request line, when it has the usual shape
    path: str | None = None  # without its query
    time: float = dataclasses.field(default_factory=time.time)
    http2: bool = False  # HTTP/2 frames mitmproxy's h2 layer refused (status: what the record says; GOAWAY sent)
    principal: Any = None  # core.identity.Principal of the connection, set by the auth stage


@dataclasses.dataclass
class RefusedHeadHook(proxy_commands.StartHook):
    """A request head was refused before it was read as a request (see RefusedHead)."""

    data: RefusedHead


_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[^ ?\r\n]{0,2048})[^ \r\n]* HTTP/1\.[01]\r?\n")


def refused_head(client: connection.Client, status: int, reason: str, head: bytes) -> RefusedHead:
    line = _REQUEST_LINE.match(head)
    method, path = (line.group(1).decode("ascii"), line.group(2).decode("utf-8", "replace")) if line else (None, None)
    return RefusedHead(client, status, reason, hashlib.sha256(head).hexdigest(), len(head), method, path)


_HEAD_FIELD = re.compile(rb"^(content-type|x-amz-target|smithy-protocol)[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)


def _unreadable(data: bytes) -> str:
    """Why mitmproxy's HTTP/1 reader refused the request head at the start of ``data`` (it answers
    with nothing else but its error page): the same reading again, for its words."""
    from h11._receivebuffer import ReceiveBuffer  # what mitmproxy reads heads with
    from mitmproxy.net.http import http1

    buf = ReceiveBuffer()
    buf += data
    try:
        request = http1.read_request_head([bytes(x) for x in buf.maybe_extract_lines() or ()])
        http1.expected_http_body_size(request)
    except ValueError as e:
        return str(e)
    return "the request head cannot be read"


def _refusal(layer, status: int, message: str, head: bytes | None = None) -> bytes:
    """The AWS-shaped answer (connection closed after it) to a request refused in the HTTP/1 layer:
    in the protocol its head's Content-Type and X-Amz-Target suggest (read leniently from ``head``
    when it was refused before it was parsed, else from the request mitmproxy read), so that the
    agent's SDK reports the reason like any AWS error."""
    if head is not None:
        headers = {m.group(1).decode("ascii").lower(): m.group(2).decode("latin-1").strip()
                   for m in _HEAD_FIELD.finditer(head[:65536])}
    else:
        request = getattr(layer, "request", None)
        headers = request.headers if request is not None else {}
    return failures.answer(status, guess_protocol(headers), message, headers.get("content-type"))


def _option(context, name: str) -> int | None:
    value = getattr(context.options, name, None)
    return value if isinstance(value, int) and value > 0 else None


def _cut(layer, status: int | None, message: str, *, in_flight: bool = False, head: bytes | None = None):
    """Refuse on ``layer``'s (an Http1Server) connection: answer ``status`` (if any), close it, and
    when a request is in flight, end its flow with the reason (its record says so). ``head``: the
    bytes of a head refused before it was read as a request, announced first (``refused_head``)."""
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers.http import ErrorCode, ReceiveHttp, RequestProtocolError

    log.warning("refused a request from %s: %s", human.format_address(layer.conn.peername), message)
    if head is not None and status is not None:
        yield RefusedHeadHook(refused_head(layer.context.client, status, message, head))
    if status is not None:
        yield commands.SendData(layer.conn, _refusal(layer, status, message, head))
    yield commands.CloseConnection(layer.conn)
    layer.state = layer.done
    if in_flight:  # the flow's error says whether the agent was answered (the egress stage records it so)
        said = REFUSED if status is not None else "agentgate: "
        yield ReceiveHttp(RequestProtocolError(layer.stream_id, said + message, ErrorCode.GENERIC_CLIENT_ERROR))


def body_refusal(cap: int, size: int, declared: bool, before: Refusal | None) -> Refusal:
    said = f"declares {size} bytes" if declared else f"passed {cap} bytes"
    message = (f"the request body {said}, over this gateway's max_body_bytes ({cap}): agentgate reads the "
               "body of a request without a declared payload hash (x-amz-content-sha256) into memory to "
               "classify and re-sign it; send large uploads with a declared payload hash (S3 clients do), "
               "or an operator can raise max_body_bytes")
    if before is not None:
        message += f"; it had been refused already: {before.message}"
    return Refusal(413, "RequestEntityTooLarge", message, "egress")


class _Over:
    """The SHA-256 and size of a response body past its cap, as it goes by."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sha = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)


def install() -> bool:
    """Patch mitmproxy's HTTP/1 server and HTTP stream as described above. True when in place."""
    global _installed
    if _installed:
        return True
    try:
        from mitmproxy import flow as mflow
        from mitmproxy.proxy import commands, events
        from mitmproxy.proxy.layers.http import (ErrorCode, HttpStream, ReceiveHttp, RequestProtocolError,
                                                 ResponseProtocolError, SendHttp, _http1)
        from mitmproxy.proxy.layers.http._events import (RequestData, RequestEndOfMessage, RequestTrailers,
                                                           ResponseData, ResponseEndOfMessage)
        from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
    except ImportError as e:
        log.error("request size caps are not enforced inside mitmproxy (its layout changed: %s)", e)
        return False
    server = _http1.Http1Server
    ChunkedReader = getattr(_http1, "ChunkedReader", None)  # noqa: N806 - h11's, as mitmproxy uses it
    missing = [n for n in ("read_headers", "_handle_event", "done", "passthrough", "wait", "read_body")
               if not hasattr(server, n)] + ([] if ChunkedReader else ["ChunkedReader"])
    missing += [n for n in ("state_consume_request_body", "state_stream_request_body", "state_consume_response_body",
                            "state_errored") if not hasattr(HttpStream, n)]
    if missing or not hasattr(ErrorCode, "REQUEST_TOO_LARGE"):
        log.error("request size caps are not enforced inside mitmproxy (it changed: no %s)",
                  ", ".join(missing) or "ErrorCode.REQUEST_TOO_LARGE")
        return False

    read_headers = server.read_headers
    handle_event = server._handle_event
    consume = HttpStream.state_consume_request_body
    stream_request = HttpStream.state_stream_request_body
    consume_response = HttpStream.state_consume_response_body

    @functools.wraps(read_headers)
    def guarded_read_headers(self, event):
        if isinstance(event, events.DataReceived) and len(self.buf):
            data = bytes(self.buf)
            end = _BLANK_LINE.search(data)
            if end is not None and data[:end.start() + 1].strip(b"\r\n"):
                problem = head_problem(data[:end.end()])
                if problem is not None:
                    yield from _cut(self, 400, problem, head=data[:end.end()])
                    return
            elif end is None and (cap := _option(self.context, "max_header_bytes")) and len(data) > cap + SLACK:
                yield from _cut(self, 431, f"the request head passed {cap + SLACK} bytes without ending; "
                                           f"this gateway's max_header_bytes is {cap}", head=data)
                return
            inner, reply = read_headers(self, event), None
            while True:  # mitmproxy answers a head it cannot read with its HTML page: AWS-shaped instead
                try:
                    command = inner.send(reply)
                except StopIteration:
                    return
                if isinstance(command, commands.SendData) and command.connection is self.conn:
                    message = _unreadable(data)
                    if self.request is None:  # not even its request line was read: no flow will record it
                        log.warning("refused a request from %s: %s", human.format_address(self.conn.peername), message)
                        yield RefusedHeadHook(refused_head(self.context.client, 400, message, data[:end.end()]
                                                           if end is not None else data))
                    command = commands.SendData(self.conn, _refusal(self, 400, message, data))
                reply = yield command
        yield from read_headers(self, event)

    @functools.wraps(handle_event)
    def bounded_handle_event(self, event):
        if not isinstance(event, events.DataReceived):  # nothing below applies: no step-by-step relay
            return (yield from handle_event(self, event))
        inner = handle_event(self, event)
        reply, answered = None, False
        while True:
            try:
                command = inner.send(reply)
            except StopIteration:
                break
            except NotImplementedError as e:  # trailer fields after a chunked body: mitmproxy 12 raises,
                if "trailers" not in str(e):  # its connection handler dies, and the flow left no record
                    raise
                yield from _cut(self, 400 if self.response is None else None, trailers_refusal(), in_flight=True)
                return
            if (isinstance(event, events.DataReceived) and isinstance(command, commands.CloseConnection)
                    and command.connection is self.conn and self.state == self.read_body and self.response is None):
                # h11 found the body's framing malformed (mitmproxy closes without a word): say so first
                message = "the request body's chunked framing is malformed"
                log.warning("refused a request from %s: %s", human.format_address(self.conn.peername), message)
                yield commands.SendData(self.conn, _refusal(self, 400, message))
                answered = True
            elif answered and isinstance(command, ReceiveHttp) and isinstance(command.event, RequestProtocolError):
                command.event.message = f"{REFUSED}the request body's chunked framing is malformed ({command.event.message})"
            reply = yield command
        if self.state in (self.passthrough, self.done, self.read_headers):
            return
        cap = _option(self.context, "max_header_bytes")
        if cap and len(self.buf) > cap + SLACK:
            waiting = self.state == self.wait  # the request was read: its answer may be on its way
            yield from _cut(self, None if waiting else 400,
                            f"the client sent {len(self.buf)} bytes that are not a request the gateway can read "
                            f"({'pipelined behind a request in flight' if waiting else 'a chunk-size line that does not end'})",
                            in_flight=True)
        elif self.state == self.read_body and isinstance(self.body_reader, ChunkedReader) and len(self.buf) \
                and _BARE_LF.search(bytes(self.buf)):  # what h11 has not consumed is a line it waits to see end
            yield from _cut(self, 400 if self.response is None else None,
                            "a line of the chunked request body ends with a bare LF instead of CRLF", in_flight=True)

    def refuse_trailers(self, event, streamed: bool):
        """6 above: a request (HTTP/2) that ends with trailer fields, before any answer, is refused."""
        flow = self.flow
        message = trailers_refusal(sorted({name.lower() for name in event.trailers.keys()}))
        refusal = flow.metadata[REFUSAL] = Refusal(400, "InvalidRequest", message, "egress")
        flow.error = mflow.Error(refusal.message)
        log.warning("refused %s %s from %s: %s", flow.request.method, flow.request.host,
                    human.format_address(self.context.client.peername), message)
        if streamed:  # upstream has the head and part of the body: closed before the body's end, it has no request
            yield SendHttp(RequestProtocolError(self.stream_id, message, ErrorCode.GENERIC_CLIENT_ERROR),
                           self.context.server)
        else:
            body = bytes(self.request_body_buf)
            flow.metadata[BODY_DIGEST] = (hashlib.sha256(body).hexdigest(), len(body))
            self.request_body_buf.clear()
        yield HttpErrorHook(flow)
        error = ResponseProtocolError(self.stream_id, f"agentgate: {message}", ErrorCode.GENERIC_CLIENT_ERROR)
        failures.mark(error, flow, message)  # answered AWS-shaped (addons/failures.py)
        yield SendHttp(error, self.context.client)
        self.client_state = self.state_errored
        flow.live = False

    @functools.wraps(stream_request)
    def trailer_free_stream_request(self, event):
        if isinstance(event, RequestTrailers):
            if self.flow.response is None:
                return (yield from refuse_trailers(self, event, streamed=True))
            # upstream answered before the body ended (its answer is on its way): the trailers are
            # not sent on, as mitmproxy's HTTP/1 upstream connection cannot send them
            log.warning("dropped the trailer fields of %s %s from %s: upstream answered before they came",
                        self.flow.request.method, self.flow.request.host,
                        human.format_address(self.context.client.peername))
            return
        req = self.flow.request
        if not (req.is_http2 or req.is_http3) or "chunked" in req.headers.get("transfer-encoding", "").lower():
            return (yield from stream_request(self, event))  # a chunked body is whole only with its last chunk
        # Content-Length framing upstream: the body's last byte waits for the end of the agent's
        # stream, so that a body whose trailer fields are refused never reaches upstream whole
        inner, reply = stream_request(self, event), None
        while True:
            try:
                command = inner.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(command, SendHttp) and command.connection is self.context.server:
                held = getattr(self, _LAST_BYTE, b"")
                if isinstance(command.event, RequestData):
                    data = held + command.event.data
                    setattr(self, _LAST_BYTE, data[-1:])
                    if len(data) <= 1:
                        reply = None
                        continue
                    command = SendHttp(RequestData(self.stream_id, data[:-1]), self.context.server)
                elif isinstance(command.event, RequestEndOfMessage) and held:
                    setattr(self, _LAST_BYTE, b"")
                    yield SendHttp(RequestData(self.stream_id, held), self.context.server)
            reply = yield command

    @functools.wraps(consume)
    def capped_consume(self, event):
        if isinstance(event, RequestTrailers) and self.flow.response is None and REFUSAL not in self.flow.metadata:
            return (yield from refuse_trailers(self, event, streamed=False))
        seen = None
        if (self.flow.response is not None or self.flow.metadata.get(REFUSAL) is not None) and isinstance(
                event, (RequestData, RequestEndOfMessage)):
            # Refused before its body came (at its head: no token, a policy's deny): the body is
            # not kept, only its SHA-256 and size for the record. mitmproxy would hold all of
            # it (up to max_body_bytes a stream, 100 streams a connection) before answering, also for
            # a client that never authenticated.
            seen = self.flow.metadata.setdefault(_DISCARDED, [hashlib.sha256(), 0])
            if isinstance(event, RequestEndOfMessage):
                self.flow.metadata[BODY_DIGEST] = (seen[0].hexdigest(), seen[1])
            else:
                seen[0].update(event.data)
                seen[1] += len(event.data)
        if isinstance(event, RequestData) and (cap := _option(self.context, "max_body_bytes")):
            declared = self.flow.request.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else 0
            over_declared = size > cap
            if not over_declared:
                size = seen[1] if seen is not None else len(self.request_body_buf) + len(event.data)
            if size > cap:
                refusal = body_refusal(cap, size, over_declared, self.flow.metadata.get(REFUSAL))
                self.flow.metadata[REFUSAL] = refusal
                self.flow.response = None  # an answer set earlier is not sent: the agent gets the 413
                self.flow.error = mflow.Error(refusal.message)
                self.request_body_buf.clear()
                log.warning("refused %s %s from %s: %s", self.flow.request.method, self.flow.request.host,
                            human.format_address(self.context.client.peername), refusal.message)
                yield HttpErrorHook(self.flow)
                error = ResponseProtocolError(self.stream_id, f"agentgate: {refusal.message}", ErrorCode.REQUEST_TOO_LARGE)
                failures.mark(error, self.flow, refusal.message)  # answered AWS-shaped (addons/failures.py)
                yield SendHttp(error, self.context.client)
                self.client_state = self.state_errored
                self.flow.live = False
                return
        if seen is not None and isinstance(event, RequestData):
            return  # discarded
        yield from consume(self, event)

    @functools.wraps(consume_response)
    def capped_consume_response(self, event):
        md = self.flow.metadata
        over = md.get(_PASSED)
        if isinstance(event, ResponseData):
            if over is None:
                cap = _option(self.context, "max_body_bytes")
                if md.get(HELD):
                    cap = min(md[HELD], cap) if cap else md[HELD]
                if cap is None or len(self.response_body_buf) + len(event.data) <= cap:
                    yield from consume_response(self, event)
                    return
                over = md[_PASSED] = _Over(cap)
                over.add(bytes(self.response_body_buf))
                self.response_body_buf.clear()
                log.warning("the response to %s %s passed %d bytes held in memory; the rest is dropped and the agent "
                            "is answered with an error", self.flow.request.method, self.flow.request.pretty_host, cap)
            over.add(event.data)
            return
        if isinstance(event, ResponseEndOfMessage) and over is not None:
            md[OVER_CAP] = (over.sha.hexdigest(), over.size, over.cap)
        yield from consume_response(self, event)

    server.read_headers = guarded_read_headers
    server._handle_event = bounded_handle_event
    HttpStream.state_consume_request_body = capped_consume
    HttpStream.state_stream_request_body = trailer_free_stream_request
    HttpStream.state_consume_response_body = capped_consume_response
    _install_http2()
    _installed = True
    return True


_H2_DATA = "_agentgate_received"  # an Http2Server's last DataReceived bytes, while they are handled
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')


def h2_reason(message: str) -> str:
    """The h2 layer's reason, for the record: the header values it quotes (``b'...'``) are left
    out, since a value may be a credential; header names stay (they say what was wrong)."""
    if "value" not in message.lower():
        return _BYTES_LITERAL.sub(lambda m: m.group(0) if len(m.group(0)) <= 64 else "(not kept)", message)
    return _BYTES_LITERAL.sub("(the value is not kept)", message)


def _header_list_size(server) -> None:
    """7 above: before an Http2Server's SETTINGS go out, its header list limit is set to
    max_header_bytes + SLACK (h2's own is 64 KiB), announced to the agent and applied at once."""
    cap = _option(server.context, "max_header_bytes")
    settings = getattr(server.h2_conn, "local_settings", None)
    decoder = getattr(server.h2_conn, "decoder", None)
    if cap is None or settings is None or not hasattr(decoder, "max_header_list_size"):
        return
    limit = max(cap + SLACK, settings.max_header_list_size or 0)
    settings.max_header_list_size = limit
    settings.acknowledge()  # as mitmproxy does for its own settings: else the old value is sent
    decoder.max_header_list_size = limit


def _install_http2() -> None:
    """5 above: an HTTP/2 agent's frames refused by mitmproxy's h2 layer are announced (``refused_head``);
    7: its header list limit follows max_header_bytes."""
    try:
        from mitmproxy.proxy import events
        from mitmproxy.proxy.layers.http import _http2
    except ImportError as e:
        log.error("HTTP/2 protocol errors are not recorded (mitmproxy's layout changed: %s)", e)
        return
    server = _http2.Http2Server
    protocol_error, handle_event = getattr(server, "protocol_error", None), getattr(server, "_handle_event", None)
    if protocol_error is None or handle_event is None:
        log.error("HTTP/2 protocol errors are not recorded (mitmproxy changed: no Http2Server.protocol_error)")
        return

    @functools.wraps(handle_event)
    def remembering_handle_event(self, event):
        if isinstance(event, events.Start):
            _header_list_size(self)
        if not isinstance(event, events.DataReceived):
            return (yield from handle_event(self, event))
        setattr(self, _H2_DATA, event.data)
        try:
            return (yield from handle_event(self, event))
        finally:
            setattr(self, _H2_DATA, None)

    @functools.wraps(protocol_error)
    def recorded_protocol_error(self, message, *args, **kwargs):
        message = h2_reason(message)  # as the log, the agent's GOAWAY and the open streams' flows say it
        if not self.streams:
            data = getattr(self, _H2_DATA, None) or b""
            yield RefusedHeadHook(RefusedHead(self.context.client, 400, message, hashlib.sha256(data).hexdigest(),
                                              len(data), http2=True))
        for stream_id in self.streams:  # each ends with ``message``: refused if it never went upstream
            flow = failures.flow_of(self, stream_id)
            if flow is not None and SIGNED not in flow.metadata and REFUSAL not in flow.metadata:
                flow.metadata[REFUSAL] = Refusal(400, "InvalidRequest", message, "egress")
        yield from protocol_error(self, message, *args, **kwargs)

    server._handle_event = remembering_handle_event
    server.protocol_error = recorded_protocol_error
