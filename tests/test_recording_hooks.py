"""The recorder's hooks on their own (mitmproxy's test flows, a real SQLite store): which outcome the
``error`` hook records, and that a flow already recorded is never recorded again, whichever hooks
mitmproxy calls after."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow

from addons.core.store import Store
from addons.recorder import RECORDED, Recorder, StreamedBody, streamed_note


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'hooks.db'}", checkpoint_every=3600)
    s.migrate()
    s.start()
    yield s
    s.close()


def run(recorder: Recorder, hook: str, flow) -> None:
    with taddons.context(recorder):
        asyncio.run(getattr(recorder, hook)(flow))


def outcomes(store: Store) -> list[tuple]:
    return [(c["outcome"], c["error"]) for c in store.calls(newest_first=False)]


@pytest.mark.parametrize("message", ["Client disconnected.", "stream reset by client (CANCEL)", "anything at all"])
def test_a_client_that_left_is_told_by_its_connection_not_by_words(store, message):
    f = tflow.tflow()
    f.client_conn.state = ConnectionState.CLOSED  # what mitmproxy sets before it calls any hook
    f.error = Error(message)
    run(Recorder(store), "error", f)
    assert outcomes(store) == [("client_gone", message)]


@pytest.mark.parametrize("message", ["server closed connection", "Client disconnected."])
def test_a_failure_with_the_client_still_there_is_failed(store, message):
    """The words do not decide: whatever the message says, a client whose connection is still
    readable has not left, and the call failed."""
    f = tflow.tflow()
    f.error = Error(message)
    run(Recorder(store), "error", f)
    assert outcomes(store) == [("failed", message)]


def test_a_flow_is_recorded_once_whatever_hooks_follow(store, caplog):
    """A large answer is recorded at its headers; the response hook at the end of its body, and
    the error hook when it breaks, write nothing more. The break is logged, once."""
    f = tflow.tflow(resp=True)
    f.response.headers["content-length"] = str(5 << 20)
    recorder = Recorder(store)

    async def hooks() -> None:
        await recorder.responseheaders(f)
        assert isinstance(f.response.stream, StreamedBody) and f.metadata[RECORDED][1] == "answered"
        f.response.stream(b"x" * 1000)
        await recorder.response(f)
        f.error = Error("server closed connection")
        await recorder.error(f)

    with caplog.at_level(logging.WARNING, "agentgate.recorder"), taddons.context(recorder):
        asyncio.run(hooks())
    [(outcome, _)] = outcomes(store)
    assert outcome == "forwarded"
    [line] = [r.getMessage() for r in caplog.records if r.name == "agentgate.recorder"]
    assert "broke after 1000 of 5242880 bytes (upstream failed: server closed connection)" in line


def test_answers_made_by_the_gateway_are_not_streamed_or_recorded_early(store):
    """A refusal set in a request hook passes responseheaders (mitmproxy emulates it) untouched."""
    from addons.core.awserrors import Refusal
    from addons.stage import answer

    f = tflow.tflow()
    answer(f, Refusal(403, "AccessDenied", "no", "policy"))
    f.response.headers["content-length"] = str(5 << 20)  # even if it claimed to be large
    recorder = Recorder(store)

    async def hooks() -> None:
        await recorder.responseheaders(f)
        assert not f.response.stream and RECORDED not in f.metadata
        await recorder.response(f)

    with taddons.context(recorder):
        asyncio.run(hooks())
    assert [o for o, _ in outcomes(store)] == ["refused"]
    assert isinstance(f.response, http.Response)


def test_a_streamed_answers_note_names_its_integrity_headers_in_words_that_agree():
    """The record of an answer committed before its body names the headers that vouch for the body,
    one or several, in a sentence that reads right either way."""
    def answer(**headers):
        r = http.Response.make(200, b"")
        del r.headers["content-length"]
        for name, value in headers.items():
            r.headers[name.replace("_", "-")] = value
        return r

    one = streamed_note(answer(content_length="5", etag='"abc"'))
    assert one.endswith("upstream declared 5 bytes; its etag is in the response headers"), one
    two = streamed_note(answer(etag='"abc"', x_amz_checksum_crc32="AAAAAA=="))
    assert "its etag, x-amz-checksum-crc32 are in the response headers" in two, two
    assert streamed_note(answer()).endswith("upstream did not declare its length")
