"""Fuzzing the token path (core.identity) against a real OIDC issuer on loopback: random, garbled,
oversized and re-signed tokens, algorithm and key-id tricks, any Proxy-Authorization header and any
claims. Every token is accepted only when it is exactly what the issuer signed; every other one is
refused with a TokenError whose code a program can branch on and whose reason never quotes the
token or its signature. FUZZ_EXAMPLES raises the number of examples per property."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core import identity
from addons.core.identity import CODES, TokenError, TokenValidator
from tests.support.oidc import OIDCIssuer
from tests.support.bounds import HANG


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def b64(data: bytes | str | dict | list) -> str:
    raw = data if isinstance(data, bytes) else (data.encode() if isinstance(data, str) else json.dumps(data).encode())
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture(scope="module")
def oidc():
    """The issuer, a validator for it and one event loop for every validation."""
    with OIDCIssuer() as issuer:
        loop = asyncio.new_event_loop()
        validator = TokenValidator(issuer.issuer, "agentgate", min_refetch_seconds=3600)
        try:
            yield issuer, validator, loop
        finally:
            loop.run_until_complete(validator.aclose())
            loop.close()


def assert_refusal(error: TokenError, token: str) -> None:
    assert error.code in CODES and error.reason.strip() and str(error) == error.reason
    assert token not in error.reason or len(token) < 20
    signature = token.rsplit(".", 1)[-1]
    if len(signature) >= 16:
        assert signature[:16] not in error.reason, "a reason never quotes the signature"


def validate(oidc, token: str) -> identity.Principal | TokenError:
    _, validator, loop = oidc
    started = time.perf_counter()
    try:
        return loop.run_until_complete(validator.validate(token))
    except TokenError as e:
        assert_refusal(e, token)
        return e
    finally:
        assert time.perf_counter() - started < HANG


def signed_parts(token: str) -> tuple[bytes, bytes, bytes]:
    """What a token says once decoded: header, claims and signature bytes (of the token as the
    validator reads it: whitespace around it is not part of it)."""
    header, claims, signature = token.strip().split(".")
    return unb64(header), unb64(claims), unb64(signature)


# -- garbled and re-made tokens


@st.composite
def garbled(draw, token: str) -> str:
    """The issuer's token with characters changed, inserted, dropped, or whole segments swapped."""
    chars = list(token)
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["change", "insert", "drop", "swap", "pad", "dots"]))
        where = draw(st.integers(0, max(0, len(chars) - 1)))
        if what == "change" and chars:
            chars[where] = draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"))
        elif what == "insert":
            chars.insert(where, draw(st.sampled_from("Aa0-_.=+/ ")))
        elif what == "drop" and chars:
            del chars[where]
        elif what == "swap":
            parts = "".join(chars).split(".")
            draw(st.randoms()).shuffle(parts)
            chars = list(".".join(parts))
        elif what == "pad":
            chars += list(draw(st.sampled_from(["=", "==", "A" * 20_000, "." + "A" * 10])))
        elif what == "dots":
            chars = list(draw(st.sampled_from([".", "..", "...", "a.b", "." * 5])) + "".join(chars))
    return "".join(chars)


ALG_TRICKS = ["none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "PS256", "RS256 ", " RS256", "rs256",
              "RS256\x00", "ES256", "ES512", "EdDSA", "", None, 256, ["RS256"], {"alg": "RS256"}]
KID_TRICKS = [None, "", 7, ["rsa-1"], "../../../../etc/passwd", "rsa-1' OR '1'='1", "x" * 5000, "rsa-1\x00", "\udcff"]
HEADER_EXTRAS = [{}, {"jku": "http://127.0.0.1:1/jwks.json"}, {"x5u": "http://127.0.0.1:1/cert"},
                 {"jwk": {"kty": "oct", "k": b64(b"secret")}}, {"crit": ["exp"]}, {"b64": False}, {"typ": "at+jwt"}]


