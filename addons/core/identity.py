"""Identity: who is calling. Validates an agent's OIDC token and turns it into a Principal.

The issuer's keys come from its discovery document (``{issuer}/.well-known/openid-configuration``
names the ``jwks_uri``), fetched with an async client, cached for ``jwks_cache_seconds`` and shared
by every validation that needs them at the same moment. A token signed with a key the cache does not
hold triggers one refetch (key rotation), at most once every ``min_refetch_seconds`` so a flood of
made-up key ids cannot hammer the issuer. A fetch that failed does not count against that limit: it
is tried again after ``retry_seconds``, and until one succeeds a token whose key the cache does not
hold is refused as ``issuer_unreachable`` (to be retried), not as an unknown key, since the gateway
cannot tell whether the issuer publishes it. Past their cache lifetime the keys are trusted no more:
they are fetched again, and while that fails every token is refused (``issuer_unreachable``), even
one validated before, so a key the issuer withdrew stops working within that lifetime. A discovery
document that names another issuer than the configured one (``http://h:p`` for ``http://h:p/``) is
a configuration error (``issuer_misconfigured``): retrying does not help, the setting must change.
Signatures are verified with python-jose; the header's algorithm is checked against an allowlist of
asymmetric algorithms first, so ``alg: none`` and HMAC tokens keyed with the issuer's public key
never reach a verifier. Keys come only from the issuer's JWKS, never from the token's own header
(``jku``, ``jwk``, ``x5u`` and ``x5c`` are ignored).

A refused token raises TokenError, whose ``reason`` a person can read and whose ``code`` a program
can branch on. Reasons never contain the token or any part of its signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import copy
import dataclasses
import datetime
import hashlib
import json
import math
import re
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from jose import jwk, jws
from jose.exceptions import JOSEError

DEFAULT_LEEWAY = 30.0  # seconds of clock skew tolerated between the issuer and the gateway

# The asymmetric algorithms python-jose verifies, and the key each needs: (kty, crv).
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}

CODES = frozenset(
    {
        "missing",
        "malformed",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "unknown_key",
        "bad_algorithm",
        "bad_signature",
        "subject_mismatch",
        "issuer_unreachable",  # the issuer's keys cannot be fetched now: the token may be good, retry
        "issuer_misconfigured",  # the issuer's discovery document names another issuer than the configured one
    }
)

MAX_TOKEN_LENGTH = 16 * 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who made a call, from a validated token."""

    sub: str
    iss: str
    aud: tuple[str, ...]
    groups: tuple[str, ...]
    on_behalf_of: str | None  # the `act` claim's `sub` (RFC 8693), when present
    exp: float  # epoch seconds
    claims: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)  # read-only
    # every sub of the act claim's chain (act, its act, ...): on_behalf_of first, then those before
    actors: tuple[str, ...] = ()

    def expired(self, now: float | None = None, leeway: float = DEFAULT_LEEWAY) -> bool:
        """True once the token's exp (plus leeway) has passed."""
        return (time.time() if now is None else now) > self.exp + leeway

    def as_dict(self) -> dict[str, Any]:
        """A plain, mutable JSON-shaped copy (for jmespath conditions and records)."""
        return {
            "sub": self.sub,
            "iss": self.iss,
            "aud": list(self.aud),
            "groups": list(self.groups),
            "on_behalf_of": self.on_behalf_of,
            "actors": list(self.actors),
            "exp": self.exp,
            "claims": copy.deepcopy(dict(self.claims)),
        }


