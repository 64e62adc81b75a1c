"""The Record: what the gateway writes about one flow (one AWS call, or one refused connection).

Every flow, forwarded, refused, held, failed upstream or abandoned by the client, produces exactly
one Record. The recorder builds it from what the earlier stages left in ``flow.metadata``; the store
writes it. Secrets never appear here: headers are redacted before a Record is built, and bodies are
represented by their digest and size (and, once masked, by their masked text). A response whose
body streams is recorded before that body passes: its record has no digest or size for it, and its
``body_note`` gives the length upstream declared (upstream's ETag and checksum headers are among
its response headers).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

# Headers that are never stored, whatever their value.
RECORDED_RESOURCES = 32  # resources a record keeps (every one is decided on; the parameters name the rest)
REDACTED_HEADERS = frozenset(
    {"authorization", "x-amz-security-token", "proxy-authorization", "cookie", "set-cookie"}
)


def new_id() -> str:
    """A sortable, unique id: 12 hex digits of milliseconds, then 20 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def redact_headers(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs with the credential-bearing headers dropped."""
    return [(k, v) for k, v in headers.items(multi=True) if k.lower() not in REDACTED_HEADERS] if hasattr(
        headers, "fields"
    ) else [(k, v) for k, v in headers.items() if k.lower() not in REDACTED_HEADERS]


@dataclasses.dataclass
class Record:
    id: str = dataclasses.field(default_factory=new_id)
    time: float = dataclasses.field(default_factory=time.time)  # when the request arrived (epoch s)
    kind: str = "call"  # "call" (an HTTP request) or "connect" (a CONNECT refused or tunnelled)
    session_id: str | None = None
    # who
    principal: str | None = None  # the token's sub
    issuer: str | None = None
    on_behalf_of: str | None = None  # the act claim's sub
    groups: list[str] = dataclasses.field(default_factory=list)
    client: str | None = None  # "ip:port"
    # what
    service: str | None = None  # botocore service name
    operation: str | None = None  # API operation name
    action: str | None = None  # IAM-style action, e.g. s3:GetObject ("unknown" when unclassified)
    access_level: str | None = None
    region: str | None = None
    account: str | None = None
    resources: list[str] = dataclasses.field(default_factory=list)
    params: dict[str, Any] | None = None
    method: str | None = None
    host: str | None = None
    url: str | None = None  # without credential-bearing query parameters
    request_headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    request_body_sha256: str | None = None
    request_body_size: int | None = None
    # decision
    decision: str | None = None  # allow | deny | approve
    rule: str | None = None
    reason: str | None = None
    policy_version: str | None = None
    approval_id: str | None = None
    approver: str | None = None
    role: str | None = None  # the role ARN the call ran as
    # outcome
    outcome: str | None = None  # forwarded | refused | held | failed | client_gone | tunnelled (what the agent got)
    status: int | None = None
    error: str | None = None
    aws_request_id: str | None = None
    response_headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    response_body_sha256: str | None = None
    response_body_size: int | None = None
    # bodies as masked (core.masking): the text kept, what was masked (part, member path, what
    # masked it, how many values; never a value), and why a body is not kept or how it was
    request_body: str | None = None
    response_body: str | None = None
    masked: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    body_note: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
