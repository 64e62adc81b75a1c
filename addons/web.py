"""web: the chain inside mitmweb (``agentgate run --web``), for watching calls live.

mitmweb shows each flow as it stands: the request as the signer forwarded it and the response as
the agent received it (so masked only where the policy's ``mask_for_agent`` says; the masking for
the record applies to the store, not to this view). The one thing this addon changes is what would
otherwise show credentials: once a flow is done (after the recorder), the JIT signature and session
token the signer added, and any token the agent presented, are replaced by a placeholder. The
request has been sent by then; what mitmweb holds afterwards cannot be replayed to AWS as it was.
It also keeps mitmweb's list, which mitmweb holds in memory, to the last ``WEB_KEEP`` finished
flows.

It goes last in the chain.

A flow still under way (held for approval, waiting for upstream) keeps its credentials until it
is done, and mitmweb shows flows as they go: ``read_only`` also has every flow mitmweb describes
(its list, its live updates) described with those credentials replaced by the placeholder, so that
an agent's token presented as its session token, say, is not shown while its call is held.

mitmweb is for watching, not for steering: ``read_only`` makes its web application refuse every
request that would change something (403), so that whoever holds mitmweb's token can look at the
calls and nothing more. mitmweb's own API would otherwise let it change the proxy's options
(``ssl_insecure``, which turns off the check of AWS's certificates; ``map_remote``,
``modify_body``, ``save_stream_file``, ``scripts``, the listen ``mode``), run any mitmproxy
command, replay a flow, edit one (a call held for approval among them, before it is signed and
sent), or resume, kill, duplicate, revert and delete flows (a delete kills a call under way). Its
Clear stays: it empties mitmweb's own list of flows, which it keeps in memory until then, and
touches no call or record. Its download of the flows as a flow
file is refused too: it would write each flow whole, the gateway's own state of the call with it
and the credentials of the calls still under way (``agentgate export --format mitm`` writes the
recorded calls, masked, as a flow file).
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlencode

from mitmproxy import ctx, http

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
    flow.request.path = scrubbed_path(flow.request.path)


def scrubbed_path(path: str) -> str:
    """A request path with the values of its credential query parameters replaced."""
    base, sep, query = path.partition("?")
    if sep and any(k.lower() in _CREDENTIAL_QUERY for k, _ in parse_qsl(query, keep_blank_values=True)):
        pairs = [(k, PLACEHOLDER if k.lower() in _CREDENTIAL_QUERY else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        return f"{base}?{urlencode(pairs)}"
    return path


def _scrubbed_pairs(pairs: Any) -> Any:
    return tuple((k, PLACEHOLDER) if str(k).lower() in REDACTED_HEADERS else (k, v) for k, v in pairs)


def scrubbed_json(flow_to_json: Any) -> Any:
    """mitmweb's description of a flow (``flow_to_json``), with the credentials in its headers,
    trailers and query string replaced by the placeholder, whatever the flow's state."""

    def describe(flow: Any) -> dict:
        described = flow_to_json(flow)
        for part in ("request", "response"):
            message = described.get(part)
            if not isinstance(message, dict):
                continue
            for field in ("headers", "trailers"):
                if message.get(field):
                    message[field] = _scrubbed_pairs(message[field])
            if part == "request" and isinstance(message.get("path"), str):
                message["path"] = scrubbed_path(message["path"])
        return described

    describe.agentgate_scrubbed = True  # type: ignore[attr-defined]
    return describe


WEB_KEEP = 5000  # finished flows mitmweb lists at most; the oldest leave its list (and memory) first


