"""DynamoDB item masks on writes, through a real gateway and moto: with README's idiom (a rule on
`dynamodb:*` with `access_level: [List, Read]` masking `Item.ssn`) and a rule allowing writes, a
write that returns or tests an item (ReturnValues, ReturnValuesOnConditionCheckFailure, a
transaction's CancellationReasons, PartiQL's Items, a condition expression) is masked as a read of
the table is, for the agent and in the record; a write that copies the attribute elsewhere is
refused. With the shipped policies, a BatchWriteItem's DeleteRequest and a PartiQL DELETE are held
for approval as DeleteItem is."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess

import botocore.exceptions
import pytest

from tests.conftest import ROOT
from tests.support.gateway import TEST_POLICY, Gateway
from tests.test_body_parameters import refused as refusal
from tests.test_masking_e2e import AGENT_ITEM, agent_client, marker, sqlite_files

ROLES = TEST_POLICY.split("rules:\n", 1)[0]  # the test gateways' roles (data-agents as agent-role), no rule
# README's idiom for item masks, and an operator's rule letting agents write items
OPERATOR_RULES = """\
rules:
  - id: personal-data-in-items
    action: "dynamodb:*"
    access_level: [List, Read]
    decision: allow
    mask_for_agent: [Item.ssn]
  - id: agents-write-items
    action: "dynamodb:*"
    access_level: Write
    decision: allow
