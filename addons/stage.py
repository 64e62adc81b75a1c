"""What the stages share: the flow.metadata keys (see the table in addons/__init__.py), when a
stage runs (``requestheaders`` for streamed bodies, ``request`` otherwise), and answering a flow
with an AWS-shaped refusal."""

from __future__ import annotations

import inspect

from mitmproxy import http

from .core.awserrors import Refusal, guess_protocol, render
from .core.records import new_id

STREAM = "agentgate.stream"
HOST = "agentgate.host"
AUTH = "agentgate.auth"  # core.sigv4.AgentAuth: the agent's own signature, parsed
TUNNEL = "agentgate.tunnel"
PRINCIPAL = "agentgate.principal"
TOKEN = "agentgate.token"  # the validated token, for web-identity roles; never recorded
CLIENT_LEFT = "agentgate.client_left"  # an HTTP/2 agent reset the call's stream: its error code (failures.py)
FAILED_STATUS = "agentgate.failed_status"  # the status a call that failed on its way is answered with (failures.py)
CALL = "agentgate.call"
DECISION = "agentgate.decision"
POLICIES = "agentgate.policies"  # core.policy.PolicySet: the version that decided the call
APPROVAL = "agentgate.approval"  # core.approvals.Approval: what released the call, or the grant it runs under
SIGNED = "agentgate.signed"
REFUSAL = "agentgate.refusal"
RELEASED = "agentgate.released"  # True once the approval stage released a call whose decision is approve
RECORD_ID = "agentgate.record_id"  # the id the call's record gets: set before an approval is used, which names it
STARTED = "agentgate.started"
BODY_DIGEST = "agentgate.body"  # (sha256 hexdigest, size) of a streamed request body
HELD = "agentgate.held"  # bytes: a response body masking holds whole (not streamed) may take, at most
OVER_CAP = "agentgate.over_cap"  # (sha256 hexdigest, size, cap): a buffered response body that passed its cap


_PAIRS = "agentgate.pairs"  # {id(message): (headers.fields, pairs)}: header_pairs' cache


def header_pairs(flow: http.HTTPFlow, message: http.Message) -> list[tuple[str, str]]:
    """The (name, value) pairs of ``message``'s headers (the flow's request or response) as
    mitmproxy decodes them, decoded once for all the stages: mitmproxy's Headers decode every field
    again on each access. Re-read when the headers have been replaced or changed."""
    fields = message.headers.fields
    cache = flow.metadata.get(_PAIRS)
    if cache is None:
        cache = flow.metadata[_PAIRS] = {}
    found = cache.get(id(message))
    if found is not None and found[0] is fields:
        return found[1]
    pairs = [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in fields]
    cache[id(message)] = (fields, pairs)
    return pairs


def declares_body(message: http.Message) -> bool:
    """Whether ``message``'s head says a body follows (HTTP/1's rule: Transfer-Encoding, or a
    Content-Length other than 0); an HTTP/2 body that no Content-Length declares is not seen here."""
    if "transfer-encoding" in message.headers:
        return True
    length = message.headers.get("content-length")
    return length is not None and length.strip() not in ("", "0")


