"""Keys and items a DynamoDB batch did not process, where a rule masks an attribute of them for the
agent (addons/masking.py: ``Masking`` seals it in the agent's copy, ``SealedKeys`` opens it when it
comes back; core/startkeys.py).

moto answers ``UnprocessedKeys`` only past 16 MB of items, more than the gateway holds to mask
(8 MiB: such an answer is withheld from an agent that policy masks anything for), and never answers
``UnprocessedItems``. So these tests drive the masking add-ons with the answer AWS documents: the
example of each operation in AWS's API reference (botocore's ``examples-1.json``), throttled part
way, its unprocessed keys or writes in the form the reference gives them (the form of
``RequestItems``). tests/test_item_masks_e2e.py sends sealed keys and items through a gateway to
moto."""

from __future__ import annotations

import asyncio
import copy
import json
import types
import zlib

import botocore.loaders
import pytest
from mitmproxy.test import taddons, tflow

from addons.core.policy import Decision
from addons.core.startkeys import SEALED
from addons.masking import Masking, SealedKeys
from addons.stage import CALL, DECISION, PRINCIPAL, SIGNED
from tests.test_classifier import capture, run
from tests.test_masking import KEY, parse

EXAMPLES = botocore.loaders.create_loader().load_service_model("dynamodb", "examples-1", "2012-08-10")["examples"]
GET = EXAMPLES["BatchGetItem"][0]  # three songs of the Music table, by Artist and SongTitle
PUT = EXAMPLES["BatchWriteItem"][0]  # three songs put in the Music table
# the table's sort key is masked for agents; and the album, in the writes' items
RULE_MASKS = ("Item.SongTitle", "Item.AlbumTitle")


def _flow(method: str, params: dict, sub: str) -> tflow.tflow:
    request = capture("dynamodb", method, **params)
    f = tflow.tflow()
    f.request.path = "/"
    f.request.headers["content-type"] = "application/x-amz-json-1.0"
    f.request.content = request["body"]
    f.metadata[CALL] = run(request)
    f.metadata[PRINCIPAL] = types.SimpleNamespace(sub=sub)
    return f


def answered(addon: Masking, method: str, params: dict, answer: dict, *, sub: str = "agent-a") -> tuple[dict, bytes]:
    """The agent's copy of ``answer`` to the call, parsed as the agent's SDK parses it, and its body."""
    f = _flow(method, params, sub)
    body = json.dumps(answer).encode()
    f.response = tflow.tresp(content=body)
    f.response.headers.clear()
    f.response.headers["content-type"] = "application/x-amz-json-1.0"
    f.response.headers["x-amz-crc32"] = str(zlib.crc32(body))
    f.metadata[DECISION] = Decision("allow", "songs", "allowed", "v1", None, RULE_MASKS, None, None, ())
    f.metadata[SIGNED] = types.SimpleNamespace(session_id="s1", role_arn="arn:aws:iam::123456789012:role/r",
                                               assumed_role_arn=None, credentials=None)
    with taddons.context(addon):
        asyncio.run(addon.response(f))
    new = f.response.raw_content
    assert f.response.status_code == 200 and f.response.headers["x-amz-crc32"] == str(zlib.crc32(new))
    return parse("dynamodb", f.metadata[CALL].operation, new), new


def sent(addon: Masking, method: str, params: dict, *, sub: str = "agent-a") -> tflow.tflow:
    """The call as the gateway sends it upstream (``response`` set when it was refused)."""
    f = _flow(method, params, sub)
    SealedKeys(addon).request(f)
    return f


def refused(f) -> str:
    assert f.response is not None and f.response.status_code == 400, f.response
    error = json.loads(f.response.content)
    assert error["__type"].endswith("ValidationException"), error
    return error["message"]


def sealed(value: dict) -> bool:
    return set(value) == {"S"} and value["S"].startswith(SEALED)


def test_the_keys_a_batch_get_did_not_read_are_sealed_for_the_agent_and_read_the_right_items_sent_back():
    """A BatchGetItem throttled after its first key answers the other two in UnprocessedKeys, which
    the agent sends back. Masked as the marker, the retry asked for songs titled the marker: none.
    Now each SongTitle there reaches the agent sealed (a different text each time, not the title),
    the rest of the keys and the ProjectionExpression as sent; sent back in RequestItems, the call
    goes upstream with the titles DynamoDB gave. Sent by another principal, for another table, as a
    Query's start key or a write's item, or altered, it is refused."""
    addon = Masking(KEY)
    asked = GET["input"]["RequestItems"]
    keys = asked["Music"]["Keys"]
    answer = {"Responses": {"Music": GET["output"]["Responses"]["Music"][:1]},
              "UnprocessedKeys": {"Music": {"Keys": keys[1:], "ProjectionExpression": "AlbumTitle"}}}
    got, body = answered(addon, "batch_get_item", {"RequestItems": asked}, answer)

    unprocessed = got["UnprocessedKeys"]["Music"]
    assert unprocessed["ProjectionExpression"] == "AlbumTitle"
    assert [k["Artist"] for k in unprocessed["Keys"]] == [k["Artist"] for k in keys[1:]]
    assert all(sealed(k["SongTitle"]) for k in unprocessed["Keys"]), unprocessed
    assert not any(k["SongTitle"]["S"].encode() in body for k in keys)
    again, _ = answered(addon, "batch_get_item", {"RequestItems": asked}, answer)
    assert again["UnprocessedKeys"]["Music"]["Keys"][0]["SongTitle"] != unprocessed["Keys"][0]["SongTitle"]

    f = sent(addon, "batch_get_item", {"RequestItems": got["UnprocessedKeys"]})
    assert f.response is None
    assert json.loads(f.request.content)["RequestItems"] == answer["UnprocessedKeys"]
    assert f.metadata[CALL].params["RequestItems"] == answer["UnprocessedKeys"]  # what is signed and recorded

    message = refused(sent(addon, "batch_get_item", {"RequestItems": got["UnprocessedKeys"]}, sub="agent-b"))
    assert message == ("agentgate: RequestItems.Music.Keys[0]'s SongTitle is a value agentgate sealed for another "
                       "table, principal or place, or it was altered; send this table's UnprocessedKeys as the last "
                       "BatchGetItem answered them")
    other = {"Playlists": got["UnprocessedKeys"]["Music"]}
    assert "RequestItems.Playlists.Keys[0]'s SongTitle" in refused(sent(addon, "batch_get_item",
                                                                        {"RequestItems": other}))
    altered = copy.deepcopy(got["UnprocessedKeys"])
    title = altered["Music"]["Keys"][1]["SongTitle"]
    title["S"] = title["S"][:-8] + ("A" if title["S"][-8] != "A" else "B") + title["S"][-7:]
    assert "RequestItems.Music.Keys[1]'s SongTitle" in refused(sent(addon, "batch_get_item",
                                                                    {"RequestItems": altered}))
    key = unprocessed["Keys"][0]
    assert "ExclusiveStartKey's SongTitle is a start key" in refused(
        sent(addon, "query", {"TableName": "Music", "KeyConditionExpression": "Artist = :a",
                              "ExpressionAttributeValues": {":a": key["Artist"]}, "ExclusiveStartKey": key}))
    assert "RequestItems.Music[0].PutRequest.Item's SongTitle" in refused(
        sent(addon, "batch_write_item", {"RequestItems": {"Music": [{"PutRequest": {"Item": key}}]}}))


