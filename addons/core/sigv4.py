"""AWS request signatures: read the agent's, and re-sign a request with other credentials.

``parse_auth`` says how a request is signed (SigV4 in the Authorization header or in the query
string, SigV2, SigV4a, or not at all) without checking the signature: the agent signs with
credentials that mean nothing to AWS, and its identity comes from its token.

``resign`` strips the agent's signature and signs the request again with botocore's own signers
(``SigV4Auth``, ``S3SigV4Auth``) and the credentials the gateway obtained. The payload hash is the
one the client declared in ``x-amz-content-sha256`` whenever it declared one, so a body whose hash
is declared (or which is ``UNSIGNED-PAYLOAD``/``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) goes
upstream untouched and unread. Bodies made of signed chunks (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``
and ``-TRAILER``) get a streaming transform that re-signs each chunk as it passes. Presigned
requests (query-string SigV4 or SigV2) are sent on as header-signed requests.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes, urlsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.utils import normalize_url_path

from . import endpoints

ALGORITHM = "AWS4-HMAC-SHA256"
ALGORITHM_V4A = "AWS4-ECDSA-P256-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = sha256(b"").hexdigest()

# Payload hashes a client may declare and the gateway can forward without reading the body.
DECLARED_PAYLOADS = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER}
)
SIGNED_CHUNK_PAYLOADS = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER})

# Signing names that sign the way S3 does (unnormalised path, x-amz-content-sha256 always sent).
S3_SIGNING_NAMES = frozenset({"s3", "s3-outposts", "s3-object-lambda", "s3express"})

# Query parameters of a presigned SigV4 (and SigV4a) request.
SIGV4_QUERY_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-Region-Set",
    "X-Amz-Content-Sha256",  # the AWS SDK for JavaScript v3 presigns with =UNSIGNED-PAYLOAD in the query
)
# Query parameters of a SigV2 request: S3 presigned URLs and the old query APIs.
SIGV2_QUERY_PARAMS = (
    "AWSAccessKeyId",
    "Signature",
    "Expires",
    "x-amz-security-token",
    "SignatureVersion",
    "SignatureMethod",
    "Timestamp",
    "SecurityToken",
)
# Query parameters that carry a credential: never recorded.
CREDENTIAL_QUERY_PARAMS = (
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "AWSAccessKeyId",
    "Signature",
    "SecurityToken",
)

# Headers the agent's signature puts on a request; the gateway's signature replaces them.
_REPLACED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    }
)
# Headers a proxy may change or drop on the way: never signed.
_NEVER_SIGNED = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Headers always signed when present, whatever the client signed.
_ALWAYS_SIGNED = frozenset({"host", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SCOPE_DATE = re.compile(r"\d{8}")
_SCHEME = re.compile(r"[A-Za-z0-9-]{1,40}")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_TRAILER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")  # an HTTP field: token ":" value


@dataclasses.dataclass(frozen=True)
class AgentAuth:
    """How the agent signed a request. Nothing here is verified."""

    kind: str  # "header-v4", "query-v4", "header-v4a", "query-v4a", "header-v2", "query-v2", "none"
    access_key: str | None = None
    region: str | None = None  # from the credential scope
    service: str | None = None  # signing name from the credential scope
    signed_headers: tuple[str, ...] = ()
    security_token: str | None = dataclasses.field(default=None, repr=False)  # header or query
    payload_hash: str | None = None  # the declared x-amz-content-sha256
    error: str | None = None  # why the signature is malformed; never quotes a credential
    expires_at: float | None = None  # a presigned URL's end (epoch seconds), where it names one

    @property
    def presigned(self) -> bool:
        return self.kind.startswith("query-")


@dataclasses.dataclass
class Signed:
    """A request signed again: what to send upstream instead of the agent's request."""

    path: str  # the raw path; for S3, percent-encoded as S3 signs it (``s3_path``)
    query: str  # the raw query without the agent's signature parameters
    headers: list[tuple[str, str]]  # the agent's headers without its signature, then the new ones
    # For signed-chunk bodies: called with each piece of the incoming body in order and b"" at the
    # end, returns the re-signed bytes to forward; b"" while a chunk is incomplete, which a caller
    # must not pass on as a piece of its own (on a chunked HTTP/1.1 upstream an empty chunk ends
    # the body). None: the body goes upstream as it is.
    body_transform: Callable[[bytes], bytes] | None = None