"""
# an operator's rule masking ssn in the writes of batches on tables named batch-*, as a rule on
# dynamodb:* without an access_level does in every batch's: their UnprocessedItems carry it
BATCH_WRITE_RULE = """\
  - id: batch-writes-mask-items
    action: dynamodb:BatchWriteItem
    when: "length(resource[?starts_with(@, 'batch-')]) > `0`"
    decision: allow
    mask_for_agent: [Item.ssn]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    with Gateway(tmp_path_factory.mktemp("item-masks-gw"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 policy=ROLES + OPERATOR_RULES + BATCH_WRITE_RULE, settings={"oidc_leeway": 1}) as g:
        yield g


@pytest.fixture(scope="module")
def shipped_gw(tmp_path_factory, issuer, moto):
    """The shipped policies, and the operator's rules beside them in a file of their own."""
    g = Gateway(tmp_path_factory.mktemp("shipped-gw"), issuer=issuer.issuer, upstream=moto.url,
                aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                policy="version: 1\n" + OPERATOR_RULES, settings={"oidc_leeway": 1, "approval_hold": 0.5})
    g.init()
    for f in (ROOT / "policies").glob("*.yaml"):
        shutil.copy(f, g.home / "policies" / f.name)
    shutil.copytree(ROOT / "policies" / "session", g.home / "policies" / "session", dirs_exist_ok=True)
    with g:
        yield g


def make_table(ddb, table: str) -> None:
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")


def test_a_write_hands_back_an_item_masked_as_a_read_of_it_would_be(gw, issuer):
    """A rule masking Item.ssn for reads: every write that answers with the item, or with the
    item its condition failed on, hands the agent the marker, and no record keeps the value
    (where a GetItem's record keeps its fingerprint, so do the writes')."""
    tag = secrets.token_hex(6)
    ssn = f"ssn-{tag}-{secrets.token_hex(8)}"
    ddb = agent_client(gw, issuer.mint(f"agent-writes-{tag}"), "dynamodb")
    table = f"people_{tag}"  # a name PartiQL takes unquoted (moto's batch reads no quoted name)
    make_table(ddb, table)
    key = {"k": {"S": "alice"}}
    item = {**key, "name": {"S": "Alice"}, "ssn": {"S": ssn}}
    masked = {**key, "name": {"S": "Alice"}, "ssn": AGENT_ITEM}
    ddb.put_item(TableName=table, Item=item)
    assert ddb.get_item(TableName=table, Key=key)["Item"] == masked  # the read rule's mask

    same = dict(TableName=table, Key=key, UpdateExpression="SET #n = #n", ExpressionAttributeNames={"#n": "name"})
    assert ddb.update_item(**same, ReturnValues="ALL_OLD")["Attributes"] == masked
    assert ddb.update_item(**same, ReturnValues="ALL_NEW")["Attributes"] == masked
    for value, returned in ((f"new-{tag}", "UPDATED_OLD"), (f"newer-{tag}", "UPDATED_NEW")):  # each a change
        assert ddb.update_item(TableName=table, Key=key, UpdateExpression="SET ssn = :v", ReturnValues=returned,
                               ExpressionAttributeValues={":v": {"S": value}})["Attributes"] == {"ssn": AGENT_ITEM}
    assert ddb.put_item(TableName=table, Item=item, ReturnValues="ALL_OLD")["Attributes"] == masked
    assert ddb.delete_item(TableName=table, Key=key, ReturnValues="ALL_OLD")["Attributes"] == masked
    ddb.put_item(TableName=table, Item=item)

    failing = "attribute_not_exists(k)"
    for write in (lambda **kw: ddb.put_item(TableName=table, Item=item, **kw),
                  lambda **kw: ddb.update_item(**same, **kw),
                  lambda **kw: ddb.delete_item(TableName=table, Key=key, **kw)):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            write(ConditionExpression=failing, ReturnValuesOnConditionCheckFailure="ALL_OLD")
        assert e.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
        assert e.value.response["Item"] == masked
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ddb.transact_write_items(TransactItems=[{"Update": {**same, "ConditionExpression": failing,
                                                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}])
    assert e.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert e.value.response["CancellationReasons"][0]["Item"] == masked

    # PartiQL: a batch or transaction whose first statement writes (dynamodb:PartiQLUpdate) reads too
    update = f"UPDATE \"{table}\" SET note = 'seen' WHERE k = 'alice'"
    select = f"SELECT * FROM {table} WHERE k = 'alice'"
    got = ddb.batch_execute_statement(Statements=[{"Statement": update}, {"Statement": select}])
    assert [r["Item"]["ssn"] for r in got["Responses"] if "Item" in r] == [AGENT_ITEM]
    got = ddb.execute_transaction(TransactStatements=[{"Statement": update}, {"Statement": select}])
    assert [r["Item"]["ssn"] for r in got["Responses"] if "Item" in r] == [AGENT_ITEM]

    records = [r for r in gw.records() if r["principal"] == f"agent-writes-{tag}"]
    assert records and all(r["decision"] == "allow" for r in records)
    assert ssn not in json.dumps(records)
    fingerprint = marker(gw, ssn)
    [read] = [r for r in records if r["operation"] == "GetItem"]
    assert fingerprint in read["response_body"]
    answered = [r for r in records if r["operation"] in ("UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems",
                                                         "BatchExecuteStatement", "ExecuteTransaction")
                and r["response_body"] and '"ssn"' in r["response_body"]]
    fingerprints = (fingerprint, marker(gw, f"newer-{tag}"))  # what UPDATED_NEW, and a put after it, answer with
    assert len(answered) == 12 and all(any(f in r["response_body"] for f in fingerprints) for r in answered)
    assert not any(ssn.encode() in data for data in sqlite_files(gw).values())


def test_a_write_that_tests_or_copies_a_masked_attribute_is_refused(gw, issuer):
    """A write's condition on ssn tells the value a character at a time, as a Scan's would
    (agentgate:masked-condition); a write that copies ssn into an attribute no rule masks would let
    a read hand it over (agentgate:masked-source). Both refused; the item stays as it was."""
    tag = secrets.token_hex(6)
    ssn = f"123-{secrets.token_hex(4)}"
    ddb = agent_client(gw, issuer.mint(f"agent-oracle-{tag}"), "dynamodb")
    table = f"oracle-{tag}"
    make_table(ddb, table)
    key = {"k": {"S": "alice"}}
    ddb.put_item(TableName=table, Item={**key, "name": {"S": "Alice"}, "ssn": {"S": ssn}})
    guess = {":x": {"S": "1"}}
    name = {"#n": "name"}
    guesses = [
        lambda: ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #n = #n", ExpressionAttributeNames=name,
                                ConditionExpression="begins_with(ssn, :x)", ExpressionAttributeValues=guess),
        lambda: ddb.put_item(TableName=table, Item={**key, "name": {"S": "Alice"}},
                             ConditionExpression="begins_with(#s, :x)", ExpressionAttributeNames={"#s": "ssn"},
                             ExpressionAttributeValues=guess),
        lambda: ddb.transact_write_items(TransactItems=[{"Update": {
            "TableName": table, "Key": key, "UpdateExpression": "SET #n = #n", "ExpressionAttributeNames": name,
            "ConditionExpression": "begins_with(ssn, :x)", "ExpressionAttributeValues": guess}}]),
    ]
    for call in guesses:
        code, message = refusal(call)
        assert code == "AccessDenied" and "personal-data-in-items masks ssn for agents, and this call's condition " \
                                          "reads it" in message, message
    copies = [
        lambda: ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #n = ssn", ExpressionAttributeNames=name),
        lambda: ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #n = if_not_exists(#s, :x)",
                                ExpressionAttributeNames={**name, "#s": "ssn"}, ExpressionAttributeValues=guess),
        lambda: ddb.execute_statement(Statement=f"UPDATE \"{table}\" SET \"name\" = ssn WHERE k = 'alice'"),
    ]
    for call in copies:
        code, message = refusal(call)
        assert code == "AccessDenied" and "masks ssn for agents, and this call copies it into name" in message, message
    assert ddb.get_item(TableName=table, Key=key)["Item"]["name"] == {"S": "Alice"}  # nothing was copied
    ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #n = :v", ExpressionAttributeNames=name,
                    ExpressionAttributeValues={":v": {"S": "Al"}}, ConditionExpression="attribute_exists(k)")
    refused = [r for r in gw.records() if r["principal"] == f"agent-oracle-{tag}" and r["decision"] == "deny"]
    assert [r["rule"] for r in refused] == ["agentgate:masked-condition"] * 3 + ["agentgate:masked-source"] * 3


