"""A call is decided and signed for one region and one service: the ones its host and its single
credential scope agree on. An agent's Authorization header that could be read two ways (a
Credential given twice, a scope of the wrong shape) or whose scope names another region than its
host is refused, so that no call is decided for us-east-1 and signed for (and run in) eu-west-1.
Through a real gateway, against moto with authentication on (which, unlike AWS, accepts a
signature scoped to another region than its host: the gateway must not rely on upstream to refuse)."""

from __future__ import annotations

import json

import boto3
import botocore.config
import pytest

from tests.test_fuzz_gateway import _request, aws_error, exchange

EU = "dynamodb.eu-west-1.amazonaws.com"
TABLE = "scoped"


def ddb(gateway, token: str, region: str):
    return boto3.client("dynamodb", region_name=region, aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gateway.ca_file),
                        config=botocore.config.Config(proxies={"https": gateway.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}))


@pytest.fixture(scope="module")
def tables(gateway, issuer):
    token = issuer.mint("scope-setup")
    for region in ("us-east-1", "eu-west-1"):
        ddb(gateway, token, region).create_table(
            TableName=TABLE, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    return token


def put_item(credential: str, key: str) -> bytes:
    body = json.dumps({"TableName": TABLE, "Item": {"k": {"S": key}}}).encode()
    return _request("POST", EU, b"/", {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
        "X-Amz-Date": "20260101T000000Z", "X-Amz-Target": "DynamoDB_20120810.PutItem",
        "Content-Type": "application/x-amz-json-1.0"}, body)


@pytest.mark.parametrize("credential, status, code, words", [
    ("agentgate/x/us-east-1/dynamodb/aws4_request", 400, "IncompleteSignature", "date must read YYYYMMDD"),
    ("agent/gate/20260101/us-east-1/dynamodb/aws4_request", 400, "IncompleteSignature", "the Credential must read"),
    ("agentgate/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=00, "
     "Credential=agentgate/20260101/eu-west-1/dynamodb/aws4_request", 400, "IncompleteSignature",
     "gives Credential more than once"),
    ("agentgate/20260101/us-east-1/dynamodb/aws4_request", 403, "AccessDenied",
     "credential scope names region 'us-east-1', and the host dynamodb.eu-west-1.amazonaws.com region 'eu-west-1'"),
], ids=["bad-date", "slash-in-key", "credential-twice", "other-region"])
def test_a_scope_that_can_be_read_two_ways_or_names_another_region_is_refused(gateway, issuer, tables, credential,
                                                                              status, code, words):
    sub = f"scope-agent-{code}-{len(credential)}"
    key = f"item-{len(credential)}"
    got, headers, body = exchange(gateway, issuer.mint(sub), EU, put_item(credential, key))
    assert got == status, body
    assert aws_error(headers, body)[0] == code and words in aws_error(headers, body)[1], body
    record = [r for r in gateway.records() if r["principal"] == sub][-1]
    assert record["outcome"] == "refused" and record["status"] == status
    for region in ("eu-west-1", "us-east-1"):  # nothing was written anywhere
        assert "Item" not in ddb(gateway, tables, region).get_item(TableName=TABLE, Key={"k": {"S": key}})


def test_the_scope_of_the_host_region_is_decided_and_signed_there(gateway, issuer, tables):
    sub = "scope-agent-eu"
    got, headers, body = exchange(gateway, issuer.mint(sub), EU,
                                  put_item("agentgate/20260101/eu-west-1/dynamodb/aws4_request", "in-eu"))
    assert got == 200, body
    record = [r for r in gateway.records() if r["principal"] == sub][-1]
    assert (record["region"], record["action"], record["outcome"]) == ("eu-west-1", "dynamodb:PutItem", "forwarded")
    assert "Item" in ddb(gateway, tables, "eu-west-1").get_item(TableName=TABLE, Key={"k": {"S": "in-eu"}})
    assert "Item" not in ddb(gateway, tables, "us-east-1").get_item(TableName=TABLE, Key={"k": {"S": "in-eu"}})