# -- reading the agent's signature ----------------------------------------------------------


def parse_auth(
    method: str, path: str, query: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]
) -> AgentAuth:
    """How the request is signed: scheme, access key, credential scope, signed headers,
    session token and declared payload hash. Malformed signatures get ``error`` set."""
    fields = _header_dict(headers)
    params = _query_params(query)
    token = fields.get("x-amz-security-token") or _param(
        params, "X-Amz-Security-Token", "SecurityToken"
    )
    common = {"security_token": token, "payload_hash": fields.get("x-amz-content-sha256")}
    authorization = fields.get("authorization")
    presign = _presign_kind(params)
    if authorization is not None and presign is not None:
        error = "the request is signed twice, in the Authorization header and in the query string"
        return AgentAuth(kind=presign, error=error, **common)
    if authorization is not None:
        return _parse_authorization(authorization, fields, common)
    if presign in ("query-v4", "query-v4a"):
        return _parse_presigned_v4(presign, params, fields, {**common, "expires_at": _v4_expiry(params)})
    if presign == "query-v2":
        return _parse_presigned_v2(params, {**common, "expires_at": _v2_expiry(params)})
    return AgentAuth(kind="none", **common)


MAX_PRESIGNED_SECONDS = 604800  # SigV4's longest X-Amz-Expires: seven days


def _v4_expiry(params: list[tuple[str, str]]) -> float | None:
    """X-Amz-Date plus X-Amz-Expires, in epoch seconds; None when either is missing or malformed
    (what is not stated is not enforced: the gateway signs again, the URL's signature is not its)."""
    date, seconds = _param(params, "X-Amz-Date"), _param(params, "X-Amz-Expires")
    if not date or not seconds or not seconds.isdigit() or int(seconds) > MAX_PRESIGNED_SECONDS:
        return None
    try:
        signed = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return signed.timestamp() + int(seconds)


def _v2_expiry(params: list[tuple[str, str]]) -> float | None:
    """SigV2's Expires: epoch seconds."""
    expires = _param(params, "Expires")
    return float(expires) if expires and expires.isdigit() else None


