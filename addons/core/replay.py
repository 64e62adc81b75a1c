"""Replay: re-issue recorded calls against a target (moto, LocalStack, a sandbox account) with
current just-in-time credentials, and compare what comes back with what was recorded.

Which calls are replayed (``plan``): only calls that were forwarded when recorded. Never a denied
call, a refused one, or one held for approval that no approver released. Calls that change
something (IAM access level Write, Tagging or Permissions management; an unknown access level; any
call a human had to approve) only with ``allow_writes``. A call whose request had a value masked
(in its query, headers, body or parameters) cannot be replayed: the value is gone.

How a request is rebuilt (``rebuild``): method, URL and headers from the record (credential headers
were never stored; the signature is made anew). The body is the stored body when its SHA-256 is the
recorded digest of the body that was sent; otherwise it is serialised again from the recorded
parameters with botocore's serializer for the service and operation; a body that was not kept and
cannot be rebuilt (an S3 object's data) means the call is skipped, saying why.

How it is sent (``Replayer``): signed with SigV4 (``core.sigv4.resign``) using credentials that
``core.credentials.CredentialBroker`` obtains for the role the record names (its session policy and
duration from the policies in force when they still name the role), from the gateway's own
credentials (botocore's default chain). With a target URL, the request goes there with the original
Host header, as the gateway's ``upstream`` does, and so do the STS calls.

What is shown: the recorded and the new status, and a structural diff of the responses, the new one
masked as the record's was (same fingerprint key, so the same secret gives the same marker).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import botocore.loaders
import botocore.model
import botocore.serialize

from . import sigv4
from .masking import MARKER_PREFIX, PARSE_LIMIT, inflate

MUTATING = frozenset({"Write", "Tagging", "Permissions management"})
REQUEST_PARTS = ("request", "params")
MARKER_B64 = base64.b64encode(MARKER_PREFIX.encode()).decode()[:24]  # a blob marker's start

# Headers of the recorded request that describe the wire form of the original body, or that the
# new signature replaces: never sent again as they were.
_DROP_ALWAYS = frozenset({
    "host", "content-length", "transfer-encoding", "expect", "connection", "keep-alive", "proxy-connection",
    "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization", "proxy-authorization",
    "x-amz-decoded-content-length", "x-amz-trailer",
})
# ... and those that hold only for the exact body that was sent.
_DROP_UNLESS_EXACT = ("content-md5", "x-amz-checksum-", "x-amz-sdk-checksum-algorithm", "content-encoding")


class Unreplayable(Exception):
    """Why a recorded call cannot be replayed."""


@dataclasses.dataclass
class Request:
    method: str
    host: str  # the original Host
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    region: str
    signing_name: str
    rebuilt: bool = False  # the body was serialised again from the parameters

    @property
    def url(self) -> str:
        return f"https://{self.host}{self.path}" + (f"?{self.query}" if self.query else "")


@dataclasses.dataclass
class Plan:
    call: dict[str, Any]
    request: Request | None = None
    skip: str | None = None

    @property
    def id(self) -> str:
        return self.call["id"]


@dataclasses.dataclass
class Change:
    path: str
    kind: str  # added | removed | changed | type
    old: Any = None
    new: Any = None
    volatile: bool = False  # request ids, dates, tokens: expected to differ

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~", "type": "!"}[self.kind]
        text = {"added": _short(self.new), "removed": _short(self.old)}.get(
            self.kind, f"{_short(self.old)} -> {_short(self.new)}")
        return f"  {mark} {self.path or '(body)'}: {text}" + ("  (volatile)" if self.volatile else "")


@dataclasses.dataclass
class Outcome:
    id: str
    action: str | None
    method: str | None
    url: str | None
    recorded_status: int | None
    status: int | None = None
    skipped: str | None = None
    error: str | None = None
    changes: list[Change] = dataclasses.field(default_factory=list)
    note: str | None = None

    @property
    def result(self) -> str:
        if self.skipped:
            return "skipped"
        if self.error:
            return "error"
        if self.status != self.recorded_status:
            return "status differs"
        if [c for c in self.changes if not c.volatile and c.kind in ("added", "removed", "type")]:
            return "structure differs"
        if [c for c in self.changes if not c.volatile]:
            return "values differ"
        return "same"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "method": self.method, "url": self.url,
                "recorded_status": self.recorded_status, "status": self.status, "result": self.result,
                "skipped": self.skipped, "error": self.error, "note": self.note,
                "diff": [c.as_dict() for c in self.changes]}


def _short(v: Any, n: int = 80) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Which calls


def skip_reason(call: dict[str, Any], *, allow_writes: bool) -> str | None:
    """Why a recorded call is not replayed, or None when it may be."""
    if call.get("kind") != "call":
        return "a connection record, not a call"
    decision = call.get("decision")
    if decision == "deny":
        return f"denied by {call.get('rule') or 'policy'}: denied calls are never replayed"
    if decision == "approve" and not (call.get("outcome") == "forwarded" and call.get("approver")):
        return "held for approval and never released: unapproved calls are never replayed"
    if call.get("outcome") != "forwarded":
        return f"not forwarded when recorded ({call.get('outcome') or 'no outcome'}): only forwarded calls are replayed"
    if decision not in ("allow", "approve"):
        return f"no decision recorded ({decision!r}): only allowed calls are replayed"
    if not allow_writes:
        level = call.get("access_level")
        if decision == "approve":
            return f"needed an approval (released by {call.get('approver')}): replayed only with --allow-writes"
        if level in MUTATING:
            return f"a {level} call: replayed only with --allow-writes"
        if not level:
            return "its access level is unknown: replayed only with --allow-writes"
    if not call.get("role"):
        return "no role recorded: there is nothing to sign it as"
    masked = [m for m in call.get("masked") or [] if str(m.get("part", "")).startswith(REQUEST_PARTS)]
    if masked:
        where = ", ".join(f"{m.get('part')} {m.get('path')} ({m.get('by')})" for m in masked[:3])
        return f"its request had values masked ({where}): masked values cannot be replayed"
    return None


def plan(calls: Iterable[dict[str, Any]], *, allow_writes: bool = False) -> list[Plan]:
    plans = []
    for call in calls:
        p = Plan(call, skip=skip_reason(call, allow_writes=allow_writes))
        if p.skip is None:
            try:
                p.request = rebuild(call)
            except Unreplayable as e:
                p.skip = str(e)
        plans.append(p)
    return plans


# ---------------------------------------------------------------------------------------------
# Rebuilding the request


@functools.lru_cache(maxsize=64)
def service_model(service: str) -> botocore.model.ServiceModel:
    loader = _loader()
    return botocore.model.ServiceModel(loader.load_service_model(service, "service-2"), service_name=service)


@functools.lru_cache(maxsize=1)
def _loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


def protocol_of(model: botocore.model.ServiceModel) -> str:
    """The protocol boto3 speaks to the service: the first of its protocols botocore serialises."""
    for p in model.metadata.get("protocols") or [model.metadata["protocol"]]:
        if p in botocore.serialize.SERIALIZERS:
            return p
    return model.metadata["protocol"]


def _contains_marker(text: str | None) -> bool:
    return bool(text) and (MARKER_PREFIX in text or MARKER_B64 in text)


def rebuild(call: dict[str, Any]) -> Request:
    """The request to send again, from the record; Unreplayable says why it cannot be."""
    url = call.get("url") or ""
    parts = urlsplit(url)
    if not parts.netloc:
        raise Unreplayable("no URL recorded")
    if _contains_marker(url):
        raise Unreplayable("its URL holds a masked value: masked values cannot be replayed")
    headers = [(str(k), str(v)) for k, v in call.get("request_headers") or []]
    if any(_contains_marker(v) for _, v in headers):
        raise Unreplayable("a request header holds a masked value: masked values cannot be replayed")
    service, operation = call.get("service"), call.get("operation")
    model = None
    if service:
        try:
            model = service_model(service)
        except Exception:  # noqa: BLE001 - an unknown service
            model = None
    signing_name = (model.metadata.get("signingName") or model.metadata.get("endpointPrefix")) if model else None
    if not signing_name:
        raise Unreplayable(f"service {service!r} is not one botocore knows: cannot tell how to sign it")
    size = call.get("request_body_size") or 0
    stored = call.get("request_body")
    body: bytes | None = None
    rebuilt = False
    content_type = None
    if stored is not None and not call.get("truncated"):
        if _contains_marker(stored):
            raise Unreplayable("its request body holds a masked value: masked values cannot be replayed")
        raw = stored.encode("utf-8")
        if call.get("request_body_sha256") in (None, hashlib.sha256(raw).hexdigest()):
            body = raw
    if body is None and size == 0:
        body = b""
    if body is None:
        params = call.get("params")
        if params is None or not operation or model is None:
            raise Unreplayable(_not_kept(call, size))
        try:
            body, content_type = serialise_body(model, operation, params)
        except Unreplayable:
            raise
        except Exception as e:  # noqa: BLE001 - parameters botocore will not serialise
            raise Unreplayable(f"its body ({size} bytes) was not kept and its parameters do not serialise again "
                               f"({type(e).__name__}: {str(e)[:120]})") from None
        if not body and size:
            raise Unreplayable(_not_kept(call, size))
        rebuilt = True
    exact = not rebuilt
    kept = []
    for k, v in headers:
        lk = k.lower()
        if lk in _DROP_ALWAYS:
            continue
        if not exact and (lk in _DROP_UNLESS_EXACT or lk.startswith(_DROP_UNLESS_EXACT)):
            continue
        if lk == "content-encoding" and "aws-chunked" in v:
            rest = ",".join(e.strip() for e in v.split(",") if e.strip() and e.strip() != "aws-chunked")
            if rest:
                kept.append((k, rest))
            continue
        if lk == "content-type" and content_type:
            continue
        kept.append((k, v))
    if content_type:
        kept.append(("Content-Type", content_type))
    region = call.get("region") or "us-east-1"
    return Request(method=(call.get("method") or "GET").upper(), host=parts.netloc, path=parts.path or "/",
                   query=parts.query, headers=kept, body=body, region=region, signing_name=signing_name,
                   rebuilt=rebuilt)


def _not_kept(call: dict[str, Any], size: int) -> str:
    why = f" ({call['body_note']})" if call.get("body_note") else ""
    return f"its request body ({size} bytes) was not kept{why} and its parameters cannot rebuild it"


def serialise_body(model: botocore.model.ServiceModel, operation: str, params: dict[str, Any]) -> tuple[bytes, str | None]:
    """The body botocore's serializer makes of the recorded parameters, and its Content-Type."""
    op = model.operation_model(operation)
    payload = op.input_shape.serialization.get("payload") if op.input_shape is not None else None
    if payload and op.input_shape.members[payload].type_name in ("blob", "string") and payload not in params:
        raise Unreplayable("its payload was streamed and not kept (only its SHA-256 and size are): it cannot be rebuilt")
    if _contains_marker(json.dumps(params, default=str)):
        raise Unreplayable("its parameters hold a masked value: masked values cannot be replayed")
    values = _wire_values(params, op.input_shape, top=True)
    serializer = botocore.serialize.create_serializer(protocol_of(model), include_validation=False)
    req = serializer.serialize_to_request(values, op)
    body = req.get("body") or b""
    if isinstance(body, dict):  # query protocols hand back a dict of form fields in some versions
        from urllib.parse import urlencode

        body = urlencode(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
    return bytes(body), headers.get("content-type")


def _wire_values(value: Any, shape: botocore.model.Shape | None, *, top: bool = False) -> Any:
    """Recorded parameters as botocore's serializer takes them: blobs (kept as base64 text) as bytes."""
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict) and not getattr(shape, "is_document_type", False):
        payload = shape.serialization.get("payload") if top else None
        out = {}
        for k, v in value.items():
            member = shape.members.get(k)
            if member is not None and k == payload and member.type_name == "blob" and isinstance(v, str):
                out[k] = v.encode("utf-8")  # an inline payload is kept as text
            else:
                out[k] = _wire_values(v, member)
        return out
    if kind == "list" and isinstance(value, list):
        return [_wire_values(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _wire_values(v, shape.value) for k, v in value.items()}
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value.encode("utf-8")
    return value


# ---------------------------------------------------------------------------------------------
# Sending


@dataclasses.dataclass(frozen=True)
class ReplayPrincipal:
    """Whom the credentials are issued for: the recorded principal, marked as a replay."""

    sub: str
    iss: str = "agentgate:replay"
    groups: tuple[str, ...] = ()
    on_behalf_of: str | None = None


def role_binding(role_arn: str, policy_set: Any = None) -> Any:
    """The policies' binding for the role (session policy, duration) when they still name it;
    else the role alone for 15 minutes."""
    from .policy import RoleBinding

    if policy_set is not None:
        for entry in getattr(policy_set, "roles", ()):
            if entry.binding.role_arn == role_arn:
                return entry.binding
    return RoleBinding(role_arn=role_arn, session_policy=None, duration=900, web_identity=False, rule_id=None)


class Replayer:
    """Sends planned requests, signed with JIT credentials, to ``target`` (or to AWS itself)."""

    def __init__(self, broker: Any, *, target: str | None = None, policy_set: Any = None,
                 masker: Any = None, timeout: float = 30.0, verify: bool | str = True) -> None:
        import httpx

        self.broker = broker
        self.target = urlsplit(target) if target else None
        self.policy_set = policy_set
        self.masker = masker
        # Accept-Encoding as the agent sent it (in the recorded headers), else identity: not httpx's
        # own "gzip, deflate, br", which would ask AWS for what the recorded call did not get.
        self.http = httpx.Client(timeout=timeout, verify=verify, trust_env=False, follow_redirects=False,
                                 headers={"Accept-Encoding": "identity"})
        self._grants: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Replayer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_url(self, req: Request, path: str | None = None) -> str:
        """Where the request goes; ``path`` is the path it was signed for (S3's is percent-encoded
        as S3 signs it, whatever the agent sent)."""
        base = f"https://{req.host}" if self.target is None else f"{self.target.scheme}://{self.target.netloc}"
        return f"{base}{req.path if path is None else path}" + (f"?{req.query}" if req.query else "")

    def credentials(self, call: dict[str, Any]) -> Any:
        """JIT credentials for the call's role, obtained once per (principal, role); a failure is
        remembered too, so that a long session does not ask STS again for every call."""
        key = (call.get("principal") or "unknown", call["role"])
        if key not in self._grants:
            try:
                binding = role_binding(call["role"], self.policy_set)
                if binding.web_identity:
                    raise Unreplayable(f"role {call['role']} is assumed with the agent's own token (web identity), "
                                       f"which a replay does not have")
                principal = ReplayPrincipal(sub=f"replay:{key[0]}")
                self._grants[key] = asyncio.run(self.broker.grant(principal, binding))
            except Exception as e:  # noqa: BLE001 - re-raised for this call and every later one
                self._grants[key] = e
        found = self._grants[key]
        if isinstance(found, Exception):
            raise found
        return found.credentials

    def signed(self, plan: Plan) -> sigv4.Signed:
        req = plan.request
        if req is None:
            raise Unreplayable("the record holds no request to sign")
        return sigv4.resign(req.method, req.host, req.path, req.query, req.headers, req.body,
                            credentials=self.credentials(plan.call), region=req.region,
                            signing_name=req.signing_name)

    def send(self, plan: Plan) -> Outcome:
        call = plan.call
        out = Outcome(id=call["id"], action=call.get("action"), method=call.get("method"), url=call.get("url"),
                      recorded_status=call.get("status"))
        if plan.skip:
            out.skipped = plan.skip
            return out
        req = plan.request
        if req is None:
            out.skipped = "the record holds no request to send"
            return out
        out.note = "body rebuilt from the recorded parameters" if req.rebuilt else None
        try:
            signed = self.signed(plan)
        except Unreplayable as e:
            out.skipped = str(e)
            return out
        except Exception as e:  # noqa: BLE001 - STS refused, or the request cannot be signed
            out.error = f"cannot sign it: {_one_line(e)}"
            return out
        import httpx

        try:
            with self.http.stream(req.method, self.send_url(req, signed.path),
                                  headers=[("Host", req.host), *signed.headers], content=req.body) as resp:
                body = read_body(resp.iter_raw(), self.keep)
        except httpx.HTTPError as e:
            out.error = f"the target did not answer: {_one_line(e)}"
            return out
        out.status = resp.status_code
        out.changes = self.compare(call, resp, body)
        return out

    @property
    def keep(self) -> int:
        """Bytes of a new answer kept to mask and compare (the rest is only hashed)."""
        return getattr(self.masker, "parse_limit", None) or PARSE_LIMIT

    def compare(self, call: dict[str, Any], resp: Any, body: "Body") -> list[Change]:
        content_type = resp.headers.get("content-type", "")
        recorded = call.get("response_body")
        if recorded is None:  # the record keeps the digest of the bytes as sent, compressed or not
            old_sha = call.get("response_body_sha256")
            if old_sha and old_sha != body.sha256:
                return [Change("(body sha256)", "changed", old_sha, body.sha256)]
            return []
        cut = bool(call.get("truncated")) and not isinstance(parse_body(recorded, content_type), (dict, list))
        if cut and call.get("response_body_sha256") == body.sha256:
            return []  # byte for byte the answer recorded, of which the record keeps the first body_cap bytes
        if body.size > len(body.kept):
            return [Change("(body)", "changed", "(recorded body)", f"(a body of {body.size} bytes, over what is "
                                                                   "masked and compared: not shown)")]
        limit = self.keep
        new_raw = inflate(body.kept, resp.headers.get("content-encoding", ""), limit)
        if len(new_raw) > limit:
            return [Change("(body)", "changed", "(recorded body)", f"(a body over {limit} bytes once inflated: "
                                                                   "not shown)")]
        new_text = self.mask(call, resp.status_code, list(resp.headers.items()), new_raw, content_type)
        if new_text is None:
            return [Change("(body)", "changed", "(recorded body)", "(a body that could not be masked: not shown)")]
        if cut:
            return cut_diff(recorded, new_text, call.get("response_body_sha256"), body.sha256)
        return structural_diff(recorded, new_text, content_type, writes=call.get("access_level") not in READ_LEVELS)

    def mask(self, call: dict[str, Any], status: int, headers: list, body: bytes, content_type: str) -> str | None:
        """The new response body as the record would keep it (None: it could not be masked)."""
        if self.masker is None:
            return body.decode("utf-8", "replace")
        protocol = None
        if call.get("service"):
            try:
                protocol = protocol_of(service_model(call["service"]))
            except Exception:  # noqa: BLE001
                protocol = None
        shim = SimpleNamespace(service=call.get("service"), operation=call.get("operation"), protocol=protocol,
                               params=call.get("params") or {})
        try:
            part, _ = self.masker.response(shim, status=status, headers=headers, body=body, content_type=content_type,
                                           agent=False)
        except Exception:  # noqa: BLE001 - masking never raises by contract; be safe all the same
            return None
        if part.body is None and body:
            return None
        return part.body or ""


@dataclasses.dataclass
class Body:
    """An answer's body as sent: its SHA-256 and size, and its first bytes."""

    sha256: str
    size: int
    kept: bytes


def read_body(chunks: Iterable[bytes], keep: int) -> Body:
    """Hash every chunk; keep no more than ``keep`` bytes (an answer of any size takes no memory)."""
    digest, size, kept = hashlib.sha256(), 0, bytearray()
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        if len(kept) < keep:
            kept += chunk[:keep - len(kept)]
    return Body(digest.hexdigest(), size, bytes(kept))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


# ---------------------------------------------------------------------------------------------
# Structural diff

_VOLATILE = re.compile(r"(?i)(request-?id|requestid|date|time|timestamp|expir|token|etag|marker|nonce|"
                       r"x-amz-id-2|hostid|lastmodified|last-modified|creationdatetime|receipthandle)")
# What a call that changes something answers anew each time it is made: the identifiers it makes
# (SQS's and SNS's MessageId, a new instance's, upload's or version's id, an execution's ARN) and
# sequence numbers. Volatile in the answers of calls whose IAM access level is not List or Read.
_GENERATED = re.compile(r"(?:Id|ID|Ids|IDs|Arn|ARN|SequenceNumber)$|(?i:^(?:id|arn)$)")
READ_LEVELS = frozenset({"List", "Read"})


def parse_body(text: str, content_type: str = "") -> Any:
    """JSON or XML as plain data (XML: tag -> text or children; repeated tags -> lists); else text."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[") or "json" in content_type:
        try:
            return json.loads(text)
        except ValueError:
            pass
    if stripped[:1] == "<":
        try:
            from defusedxml import ElementTree

            root = ElementTree.fromstring(text.encode("utf-8"))
            return {_local(root.tag): _xml(root)}
        except Exception:  # noqa: BLE001 - not well-formed: compared as text
            pass
    return text


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml(elem: Any) -> Any:
    children = list(elem)
    if not children:
        return (elem.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        name = _local(child.tag)
        value = _xml(child)
        if name in out:
            if not isinstance(out[name], list) or not getattr(out[name], "_repeated", False):
                out[name] = _Repeated([out[name]])
            out[name].append(value)
        else:
            out[name] = value
    return out


class _Repeated(list):
    _repeated = True


def structural_diff(old_text: str, new_text: str, content_type: str = "", writes: bool = False) -> list[Change]:
    """What changed between the recorded and the new (masked) body, path by path; ``writes``: the
    answer of a call that changes something, whose generated identifiers are volatile too."""
    changes: list[Change] = []
    volatile = _VOLATILE.search if not writes else lambda k: _VOLATILE.search(k) or _GENERATED.search(k)
    _diff(parse_body(old_text, content_type), parse_body(new_text, content_type), "", changes, volatile)
    return changes


def cut_diff(recorded: str, new_text: str, old_sha: str | None, new_sha: str) -> list[Change]:
    """What changed between a recorded body cut at body_cap (its first bytes, which parse as neither
    JSON nor XML) and the new, masked one, whose SHA-256 is not the recorded one: where the two
    first part, or, where the new body starts with all the record kept, that what follows differs."""
    kept = len(recorded.encode("utf-8"))
    head = new_text.encode("utf-8")[:kept].decode("utf-8", "ignore")
    if head == recorded:
        return [Change(f"(body after the first {kept} bytes, which the record keeps)", "changed",
                       f"sha256 {old_sha}" if old_sha else "(not recorded)", f"sha256 {new_sha}")]
    at = next((i for i, (a, b) in enumerate(zip(recorded, head)) if a != b), min(len(recorded), len(head)))
    start = max(0, at - 20)
    return [Change(f"(body from character {at}; the record keeps its first {kept} bytes)", "changed",
                   recorded[start:start + 80], new_text[start:start + 80])]


def _diff(old: Any, new: Any, path: str, out: list[Change], is_volatile: Any, volatile: bool = False) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            p = f"{path}.{k}" if path else str(k)
            v = volatile or bool(is_volatile(str(k)))
            if k not in new:
                out.append(Change(p, "removed", old[k], None, v))
            else:
                _diff(old[k], new[k], p, out, is_volatile, v)
        for k in new:
            if k not in old:
                p = f"{path}.{k}" if path else str(k)
                out.append(Change(p, "added", None, new[k], volatile or bool(is_volatile(str(k)))))
        return
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            p = f"{path}[{i}]"
            if i >= len(new):
                out.append(Change(p, "removed", old[i], None, volatile))
            elif i >= len(old):
                out.append(Change(p, "added", None, new[i], volatile))
            else:
                _diff(old[i], new[i], p, out, is_volatile, volatile)
        return
    if type(old) is not type(new) and not (isinstance(old, (int, float)) and isinstance(new, (int, float))):
        if isinstance(old, (dict, list)) or isinstance(new, (dict, list)):
            out.append(Change(path, "type", old, new, volatile))
            return
    if old != new:
        out.append(Change(path, "changed", old, new, volatile))


def run(plans: list[Plan], replayer: Replayer, progress: Callable[[Plan], None] | None = None) -> list[Outcome]:
    outcomes = []
    for p in plans:
        outcomes.append(replayer.send(p))
        if progress is not None:
            progress(p)
    return outcomes
