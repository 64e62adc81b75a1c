"""A real OIDC issuer on loopback: discovery and JWKS over HTTP, and tokens minted with its keys.

    with OIDCIssuer() as issuer:
        token = issuer.mint("agent-1", groups=["data-agents"])
        ...  # point a TokenValidator at issuer.issuer

It holds an RSA key (RS256) and an EC P-256 key (ES256); ``rotate()`` publishes a new RSA signing key
and drops the oldest RSA key from the JWKS. ``requests`` counts the requests per path, and ``down = True``
makes every path answer 503.

As a script it serves until interrupted and keeps a token file fresh:

    python -m tests.support.oidc --port 8900 --write-token /tmp/agent.jwt --sub agent-1
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The public half of a private key as a JWK."""
    entry = jwk.construct(public_pem(key), alg).to_dict()
    entry = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in entry.items()}
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OIDCIssuer:
    """An OIDC issuer serving discovery and JWKS on 127.0.0.1, and minting tokens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._serial = 0
        self.private_keys: dict[str, tuple[Any, str]] = {}  # kid -> (private key, alg), published or not
        self.published: list[str] = []  # kids in the JWKS, oldest first
        self.signing_kid = self._add(new_rsa_key(), "RS256", "rsa")
        self.ec_kid = self._add(new_ec_key(), "ES256", "ec")
        self.requests: collections.Counter[str] = collections.Counter()
        self.down = False
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- server

    @property
    def issuer(self) -> str:
        if self._server is None:
            raise RuntimeError("the issuer is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + JWKS_PATH

    def start(self) -> OIDCIssuer:
        if self._server is None:
            self._server = http.server.ThreadingHTTPServer((self._host, self._port), _handler(self))
            self._server.daemon_threads = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="oidc-issuer", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread = None

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            published = [(kid, *self.private_keys[kid]) for kid in self.published]
        return {"keys": [public_jwk(key, kid, alg) for kid, key, alg in published]}

    def requests_for(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    # -- keys

    def _add(self, key: Any, alg: str, prefix: str) -> str:
        with self._lock:
            self._serial += 1
            kid = f"{prefix}-{self._serial}"
            self.private_keys[kid] = (key, alg)
            self.published.append(kid)
        return kid

    def rotate(self) -> str:
        """Publish a new RSA key as the signing key and drop the oldest RSA key from the JWKS (the EC
        key stays); the new kid. Tokens signed with the dropped key can still be minted."""
        kid = self._add(new_rsa_key(), "RS256", "rsa")
        with self._lock:
            oldest = next(k for k in self.published if self.private_keys[k][1].startswith("RS"))
            self.published.remove(oldest)
            self.signing_kid = kid
        return kid

    # -- tokens

    def claims(
        self,
        sub: str | None = "agent-1",
        *,
        groups: Sequence[str] | str | None = ("data-agents",),
        audience: str | Sequence[str] | None = "agentgate",
        expires_in: float | None = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        act: str | dict[str, Any] | None = None,
        issuer: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A token's claims. Times are epoch seconds; a None drops the claim (``sub=None``: no subject)."""
        now = time.time()
        claims: dict[str, Any] = {"iss": issuer if issuer is not None else self.issuer}
        if sub is not None:
            claims["sub"] = sub
        if audience is not None:
            claims["aud"] = audience if isinstance(audience, str) else list(audience)
        claims["iat"] = int(issued_at if issued_at is not None else now)
        if expires_in is not None:
            claims["exp"] = int(now + expires_in)
        if not_before is not None:
            claims["nbf"] = int(not_before)
        if groups is not None:
            claims["groups"] = groups if isinstance(groups, str) else list(groups)
        if act is not None:
            claims["act"] = {"sub": act} if isinstance(act, str) else act
        claims.update(extra or {})
        return claims

    def mint(
        self,
        sub: str | None = "agent-1",
        *,
        groups: Sequence[str] | str | None = ("data-agents",),
        audience: str | Sequence[str] | None = "agentgate",
        expires_in: float | None = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        act: str | dict[str, Any] | None = None,
        alg: str = "RS256",
        kid: str | None = None,
        issuer: str | None = None,
        extra: dict[str, Any] | None = None,
        key: Any = None,
    ) -> str:
        """A signed token. By default signed with the current key for ``alg`` and carrying its kid;
        ``key`` signs with another private key (one the issuer never published), ``kid`` overrides the
        header's kid ("" leaves it out)."""
        claims = self.claims(
            sub, groups=groups, audience=audience, expires_in=expires_in, not_before=not_before,
            issued_at=issued_at, act=act, issuer=issuer, extra=extra,
        )
        if key is None:
            own_kid = self.signing_kid if alg.startswith("RS") else self.ec_kid
            key = self.private_keys[own_kid][0]
            kid = own_kid if kid is None else kid
        headers = {"kid": kid} if kid else {}
        return jwt.encode(claims, jwk.construct(key, alg), algorithm=alg, headers=headers)

    def mint_unsigned_none(self, sub: str | None = "agent-1", **claims: Any) -> str:
        """A token with ``alg: none`` and an empty signature, carrying the signing key's kid."""
        header = {"alg": "none", "typ": "JWT", "kid": self.signing_kid}
        return f"{_segment(header)}.{_segment(self.claims(sub, **claims))}."

    def mint_hs256_with_public_key(self, sub: str | None = "agent-1", **claims: Any) -> str:
        """The key-confusion attack: HS256 keyed with the issuer's public RSA key (PEM), under its kid."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.signing_kid}
        signing_input = f"{_segment(header)}.{_segment(self.claims(sub, **claims))}"
        secret = public_pem(self.private_keys[self.signing_kid][0])
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def _handler(issuer: OIDCIssuer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with issuer._lock:
                issuer.requests[path] += 1
            if issuer.down:
                return self._send(503, {"error": "temporarily_unavailable"})
            if path == DISCOVERY_PATH:
                return self._send(200, issuer.discovery())
            if path == JWKS_PATH:
                return self._send(200, issuer.jwks())
            return self._send(404, {"error": "not_found"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve an OIDC issuer (discovery and JWKS) on loopback.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--write-token", metavar="FILE", help="write a token here, again before it expires")
    parser.add_argument("--sub", default="agent-1")
    parser.add_argument("--groups", default="data-agents", help="comma-separated groups")
    parser.add_argument("--audience", default="agentgate")
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime in seconds")
    args = parser.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    with OIDCIssuer(port=args.port) as issuer:
        print(f"OIDC issuer at {issuer.issuer}", flush=True)
        try:
            while True:
                if args.write_token:
                    token = issuer.mint(
                        args.sub, groups=groups, audience=args.audience, expires_in=args.expires_in
                    )
                    with open(args.write_token, "w") as f:
                        f.write(token + "\n")
                    print(f"token for {args.sub!r} written to {args.write_token}", flush=True)
                time.sleep(max(1, args.expires_in // 2))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
