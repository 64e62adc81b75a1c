"""Identity: token validation against a real OIDC issuer on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid

import pytest

from addons.core.identity import (
    Principal,
    TokenError,
    TokenValidator,
    same_subject,
    token_from_basic_auth,
)
from tests.support.oidc import DISCOVERY_PATH, JWKS_PATH, OIDCIssuer, new_ec_key, new_rsa_key


@pytest.fixture
def issuer():
    with OIDCIssuer() as running:
        yield running


def validator(issuer: OIDCIssuer, **options) -> TokenValidator:
    return TokenValidator(issuer.issuer, "agentgate", **options)


def accept(issuer: OIDCIssuer, token: str, **options) -> Principal:
    async def go():
        v = validator(issuer, **options)
        try:
            return await v.validate(token)
        finally:
            await v.aclose()

    return asyncio.run(go())


def assert_secret_safe(error: TokenError, token: str | None) -> None:
    """The reason names what is wrong without echoing the token or its signature."""
    if token:
        assert token not in error.reason
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 8:
            assert signature not in error.reason
            assert signature[:16] not in error.reason


def refuse(issuer: OIDCIssuer, token: str | None, code: str, **options) -> TokenError:
    async def go():
        v = validator(issuer, **options)
        try:
            with pytest.raises(TokenError) as caught:
                await v.validate(token)
            return caught.value
        finally:
            await v.aclose()

    error = asyncio.run(go())
    assert error.code == code, error.reason
    assert str(error) == error.reason
    assert_secret_safe(error, token)
    return error


def segment(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- accepted


def test_rs256_token_with_groups_and_act(issuer):
    token = issuer.mint("agent-1", groups=["data-agents", "readers"], act="alice@example.com")
    principal = accept(issuer, token)
    assert principal.sub == "agent-1"
    assert principal.iss == issuer.issuer
    assert principal.aud == ("agentgate",)
    assert principal.groups == ("data-agents", "readers")
    assert principal.on_behalf_of == "alice@example.com"
    assert principal.exp > time.time()
    assert not principal.expired()
    assert principal.claims["act"] == {"sub": "alice@example.com"}
    with pytest.raises(TypeError):
        principal.claims["sub"] = "someone-else"  # read-only
    assert principal.as_dict()["groups"] == ["data-agents", "readers"]


def test_es256_token(issuer):
    principal = accept(issuer, issuer.mint("agent-ec", alg="ES256"))
    assert principal.sub == "agent-ec"
    assert principal.on_behalf_of is None


def test_audience_list_and_several_configured_audiences(issuer):
    token = issuer.mint(audience=["other", "agentgate-prod"])
    async def go():
        v = TokenValidator(issuer.issuer, ["agentgate-dev", "agentgate-prod"])
        try:
            return await v.validate(token)
        finally:
            await v.aclose()
    assert asyncio.run(go()).aud == ("other", "agentgate-prod")


def test_groups_from_a_nested_claim(issuer):
    token = issuer.mint(groups=None, extra={"realm_access": {"roles": ["sre", "data-agents"]}})
    assert accept(issuer, token, groups_claim="realm_access.roles").groups == ("sre", "data-agents")


def test_groups_from_a_single_string_and_a_claim_named_with_dots(issuer):
    token = issuer.mint(groups=None, extra={"https://example.com/groups": "sre"})
    assert accept(issuer, token, groups_claim="https://example.com/groups").groups == ("sre",)
    assert accept(issuer, issuer.mint(groups=None)).groups == ()


def test_token_without_kid_is_matched_by_algorithm(issuer):
    assert accept(issuer, issuer.mint(kid="")).sub == "agent-1"


def test_concurrent_validations_share_one_fetch(issuer):
    tokens = [issuer.mint(f"agent-{i}") for i in range(50)]

    async def go():
        v = validator(issuer)
        try:
            return await asyncio.gather(*(v.validate(t) for t in tokens))
        finally:
            await v.aclose()

    principals = asyncio.run(go())
    assert [p.sub for p in principals] == [f"agent-{i}" for i in range(50)]
    assert issuer.requests_for(DISCOVERY_PATH) == 1
    assert issuer.requests_for(JWKS_PATH) == 1


# -- refused, one reason each


def test_no_token(issuer):
    assert "no token" in refuse(issuer, None, "missing").reason
    refuse(issuer, "", "missing")
    refuse(issuer, "   ", "missing")


def test_garbage(issuer):
    error = refuse(issuer, "zq8Xk2vLpW3tRb", "malformed")
    assert error.reason.startswith("token is malformed: ")


def test_two_segments(issuer):
    token = issuer.mint().rsplit(".", 1)[0]
    assert "2 dot-separated segments" in refuse(issuer, token, "malformed").reason


def test_bad_base64(issuer):
    header, claims, signature = issuer.mint().split(".")
    assert "header is not base64url" in refuse(issuer, f"{header}!*.{claims}.{signature}", "malformed").reason
    bad_claims = f"{header}.{claims[:-3]}+/=.{signature}"
    assert "claims is not base64url" in refuse(issuer, bad_claims, "malformed").reason
    not_json = f"{header}.{segment(b'{nope')}.{signature}"
    assert "claims is not JSON" in refuse(issuer, not_json, "malformed").reason
    assert "not a JSON object" in refuse(issuer, f"{segment([1])}.{claims}.{signature}", "malformed").reason


def test_missing_subject(issuer):
    assert "no subject (sub)" in refuse(issuer, issuer.mint(None), "malformed").reason


def test_expired(issuer):
    error = refuse(issuer, issuer.mint(expires_in=-3600), "expired")
    assert error.reason.startswith("token expired at 20")
    assert error.reason.split(" ")[3].endswith("Z")


def test_expired_within_leeway_is_accepted(issuer):
    assert accept(issuer, issuer.mint(expires_in=-5), leeway=30).sub == "agent-1"
    refuse(issuer, issuer.mint(expires_in=-5), "expired", leeway=0)


def test_not_yet_valid(issuer):
    error = refuse(issuer, issuer.mint(not_before=time.time() + 3600), "not_yet_valid")
    assert "not valid before" in error.reason


def test_issued_in_the_future(issuer):
    error = refuse(issuer, issuer.mint(issued_at=time.time() + 3600), "not_yet_valid")
    assert "issued in the future" in error.reason


def test_wrong_issuer(issuer):
    error = refuse(issuer, issuer.mint(issuer="https://evil.example.com"), "wrong_issuer")
    assert error.reason == (
        f"token issuer 'https://evil.example.com' is not the configured issuer '{issuer.issuer}'"
    )
    assert issuer.requests_for(JWKS_PATH) == 0  # refused before any key was fetched


def test_wrong_audience(issuer):
    error = refuse(issuer, issuer.mint(audience="someone-else"), "wrong_audience")
    assert "'someone-else'" in error.reason and "'agentgate'" in error.reason
    refuse(issuer, issuer.mint(audience=None), "wrong_audience")


def test_unknown_key(issuer):
    token = issuer.mint(key=new_rsa_key(), kid="stranger")
    error = refuse(issuer, token, "unknown_key")
    assert error.reason.startswith("signing key 'stranger' is unknown to the issuer")
    assert issuer.jwks_uri in error.reason


def test_an_unknown_key_not_looked_for_again_says_how_old_the_keys_are(issuer):
    """A second unknown key soon after the gateway asked the issuer for the first is not asked for
    again (made-up key ids must not hammer the issuer): the refusal says the keys it holds are as
    fetched then, and how often it asks again, rather than that the issuer does not publish it."""
    async def go():
        v = validator(issuer)
        try:
            errors = []
            for kid in ("stranger-1", "stranger-2"):
                with pytest.raises(TokenError) as caught:
                    await v.validate(issuer.mint(key=new_rsa_key(), kid=kid))
                errors.append(caught.value)
            return errors
        finally:
            await v.aclose()

    first, second = asyncio.run(go())
    assert first.code == second.code == "unknown_key"
    assert "as fetched" not in first.reason  # asked the issuer just now
    assert second.reason.startswith("signing key 'stranger-2' is unknown to the issuer")
    assert re.search(r"; as fetched \d+ s ago: the gateway asks the issuer again for a key it does not hold at most "
                     r"every \d+ s$", second.reason), second.reason


def test_foreign_key_under_a_published_kid(issuer):
    token = issuer.mint(key=new_rsa_key(), kid=issuer.signing_kid)
    assert "signature does not verify" in refuse(issuer, token, "bad_signature").reason


def test_tampered_claims(issuer):
    header, claims, signature = issuer.mint("agent-1").split(".")
    forged = dict(json.loads(base64.urlsafe_b64decode(claims + "==")), sub="admin")
    refuse(issuer, f"{header}.{segment(forged)}.{signature}", "bad_signature")


def test_algorithm_none(issuer):
    error = refuse(issuer, issuer.mint_unsigned_none(), "bad_algorithm")
    assert error.reason.startswith("algorithm 'none' is not allowed")
    assert issuer.requests_for(JWKS_PATH) == 0


def test_hs256_signed_with_the_public_key(issuer):
    token = issuer.mint_hs256_with_public_key()
    error = refuse(issuer, token, "bad_algorithm")
    assert error.reason == "algorithm 'HS256' is not allowed (allowed: RS256, ES256)"


@pytest.mark.parametrize("alg", ["PS256", "PS512", "EdDSA"])
def test_an_algorithm_agentgate_does_not_verify_is_refused_saying_the_issuer_must_sign_otherwise(issuer, alg):
    """Keycloak realms can sign with PS256, some issuers with EdDSA: no setting accepts those, so
    the reason says which algorithms the issuer must use rather than only which are allowed now
    (oidc_algorithms refuses PS256, which would send the operator round in a circle)."""
    header = {"alg": alg, "typ": "JWT", "kid": issuer.signing_kid}
    token = f"{segment(header)}.{segment(issuer.claims())}.{segment(b'x' * 64)}"
    error = refuse(issuer, token, "bad_algorithm")
    assert error.reason == (f"algorithm '{alg}' is not allowed (allowed: RS256, ES256); agentgate verifies RS256, "
                            "RS384, RS512, ES256, ES384, ES512 only: have the issuer sign the gateway's tokens with "
                            "one of those")
    assert issuer.requests_for(JWKS_PATH) == 0
    with pytest.raises(ValueError, match="asymmetric"):
        TokenValidator(issuer.issuer, "agentgate", algorithms=(alg,))


def test_an_algorithm_agentgate_verifies_but_is_not_configured_names_the_setting(issuer):
    header = {"alg": "RS384", "typ": "JWT", "kid": issuer.signing_kid}
    token = f"{segment(header)}.{segment(issuer.claims())}.{segment(b'x' * 64)}"
    error = refuse(issuer, token, "bad_algorithm")
    assert error.reason == "algorithm 'RS384' is not allowed (allowed: RS256, ES256); to accept it, add it to oidc_algorithms"


def test_allowed_algorithm_with_the_wrong_key_type(issuer):
    token = issuer.mint(alg="ES256", key=new_ec_key(), kid=issuer.signing_kid)
    assert "does not fit the issuer's key" in refuse(issuer, token, "bad_algorithm").reason


def test_symmetric_algorithms_cannot_be_configured(issuer):
    with pytest.raises(ValueError, match="asymmetric"):
        TokenValidator(issuer.issuer, "agentgate", algorithms=("RS256", "HS256"))


# -- keys: rotation, rate limit, outage


def test_key_rotation_refetches_once(issuer):
    async def go():
        v = validator(issuer, min_refetch_seconds=0.2)
        try:
            assert (await v.validate(issuer.mint("before"))).sub == "before"
            assert issuer.requests_for(JWKS_PATH) == 1
            await asyncio.sleep(0.3)
            issuer.rotate()
            assert (await v.validate(issuer.mint("after"))).sub == "after"
            assert (await v.validate(issuer.mint("after-again"))).sub == "after-again"
        finally:
            await v.aclose()

    asyncio.run(go())
    assert issuer.requests_for(JWKS_PATH) == 2  # exactly one refetch
    assert issuer.requests_for(DISCOVERY_PATH) == 1


def test_rotation_keeps_the_ec_key(issuer):
    first = issuer.signing_kid
    issuer.rotate()
    issuer.rotate()
    assert first not in issuer.published and issuer.ec_kid in issuer.published
    assert accept(issuer, issuer.mint("ec", alg="ES256")).sub == "ec"


def test_rotation_inside_the_rate_limit_is_refused_until_it_passes(issuer):
    async def go():
        v = validator(issuer, min_refetch_seconds=1.5)
        try:
            await v.validate(issuer.mint())
            issuer.rotate()  # right after the first fetch: seen at once
            assert (await v.validate(issuer.mint("first"))).sub == "first"
            assert issuer.requests_for(JWKS_PATH) == 2
            issuer.rotate()  # again, inside the rate limit: refused until it passes
            with pytest.raises(TokenError) as caught:
                await v.validate(issuer.mint("early"))
            assert caught.value.code == "unknown_key"
            assert issuer.requests_for(JWKS_PATH) == 2
            await asyncio.sleep(1.6)
            assert (await v.validate(issuer.mint("later"))).sub == "later"
        finally:
            await v.aclose()

    asyncio.run(go())
    assert issuer.requests_for(JWKS_PATH) == 3


def test_unknown_kids_are_rate_limited(issuer):
    stranger = new_rsa_key()
    tokens = [issuer.mint(key=stranger, kid=uuid.uuid4().hex) for _ in range(100)]

    async def go():
        v = validator(issuer, min_refetch_seconds=1.0)
        try:
            await v.validate(issuer.mint())
            await asyncio.sleep(1.1)
            for token in tokens[:50]:  # one after another
                with pytest.raises(TokenError) as caught:
                    await v.validate(token)
                assert caught.value.code == "unknown_key"
                assert_secret_safe(caught.value, token)
            results = await asyncio.gather(*(v.validate(t) for t in tokens[50:]), return_exceptions=True)
            assert all(isinstance(r, TokenError) and r.code == "unknown_key" for r in results)
        finally:
            await v.aclose()

    asyncio.run(go())
    assert issuer.requests_for(JWKS_PATH) == 2  # the first fetch, and one refetch for all 100


def test_concurrent_unknown_kids_share_one_refetch(issuer):
    stranger = new_rsa_key()
    tokens = [issuer.mint(key=stranger, kid=uuid.uuid4().hex) for _ in range(100)]

    async def go():
        v = validator(issuer, min_refetch_seconds=0.2)
        try:
            await v.validate(issuer.mint())
            await asyncio.sleep(0.3)
            return await asyncio.gather(*(v.validate(t) for t in tokens), return_exceptions=True)
        finally:
            await v.aclose()

    results = asyncio.run(go())
    assert all(isinstance(r, TokenError) and r.code == "unknown_key" for r in results)
    assert issuer.requests_for(JWKS_PATH) == 2  # the first fetch and exactly one refetch


def test_jwks_down_with_a_warm_cache_still_validates(issuer):
    async def go():
        v = validator(issuer, min_refetch_seconds=0)
        try:
            await v.validate(issuer.mint("warm"))
            issuer.down = True
            principal = await v.validate(issuer.mint("while-down"))
            assert principal.sub == "while-down"
            with pytest.raises(TokenError) as caught:  # a rotated key cannot be learnt while down: retry
                await v.validate(issuer.mint(key=new_rsa_key(), kid="new"))
            assert caught.value.code == "issuer_unreachable"
            assert "HTTP 503" in caught.value.reason
        finally:
            await v.aclose()

    asyncio.run(go())


def test_a_key_rotated_in_while_the_issuer_is_down_is_retryable_and_learnt_soon_after(issuer):
    """The refetch for the new kid fails: the token is refused as issuer_unreachable (to be
    retried), not as an unknown key; the failed fetch does not count against the 30 s refetch
    limit, so the key is learnt within retry_seconds of the issuer's return; a kid the issuer
    does not publish (its JWKS fetched) is still an unknown key."""

    async def go():
        v = validator(issuer, min_refetch_seconds=30, retry_seconds=0.5)
        try:
            await v.validate(issuer.mint("before"))
            issuer.down = True
            new_kid = issuer.rotate()
            token = issuer.mint("after-rotation")
            for _ in range(20):  # while down, however often asked: a fetch at most every retry_seconds
                with pytest.raises(TokenError) as caught:
                    await v.validate(token)
                assert caught.value.code == "issuer_unreachable"
            assert caught.value.reason == (
                f"signing key {new_kid!r} is not among the issuer's keys the gateway holds, and they cannot be "
                f"fetched again to look for it (cannot fetch the issuer's keys from {issuer.jwks_uri}: HTTP 503); "
                "check that the gateway can reach the issuer"
            )
            assert issuer.requests_for(JWKS_PATH) == 2  # the first fetch, one refetch
            await asyncio.sleep(0.6)
            with pytest.raises(TokenError) as caught:  # still down: tried again, refused again
                await v.validate(token)
            assert caught.value.code == "issuer_unreachable"
            assert issuer.requests_for(JWKS_PATH) + issuer.requests_for(DISCOVERY_PATH) == 4  # and rediscovery
            issuer.down = False
            await asyncio.sleep(0.6)  # well inside the 30 s refetch limit
            assert (await v.validate(token)).sub == "after-rotation"
            with pytest.raises(TokenError) as caught:  # the issuer answers: an unknown kid is that
                await v.validate(issuer.mint(key=new_rsa_key(), kid="never-published"))
            assert caught.value.code == "unknown_key"
            assert caught.value.reason.startswith("signing key 'never-published' is unknown to the issuer (it publishes ")
        finally:
            await v.aclose()

    asyncio.run(go())


def test_a_discovery_document_naming_another_issuer_is_a_configuration_error(issuer):
    """oidc_issuer with a trailing slash the issuer does not write: not retryable, and the reason
    names the value to set; the start-up check reads the same from the discovery document."""
    configured = issuer.issuer + "/"
    token = issuer.mint(issuer=configured)

    async def go():
        v = TokenValidator(configured, "agentgate", retry_seconds=0)
        try:
            assert await v.configuration_error() == (
                f"oidc_issuer is {configured!r}, but the issuer's discovery document at "
                f"{issuer.issuer}{DISCOVERY_PATH} names issuer {issuer.issuer!r}: set oidc_issuer to "
                f"{issuer.issuer!r}, exactly as the discovery document writes it"
            )
            for _ in range(2):  # again on the next call: the setting is still wrong
                with pytest.raises(TokenError) as caught:
                    await v.validate(token)
                assert caught.value.code == "issuer_misconfigured"
                assert caught.value.reason == await v.configuration_error()
            with pytest.raises(TokenError) as caught:  # a token as the issuer writes it: the token's issuer
                await v.validate(issuer.mint())
            assert caught.value.code == "wrong_issuer"
            assert caught.value.reason.endswith("they differ only in a trailing slash: oidc_issuer must be written "
                                                "exactly as the issuer writes it (the issuer in its discovery document)")
            issuer.down = True
            assert await v.configuration_error() is None  # cannot tell now: the calls say so
        finally:
            await v.aclose()

    asyncio.run(go())

    async def right():
        v = validator(issuer)
        try:
            return await v.configuration_error()
        finally:
            await v.aclose()

    issuer.down = False
    assert asyncio.run(right()) is None


def test_jwks_down_with_a_cold_cache_refuses_naming_the_url(issuer):
    issuer.down = True
    token = issuer.mint()
    error = refuse(issuer, token, "issuer_unreachable")
    assert error.reason.startswith("cannot fetch the issuer's discovery document from ")
    assert issuer.issuer + DISCOVERY_PATH in error.reason
    assert "HTTP 503" in error.reason


def test_jwks_down_after_the_cache_expires_refuses_naming_the_jwks_url(issuer):
    async def go():
        v = validator(issuer, jwks_cache_seconds=0.2)
        try:
            await v.validate(issuer.mint())
            issuer.down = True
            await asyncio.sleep(0.3)
            with pytest.raises(TokenError) as caught:
                await v.validate(issuer.mint("after-expiry"))
            return caught.value
        finally:
            await v.aclose()

    error = asyncio.run(go())
    assert error.code == "issuer_unreachable"
    assert error.reason.startswith("the issuer's keys, fetched 0.")
    assert error.reason.endswith(" s ago, are past their cache lifetime of 0.2 s and cannot be fetched again "
                                 f"(cannot fetch the issuer's keys from {issuer.jwks_uri}: HTTP 503); "
                                 "check that the gateway can reach the issuer")


def test_outage_does_not_hammer_the_issuer(issuer):
    issuer.down = True

    async def go():
        v = validator(issuer, min_refetch_seconds=30)
        try:
            for _ in range(20):
                with pytest.raises(TokenError) as caught:
                    await v.validate(issuer.mint())
                assert caught.value.code == "issuer_unreachable"
        finally:
            await v.aclose()

    asyncio.run(go())
    assert issuer.requests_for(DISCOVERY_PATH) == 1


def test_unreachable_issuer(issuer):
    token = issuer.mint()
    url = issuer.issuer
    issuer.stop()  # nothing listens on its port now

    async def go():
        v = TokenValidator(url, "agentgate", http_timeout=2)
        try:
            with pytest.raises(TokenError) as caught:
                await v.validate(token)
            return caught.value
        finally:
            await v.aclose()

    error = asyncio.run(go())
    assert error.code == "issuer_unreachable"
    assert url + DISCOVERY_PATH in error.reason and "ConnectError" in error.reason
    assert_secret_safe(error, token)


# -- the fast path


def test_validate_cached_until_exp(issuer):
    token = issuer.mint(expires_in=2)

    async def go():
        v = validator(issuer, leeway=0)
        try:
            assert v.validate_cached(token) is None
            principal = await v.validate(token)
            assert v.validate_cached(token) is principal
            assert v.validate_cached(token + "x") is None
            await asyncio.sleep(max(0.0, principal.exp - time.time()) + 0.1)
            assert v.validate_cached(token) is None
            with pytest.raises(TokenError) as caught:
                await v.validate(token)
            assert caught.value.code == "expired"
        finally:
            await v.aclose()

    asyncio.run(go())


def test_validate_cached_drops_tokens_of_a_key_no_longer_published(issuer):
    async def go():
        v = validator(issuer, min_refetch_seconds=0)
        try:
            old = issuer.mint("old-key")
            await v.validate(old)
            issuer.rotate()  # drops the key that signed `old`
            await v.validate(issuer.mint("new-key"))  # refetch learns the new set
            assert v.validate_cached(old) is None
            with pytest.raises(TokenError) as caught:
                await v.validate(old)
            assert caught.value.code == "unknown_key"
        finally:
            await v.aclose()

    asyncio.run(go())


def test_validate_cached_drops_tokens_whose_own_key_was_withdrawn_whatever_its_kid(issuer):
    """The cache remembers the key that verified a token, not its kid: a token without a kid, or
    one whose kid the issuer has since given another key, is refused once its key is withdrawn, as
    it would be uncached, rather than accepted from the cache until it expires."""
    async def go():
        v = validator(issuer, min_refetch_seconds=0)
        try:
            old_kid = issuer.signing_kid
            kidless = issuer.mint("kid-less", kid="")
            rekeyed = issuer.mint("same-kid")
            assert (await v.validate(kidless)).sub == "kid-less"
            assert (await v.validate(rekeyed)).sub == "same-kid"
            # the issuer gives the old kid a new key and adds another; a token of that other key
            # makes the gateway fetch the keys again
            issuer.private_keys[old_kid] = (new_rsa_key(), "RS256")
            other = issuer._add(new_rsa_key(), "RS256", "rsa")
            await v.validate(issuer.mint("new-key", kid=other, key=issuer.private_keys[other][0]))
            for token in (kidless, rekeyed):
                assert v.validate_cached(token) is None
                with pytest.raises(TokenError) as caught:
                    await v.validate(token)
                assert caught.value.code == "bad_signature"
            with pytest.raises(TokenError) as caught:
                await v.validate(kidless)
            assert "no longer publishes (get a fresh token)" in caught.value.reason
        finally:
            await v.aclose()

    asyncio.run(go())


def test_principal_expired():
    principal = Principal("a", "i", ("agentgate",), (), None, exp=1000.0, claims={})
    assert not principal.expired(now=999.0, leeway=0)
    assert principal.expired(now=1001.0, leeway=0)
    assert not principal.expired(now=1001.0, leeway=30)


def test_same_subject():
    a = Principal("agent-1", "https://idp", ("x",), (), None, 1.0, {})
    assert same_subject(a, Principal("agent-1", "https://idp", ("y",), ("g",), "bob", 2.0, {}))
    assert not same_subject(a, Principal("agent-1", "https://other-idp", ("x",), (), None, 1.0, {}))
    assert not same_subject(a, Principal("agent-2", "https://idp", ("x",), (), None, 1.0, {}))


# -- Proxy-Authorization


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_token_from_basic_auth():
    assert token_from_basic_auth(basic("agent", "eyJ.a.b")) == "eyJ.a.b"
    assert token_from_basic_auth(basic("eyJ.a.b", "")) == "eyJ.a.b"
    assert token_from_basic_auth("Bearer eyJ.a.b") == "eyJ.a.b"
    assert token_from_basic_auth("bearer   eyJ.a.b ") == "eyJ.a.b"
    assert token_from_basic_auth(basic("agent", "tok:with:colons")) == "tok:with:colons"
    assert token_from_basic_auth("basic " + basic("agent", "eyJ.a.b").split(" ")[1]) == "eyJ.a.b"
    for refused in ("", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                    basic("", ""), "Digest abc", "Negotiate xyz"):
        assert token_from_basic_auth(refused) is None, refused
