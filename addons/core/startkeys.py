"""Keys and items an agent sends back to DynamoDB, where an attribute of them is masked for it.

A page of a Query or Scan ends with ``LastEvaluatedKey``, the key of its last item, which the agent
sends back as ``ExclusiveStartKey`` for the next page. Where a rule masks an attribute that is a key
of the table or of the index read (``mask_for_agent: [Item.email]`` on a table with an index by
``email``), that key carries it: masked as ``{"S": AGENT_MARKER}``, the next page would start after
the marker, not after the last item, and the agent would get the first page again, for ever (the
SDKs' paginators stop on a start key they were given before, and a loop written by hand does not).
A BatchGetItem that DynamoDB does not finish (throttled, or over 16 MB) answers the keys it did not
read in ``UnprocessedKeys``, and a BatchWriteItem the writes it did not make in
``UnprocessedItems``, to be sent back as they are in the next call's ``RequestItems`` (as AWS
advises, and as boto3's ``batch_writer`` does by itself). Masked, a key sent back read the item
whose key is the marker (none), and a write sent back wrote the marker in place of the value.

So in the agent's copy each masked attribute of these becomes a sealed value instead:
``AGENT_MARKER`` followed by ``:key:`` and the attribute's value as upstream sent it, encrypted
(AES-GCM, a fresh nonce each time, a key derived from the fingerprint key, the value's JSON padded
to a multiple of 256 bytes) and bound to the table, the index, the attribute's name, the principal
and where it goes back (a start key; a BatchGetItem's key; a BatchWriteItem's PutRequest item or
DeleteRequest key). The agent cannot read it, nor tell two values apart by it; sent back there, for
the same table (and index) by the same principal, the gateway puts the value back before it signs
the call; sent for another table, index, principal or place, or altered, it is refused. Anywhere
else it is text like any other.
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
PAD = 256  # bytes: a sealed value says its length to this much only
_NONCE = 12

# Where each operation's answer carries keys or items the agent sends back, and the place each goes
# back to, which a sealed value is bound to (None: a Query's or Scan's start key, bound as before
# there were other places, so that the start keys a gateway handed out still open)
START = None
GET_KEY = "BatchGetItem RequestItems Keys"
PUT_ITEM = "BatchWriteItem RequestItems PutRequest Item"
DELETE_KEY = "BatchWriteItem RequestItems DeleteRequest Key"
OPERATIONS = frozenset({"Query", "Scan", "BatchGetItem", "BatchWriteItem"})
ANSWER_MEMBERS = {"Query": b'"LastEvaluatedKey"', "Scan": b'"LastEvaluatedKey"',
                  "BatchGetItem": b'"UnprocessedKeys"', "BatchWriteItem": b'"UnprocessedItems"'}
_WRITES = (("PutRequest", "Item", PUT_ITEM), ("DeleteRequest", "Key", DELETE_KEY))


class StartKeyError(ValueError):
    """A sealed value that is not this gateway's for this table, index, attribute, principal and
    place: ``where`` names the place in the request (``ExclusiveStartKey``,
    ``RequestItems.people.Keys[0]``), ``attribute`` the attribute."""

    def __init__(self, attribute: str, where: str = "ExclusiveStartKey") -> None:
        super().__init__(attribute)
        self.attribute, self.where = attribute, where


class StartKeys:
    def __init__(self, fingerprint_key: bytes) -> None:
        self._aead = AESGCM(hmac.digest(fingerprint_key, b"agentgate: DynamoDB start keys, v1", "sha256"))

    @staticmethod
    def _bound(table: str, index: str | None, attribute: str, principal: str | None, use: str | None) -> bytes:
        bound = [table, index or "", attribute, principal or ""]
        return json.dumps(bound if use is START else bound + [use]).encode()

    def seal(self, value: Any, *, table: str, index: str | None, attribute: str, principal: str | None,
             use: str | None = START) -> str:
        plain = json.dumps(value, separators=(",", ":")).encode()
        plain += b" " * (-len(plain) % PAD)
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plain, self._bound(table, index, attribute, principal, use))
        return SEALED + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def unseal(self, token: str, *, table: str, index: str | None, attribute: str, principal: str | None,
               use: str | None = START) -> Any:
        try:
            raw = base64.urlsafe_b64decode(token[len(SEALED):] + "=" * (-len(token[len(SEALED):]) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:],
                                       self._bound(table, index, attribute, principal, use))
            return json.loads(plain)
        except (InvalidTag, binascii.Error, ValueError, IndexError) as e:
            raise StartKeyError(attribute) from e

    # -- an answer, and the request that sends its keys or items back

    def seal_page(self, operation: str, params: dict, principal: str | None, upstream: bytes,
                  agent: bytes) -> bytes | None:
        """The agent's copy ``agent`` of a Query's or Scan's answer (its ``LastEvaluatedKey``), a
        BatchGetItem's (``UnprocessedKeys``) or a BatchWriteItem's (``UnprocessedItems``), with each
        attribute there that is masked sealed from upstream's answer; None when none is."""
        member = ANSWER_MEMBERS.get(operation)
        if member is None or member not in agent or AGENT_MARKER.encode() not in agent:
            return None
        copy, sent = json.loads(agent), json.loads(upstream)
        if not isinstance(copy, dict) or not isinstance(sent, dict):
            return None
        originals = {where: found for where, *_, found in _answer_maps(operation, params, sent)}
        changed = False
        for where, table, index, use, key in _answer_maps(operation, params, copy):
            original = originals.get(where)
            if not isinstance(original, dict):
                continue
            for attribute, value in key.items():
                if value == {"S": AGENT_MARKER} and attribute in original and original[attribute] != value:
                    key[attribute] = {"S": self.seal(original[attribute], table=table, index=index,
                                                     attribute=attribute, principal=principal, use=use)}
                    changed = True
        return json.dumps(copy, separators=(",", ":")).encode() if changed else None

    def unseal_request(self, operation: str, params: dict, principal: str | None) -> dict | None:
        """The members of a Query's or Scan's parameters (``ExclusiveStartKey``), a BatchGetItem's or
        a BatchWriteItem's (``RequestItems``) that hold sealed values, each with every sealed value
        put back; None when none holds one. Raises StartKeyError for one sealed for another table,
        index, attribute, principal or place, or altered."""
        if operation in ("Query", "Scan"):
            start = params.get("ExclusiveStartKey")
            if not isinstance(start, dict) or not any(_sealed(v) for v in start.values()):
                return None
            table = params.get("TableName")
            return {"ExclusiveStartKey": self._unsealed(start, table if isinstance(table, str) else None,
                                                        params.get("IndexName"), principal, START,
                                                        "ExclusiveStartKey")}
        items = params.get("RequestItems")
        if operation not in ("BatchGetItem", "BatchWriteItem") or not any(
                _sealed(v) for *_, key in _request_maps(operation, items) for v in key.values()):
            return None
        out = json.loads(json.dumps(items))  # a copy, changed in place
        for where, table, use, key in _request_maps(operation, out):
            if any(_sealed(v) for v in key.values()):
                key.update(self._unsealed(key, table, None, principal, use, where))
        return {"RequestItems": out}

    def _unsealed(self, key: dict, table: str | None, index: str | None, principal: str | None, use: str | None,
                  where: str) -> dict:
        out = {}
        for attribute, value in key.items():
            if _sealed(value):
                if table is None:
                    raise StartKeyError(attribute, where)
                try:
                    value = self.unseal(value["S"], table=table, index=index, attribute=attribute,
                                        principal=principal, use=use)
                except StartKeyError as e:
                    raise StartKeyError(attribute, where) from e
            out[attribute] = value
        return out