def test_the_writes_a_batch_did_not_make_are_sealed_for_the_agent_and_write_the_values_sent_back():
    """A BatchWriteItem throttled after its first request answers the others in UnprocessedItems,
    which the agent (boto3's batch_writer by itself) sends back. Masked, the retry wrote the marker
    as the song's title and album, and deleted nothing. Now each masked attribute of a PutRequest's
    Item and a DeleteRequest's Key reaches the agent sealed; sent back, the writes go upstream as
    first asked. A value sealed for a put is refused as a delete's key, and the other way round."""
    addon = Masking(KEY)
    first = PUT["input"]["RequestItems"]["Music"]
    delete = {"DeleteRequest": {"Key": {k: v for k, v in first[0]["PutRequest"]["Item"].items() if k != "AlbumTitle"}}}
    asked = {"Music": first + [delete]}
    answer = {"UnprocessedItems": {"Music": asked["Music"][1:]}}
    got, body = answered(addon, "batch_write_item", {"RequestItems": asked}, answer)

    writes = got["UnprocessedItems"]["Music"]
    for write, original in zip(writes, answer["UnprocessedItems"]["Music"]):
        item = write.get("PutRequest", {}).get("Item") or write["DeleteRequest"]["Key"]
        was = original.get("PutRequest", {}).get("Item") or original["DeleteRequest"]["Key"]
        assert item["Artist"] == was["Artist"] and sealed(item["SongTitle"]), write
        assert "AlbumTitle" not in was or sealed(item["AlbumTitle"]), write
        assert not any(v["S"].encode() in body for k, v in was.items() if k != "Artist")

    f = sent(addon, "batch_write_item", {"RequestItems": got["UnprocessedItems"]})
    assert f.response is None
    assert json.loads(f.request.content)["RequestItems"] == answer["UnprocessedItems"]
    assert f.metadata[CALL].params["RequestItems"] == answer["UnprocessedItems"]

    put, gone = writes[0]["PutRequest"]["Item"], writes[-1]["DeleteRequest"]["Key"]
    assert "RequestItems.Music[0].DeleteRequest.Key's SongTitle" in refused(
        sent(addon, "batch_write_item", {"RequestItems": {"Music": [{"DeleteRequest": {"Key": {
            "Artist": put["Artist"], "SongTitle": put["SongTitle"]}}}]}}))
    assert "RequestItems.Music[0].PutRequest.Item's SongTitle" in refused(
        sent(addon, "batch_write_item", {"RequestItems": {"Music": [{"PutRequest": {"Item": gone}}]}}))
    assert "RequestItems.Music.Keys[0]'s SongTitle" in refused(
        sent(addon, "batch_get_item", {"RequestItems": {"Music": {"Keys": [gone]}}}))
    assert "send this table's UnprocessedItems as the last BatchWriteItem answered them" in refused(
        sent(addon, "batch_write_item", {"RequestItems": got["UnprocessedItems"]}, sub="agent-b"))


@pytest.mark.parametrize("method, params", [
    ("batch_get_item", {"RequestItems": {"Music": {"Keys": [{"Artist": {"S": "Acme Band"},
                                                             "SongTitle": {"S": SEALED + "AAAA"}}]}}}),
    ("batch_write_item", {"RequestItems": {"Music": [{"PutRequest": {"Item": {
        "Artist": {"S": "Acme Band"}, "SongTitle": {"S": SEALED + "not base64 !"}}}}]}}),
])
def test_a_sealed_value_the_gateway_did_not_make_is_refused(method, params):
    assert "is a value agentgate sealed for another table, principal or place" in refused(
        sent(Masking(KEY), method, params))


def test_a_batch_without_sealed_values_goes_upstream_as_sent():
    addon = Masking(KEY)
    for method, params in (("batch_get_item", {"RequestItems": GET["input"]["RequestItems"]}),
                           ("batch_write_item", {"RequestItems": PUT["input"]["RequestItems"]})):
        f = sent(addon, method, params)
        body = capture("dynamodb", method, **params)["body"]
        assert f.response is None and f.request.content == body
