"""web: the chain inside mitmweb (``agentgate run --web``), for watching calls live.

mitmweb shows each flow as it stands: the request as the signer forwarded it and the response as
the agent received it (so masked only where the policy's ``mask_for_agent`` says; the masking for
the record applies to the store, not to this view). The one thing this addon changes is what would
otherwise show credentials: once a flow is done (after the recorder), the JIT signature and session
token the signer added, and any token the agent presented, are replaced by a placeholder. The
request has been sent by then; what mitmweb holds afterwards cannot be replayed to AWS as it was.

It goes last in the chain.

mitmweb is for watching, not for steering: ``read_only`` makes its web application refuse every
request that would change something (403), so that whoever holds mitmweb's token can look at the
calls and nothing more. mitmweb's own API would otherwise let it change the proxy's options
(``ssl_insecure``, which turns off the check of AWS's certificates; ``map_remote``,
``modify_body``, ``save_stream_file``, ``scripts``, the listen ``mode``), run any mitmproxy
command, replay a flow, edit one (a call held for approval among them, before it is signed and
sent), or resume, kill, duplicate, revert and clear flows.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from typing import Any

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


READ_ONLY = ("agentgate runs mitmweb read-only: it shows the calls; it does not change the gateway's options, "
             "run commands, replay, edit, resume, kill or clear flows")
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _read_only_handler(handler: type) -> type:
    """``handler`` refusing every method but GET and HEAD with 403, before anything else it does."""

    class ReadOnly(handler):  # type: ignore[misc, valid-type]
        def prepare(self) -> Any:
            if self.request.method not in SAFE_METHODS:
                self.set_status(403)
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish(READ_ONLY + "\n")
                return None
            return super().prepare()

    ReadOnly.__name__ = ReadOnly.__qualname__ = f"ReadOnly{handler.__name__}"
    return ReadOnly


def read_only(application: Any) -> int:
    """Make mitmweb's web application (a tornado Application) read-only: every handler but the
    index page (whose POST is the login form, which changes nothing) refuses all but GET and HEAD.
    The number of handlers so wrapped; raises RuntimeError when mitmweb's routes are not where
    this looks for them, rather than leave them writable."""
    rules = getattr(getattr(application, "wildcard_router", None), "rules", None)
    if not rules:
        raise RuntimeError("mitmweb's web application has no routes where agentgate looks for them "
                           "(tornado's wildcard_router.rules): refusing to start it writable")
    wrapped = 0
    for rule in rules:
        target = rule.target
        if not isinstance(target, type) or rule.matcher.regex.pattern in ("/$", "/"):
            continue
        rule.target = _read_only_handler(target)
        wrapped += 1
    return wrapped