def expired(auth: AgentAuth, now: float | None = None) -> str | None:
    """Why a presigned request is past its end (as AWS refuses it: "Request has expired"), or None."""
    if auth.expires_at is None or auth.expires_at > (time.time() if now is None else now):
        return None
    at = datetime.fromtimestamp(auth.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"Request has expired: the presigned URL was good until {at}; get a new one"


def streams(auth: AgentAuth, headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> bool:
    """True when the request can be re-signed and forwarded without reading its body: it is
    presigned, declares its payload hash, or says it has no body (Content-Length: 0)."""
    if auth.presigned:
        return True
    if declared_payload_hash(auth.payload_hash) is not None:
        return True
    fields = _header_dict(headers)
    return declared_payload_hash(fields.get("x-amz-content-sha256")) is not None or _no_body(fields)


def declared_payload_hash(value: str | None) -> str | None:
    """The declared ``x-amz-content-sha256`` when it is one the gateway can sign with."""
    if value is None:
        return None
    value = value.strip()
    if value in DECLARED_PAYLOADS or _HEX_SHA256.fullmatch(value):
        return value
    return None


def region_for(auth: AgentAuth, host: str) -> str:
    """The region to sign in: the agent's credential scope, else the host's region, else its
    partition's default (SigV2 and unsigned requests carry no region)."""
    if auth.region and auth.kind in ("header-v4", "query-v4"):
        return auth.region
    info = endpoints.parse_host(host)
    if info is None:
        return endpoints.default_region(None)
    return info.region or endpoints.default_region(info.partition)


def scrub_query(query: str) -> str:
    """The raw query without the parameters that carry a credential, for recording."""
    return _drop_params(query, CREDENTIAL_QUERY_PARAMS)


def _parse_authorization(value: str, fields: dict[str, str], common: dict) -> AgentAuth:
    scheme, _, rest = value.strip().partition(" ")
    if scheme == ALGORITHM:
        return _scoped_auth("header-v4", *_auth_params(rest), common)
    if scheme == ALGORITHM_V4A:
        auth = _scoped_auth("header-v4a", *_auth_params(rest), common)
        return dataclasses.replace(auth, region=_region_set(fields.get("x-amz-region-set")))
    if scheme == "AWS":
        access_key, colon, signature = rest.strip().partition(":")
        if not colon or not access_key or not signature:
            error = "the SigV2 Authorization header must read 'AWS <access key id>:<signature>'"
            return AgentAuth(kind="header-v2", error=error, **common)
        return AgentAuth(kind="header-v2", access_key=access_key, **common)
    shown = repr(scheme) if _SCHEME.fullmatch(scheme) else "this"
    error = f"{shown} Authorization scheme is not an AWS signature (expected {ALGORITHM})"
    return AgentAuth(kind="none", error=error, **common)


def _parse_presigned_v4(
    kind: str, params: list[tuple[str, str]], fields: dict[str, str], common: dict
) -> AgentAuth:
    values = {
        "Credential": _param(params, "X-Amz-Credential"),
        "SignedHeaders": _param(params, "X-Amz-SignedHeaders"),
        "Signature": _param(params, "X-Amz-Signature"),
    }
    seen: set[str] = set()
    twice = None  # the first presigning parameter given again, in any case, as the URL writes it
    for name, _ in params:
        if name.lower() in _PRESIGN_PARAMS:
            if name.lower() in seen and twice is None:
                twice = next(n for n, _ in params if n.lower() == name.lower())
            seen.add(name.lower())
    auth = _scoped_auth(kind, values, twice, common)
    if kind == "query-v4a":
        region_set = _param(params, "X-Amz-Region-Set") or fields.get("x-amz-region-set")
        return dataclasses.replace(auth, region=_region_set(region_set))
    return auth


def _parse_presigned_v2(params: list[tuple[str, str]], common: dict) -> AgentAuth:
    access_key = _param(params, "AWSAccessKeyId")
    if not access_key or not _param(params, "Signature"):
        error = "a SigV2 presigned request needs both AWSAccessKeyId and Signature"
        return AgentAuth(kind="query-v2", error=error, **common)
    return AgentAuth(kind="query-v2", access_key=access_key, **common)


def _scoped_auth(kind: str, values: Mapping[str, str | None], twice: str | None, common: dict) -> AgentAuth:
    """A SigV4 or SigV4a signature from its Credential, SignedHeaders and Signature; ``twice``: a
    name the signature gives more than once (read two ways: one scope for the policy, another to
    sign with), which makes it an error."""
    if twice is not None:
        return AgentAuth(kind=kind, error=f"the signature gives {twice} more than once", **common)
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not values.get(name)]
    if missing:
        return AgentAuth(kind=kind, error=f"the signature has no {', '.join(missing)}", **common)
    scope = values["Credential"].split("/")
    v4a = kind.endswith("v4a")
    if len(scope) != (4 if v4a else 5) or scope[-1] != "aws4_request" or not all(scope):
        shape = "<key>/<date>/<service>/aws4_request" if v4a else (
            "<key>/<date>/<region>/<service>/aws4_request"
        )
        return AgentAuth(kind=kind, error=f"the Credential must read {shape}", **common)
    if not _SCOPE_DATE.fullmatch(scope[1]):
        return AgentAuth(kind=kind, error="the Credential's date must read YYYYMMDD", **common)
    signed = tuple(h.strip().lower() for h in values["SignedHeaders"].split(";") if h.strip())
    return AgentAuth(
        kind=kind,
        access_key=scope[0],
        region=None if v4a else scope[2],
        service=scope[-2],
        signed_headers=signed,
        **common,
    )


def _auth_params(rest: str) -> tuple[dict[str, str], str | None]:
    """``Credential=..., SignedHeaders=..., Signature=...`` as a dict, and the first name given twice."""
    params: dict[str, str] = {}
    twice = None
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            if name in params and twice is None:
                twice = name
            params[name] = value.strip()
    return params, twice


SCOPED_KINDS = frozenset({"header-v4", "header-v4a", "query-v4", "query-v4a"})  # signatures with a credential scope
_PRESIGN_PARAMS = ("x-amz-algorithm", "x-amz-credential", "x-amz-signedheaders", "x-amz-signature", "x-amz-date",
                   "x-amz-expires", "x-amz-security-token", "x-amz-region-set", "x-amz-content-sha256")


def _presign_kind(params: list[tuple[str, str]]) -> str | None:
    algorithm = _param(params, "X-Amz-Algorithm")
    if algorithm == ALGORITHM or (algorithm is None and _param(params, "X-Amz-Credential")):
        return "query-v4"
    if algorithm == ALGORITHM_V4A:
        return "query-v4a"
    if algorithm is not None:
        return "query-v4"  # an unknown algorithm: reported as a malformed SigV4 presign
    if _param(params, "AWSAccessKeyId") is not None or _param(params, "Signature") is not None:
        return "query-v2"
    return None


def _region_set(value: str | None) -> str | None:
    """The one region of a SigV4a region set, or None for several or a wildcard."""
    if not value or "," in value or "*" in value:
        return None
    return value.strip()


# -- signing again --------------------------------------------------------------------------


def resign(
    method: str,
    host: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
    body: bytes | None,
    *,
    credentials: Any,
    region: str,
    signing_name: str,
    now: datetime | None = None,
    fast: bool = True,
    auth: AgentAuth | None = None,
) -> Signed:
    """Strip the agent's signature and sign the request with ``credentials`` (anything with
    ``access_key``, ``secret_key`` and ``token``: botocore's Credentials or ReadOnlyCredentials).

    ``body`` may be None when the request streams (see ``streams``); otherwise its SHA-256 is the
    payload hash. The payload hash is sent and signed as ``X-Amz-Content-SHA256`` for every
    service, as S3 requires and the others accept (moto needs it to check a request without a
    body). The Host header, when present, is signed as it is; ``host`` is used only when the
    request has none (HTTP/2)."""
    pairs = _header_pairs(headers)
    if auth is None:  # else: ``parse_auth`` of these very method, path, query and headers
        auth = parse_auth(method, path, query, pairs)
    s3 = signing_name in S3_SIGNING_NAMES
    if s3:
        path = s3_path(path)
    payload_hash = _payload_hash(auth, _header_dict(pairs), body, s3)
    kept = [(k, v) for k, v in pairs if not _replaced(k.lower(), auth)]
    new_query = _drop_params(query, _signature_params(auth))
    timestamp = now.astimezone(UTC).strftime(_TIMESTAMP_FORMAT) if now is not None else _timestamp()
    names = _names_to_sign(auth, kept)
    _check_signable(kept, names)
    if fast and _plain(host, path, new_query, kept):
        signature, added = _sign_fast(method, host, path, new_query, kept, names, credentials, region,
                                      signing_name, timestamp, payload_hash, s3)
    else:
        signature, added = _sign_botocore(method, host, path, new_query, kept, names, credentials, region,
                                          signing_name, timestamp, payload_hash, s3)
    transform = None
    if payload_hash in SIGNED_CHUNK_PAYLOADS:
        key = signing_key(credentials.secret_key, timestamp[:8], region, signing_name)
        scope = f"{timestamp[:8]}/{region}/{signing_name}/aws4_request"
        transform = ChunkResigner(key, timestamp, scope, signature)
    return Signed(path=path, query=new_query, headers=kept + added, body_transform=transform)


_ADDED = ("X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256", "Authorization")
_STAMP: list = [-1, ""]  # [second, X-Amz-Date of that second]: formatted once a second


def _timestamp() -> str:
    """X-Amz-Date now (SigV4 counts whole seconds)."""
    second = int(time.time())
    if _STAMP[0] != second:
        _STAMP[:] = [second, time.strftime(_TIMESTAMP_FORMAT, time.gmtime(second))]
    return _STAMP[1]


def _check_signable(kept: list[tuple[str, str]], names: frozenset[str]) -> None:
    """SigV4 signs UTF-8 text: a header to sign that holds other bytes (which mitmproxy keeps as lone
    surrogates) cannot be signed, so the request is refused rather than half-signed."""
    for name, value in kept:
        if name.lower() in names and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"the {name[:60]!r} header is not UTF-8 text, so it cannot be signed") from None


