"""AWS-shaped errors: a refusal rendered in the service's own protocol, so SDKs raise ClientError.

JSON protocols get ``__type``/``message`` and ``x-amzn-ErrorType``; rest-xml (S3) gets
``<Error><Code>`` (and ``<Region>`` where the refusal names the region to sign for); query gets
``<ErrorResponse>``; ec2 gets ``<Response><Errors>``; RPC v2 CBOR gets a CBOR map, and so does a
json call sent as CBOR (``application/x-amz-cbor-1.1``, as the Java SDKs send Kinesis), in the
content type it was sent in. The message says what happened and what to do; it never carries a
token.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from xml.sax.saxutils import escape


@dataclasses.dataclass(frozen=True)
class Refusal:
    status: int  # HTTP status for the agent
    code: str  # the AWS error code the SDK reports, e.g. AccessDenied
    message: str  # what happened, why, and what to do
    stage: str  # which stage refused: egress, auth, classify, policy, approval, signer, store
    outcome: str = "refused"  # how the record names it
    # S3's answer to a signature scoped to another region than the endpoint's: the region to sign
    # for, as S3 gives it (``<Region>`` and ``x-amz-bucket-region``), which botocore's
    # S3RegionRedirector reads to sign again for it and retry
    region: str | None = None


# What XML 1.0 cannot carry and UTF-8 cannot encode: control characters, lone surrogates (undecodable
# request bytes, which mitmproxy decodes with surrogateescape), U+FFFE and U+FFFF.
_UNRENDERABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape_one(match: re.Match) -> str:
    c = ord(match.group())
    if 0xDC80 <= c <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` with what no protocol can carry written as ``\\xNN`` / ``\\uNNNN`` escapes."""
    return _UNRENDERABLE.sub(_escape_one, text)


def access_denied(message: str, stage: str, status: int = 403) -> Refusal:
    return Refusal(status, "AccessDenied", message, stage)


def guess_protocol(headers, path: str = "") -> str:
    """The protocol of a request the classifier could not place, from its shape."""
    ctype = (headers.get("content-type") or "").lower()
    if headers.get("x-amz-target"):
        return "json"
    if headers.get("smithy-protocol") == "rpc-v2-cbor":
        return "smithy-rpc-v2-cbor"
    if "x-www-form-urlencoded" in ctype:
        return "query"
    if "json" in ctype:
        return "rest-json"
    return "rest-xml"


def _cbor_text(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 256:
        head = bytes([0x78, n])
    elif n < 65536:
        head = bytes([0x79]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x7A]) + n.to_bytes(4, "big")
    return head + b


def _cbor_error(code: str, msg: str) -> bytes:
    """The CBOR map ``{"__type": code, "message": msg}`` (RPC v2 CBOR, and json calls sent as CBOR)."""
    return bytes([0xA2]) + _cbor_text("__type") + _cbor_text(code) + _cbor_text("message") + _cbor_text(msg)


def render(refusal: Refusal, protocol: str | None, request_id: str | None = None,
           request_content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the refusal in ``protocol``; a json protocol's answer takes the
    request's own ``application/x-amz-json-1.x`` (DynamoDB speaks 1.0, most others 1.1), and is
    CBOR in the request's ``application/x-amz-cbor-1.1`` when the call was sent so (the SDK for
    Java's Kinesis client parses nothing else)."""
    from .classifier import amz_cbor

    rid = request_id or str(uuid.uuid4())
    code, msg = printable(refusal.code), printable(refusal.message)
    headers = {"x-amzn-RequestId": rid, "x-amz-request-id": rid, "x-agentgate-refused-by": refusal.stage}
    region = printable(refusal.region) if refusal.region else None
    if region:  # the header is what a HEAD's answer, which has no body, carries of it
        headers["x-amz-bucket-region"] = region
    cbor = amz_cbor(request_content_type) if protocol == "json" else None
    if cbor is not None:
        headers["x-amzn-ErrorType"] = code
        headers["content-type"] = cbor
        body = _cbor_error(code, msg)
    elif protocol in ("json", "rest-json"):
        headers["x-amzn-ErrorType"] = code
        if protocol == "json":
            asked = (request_content_type or "").split(";")[0].strip().lower()
            headers["content-type"] = asked if asked == "application/x-amz-json-1.0" else "application/x-amz-json-1.1"
        else:
            headers["content-type"] = "application/json"
        body = json.dumps({"__type": code, "message": msg, "Message": msg}).encode()
    elif protocol == "smithy-rpc-v2-cbor":
        headers["smithy-protocol"] = "rpc-v2-cbor"
        headers["content-type"] = "application/cbor"
        body = _cbor_error(code, msg)
    elif protocol == "query":
        headers["content-type"] = "text/xml"
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(msg)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
        ).encode()
    elif protocol == "ec2":
        headers["content-type"] = "text/xml;charset=UTF-8"
        body = (
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(msg)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        ).encode()
    else:  # rest-xml and anything unknown
        headers["content-type"] = "application/xml"
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(msg)}</Message>" + (f"<Region>{escape(region)}</Region>" if region else "")
            + f"<RequestId>{rid}</RequestId></Error>"
        ).encode()
    return refusal.status, headers, body
