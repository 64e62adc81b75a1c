"""failures: what the agent gets when its call fails on the way (upstream unreachable, a reset, no
answer within ``upstream_timeout``, a request body refused in mitmproxy's HTTP layer).

mitmproxy answers such a call with its own HTML page ("502 Bad Gateway" and the error's text),
which an SDK reports as a bare status with no reason. For a call the chain handled (an AWS call
inside an intercepted tunnel), the agent gets an AWS-shaped error in the service's own protocol
instead, so that its SDK raises a normal ClientError whose message says what happened: the same
words as the call's record, and whether AWS may have carried the call out (a connection that broke
after the request went out) or certainly did not (it could not be opened). The status stays
mitmproxy's (502 for upstream failures), so SDKs retry as they do for AWS's own 502s.

Patches of mitmproxy's HTTP layer, where no hook reaches: ``HttpStream.handle_protocol_error``
marks the error it is about to send to the client with the flow's protocol and its (possibly
reworded) error, once the add-ons' ``error`` hooks have run; ``Http1Server.send`` (HTTP/1 agents)
and ``Http2Server._handle_event`` (HTTP/2 agents: curl, Go and Rust SDKs) render a marked error as
the AWS-shaped answer. Before the hooks, the stream notes on the flow (``stage.FAILED_STATUS``)
the status the agent is to get, mitmproxy's for the error, so that the record says it, as it does
a refusal's. ``install()`` checks the shape of what it patches first; if
mitmproxy has changed it, it logs an error and leaves mitmproxy's own page in place.

An HTTP/2 agent gives up on one call by resetting its stream (a Go SDK's cancelled context, curl
interrupted) and keeps its connection, which stays readable: ``Http2Server.handle_h2_event`` notes
the reset on the call's flow (``stage.CLIENT_LEFT``) the moment it arrives, before the stream
hears of it (a stream held in a hook, for an approval, hears of it only when the hook returns), so
that a hold ends at once and the record says the client left (``approval.client_gone``), not that
upstream failed.
"""

from __future__ import annotations

import functools
import logging

from mitmproxy import http
from mitmproxy.net.http import http1

from .core.awserrors import Refusal, guess_protocol, render
from .stage import CALL, CLIENT_LEFT, FAILED_STATUS, HOST, REFUSAL, own_request_id

log = logging.getLogger("agentgate.failures")

_MARK = "_agentgate_answer"  # on a ResponseProtocolError: (protocol, message, request content type, request id) to answer with

# mitmproxy's error code -> the AWS-shaped code of the answer
_CODES = {502: "BadGateway", 504: "GatewayTimeout", 413: "RequestEntityTooLarge", 400: "InvalidRequest",
          431: "RequestHeaderSectionTooLarge"}

_installed = False


def message_for(flow: http.HTTPFlow, connect_failed: bool) -> str:
    """What the agent is told about a call the chain handled (``HOST`` set) that failed on its way."""
    host = flow.metadata[HOST]
    error = flow.error.msg if flow.error is not None else "the call failed"
    if error.startswith("agentgate"):  # the gateway's own words already (a refusal in the HTTP layer)
        return error.removeprefix("agentgate: ")
    if connect_failed:
        return (f"agentgate could not reach {host} ({error}); the call was not made, retry shortly")
    return (f"agentgate got no answer from {host} ({error}); AWS may have carried the call out before "
            "the connection broke: check before retrying a call that is not safe to repeat")


def mark(event, flow: http.HTTPFlow, message: str | None = None) -> None:
    """Have the error ``event`` (a ResponseProtocolError on its way to the agent) answer AWS-shaped,
    when ``flow`` is a call the chain handled: with ``message``, or what ``message_for`` says."""
    if HOST not in flow.metadata or flow.request.method == "CONNECT":
        return  # not an intercepted AWS call: mitmproxy's page
    call = flow.metadata.get(CALL)
    protocol = getattr(call, "protocol", None) or guess_protocol(flow.request.headers, flow.request.path)
    if message is None:
        message = message_for(flow, getattr(event.code, "name", "") == "CONNECT_FAILED")
    setattr(event, _MARK, (protocol, message, flow.request.headers.get("content-type"), own_request_id(flow)))


def error_response(status: int, protocol: str | None, message: str, content_type: str | None = None,
                   request_id: str | None = None) -> tuple[dict[str, str], bytes]:
    """The headers and body of the AWS-shaped error answer (``content_type``: the request's, which
    a json call's answer follows; ``request_id``: the call's record id, ``stage.own_request_id``)."""
    code = _CODES.get(status, "InternalFailure")
    _, headers, body = render(Refusal(status, code, message, "upstream" if status >= 500 else "egress"), protocol,
                              request_id, request_content_type=content_type)
    return headers, body


def answer(status: int, protocol: str | None, message: str, content_type: str | None = None,
           request_id: str | None = None) -> bytes:
    """The bytes of the AWS-shaped error answer on HTTP/1 (the connection closes after it)."""
    headers, body = error_response(status, protocol, message, content_type, request_id)
    headers["connection"] = "close"
    return http1.assemble_response(http.Response.make(status, body, headers))