def _sign_botocore(method, host, path, query, kept, names, credentials, region, signing_name, timestamp,
                   payload_hash, s3) -> tuple[str, list[tuple[str, str]]]:
    """Sign with botocore's SigV4Auth / S3SigV4Auth (with the changes of ``_Resigning``)."""
    request = _aws_request(method, host, path, query, kept)
    request.headers["X-Amz-Content-SHA256"] = payload_hash
    signer_class = _S3Resigner if s3 else _Resigner
    signer = signer_class(credentials, signing_name, region, timestamp=timestamp, payload_hash=payload_hash,
                          names=names, host=host)
    signature = signer.sign(request)
    return signature, [(name, request.headers[name]) for name in _ADDED if name in request.headers]


def _plain(host: str, path: str, query: str, kept: list[tuple[str, str]]) -> bool:
    """Is this request in the shape ``_sign_fast`` is proven equal to botocore on (tests/test_sigv4.py):
    ASCII throughout, no fragment or query marker inside the path?"""
    if not (host.isascii() and path.isascii() and query.isascii()) or "#" in path or "?" in path:
        return False
    return all(name.isascii() and value.isascii() for name, value in kept)


def _sign_fast(method, host, path, query, kept, names, credentials, region, signing_name, timestamp,
               payload_hash, s3) -> tuple[str, list[tuple[str, str]]]:
    """The signature botocore's signer makes (``_sign_botocore``), computed from the header pairs
    directly: botocore keeps headers in an ``email.message.Message`` that lower-cases every name
    on every lookup (about 200 times per request), and derives the signing key again each time."""
    token = credentials.token
    added = [("X-Amz-Date", timestamp)]
    if token:
        added.append(("X-Amz-Security-Token", token))
    added.append(("X-Amz-Content-SHA256", payload_hash))
    selected: dict[str, list[str]] = {}
    for name, value in (*kept, *added):
        lower = name.lower()
        if lower in names:
            selected.setdefault(lower, []).append(value)
    if "host" not in selected:
        selected["host"] = [host]
    ordered = sorted(selected)
    canonical_headers = "".join(f"{n}:{','.join(' '.join(v.split()) for v in selected[n])}\n" for n in ordered)
    signed_headers = ";".join(ordered)
    canonical = "\n".join((method.upper(), _url_path(host, path, s3), canonical_query(query), canonical_headers,
                           signed_headers, payload_hash))
    scope = f"{timestamp[:8]}/{region}/{signing_name}/aws4_request"
    string_to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{sha256(canonical.encode()).hexdigest()}"
    key = signing_key(credentials.secret_key, timestamp[:8], region, signing_name)
    signature = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
    added.append(("Authorization", f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                   f"SignedHeaders={signed_headers}, Signature={signature}"))
    return signature, added


