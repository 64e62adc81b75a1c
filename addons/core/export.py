"""Exports of the recorded calls, for other tools: JSON Lines, OCSF, mitmproxy flow files, OSCAL.

Every export reads the store oldest call first and writes records as the store keeps them: masked
bodies, redacted headers, never a credential.

- ``jsonl``: one record per line, the same objects as ``agentgate calls list --json`` (the summary
  keys first, then every other column, the hash chain's ``writer_id``, ``seq``, ``prev_hash`` and
  ``hash`` included), so that ``agentgate verify``'s checks can be redone from the file alone.
- ``ocsf``: one OCSF 1.1.0 API Activity event (class 6003, category Application Activity) per line,
  with the ``cloud`` profile, as SIEMs and Amazon Security Lake ingest them. What OCSF has no
  attribute for (the IAM action, the rule, the chain fields) is under ``unmapped.agentgate``.
- ``mitm``: a mitmproxy flow file of the calls (connection records are left out), which
  ``mitmweb -r FILE`` and ``mitmdump -r FILE`` open; each flow carries the decision in its comment
  and the record in ``flow.metadata["agentgate"]``.
- ``oscal``: an OSCAL assessment-results document whose observations summarise the period per
  NIST SP 800-53 control and point at a JSON Lines file of the same calls (written beside it), at
  a JSON Lines file of the approvals asked for in the period, each with its approval events
  (``iter_approvals``), and at each writer's chain head (``core.report`` works out the numbers).

Nothing here imports mitmproxy until a flow file is written.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from sqlalchemy import literal, select, type_coerce
from sqlalchemy.types import NullType

from .approvals import effective_state
from .chain import _event as chain_event
from .models import Approval as ApprovalRow
from .models import ApprovalEvent, Call
from .store import Store, StoredForm, _approval, _record, call_dict, iso, readable

FORMATS = ("jsonl", "ocsf", "mitm", "oscal")
OCSF_VERSION = "1.1.0"
PRODUCT = "agentgate"
BATCH = 1000


def product_version() -> str:
    try:
        from importlib.metadata import version

        return version("agentgate")
    except Exception:  # noqa: BLE001 - running from a checkout that is not installed
        return "0"


# ---------------------------------------------------------------------------------------------
# Reading


def iter_calls(store: Store, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
               session_id: str | None = None, batch: int = BATCH,
               unreadable: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every call in [since, until), oldest first, as ``call_dict`` shows it; read a batch at a time
    (keyset pages on (time, id), each page starting after the last row's time as stored, whether or
    not it can be read), so a large store is never held in memory. Each value is read as ``verify``
    reads it: a call holding one that cannot be read is named in ``unreadable`` and left out (with
    no list, ``Unreadable`` is raised)."""
    store._check_schema()
    t = Call.__table__
    c = t.c
    form = StoredForm(t, store.engine.dialect, forms=False)
    stored_time = type_coerce(c.time, NullType())  # compared as stored, as the query orders it
    after: tuple[Any, str] | None = None
    while True:
        q = form.select()
        if since is not None:
            q = q.where(c.time >= since)
        if until is not None:
            q = q.where(c.time < until)
        if session_id is not None:
            q = q.where(c.session_id == session_id)
        if after is not None:
            q = q.where((stored_time > after[0]) | ((stored_time == after[0]) & (c.id > after[1])))
        q = q.order_by(c.time, c.id).limit(batch)
        with store._reading() as conn:
            rows = conn.execute(q).all()
        for r in readable(rows, form, _record, unreadable):
            yield call_dict(r)
        if len(rows) < batch:
            return
        last = rows[-1]._mapping
        # a time PostgreSQL's driver cannot read (infinity) is fetched as NULL: the page after it
        # starts after the time the store holds for that call
        after = (literal(last["time"], NullType()) if last["time"] is not None
                 else select(c.time).where(c.id == last["id"]).scalar_subquery(), last["id"])


# ---------------------------------------------------------------------------------------------
# JSON Lines


def jsonl_line(call: dict[str, Any]) -> str:
    return json.dumps(call, ensure_ascii=False, separators=(",", ":"))