class TokenError(Exception):
    """A token was refused: ``reason`` says what is wrong, ``code`` names it for programs."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason = reason
        self.code = code


def same_subject(a: Principal, b: Principal) -> bool:
    """True when two principals name the same subject of the same issuer."""
    return a.iss == b.iss and a.sub == b.sub


def token_from_basic_auth(header_value: str) -> str | None:
    """The token in a ``Proxy-Authorization`` header: the password of ``Basic``, or ``Bearer``'s value.

    A Basic header with an empty password yields the user name instead (``http://<JWT>@gateway``).
    """
    scheme, _, value = (header_value or "").strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return password or user or None


class TokenValidator:
    """Validates tokens of one OIDC issuer for one or more audiences."""

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        *,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        groups_claim: str = "groups",
        leeway: float = DEFAULT_LEEWAY,
        jwks_cache_seconds: float = 3600.0,
        min_refetch_seconds: float = 30.0,
        retry_seconds: float = 3.0,
        http_timeout: float = 5.0,
        cache_size: int = 4096,
    ):
        if not issuer:
            raise ValueError("an OIDC issuer URL is required")
        self.issuer = issuer
        self.audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError(f"the audience must be one or more non-empty strings, not {audience!r}")
        unsupported = [a for a in algorithms if a not in KEY_TYPES]
        if unsupported or not algorithms:
            raise ValueError(
                f"algorithms {unsupported or list(algorithms)!r} are not supported: "
                f"choose asymmetric ones from {', '.join(KEY_TYPES)}"
            )
        self.algorithms = tuple(algorithms)
        self.groups_claim = groups_claim
        self.leeway = leeway
        if not jwks_cache_seconds > 0:
            raise ValueError(f"the JWKS cache lifetime must be a number of seconds above 0, not {jwks_cache_seconds!r}")
        self.jwks_cache_seconds = jwks_cache_seconds
        self.min_refetch_seconds = min(min_refetch_seconds, jwks_cache_seconds)
        # after a failed fetch: soon enough that calls go through again shortly after the issuer is
        # back, seldom enough that an issuer that is down is not hammered
        self.retry_seconds = min(retry_seconds, self.min_refetch_seconds)
        self.http_timeout = http_timeout
        self.discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"

        self._jwks_uri: str | None = None
        self._rediscover = False  # the last JWKS fetch failed: read the discovery document again
        self._keys: list[_Key] | None = None  # None until a JWKS has been fetched
        self._keys_fetched_at = float("-inf")  # time.monotonic()
        self._last_fetch = float("-inf")  # time.monotonic() of the last attempt, good or bad
        self._last_kid_refetch = float("-inf")  # time.monotonic() of the last good refetch for an unknown kid
        self._fetch_error: str | None = None  # why the last attempt failed (None: it succeeded)
        self._fetch_code = "issuer_unreachable"  # what kind of failure that was
        self._inflight: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: collections.OrderedDict[bytes, tuple[Principal, str]] = collections.OrderedDict()
        self._cache_size = cache_size

    async def validate(self, token: str | None) -> Principal:
        """The Principal a token names; raises TokenError when the token is refused."""
        token = (token or "").strip()
        if not token:
            raise TokenError("no token was presented", "missing")
        cached = self.validate_cached(token)
        if cached is not None:
            return cached
        header, claims = parse_token(token)
        alg = check_algorithm(header, self.algorithms)
        self._check_issuer(claims)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("token is malformed: the header's kid is not a string", "malformed")
        keys = await self._keys_for(kid, alg)
        signer = _verifying_key(token, keys, alg)
        if signer is None:
            raise TokenError(
                f"token signature does not verify with the issuer's key {_key_name(kid)}: "
                "the token was altered or not signed by the issuer"
                + (", or signed with a key the issuer no longer publishes (get a fresh token)" if kid is None else ""),
                "bad_signature",
            )
        principal = principal_from_claims(
            claims, audiences=self.audiences, groups_claim=self.groups_claim, leeway=self.leeway
        )
        self._remember(token, principal, signer.thumbprint)
        return principal

    def validate_cached(self, token: str) -> Principal | None:
        """The Principal of a token already validated whose exp has not passed; None otherwise."""
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is None:
            return None
        principal, thumbprint = entry
        if principal.exp <= time.time() or not self._still_published(thumbprint):
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return principal

    async def configuration_error(self, timeout: float = 3.0) -> str | None:
        """Why no token can be accepted whatever the issuer does, read from its discovery document
        now (its issuer is not the configured one); None when it names this issuer, or cannot be
        fetched within ``timeout`` seconds (the issuer may be down: calls will say so). For a check
        at start-up: it keeps nothing, and leaves the fetching of keys to the calls."""
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as http:
                response = await http.get(self.discovery_url, headers={"Accept": "application/json"})
            doc = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            return None
        try:
            jwks_uri_from_discovery(doc, self.issuer, self.discovery_url)
        except _FetchError as e:
            return str(e) if e.code == "issuer_misconfigured" else None
        return None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        self._inflight = None
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None
        self._loop = None

    # -- claims checked before any key is fetched

    def _check_issuer(self, claims: Mapping[str, Any]) -> None:
        iss = claims.get("iss")
        if iss is None:
            raise TokenError(f"token has no issuer (iss); expected {self.issuer!r}", "wrong_issuer")
        if iss != self.issuer:
            reason = f"token issuer {_show(iss)} is not the configured issuer {self.issuer!r}"
            if isinstance(iss, str) and iss.rstrip("/") == self.issuer.rstrip("/"):
                reason += (
                    "; they differ only in a trailing slash: oidc_issuer must be written exactly as the "
                    "issuer writes it (the issuer in its discovery document)"
                )
            raise TokenError(reason, "wrong_issuer")

    # -- the issuer's keys

    async def _keys_for(self, kid: str | None, alg: str) -> list[_Key]:
        """The published keys that may have signed a token with this kid and alg."""
        if self._keys is None or self._keys_stale():
            if self._may_fetch():
                await self._refresh()
            if self._keys is None or self._keys_stale():
                self._raise_misconfigured()
                raise TokenError(self._unreachable_reason(), "issuer_unreachable")
        matches = _matching(self._keys, kid, alg)
        looked_again = False
        if not matches and self._may_refetch_for_kid():
            await self._refresh(for_kid=True)
            matches = _matching(self._keys or [], kid, alg)
            looked_again = True
        if matches:
            return matches
        keys = self._keys or []
        if kid is not None and any(k.kid == kid for k in keys):
            kinds = sorted({k.alg for k in keys if k.kid == kid})
            raise TokenError(
                f"algorithm {alg!r} does not fit the issuer's key {_show(kid)} "
                f"(it verifies {', '.join(kinds)})",
                "bad_algorithm",
            )
        if self._fetch_error is not None:  # the refetch failed, or was not tried so soon after one that did
            self._raise_misconfigured()
            held = (
                f"signing key {_show(kid)} is not"
                if kid is not None
                else f"token names no signing key (kid), and no {alg} key is"
            )
            raise TokenError(
                f"{held} among the issuer's keys the gateway holds, and they cannot be fetched again to "
                f"look for it ({self._fetch_error}); check that the gateway can reach the issuer",
                "issuer_unreachable",
            )
        known = sorted({k.kid for k in keys if k.kid})
        reason = (
            f"signing key {_show(kid)} is unknown to the issuer"
            if kid is not None
            else f"token names no signing key (kid), and the issuer publishes no {alg} key"
        )
        reason += f" (it publishes {', '.join(map(repr, known[:8])) or 'no usable keys'} at {self._jwks_uri})"
        if not looked_again:  # not asked now: its keys are fetched again for an unknown one only so often
            age = time.monotonic() - self._keys_fetched_at
            reason += (f"; as fetched {age:.0f} s ago: the gateway asks the issuer again for a key it does not hold "
                       f"at most every {self.min_refetch_seconds:g} s")
        raise TokenError(reason, "unknown_key")

    def _raise_misconfigured(self) -> None:
        """The last fetch failed because the configuration is wrong: retrying will not help."""
        if self._fetch_error is not None and self._fetch_code == "issuer_misconfigured":
            raise TokenError(self._fetch_error, "issuer_misconfigured")

    def _keys_stale(self) -> bool:
        return time.monotonic() - self._keys_fetched_at >= self.jwks_cache_seconds

    def _unreachable_reason(self) -> str:
        """Why no key can be trusted: none was ever fetched, or the cached ones outlived their
        lifetime and could not be fetched again."""
        why = self._fetch_error or f"the issuer's keys could not be fetched ({self.discovery_url})"
        if self._keys is None:
            return why
        age = time.monotonic() - self._keys_fetched_at
        return (
            f"the issuer's keys, fetched {round(age, 1):g} s ago, are past their cache lifetime of "
            f"{self.jwks_cache_seconds:g} s and cannot be fetched again ({why}); "
            "check that the gateway can reach the issuer"
        )

    def _may_fetch(self) -> bool:
        """A fetch is in flight (join it), or none failed in the last ``retry_seconds``. (Only asked
        when no keys are held or they outlived their lifetime, which is longer than the refetch
        limit: after a fetch that succeeded, this is always so.)"""
        self._bind_loop()
        return self._inflight is not None or time.monotonic() - self._last_fetch >= self.retry_seconds

    def _may_refetch_for_kid(self) -> bool:
        """An unknown kid (key rotation) triggers a refetch at most once every
        ``min_refetch_seconds``, counted from the last such refetch that succeeded, so a rotation
        right after start-up is seen at once and a flood of junk kids cannot hammer the issuer.
        After a fetch that failed, the next one may go ``retry_seconds`` later: the keys the issuer
        rotated in while it was down are learnt soon after it is back."""
        if self._inflight is not None:
            return True
        now = time.monotonic()
        if self._fetch_error is not None:
            return now - self._last_fetch >= self.retry_seconds
        return now - self._last_kid_refetch >= self.min_refetch_seconds

    def _still_published(self, thumbprint: str) -> bool:
        """Whether the key that verified a cached token is among the issuer's keys as last fetched:
        the key itself, not its kid, so that a token without a kid, or one whose kid the issuer now
        gives another key, stops working once the key that signed it is withdrawn."""
        if self._keys is None or self._keys_stale():
            return False
        return any(k.thumbprint == thumbprint for k in self._keys)

    async def _refresh(self, *, for_kid: bool = False) -> None:
        """Fetch the keys, sharing one fetch among every caller that needs it at the same moment.
        ``for_kid``: a refetch for an unknown kid, which counts against ``min_refetch_seconds`` if it
        succeeds."""
        self._bind_loop()
        if self._inflight is None:
            self._last_fetch = time.monotonic()
            task = asyncio.get_running_loop().create_task(
                self._fetch_keys(self._last_fetch if for_kid else None))
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    def _bind_loop(self) -> None:
        """Use one HTTP client per event loop (a client cannot move between loops)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.http_timeout, follow_redirects=True)
            self._loop = loop
            self._inflight = None

    async def _fetch_keys(self, kid_refetch_at: float | None = None) -> None:
        """Fetch the discovery document (once) and the JWKS; keep the keys or why they failed."""
        try:
            if self._jwks_uri is None or self._rediscover:
                doc = await self._get_json(self.discovery_url, "the issuer's discovery document")
                self._jwks_uri = jwks_uri_from_discovery(doc, self.issuer, self.discovery_url)
            jwks_uri = self._jwks_uri
            try:
                jwks = await self._get_json(jwks_uri, "the issuer's keys")
                keys = parse_jwks(jwks, self.algorithms, jwks_uri)
            except _FetchError:
                self._rediscover = True  # in case the issuer moved its keys
                raise
        except _FetchError as e:
            self._fetch_error = str(e)
            self._fetch_code = e.code
            return
        self._rediscover = False
        self._keys = keys
        self._keys_fetched_at = time.monotonic()
        self._fetch_error = None
        if kid_refetch_at is not None:
            self._last_kid_refetch = kid_refetch_at

    async def _get_json(self, url: str, what: str) -> Any:
        if self._http is None:
            raise _FetchError(f"cannot fetch {what} from {url}: the token validator is closed")
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise _FetchError(f"cannot fetch {what} from {url}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise _FetchError(f"cannot fetch {what} from {url}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise _FetchError(f"cannot fetch {what} from {url}: the response is not JSON") from None

    # -- the fast path

    def _remember(self, token: str, principal: Principal, thumbprint: str) -> None:
        if principal.exp <= time.time() or self._cache_size <= 0:
            return
        self._cache[hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()] = (principal, thumbprint)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


@dataclasses.dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str
    key: Any  # a python-jose Key
    thumbprint: str = ""  # SHA-256 of the key's public members (RFC 7638's): the key itself, whatever its kid


def _thumbprint(entry: Mapping[str, Any]) -> str:
    """RFC 7638's JWK thumbprint (SHA-256 of the required public members, in order), hex."""
    members = ("e", "kty", "n") if entry.get("kty") == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: entry.get(m) for m in members}, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _verifying_key(token: str, keys: Sequence[_Key], alg: str) -> _Key | None:
    """The first of ``keys`` whose signature the token carries, or None."""
    for k in keys:
        try:
            jws.verify(token, k.key, algorithms=[alg])
        except JOSEError:
            continue
        return k
    return None


