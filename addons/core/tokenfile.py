"""A token as the command line reads it: from a token file (an agent's projected OIDC token, an
approver's token) or an environment variable.

One place for what the commands that take ``--token-file`` (env, aws-credentials, approvals,
access) accept: UTF-8 text, surrounding white space stripped; and for an agent's token, a JWS
compact serialization (three base64url parts separated by dots) whose claims are a JSON object
and whose ``exp``, when it has one, is a time. Each refusal is a TokenFileError whose message is
one line naming where the token came from and never quoting it. Nothing here imports more than
the standard library: ``aws-credentials`` runs on every SDK credential refresh.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
from typing import Any

MAX_TOKEN_FILE_BYTES = 64 * 1024  # far more than any token (the gateway takes 16 KiB)
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWS_CHARACTER = re.compile(r"[A-Za-z0-9_.-]")


class TokenFileError(ValueError):
    """A token that cannot be used as given; the message says why, in one line."""


def read_token_file(path: str) -> str:
    """The token the file ``path`` holds: its UTF-8 text, white space around it stripped."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"the token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes: it holds more "
                             "than a token")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise TokenFileError(f"the token file {path} is not text (byte {data[e.start]:#04x} at offset {e.start} is not "
                             "UTF-8): it must hold the token alone") from None
    if not token:
        raise TokenFileError(f"the token file {path} is empty")
    return token


def jwt_claims(token: str, where: str) -> dict[str, Any]:
    """The claims of ``token`` (read, not verified) when it is a JWS compact serialization with a
    JSON object in its header and claims; ``where`` names its source for the message
    ("the token file F", "the environment variable NAME")."""
    shape = "a JWT is three base64url parts separated by dots (header.claims.signature)"
    if not _JWS.fullmatch(token):
        odd = next((c for c in token if not _JWS_CHARACTER.fullmatch(c)), None)
        if odd is not None:
            why = f"it holds {_character(odd)}, which no JWT holds"
        else:
            parts = token.split(".")
            why = f"it has {len(parts)} dot-separated part{'s' * (len(parts) != 1)}" if len(parts) != 3 \
                else "a part of it is empty"
        raise TokenFileError(f"{where} does not hold a JWT: {why}; {shape}")
    header, claims = (_json_part(part, name, where) for part, name in zip(token.split(".")[:2], ("header", "claims")))
    for part, name in ((header, "header"), (claims, "claims")):
        if not isinstance(part, dict):
            raise TokenFileError(f"{where} does not hold a JWT: its {name} {'are' if name == 'claims' else 'is'} not "
                                 "a JSON object")
    return claims


def expiry(claims: dict[str, Any], where: str) -> datetime.datetime | None:
    """The time the token's ``exp`` claim names (None without one); TokenFileError when it names
    none: not a number of seconds (true, a string), or beyond what a time holds (the year 9999)."""
    exp = claims.get("exp")
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenFileError(f"the exp claim of the token in {where} is not a number of seconds: {_value(exp)}")
    try:
        if not math.isfinite(exp):
            raise OverflowError
        return datetime.datetime.fromtimestamp(exp, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise TokenFileError(f"the exp claim of the token in {where} is no time: {_value(exp)} seconds is past the "
                             "year 9999") from None


def _json_part(part: str, name: str, where: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise TokenFileError(f"{where} does not hold a JWT: its {name} {'are' if name == 'claims' else 'is'} not "
                             "base64url-encoded JSON") from None


def _character(c: str) -> str:
    names = {" ": "a space", "\n": "a line break", "\r": "a carriage return", "\t": "a tab"}
    return names.get(c, repr(c) if c.isprintable() else f"the character U+{ord(c):04X}")


def _value(v: Any, limit: int = 40) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= limit else text[:limit] + "..."