def test_every_page_of_a_query_is_read_where_its_key_holds_a_masked_attribute(gw, issuer, tmp_path, aws_cli):
    """An index whose sort key is a masked attribute (ssn): each page's LastEvaluatedKey carries it.
    Masked as the plain marker, the next page started after the marker, not after the page's last
    item: the agent got the first page again, the SDK's paginator stopped ("the same next token was
    received twice") and a loop written by hand never ended. Now the key's ssn is sealed for the
    agent (a different text each time, not the value) and put back when it comes back as
    ExclusiveStartKey, so boto3's paginator, a loop by hand and the AWS CLI read every item, each
    ssn masked; no record holds one; a sealed key sent for another table or by another principal
    is refused."""
    tag = secrets.token_hex(6)
    sub = f"agent-pages-{tag}"
    ddb = agent_client(gw, issuer.mint(sub), "dynamodb")
    table = f"pages-{tag}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("k", "org", "ssn")],
                     GlobalSecondaryIndexes=[{"IndexName": "by-org", "Projection": {"ProjectionType": "ALL"},
                                              "KeySchema": [{"AttributeName": "org", "KeyType": "HASH"},
                                                            {"AttributeName": "ssn", "KeyType": "RANGE"}]}],
                     BillingMode="PAY_PER_REQUEST")
    ssns = {f"p{i}": f"ssn-{i}-{secrets.token_hex(8)}" for i in range(7)}
    for k, ssn in ssns.items():
        ddb.put_item(TableName=table, Item={"k": {"S": k}, "org": {"S": "acme"}, "ssn": {"S": ssn}})
    query = {"TableName": table, "IndexName": "by-org", "KeyConditionExpression": "org = :o",
             "ExpressionAttributeValues": {":o": {"S": "acme"}}}

    items = ddb.get_paginator("query").paginate(**query, PaginationConfig={"PageSize": 3}).build_full_result()["Items"]
    assert sorted(i["k"]["S"] for i in items) == sorted(ssns) and all(i["ssn"] == AGENT_ITEM for i in items)

    seen, start, pages = [], {}, 0
    while pages < 10:
        page = ddb.query(**query, Limit=3, **start)
        pages += 1
        seen += [i["k"]["S"] for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            break
        start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    assert sorted(seen) == sorted(ssns) and pages == 3

    first = ddb.query(**query, Limit=3)["LastEvaluatedKey"]
    again = ddb.query(**query, Limit=3)["LastEvaluatedKey"]
    assert first["ssn"]["S"].startswith(AGENT_ITEM["S"]) and first["ssn"] != again["ssn"]  # equal values, unlike texts
    assert not any(ssn in json.dumps(first) for ssn in ssns.values())

    (tmp_path / "token.jwt").write_text(issuer.mint(sub))
    env = gw.agent_env(tmp_path / "token.jwt", tmp_path / "cli-home")
    p = subprocess.run([aws_cli, "dynamodb", "query", "--region", "us-east-1", "--output", "json", "--table-name", table,
                        "--index-name", "by-org", "--key-condition-expression", "org = :o",
                        "--expression-attribute-values", json.dumps({":o": {"S": "acme"}}), "--page-size", "3"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)["Items"]
    assert sorted(i["k"]["S"] for i in listed) == sorted(ssns) and all(i["ssn"] == AGENT_ITEM for i in listed)

    code, message = refusal(lambda: ddb.scan(TableName=f"oracle-{tag}", ExclusiveStartKey=first))
    assert code == "ValidationException" and "sealed for another table, index or principal" in message, message
    other = agent_client(gw, issuer.mint(f"agent-pages-other-{tag}"), "dynamodb")
    code, message = refusal(lambda: other.query(**query, ExclusiveStartKey=first))
    assert code == "ValidationException" and "sealed for another table, index or principal" in message, message

    stored = b"".join(sqlite_files(gw).values())
    assert not any(ssn.encode() in stored for ssn in ssns.values())
    assert [r["rule"] for r in gw.records() if r["principal"] == sub and r["decision"] == "deny"] == [
        "agentgate:masking"]


def test_keys_and_items_a_batch_did_not_process_reach_dynamodb_unsealed_when_sent_back(gw, issuer, moto):
    """A BatchGetItem's UnprocessedKeys and a BatchWriteItem's UnprocessedItems reach the agent with
    each masked attribute sealed, and the agent sends them back in RequestItems (moto answers neither
    at a size the gateway masks: tests/test_sealed_keys.py gives the masking AWS's documented
    answers). Here the sealed values are made as the gateway makes them for such answers, with its
    fingerprint key, for this table, principal and place (BatchGetItem is a read, whose rule masks
    ssn; BATCH_WRITE_RULE masks it in this table's BatchWriteItem). Sent back, they reach moto as the
    values they stand for: the batch reads the right items, and writes and deletes the right ones
    (the marker read nothing, and was written as the value). Sealed for another principal, or a
    Scan's start key sent as a batch's key, they are refused; no record keeps a value."""
    from addons.core.startkeys import DELETE_KEY, GET_KEY, PUT_ITEM, StartKeys
    from addons.gateway import read_key

    tag = secrets.token_hex(6)
    sub = f"agent-batch-{tag}"
    ddb = agent_client(gw, issuer.mint(sub), "dynamodb")
    table = f"batch-{tag}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"},
                                                 {"AttributeName": "ssn", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("k", "ssn")],
                     BillingMode="PAY_PER_REQUEST")
    ssns = {name: f"ssn-{name}-{secrets.token_hex(8)}" for name in ("alice", "bob", "carol")}
    for name in ("alice", "bob"):
        ddb.put_item(TableName=table, Item={"k": {"S": name}, "ssn": {"S": ssns[name]}, "name": {"S": name.title()}})
    keys = StartKeys(read_key(gw.home / "keys" / "fingerprint.key"))

    def sealed(name: str, use: str) -> dict:
        return {"S": keys.seal({"S": ssns[name]}, table=table, index=None, attribute="ssn", principal=sub, use=use)}

    unprocessed = {table: {"Keys": [{"k": {"S": n}, "ssn": sealed(n, GET_KEY)} for n in ("alice", "bob")]}}
    got = ddb.batch_get_item(RequestItems=unprocessed)["Responses"][table]
    assert sorted((i["k"]["S"], i["name"]["S"], i["ssn"]["S"]) for i in got) == [
        ("alice", "Alice", AGENT_ITEM["S"]), ("bob", "Bob", AGENT_ITEM["S"])]

    ddb.batch_write_item(RequestItems={table: [
        {"PutRequest": {"Item": {"k": {"S": "carol"}, "ssn": sealed("carol", PUT_ITEM), "name": {"S": "Carol"}}}},
        {"DeleteRequest": {"Key": {"k": {"S": "bob"}, "ssn": sealed("bob", DELETE_KEY)}}}]})
    sts = moto.client("sts", aws_access_key_id=moto.broker.access_key_id,
                      aws_secret_access_key=moto.broker.secret_access_key)
    creds = sts.assume_role(RoleArn=moto.broker.role_arn, RoleSessionName=f"check-{tag}")["Credentials"]
    direct = moto.client("dynamodb", aws_access_key_id=creds["AccessKeyId"],
                         aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    stored = {i["k"]["S"]: i["ssn"]["S"] for i in direct.scan(TableName=table)["Items"]}
    assert stored == {"alice": ssns["alice"], "carol": ssns["carol"]}

    other = agent_client(gw, issuer.mint(f"agent-batch-other-{tag}"), "dynamodb")
    code, message = refusal(lambda: other.batch_get_item(RequestItems=unprocessed))
    assert code == "ValidationException" and "sealed for another table, principal or place" in message, message
    start = ddb.scan(TableName=table, Limit=1)["LastEvaluatedKey"]  # ssn, the table's sort key, sealed as a start key
    assert start["ssn"]["S"].startswith(AGENT_ITEM["S"] + ":key:")
    code, message = refusal(lambda: ddb.batch_get_item(RequestItems={table: {"Keys": [start]}}))
    assert code == "ValidationException" and "RequestItems." + table + ".Keys[0]'s ssn" in message, message

    assert not any(ssn.encode() in data for data in sqlite_files(gw).values() for ssn in ssns.values())
    assert [r["rule"] for r in gw.records() if r["principal"] == sub and r["decision"] == "deny"] == [
        "agentgate:masking"]


def test_shipped_policies_hold_batch_and_partiql_deletes_for_approval(shipped_gw, issuer):
    """The shipped rule destroying-needs-a-human holds DeleteItem; a BatchWriteItem's
    DeleteRequest (decided as dynamodb:DeleteItem beside dynamodb:BatchWriteItem) and a PartiQL
    DELETE (dynamodb:PartiQLDelete) are held too, and delete nothing until approved. A batch that
    only puts goes, as the operator's rule allows."""
    tag = secrets.token_hex(6)
    ddb = agent_client(shipped_gw, issuer.mint(f"agent-deletes-{tag}"), "dynamodb")
    table = f"kept-{tag}"
    make_table(ddb, table)
    keys = [{"k": {"S": name}} for name in ("a", "b", "c")]
    ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": k}} for k in keys]})
    for call in (lambda: ddb.delete_item(TableName=table, Key=keys[0]),
                 lambda: ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": {"k": {"S": "d"}}}},
                                                                    {"DeleteRequest": {"Key": keys[1]}}]}),
                 lambda: ddb.execute_statement(Statement=f"DELETE FROM \"{table}\" WHERE k = 'c'")):
        code, message = refusal(call)
        assert code == "ApprovalPending", message
    assert sorted(i["k"]["S"] for i in ddb.scan(TableName=table)["Items"]) == ["a", "b", "c"]  # nothing deleted
    records = [r for r in shipped_gw.records() if r["principal"] == f"agent-deletes-{tag}"]
    held = [(r["operation"], r["action"], r["rule"]) for r in records if r["decision"] == "approve"]
    assert held == [("DeleteItem", "dynamodb:DeleteItem", "destroying-needs-a-human"),
                    ("BatchWriteItem", "dynamodb:BatchWriteItem", "destroying-needs-a-human"),
                    ("ExecuteStatement", "dynamodb:PartiQLDelete", "destroying-needs-a-human")]
    [batch] = [r for r in records if r["operation"] == "BatchWriteItem" and r["decision"] == "approve"]
    assert f"it also asks for dynamodb:DeleteItem on {table}" in batch["reason"]
