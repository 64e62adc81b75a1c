"""What the stages share: the flow.metadata keys (see the table in addons/__init__.py), when a
stage runs (``requestheaders`` for streamed bodies, ``request`` otherwise), and answering a flow
with an AWS-shaped refusal."""

from __future__ import annotations

from mitmproxy import http

from .core.awserrors import Refusal, guess_protocol, render

STREAM = "agentgate.stream"
HOST = "agentgate.host"
AUTH = "agentgate.auth"  # core.sigv4.AgentAuth: the agent's own signature, parsed
TUNNEL = "agentgate.tunnel"
PRINCIPAL = "agentgate.principal"
TOKEN = "agentgate.token"  # the validated token, for web-identity roles; never recorded
CALL = "agentgate.call"
DECISION = "agentgate.decision"
APPROVAL = "agentgate.approval"  # core.approvals.Approval: what released the call, or the grant it runs under
SIGNED = "agentgate.signed"
REFUSAL = "agentgate.refusal"
STARTED = "agentgate.started"
BODY_DIGEST = "agentgate.body"  # (sha256 hexdigest, size) of a streamed request body


def due(flow: http.HTTPFlow, hook: str) -> bool:
    """Should a request stage run in ``hook`` for this flow? Streamed requests run their stages
    in requestheaders (before the body goes upstream), the rest in request (body in hand)."""
    if flow.response or flow.error:
        return False
    return bool(flow.metadata.get(STREAM)) == (hook == "requestheaders")


def answer(flow: http.HTTPFlow, refusal: Refusal) -> None:
    """Answer ``flow`` with ``refusal``, shaped for the service's protocol."""
    call = flow.metadata.get(CALL)
    protocol = getattr(call, "protocol", None) or guess_protocol(flow.request.headers, flow.request.path)
    status, headers, body = render(refusal, protocol)
    flow.metadata[REFUSAL] = refusal
    flow.metadata[STREAM] = False
    flow.request.stream = False
    flow.response = http.Response.make(status, body, headers)


def refuse_connect(flow: http.HTTPFlow, status: int, reason: str, stage: str) -> None:
    """Answer a CONNECT with ``status`` (403 or 407) and a reason in the body and a header."""
    flow.metadata[REFUSAL] = Refusal(status, "Forbidden" if status == 403 else "ProxyAuthenticationRequired", reason, stage)
    headers = {"content-type": "text/plain; charset=utf-8", "x-agentgate-reason": reason}
    if status == 407:
        headers["proxy-authenticate"] = 'Basic realm="agentgate"'
    flow.response = http.Response.make(status, f"agentgate: {reason}\n", headers)
