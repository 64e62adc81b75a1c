"""addons/failures.py on its own: which failed calls answer AWS-shaped, in which protocol, with what
words. Through a real gateway: tests/test_faults.py (upstream reset, no answer within
upstream_timeout) and tests/test_security_limits.py (a request body over max_body_bytes)."""

from __future__ import annotations

import json

from mitmproxy import flow as mflow
from mitmproxy.proxy.layers.http import ErrorCode, ResponseProtocolError
from mitmproxy.test import tflow

from addons import failures
from addons.stage import HOST, RECORD_ID


def failed_call(error: str, headers: dict | None = None, intercepted: bool = True):
    f = tflow.tflow()
    f.request.headers.clear()
    for k, v in (headers or {}).items():
        f.request.headers[k] = v
    if intercepted:
        f.metadata[HOST] = "dynamodb.us-east-1.amazonaws.com"
    f.error = mflow.Error(error)
    return f


def test_a_call_that_could_not_be_sent_says_it_was_not_made():
    f = failed_call("Connection refused", {"x-amz-target": "DynamoDB_20120810.GetItem"})
    event = ResponseProtocolError(1, "Connection refused", ErrorCode.CONNECT_FAILED)
    failures.mark(event, f)
    protocol, message, _, request_id = getattr(event, failures._MARK)
    assert protocol == "json" and request_id == f.metadata[RECORD_ID]  # the id the call's record gets
    assert message == ("agentgate could not reach dynamodb.us-east-1.amazonaws.com (Connection refused); "
                       "the call was not made, retry shortly")
    raw = failures.answer(502, protocol, message)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502") and b"connection: close" in head.lower()
    assert json.loads(body)["__type"] == "BadGateway" and json.loads(body)["message"] == message


def test_a_call_that_broke_after_it_went_out_may_have_been_carried_out():
    f = failed_call("server closed connection")
    event = ResponseProtocolError(1, "server closed connection", ErrorCode.GENERIC_SERVER_ERROR)
    failures.mark(event, f)
    protocol, message, _, _ = getattr(event, failures._MARK)
    assert protocol == "rest-xml"  # nothing says otherwise: S3's
    assert message.startswith("agentgate got no answer from dynamodb.us-east-1.amazonaws.com (server closed "
                              "connection); AWS may have carried the call out")
    assert b"<Code>BadGateway</Code>" in failures.answer(502, protocol, message)


def test_the_gateways_own_words_are_kept():
    f = failed_call("agentgate cannot re-sign this request body: bad chunk")
    event = ResponseProtocolError(1, "x", ErrorCode.GENERIC_SERVER_ERROR)
    failures.mark(event, f)
    assert getattr(event, failures._MARK)[1] == "agentgate cannot re-sign this request body: bad chunk"


def test_what_the_chain_did_not_handle_keeps_mitmproxys_page():
    f = failed_call("server closed connection", intercepted=False)
    event = ResponseProtocolError(1, "server closed connection", ErrorCode.GENERIC_SERVER_ERROR)
    failures.mark(event, f)
    assert not hasattr(event, failures._MARK)
    connect = failed_call("refused")
    connect.request.method = "CONNECT"
    event = ResponseProtocolError(1, "x", ErrorCode.GENERIC_SERVER_ERROR)
    failures.mark(event, connect)
    assert not hasattr(event, failures._MARK)


def test_install_patches_mitmproxys_http_layer_once():
    from mitmproxy.proxy.layers.http import HttpStream, _http1, _http2

    assert failures.install() and failures.install()
    assert hasattr(HttpStream.handle_protocol_error, "__wrapped__")
    assert hasattr(_http1.Http1Server.send, "__wrapped__")
    assert hasattr(_http2.Http2Server._handle_event, "__wrapped__")
    assert not hasattr(HttpStream.handle_protocol_error.__wrapped__, "__wrapped__")  # wrapped once