class _FetchError(Exception):
    """The issuer's keys could not be fetched; ``code`` is the TokenError code a token gets for it."""

    def __init__(self, reason: str, code: str = "issuer_unreachable"):
        super().__init__(reason)
        self.code = code


def parse_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (unverified) header and claims of a compact JWS; raises TokenError when malformed."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"token is malformed: it is longer than {MAX_TOKEN_LENGTH} characters", "malformed")
    segments = token.split(".")
    if len(segments) != 3:
        raise TokenError(
            f"token is malformed: it has {len(segments)} dot-separated segment{'s' * (len(segments) != 1)}, "
            "a JWT has 3 (header.claims.signature)",
            "malformed",
        )
    header = _json_segment(segments[0], "header")
    claims = _json_segment(segments[1], "claims")
    _b64url_decode(segments[2], "signature")
    return header, claims


def check_algorithm(header: Mapping[str, Any], allowed: Sequence[str]) -> str:
    """The header's alg when it is one of ``allowed``; raises TokenError otherwise."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenError("token is malformed: the header names no algorithm (alg)", "malformed")
    if alg.lower() == "none":
        raise TokenError(f"algorithm {_show(alg)} is not allowed: the token is unsigned", "bad_algorithm")
    if alg not in allowed:
        reason = f"algorithm {_show(alg)} is not allowed (allowed: {', '.join(allowed)})"
        if alg in KEY_TYPES:
            reason += "; to accept it, add it to oidc_algorithms"
        elif not alg.upper().startswith("HS"):  # RSASSA-PSS, EdDSA, ...: no setting accepts them
            reason += (f"; agentgate verifies {', '.join(KEY_TYPES)} only: have the issuer sign the gateway's "
                       "tokens with one of those")
        raise TokenError(reason, "bad_algorithm")
    crit = header.get("crit")
    if crit is not None:
        raise TokenError(
            f"token is malformed: the header marks extensions {_show(crit)} critical, "
            "which are not understood",
            "malformed",
        )
    return alg


MAX_ACT_DEPTH = 8  # act claims nested deeper are refused


def act_chain(act: Any) -> tuple[str, ...]:
    """The subs of an ``act`` claim and of the ``act`` claims nested in it (RFC 8693's prior
    actors), outermost first; TokenError where one is not an object with a sub, or too deep."""
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, Mapping) or not isinstance(act.get("sub"), str) or not act["sub"]:
            raise TokenError("token is malformed: its act claim is not an object with a sub", "malformed")
        if len(chain) == MAX_ACT_DEPTH:
            raise TokenError(f"token is malformed: its act claim nests more than {MAX_ACT_DEPTH} actors", "malformed")
        chain.append(act["sub"])
        act = act.get("act")
    return tuple(chain)


def principal_from_claims(
    claims: Mapping[str, Any],
    *,
    audiences: Sequence[str],
    groups_claim: str = "groups",
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
) -> Principal:
    """A Principal from verified claims, checking sub, exp, nbf, iat, aud, groups and act."""
    now = time.time() if now is None else now
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("token is malformed: it has no subject (sub)", "malformed")
    exp = _numeric(claims, "exp")
    if exp is None:
        raise TokenError("token is malformed: it has no expiry (exp)", "malformed")
    # Past the signature, the subject is the issuer's word even where the token is refused: the
    # reason names it, so that the record of a refusal says whose token it was.
    whose = f" (subject {_show(sub)})"
    if now > exp + leeway:
        raise TokenError(f"token expired at {_when(exp)} (now {_when(now)}); get a fresh token{whose}", "expired")
    nbf = _numeric(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise TokenError(f"token is not valid before {_when(nbf)} (now {_when(now)}){whose}", "not_yet_valid")
    iat = _numeric(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise TokenError(
            f"token was issued in the future, at {_when(iat)} (now {_when(now)}); check the clocks{whose}",
            "not_yet_valid",
        )
    aud = claims.get("aud")
    token_aud = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else None
    expected = " or ".join(map(repr, audiences))
    if token_aud is None or not all(isinstance(a, str) for a in token_aud):
        raise TokenError(f"token has no valid audience (aud); expected {expected}{whose}", "wrong_audience")
    if not set(token_aud) & set(audiences):
        raise TokenError(f"token audience {_show(aud)} does not include {expected}{whose}", "wrong_audience")
    return principal_of(claims, groups_claim)


def principal_of(claims: Mapping[str, Any], groups_claim: str = "groups") -> Principal:
    """The Principal that claims name: the sub, the groups of ``groups_claim``, the ``act`` chain.
    Checks neither times nor audience (``principal_from_claims`` has, for a token; ``agentgate policy
    explain`` describes a principal from claims or a token it does not validate), so that a principal
    described is built as the gateway builds it. TokenError for a missing sub, groups that are not
    strings or an ``act`` claim that is no chain of subs."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("token is malformed: it has no subject (sub)", "malformed")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    try:
        exp = _numeric(claims, "exp")
    except TokenError:
        exp = None
    actors = act_chain(claims.get("act"))
    iss = claims.get("iss", "")
    return Principal(
        sub=sub,
        iss=iss if isinstance(iss, str) else "",
        aud=tuple(a for a in audiences if isinstance(a, str)),
        groups=groups_from_claims(claims, groups_claim),
        on_behalf_of=actors[0] if actors else None,
        exp=math.inf if exp is None else exp,
        claims=types.MappingProxyType(dict(claims)),
        actors=actors,
    )