@st.composite
def remade(draw, oidc_issuer: OIDCIssuer, token: str) -> str:
    """The issuer's token with its header or claims replaced, keeping (or dropping) its signature."""
    header, claims, signature = token.split(".")
    h = json.loads(unb64(header))
    c = json.loads(unb64(claims))
    if draw(st.booleans()):
        h["alg"] = draw(st.sampled_from(ALG_TRICKS))
    if draw(st.booleans()):
        kid = draw(st.sampled_from(KID_TRICKS))
        h.pop("kid") if kid is None else h.__setitem__("kid", kid)
    h.update(draw(st.sampled_from(HEADER_EXTRAS)))
    if draw(st.booleans()):
        field = draw(st.sampled_from(["sub", "exp", "aud", "iss", "nbf", "iat", "groups", "act"]))
        c[field] = draw(st.sampled_from([None, "", "root", 10**400, -1, 1e308, float("inf"), [], ["agentgate"], {},
                                         {"sub": "x"}, oidc_issuer.issuer, "agentgate", True, 2**63]))
    head = b64(json.dumps(h, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    body = b64(json.dumps(c, allow_nan=True))
    sig = draw(st.sampled_from([signature, "", b64(b"\x00" * 256), signature[:-2], signature + "A"]))
    return f"{head}.{body}.{sig}"


def test_the_issuers_own_token_is_accepted(oidc):
    issuer, _, _ = oidc
    principal = validate(oidc, issuer.mint("fuzz-agent"))
    assert isinstance(principal, identity.Principal) and principal.sub == "fuzz-agent"


@given(st.data())
@fuzz(300)
def test_a_garbled_token_is_never_accepted_unless_it_says_the_same(oidc, data):
    issuer, _, _ = oidc
    token = issuer.mint("fuzz-agent", alg=data.draw(st.sampled_from(["RS256", "ES256"])))
    bad = data.draw(garbled(token))
    result = validate(oidc, bad)
    if isinstance(result, identity.Principal):
        # base64url's last character carries spare bits: only such a change may still verify
        assert signed_parts(bad) == signed_parts(token) and result.sub == "fuzz-agent"


@given(st.data())
@fuzz(300)
def test_a_remade_token_is_refused(oidc, data):
    issuer, _, _ = oidc
    token = issuer.mint("fuzz-agent")
    bad = data.draw(remade(issuer, token))
    result = validate(oidc, bad)
    if isinstance(result, identity.Principal):
        assert signed_parts(bad) == signed_parts(token)


@pytest.mark.parametrize("alg", ALG_TRICKS, ids=repr)
@pytest.mark.parametrize("kid", ["issuer's", "ec", None, "../../etc/passwd", 7], ids=repr)
def test_algorithm_and_key_tricks_with_the_issuers_signature(oidc, alg, kid):
    issuer, _, _ = oidc
    token = issuer.mint("fuzz-agent")
    header, claims, signature = token.split(".")
    h = json.loads(unb64(header))
    h["alg"] = alg
    if kid != "issuer's":
        h["kid"] = issuer.ec_kid if kid == "ec" else kid
        if kid is None:
            del h["kid"]
    result = validate(oidc, f"{b64(h)}.{claims}.{signature}")
    if alg == "RS256" and kid in ("issuer's", None):
        assert isinstance(result, identity.Principal)
    else:
        assert isinstance(result, TokenError)
        if isinstance(alg, str) and alg.lower() == "none":
            assert result.code == "bad_algorithm" and "unsigned" in result.reason


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@fuzz(300)
@example("a" * (identity.MAX_TOKEN_LENGTH + 1))
@example("e30.e30.")
@example(b64("[" * 5000) + "." + b64("{}") + ".")
@example(b64({"alg": "RS256"}) + "." + b64('{"exp": ' + "9" * 5000 + "}") + ".AAAA")
def test_any_text_as_a_token(oidc, text):
    result = validate(oidc, text)
    assert isinstance(result, TokenError), "random text is never a token"


def test_a_ten_megabyte_token_is_refused_at_once(oidc):
    token = "eyJ" + "A" * (10 << 20)
    started = time.perf_counter()
    result = validate(oidc, token)
    assert isinstance(result, TokenError) and result.code == "malformed" and "longer than" in result.reason
    assert time.perf_counter() - started < HANG


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: "Basic " + base64.b64encode(b).decode()))
@fuzz(300)
@example("Basic " + base64.b64encode(b"agent:\xff\xfe").decode())
@example("Basic " + base64.b64encode(b"\x00:").decode())
@example("Bearer " + "x" * 100_000)
def test_any_proxy_authorization_header(value):
    token = identity.token_from_basic_auth(value)
    assert token is None or (isinstance(token, str) and token)


claim_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from([10**400, -(10**400), 2**1024, float("nan"), "agentgate", "x" * 3000]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)


@given(st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "groups", "act", "x"]),
                       claim_values, max_size=9))
@fuzz(300)
@example({"sub": "a", "aud": "agentgate", "exp": 10**400})  # OverflowError escaped
@example({"sub": "a", "aud": "agentgate", "exp": 1e308, "nbf": -1e308, "iat": -(10**400)})
def test_any_claims(claims):
    try:
        principal = identity.principal_from_claims(claims, audiences=["agentgate"], groups_claim="groups")
    except TokenError as e:
        assert e.code in CODES and e.reason
        return
    assert principal.sub == claims["sub"] and principal.exp == float(claims["exp"])