def _answer_maps(operation: str, params: dict, answer: dict):
    """(where, table, index, place, key or item) for each key or item of ``answer`` the agent sends
    back: ``where`` names its position, the same in upstream's answer and the agent's copy."""
    if operation in ("Query", "Scan"):
        table, key = params.get("TableName"), answer.get("LastEvaluatedKey")
        if isinstance(table, str) and isinstance(key, dict):
            yield ("LastEvaluatedKey",), table, params.get("IndexName"), START, key
        return
    member = "UnprocessedKeys" if operation == "BatchGetItem" else "UnprocessedItems"
    for table, i, request, _, use, key in _batch(operation, answer.get(member)):
        yield (member, table, i, request), table, None, use, key


def _request_maps(operation: str, items: dict):
    """(where, table, place, key or item) for each key of a BatchGetItem's ``RequestItems`` or item
    and key of a BatchWriteItem's, which may hold values sealed for it."""
    for table, i, request, member, use, key in _batch(operation, items):
        if request is None:
            yield f"RequestItems.{table}.Keys[{i}]", table, use, key
        else:
            yield f"RequestItems.{table}[{i}].{request}.{member}", table, use, key


def _batch(operation: str, tables: Any):
    """(table, position, request, member, place, key or item) for each key of a BatchGetItem's
    ``RequestItems`` (request None) and each item and key of a BatchWriteItem's: also the shape of
    their answers' ``UnprocessedKeys`` and ``UnprocessedItems``."""
    for table, asked in _items(tables):
        if operation == "BatchGetItem":
            for i, key in enumerate(asked.get("Keys") or () if isinstance(asked, dict) else ()):
                if isinstance(key, dict):
                    yield table, i, None, "Keys", GET_KEY, key
        elif operation == "BatchWriteItem":
            for i, write in enumerate(asked if isinstance(asked, list) else ()):
                for request, member, use in _WRITES:
                    found = write.get(request) if isinstance(write, dict) else None
                    item = found.get(member) if isinstance(found, dict) else None
                    if isinstance(item, dict):
                        yield table, i, request, member, use, item


def _items(tables: Any):
    return ((t, v) for t, v in tables.items() if isinstance(t, str)) if isinstance(tables, dict) else ()


def _sealed(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("S"), str) and value["S"].startswith(SEALED)