def groups_from_claims(claims: Mapping[str, Any], groups_claim: str) -> tuple[str, ...]:
    """The groups named by a claim (a list or a single string); a dotted name walks nested claims.

    A claim whose own name contains dots (``https://example.com/groups``) is found first.
    """
    value: Any = claims.get(groups_claim)
    if value is None and "." in groups_claim:
        value = claims
        for part in groups_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    raise TokenError(f"token is malformed: its {groups_claim!r} claim is not a list of strings", "malformed")


def jwks_uri_from_discovery(doc: Any, issuer: str, url: str) -> str:
    """The jwks_uri of a discovery document that names this issuer; raises _FetchError otherwise."""
    if not isinstance(doc, Mapping):
        raise _FetchError(f"the issuer's discovery document at {url} is not a JSON object")
    named = doc.get("issuer")
    if isinstance(named, str) and named and named != issuer:
        raise _FetchError(issuer_mismatch(issuer, named, url), "issuer_misconfigured")
    if named != issuer:
        raise _FetchError(f"the issuer's discovery document at {url} names issuer {_show(named)}, not {issuer!r}")
    uri = doc.get("jwks_uri")
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise _FetchError(f"the issuer's discovery document at {url} has no usable jwks_uri")
    return uri


def issuer_mismatch(configured: str, named: str, url: str) -> str:
    """Why a discovery document that names issuer ``named`` cannot serve the configured issuer.

    OpenID Connect Discovery requires the two to be the same string, and the tokens' ``iss`` is the
    issuer's own: the setting has to change, so the reason names the value to set."""
    return (
        f"oidc_issuer is {configured!r}, but the issuer's discovery document at {url} names issuer "
        f"{_show(named, 200)}: set oidc_issuer to {_show(named, 200)}, exactly as the discovery document writes it"
    )


