"""web: the chain inside mitmweb (``agentgate run --web``), for watching calls live.

mitmweb shows each flow as it stands: the request as the signer forwarded it and the response as
the agent received it (so masked only where the policy's ``mask_for_agent`` says; the masking for
the record applies to the store, not to this view). The one thing this addon changes is what would
otherwise show credentials: once a flow is done (after the recorder), the JIT signature and session
token the signer added, and any token the agent presented, are replaced by a placeholder. The
request has been sent by then; what mitmweb holds afterwards cannot be replayed to AWS as it was.

It goes last in the chain.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from mitmproxy import http

from .core.records import REDACTED_HEADERS
from .core.sigv4 import CREDENTIAL_QUERY_PARAMS

PLACEHOLDER = "(removed by agentgate)"
_CREDENTIAL_QUERY = {p.lower() for p in CREDENTIAL_QUERY_PARAMS}


def scrub(flow: http.HTTPFlow) -> None:
    """Replace every credential in the flow's headers and query string with the placeholder."""
    for message in (flow.request, flow.response):
        if message is None:
            continue
        for name in list(message.headers.keys()):
            if name.lower() in REDACTED_HEADERS:
                message.headers[name] = PLACEHOLDER
    path, sep, query = flow.request.path.partition("?")
    if sep and any(k.lower() in _CREDENTIAL_QUERY for k, _ in parse_qsl(query, keep_blank_values=True)):
        pairs = [(k, PLACEHOLDER if k.lower() in _CREDENTIAL_QUERY else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        flow.request.path = f"{path}?{urlencode(pairs)}"


class WebScrub:
    def response(self, flow: http.HTTPFlow) -> None:
        scrub(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        scrub(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Transport A: the agent's token is the proxy password. The CONNECT has been authenticated
        # (auth runs earlier); what remains on the flow is for display only.
        if "proxy-authorization" in flow.request.headers:
            flow.request.headers["proxy-authorization"] = PLACEHOLDER
