"""Fuzzing the AWS-shaped errors (core.awserrors): whatever a refusal's message holds (text read off
the request: undecodable bytes, control characters, markup), it renders in every protocol and the
agent's SDK (botocore's own parsers) reads back the code and the message. FUZZ_EXAMPLES raises the
number of examples."""

from __future__ import annotations

import os

import botocore.parsers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core.awserrors import Refusal, guess_protocol, printable, render

PROTOCOLS = ["json", "rest-json", "rest-xml", "query", "ec2", "smithy-rpc-v2-cbor", None]

messages = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),  # as mitmproxy decodes a path
    st.sampled_from(["<Error>", "]]>", "&amp;", "\x00", "\ufffe", "\ud800", "a\r\nb", "\x1b[31m"]),
)


@given(messages, st.sampled_from(["AccessDenied", "ApprovalPending", "InvalidRequest"]), st.sampled_from(PROTOCOLS))
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or 300), deadline=2000, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@example("GET /\udcff\udcfe/x matches no operation of cloudfront", "AccessDenied", "rest-xml")  # raised UnicodeEncodeError
@example("bad \x01 byte", "AccessDenied", "query")  # not XML 1.0: the SDK could not read the error
def test_any_message_renders_in_every_protocol(message, code, protocol):
    status, headers, body = render(Refusal(403, code, message, "policy"), protocol)
    parser = botocore.parsers.create_parser(protocol or "rest-xml")
    parsed = parser.parse({"status_code": status, "headers": headers, "body": body}, None)
    assert parsed["Error"]["Code"] == code
    expected = printable(message)
    got = parsed["Error"]["Message"]
    if protocol in ("json", "rest-json", "smithy-rpc-v2-cbor"):
        assert got == expected
    else:  # XML reads every line end as \n; the parser may trim surrounding blanks
        assert (got or "").strip() == expected.replace("\r\n", "\n").replace("\r", "\n").strip()
    assert "\\x" in printable("\udcff") and printable("plain text") == "plain text"


@given(st.dictionaries(st.sampled_from(["content-type", "x-amz-target", "smithy-protocol", "x-other"]),
                       st.text(max_size=40), max_size=4), st.text(max_size=40))
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or 200), deadline=2000, database=None)
def test_any_request_shape_gets_a_protocol(headers, path):
    assert guess_protocol(headers, path) in PROTOCOLS