def iter_approvals(store: Store, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                   unreadable: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every approval (and access grant) asked for in [since, until), oldest first: its row as the
    store keeps it (times in ISO 8601 with microseconds), ``state``, its state as it stands now
    (a pending or approved one past its expiry is expired; the row's status says so only once
    something touched it again), and ``events``, its approval events oldest first with their place
    in the events' chain (seq, prev_hash, hash, state_hash, mac). An approval or event holding a
    value that cannot be read is named in ``unreadable`` and left out."""
    a, e = ApprovalRow.__table__, ApprovalEvent.__table__
    form, event_form = (StoredForm(a, store.engine.dialect, forms=False),
                        StoredForm(e, store.engine.dialect, forms=False))
    q = form.select().order_by(a.c.requested, a.c.id)
    if since is not None:
        q = q.where(a.c.requested >= since)
    if until is not None:
        q = q.where(a.c.requested < until)
    with store._reading() as conn:
        rows = list(readable(conn.execute(q), form, _approval, unreadable))
        events: dict[str, list[dict[str, Any]]] = {}
        ids = [r["id"] for r in rows]
        for i in range(0, len(ids), 500):
            found = conn.execute(event_form.select().where(e.c.approval_id.in_(ids[i:i + 500])).order_by(e.c.seq))
            for m in readable(found, event_form, chain_event, unreadable):
                m["time"] = iso(m["time"])
                events.setdefault(m["approval_id"], []).append(m)
    now = dt.datetime.now(dt.timezone.utc)
    for row in rows:
        state = effective_state(row["status"], row["expires"], now)
        for k, v in row.items():
            if isinstance(v, dt.datetime):
                row[k] = iso(v)
        row["state"] = state
        row["events"] = events.get(row["id"], [])
        yield row


def write_jsonl(calls: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for call in calls:
        out.write(jsonl_line(call) + "\n")
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# OCSF API Activity (class 6003)

OCSF_CLASS_UID = 6003
OCSF_CATEGORY_UID = 6
ACTIVITIES = {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_VERBS = (
    (1, re.compile(r"^(Create|Run|Allocate|Register|Import|Issue|Request|Generate|Launch|Copy|Upload|Publish|Send)")),
    (2, re.compile(r"^(Get|Describe|List|Head|Batch(Get|Describe)|Query|Scan|Select|Search|Lookup|Receive|Download)")),
    (3, re.compile(r"^(Put|Update|Modify|Set|Change|Attach|Detach|Associate|Disassociate|Enable|Disable|Add|"
                   r"Tag|Untag|Start|Stop|Reboot|Restore|Replace|Reset|Rotate|Assume|Accept|Reject|Cancel)")),
    (4, re.compile(r"^(Delete|Remove|Terminate|Purge|Deregister|Revoke|Release|Batch(Delete|Write))")),
)
_HTTP_METHODS = {"OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT"}
_HOSTNAME = re.compile(r"^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])$")
_IP = re.compile(r"^(\d{1,3}\.){3}\d{1,3}$|^[0-9a-fA-F:]+$")


def ocsf_activity(call: dict[str, Any]) -> int:
    """Create, Read, Update or Delete from the API operation's verb; Read for IAM's List and Read."""
    operation = call.get("operation") or ""
    if not operation:
        return 0
    if call.get("access_level") in ("List", "Read"):
        return 2
    for activity, verb in _VERBS:
        if verb.match(operation):
            return activity
    return 99


def _epoch_ms(iso: str | None) -> int:
    if not iso:
        return 0
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp() * 1000)


def _endpoint(client: str | None) -> dict[str, Any]:
    if client:
        host, _, port = client.rpartition(":")
        host = host.strip("[]")
        if _IP.match(host) and port.isdigit():
            return {"ip": host, "port": int(port)}
        return {"name": client}
    return {"name": "unknown"}


def _host_port(host: str | None) -> tuple[str | None, int | None]:
    if not host:
        return None, None
    if host.startswith("["):
        h, _, rest = host[1:].partition("]")
        return h, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    h, sep, p = host.rpartition(":")
    if sep and p.isdigit() and ":" not in h:
        return h, int(p)
    return host, None


def _error_code(error: str | None) -> tuple[str | None, str | None]:
    if not error:
        return None, None
    code, sep, message = error.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z][\w.]*", code):
        return code, message
    return None, error


def refused_by(call: dict[str, Any]) -> str | None:
    """The stage named by the x-agentgate-refused-by header of the answer a call's record keeps:
    set when the gateway made that answer itself."""
    for pair in call.get("response_headers") or ():
        if isinstance(pair, list | tuple) and len(pair) == 2 and str(pair[0]).lower() == "x-agentgate-refused-by":
            return str(pair[1])
    return None


def request_ids(call: dict[str, Any]) -> tuple[str | None, str | None]:
    """(AWS's request id, agentgate's own) of the answer a call's record keeps; one of them at most.
    An answer the gateway made itself without sending the call on carries the call's record id (a
    record written before it did carries an id the gateway made up, in ``aws_request_id``); one it
    made after AWS answered (masking withheld or dropped the body) carries AWS's."""
    rid = call.get("aws_request_id")
    stage = refused_by(call)
    if stage is None or stage == "masking":
        return (rid or None), None
    return None, (rid or call.get("id"))


