"""classify: what is asked. Resolves service, operation, parameters and IAM action of each call
from the wire request alone (core.classifier, from botocore's models). A refusal left by an
earlier stage is answered here, once the protocol of the error is known."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mitmproxy import http

from .core import classifier
from .core.awserrors import Refusal
from .stage import AUTH, CALL, HOST, REFUSAL, STREAM, answer, declares_body, due, header_pairs, lowered


OFF_LOOP_OVER = 256 * 1024  # bytes: a larger body is classified in a worker thread, off the event loop


def signed_elsewhere(call: classifier.Classification, presigned: bool, host: str) -> Refusal:
    """The answer to a call whose signature names another region (``call.signed_region``) than its
    host is in (``call.region``). It is refused whatever policy says: the gateway would decide it
    for the host's region and sign it for that region, which the agent did not sign for. S3 gets
    S3's own answer, naming the region to sign for in ``<Region>`` and ``x-amz-bucket-region``:
    the SDK signs again for it and retries, as it does against AWS (botocore's S3RegionRedirector:
    `aws s3 ls --region us-east-1 --endpoint-url https://s3.eu-west-1.amazonaws.com`); that retry
    is a call of its own, decided and recorded for its region. Other services get AccessDenied
    saying which region to sign for."""
    signed, region = (call.signed_region or "")[:40], call.region
    fix = f"agentgate forwards a call only as signed for the region its host {host[:100]} is in: sign for {region!r}"
    if call.signing_name == "s3":
        if presigned:
            code, what = "AuthorizationQueryParametersError", "Error parsing the X-Amz-Credential parameter"
        else:
            code, what = "AuthorizationHeaderMalformed", "The authorization header is malformed"
        return Refusal(400, code, f"{what}; the region {signed!r} is wrong; expecting {region!r} ({fix}; "
                       "SDKs sign again for it and retry on this answer)", "classify", region=region)
    return Refusal(403, "AccessDenied", f"agentgate refused the call: {call.error}; {fix} (set the client's region "
                   f"to it, or send the call to an endpoint in {signed!r})", "classify")


def decoded_elsewhere(call: classifier.Classification) -> Refusal:
    """The answer to a REST call whose path names one operation at its raw slashes and another (or
    other resources) once its encoded slashes are decoded (``call.decoded_as``). It is refused
    whatever policy says: AWS and moto route on the raw path, but a server that decodes the path
    first (a stand-in for AWS, a proxy on the way) would run what policy never saw."""
    return Refusal(403, "AccessDenied", f"agentgate refused the call: {call.decoded_as}; agentgate forwards no "
                   "call whose path names one operation as sent and another once decoded, whatever policy "
                   "says: a value holding a slash cannot be sent in that part of this operation's path", "classify")


class Classify:
    def __init__(self, lets_unknown: Callable[[], bool] = lambda: False) -> None:
        # whether the policies in force have a rule that may let an unclassified call (`unknown`) go on
        self.lets_unknown = lets_unknown

    def _run(self, flow: http.HTTPFlow, body: bytes | None) -> None:
        req = flow.request
        path, _, query = req.path.partition("?")
        host = flow.metadata.get(HOST) or req.host_header or req.host
        call = classifier.classify(req.method, host, path, query, lowered(header_pairs(flow, req)), body)
        if call.error and call.action != "unknown":
            # A body that does not parse, or parameters that do not fit the shape: policy decides
            # it as `unknown` (denied unless a rule names it); service and operation stay recorded.
            call.action, call.access_level = "unknown", None
        flow.metadata[CALL] = call
        if call.signed_region is not None and REFUSAL not in flow.metadata:
            # answered here, before policy: no rule can have it signed for a region it was not signed for
            auth = flow.metadata.get(AUTH)
            answer(flow, signed_elsewhere(call, bool(auth is not None and auth.presigned), host))
            return
        if call.decoded_as is not None and REFUSAL not in flow.metadata:
            # answered here, before policy: a rule on either operation (or on `unknown`) cannot have it run as the other
            answer(flow, decoded_elsewhere(call))
            return
        if body is None and flow.metadata.get(STREAM) and not classifier.body_is_data(call) and (
                declares_body(req) or ((req.is_http2 or req.is_http3) and "content-length" not in req.headers)):
            # A declared payload hash lets a body stream past the stages, which suits data (an S3
            # object), not parameters: read without the body, the call would be decided, bound to
            # an approval and recorded without them, and a server may act on what is in it (an
            # Action in a form body, a JSON body read as a form). So the body is read first (up to
            # max_body_bytes), and this stage and the rest run again in ``request``. (An HTTP/2
            # body is not declared by its head: one without Content-Length may follow.)
            flow.metadata[STREAM] = False
            return
        refusal = flow.metadata.get(REFUSAL)
        if refusal is not None:
            answer(flow, refusal)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            self._run(flow, None)
            return
        target = flow.request.headers.get("x-amz-target")
        if target and flow.response is None and REFUSAL not in flow.metadata and \
                not classifier.default_classifier().target_names_an_operation(target) and not self.lets_unknown():
            # decided by its head: no body can make it an operation, so the body is not held (a
            # refusal made now lets limits drop it as it comes) and the call is unknown, which no
            # rule in force lets go on (where one may, it is read and decided as any unknown call)
            flow.metadata[REFUSAL] = Refusal(
                403, "AccessDenied", f"agentgate refused the call: X-Amz-Target {target[:100]!r} names no operation "
                "of any service it knows (unknown); check the service's API version and operation name", "classify")

    def request(self, flow: http.HTTPFlow):
        if due(flow, "request"):
            body = flow.request.raw_content
            if body is not None and (len(body) > OFF_LOOP_OVER or (
                    body and "content-encoding" in flow.request.headers)):
                # reading a large body's parameters (a form of a million list items) takes seconds,
                # during which the event loop would serve no one else; a compressed body may be
                # that large once inflated (15 KB of gzip inflate to 16 MB)
                return asyncio.to_thread(self._run, flow, body)
            self._run(flow, body)
        return None