def s3_path(path: str) -> str:
    """A request path as S3 reads it for the signature: every byte but the unreserved ones
    (``A-Z a-z 0-9 - _ . ~``) and ``/`` percent-encoded, once. An SDK sends a key so already; a
    plain HTTP client may not (``/data/dt=2024-05-22/x@2x.png``, which S3 signs as
    ``/data/dt%3D2024-05-22/x%402x.png``): signed as it came, such a request is refused by S3
    (SignatureDoesNotMatch). Escapes are decoded first, so none is encoded twice, and the key S3
    reads is the same; a ``%`` that starts no escape is a ``%`` of the key, as the classifier read it.
    An encoded ``/`` stays encoded: the classifier splits the path at the slashes sent, and a
    ``/bucket%2Fkey`` made ``/bucket/key`` would name another bucket than the one decided."""
    raw = path.encode("utf-8", "surrogateescape")  # mitmproxy keeps bytes that are not UTF-8 as surrogates
    return "%2F".join(quote(unquote_to_bytes(part), safe="/~") for part in _ENCODED_SLASH.split(raw))


_ENCODED_SLASH = re.compile(rb"%2[Ff]")


@functools.lru_cache(maxsize=4096)
def _url_path(host: str, path: str, s3: bool) -> str:
    """The canonical request's path, as botocore's signer makes it (S3: as sent, in ``s3_path``'s form;
    the others normalised)."""
    url_path = urlsplit(f"https://{host}{path or '/'}").path
    return url_path if s3 else quote(normalize_url_path(url_path), safe="/~")