def parse_jwks(jwks: Any, algorithms: Sequence[str], url: str = "its jwks_uri") -> list[_Key]:
    """The signing keys of a JWKS usable with ``algorithms``; keys of other kinds are skipped."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise _FetchError(f"the issuer's keys at {url} are not a JWKS (no keys list)")
    keys = []
    for entry in jwks["keys"]:
        if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        for alg in algorithms:
            kty, crv = KEY_TYPES[alg]
            if entry.get("kty") != kty or (crv and entry.get("crv") != crv):
                continue
            if entry.get("alg", alg) != alg:
                continue
            public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
            try:
                keys.append(_Key(kid, alg, jwk.construct(public, alg), _thumbprint(public)))
            except (JOSEError, ValueError, TypeError, KeyError):
                continue
    return keys


def _matching(keys: list[_Key], kid: str | None, alg: str) -> list[_Key]:
    return [k for k in keys if k.alg == alg and (kid is None or k.kid == kid)]


def _json_segment(segment: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url_decode(segment, name))
    except (ValueError, RecursionError):
        raise TokenError(f"token is malformed: the {name} is not JSON", "malformed") from None
    if not isinstance(value, dict):
        raise TokenError(f"token is malformed: the {name} is not a JSON object", "malformed")
    return value


def _b64url_decode(segment: str, name: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenError(f"token is malformed: the {name} is not base64url", "malformed")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"token is malformed: the {name} is not base64url", "malformed") from None


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:  # an integer too large for a float (exp: 1e400 written out) is no time either
        seconds = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise TokenError(f"token is malformed: its {name} claim is not a number of seconds", "malformed")
    return seconds


def _when(epoch: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.0f} (epoch seconds)"


def _show(value: Any, limit: int = 80) -> str:
    """A claim or header value quoted for a reason, cut short."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _key_name(kid: str | None) -> str:
    return _show(kid) if kid is not None else "(no kid)"