def ocsf_event(call: dict[str, Any]) -> dict[str, Any]:
    """One call as an OCSF API Activity event (OCSF 1.1.0, ``cloud`` profile)."""
    activity = ocsf_activity(call)
    decision = call.get("decision")
    outcome = call.get("outcome")
    status = call.get("status")
    ok = outcome in ("forwarded", "tunnelled") and (status is None or status < 400)
    refused = decision == "deny" or outcome == "refused"
    error_code, error_message = _error_code(call.get("error"))
    principal = call.get("principal")

    user: dict[str, Any]
    if principal:
        user = {"uid": principal, "name": principal, "type_id": 0}
        if call.get("groups"):
            user["groups"] = [{"name": g} for g in call["groups"]]
    else:
        user = {"name": "(unauthenticated)", "type_id": 0}
    actor: dict[str, Any] = {"user": user}
    if call.get("issuer"):
        actor["idp"] = {"uid": call["issuer"], "name": call["issuer"]}
    if call.get("session_id"):
        actor["session"] = {"uid": call["session_id"], **({"issuer": call["issuer"]} if call.get("issuer") else {})}
    if decision:
        authorization: dict[str, Any] = {"decision": decision}
        if call.get("rule") or call.get("policy_version"):
            authorization["policy"] = {"name": call.get("rule") or "(default)",
                                       **({"version": call["policy_version"]} if call.get("policy_version") else {}),
                                       **({"desc": call["reason"]} if call.get("reason") else {})}
        actor["authorizations"] = [authorization]

    api: dict[str, Any] = {"operation": call.get("operation") or call.get("method") or "unknown",
                           "request": {"uid": call["id"]}}
    if call.get("service"):
        api["service"] = {"name": call["service"]}
    response: dict[str, Any] = {}
    if status is not None:
        response["code"] = int(status)
    if error_code:
        response["error"] = error_code
    if error_message:
        response["error_message"] = error_message[:65535]
    aws_id, own_id = request_ids(call)
    if aws_id:
        response["message"] = f"AWS request id {aws_id}"
    elif own_id:
        response["message"] = (f"agentgate request id {own_id}: agentgate answered this call itself "
                               "(not sent to AWS, so not in CloudTrail)")
    if response:
        api["response"] = response

    host, port = _host_port(call.get("host"))
    dst: dict[str, Any] = {}
    if host and _HOSTNAME.match(host):
        dst["hostname"] = host
    elif host:
        dst["name"] = host
    if call.get("service"):
        dst["svc_name"] = call["service"]
    if dst:
        dst["port"] = port or 443

    event: dict[str, Any] = {
        "class_uid": OCSF_CLASS_UID,
        "class_name": "API Activity",
        "category_uid": OCSF_CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity,
        "activity_name": ACTIVITIES[activity],
        "type_uid": OCSF_CLASS_UID * 100 + activity,
        "type_name": f"API Activity: {ACTIVITIES[activity]}",
        "time": _epoch_ms(call.get("time")),
        "timezone_offset": 0,
        "severity_id": 3 if refused else 1,
        "severity": "Medium" if refused else "Informational",
        "status_id": 1 if ok else 2,
        "status": "Success" if ok else "Failure",
        "message": " ".join(str(x) for x in (principal or "(unauthenticated)", call.get("action") or call.get("method"),
                                             decision or "", outcome or "", status if status is not None else "") if x != ""),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": call["id"],
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version()},
            "profiles": ["cloud"],
            "log_name": "calls",
            "log_provider": PRODUCT,
            "sequence": int(call["seq"]) if call.get("seq") is not None else 0,
            **({"correlation_uid": call["session_id"]} if call.get("session_id") else {}),
        },
        "cloud": {"provider": "AWS", **({"region": call["region"]} if call.get("region") else {}),
                  **({"account": {"uid": call["account"]}} if call.get("account") else {})},
        "actor": actor,
        "api": api,
        "src_endpoint": _endpoint(call.get("client")),
    }
    if status is not None:
        event["status_code"] = str(status)
    detail = call.get("reason") if refused else call.get("error")
    if detail:
        event["status_detail"] = str(detail)[:65535]
    if dst:
        event["dst_endpoint"] = dst
    if call.get("latency_ms") is not None:
        event["duration"] = int(round(call["latency_ms"]))
    if call.get("kind") == "call" and call.get("url"):
        event["http_request"] = _http_request(call)
    if call.get("resources"):
        event["resources"] = [_resource(r, call) for r in call["resources"]]
    event["unmapped"] = {"agentgate": _unmapped(call)}
    return event