@functools.lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived signing key for one day, region and service (kept: it changes once a day)."""
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), sha256).digest()
    return key


def canonical_query(query: str) -> str:
    """SigV4's canonical query string: each name and value decoded, then encoded the SigV4
    way, sorted."""
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_encode(unquote(name)), _encode(unquote(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _payload_hash(auth: AgentAuth, fields: dict[str, str], body: bytes | None, s3: bool) -> str:
    """The declared hash when there is one; for presigned S3 requests UNSIGNED-PAYLOAD;
    otherwise the body's SHA-256."""
    declared = declared_payload_hash(auth.payload_hash)
    if declared is not None:
        return declared
    if auth.payload_hash and auth.payload_hash.strip().startswith("STREAMING-"):
        # SigV4a signed chunks, event streams: each message carries a signature of its own
        raise ValueError(
            f"a {auth.payload_hash.strip()[:60]} body cannot be re-signed; the gateway re-signs "
            f"{STREAMING_SIGNED}[-TRAILER], {STREAMING_UNSIGNED_TRAILER} and {UNSIGNED_PAYLOAD}"
        )
    if auth.presigned and s3:
        return UNSIGNED_PAYLOAD
    if body is not None:
        return sha256(body).hexdigest()
    if _no_body(fields):
        return EMPTY_SHA256
    if s3:
        return UNSIGNED_PAYLOAD
    if auth.presigned:
        return EMPTY_SHA256
    raise ValueError(
        "the request declares no x-amz-content-sha256, so its body is needed to sign it"
    )


def _replaced(name: str, auth: AgentAuth) -> bool:
    if name in _REPLACED_HEADERS:
        return True
    return name == "x-amz-region-set" and auth.kind.endswith("v4a")


# Query parameters that carry the agent's session token (its OIDC token, transport B): never sent
# upstream, however the request is signed. No operation has a parameter of these names.
TOKEN_QUERY_PARAMS = ("X-Amz-Security-Token", "SecurityToken")


def _signature_params(auth: AgentAuth) -> tuple[str, ...]:
    """The query parameters that go: a presigned request's signature, and whatever carries a
    credential or a signature in any request (no operation has a parameter of these names), so
    that upstream sees the gateway's signature alone."""
    if auth.kind in ("query-v4", "query-v4a"):
        return SIGV4_QUERY_PARAMS + TOKEN_QUERY_PARAMS + CREDENTIAL_QUERY_PARAMS
    if auth.kind == "query-v2":
        return SIGV2_QUERY_PARAMS + TOKEN_QUERY_PARAMS + CREDENTIAL_QUERY_PARAMS
    return TOKEN_QUERY_PARAMS + CREDENTIAL_QUERY_PARAMS


def _names_to_sign(auth: AgentAuth, kept: list[tuple[str, str]]) -> frozenset[str]:
    """The client's own signed headers, plus the ones SigV4 needs, plus every x-amz-* header
    present; for requests whose client signed no header list, Content-Type and Content-MD5 too."""
    present = {name.lower() for name, _ in kept}
    names = {name for name in auth.signed_headers if name not in _NEVER_SIGNED}
    names |= {name for name in present if name.startswith("x-amz-")}
    if not auth.signed_headers:
        names |= present & {"content-type", "content-md5"}
    return frozenset(names | _ALWAYS_SIGNED)


def _aws_request(method: str, host: str, path: str, query: str, headers: list) -> AWSRequest:
    url = f"https://{host}{path or '/'}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method.upper(), url=url)
    for name, value in headers:
        request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    return request


