"""Start keys an agent pages a DynamoDB Query or Scan with, where a key attribute is masked for it.

A page of a Query or Scan ends with ``LastEvaluatedKey``, the key of its last item, which the agent
sends back as ``ExclusiveStartKey`` for the next page. Where a rule masks an attribute that is a key
of the table or of the index read (``mask_for_agent: [Item.email]`` on a table with an index by
``email``), that key carries it: masked as ``{"S": AGENT_MARKER}``, the next page would start after
the marker, not after the last item, and the agent would get the first page again, for ever (the
SDKs' paginators stop on a start key they were given before, and a loop written by hand does not).

So in the agent's copy of ``LastEvaluatedKey`` each masked attribute becomes a sealed start key
instead: ``AGENT_MARKER`` followed by ``:key:`` and the attribute's value as upstream sent it,
encrypted (AES-GCM, a fresh nonce each time, a key derived from the fingerprint key, the value's
JSON padded to a multiple of 256 bytes) and bound to the table, the index, the attribute's name and
the principal. The agent cannot read it, nor tell two values apart by it; sent back as
``ExclusiveStartKey`` of a Query or Scan of the same table and index by the same principal, the
gateway puts the value back before it signs the call; sent as the start key of another table,
index or principal, or altered, it is refused. Anywhere else it is text like any other.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .masking import AGENT_MARKER

SEALED = AGENT_MARKER + ":key:"
OPERATIONS = frozenset({"Query", "Scan"})
PAD = 256  # bytes: a sealed value says its length to this much only
_NONCE = 12


class StartKeyError(ValueError):
    """A sealed start key that is not this gateway's for this table, index, attribute and principal."""


class StartKeys:
    def __init__(self, fingerprint_key: bytes) -> None:
        self._aead = AESGCM(hmac.digest(fingerprint_key, b"agentgate: DynamoDB start keys, v1", "sha256"))

    @staticmethod
    def _bound(table: str, index: str | None, attribute: str, principal: str | None) -> bytes:
        return json.dumps([table, index or "", attribute, principal or ""]).encode()

    def seal(self, value: Any, *, table: str, index: str | None, attribute: str, principal: str | None) -> str:
        plain = json.dumps(value, separators=(",", ":")).encode()
        plain += b" " * (-len(plain) % PAD)
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plain, self._bound(table, index, attribute, principal))
        return SEALED + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def unseal(self, token: str, *, table: str, index: str | None, attribute: str, principal: str | None) -> Any:
        try:
            raw = base64.urlsafe_b64decode(token[len(SEALED):] + "=" * (-len(token[len(SEALED):]) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._bound(table, index, attribute, principal))
            return json.loads(plain)
        except (InvalidTag, binascii.Error, ValueError, IndexError) as e:
            raise StartKeyError(attribute) from e

    # -- a page's answer, and the next page's request

    def seal_page(self, params: dict, principal: str | None, upstream: bytes, agent: bytes) -> bytes | None:
        """The agent's copy ``agent`` of a Query's or Scan's answer, with each attribute of its
        ``LastEvaluatedKey`` that is masked sealed from upstream's; None when none is."""
        if b'"LastEvaluatedKey"' not in agent or AGENT_MARKER.encode() not in agent:
            return None
        copy, sent = json.loads(agent), json.loads(upstream)
        key, original = copy.get("LastEvaluatedKey"), sent.get("LastEvaluatedKey")
        if not isinstance(key, dict) or not isinstance(original, dict):
            return None
        table, index = params.get("TableName"), params.get("IndexName")
        if not isinstance(table, str):
            return None
        changed = False
        for attribute, value in key.items():
            if value == {"S": AGENT_MARKER} and attribute in original and original[attribute] != value:
                key[attribute] = {"S": self.seal(original[attribute], table=table, index=index, attribute=attribute,
                                                 principal=principal)}
                changed = True
        return json.dumps(copy, separators=(",", ":")).encode() if changed else None

    def unseal_request(self, params: dict, principal: str | None) -> dict | None:
        """The ``ExclusiveStartKey`` of a Query's or Scan's parameters with every sealed value put
        back, or None when it holds none. Raises StartKeyError for one sealed for another table,
        index, attribute or principal, or altered."""
        start = params.get("ExclusiveStartKey")
        if not isinstance(start, dict) or not any(_sealed(v) for v in start.values()):
            return None
        table, index = params.get("TableName"), params.get("IndexName")
        out = {}
        for attribute, value in start.items():
            if _sealed(value):
                if not isinstance(table, str):
                    raise StartKeyError(attribute)
                value = self.unseal(value["S"], table=table, index=index, attribute=attribute, principal=principal)
            out[attribute] = value
        return out


def _sealed(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("S"), str) and value["S"].startswith(SEALED)