def lowered(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-case name -> value, repeated headers joined with ", " (as mitmproxy's Headers read)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def due(flow: http.HTTPFlow, hook: str) -> bool:
    """Should a request stage run in ``hook`` for this flow? Streamed requests run their stages
    in requestheaders (before the body goes upstream), the rest in request (body in hand)."""
    if flow.response or flow.error:
        return False
    return bool(flow.metadata.get(STREAM)) == (hook == "requestheaders")


def own_request_id(flow: http.HTTPFlow) -> str:
    """The request id of an answer the gateway makes itself: the id the call's record gets, so that
    the id the agent is given finds its record (``agentgate calls show ID``) and is never taken
    for AWS's (the record's ``aws_request_id`` holds only an id AWS returned)."""
    return flow.metadata.setdefault(RECORD_ID, new_id())


def answer(flow: http.HTTPFlow, refusal: Refusal) -> None:
    """Answer ``flow`` with ``refusal``, shaped for the service's protocol; its request id is the
    call's record id (``own_request_id``)."""
    call = flow.metadata.get(CALL)
    protocol = getattr(call, "protocol", None) or guess_protocol(flow.request.headers, flow.request.path)
    status, headers, body = render(refusal, protocol, own_request_id(flow),
                                   request_content_type=flow.request.headers.get("content-type"))
    flow.metadata[REFUSAL] = refusal
    flow.metadata[STREAM] = False
    flow.request.stream = False
    flow.response = http.Response.make(status, body, headers)


FLOW_EVENTS = frozenset({"http_connect", "requestheaders", "request", "responseheaders", "response"})


def fail_closed(event, addon, error: BaseException) -> None:
    """A stage's hook raised on an HTTP flow: the call must not go on as if that stage had passed.
    Before upstream, the flow is answered with an AWS-shaped 500 (later stages see it answered and
    do nothing; the recorder records it); after, the response is replaced by that 500, since it may
    not have been masked or recorded. Stages are this package's add-ons; mitmproxy's own are left
    to mitmproxy."""
    if event.name not in FLOW_EVENTS or not type(addon).__module__.startswith(__package__ + "."):
        return
    flow = event.args()[0]
    if not isinstance(flow, http.HTTPFlow) or flow.error is not None:
        return
    stage = type(addon).__name__.lower()
    reason = (f"agentgate failed while handling this call ({stage}: {type(error).__name__}), so it is not "
              "forwarded; the gateway's log has the details")
    recorded_as = f"{stage}-failure"  # the record's rule: agentgate:<stage>-failure
    if event.name == "http_connect":
        if flow.response is None:
            refuse_connect(flow, 502, reason, recorded_as)
        return
    if event.name in ("requestheaders", "request") and flow.response is not None:
        return  # already answered without going upstream
    answer(flow, Refusal(500, "InternalFailure", reason, recorded_as))


class _Event:
    """What ``fail_closed`` reads of a hook: its name and its arguments."""

    __slots__ = ("name", "_args")

    def __init__(self, name: str, flow: http.HTTPFlow) -> None:
        self.name, self._args = name, [flow]

    def args(self) -> list:
        return self._args


def guard(addon: object) -> int:
    """Have ``addon``'s flow hooks fail their flow closed (``fail_closed``) when they raise,
    whatever dispatches them. The gateway's own hook dispatch (addons/fastpath.py) does that for
    every add-on; mitmproxy's, which the gateway falls back to when mitmproxy changed and which
    mitmweb's master (``--web``) uses, logs the error and lets the flow go on to the next add-on,
    and so past the stage that failed: an answer not masked, a call not decided. The number of
    hooks guarded."""
    from mitmproxy import exceptions

    from .fastpath import log_addon_error

    def failed(name: str, flow: http.HTTPFlow, e: Exception) -> None:
        if isinstance(e, exceptions.AddonHalt):  # mitmproxy's own way to stop an event: not a failure
            raise e
        log_addon_error(e)
        fail_closed(_Event(name, flow), addon, e)

    guarded = 0
    for name in FLOW_EVENTS:
        hook = getattr(addon, name, None)
        if hook is None or getattr(hook, "agentgate_guarded", False):
            continue

        if inspect.iscoroutinefunction(hook):
            async def closed_on_error(flow, _hook=hook, _name=name):
                try:
                    return await _hook(flow)
                except Exception as e:  # noqa: BLE001 - logged, and the flow failed closed
                    failed(_name, flow, e)
        else:
            def closed_on_error(flow, _hook=hook, _name=name):
                try:
                    return _hook(flow)
                except Exception as e:  # noqa: BLE001 - logged, and the flow failed closed
                    failed(_name, flow, e)

        closed_on_error.agentgate_guarded = True  # type: ignore[attr-defined]
        setattr(addon, name, closed_on_error)
        guarded += 1
    return guarded


def refuse_connect(flow: http.HTTPFlow, status: int, reason: str, stage: str) -> None:
    """Answer a CONNECT with ``status`` (403 or 407) and a reason in the body and a header."""
    code = {403: "Forbidden", 407: "ProxyAuthenticationRequired"}.get(status, "BadGateway")
    flow.metadata[REFUSAL] = Refusal(status, code, reason, stage)
    headers = {"content-type": "text/plain; charset=utf-8", "x-agentgate-reason": reason}
    if status == 407:
        headers["proxy-authenticate"] = 'Basic realm="agentgate"'
    flow.response = http.Response.make(status, f"agentgate: {reason}\n", headers)