class _Resigning:
    """What the gateway changes in botocore's SigV4 signers: a given time, the declared payload
    hash, a chosen set of signed headers, SigV4's canonical query, and X-Amz-Date always."""

    def __init__(self, credentials, service_name, region_name, *, timestamp, payload_hash, names,
                 host):
        super().__init__(credentials, service_name, region_name)
        self._timestamp = timestamp
        self._payload_hash = payload_hash
        self._names = names
        self._host = host

    def sign(self, request: AWSRequest) -> str:
        """Sign ``request`` in place; return the signature (the seed of a chunk chain)."""
        request.context["timestamp"] = self._timestamp
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        signature = self.signature(self.string_to_sign(request, canonical), request)
        self._inject_signature_to_request(request, signature)
        return signature

    def payload(self, request):
        return self._payload_hash

    def headers_to_sign(self, request):
        selected = HTTPHeaders()
        for name, value in request.headers.items():
            if name.lower() in self._names:
                selected[name.lower()] = value
        if "host" not in selected:
            selected["host"] = self._host
        return selected

    def canonical_query_string(self, request):
        return canonical_query(urlsplit(request.url).query)

    def _set_necessary_date_headers(self, request):
        if "X-Amz-Date" in request.headers:
            del request.headers["X-Amz-Date"]
        request.headers["X-Amz-Date"] = request.context["timestamp"]


class _Resigner(_Resigning, SigV4Auth):
    pass


class _S3Resigner(_Resigning, S3SigV4Auth):
    pass


# -- signed chunks --------------------------------------------------------------------------


_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")  # an aws-chunked chunk's size: hex digits only