def _http_request(call: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(call["url"])
    url: dict[str, Any] = {"url_string": call["url"], "scheme": parts.scheme or "https", "path": parts.path or "/"}
    if parts.query:
        url["query_string"] = parts.query
    host, _ = _host_port(parts.netloc)
    if host and _HOSTNAME.match(host):
        url["hostname"] = host
    req: dict[str, Any] = {"url": url}
    method = (call.get("method") or "").upper()
    if method in _HTTP_METHODS:
        req["http_method"] = method
    headers = call.get("request_headers") or []
    if headers:
        req["http_headers"] = [{"name": str(k), "value": str(v)[:65535]} for k, v in headers]
        agent = next((v for k, v in headers if str(k).lower() == "user-agent"), None)
        if agent:
            req["user_agent"] = str(agent)[:65535]
    if call.get("request_body_size") is not None:
        req["length"] = int(call["request_body_size"])
    return req


def _resource(name: str, call: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"uid": name}
    if name.startswith("arn:"):
        parts = name.split(":", 5)
        if len(parts) == 6:
            r["cloud_partition"] = parts[1]
            r["type"] = parts[2]
            if parts[3]:
                r["region"] = parts[3]
    elif call.get("region"):
        r["region"] = call["region"]
    return r


_UNMAPPED = ("action", "service", "access_level", "decision", "rule", "reason", "policy_version", "role",
             "approval_id", "approver", "outcome", "on_behalf_of", "kind", "aws_request_id",
             "request_body_sha256", "request_body_size", "response_body_sha256", "response_body_size",
             "body_note", "truncated")


def _unmapped(call: dict[str, Any]) -> dict[str, Any]:
    out = {k: call.get(k) for k in _UNMAPPED if call.get(k) is not None}
    aws_id, own_id = request_ids(call)
    if call.get("aws_request_id") and not aws_id:  # the gateway's own, in a record written before it said so
        del out["aws_request_id"]
        out["gateway_request_id"] = own_id
    if call.get("masked"):
        out["masked"] = call["masked"]
    out["chain"] = {k: call.get(k) for k in ("writer_id", "seq", "prev_hash", "hash")}
    return out


def write_ocsf(calls: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for call in calls:
        out.write(json.dumps(ocsf_event(call), ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# mitmproxy flow files


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _pairs(headers: Any, *, drop: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    dropped = {d.lower() for d in drop}
    return [(str(k).encode("utf-8", "replace"), str(v).encode("utf-8", "replace"))
            for k, v in (headers or []) if str(k).lower() not in dropped]


# Headers that describe a body on the wire rather than the masked text the record keeps.
_WIRE_ONLY = ("content-encoding", "content-length", "transfer-encoding")


def call_flow(call: dict[str, Any]) -> Any:
    """One recorded call as a mitmproxy HTTPFlow: the masked request and response as recorded."""
    from mitmproxy import connection, http
    from mitmproxy.flow import Error

    start = _epoch(call.get("time"))
    latency = (call.get("latency_ms") or 0.0) / 1000.0
    end = start + latency
    parts = urlsplit(call.get("url") or f"https://{call.get('host') or 'unknown'}/")
    host, port = _host_port(parts.netloc)
    host = host or "unknown"
    port = port or (443 if parts.scheme != "http" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    client_host, _, client_port = (call.get("client") or "").rpartition(":")
    client = connection.Client(
        peername=(client_host.strip("[]") or "0.0.0.0", int(client_port) if client_port.isdigit() else 0),
        sockname=("0.0.0.0", 0), timestamp_start=start)
    client.timestamp_end = end
    client.sni = host
    client.tls = parts.scheme == "https"
    server = connection.Server(address=(host, port))
    server.timestamp_start = start
    server.timestamp_end = end
    server.tls = parts.scheme == "https"
    server.sni = host
    flow = http.HTTPFlow(client, server)
    request_body = call.get("request_body")
    req_headers = _pairs(call.get("request_headers"), drop=_WIRE_ONLY if request_body is not None else ("content-encoding",))
    flow.request = http.Request(
        host=host, port=port, method=(call.get("method") or "GET").encode(), scheme=(parts.scheme or "https").encode(),
        authority=b"", path=path.encode("utf-8", "replace"), http_version=b"HTTP/1.1",
        headers=http.Headers(req_headers), content=None, trailers=None, timestamp_start=start, timestamp_end=start)
    flow.request.raw_content = request_body.encode("utf-8") if request_body is not None else b""
    if request_body is not None:
        flow.request.headers["content-length"] = str(len(flow.request.raw_content))
    # A call that failed on its way got no answer from upstream: its flow has the error, as mitmproxy's
    # own has, and its comment the status the gateway answered the agent with.
    if call.get("status") is not None and call.get("outcome") != "failed":
        response_body = call.get("response_body")
        resp_headers = _pairs(call.get("response_headers"),
                              drop=_WIRE_ONLY if response_body is not None else ("content-encoding",))
        flow.response = http.Response(
            http_version=b"HTTP/1.1", status_code=int(call["status"]), reason=b"", headers=http.Headers(resp_headers),
            content=None, trailers=None, timestamp_start=end, timestamp_end=end)
        flow.response.raw_content = response_body.encode("utf-8") if response_body is not None else b""
        if response_body is not None:
            flow.response.headers["content-length"] = str(len(flow.response.raw_content))
    elif call.get("error"):
        flow.error = Error(str(call["error"]), timestamp=end)
    flow.timestamp_created = start
    flow.comment = flow_comment(call)
    if call.get("decision") == "deny":
        flow.marked = ":no_entry:"
    elif call.get("decision") == "approve":
        flow.marked = ":raised_hand:"
    flow.metadata["agentgate"] = _jsonable({k: v for k, v in call.items()
                                             if k not in ("request_body", "response_body")})
    flow.live = False
    return flow


def flow_comment(call: dict[str, Any]) -> str:
    who = call.get("principal") or "(unauthenticated)"
    if call.get("on_behalf_of"):
        who += f" for {call['on_behalf_of']}"
    lines = [f"{who}: {call.get('action') or call.get('method')} -> "
             f"{call.get('decision') or '?'} ({call.get('rule') or 'default'}), {call.get('outcome') or '?'}"
             + (f" (the agent got {call['status']})" if call.get("outcome") == "failed" and call.get("status") else "")]
    if call.get("reason"):
        lines.append(f"reason: {call['reason']}")
    if call.get("approval_id"):
        lines.append(f"approval {call['approval_id']}" + (f" by {call['approver']}" if call.get("approver") else ""))
    if call.get("masked"):
        lines.append("masked: " + ", ".join(f"{m.get('part')} {m.get('path')} ({m.get('by')})" for m in call["masked"]))
    if call.get("body_note"):
        lines.append(f"bodies: {call['body_note']}")
    if call.get("truncated"):
        lines.append("cut at body_cap (a body, or the parameters): the flow's bodies are as the record keeps them, "
                     + ", ".join(f"{part}: {_kept(call.get(f'{part}_body'), call.get(f'{part}_body_size'))}"
                                 for part in ("request", "response")))
    lines.append(f"record {call['id']}, writer {call.get('writer_id')} seq {call.get('seq')}")
    return "\n".join(lines)


def _kept(body: str | None, sent: int | None) -> str:
    """How much of a body a record keeps, of how much was sent."""
    of = "" if sent is None else f" of {sent} sent"
    if body is None:
        return "empty" if not sent else f"not kept ({sent} bytes sent)"
    return f"{len(body.encode('utf-8'))} bytes{of}"


def _jsonable(value: Any) -> Any:
    """Plain data mitmproxy's flow files can hold (tnetstring: no tuples)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_mitm(calls: Iterable[dict[str, Any]], out: IO[bytes]) -> tuple[int, int]:
    """Write the calls as flows; returns (flows written, connection records left out)."""
    from mitmproxy import io as mio

    writer = mio.FlowWriter(out)
    n = skipped = 0
    for call in calls:
        if call.get("kind") != "call":
            skipped += 1
            continue
        writer.add(call_flow(call))
        n += 1
    return n, skipped


# ---------------------------------------------------------------------------------------------
# OSCAL assessment results

OSCAL_VERSION = "1.1.2"
OSCAL_NS = "https://agentgate.dev/ns/oscal"


def _uuid(*parts: Any) -> str:
    """A stable UUID (v5) for the same period and store: exports of the same data are the same."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "agentgate:" + ":".join(str(p) for p in parts)))


def _oscal_time(t: dt.datetime) -> str:
    """An OSCAL date-time: ``iso``'s form (UTC, microseconds, the year in four digits)."""
    return iso(t)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonl_resource(uuid_: str, title: str, description: str, counted: str, count: int, href: str | None,
                    sha256: str | None) -> dict[str, Any]:
    """A back-matter resource for a JSON Lines file of evidence beside the document."""
    return {"uuid": uuid_, "title": title, "description": description,
            "props": [{"name": counted, "ns": OSCAL_NS, "value": str(count)}],
            "rlinks": [{"href": href, "media-type": "application/jsonl",
                        "hashes": [{"algorithm": "SHA-256", "value": sha256}]}]}


def oscal_assessment_results(summary: Any, *, evidence_href: str, evidence_sha256: str, evidence_records: int,
                             approvals_href: str | None = None, approvals_sha256: str | None = None,
                             approvals_count: int = 0, now: dt.datetime | None = None) -> dict[str, Any]:
    """The assessment-results document for a ``core.report.Summary``: one observation per control,
    each pointing at the JSON Lines evidence, the approvals' evidence (for the controls it bears
    on) and (for the audit controls) the chain heads."""
    from .report import CONTROLS, _n

    now = now or dt.datetime.now(dt.timezone.utc)
    key = (summary.where, summary.start.isoformat(), summary.end.isoformat())
    evidence_uuid = _uuid("evidence", *key)
    plan_uuid = _uuid("plan", *key)
    head_uuids = {h.writer_id: _uuid("head", h.writer_id, h.seq, h.hash) for h in summary.heads}
    resources: list[dict[str, Any]] = [
        {
            "uuid": plan_uuid,
            "title": "agentgate: continuous enforcement and recording of AI agents' AWS calls",
            "description": (
                "There is no separate assessment plan: the evidence is what the gateway recorded for every call "
                "between its agents and AWS in the period, decided by the policies named in each record."),
        },
        _jsonl_resource(
            evidence_uuid, f"Call records, {summary.start_text} to {summary.end_text} (JSON Lines)",
            f"{evidence_records} records, one per line, as `agentgate calls list --json` shows them, with each "
            f"record's place in its writer's hash chain (writer_id, seq, prev_hash, hash). Bodies are masked; "
            f"credential headers are never stored."
            + (f" Left out of it and of the figures: {len(unread)} row{'s' if len(unread) != 1 else ''} of the store "
               f"holding a value that cannot be read (`agentgate verify` names each), the first: {unread[0]}."
               if (unread := getattr(summary, "unreadable", None)) else ""),
            "records", evidence_records, evidence_href, evidence_sha256),
    ]
    approvals_uuid = _uuid("approvals", *key)
    if approvals_href is not None:
        resources.append(_jsonl_resource(
            approvals_uuid, f"Approvals asked for, {summary.start_text} to {summary.end_text} (JSON Lines)",
            f"{approvals_count} approvals and access grants, one per line, each with its approval events (asked "
            f"for, approved or denied with the approver, reason and channel, used, expired, revoked) and their "
            f"place in the store's approval events chain (seq, prev_hash, hash, the SHA-256 of the approval as "
            f"each event left it, and the HMAC of events written with the chain key).",
            "approvals", approvals_count, approvals_href, approvals_sha256))
    for h in summary.heads:
        props = [
            {"name": "writer-id", "ns": OSCAL_NS, "value": h.writer_id},
            {"name": "seq", "ns": OSCAL_NS, "value": str(h.seq)},
            {"name": "head-hash", "ns": OSCAL_NS, "value": h.hash},
            {"name": "head-call", "ns": OSCAL_NS, "value": h.call_id},
        ]
        if h.checkpoint_seq is not None:
            props.append({"name": "checkpoint-seq", "ns": OSCAL_NS, "value": str(h.checkpoint_seq)})
            props.append({"name": "checkpoint-keyed", "ns": OSCAL_NS, "value": "true" if h.checkpoint_keyed else "false"})
        resources.append({
            "uuid": head_uuids[h.writer_id],
            "title": f"Chain head of writer {h.writer_id}",
            "description": (
                f"Record {h.seq} (call {h.call_id}, {h.time_text}) is the last of writer {h.writer_id}; its hash "
                f"{h.hash} covers every earlier record of the writer. "
                + (f"The last checkpoint ({'HMAC-keyed' if h.checkpoint_keyed else 'not keyed'}) is at seq "
                   f"{h.checkpoint_seq}." if h.checkpoint_seq is not None else "No checkpoint has been written yet.")),
            "props": props,
        })
    version_uuids = {}
    for v in getattr(summary, "policy_versions", None) or []:
        if v.get("missing") or v.get("text") is None:  # its text deleted, or not text: said so, nothing to embed
            ref = version_uuids[v["version"]] = _uuid("policy-version", v["version"], "missing")
            held = ("the store holds NO TEXT of this version (deleted after the gateway stored it, or never stored)"
                    if v.get("missing") else "the store's text of this version CANNOT BE READ (it holds a value "
                    "of another type than text)")
            resources.append({
                "uuid": ref,
                "title": f"Policy version {v['version']}",
                "description": (f"The policy files that decided {v['calls']} call{'s' if v['calls'] != 1 else ''} of "
                                f"the period: {held}, so the rules that decided them cannot be shown."),
                "props": [{"name": "policy-version", "ns": OSCAL_NS, "value": v["version"]},
                          {"name": "calls-decided", "ns": OSCAL_NS, "value": str(v["calls"])},
                          {"name": "text-holds", "ns": OSCAL_NS, "value": "false"},
                          {"name": "text-stored", "ns": OSCAL_NS, "value": "false" if v.get("missing") else "true"}],
            })
            continue
        ref = version_uuids[v["version"]] = _uuid("policy-version", v["version"],
                                                  hashlib.sha256(v["text"].encode()).hexdigest())
        resources.append({
            "uuid": ref,
            "title": f"Policy version {v['version']}",
            "description": (
                f"The policy files that decided {v['calls']} call{'s' if v['calls'] != 1 else ''} of the period, as the "
                f"gateway stored them when this version first decided a call ({v['first_seen']}): each file after a "
                f"line '--- NAME'. A record's policy_version is the first 16 hex digits of this text's SHA-256"
                + ("." if v["holds"] else "; this stored text NO LONGER hashes to it: it was changed after it was stored.")),
            "props": [{"name": "policy-version", "ns": OSCAL_NS, "value": v["version"]},
                      {"name": "calls-decided", "ns": OSCAL_NS, "value": str(v["calls"])},
                      {"name": "text-holds", "ns": OSCAL_NS, "value": "true" if v["holds"] else "false"}],
            "base64": {"filename": f"policy-{v['version']}.yaml", "media-type": "application/yaml",
                       "value": base64.b64encode(v["text"].encode("utf-8")).decode("ascii")},
        })
    verified = summary.verify
    observations = []
    for control in CONTROLS:
        evidence = [{"href": f"#{evidence_uuid}", "description": control.records_hint}]
        if control.approvals and approvals_href is not None:
            evidence.append({"href": f"#{approvals_uuid}", "description": "approvals and their approval events"})
        if control.chain:
            evidence += [{"href": f"#{head_uuids[h.writer_id]}", "description": f"chain head of writer {h.writer_id}"}
                         for h in summary.heads]
        if control.id == "ac-3":
            evidence += [{"href": f"#{u}", "description": f"the text of policy version {v}"} for v, u in version_uuids.items()]
        props = [{"name": "control-id", "ns": OSCAL_NS, "value": control.id}]
        if control.chain and verified is not None:
            props.append({"name": "chains-verified", "ns": OSCAL_NS, "value": "true" if verified.ok else "false"})
        observations.append({
            "uuid": _uuid("observation", control.id, *key),
            "title": f"{control.id.upper()} {control.title}",
            "description": f"{control.enforced} {control.observed(summary)}",
            "props": props,
            "methods": ["TEST", "EXAMINE"] if control.chain else ["EXAMINE"],
            "types": ["control-objective"],
            "collected": _oscal_time(now),
            "relevant-evidence": evidence,
        })
    findings = []
    if verified is not None:  # what the evidence tests itself: the chains hold (AU-9)
        findings.append({
            "uuid": _uuid("finding", "au-9", *key),
            "title": "AU-9 Protection of audit information: " + ("the hash chains verify" if verified.ok
                                                                  else "the hash chains DO NOT verify"),
            "description": (f"agentgate verify over the store: {_n(verified.records, 'record')} in "
                            f"{_n(verified.chains, 'chain')}, {_n(verified.checkpoints, 'checkpoint')}"
                            + ("" if summary.keyed else " (no chain key: checkpoints not authenticated)")
                            + (": OK." if verified.ok else f": {_n(len(verified.problems), 'problem')}, the first: "
                               f"{verified.problems[0]}")),
            "target": {"type": "objective-id", "target-id": "au-9_obj",
                       "status": {"state": "satisfied" if verified.ok else "not-satisfied",
                                  "reason": "pass" if verified.ok else "fail"}},
            "related-observations": [{"observation-uuid": _uuid("observation", "au-9", *key)}],
        })
    result = {
        "uuid": _uuid("result", *key),
        "title": f"agentgate evidence, {summary.start_text} to {summary.end_text}",
        "description": (
            f"What the gateway enforced and recorded between {summary.start_text} and {summary.end_text}"
            f"{summary.cut_text}: "
            f"{_n(summary.total, 'record')} ({_n(summary.calls, 'call')}). Hash chains: "
            + ("verified" if verified is not None and verified.ok else "NOT verified" if verified is not None else "not checked")
            + (f" ({_n(verified.records, 'record')} in {_n(verified.chains, 'chain')}, "
               f"{_n(verified.checkpoints, 'checkpoint')}"
               + ("" if summary.keyed else "; checkpoints not authenticated: no chain key") + ")." if verified is not None else ".")),
        "start": _oscal_time(summary.start),
        "end": _oscal_time(summary.end),
        "props": [{"name": "store", "ns": OSCAL_NS, "value": summary.where}],
        "reviewed-controls": {"control-selections": [
            {"include-controls": [{"control-id": c.id} for c in CONTROLS]}]},
        "observations": observations,
    }
    if findings:
        result["findings"] = findings
    return {
        "assessment-results": {
            "uuid": _uuid("assessment-results", *key, _oscal_time(now)),
            "metadata": {
                "title": f"agentgate evidence for NIST SP 800-53 controls, {summary.start_text} to {summary.end_text}",
                "last-modified": _oscal_time(now),
                "version": product_version(),
                "oscal-version": OSCAL_VERSION,
                "props": [{"name": "generator", "ns": OSCAL_NS, "value": f"agentgate {product_version()}"}],
            },
            "import-ap": {"href": f"#{plan_uuid}"},
            "results": [result],
            "back-matter": {"resources": resources},
        }
    }