def install() -> bool:
    """Patch mitmproxy's HTTP stream and HTTP/1 server as described above. True when in place."""
    global _installed
    if _installed:
        return True
    try:
        from mitmproxy.connection import ConnectionState
        from mitmproxy.proxy import commands
        from mitmproxy.proxy.layers.http import HttpStream, ResponseProtocolError, SendHttp, _http1, _http2
    except ImportError as e:
        log.error("failed calls get mitmproxy's own error page (its layout changed: %s)", e)
        return False
    server, server2 = _http1.Http1Server, _http2.Http2Server
    if not (hasattr(HttpStream, "handle_protocol_error") and hasattr(server, "send")
            and hasattr(ConnectionState, "CAN_WRITE") and hasattr(server2, "_handle_event")
            and hasattr(server2, "is_open_for_us") and hasattr(server2, "is_closed")):
        log.error("failed calls get mitmproxy's own error page (it changed: no handle_protocol_error, send "
                  "or Http2Server._handle_event)")
        return False
    handle_protocol_error = HttpStream.handle_protocol_error
    check_invalid = getattr(HttpStream, "check_invalid", None)
    send = server.send
    handle_event2 = server2._handle_event

    def marking(stream, inner, mark_error):
        """Relay ``inner`` (a generator of HttpStream's), handing the error it sends the client to
        ``mark_error`` first (which marks it to answer AWS-shaped)."""
        reply = None
        while True:
            try:
                command = inner.send(reply)
            except StopIteration as stop:
                return stop.value
            if (isinstance(command, SendHttp) and isinstance(command.event, ResponseProtocolError)
                    and command.connection is stream.context.client):
                mark_error(command.event)
            reply = yield command

    @functools.wraps(handle_protocol_error)
    def marking_handle_protocol_error(self, event):
        # The error hooks run before the error is sent, and the recorder's writes the record then:
        # it learns here the status the agent is about to get (502 for a failed upstream).
        if isinstance(event, ResponseProtocolError) and self.client_state != self.state_errored \
                and self.flow.response is None:
            self.flow.metadata[FAILED_STATUS] = event.code.http_status_code()
        # the error hooks have run by the time the error is sent: the flow's error is final
        return (yield from marking(self, handle_protocol_error(self, event), lambda error: mark(error, self.flow)))

    def aws_shaped_check_invalid(self, request):
        """A request head mitmproxy's own validation refuses (Transfer-Encoding with Content-Length,
        say): answered AWS-shaped in the request's protocol, in the words of its record. (Not through
        ``mark``: the egress stage does not mark such a flow as an AWS call, its head being refused.)"""
        if not request or self.flow.request.method == "CONNECT":
            return (yield from check_invalid(self, request))

        def mark_refused(error) -> None:
            refusal = self.flow.metadata.get(REFUSAL)
            message = refusal.message if refusal is not None else error.message
            setattr(error, _MARK, (guess_protocol(self.flow.request.headers), message,
                                   self.flow.request.headers.get("content-type"), own_request_id(self.flow)))

        return (yield from marking(self, check_invalid(self, request), mark_refused))

    @functools.wraps(send)
    def aws_shaped_send(self, event):
        marked = getattr(event, _MARK, None) if isinstance(event, ResponseProtocolError) else None
        if marked is None:
            return (yield from send(self, event))
        if not (self.conn.state & ConnectionState.CAN_WRITE):
            return
        status = event.code.http_status_code()
        if not self.response and status is not None:
            yield commands.SendData(self.conn, answer(status, *marked))
        yield commands.CloseConnection(self.conn)

    @functools.wraps(handle_event2)
    def aws_shaped_h2_event(self, event):
        marked = getattr(event, _MARK, None) if isinstance(event, ResponseProtocolError) else None
        status = event.code.http_status_code() if marked is not None else None
        if (status is None or self.is_closed(event.stream_id) or not self.is_open_for_us(event.stream_id)
                or self.h2_conn.streams[event.stream_id].state_machine.headers_sent):
            return (yield from handle_event2(self, event))  # as mitmproxy does: its page, or a reset stream
        headers, body = error_response(status, *marked)
        self.h2_conn.send_headers(event.stream_id, [(b":status", b"%d" % status), *(
            (k.lower().encode(), v.encode()) for k, v in headers.items())])
        self.h2_conn.send_data(event.stream_id, body, end_stream=True)
        yield commands.SendData(self.conn, self.h2_conn.data_to_send())

    HttpStream.handle_protocol_error = marking_handle_protocol_error
    if check_invalid is not None:
        HttpStream.check_invalid = functools.wraps(check_invalid)(aws_shaped_check_invalid)
    else:
        log.error("a request mitmproxy's own validation refuses gets its error page (no HttpStream.check_invalid)")
    server.send = aws_shaped_send
    server2._handle_event = aws_shaped_h2_event
    _note_stream_resets(server2)
    _installed = True
    return True


def flow_of(layer, stream_id: int) -> http.HTTPFlow | None:
    """The flow of stream ``stream_id`` on the connection whose layer (Http2Server) is ``layer``,
    from the HTTP layer above it; None if it has none (yet, or any more)."""
    from mitmproxy.proxy.layers.http import HttpLayer

    above = next((x for x in reversed(layer.context.layers) if isinstance(x, HttpLayer)), None)
    stream = getattr(above, "streams", {}).get(stream_id)
    return getattr(stream, "flow", None)


def _note_stream_resets(server2) -> None:
    """An HTTP/2 agent's stream reset marks its call's flow (see the module's docstring)."""
    import h2.events

    handle_h2_event = getattr(server2, "handle_h2_event", None)
    if handle_h2_event is None:
        log.error("an HTTP/2 agent's cancelled call is recorded as failed (mitmproxy changed: no "
                  "Http2Server.handle_h2_event)")
        return

    @functools.wraps(handle_h2_event)
    def noting_handle_h2_event(self, event):
        if isinstance(event, h2.events.StreamReset) and event.stream_id in self.streams:
            if (flow := flow_of(self, event.stream_id)) is not None:
                flow.metadata[CLIENT_LEFT] = event.error_code
        return (yield from handle_h2_event(self, event))

    server2.handle_h2_event = noting_handle_h2_event