class ChunkResigner:
    """Re-signs a signed aws-chunked body as it streams.

    The body is ``<hex size>;chunk-signature=<sig>\\r\\n<data>\\r\\n`` chunks, a zero-size chunk,
    optional trailer lines (``name:value\\r\\n``, then ``x-amz-trailer-signature:<sig>\\r\\n``) and
    an empty line. Each chunk's signature chains from the previous one, starting from the request
    signature (the seed). Input may arrive split anywhere; at most one chunk is held. The output
    has the same length as the input when the input's signatures are 64 hex digits."""

    _HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
    _MAX_LINE = 4096
    _MAX_CHUNK = 64 << 20  # SDKs send 64 KiB to 8 MiB; a bigger chunk would all be held in memory

    def __init__(self, key: bytes, timestamp: str, scope: str, seed_signature: str):
        self._key = key
        self._prefix = f"{timestamp}\n{scope}\n"
        self._previous = seed_signature
        self._state = self._HEADER
        self._buffer = bytearray()
        self._size_text = b""
        self._remaining = 0
        self._hash = sha256()
        self._pieces: list[bytes] = []
        self._trailers: list[bytes] = []
        self._trailer_signed = False

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return self._finish()
        if self._state == self._DONE:
            raise ValueError("the aws-chunked body continues after its final chunk")
        self._buffer += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def _step(self, out: bytearray) -> bool:
        """Consume what the buffer allows of the current state; False when it needs more."""
        if self._state == self._HEADER:
            return self._read_chunk_header(out)
        if self._state == self._DATA:
            return self._read_chunk_data(out)
        if self._state == self._DATA_END:
            return self._read_chunk_end(out)
        if self._state == self._TRAILER:
            return self._read_trailer(out)
        if self._buffer:
            raise ValueError("the aws-chunked body continues after its final chunk")
        return False

    def _read_chunk_header(self, out: bytearray) -> bool:
        line = self._line()
        if line is None:
            return False
        size_text, _, extension = line.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size_text):  # int() would also take "-1", " 1", "+1" and "1_0"
            raise ValueError("an aws-chunked chunk header does not start with a hex size")
        size = int(size_text, 16)
        if size > self._MAX_CHUNK:
            raise ValueError(f"an aws-chunked chunk of {size} bytes is over the {self._MAX_CHUNK} limit")
        if not extension.strip().startswith(b"chunk-signature="):
            raise ValueError("an aws-chunked chunk has no chunk-signature")
        self._size_text = size_text
        if size == 0:
            out += self._chunk_header(EMPTY_SHA256)
            self._state = self._TRAILER
        else:
            self._remaining, self._hash, self._pieces = size, sha256(), []
            self._state = self._DATA
        return True

    def _read_chunk_data(self, out: bytearray) -> bool:
        if not self._buffer:
            return False
        piece = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(piece)]
        self._hash.update(piece)
        self._pieces.append(piece)
        self._remaining -= len(piece)
        if self._remaining == 0:
            out += self._chunk_header(self._hash.hexdigest())
            out += b"".join(self._pieces)
            self._pieces = []
            self._state = self._DATA_END
        return True

    def _read_chunk_end(self, out: bytearray) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise ValueError("an aws-chunked chunk is longer than its declared size")
        del self._buffer[:2]
        out += b"\r\n"
        self._state = self._HEADER
        return True

    def _read_trailer(self, out: bytearray) -> bool:
        line = self._line()
        if line is None:
            return False
        if line == b"":
            out += self._trailer_block() + b"\r\n"
            self._state = self._DONE
        elif line.lower().startswith(b"x-amz-trailer-signature:"):
            self._trailer_signed = True
        elif not _TRAILER_LINE.fullmatch(line):
            raise ValueError("an aws-chunked trailer line does not read name:value")
        else:
            self._trailers.append(line)
        return True

    def _finish(self) -> bytes:
        if self._state == self._DONE and not self._buffer:
            return b""
        if self._state == self._TRAILER and not self._buffer:
            self._state = self._DONE  # the final empty line is missing: mirror the input
            return self._trailer_block()
        raise ValueError("the aws-chunked body ended before its final chunk")

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end == -1:
            if len(self._buffer) > self._MAX_LINE:
                raise ValueError("an aws-chunked header or trailer line is too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _chunk_header(self, data_hash: str) -> bytes:
        signature = self._chain(f"AWS4-HMAC-SHA256-PAYLOAD\n{self._prefix}{self._previous}\n"
                                f"{EMPTY_SHA256}\n{data_hash}")
        return self._size_text + b";chunk-signature=" + signature.encode() + b"\r\n"

    def _trailer_block(self) -> bytes:
        block = b"".join(line + b"\r\n" for line in self._trailers)
        if self._trailer_signed:
            canonical = b"".join(line + b"\n" for line in self._trailers)
            signature = self._chain(f"AWS4-HMAC-SHA256-TRAILER\n{self._prefix}{self._previous}\n"
                                    f"{sha256(canonical).hexdigest()}")
            block += b"x-amz-trailer-signature:" + signature.encode() + b"\r\n"
        return block

    def _chain(self, string_to_sign: str) -> str:
        self._previous = hmac.new(self._key, string_to_sign.encode(), sha256).hexdigest()
        return self._previous


# -- helpers --------------------------------------------------------------------------------


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs from a mapping, a multi-dict such as mitmproxy's Headers, or pairs."""
    if type(headers) is list:
        return headers
    if hasattr(headers, "fields"):
        return list(headers.items(multi=True))
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _header_dict(headers: Any) -> dict[str, str]:
    """Lower-cased names to the first value."""
    fields: dict[str, str] = {}
    for name, value in _header_pairs(headers):
        fields.setdefault(name.lower(), value)
    return fields


def _no_body(fields: dict[str, str]) -> bool:
    return fields.get("content-length", "").strip() == "0" and "transfer-encoding" not in fields


def _query_params(query: str) -> list[tuple[str, str]]:
    if not query:
        return []
    params = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            params.append((unquote(name), unquote(value)))
    return params


def _param(params: list[tuple[str, str]], *names: str) -> str | None:
    """The first value of any of ``names`` (case-insensitive)."""
    wanted = {name.lower() for name in names}
    for name, value in params:
        if name.lower() in wanted:
            return value
    return None


def _drop_params(query: str, names: Iterable[str]) -> str:
    """The raw query without the parameters named (case-insensitive), otherwise unchanged."""
    if not query:
        return query
    drop = {name.lower() for name in names}
    if not drop:
        return query
    kept = [
        part
        for part in query.split("&")
        if part and unquote(part.partition("=")[0]).lower() not in drop
    ]
    return "&".join(kept)