class WebScrub:
    """Last in the chain under ``--web``: each finished flow's credentials replaced, and mitmweb's
    list (which keeps every flow it holds in memory) cut to the last ``keep`` finished flows, so
    that a gateway left running with ``--web`` does not grow with its traffic. A flow under way is
    never taken off the list (mitmweb's removal would kill it)."""

    def __init__(self, keep: int = WEB_KEEP) -> None:
        self.keep = keep
        self.finished: deque[weakref.ref] = deque()  # weak: a flow the operator cleared is not held here

    def response(self, flow: http.HTTPFlow) -> None:
        scrub(flow)
        self._listed(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        scrub(flow)
        self._listed(flow)

    def _listed(self, flow: http.HTTPFlow) -> None:
        self.finished.append(weakref.ref(flow))
        if len(self.finished) <= self.keep:
            return
        view = ctx.master.addons.get("view")
        for _ in range(len(self.finished) - self.keep):
            old = self.finished.popleft()()
            if old is None or view is None or view.get_by_id(old.id) is not old:
                continue  # gone already: cleared, or never listed
            if old.live:  # still sending its answer: its turn comes again
                self.finished.append(weakref.ref(old))
                continue
            view.remove([old])

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Transport A: the agent's token is the proxy password. The CONNECT has been authenticated
        # (auth runs earlier); what remains on the flow is for display only.
        if "proxy-authorization" in flow.request.headers:
            flow.request.headers["proxy-authorization"] = PLACEHOLDER


READ_ONLY = ("agentgate runs mitmweb read-only: it shows the calls; it does not change the gateway's options, "
             "run commands, or replay, edit, duplicate, revert, resume, kill or delete flows")
SAFE_METHODS = frozenset({"GET", "HEAD"})


NO_DUMP = ("agentgate's mitmweb does not write its flows to a file: a flow file holds each flow whole, with the "
           "gateway's own state of the call and the credentials of calls still under way; `agentgate export "
           "--format mitm -o FILE` writes the recorded calls, masked, as a flow file that mitmweb -r opens")


def _read_only_handler(handler: type, refusal: str = READ_ONLY, allowed: frozenset = SAFE_METHODS) -> type:
    """``handler`` refusing every method but ``allowed`` with 403 and ``refusal``, before anything
    else it does."""

    class ReadOnly(handler):  # type: ignore[misc, valid-type]
        def prepare(self) -> Any:
            if self.request.method not in allowed:
                self.set_status(403)
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish(refusal + "\n")
                return None
            return super().prepare()

    ReadOnly.__name__ = ReadOnly.__qualname__ = f"ReadOnly{handler.__name__}"
    return ReadOnly


def read_only(application: Any, web_app: Any = None) -> int:
    """Make mitmweb's web application (a tornado Application) read-only: every handler but the
    index page (whose POST is the login form, which changes nothing) and Clear (which empties
    mitmweb's list) refuses all but GET and HEAD, and the download of the flows (``/flows/dump``) is
    refused whole; and have every flow it
    describes described without credentials (``web_app``: mitmweb's module holding
    ``flow_to_json``, by default mitmproxy.tools.web.app). The number of handlers so wrapped;
    raises RuntimeError when mitmweb's routes or its ``flow_to_json`` are not where this looks for
    them, rather than start it writable or showing credentials."""
    if web_app is None:
        from mitmproxy.tools.web import app as web_app
    to_json = getattr(web_app, "flow_to_json", None)
    if not callable(to_json):
        raise RuntimeError("mitmweb has no flow_to_json where agentgate looks for it: refusing to start it "
                           "showing the credentials of calls under way")
    rules = getattr(getattr(application, "wildcard_router", None), "rules", None)
    if not rules:
        raise RuntimeError("mitmweb's web application has no routes where agentgate looks for them "
                           "(tornado's wildcard_router.rules): refusing to start it writable")
    if not getattr(to_json, "agentgate_scrubbed", False):
        web_app.flow_to_json = scrubbed_json(to_json)
    wrapped = 0
    for rule in rules:
        target = rule.target
        pattern = getattr(getattr(rule.matcher, "regex", None), "pattern", None)  # None: wrapped as any other
        if not isinstance(target, type) or pattern in ("/$", "/"):
            continue
        if pattern == "/flows/dump$":
            rule.target = _read_only_handler(target, NO_DUMP, frozenset())
        elif pattern == "/clear$":  # empties mitmweb's own list (its memory), nothing of the calls
            rule.target = _read_only_handler(target, allowed=SAFE_METHODS | {"POST"})
        else:
            rule.target = _read_only_handler(target)
        wrapped += 1
    return wrapped
