"""The masking engine (core.masking, core.detectors) and the masking addon, without a network:
targets from the models and the curated list, every protocol, markers, the agent's copy still
parsed by botocore, checksums, failures that never break a call, and what the record keeps."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import gzip
import hashlib
import hmac
import json
import re
import dataclasses
import types
import zlib
from collections import Counter
from urllib.parse import parse_qs, quote, urlencode
from xml.sax.saxutils import escape as xml_escape

import botocore.loaders
import botocore.parsers
import botocore.session
import jmespath
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons, tflow

from addons.core import detectors, masking, templates
from addons.core.classifier import Classification
from addons.core.policy import Decision
from addons.core.masking import (AGENT_MARKER, CURATED, MARKER_PREFIX, MARKER_RE, Masker, checksum_headers,
                                 parse_path)
from addons.core.records import Record
from tests.support.bombs import bomb
from tests.support.bounds import HANG

KEY = b"fingerprint-key-for-tests-000001"
SESSION = botocore.session.get_session()
LOADER = botocore.loaders.create_loader()


def fp(value: bytes | str, key: bytes = KEY) -> str:
    data = value.encode() if isinstance(value, str) else value
    return "agentgate:masked:hmac-" + hmac.new(key, data, hashlib.sha256).hexdigest()[:12]


# what the agent's copy holds where a value is masked: one fixed marker, no fingerprint
AGENT_B64 = base64.b64encode(AGENT_MARKER.encode()).decode()  # a blob's
AGENT_ITEM = {"S": AGENT_MARKER}  # a DynamoDB attribute value's


def fingerprint_free(copy: bytes | str) -> bool:
    """Does the agent's copy hold no fingerprint marker, as text or base64 (a blob's)?"""
    text = copy.decode("latin-1") if isinstance(copy, bytes) else copy
    return MARKER_PREFIX not in text and base64.b64encode(MARKER_PREFIX.encode()).decode()[:24] not in text


def call(service: str, operation: str, protocol: str | None = None, **kw) -> Classification:
    protocol = protocol or SESSION.get_service_model(service).resolved_protocol
    return Classification(service=service, operation=operation, protocol=protocol, **kw)


def parse(service: str, operation: str, body: bytes, headers: dict | None = None, status: int = 200) -> dict:
    """What botocore makes of a response: the agent's SDK must be able to read it."""
    model = SESSION.get_service_model(service)
    parser = botocore.parsers.create_parser(model.resolved_protocol)
    return parser.parse({"status_code": status, "headers": headers or {}, "body": body},
                        model.operation_model(operation).output_shape)


# -- markers --------------------------------------------------------------------------------------


def test_marker_is_a_keyed_fingerprint():
    m = Masker(KEY)
    assert m.marker("hunter2") == m.marker(b"hunter2") == fp("hunter2")
    assert MARKER_RE.fullmatch(m.marker("hunter2"))
    assert m.marker("hunter2") != m.marker("hunter3")
    assert Masker(b"another-key-000000000000000000").marker("hunter2") != m.marker("hunter2")
    assert base64.b64decode(m.blob_marker(b"\x00\x01")).decode() == fp(b"\x00\x01")
    with pytest.raises(ValueError):
        Masker(b"")


# -- targets from the models ----------------------------------------------------------------------

SYNTHETIC = {
    "metadata": {"protocol": "json"},
    "operations": {
        "Read": {"name": "Read", "http": {"method": "POST", "requestUri": "/"}, "input": {"shape": "In"},
                 "output": {"shape": "Out"}},
        "Plain": {"name": "Plain", "http": {"method": "POST", "requestUri": "/"}, "output": {"shape": "Bare"}},
    },
    "shapes": {
        "In": {"type": "structure", "members": {"Token": {"shape": "Secret"}, "Name": {"shape": "Str"}}},
        "Out": {"type": "structure", "members": {"Nodes": {"shape": "NodeList"}, "Count": {"shape": "Int"},
                                                 "Pin": {"shape": "SecretInt"}, "Ok": {"shape": "SecretBool"},
                                                 "At": {"shape": "SecretTime"}, "Key": {"shape": "SecretBlob"},
                                                 "Kind": {"shape": "Str"}, "Value": {"shape": "Str"}}},
        "Bare": {"type": "structure", "members": {"Name": {"shape": "Str"}}},
        "NodeList": {"type": "list", "member": {"shape": "Node"}},
        "Node": {"type": "structure", "members": {"Name": {"shape": "Str"}, "Child": {"shape": "Node"},
                                                  "Password": {"shape": "Secret"}, "Attrs": {"shape": "Attrs"},
                                                  "Wire": {"shape": "Str", "locationName": "wireName"}}},
        "Attrs": {"type": "map", "key": {"shape": "Str"}, "value": {"shape": "Node"}},
        "Str": {"type": "string"},
        "Int": {"type": "integer"},
        "Secret": {"type": "string", "sensitive": True},
        "SecretInt": {"type": "integer", "sensitive": True},
        "SecretBool": {"type": "boolean", "sensitive": True},
        "SecretTime": {"type": "timestamp", "sensitive": True},
        "SecretBlob": {"type": "blob", "sensitive": True},
    },
}


def synthetic(protocol: str = "json") -> Masker:
    model = copy.deepcopy(SYNTHETIC)
    model["metadata"]["protocol"] = protocol
    return Masker(KEY, models=lambda name: model if name == "synthetic" else None)


def test_sensitive_members_are_found_through_structures_lists_maps_and_recursion():
    m = synthetic()
    shapes = m.service("synthetic")
    node = shapes.sensitive("Out")
    assert set(node.members) == {"Nodes", "Pin", "Ok", "At", "Key"}
    item = node.members["Nodes"].item
    assert item.members["Child"] is item  # recursive shapes are one node
    assert item.members["Password"].mask == "sensitive"
    assert item.members["Attrs"].value is item
    assert shapes.sensitive("Bare") is None
    assert set(shapes._nodes) >= {"Out", "Node", "Bare"} and "In" not in shapes._nodes  # worked out on use
    body = {"Nodes": [{"Name": "a", "Password": "p1", "wireName": "w",
                       "Child": {"Name": "b", "Password": "p2", "Attrs": {"x": {"Password": "p3", "Name": "c"}}}}],
            "Count": 3, "Pin": 1234, "Ok": True, "At": 1700000000, "Key": base64.b64encode(b"raw").decode(),
            "Kind": "k"}
    part, _ = m.response(Classification(service="synthetic", operation="Read", protocol="json"), status=200,
                         body=json.dumps(body).encode())
    out = json.loads(part.body)
    assert out["Nodes"][0]["Password"] == fp("p1")
    assert out["Nodes"][0]["Child"]["Password"] == fp("p2")
    assert out["Nodes"][0]["Child"]["Attrs"]["x"] == {"Password": fp("p3"), "Name": "c"}
    assert out["Nodes"][0]["Name"] == "a" and out["Nodes"][0]["wireName"] == "w" and out["Count"] == 3
    # the JSON type is kept where a non-string is masked; blobs stay base64
    assert (out["Pin"], out["Ok"], out["At"]) == (0, False, 0)
    assert base64.b64decode(out["Key"]).decode() == fp(b"raw")
    assert dict(part.masked) == {
        ("response", "Nodes[].Password", "sensitive"): 1, ("response", "Nodes[].Child.Password", "sensitive"): 1,
        ("response", "Nodes[].Child.Attrs.*.Password", "sensitive"): 1, ("response", "Pin", "sensitive"): 1,
        ("response", "Ok", "sensitive"): 1, ("response", "At", "sensitive"): 1, ("response", "Key", "sensitive"): 1}


def test_only_the_services_seen_are_loaded():
    m = Masker(KEY)
    m.response(call("secretsmanager", "GetSecretValue"), status=200, body=b'{"SecretString": "x"}')
    assert set(m._services) == {"secretsmanager"}


def resolves(service: str, operation: str, direction: str, path: str) -> bool:
    model = LOADER.load_service_model(service, "service-2")
    shapes = model["shapes"]
    shape = shapes[model["operations"][operation][direction]["shape"]]
    for step in parse_path(path):
        while shape["type"] == "list":
            shape = shapes[shape["member"]["shape"]]
        if shape["type"] == "map":
            shape = shapes[shape["value"]["shape"]]
            continue
        if step not in shape.get("members", {}):
            return False
        shape = shapes[shape["members"][step]["shape"]]
    return True


@pytest.mark.parametrize("target", CURATED, ids=lambda t: f"{t.service}:{'/'.join(t.operations)[:40]}")
def test_every_curated_target_names_members_the_models_have(target):
    model = LOADER.load_service_model(target.service, "service-2")
    assert target.reason
    for operation in target.operations:
        assert operation in model["operations"], (target.service, operation)
        for path in target.paths:
            assert resolves(target.service, operation, target.direction, path), (operation, path)
            if target.when:
                parent = ".".join(path.split(".")[:-1] + [target.when[0]])
                assert resolves(target.service, operation, target.direction, parent), (operation, parent)


# -- JSON -----------------------------------------------------------------------------------------


def test_secrets_manager_record_and_agent_copy():
    m = Masker(KEY)
    body = json.dumps({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf", "Name": "db",
                       "SecretString": '{"password": "hunter2"}', "SecretBinary": base64.b64encode(b"\x00bin").decode(),
                       "VersionId": "4f2a4c1e-7d6b-4e1f-9a3b-1c2d3e4f5a6b", "CreatedDate": 1.7e9}).encode()
    part, agent = m.response(call("secretsmanager", "GetSecretValue"), status=200, body=body,
                             policy=("SecretString", "SecretBinary"))
    record = json.loads(part.body)
    assert record["SecretString"] == fp('{"password": "hunter2"}') and record["Name"] == "db"
    assert "hunter2" not in part.body
    assert base64.b64decode(record["SecretBinary"]).decode() == fp(b"\x00bin")
    parsed = parse("secretsmanager", "GetSecretValue", agent.body)
    assert parsed["SecretString"] == AGENT_MARKER
    assert parsed["SecretBinary"] == AGENT_MARKER.encode()  # valid base64, decoded by the SDK
    assert fingerprint_free(agent.body) and "hunter2" not in agent.body.decode()
    assert parsed["CreatedDate"].year >= 2023
    assert agent.masked == {("agent", "SecretString", "policy"): 1, ("agent", "SecretBinary", "policy"): 1}


def test_the_agents_copy_does_not_tell_two_secrets_apart():
    """Two different secrets in one answer: the agent reads AGENT_MARKER for both, and no
    fingerprint (which would tell it whether they are equal, or confirm a guess it wrote); the
    record keeps a fingerprint for each, and they differ."""
    m = Masker(KEY)
    body = json.dumps({"SecretValues": [{"Name": "db", "SecretString": "db-pa55word"},
                                        {"Name": "api", "SecretString": "api-t0ken"}]}).encode()
    c = call("secretsmanager", "BatchGetSecretValue")
    policy = ("SecretValues[].SecretString",)
    part, agent = m.response(c, status=200, body=body, policy=policy)
    for made in (agent, m.agent_copy(c, headers=[], body=body, policy=policy)):  # from the record's parse, or alone
        values = parse("secretsmanager", "BatchGetSecretValue", made.body)["SecretValues"]
        assert [(v["Name"], v["SecretString"]) for v in values] == [("db", AGENT_MARKER), ("api", AGENT_MARKER)]
        assert fingerprint_free(made.body) and not MARKER_RE.search(made.body.decode())
        assert b"db-pa55word" not in made.body and b"api-t0ken" not in made.body
        assert made.masked == {("agent", "SecretValues[].SecretString", "policy"): 2}
    kept = [v["SecretString"] for v in json.loads(part.body)["SecretValues"]]
    assert kept == [fp("db-pa55word"), fp("api-t0ken")] and kept[0] != kept[1]


def test_without_a_policy_path_the_agent_copy_is_upstreams():
    m = Masker(KEY)
    body = b'{"SecretString": "s3cr3t", "Name": "db"}'
    part, agent = m.response(call("secretsmanager", "GetSecretValue"), status=200, body=body)
    assert agent is None and "s3cr3t" not in part.body
    part, agent = m.response(call("secretsmanager", "GetSecretValue"), status=200, body=body,
                             policy=("Parameter.Value",))  # a path that is not in this response
    assert agent is None


def test_a_response_with_nothing_to_mask_is_kept_as_sent():
    m = Masker(KEY)
    body = b'{"TableNames": ["a", "b"],  "LastEvaluatedTableName": "b"}'
    part, agent = m.response(call("dynamodb", "ListTables"), status=200, body=body, policy=("Item.ssn",))
    assert part.body == body.decode() and agent is None and not part.masked


def test_dynamodb_attribute_named_by_policy_and_the_crc32():
    m = Masker(KEY)
    body = json.dumps({"Item": {"k": {"S": "alice"}, "ssn": {"N": "123456789"}, "card": {"B": "AAEC"},
                                "tags": {"SS": ["a"]}}}).encode()
    policy = ("Item.ssn", "Item.card", "Items[].ssn")
    part, agent = m.response(call("dynamodb", "GetItem"), status=200, body=body, policy=policy,
                             headers=[("x-amz-crc32", str(zlib.crc32(body)))])
    item = json.loads(agent.body)["Item"]
    assert item["ssn"] == AGENT_ITEM  # a string attribute, whatever the type was
    assert item["card"] == AGENT_ITEM
    assert item["k"] == {"S": "alice"} and item["tags"] == {"SS": ["a"]}
    assert fingerprint_free(agent.body)
    assert json.loads(part.body)["Item"] == {"k": {"S": "alice"}, "ssn": {"S": fp("123456789")},
                                             "card": {"S": fp(b"\x00\x01\x02")}, "tags": {"SS": ["a"]}}
    changes = checksum_headers(["Content-Type", "x-amz-crc32", "x-amz-checksum-sha256", "x-amz-checksum-type"],
                               agent.body)
    assert changes == {"x-amz-crc32": str(zlib.crc32(agent.body)), "x-amz-checksum-sha256": None}
    rows = json.dumps({"Items": [{"ssn": {"S": "1"}}, {"ssn": {"S": "2"}, "x": {"S": "y"}}], "Count": 2}).encode()
    part, agent = m.response(call("dynamodb", "Query"), status=200, body=rows, policy=policy)
    assert [i["ssn"] for i in json.loads(agent.body)["Items"]] == [AGENT_ITEM, AGENT_ITEM]
    assert [i["ssn"]["S"] for i in json.loads(part.body)["Items"]] == [fp("1"), fp("2")]


@pytest.mark.parametrize("service, operation, body, where", [
    ("dynamodb", "BatchGetItem", {"Responses": {"t": [{"k": {"S": "a"}, "ssn": {"S": "1"}}]},
                                  "UnprocessedKeys": {"t": {"Keys": [{"ssn": {"S": "2"}}]}}},
     ["Responses.t[0].ssn", "UnprocessedKeys.t.Keys[0].ssn"]),
    ("dynamodb", "TransactGetItems", {"Responses": [{"Item": {"ssn": {"S": "1"}}}]}, ["Responses[0].Item.ssn"]),
    ("dynamodb", "BatchExecuteStatement", {"Responses": [{"Item": {"ssn": {"S": "1"}}, "TableName": "t"}]},
     ["Responses[0].Item.ssn"]),
    ("dynamodb", "UpdateItem", {"Attributes": {"ssn": {"S": "1"}}}, ["Attributes.ssn"]),
    ("dynamodb", "ExecuteStatement", {"Items": [{"ssn": {"S": "1"}}]}, ["Items[0].ssn"]),  # UPDATE ... RETURNING
    ("dynamodb", "Scan", {"Items": [{"ssn": {"S": "1"}}], "LastEvaluatedKey": {"ssn": {"S": "2"}}},
     ["Items[0].ssn", "LastEvaluatedKey.ssn"]),
    ("dynamodbstreams", "GetRecords", {"Records": [{"dynamodb": {"Keys": {"ssn": {"S": "1"}},
                                                                 "NewImage": {"ssn": {"S": "2"}, "k": {"S": "a"}},
                                                                 "OldImage": {"ssn": {"S": "3"}}}}]},
     ["Records[0].dynamodb.Keys.ssn", "Records[0].dynamodb.NewImage.ssn", "Records[0].dynamodb.OldImage.ssn"]),
])
def test_a_path_into_an_item_names_the_attribute_wherever_an_item_comes_back(service, operation, body, where):
    """``Item.ssn`` masks the attribute ssn in every item the call returns (batches, transactions,
    PartiQL, a write's old values, keys, stream images), not only at GetItem's ``Item``: a rule's
    path holds for every operation the rule matches."""
    m = Masker(KEY)
    part, agent = m.response(call(service, operation), status=200, body=json.dumps(body).encode(), policy=("Item.ssn",))
    got = json.loads(agent.body)
    record = json.loads(part.body)
    for path in where:
        assert jmespath.search(path, got) == AGENT_ITEM, (path, got)
        assert MARKER_RE.fullmatch(jmespath.search(path, record)["S"]), (path, record)
    assert fingerprint_free(agent.body)
    assert jmespath.search(where[0].rsplit(".", 1)[0] + ".k", got) in (None, {"S": "a"})  # other attributes kept
    assert all(n not in part.body for n in ('"1"', '"2"', '"3"'))


def test_what_a_write_echoes_is_masked_for_the_agent_but_not_what_an_operation_is_called_for():
    """A write's answer that echoes a curated secret (UpdateFunctionConfiguration's environment,
    CreateAccessKey's secret) is masked for the agent whatever the rules say; a KMS plaintext is
    what GenerateDataKey or Decrypt is called for: the rules decide (secrets.yaml masks Decrypt's).
    A masked blob is no key: the agent's marker has no AES key length."""
    m = Masker(KEY)
    assert "Environment.Variables" in m.curated_outputs("lambda", "UpdateFunctionConfiguration")
    assert "AccessKey.SecretAccessKey" in m.curated_outputs("iam", "CreateAccessKey")
    for operation in ("Decrypt", "GenerateDataKey", "GenerateRandom", "GenerateDataKeyPair"):
        assert m.curated_outputs("kms", operation) == (), operation
    assert len(AGENT_MARKER.encode()) not in (16, 24, 32)


def test_every_lambda_answer_that_is_a_function_configuration_has_its_environment_masked():
    """UpdateFunctionCode answers with the function's configuration, environment included, as
    UpdateFunctionConfiguration does: it was handed to the agent unmasked. Every operation whose
    answer is that shape, from the model, so that the next one is not missed."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lambda")
    ops = [op for op in model.operation_names
           if (model.operation_model(op).output_shape or types.SimpleNamespace(name=None)).name == "FunctionConfiguration"]
    assert "UpdateFunctionCode" in ops
    m = Masker(KEY)
    assert [op for op in ops if "Environment.Variables" not in m.curated_outputs("lambda", op)] == []


def test_a_function_logs_tail_is_masked_in_the_record_and_left_to_the_agent_who_asked_for_it():
    """Invoke with LogType=Tail answers the log's last 4 KB base64 in X-Amz-Log-Result, where the
    detectors cannot read what the function printed (a password, a key): the record keeps its
    marker; the agent, who asked for the log, gets it unless a rule masks it."""
    m = Masker(KEY)
    log = base64.b64encode(b"START RequestId: 1\npassword=hunter2-in-a-log\nEND RequestId: 1\n").decode()
    part, agent = m.response(call("lambda", "Invoke"), status=200, body=b'{"ok": true}',
                             headers=[("Content-Type", "application/json"), ("X-Amz-Log-Result", log)])
    assert log not in str(part.headers) and ("request.headers" not in str(part.masked))
    assert dict(part.headers)["X-Amz-Log-Result"].startswith("agentgate:masked")
    assert agent is None or log in str(agent.headers)


def test_the_record_keeps_no_environment_a_job_or_model_is_created_with():
    m = Masker(KEY)
    body = json.dumps({"jobDefinitionName": "nightly", "type": "container", "containerProperties": {
        "image": "app:1", "environment": [{"name": "DB_PASSWORD", "value": "Hunter2-batch"}]}}).encode()
    part = m.request(call("batch", "RegisterJobDefinition"), body=body)
    assert "Hunter2-batch" not in part.body and '"DB_PASSWORD"' in part.body
    body = json.dumps({"ModelName": "m", "ExecutionRoleArn": "arn:aws:iam::123456789012:role/r",
                       "PrimaryContainer": {"Image": "i", "Environment": {"API_TOKEN": "Hunter2-model"}}}).encode()
    part = m.request(call("sagemaker", "CreateModel"), body=body)
    assert "Hunter2-model" not in part.body and '"API_TOKEN"' in part.body


def test_the_record_masks_policy_paths_in_requests_too():
    m = Masker(KEY)
    c = call("dynamodb", "PutItem", params={"TableName": "t", "Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}})
    body = json.dumps({"TableName": "t", "Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}}).encode()
    part = m.request(c, body=body, policy=("Item.ssn",))
    assert "123-45-6789" not in part.body and part.masked == {("request", "Item.ssn", "policy"): 1}
    params, counts = m.params(c, ("Item.ssn",))
    assert params["Item"]["ssn"] == {"S": fp("123-45-6789")} and c.params["Item"]["ssn"] == {"S": "123-45-6789"}
    assert counts == {("params", "Item.ssn", "policy"): 1}


def test_lambda_environment_values_are_masked_and_names_kept_for_the_agent():
    m = Masker(KEY)
    body = json.dumps({"Configuration": {"FunctionName": "f", "Environment": {
        "Variables": {"DB_PASSWORD": "pw", "STAGE": "prod"}}}, "Code": {"Location": "https://x"}}).encode()
    part, agent = m.response(call("lambda", "GetFunction"), status=200, body=body,
                             policy=("Configuration.Environment.Variables",))
    assert parse("lambda", "GetFunction", agent.body)["Configuration"]["Environment"]["Variables"] == {
        "DB_PASSWORD": AGENT_MARKER, "STAGE": AGENT_MARKER}
    assert fingerprint_free(agent.body)
    record = json.loads(part.body)["Configuration"]["Environment"]["Variables"]
    assert sorted(record.values()) == sorted([fp("pw"), fp("prod")])
    assert "DB_PASSWORD" not in record  # the model marks the names sensitive too: the record hides them


def test_ssm_secure_string_values_are_curated_even_without_the_trait():
    model = copy.deepcopy(LOADER.load_service_model("ssm", "service-2"))
    model["shapes"]["PSParameterValue"].pop("sensitive")
    m = Masker(KEY, models=lambda name: model)
    body = json.dumps({"Parameters": [{"Name": "/a", "Type": "SecureString", "Value": "s3cure"},
                                      {"Name": "/b", "Type": "String", "Value": "eu-west-1"}]}).encode()
    part, _ = m.response(call("ssm", "GetParametersByPath"), status=200, body=body)
    values = [p["Value"] for p in json.loads(part.body)["Parameters"]]
    assert values == [fp("s3cure"), "eu-west-1"]
    assert part.masked == {("response", "Parameters[].Value", "curated"): 1}


# -- XML ------------------------------------------------------------------------------------------

STS = (b'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
       b'<Credentials><AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>'
       b'<SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>'
       b'<SessionToken>FQoGZXIvYXdzEBYaDHhBTKtc2XHV5NfpGCKEAdyv8</SessionToken>'
       b'<Expiration>2026-07-11T19:55:29.611Z</Expiration></Credentials>'
       b'<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn>'
       b'<AssumedRoleId>AROA3XFRBF535PLBIFPI4:s</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>'
       b'<ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>'
       b'</AssumeRoleResponse>')


def test_query_xml_credentials_are_masked_by_splicing():
    m = Masker(KEY)
    part, agent = m.response(call("sts", "AssumeRole"), status=200, body=STS, policy=("Credentials.SessionToken",))
    assert "wJalrXUtnFEMI" not in part.body and "FQoGZXIvYXdz" not in part.body
    assert part.masked == {("response", "Credentials.SecretAccessKey", "sensitive"): 1,
                           ("response", "Credentials.SessionToken", "curated"): 1}
    assert part.body.startswith('<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">')
    assert part.body.replace(fp("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"), "S").replace(
        fp("FQoGZXIvYXdzEBYaDHhBTKtc2XHV5NfpGCKEAdyv8"), "T") == STS.decode().replace(
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "S").replace("FQoGZXIvYXdzEBYaDHhBTKtc2XHV5NfpGCKEAdyv8", "T")
    parsed = parse("sts", "AssumeRole", agent.body)
    assert parsed["Credentials"]["SessionToken"] == AGENT_MARKER and fingerprint_free(agent.body)
    assert parsed["Credentials"]["SecretAccessKey"] == "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"  # not in the policy
    assert parsed["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/r/s"


def test_ec2_user_data_stays_base64():
    m = Masker(KEY)
    script = base64.b64encode(b"#!/bin/sh\nexport PW=x\n").decode()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstanceAttributeResponse '
            f'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId><instanceId>i-0123456789abcdef0'
            f'</instanceId><userData><value>{script}</value></userData></DescribeInstanceAttributeResponse>').encode()
    part, agent = m.response(call("ec2", "DescribeInstanceAttribute"), status=200, body=body, policy=("UserData.Value",))
    parsed = parse("ec2", "DescribeInstanceAttribute", agent.body)
    assert parsed["UserData"]["Value"] == AGENT_B64 and fingerprint_free(agent.body)
    assert parsed["InstanceId"] == "i-0123456789abcdef0"
    assert script not in part.body and part.masked == {("response", "UserData.Value", "curated"): 1}
    assert base64.b64encode(fp(b"#!/bin/sh\nexport PW=x\n").encode()).decode() in part.body  # the record's


def test_xml_with_entities_is_not_expanded():
    m = Masker(KEY)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            b'<AssumeRoleResponse><AssumeRoleResult><Credentials><SessionToken>&lol2;</SessionToken>'
            b'</Credentials></AssumeRoleResult></AssumeRoleResponse>')
    part, agent = m.response(call("sts", "AssumeRole"), status=200, body=bomb, policy=("Credentials.SessionToken",))
    assert part.note.startswith("not valid XML") and "DTD" in part.note
    assert part.body is None and "not kept" in part.note  # nothing expanded; the credentials are sensitive
    assert agent.withheld.startswith("DTDForbidden") and agent.body is None and "agent's copy not masked" in part.note


def test_headers_with_the_sensitive_trait_are_masked():
    m = Masker(KEY)
    key = base64.b64encode(b"k" * 32).decode()
    part = m.request(call("s3", "GetObject", params={"Bucket": "b", "Key": "k"}), body=None, headers=[
        ("Host", "b.s3.amazonaws.com"), ("x-amz-server-side-encryption-customer-key", key),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=..."), ("X-Amz-Security-Token", "tok")])
    assert part.headers == [("Host", "b.s3.amazonaws.com"), ("x-amz-server-side-encryption-customer-key", fp(key))]
    assert part.masked == {("request.headers", "SSECustomerKey", "sensitive"): 1}


def test_chat_participants_bearer_tokens_are_masked_in_headers_and_bodies():
    """Amazon Connect's participant calls carry a bearer token in X-Amz-Bearer, which the model
    does not mark; whoever reads it from the record speaks as the participant."""
    m = Masker(KEY)
    token = "QVFJREFIaGRlbW9Db25uZWN0aW9uVG9rZW4"
    part = m.request(call("connectparticipant", "SendMessage", params={"ConnectionToken": token}),
                     body=b'{"ContentType": "text/plain", "Content": "hello"}',
                     headers=[("Host", "participant.connect.us-east-1.amazonaws.com"), ("X-Amz-Bearer", token)])
    assert part.headers == [("Host", "participant.connect.us-east-1.amazonaws.com"), ("X-Amz-Bearer", fp(token))]
    assert part.masked == {("request.headers", "ConnectionToken", "curated"): 1} and "hello" in part.body
    body = json.dumps({"ConnectionCredentials": {"ConnectionToken": token, "Expiry": "2026-11-27T20:00:00Z"},
                       "Websocket": {"ConnectionExpiry": "2026-11-27T20:00:00Z"}}).encode()
    part, _ = m.response(call("connectparticipant", "CreateParticipantConnection"), status=200, body=body)
    assert token not in part.body and json.loads(part.body)["ConnectionCredentials"]["ConnectionToken"] == fp(token)
    body = json.dumps({"ContactId": "c-1", "ParticipantId": "p-1", "ParticipantToken": token}).encode()
    part, _ = m.response(call("connect", "StartChatContact"), status=200, body=body)
    assert token not in part.body and json.loads(part.body)["ContactId"] == "c-1"


def test_form_requests_are_masked_pair_by_pair():
    m = Masker(KEY)
    body = b"Action=CreateLoginProfile&Version=2010-05-08&UserName=bob&Password=Hunter2%21x"
    part = m.request(call("iam", "CreateLoginProfile"), body=body)
    assert part.body == f"Action=CreateLoginProfile&Version=2010-05-08&UserName=bob&Password={fp('Hunter2!x')}"
    user_data = base64.b64encode(b"#!/bin/sh\npassword=x\n").decode()
    body = f"Action=RunInstances&Version=2016-11-15&ImageId=ami-1&MinCount=1&MaxCount=1&UserData={user_data}".encode()
    part = m.request(call("ec2", "RunInstances"), body=body)
    assert user_data not in part.body and part.masked == {("request", "UserData", "sensitive"): 1}
    assert "ImageId=ami-1" in part.body


def test_a_json_body_declared_as_a_form_is_masked_as_the_json_it_is():
    """The classifier reads a json call's body as JSON whatever Content-Type says; so does masking
    (a form reading kept the secret in the record)."""
    m = Masker(KEY)
    body = b'{"Name": "db", "SecretString": "PLANTED-hunter2"}'
    part = m.request(call("secretsmanager", "CreateSecret"), body=body,
                     content_type="application/x-www-form-urlencoded")
    assert "PLANTED-hunter2" not in (part.body or "") and json.loads(part.body)["Name"] == "db"
    assert part.masked == {("request", "SecretString", "sensitive"): 1}


def test_the_url_keeps_no_value_its_parameters_mask():
    """A sensitive URI label or a header member given in the query (an SSE-C key), as sent, is
    replaced in the record's URL by the marker masking gave it; a JWT anywhere in it too."""
    m = Masker(KEY)
    key = base64.b64encode(b"k" * 32).decode()
    params = {"Bucket": "b", "Key": "a/b", "SSECustomerKey": key}
    masked = {**params, "SSECustomerKey": fp(key)}
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IiLCJleHAiOjE4MDAwMDAwMDB9.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZy1lbm91Z2g"
    path, query, n = m.url_parts(f"/b/a/b/{jwt}", "x-amz-server-side-encryption-customer-key=" + quote(key, safe=""),
                                 params, masked)
    assert key not in query and quote(key, safe="") not in query and fp(key) in query
    assert jwt not in path and path.startswith("/b/a/b/agentgate:masked:hmac-") and n == 2
    assert m.url_parts("/b/k", "", params, None) == ("/b/k", "", 0)


def test_query_strings_are_masked():
    m = Masker(KEY)
    c = call("chime", "ListAccounts")
    got = m.request(c, query="user-email=alice%40example.com&max-results=5", body=None)
    assert got.query == f"user-email={fp('alice@example.com')}&max-results=5"
    got = m.request(call("s3", "ListObjectsV2"), query="list-type=2&prefix=a", body=None)
    assert got.query is None  # nothing masked: the recorder keeps its own


# -- free text ------------------------------------------------------------------------------------

SECRETS = [
    ("aws-secret-access-key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("aws-secret-access-key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("private-key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"),
    ("private-key", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),  # cut short
    ("jwt", "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"),
    ("aws-session-token", "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD"),
    ("url-password", "mongodb+srv://app:S3cr3tPass@cluster0.example.net/db"),
    ("url-password", "redis://:authpass123@cache:6379/0"),
    ("assignment", "Server=db;Database=orders;User Id=sa;Password=Str0ng!Pass;"),
    ("assignment", "DB_PASSWORD=hunter2hunter2"),
    ("assignment", 'config: {"client_secret": "abc123def456"}'),
    ("assignment", "https://b.s3.amazonaws.com/k?X-Amz-Signature=0123456789abcdef&X-Amz-Date=20260101T000000Z"),
    ("bearer-token", "Authorization: Bearer 0123456789abcdefghij"),
    ("assignment", "machine git.example.com login deploy password Hunter2Prod"),  # .netrc
    ("assignment", "<config><password>Hunter2Prod</password></config>"),
    ("vendor-token", "GH=ghp_" + "a1B2c3D4e5" * 4),
    ("vendor-token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    ("vendor-token", "gitlab glpat-AbCdEfGhIjKlMnOpQrSt"),
    ("vendor-token", "slack xoxb-123456789012-abcdefABCDEF"),
    ("vendor-token", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("vendor-token", "maps AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    ("vendor-token", "npm npm_" + "AbCdEf0123" * 3 + "AbCdEf"),
    ("vendor-token", "model sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx"),
]
NOT_SECRETS = [
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf",
    "arn:aws:iam::123456789012:role/service-role/AWSLambdaBasicExecutionRole-0123456789",
    "123456789012", "4f2a4c1e-7d6b-4e1f-9a3b-1c2d3e4f5a6b", "2026-01-01T00:00:00.000Z", "i-0123456789abcdef0",
    "AKIAIOSFODNN7EXAMPLE", "AROA3XFRBF535PLBIFPI4:session", "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "NextToken=eyJ2IjoiMSJ9", "The password must be at least 8 characters long.",
    "https://sqs.us-east-1.amazonaws.com/123456789012/orders", "SecretId=prod/db", "token_type=bearer",
    "s3://bucket/prefix/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789/file.txt",
    "Use your login and password to sign in.", "<PasswordPolicy><MinimumLength>8</MinimumLength></PasswordPolicy>",
    "ghost_town", "sk_test_notlive", "aws-sdk-ant", "agentgate:masked", "db_password=agentgate:masked",
]


@pytest.mark.parametrize("detector,text", SECRETS)
def test_detectors_find_secrets(detector, text):
    m = Masker(KEY)
    masked, counts = m.mask_text(text, "t")
    assert detectors.suspicious(text)
    assert [k[2] for k in counts] == [detector]
    assert MARKER_RE.search(masked)


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_detectors_leave_identifiers_alone(text):
    assert detectors.find(text) == [] and Masker(KEY).mask_text(text)[0] == text


def test_an_assignment_is_a_value_on_the_keys_line_not_the_next_line():
    """A CloudFormation template's ``DbPassword:`` opens the parameter's mapping and an env file's
    empty ``DB_PASSWORD=`` holds nothing: the line after either is no password, and the record
    keeps it (before, ``Type:`` and ``DB_HOST=db.example.com`` became markers)."""
    template = ("Parameters:\n  DbPassword:\n    Type: String\n    NoEcho: true\nResources:\n  Db:\n"
                "    Type: AWS::RDS::DBInstance\n    Properties:\n      MasterUserPassword: Hunter2Prod\n")
    masked, counts = Masker(KEY).mask_text(template, "TemplateBody")
    assert "  DbPassword:\n    Type: String\n" in masked and "Hunter2Prod" not in masked
    assert [k[2] for k in counts] == ["assignment"] and MARKER_RE.search(masked.split("MasterUserPassword: ")[1])
    env = "DB_PASSWORD=\nDB_HOST=db.example.com\n"
    assert detectors.find(env) == [] and Masker(KEY).mask_text(env)[0] == env



# -- CloudFormation templates ---------------------------------------------------------------------

TEMPLATE_YAML = """\
# the application's stack
Parameters:
  AdminPin:
    Type: String
    NoEcho: true
    Default: qQzjcN8heSg1usSkN  # kept out of the console
    AllowedValues: [qQzjcN8heSg1usSkN, 'Wq7pLm2xVb9kRt4Zs']
  Env:
    Type: String
    Default: production
Resources:
  Literal:
    Type: AWS::SecretsManager::Secret
    Properties:
      Name: app
      SecretString: '{"user": "app", "pin": "Hq4mZp8TvX2nLk7Rw"}'
  Resolved:
    Type: AWS::SecretsManager::Secret
    Properties:
      SecretString: '{{resolve:secretsmanager:prod/app:SecretString:pin}}'
  Referenced:
    Type: AWS::SecretsManager::Secret
    Properties:
      SecretString: !Ref AdminPin
  Db:
    Type: AWS::RDS::DBInstance
    Properties:
      Engine: postgres
      MasterUserPassword: !Sub '{{resolve:ssm-secure:/db/pw:1}}'
  Fn:
    Type: AWS::Lambda::Function
    Properties:
      Environment:
        Variables:
          STRIPE_SIGNING: Zx8vQm3kLp7tRw2nB
          TABLE: !GetAtt Table.Arn
"""
TEMPLATE_SECRETS = {"qQzjcN8heSg1usSkN": "Parameters.AdminPin.Default",
                    "Wq7pLm2xVb9kRt4Zs": "Parameters.AdminPin.AllowedValues[]",
                    '{"user": "app", "pin": "Hq4mZp8TvX2nLk7Rw"}': "Resources.Literal.Properties.SecretString",
                    "Zx8vQm3kLp7tRw2nB": "Resources.Fn.Properties.Environment.Variables.STRIPE_SIGNING"}


def _template_call(operation: str, template: str):
    return call("cloudformation", operation, params={"StackName": "app", "TemplateBody": template})


def test_a_templates_noecho_defaults_and_secret_properties_are_masked_in_the_record_the_rest_kept_as_written():
    """A YAML template's NoEcho parameter's ``Default`` and ``AllowedValues``, a literal
    ``SecretString``, a function's environment: no detector finds them (before, the record kept them
    in clear). Each becomes its marker in its place, in the parameters and the query body; a
    ``{{resolve:...}}``, a ``!Ref``, a ``!Sub``, a ``!GetAtt``, an ordinary parameter's default, the
    comments and the layout stay as written, and the masked template still parses."""
    m = Masker(KEY)
    expected = TEMPLATE_YAML
    for secret in TEMPLATE_SECRETS:
        quoted = f"'{secret}'" if f"'{secret}'" in expected else secret
        expected = expected.replace(quoted, json.dumps(fp(secret)))
    params, counts = m.params(_template_call("CreateStack", TEMPLATE_YAML))
    assert params["TemplateBody"] == expected and params["StackName"] == "app"
    assert counts == Counter({("params", f"TemplateBody.{path}", "template-noecho" if path.startswith("Param")
                               else "template-property"): 1 for path in TEMPLATE_SECRETS.values()}) + Counter(
        {("params", "TemplateBody.Parameters.AdminPin.AllowedValues[]", "template-noecho"): 1})  # both values
    for kept in ("!Ref AdminPin", "'{{resolve:secretsmanager:prod/app:SecretString:pin}}'", "!GetAtt Table.Arn",
                 "!Sub '{{resolve:ssm-secure:/db/pw:1}}'", "Default: production", "# kept out of the console"):
        assert kept in params["TemplateBody"]
    yaml.compose(params["TemplateBody"], Loader=templates._Loader)
    body = urlencode({"Action": "UpdateStack", "Version": "2010-05-15", "StackName": "app",
                      "TemplateBody": TEMPLATE_YAML}).encode()
    part = m.request(_template_call("UpdateStack", TEMPLATE_YAML), body=body)
    assert parse_qs(part.body)["TemplateBody"] == [expected] and part.note is None
    assert sum(part.masked.values()) == 5


def test_a_json_templates_secrets_are_masked_in_the_record_and_its_text_kept_byte_for_byte():
    """The same in a JSON template (tabs and all), in a request and in GetTemplate's and
    DescribeStackSet's XML answers; the agent's copy, which no rule masks, is the template as AWS
    returns it: as written."""
    m = Masker(KEY)
    template = ('{\n\t"Parameters": {"Pin": {"Type": "String", "NoEcho": "true", "Default": "qQzjcN8heSg1usSkN"},\n'
                '\t\t"Open": {"Type": "String", "Default": "qQzjcN8heSg1usSkM"}},\n'
                '\t"Resources": {\n'
                '\t\t"S": {"Type": "AWS::SecretsManager::Secret", "Properties": {"SecretString": "Hq4m\\u005aZp8TvX"}},\n'
                '\t\t"R": {"Type": "AWS::SecretsManager::Secret", "Properties": {"SecretString": {"Ref": "Pin"}}},\n'
                '\t\t"U": {"Type": "AWS::IAM::User", "Properties": {"LoginProfile": {"Password": "Zx8vQm3kLp7tRw2nB"}}},\n'
                '\t\t"D": {"Type": "AWS::RDS::DBInstance", "Properties": {"MasterUserPassword": "Mb5nQ2wLz8xKp4tRv"}}\n'
                '\t}\n}\n')
    expected = (template.replace('"qQzjcN8heSg1usSkN"', json.dumps(fp("qQzjcN8heSg1usSkN")))
                .replace('"Hq4m\\u005aZp8TvX"', json.dumps(fp("Hq4mZZp8TvX")))
                .replace('"Zx8vQm3kLp7tRw2nB"', json.dumps(fp("Zx8vQm3kLp7tRw2nB")))
                .replace('"Mb5nQ2wLz8xKp4tRv"', json.dumps(fp("Mb5nQ2wLz8xKp4tRv"))))
    params, counts = m.params(_template_call("ValidateTemplate", template))
    assert params["TemplateBody"] == expected and json.loads(expected)["Parameters"]["Open"]["Default"] == (
        "qQzjcN8heSg1usSkM")  # a parameter without NoEcho is no secret
    assert sum(counts.values()) == 4
    for operation, result, wrapper in (("GetTemplate", "GetTemplateResult", "{}"),
                                       ("DescribeStackSet", "DescribeStackSetResult", "<StackSet>{}</StackSet>")):
        xml = (f'<{operation}Response xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><{result}>'
               + wrapper.format(f"<TemplateBody>{xml_escape(template)}</TemplateBody>")
               + f"</{result}><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></{operation}Response>")
        part, copy = m.response(call("cloudformation", operation), status=200, body=xml.encode())
        parsed = parse("cloudformation", operation, part.body.encode())
        body = parsed["StackSet"]["TemplateBody"] if operation == "DescribeStackSet" else parsed["TemplateBody"]
        assert body == expected and copy is None and sum(part.masked.values()) == 4


def test_a_template_that_does_not_parse_is_read_by_the_detectors_as_before():
    """A template that is neither JSON nor YAML (cut short here) is text: the detectors read it as
    they did, an ``assignment`` still masked, a NoEcho default they cannot see kept."""
    m = Masker(KEY)
    broken = ("Parameters:\n  Pin:\n    NoEcho: true\n    Default: qQzjcN8heSg1usSkN\n  Db: [\n"
              "Resources:\n  Db:\n    Properties:\n      MasterUserPassword: Hunter2Prod\n")
    assert templates.secrets(broken) is None
    params, counts = m.params(_template_call("CreateStack", broken))
    assert "qQzjcN8heSg1usSkN" in params["TemplateBody"] and "Hunter2Prod" not in params["TemplateBody"]
    assert [k[2] for k in counts] == ["assignment"]
    # nor is a template read as one outside CloudFormation's TemplateBody
    assert m.params(call("sqs", "SendMessage", params={"QueueUrl": "q", "MessageBody": TEMPLATE_YAML}))[0][
        "MessageBody"] == TEMPLATE_YAML


def _cfn_xml(operation: str, result: str) -> bytes:
    return (f'<{operation}Response xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><{operation}Result>'
            f'{result}</{operation}Result><ResponseMetadata><RequestId>0be7b6e8-e4a0-11e0-a5bd-9f8d5a7dbc91'
            f'</RequestId></ResponseMetadata></{operation}Response>').encode()


def test_a_noecho_parameters_default_as_validate_template_describes_it_is_masked_in_the_record():
    """ValidateTemplate's answer as the API reference documents it (moto answers ValidateTemplate
    with no parameters, so this is fed the documented form), with a NoEcho parameter beside the
    documented ones: its ``DefaultValue`` is the secret its template holds, named as none
    (``AdminPin``); before, the record kept it. It is masked in the record, the others' defaults
    and every other member kept; the agent's copy, which no rule masks, is AWS's answer."""
    m = Masker(KEY)
    members = [("false", "InstanceType", "Type of instance to launch", "m1.small"),
               ("true", "AdminPin", "The operator's PIN", "qQzjcN8heSg1usSkN"),
               ("false", "WebServerPort", "The TCP port for the Web Server", "8888")]
    body = _cfn_xml("ValidateTemplate", "<Description></Description><Parameters>" + "".join(
        f"<member><NoEcho>{n}</NoEcho><ParameterKey>{k}</ParameterKey><Description>{d}</Description>"
        f"<DefaultValue>{v}</DefaultValue></member>" for n, k, d, v in members)
        + "<member><NoEcho>false</NoEcho><ParameterKey>KeyName</ParameterKey><Description>Name of an existing EC2"
          " KeyPair</Description></member></Parameters>")
    part, copy = m.response(call("cloudformation", "ValidateTemplate"), status=200, body=body)
    assert copy is None
    assert part.body == body.decode().replace("qQzjcN8heSg1usSkN", fp("qQzjcN8heSg1usSkN"))
    assert part.masked == Counter({("response", "Parameters[].DefaultValue", "curated"): 1})
    parsed = parse("cloudformation", "ValidateTemplate", part.body.encode())["Parameters"]
    assert [p.get("DefaultValue") for p in parsed] == ["m1.small", fp("qQzjcN8heSg1usSkN"), "8888", None]


def test_a_noecho_parameters_default_and_allowed_values_in_get_template_summary_are_masked_in_the_record():
    """GetTemplateSummary's ParameterDeclarations (the form moto answers with, and AWS's): a NoEcho
    parameter's ``DefaultValue`` and ``ParameterConstraints.AllowedValues`` are masked in the record;
    an ordinary parameter's, and a NoEcho parameter's ``NoEcho``, key and type, are kept."""
    m = Masker(KEY)
    body = _cfn_xml("GetTemplateSummary", (
        "<Parameters><member><ParameterKey>AdminPin</ParameterKey><DefaultValue>qQzjcN8heSg1usSkN</DefaultValue>"
        "<ParameterType>String</ParameterType><NoEcho>true</NoEcho><Description/><ParameterConstraints>"
        "<AllowedValues><member>qQzjcN8heSg1usSkN</member><member>Wq7pLm2xVb9kRt4Zs</member></AllowedValues>"
        "</ParameterConstraints></member><member><ParameterKey>Env</ParameterKey><DefaultValue>production"
        "</DefaultValue><ParameterType>String</ParameterType><NoEcho>false</NoEcho><ParameterConstraints>"
        "<AllowedValues><member>production</member><member>staging</member></AllowedValues></ParameterConstraints>"
        "</member></Parameters><ResourceTypes><member>AWS::SQS::Queue</member></ResourceTypes>"))
    part, copy = m.response(call("cloudformation", "GetTemplateSummary"), status=200, body=body)
    assert copy is None
    assert part.body == body.decode().replace("qQzjcN8heSg1usSkN", fp("qQzjcN8heSg1usSkN")).replace(
        "Wq7pLm2xVb9kRt4Zs", fp("Wq7pLm2xVb9kRt4Zs"))
    assert part.masked == Counter({("response", "Parameters[].DefaultValue", "curated"): 1,
                                   ("response", "Parameters[].ParameterConstraints", "curated"): 2})
    [pin, env] = parse("cloudformation", "GetTemplateSummary", part.body.encode())["Parameters"]
    assert pin["NoEcho"] is True and pin["ParameterKey"] == "AdminPin" and pin["ParameterType"] == "String"
    assert env["DefaultValue"] == "production" and env["ParameterConstraints"]["AllowedValues"] == [
        "production", "staging"]


NOECHO_TEMPLATE = ('{"Parameters": {"AdminPin": {"Type": "String", "NoEcho": true},'
                   ' "Env": {"Type": "String", "Default": "production"}},'
                   ' "Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}')


def test_a_value_given_to_a_noecho_parameter_beside_its_template_is_masked_in_the_record():
    """CreateStack (and UpdateStack, CreateChangeSet, EstimateTemplateCost, CreateStackSet,
    UpdateStackSet) give parameters their values beside the template: the value of a parameter the
    template marks NoEcho is a secret, named as none here (``AdminPin``), and is masked in the
    parameters and the form; an ordinary parameter's value, one kept from before
    (``UsePreviousValue``), ``****`` and a ``{{resolve:...}}`` reference are kept. A key the
    template does not mark NoEcho, or a call without a template (``UsePreviousTemplate``), is
    masked by its name alone."""
    m = Masker(KEY)
    parameters = [{"ParameterKey": "AdminPin", "ParameterValue": "qQzjcN8heSg1usSkN"},
                  {"ParameterKey": "Env", "ParameterValue": "staging"},
                  {"ParameterKey": "AdminPin", "UsePreviousValue": True},
                  {"ParameterKey": "AdminPin", "ParameterValue": "****"},
                  {"ParameterKey": "AdminPin", "ParameterValue": "{{resolve:ssm-secure:/app/pin:1}}"}]
    for operation in ("CreateStack", "UpdateStack", "CreateChangeSet", "EstimateTemplateCost", "CreateStackSet",
                      "UpdateStackSet"):
        name = "StackSetName" if "StackSet" in operation else "StackName"
        params = {name: "app", "TemplateBody": NOECHO_TEMPLATE, "Parameters": parameters}
        masked, counts = m.params(call("cloudformation", operation, params=params))
        assert masked["Parameters"] == [{"ParameterKey": "AdminPin", "ParameterValue": fp("qQzjcN8heSg1usSkN")},
                                        *parameters[1:]], operation
        assert masked["TemplateBody"] == NOECHO_TEMPLATE and parameters[0]["ParameterValue"] == "qQzjcN8heSg1usSkN"
        assert counts == Counter({("params", "Parameters[].ParameterValue", "template-noecho"): 1})
        form = {"Action": operation, "Version": "2010-05-15", name: "app", "TemplateBody": NOECHO_TEMPLATE}
        for i, p in enumerate(parameters, 1):
            form.update({f"Parameters.member.{i}.{k}": str(v).lower() if isinstance(v, bool) else v
                         for k, v in p.items()})
        part = m.request(call("cloudformation", operation, params=params), body=urlencode(form).encode())
        sent = parse_qs(part.body, keep_blank_values=True)
        assert sent["Parameters.member.1.ParameterValue"] == [fp("qQzjcN8heSg1usSkN")] and part.note is None
        assert {k: v for k, v in sent.items() if k != "Parameters.member.1.ParameterValue"} == {
            k: [v] for k, v in form.items() if k != "Parameters.member.1.ParameterValue"}
        assert part.masked == Counter({("request", "Parameters.member[].ParameterValue", "template-noecho"): 1})
    # without the template beside them: by name alone
    for params in ({"StackName": "app", "UsePreviousTemplate": True, "Parameters": parameters[:2]},
                   {"StackName": "app", "TemplateBody": NOECHO_TEMPLATE.replace('"NoEcho": true', '"NoEcho": false'),
                    "Parameters": parameters[:2]}):
        assert m.params(call("cloudformation", "UpdateStack", params=params)) == (params, Counter())


def test_a_value_given_to_a_noecho_parameter_is_masked_in_describe_stack_sets_answer():
    """DescribeStackSet answers with the stack set's template and its parameters' values side by
    side (moto's form and AWS's): the value of a parameter the template marks NoEcho is masked in
    the record, an ordinary one kept."""
    m = Masker(KEY)
    body = _cfn_xml("DescribeStackSet", (
        f"<StackSet><StackSetName>app</StackSetName><TemplateBody>{xml_escape(NOECHO_TEMPLATE)}</TemplateBody>"
        "<Parameters><member><ParameterKey>Env</ParameterKey><ParameterValue>staging</ParameterValue></member>"
        "<member><ParameterKey>AdminPin</ParameterKey><ParameterValue>qQzjcN8heSg1usSkN</ParameterValue></member>"
        "</Parameters></StackSet>"))
    part, copy = m.response(call("cloudformation", "DescribeStackSet"), status=200, body=body)
    assert copy is None and part.body == body.decode().replace("qQzjcN8heSg1usSkN", fp("qQzjcN8heSg1usSkN"))
    assert part.masked == Counter({("response", "StackSet.Parameters[].ParameterValue", "template-noecho"): 1})


def test_a_template_in_create_stack_refactors_stack_definitions_is_masked_in_the_record():
    """CreateStackRefactor carries its templates in ``StackDefinitions[].TemplateBody``; before,
    the parameters the record keeps were read as a template only where one sat at the top, and a
    NoEcho default and a function's environment there, beside no name that says secret, stayed in
    clear. Now they are masked as CreateStack's are, in the parameters and in the form."""
    m = Masker(KEY)
    template = ('{"Parameters": {"AdminPin": {"Type": "String", "NoEcho": true, "Default": "qQzjcN8heSg1usSkN"}},\n'
                ' "Resources": {"Fn": {"Type": "AWS::Lambda::Function",'
                ' "Properties": {"Environment": {"Variables": {"STRIPE_SIGNING": "Zx8vQm3kLp7tRw2nB"}}}}}}')
    assert not detectors.names_secret(template) and not detectors.suspicious(template)
    expected = template.replace('"qQzjcN8heSg1usSkN"', json.dumps(fp("qQzjcN8heSg1usSkN"))).replace(
        '"Zx8vQm3kLp7tRw2nB"', json.dumps(fp("Zx8vQm3kLp7tRw2nB")))
    params = {"StackDefinitions": [{"StackName": "old", "TemplateBody": template},
                                   {"StackName": "new", "TemplateBody": template}], "EnableStackCreation": True}
    masked, counts = m.params(call("cloudformation", "CreateStackRefactor", params=params))
    assert [d["TemplateBody"] for d in masked["StackDefinitions"]] == [expected, expected]
    assert [d["StackName"] for d in masked["StackDefinitions"]] == ["old", "new"]
    assert counts == Counter({("params", "StackDefinitions[].TemplateBody.Parameters.AdminPin.Default",
                               "template-noecho"): 2,
                              ("params", "StackDefinitions[].TemplateBody.Resources.Fn.Properties.Environment"
                                         ".Variables.STRIPE_SIGNING", "template-property"): 2})
    form = {"Action": "CreateStackRefactor", "Version": "2010-05-15",
            "StackDefinitions.member.1.StackName": "old", "StackDefinitions.member.1.TemplateBody": template}
    part = m.request(call("cloudformation", "CreateStackRefactor", params=params), body=urlencode(form).encode())
    assert parse_qs(part.body)["StackDefinitions.member.1.TemplateBody"] == [expected]


def _template_paths(shapes: dict, name: str, steps: tuple = (), seen: frozenset = frozenset()):
    """Member paths (``[]`` for a list's item) to every TemplateBody below shape ``name``."""
    shape = shapes[name]
    if name in seen or len(steps) > 6:
        return
    if shape["type"] == "list":
        yield from _template_paths(shapes, shape["member"]["shape"], steps + ("[]",), seen | {name})
    for member, ref in shape.get("members", {}).items() if shape["type"] == "structure" else ():
        if ref["shape"] == "TemplateBody":
            yield steps + (member,)
        else:
            yield from _template_paths(shapes, ref["shape"], steps + (member,), seen | {name})


def test_every_template_the_cloudformation_model_carries_is_masked_in_the_record():
    """Every member of shape TemplateBody in botocore's CloudFormation model, in a request (the
    parameters and the form) or an answer (the XML), wherever it sits (CreateStackRefactor's
    ``StackDefinitions[]``, DescribeStackSet's ``StackSet``), is masked as CreateStack's is: a
    NoEcho default named as no secret becomes its marker, the rest of the template stays."""
    m = Masker(KEY)
    model = LOADER.load_service_model("cloudformation", "service-2")
    template = '{"Parameters": {"AdminPin": {"Type": "String", "NoEcho": true, "Default": "qQzjcN8heSg1usSkN"}}}'
    expected = template.replace('"qQzjcN8heSg1usSkN"', json.dumps(fp("qQzjcN8heSg1usSkN")))
    seen = set()
    for operation, spec in model["operations"].items():
        for direction in ("input", "output"):
            top = spec.get(direction, {}).get("shape")
            for steps in _template_paths(model["shapes"], top) if top else ():
                seen.add((operation, direction, ".".join(steps)))
                value, form, xml = template, template, xml_escape(template)
                for step in reversed(steps):
                    value = [value] if step == "[]" else {step: value}
                    xml = f"<member>{xml}</member>" if step == "[]" else f"<{step}>{xml}</{step}>"
                key = ".".join("member.1" if step == "[]" else step for step in steps)
                if direction == "input":
                    params, counts = m.params(call("cloudformation", operation, params=value))
                    assert template not in json.dumps(params) and json.dumps(expected)[1:-1] in json.dumps(params), (
                        operation, steps)
                    part = m.request(call("cloudformation", operation, params=value),
                                     body=urlencode({"Action": operation, "Version": "2010-05-15", key: form}).encode())
                    assert parse_qs(part.body)[key] == [expected], (operation, steps)
                else:
                    part, _ = m.response(call("cloudformation", operation), status=200, body=_cfn_xml(operation, xml))
                    assert xml_escape(expected) in part.body and "qQzjcN8heSg1usSkN" not in part.body, (operation, steps)
    assert {op for op, _, _ in seen} >= {
        "CreateStack", "UpdateStack", "CreateChangeSet", "ValidateTemplate", "EstimateTemplateCost",
        "GetTemplateSummary", "CreateStackSet", "UpdateStackSet", "CreateStackRefactor", "GetTemplate",
        "DescribeStackSet", "GetGeneratedTemplate"}
    assert ("CreateStackRefactor", "input", "StackDefinitions.[].TemplateBody") in seen


@given(st.lists(st.sampled_from([s for _, s in SECRETS] + NOT_SECRETS + ["plain words", " ", "\n", "=", ":"]),
                min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_what_a_detector_finds_never_survives_masking(parts):
    m = Masker(KEY)
    text = " ".join(parts)
    masked, counts = m.mask_text(text)
    found = detectors.find(text)
    for f in found:
        assert m.marker(text[f.start:f.end]) in masked
    assert sum(counts.values()) == len(found)
    assert detectors.find(masked) == []  # masking again finds nothing more


@given(st.recursive(st.text(max_size=30) | st.integers() | st.booleans() | st.none(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_any_json_body_keeps_its_meaning_when_nothing_is_found(value):
    m = Masker(KEY)
    body = json.dumps(value).encode()
    part, _ = m.response(call("dynamodb", "GetItem"), status=200, body=body, policy=("Item.ssn",))
    if not part.masked:
        assert json.loads(part.body) == value


# -- secrets by name ------------------------------------------------------------------------------

PW = "qQzjcN8heSg1usSkN"  # a random password: no detector finds it by its form


def test_a_random_password_has_no_form_a_detector_finds():
    assert detectors.find(PW) == [] and not detectors.suspicious(json.dumps({"PASSWORD": PW}), json=True)


# (service, operation, request params or None for a response, body, where the record lists it)
NAMED = [
    # a map entry's key
    ("glue", "CreateConnection", True, {"ConnectionInput": {"Name": "db", "ConnectionType": "JDBC", "ConnectionProperties": {
        "USERNAME": "admin", "PASSWORD": PW, "JDBC_CONNECTION_URL": "jdbc:mysql://db.internal:3306/app"}}},
     "ConnectionInput.ConnectionProperties.*"),
    ("glue", "GetJob", False, {"Job": {"Name": "nightly", "Role": "arn:aws:iam::123456789012:role/glue",
                                       "DefaultArguments": {"--db_password": PW, "--job-language": "python"}}},
     "Job.DefaultArguments.*"),
    ("glue", "GetJobRun", False, {"JobRun": {"Id": "jr_0123", "JobName": "nightly", "Arguments": {"--api-key": PW}}},
     "JobRun.Arguments.*"),
    ("emr", "RunJobFlow", True, {"Name": "c", "Instances": {}, "Configurations": [{"Classification": "hive-site", "Properties": {
        "javax.jdo.option.ConnectionUserName": "hive", "javax.jdo.option.ConnectionPassword": PW}}]},
     "Configurations[].Properties.*"),
    ("kinesisanalyticsv2", "DescribeApplication", False, {"ApplicationDetail": {
        "ApplicationARN": "arn:aws:kinesisanalytics:us-east-1:123456789012:application/a", "ApplicationName": "a",
        "RuntimeEnvironment": "FLINK-1_18", "ApplicationStatus": "READY", "ApplicationVersionId": 1,
        "ApplicationConfigurationDescription": {"EnvironmentPropertyDescriptions": {"PropertyGroupDescriptions": [
            {"PropertyGroupId": "db", "PropertyMap": {"db.password": PW, "db.host": "db.internal"}}]}}}},
     "ApplicationDetail.ApplicationConfigurationDescription.EnvironmentPropertyDescriptions."
     "PropertyGroupDescriptions[].PropertyMap.*"),
    ("securityhub", "GetFindings", False, {"Findings": [{"Id": "f-1", "Resources": [{"Type": "AwsLambdaFunction", "Id": "fn", "Details": {
        "AwsLambdaFunction": {"Environment": {"Variables": {"AUTH_TOKEN": PW, "STAGE": "prod"}}}}}]}]},
     "Findings[].Resources[].Details.AwsLambdaFunction.Environment.Variables.*"),
    # a {name, value} pair: the name member names the value
    ("codepipeline", "GetPipeline", False, {"pipeline": {"name": "p", "roleArn": "arn:aws:iam::123456789012:role/p", "stages": [
        {"name": "build", "actions": [{"name": "run", "actionTypeId": {"category": "Compute", "owner": "AWS",
                                                                        "provider": "Commands", "version": "1"},
                                       "environmentVariables": [{"name": "DB_PASSWORD", "value": PW, "type": "PLAINTEXT"},
                                                                {"name": "STAGE", "value": "prod"}]}]}]}},
     "pipeline.stages[].actions[].environmentVariables[].value"),
    ("codepipeline", "CreatePipeline", True, {"pipeline": {"name": "p", "roleArn": "arn:aws:iam::1:role/p", "stages": [
        {"name": "build", "actions": [{"name": "run", "actionTypeId": {"category": "Compute", "owner": "AWS",
                                                                        "provider": "Commands", "version": "1"},
                                       "environmentVariables": [{"name": "STAGE", "value": "prod"},
                                                                {"name": "api-key", "value": PW}]}]}]}},
     "pipeline.stages[].actions[].environmentVariables[].value"),
    # members named as secrets that the models do not mark
    ("mq", "CreateUser", True, {"BrokerId": "b-1", "Username": "app", "Password": PW, "ConsoleAccess": False}, "Password"),
    ("mq", "CreateBroker", True, {"BrokerName": "b", "Users": [{"Username": "app", "Password": PW}]}, "Users[].Password"),
    ("memorydb", "CreateUser", True, {"UserName": "app", "AccessString": "on ~* +@all", "AuthenticationMode": {
        "Type": "password", "Passwords": [PW]}}, "AuthenticationMode.Passwords[]"),
    ("firehose", "CreateDeliveryStream", True, {"DeliveryStreamName": "s", "SplunkDestinationConfiguration": {
        "HECEndpoint": "https://splunk.internal:8088", "HECEndpointType": "Raw", "HECToken": PW,
        "S3Configuration": {"RoleARN": "arn:aws:iam::123456789012:role/f", "BucketARN": "arn:aws:s3:::b"}}},
     "SplunkDestinationConfiguration.HECToken"),
    ("pinpoint", "UpdateApnsChannel", True, {"ApplicationId": "app", "APNSChannelRequest": {
        "TeamId": "T1", "TokenKeyId": "K1", "TokenKey": PW}}, "APNSChannelRequest.TokenKey"),
]


@pytest.mark.parametrize("service,operation,is_request,body,path", NAMED, ids=[f"{c[0]}:{c[1]}" for c in NAMED])
def test_a_value_whose_name_says_it_is_a_secret_is_masked_in_the_record(service, operation, is_request, body, path,
                                                                        monkeypatch):
    """By its name alone: the curated list (which names several of these by where they sit) is
    left out here."""
    monkeypatch.setattr(masking, "CURATED", ())
    m = Masker(KEY)
    raw = json.dumps(body).encode()
    c = call(service, operation, params=body if is_request else None)
    if is_request:
        part = m.request(c, body=raw)
        params, counts = m.params(c)
        assert PW not in json.dumps(params) and fp(PW) in json.dumps(params)
        assert counts == {("params", path, "named-secret"): 1}
        assert c.params == body  # the call's own parameters are left as they were
    else:
        part, agent = m.response(c, status=200, body=raw)
        assert agent is None  # the record's: the agent's copy is masked where policy says
    assert PW not in part.body and fp(PW) in part.body
    assert part.masked == {("request" if is_request else "response", path, "named-secret"): 1}
    assert len(json.loads(part.body)) == len(body)  # the rest as it was


def test_a_message_attribute_whose_name_says_it_is_a_secret_is_masked_in_the_record():
    """SQS and SNS message attributes are a map of name to {DataType, StringValue}: an attribute
    named api_token or db_password was kept in clear in the record of the send (JSON and query
    forms) and of ReceiveMessage, whose attributes' digest was kept too; now its StringValue goes by
    the attribute's name, and other attributes stay as sent."""
    import hashlib

    from addons.core.masking import DIGEST_MARKER, sqs_attributes_md5

    secret = "Zq8vLr3TkWpx"
    attrs = {"api_token": {"DataType": "String", "StringValue": secret},
             "trace_id": {"DataType": "String", "StringValue": "abc-123-def"}}
    sent = json.dumps({"QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q", "MessageBody": "hello",
                       "MessageAttributes": attrs}).encode()
    part = Masker(KEY).request(call("sqs", "SendMessage", "json"), body=sent,
                               content_type="application/x-amz-json-1.0")
    assert secret not in part.body and "abc-123-def" in part.body
    assert ("request", "MessageAttributes.*.StringValue", "named-secret") in part.masked
    form = ("Action=Publish&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3At&Message=hi"
            "&MessageAttributes.entry.1.Name=db_password&MessageAttributes.entry.1.Value.DataType=String"
            f"&MessageAttributes.entry.1.Value.StringValue={secret}&Version=2010-03-31")
    part = Masker(KEY).request(call("sns", "Publish"), body=form.encode(),
                               content_type="application/x-www-form-urlencoded")
    assert secret not in part.body and "db_password" in part.body
    received = json.dumps({"Messages": [{"MessageId": "1", "ReceiptHandle": "r", "Body": "x",
                                         "MD5OfBody": hashlib.md5(b"x").hexdigest(), "MessageAttributes": attrs,
                                         "MD5OfMessageAttributes": sqs_attributes_md5(attrs)}]}).encode()
    part, _ = Masker(KEY).response(call("sqs", "ReceiveMessage", "json"), status=200, body=received,
                                   content_type="application/x-amz-json-1.0")
    [message] = json.loads(part.body)["Messages"]
    assert secret not in part.body and message["MD5OfMessageAttributes"] == DIGEST_MARKER
    assert MARKER_RE.fullmatch(message["MessageAttributes"]["api_token"]["StringValue"])
    assert message["MessageAttributes"]["trace_id"]["StringValue"] == "abc-123-def"


def test_query_bodies_and_xml_answers_go_by_the_name_beside_a_value(monkeypatch):
    monkeypatch.setattr(masking, "CURATED", ())  # by the name alone
    m = Masker(KEY)
    form = (f"Action=CreateEnvironment&Version=2010-12-01&ApplicationName=a&EnvironmentName=e"
            f"&OptionSettings.member.1.Namespace=aws%3Aelasticbeanstalk%3Aapplication%3Aenvironment"
            f"&OptionSettings.member.1.OptionName=DB_PASSWORD&OptionSettings.member.1.Value={PW}"
            f"&OptionSettings.member.2.OptionName=InstanceType&OptionSettings.member.2.Value=t3.micro").encode()
    part = m.request(call("elasticbeanstalk", "CreateEnvironment"), body=form)
    assert PW not in part.body and f"OptionSettings.member.1.Value={fp(PW)}" in part.body
    assert "OptionSettings.member.2.Value=t3.micro" in part.body
    assert part.masked == {("request", "OptionSettings.member[].Value", "named-secret"): 1}
    # a list of passwords, an HSM partition's, a listener rule's OIDC client secret
    part = m.request(call("elasticache", "CreateUser"),
                     body=f"Action=CreateUser&Version=2015-02-02&UserId=u&UserName=u&Engine=redis&Passwords.member.1={PW}"
                          f"&AccessString=on".encode())
    assert PW not in part.body and part.masked == {("request", "Passwords.member[]", "named-secret"): 1}
    part = m.request(call("redshift", "CreateHsmConfiguration"),
                     body=f"Action=CreateHsmConfiguration&Version=2012-12-01&HsmConfigurationIdentifier=h"
                          f"&HsmPartitionName=p&HsmPartitionPassword={PW}".encode())
    assert PW not in part.body and part.masked == {("request", "HsmPartitionPassword", "named-secret"): 1}
    part = m.request(call("elbv2", "CreateRule"), body=(
        "Action=CreateRule&Version=2015-12-01&ListenerArn=arn%3Aaws%3Aelasticloadbalancing%3Aus-east-1%3A123456789012"
        "%3Alistener%2Fapp%2Fa%2F1%2F2&Priority=1&Actions.member.1.Type=authenticate-oidc"
        f"&Actions.member.1.AuthenticateOidcConfig.ClientId=client&Actions.member.1.AuthenticateOidcConfig.ClientSecret={PW}"
        "&Actions.member.1.AuthenticateOidcConfig.UseExistingClientSecret=false").encode())
    assert PW not in part.body and "UseExistingClientSecret=false" in part.body
    assert part.masked == {("request", "Actions.member[].AuthenticateOidcConfig.ClientSecret", "named-secret"): 1}
    xml = (f"<DescribeConfigurationSettingsResponse><DescribeConfigurationSettingsResult><ConfigurationSettings><member>"
           f"<ApplicationName>a</ApplicationName><OptionSettings><member><Namespace>aws:env</Namespace>"
           f"<OptionName>DB_PASSWORD</OptionName><Value>{PW}</Value></member><member><Namespace>aws:env</Namespace>"
           f"<OptionName>NextToken</OptionName><Value>page-2</Value></member></OptionSettings></member>"
           f"</ConfigurationSettings></DescribeConfigurationSettingsResult></DescribeConfigurationSettingsResponse>").encode()
    part, _ = m.response(call("elasticbeanstalk", "DescribeConfigurationSettings"), status=200, body=xml)
    assert part.body == xml.decode().replace(PW, fp(PW))
    assert part.masked == {("response", "DescribeConfigurationSettingsResult.ConfigurationSettings[].OptionSettings[]."
                                        "Value", "named-secret"): 1}


def test_identifiers_arns_pagination_tokens_booleans_and_references_stay(monkeypatch):
    """What a secret's name says holds no secret: its ARN, its id, a cursor, a setting, a reference
    to where it is kept, what a service shows instead of it. (By the name alone: the curated list,
    which masks some of these maps whole by where they sit, is left out here.)"""
    monkeypatch.setattr(masking, "CURATED", ())
    m = Masker(KEY)
    jobs = {"Jobs": [{"Name": "nightly", "DefaultArguments": {
        "--db_password": "{{resolve:secretsmanager:prod/db:SecretString:password}}",
        "--api_token": "${API_TOKEN}", "--secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
        "--db_password_secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
        "--ssm_password": "/prod/db/password", "--auth_token_ttl": "3600", "--use_auth": "true",
        "--masked_password": "********", "--password_rotation_days": "30", "--token_expiry": "2026-01-01",
        "--password": ""}}],
        "NextToken": "AAAABBBBCCCCDDDDEEEEFFFF0000111122223333aaaa"}
    body = json.dumps(jobs).encode()
    part, _ = m.response(call("glue", "GetJobs"), status=200, body=body)
    assert part.body == body.decode() and part.masked == {}
    pipeline = {"pipeline": {"name": "p", "roleArn": "arn:aws:iam::123456789012:role/p", "stages": [{"name": "b", "actions": [
        {"name": "run", "actionTypeId": {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"},
         "environmentVariables": [{"name": "DB_PASSWORD", "value": "prod-db-password", "type": "PARAMETER_STORE"},
                                  {"name": "API_KEY", "value": "prod/api", "type": "SECRETS_MANAGER"}]}]}]}}
    body = json.dumps(pipeline).encode()
    part, _ = m.response(call("codepipeline", "GetPipeline"), status=200, body=body)
    assert part.body == body.decode() and part.masked == {}
    # names of identifiers and settings, and an enum's values (cognito: the unit of each token's validity)
    client = {"UserPoolClient": {"UserPoolId": "us-east-1_Ab12", "ClientName": "web", "ClientId": "abc123",
                                 "TokenValidityUnits": {"AccessToken": "hours", "IdToken": "hours", "RefreshToken": "days"},
                                 "AllowedOAuthFlowsUserPoolClient": True, "EnableTokenRevocation": True}}
    part, _ = m.response(call("cognito-idp", "DescribeUserPoolClient"), status=200, body=json.dumps(client).encode())
    assert json.loads(part.body)["UserPoolClient"]["TokenValidityUnits"] == client["UserPoolClient"]["TokenValidityUnits"]
    assert part.masked == {("response", "UserPoolClient.ClientId", "sensitive"): 1}  # the model marks it
    secrets_ = {"SecretList": [{"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf", "Name": "db",
                                "KmsKeyId": "alias/aws/secretsmanager", "RotationEnabled": False,
                                "SecretVersionsToStages": {"v1": ["AWSCURRENT"]}}],
                "NextToken": "AAAABBBBCCCC"}
    body = json.dumps(secrets_).encode()
    part, _ = m.response(call("secretsmanager", "ListSecrets"), status=200, body=body)
    assert part.body == body.decode() and part.masked == {}
    iam = (b"<GetUserResponse><GetUserResult><User><UserName>bob</UserName><UserId>AIDAEXAMPLE0123456789</UserId>"
           b"<Arn>arn:aws:iam::123456789012:user/bob</Arn><PasswordLastUsed>2026-01-01T00:00:00Z</PasswordLastUsed>"
           b"</User></GetUserResult></GetUserResponse>")
    part, _ = m.response(call("iam", "GetUser"), status=200, body=iam)
    assert part.body == iam.decode() and part.masked == {}
    ec2 = (b"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-0123456789abcdef0"
           b"</instanceId><metadataOptions><httpTokens>required</httpTokens><httpEndpoint>enabled</httpEndpoint>"
           b"</metadataOptions></item></instancesSet></item></reservationSet></DescribeInstancesResponse>")
    part, _ = m.response(call("ec2", "DescribeInstances"), status=200, body=ec2)
    assert part.body == ec2.decode() and part.masked == {}
    access = {"UserName": "bob", "AccessKeyMetadata": [{"UserName": "bob", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE",
                                                        "Status": "Active"}]}
    params, counts = m.params(call("iam", "ListAccessKeys", params={"UserName": "bob", "Marker": "m"}))
    assert counts == {} and params == {"UserName": "bob", "Marker": "m"}
    assert detectors.find("AKIAIOSFODNN7EXAMPLE", "AccessKeyId") == [] and access
    # a password that starts with a slash is not a parameter's name
    assert detectors.named("/k3JHq9xLmN2pQ", "DB_PASSWORD") and not detectors.named("/prod/db/password", "DB_PASSWORD")


def test_values_the_models_mark_and_curated_targets_keep_what_masks_them():
    m = Masker(KEY)
    body = json.dumps({"Name": "db", "SecretString": PW}).encode()
    part = m.request(call("secretsmanager", "CreateSecret"), body=body)
    assert part.masked == {("request", "SecretString", "sensitive"): 1}
    body = json.dumps({"Connection": {"Name": "db", "ConnectionProperties": {"PASSWORD": PW, "USERNAME": "admin"}}}).encode()
    part, _ = m.response(call("glue", "GetConnection"), status=200, body=body)
    assert part.masked == {("response", "Connection.ConnectionProperties", "curated"): 2}


SECRET_NAMES = ["DB_PASSWORD", "javax.jdo.option.ConnectionPassword", "--db_password", "api-key", "ApiKey", "API_KEY",
                "ClientSecret", "client_secret", "AUTH_TOKEN", "PRIVATE_KEY", "privateKey", "HECToken", "Password",
                "Passwords", "MasterUserPassword", "HsmPartitionPassword", "SecretAccessKey", "AWS_SECRET_ACCESS_KEY",
                "AccessKey", "SecretKey", "Credentials", "credential", "auth", "BasicAuth", "authKey", "GITHUB_TOKEN",
                "SessionToken", "IdToken", "dbpassword", "passwd", "DB_PASS", "passphrase", "SECRET_KEY_BASE",
                "SecretString", "TokenKey", "password_2", "x-api-key", "/prod/db/password", "REDIS_PWD"]
NOT_SECRET_NAMES = ["NextToken", "nextToken", "ContinuationToken", "PaginationToken", "ClientToken",
                    "ClientRequestToken", "IdempotencyToken", "MaxTokens", "TokenCount", "TokenType", "tokenTypeHint",
                    "SecretArn", "SecretId", "SecretName", "AccessKeyId", "ApiKeyName", "apiKeyId", "PasswordLastUsed",
                    "PasswordResetRequired", "PasswordPolicy", "PasswordLength", "MaxPasswordAge", "AuthTokenEnabled",
                    "AuthTokenLastModifiedDate", "TokenExpiration", "SecretRotationDays", "MasterUserSecretKmsKeyId",
                    "TokenEndpoint", "oAuthScopes", "AuthType", "AuthorizationType", "Authentication", "SecretStatus",
                    "PasswordVersion", "CredentialsArn", "ChangeToken", "LockToken", "TaskToken", "HttpTokens",
                    "DkimTokens", "bypass", "oauth", "OLDPWD", "KeySchema", "Key", "ApiMappingKey", "Name", "Value"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_names_that_say_a_value_is_a_secret(name):
    assert detectors.secret_name(name)
    assert detectors.find(PW, name) == [detectors.Finding(0, len(PW), "named-secret")]
    # the quick test over a body finds the name where the walk meets it: a key, a {Name, Value} pair
    assert detectors.names_secret(json.dumps({name: PW}))
    assert detectors.names_secret(json.dumps([{"Name": name, "Value": PW}]))
    assert detectors.names_secret(f"<{name}>x</{name}>" if name.isidentifier() else f"<Name>{name}</Name>")


@pytest.mark.parametrize("name", NOT_SECRET_NAMES)
def test_names_of_identifiers_handles_and_settings_are_not_secrets(name):
    assert not detectors.secret_name(name) and detectors.find(PW, name) == []
    assert not detectors.names_secret(json.dumps({name: "v", "Items": [{"Name": name, "Value": "v"}]}))


@given(st.lists(st.sampled_from(["db", "Db", "DB", "password", "Password", "PASSWORD", "token", "Token", "next", "Next",
                                 "auth", "api", "key", "Key", "secret", "access", "id", "Id", "value", "arn", "x9",
                                 "2", "session", "passwd", "credentials"]), min_size=1, max_size=4),
       st.lists(st.sampled_from(["", "_", "-", ".", " ", "/", "\n", "\t", ":", "--"]), min_size=4, max_size=4))
@settings(max_examples=300, deadline=None)
def test_the_quick_test_never_misses_a_name_the_walk_would_take(words, separators):
    """``names_secret`` decides whether a body is walked for names at all: whatever a name's words
    and separators (JSON escapes included), when ``secret_name`` takes it, the quick test over a
    body holding it says yes."""
    name = "".join(w + s for w, s in zip(words, separators))[:-1] or words[0]
    if detectors.secret_name(name):
        for body in (json.dumps({name: "v"}), json.dumps({"Name": name, "Value": "v"}), f"k.{name}=v\n{name}"):
            assert detectors.names_secret(body), (name, body)
            assert detectors.hints(body, json=True)[1], (name, body)


def test_every_member_the_models_name_as_a_secret_is_seen_by_its_wire_name():
    """The walk names a member by its model name, the quick test reads its name on the wire
    (``locationName``): where the first says secret, so does the second."""
    missed = []
    for service in LOADER.list_available_services("service-2"):
        shapes = LOADER.load_service_model(service, "service-2")["shapes"]
        for shape in shapes.values():
            for member, ref in shape.get("members", {}).items() if shape["type"] == "structure" else ():
                if ref.get("location"):  # a header, a label, a query parameter: not in the body
                    continue
                wire = ref.get("locationName", member)
                if detectors.secret_name(member) and not detectors.names_secret(json.dumps({wire: "v"})):
                    missed.append((service, member, wire))
    assert missed == []


def test_ordinary_bodies_are_not_walked_for_names():
    """A DynamoDB item, a page of a listing: no name in them says secret, so the body is kept as
    sent without being parsed."""
    item = json.dumps({"Item": {"pk": {"S": "user#1"}, "email": {"S": "ada@example.com"}, "age": {"N": "36"}}})
    listing = json.dumps({"Functions": [{"FunctionName": "f", "FunctionArn": "arn:aws:lambda:us-east-1:1:function:f"}],
                          "NextToken": "AAAABBBBCCCC", "NextMarker": "m"})
    for body in (item, listing):
        assert detectors.hints(body, json=True) == (False, False)


def test_error_bodies_get_the_detectors_only():
    m = Masker(KEY)
    body = b'{"__type": "ValidationException", "message": "bad value password=hunter2hunter2 for SecretString"}'
    part, agent = m.response(call("secretsmanager", "GetSecretValue"), status=400, body=body,
                             policy=("SecretString",))
    assert agent is None and "hunter2hunter2" not in part.body
    assert part.masked == {("response", "message", "assignment"): 1}


# -- bodies that are not parsed -------------------------------------------------------------------


def test_object_data_is_kept_only_when_policy_opts_in():
    m = Masker(KEY)
    body = b"db_url=postgres://app:pw1234@db/app\nregion=eu-west-1\n"
    get = call("s3", "GetObject", params={"Bucket": "b", "Key": "k"})
    part, agent = m.response(get, status=200, body=body, content_type="text/plain")
    assert part.body is None and "object data not kept" in part.note and agent is None
    part, agent = m.response(get, status=200, body=body, content_type="text/plain", policy=("Body",),
                             headers=[("x-amz-checksum-crc32", "AAAAAA==")])
    assert "pw1234" not in part.body and "pw1234" not in agent.body.decode()
    assert "region=eu-west-1" in agent.body.decode()
    # what policy masks but the detectors cannot read is withheld from the agent, never passed on:
    # an object that is not text (or is said not to be: ?response-content-type=), or is over the cap
    part, agent = m.response(get, status=200, body=b"\x89PNG\r\n", content_type="image/png", policy=("Body",))
    assert part.body is None and "not text" in part.note and "image/png, not text" in agent.withheld
    part, agent = m.response(get, status=200, body=body, content_type="application/octet-stream", policy=("Body",))
    assert agent.withheld and agent.body is None
    big = Masker(KEY, object_cap=8)
    part, agent = big.response(get, status=200, body=body, content_type="text/plain", policy=("Body",))
    assert part.body is None and "over 8 bytes" in agent.withheld
    put = m.request(call("s3", "PutObject"), body=body)
    assert put.body is None and "object data not kept" in put.note


def test_event_streams_and_binary_bodies_are_noted():
    m = Masker(KEY)
    part, _ = m.response(call("kinesis", "SubscribeToShard"), status=200, body=b"\x00\x00\x00\x10...",
                         content_type="application/vnd.amazon.eventstream")
    assert part.body is None and "event-stream" in part.note
    part, _ = m.response(Classification(), status=200, body=b"\xff\xfe\x00binary", content_type="application/octet-stream")
    assert part.body is None and part.note == "binary body not kept"
    part = m.request(call("s3", "PutObject"), body=None, streamed=True)
    assert "streamed" in part.note


def test_payload_members_that_are_targets_become_one_marker():
    m = Masker(KEY)
    part, agent = m.response(call("lambda", "Invoke"), status=200, body=b'{"result": "ok"}', policy=("Payload",))
    assert part.body == fp(b'{"result": "ok"}') and agent.body == AGENT_MARKER.encode()


def test_cbor_bodies_are_masked_and_kept_as_json():
    m = synthetic("smithy-rpc-v2-cbor")
    data = {"Nodes": [{"Name": "a", "Password": "p1"}], "Key": b"raw", "Count": 2,
            "At": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)}
    body = masking.cbor_encode(data)
    assert masking.decode_cbor(body) == data
    c = Classification(service="synthetic", operation="Read", protocol="smithy-rpc-v2-cbor")
    part, agent = m.response(c, status=200, body=body, policy=("Nodes[].Name",))
    record = json.loads(part.body)
    assert record["Nodes"][0] == {"Name": fp("a"), "Password": fp("p1")} and part.note == "CBOR body kept as JSON"
    assert base64.b64decode(record["Key"]) == fp(b"raw").encode()
    assert masking.decode_cbor(agent.body)["Nodes"][0] == {"Name": AGENT_MARKER, "Password": "p1"}
    assert fingerprint_free(agent.body)


# -- failures never break the call ----------------------------------------------------------------


def test_an_engine_failure_keeps_no_body_and_withholds_the_agents_copy(monkeypatch):
    m = Masker(KEY)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(m, "_json", broken)
    monkeypatch.setattr(m, "_agent_body", broken)
    part, agent = m.response(call("secretsmanager", "GetSecretValue"), status=200, body=b'{"SecretString": "x"}',
                             headers=[("x-amzn-RequestId", "r"), ("x-custom", "c")], policy=("SecretString",))
    assert part.body is None and part.note.startswith("not masked: RuntimeError: boom")
    assert part.headers == [("x-amzn-RequestId", "r")] and agent.withheld == "RuntimeError: boom"
    req = m.request(call("secretsmanager", "CreateSecret"), body=b'{"SecretString": "x"}')
    assert req.body is None and req.note.startswith("not masked")


# -- the addon ------------------------------------------------------------------------------------


def flow_for(service: str, operation: str, body: bytes, *, policy=(), headers=None, refused=False):
    from addons.stage import CALL, DECISION, REFUSAL, SIGNED

    f = tflow.tflow(resp=True)
    f.request.path = "/"
    f.request.content = b"{}"
    f.response.headers.clear()
    f.response.content = body
    for k, v in (headers or {}).items():
        f.response.headers[k] = v
    f.metadata[CALL] = call(service, operation)
    f.metadata[DECISION] = Decision("allow", "test-rule", "allowed", "v1", None, tuple(policy), None, None, ())
    f.metadata[SIGNED] = types.SimpleNamespace(session_id="s1", role_arn="arn:aws:iam::123456789012:role/r",
                                               assumed_role_arn=None)
    if refused:
        f.metadata[REFUSAL] = object()
    return f


def test_addon_rewrites_the_agents_copy_so_the_sdk_parses_it():
    from addons.masking import MASKED, Masking
    from addons.recorder import RESPONSE_DIGEST, build_record

    body = json.dumps({"Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}}).encode()
    f = flow_for("dynamodb", "GetItem", body, policy=("Item.ssn",),
                 headers={"x-amz-crc32": str(zlib.crc32(body)), "content-type": "application/x-amz-json-1.0"})
    addon = Masking(KEY)
    with taddons.context(addon):
        asyncio.run(addon.request(f))
        asyncio.run(addon.response(f))
    new = f.response.raw_content
    assert json.loads(new)["Item"]["ssn"] == AGENT_ITEM and fingerprint_free(new)
    assert f.response.headers["content-length"] == str(len(new))
    assert f.response.headers["x-amz-crc32"] == str(zlib.crc32(new))
    assert f.metadata[RESPONSE_DIGEST] == (hashlib.sha256(body).hexdigest(), len(body))
    assert isinstance(f.metadata[MASKED], masking.MaskedCall)
    r = build_record(f)
    assert r.response_body_sha256 == hashlib.sha256(body).hexdigest()
    assert "123-45-6789" not in r.response_body
    assert json.loads(r.response_body)["Item"]["ssn"] == {"S": fp("123-45-6789")}  # the record keeps the fingerprint
    assert {"part": "agent", "path": "Item.ssn", "by": "policy", "count": 1} in r.masked
    assert {"part": "response", "path": "Item.ssn", "by": "policy", "count": 1} in r.masked


def test_addon_leaves_refused_calls_untouched_and_withholds_what_it_cannot_mask(monkeypatch):
    from addons.masking import Masking

    body = b'{"SecretString": "s3cr3t"}'
    addon = Masking(KEY)
    f = flow_for("secretsmanager", "GetSecretValue", body, policy=("SecretString",), refused=True)
    with taddons.context(addon):
        asyncio.run(addon.response(f))
    assert f.response.content == body
    monkeypatch.setattr(addon.masker, "agent_copy", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    f = flow_for("secretsmanager", "GetSecretValue", body, policy=("SecretString",))
    with taddons.context(addon):
        asyncio.run(addon.response(f))
    assert f.response.status_code == 400 and b"ResponseWithheld" in f.response.content  # never upstream's secret
    assert b"s3cr3t" not in f.response.content
    from addons.recorder import build_record

    r = build_record(f)
    assert "s3cr3t" not in (r.response_body or "") and "agent's copy not masked" in r.body_note


def test_addon_holds_a_large_response_whole_to_mask_it_for_the_agent():
    from addons.masking import Masking
    from addons.recorder import RESPONSE_DIGEST
    from addons.stage import HELD

    items = [{"k": {"S": str(i)}, "ssn": {"S": f"ssn-{i}"}, "pad": {"S": "x" * 2000}} for i in range(600)]
    body = json.dumps({"Items": items, "Count": 600}).encode()
    assert len(body) > 1 << 20
    f = flow_for("dynamodb", "Scan", body, policy=("Items[].ssn",),
                 headers={"content-length": str(len(body)), "x-amz-crc32": str(zlib.crc32(body))})
    addon = Masking(KEY)
    with taddons.context(addon):
        addon.responseheaders(f)
    assert f.metadata[HELD] == addon.masker.parse_limit and not f.response.stream  # buffered, not streamed
    with taddons.context(addon):
        asyncio.run(addon.response(f))
    out = f.response.raw_content
    assert [i["ssn"] for i in json.loads(out)["Items"]] == [AGENT_ITEM] * 600 and fingerprint_free(out)
    record = json.loads(addon.masked(f).response_body)
    assert [i["ssn"]["S"] for i in record["Items"]][:2] == [fp("ssn-0"), fp("ssn-1")]
    assert f.response.headers["content-length"] == str(len(out))
    assert f.response.headers["x-amz-crc32"] == str(zlib.crc32(out))
    assert f.metadata[RESPONSE_DIGEST] == (hashlib.sha256(body).hexdigest(), len(body))


def test_addon_holds_nothing_it_does_not_mask_for_the_agent():
    from addons.masking import Masking
    from addons.stage import HELD

    addon = Masking(KEY)
    for f in (flow_for("dynamodb", "Scan", b"{}"),  # no policy
              flow_for("s3", "GetObject", b"x", policy=("Items[].ssn",)),  # nothing of the policy's in its output
              flow_for("dynamodb", "Scan", b"{}", policy=("Items[].ssn",), refused=True)):
        with taddons.context(addon):
            addon.responseheaders(f)
        assert HELD not in f.metadata


def test_addon_withholds_a_response_it_cannot_mask_for_the_agent_whole():
    """Larger than the masker parses (after its content-encoding is undone): the agent gets an error,
    never the unmasked body; the record keeps upstream's digest and says why."""
    from addons.masking import Masking
    from addons.recorder import RESPONSE_DIGEST, build_record

    addon = Masking(KEY)
    addon.masker.parse_limit = 1000
    body = json.dumps({"Items": [{"ssn": {"S": f"ssn-{i}"}} for i in range(200)]}).encode()
    f = flow_for("dynamodb", "Scan", body, policy=("Items[].ssn",))
    with taddons.context(addon):
        asyncio.run(addon.request(f))
        asyncio.run(addon.response(f))
    assert f.response.status_code == 400 and b"ResponseWithheld" in f.response.content
    assert b"ssn-" not in f.response.content
    assert f.metadata[RESPONSE_DIGEST] == (hashlib.sha256(body).hexdigest(), len(body))
    r = build_record(f)
    assert r.response_body is None and "withheld from the agent" in r.body_note


def test_a_compressed_response_is_masked_for_the_agent_and_a_bomb_is_withheld_at_once():
    """The agent may ask for gzip: its masked copy is masked all the same (and still gzip); a small
    body that inflates past what the masker parses is withheld without being inflated whole."""
    import gzip

    from addons.masking import Masking
    from addons.stage import HELD

    addon = Masking(KEY)
    body = json.dumps({"Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                             ("deflate", zlib.compress(body)[2:-4])):  # zlib-wrapped and raw deflate
        f = flow_for("dynamodb", "GetItem", b"", policy=("Item.ssn",), headers={"content-encoding": encoding})
        f.response.raw_content = packed
        with taddons.context(addon):
            addon.responseheaders(f)
            asyncio.run(addon.request(f))
            asyncio.run(addon.response(f))
        assert f.metadata[HELD] and f.response.headers["content-encoding"] == encoding
        assert json.loads(f.response.get_content())["Item"]["ssn"] == AGENT_ITEM
        assert fingerprint_free(f.response.get_content())
    f = flow_for("dynamodb", "Scan", b"", policy=("Items[].ssn",), headers={"content-encoding": "gzip"})
    f.response.raw_content = bomb("gzip")
    assert len(f.response.raw_content) < 1 << 20
    _withheld_without_inflating(addon, f)


def _mask_bomb(addon, f) -> None:
    """Run the masking stage on ``f`` (a response holding a bomb): in bounded time, inflating it
    to the masker's limit, not to 512 MB."""
    import time
    import tracemalloc

    started = time.perf_counter()
    tracemalloc.start()
    try:
        with taddons.context(addon):
            asyncio.run(addon.request(f))
            asyncio.run(addon.response(f))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    assert time.perf_counter() - started < HANG


def _withheld_without_inflating(addon, f):
    _mask_bomb(addon, f)
    assert f.response.status_code == 400 and b"ResponseWithheld" in f.response.content


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_br_and_zstd_responses_are_masked_and_a_bomb_is_inflated_only_to_the_maskers_limit(encoding):
    """br and zstd (an agent may ask for them; an S3 object may be stored with them): masked for
    the agent and the record like gzip, and a small body that would inflate to 512 MB is withheld
    after inflating no more than the masker parses."""
    import brotli
    from backports import zstd

    from addons.masking import Masking
    from addons.recorder import build_record

    pack = brotli.compress if encoding == "br" else zstd.compress
    addon = Masking(KEY)
    body = json.dumps({"Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}}).encode()
    f = flow_for("dynamodb", "GetItem", b"", policy=("Item.ssn",), headers={"content-encoding": encoding})
    f.response.raw_content = pack(body)
    with taddons.context(addon):
        addon.responseheaders(f)
        asyncio.run(addon.request(f))
        asyncio.run(addon.response(f))
    assert f.response.headers["content-encoding"] == encoding
    assert json.loads(f.response.get_content())["Item"]["ssn"] == AGENT_ITEM
    assert fingerprint_free(f.response.get_content())
    record = build_record(f).response_body
    assert "123-45-6789" not in record and json.loads(record)["Item"]["ssn"] == {"S": fp("123-45-6789")}
    f = flow_for("dynamodb", "Scan", b"", policy=("Items[].ssn",), headers={"content-encoding": encoding})
    f.response.raw_content = bomb(encoding)
    assert len(f.response.raw_content) < 1 << 20
    _withheld_without_inflating(addon, f)


def test_the_record_holds_every_member_of_a_gzip_body_as_the_classifier_reads_it():
    import gzip

    two = gzip.compress(b"Label=l1&AWSAccountId.member.1=111111111111") + gzip.compress(b"&AWSAccountId.member.2=999999999999")
    assert masking.inflate(two, "gzip", 1 << 20) == b"Label=l1&AWSAccountId.member.1=111111111111&AWSAccountId.member.2=999999999999"
    assert len(masking.inflate(gzip.compress(b" " * 5000) * 4, "gzip", 100)) == 101  # still capped, members and all


def test_a_compressed_bomb_in_a_response_that_is_only_recorded_is_not_inflated_whole():
    """No policy masks this response for the agent, so it reaches the agent as upstream sent it;
    its record's copy is not inflated past the masker's limit either, whatever the encoding
    (including names mitmproxy would hand to Python's codecs, such as zlib)."""
    from addons.masking import Masking
    from addons.recorder import build_record

    addon = Masking(KEY)
    for encoding in ("gzip", "br", "zstd", "zlib"):
        packed = bomb(encoding)
        f = flow_for("s3", "GetObject", b"", headers={"content-encoding": encoding})
        f.response.raw_content = packed
        _mask_bomb(addon, f)
        assert f.response.raw_content == packed, encoding  # the agent's copy is upstream's
        r = build_record(f)
        assert r.response_body is None and r.response_body_size == len(packed), encoding


def test_addon_answers_a_response_over_its_cap_with_an_error():
    """addons/limits.py dropped a buffered body past its cap: 400 withheld when it was held to mask
    for the agent, 502 otherwise; the record keeps the digest of what upstream sent."""
    from addons.masking import Masking
    from addons.recorder import build_record
    from addons.stage import HELD, OVER_CAP

    addon = Masking(KEY)
    for held, status, code in ((True, 400, b"ResponseWithheld"), (False, 502, b"ResponseTooLarge")):
        f = flow_for("dynamodb", "Scan", b"", policy=("Items[].ssn",) if held else ())
        if held:
            f.metadata[HELD] = addon.masker.parse_limit
        f.metadata[OVER_CAP] = ("ab" * 32, 5000, 4096)
        with taddons.context(addon):
            asyncio.run(addon.response(f))
        assert (f.response.status_code, code in f.response.content) == (status, True)
        r = build_record(f)
        assert (r.response_body_sha256, r.response_body_size, r.response_body) == ("ab" * 32, 5000, None)
        assert "4096" in r.body_note


def test_store_keeps_what_was_masked(tmp_path):
    from addons.core.store import Store, verify

    s = Store(f"sqlite:///{tmp_path / 'a.db'}", chain_key=b"c" * 32)
    s.migrate()
    s.start()
    try:
        r = Record(response_body="{}", masked=[{"part": "response", "path": "SecretString", "by": "sensitive",
                                                "count": 1}], body_note="request: body streamed")
        s.write_sync(r)
        got = s.call(r.id)
        assert got["masked"] == r.masked and got["body_note"] == r.body_note
    finally:
        s.close()
    assert verify(f"sqlite:///{tmp_path / 'a.db'}", b"c" * 32).ok


def test_addon_masks_large_bodies_off_the_event_loop(monkeypatch):
    from addons import masking as addon_module
    from addons.masking import Masking

    threads = []
    real = addon_module.asyncio.to_thread

    async def to_thread(fn, *a, **k):
        threads.append(fn)
        return await real(fn, *a, **k)

    monkeypatch.setattr(addon_module.asyncio, "to_thread", to_thread)
    body = json.dumps({"SecretString": "s3cr3t", "Name": "n" * (300 * 1024)}).encode()
    f = flow_for("secretsmanager", "GetSecretValue", body, policy=("SecretString",))
    addon = Masking(KEY)
    with taddons.context(addon):
        asyncio.run(addon.request(f))
        asyncio.run(addon.response(f))
    assert len(threads) == 1  # the response; the request body is small
    assert json.loads(f.response.content)["SecretString"] == AGENT_MARKER and fingerprint_free(f.response.content)
    assert "s3cr3t" not in addon.masked(f).response_body
    assert json.loads(addon.masked(f).response_body)["SecretString"] == fp("s3cr3t")


def test_a_response_that_policy_masks_for_the_agent_is_withheld_when_masking_fails():
    """Fail closed: the agent never gets a secret that policy says to mask."""
    import asyncio
    from types import SimpleNamespace

    from mitmproxy.test import tflow

    from addons.masking import Masking
    from addons.stage import CALL, DECISION, SIGNED

    m = Masking(b"k" * 32)
    flow = tflow.tflow(resp=True)
    flow.response.content = b'{"SecretString": "hunter2"}'
    flow.metadata[CALL] = SimpleNamespace(service="secretsmanager", operation="GetSecretValue", protocol="json",
                                          action="secretsmanager:GetSecretValue", params={}, resources=[])
    flow.metadata[DECISION] = SimpleNamespace(mask_for_agent=("SecretString",))
    flow.metadata[SIGNED] = SimpleNamespace(role_arn="arn:aws:iam::123456789012:role/r", session_id="s")

    def broken(*a, **k):
        raise RuntimeError("engine failure")

    m.masker.response = broken
    asyncio.run(m.response(flow))
    assert b"hunter2" not in flow.response.content
    assert flow.response.status_code == 400 and b"ResponseWithheld" in flow.response.content


@pytest.mark.parametrize("body, headers", [
    (b'{"Name": "db", "SecretString": "hunter2-cut', {}),  # cut short
    ('{"SecretString": "hunter2"}'.encode("utf-16"), {"content-type": "application/x-amz-json-1.1"}),  # not UTF-8
    # encodings the masker does not undo: what upstream sent cannot be read
    (gzip.compress(gzip.compress(b'{"SecretString": "hunter2"}')), {"content-encoding": "gzip, gzip"}),
    (b"\x1f\x9d\x90" + b'{"SecretString": "hunter2"}', {"content-encoding": "compress"}),
], ids=["cut-short", "utf-16", "gzip-gzip", "compress"])
def test_a_response_the_masker_cannot_read_is_withheld_not_passed_on(body, headers):
    """A body policy masks for the agent but the masker cannot parse is withheld (400
    ResponseWithheld): the agent's copy was upstream's before, secret and all."""
    from addons.masking import Masking

    f = flow_for("secretsmanager", "GetSecretValue", body, policy=("SecretString",), headers=headers)
    addon = Masking(KEY)
    with taddons.context(addon):
        asyncio.run(addon.response(f))
    assert f.response.status_code == 400 and b"ResponseWithheld" in f.response.content
    assert b"hunter2" not in f.response.content and "hunter2".encode("utf-16")[2:] not in f.response.content


def test_a_marker_an_agent_sends_is_masked_as_any_value_never_vouched_for():
    """An agent that was given the marker of one secret and sends it back as another secret's value
    must not leave a record saying it held the first secret: the marker it sent is masked as text."""
    m = Masker(KEY)
    given = m.marker("prod-db-password")
    part = m.request(call("secretsmanager", "PutSecretValue"),
                     body=json.dumps({"SecretId": "prod/api", "SecretString": given}).encode())
    kept = json.loads(part.body)["SecretString"]
    assert MARKER_RE.fullmatch(kept) and kept != given and kept == m.marker(given)
    # what the agent is given now (AGENT_MARKER) is masked the same way, never kept as sent
    part = m.request(call("secretsmanager", "PutSecretValue"),
                     body=json.dumps({"SecretId": "prod/api", "SecretString": AGENT_MARKER}).encode())
    assert json.loads(part.body)["SecretString"] == fp(AGENT_MARKER)


def test_auto_scaling_launch_configuration_user_data_is_curated():
    """The model does not mark it sensitive; it carries the same bootstrap secrets as EC2's."""
    m = Masker(KEY)
    script = base64.b64encode(b"#!/bin/sh\nexport DB_PASSWORD=s3cret\n")
    body = (b'<DescribeLaunchConfigurationsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
            b"<DescribeLaunchConfigurationsResult><LaunchConfigurations><member><LaunchConfigurationName>lc"
            b"</LaunchConfigurationName><UserData>" + script + b"</UserData></member></LaunchConfigurations>"
            b"</DescribeLaunchConfigurationsResult></DescribeLaunchConfigurationsResponse>")
    part, agent = m.response(call("autoscaling", "DescribeLaunchConfigurations"), status=200, body=body,
                             content_type="text/xml", policy=("LaunchConfigurations[].UserData",))
    parsed = parse("autoscaling", "DescribeLaunchConfigurations", agent.body)
    user_data = parsed["LaunchConfigurations"][0]["UserData"]
    assert user_data == AGENT_B64 and fingerprint_free(agent.body)  # still base64 for the SDK
    assert script.decode() not in part.body and part.masked == {
        ("response", "LaunchConfigurations[].UserData", "curated"): 1}
    assert base64.b64encode(fp(base64.b64decode(script)).encode()).decode() in part.body  # the record's


def test_shipped_policies_mask_oauth_client_secrets_in_load_balancer_rules():
    """policies/secrets.yaml's mask-client-secrets, through lists within lists of an XML answer."""
    from addons.core.policy import PolicySet
    from tests.test_policy import SHIPPED, principal

    decision = PolicySet.load(SHIPPED).evaluate(principal(), types.SimpleNamespace(
        service="elbv2", operation="DescribeRules", action="elasticloadbalancing:DescribeRules", access_level="Read",
        params={}, resources=[], region="us-east-1", account=None, error=None, implied=()))
    body = (b'<DescribeRulesResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">'
            b"<DescribeRulesResult><Rules><member><RuleArn>arn:r</RuleArn><Actions><member><Type>authenticate-oidc"
            b"</Type><AuthenticateOidcConfig><Issuer>https://idp</Issuer><ClientId>app</ClientId>"
            b"<ClientSecret>oidc-client-s3cret</ClientSecret></AuthenticateOidcConfig></member></Actions></member>"
            b"</Rules></DescribeRulesResult></DescribeRulesResponse>")
    m = Masker(KEY)
    _, agent = m.response(call("elbv2", "DescribeRules"), status=200, body=body, content_type="text/xml",
                          policy=decision.mask_for_agent)
    oidc = parse("elbv2", "DescribeRules", agent.body)["Rules"][0]["Actions"][0]["AuthenticateOidcConfig"]
    assert oidc["ClientSecret"] == AGENT_MARKER and oidc["ClientId"] == "app" and fingerprint_free(agent.body)


def test_sqs_digests_beside_masked_bodies_and_attributes_are_of_what_the_agent_gets():
    """ReceiveMessage's MD5OfBody beside a masked body would let its reader test guesses of the
    secret offline (a six-digit PIN in a second), and an SDK that checks it would refuse the masked
    copy: the agent's copy carries the digests of what it is given (SQS's own algorithm, checked
    against moto's), the record none."""
    import hashlib

    from moto.sqs.models import Message

    from addons.core.masking import DIGEST_MARKER, sqs_attributes_md5
    from tests.test_classifier import capture, run

    attrs = {"k": {"DataType": "String", "StringValue": "ATTR-SECRET"},
             "b": {"DataType": "Binary", "BinaryValue": base64.b64encode(b"\x00\x01").decode()}}
    reference = Message("id", "body")
    reference.message_attributes = {"k": attrs["k"], "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}
    assert sqs_attributes_md5(attrs) == reference.attribute_md5
    call = run(capture("sqs", "receive_message", QueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/q",
                       MessageAttributeNames=["All"]))
    body = json.dumps({"Messages": [{"MessageId": "1", "ReceiptHandle": "r", "Body": "pin=739204",
                                     "MD5OfBody": hashlib.md5(b"pin=739204").hexdigest(), "MessageAttributes": attrs,
                                     "MD5OfMessageAttributes": sqs_attributes_md5(attrs)}]}).encode()
    part, agent = Masker(KEY).response(call, status=200, body=body, content_type="application/x-amz-json-1.0",
                                       policy=("Messages[].Body", "Messages[].MessageAttributes"))
    [record] = json.loads(part.body)["Messages"]
    assert record["MD5OfBody"] == record["MD5OfMessageAttributes"] == DIGEST_MARKER
    assert hashlib.md5(b"pin=739204").hexdigest() not in part.body
    [given] = json.loads(agent.body)["Messages"]
    assert given["Body"] == AGENT_MARKER and given["MD5OfBody"] == hashlib.md5(AGENT_MARKER.encode()).hexdigest()
    assert given["MD5OfMessageAttributes"] == sqs_attributes_md5(given["MessageAttributes"])
    assert given["MD5OfMessageAttributes"] != sqs_attributes_md5(attrs)
    # a body a detector masked in part, with no rule: the record keeps no digest of it either
    found = json.dumps({"Messages": [{"MessageId": "1", "ReceiptHandle": "r", "Body": "db config: password=1234",
                                      "MD5OfBody": hashlib.md5(b"db config: password=1234").hexdigest()}]}).encode()
    part, _ = Masker(KEY).response(call, status=200, body=found, content_type="application/x-amz-json-1.0")
    assert json.loads(part.body)["Messages"][0]["MD5OfBody"] == DIGEST_MARKER and "1234" not in part.body
    # nor of what a send carried, which its record keeps masked
    sent = run(capture("sqs", "send_message", QueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/q",
                       MessageBody="db config: password=1234"))
    part, _ = Masker(KEY).response(sent, status=200, content_type="application/x-amz-json-1.0", body=json.dumps(
        {"MessageId": "1", "MD5OfMessageBody": hashlib.md5(b"db config: password=1234").hexdigest()}).encode())
    assert json.loads(part.body)["MD5OfMessageBody"] == DIGEST_MARKER


_BEANSTALK_SETTINGS = (
    b'<DescribeConfigurationSettingsResponse xmlns="https://elasticbeanstalk.amazonaws.com/docs/2010-12-01/">'
    b"<DescribeConfigurationSettingsResult><ConfigurationSettings><member><ApplicationName>app</ApplicationName>"
    b"<OptionSettings><member><Namespace>aws:elasticbeanstalk:application:environment</Namespace>"
    b"<OptionName>WAREHOUSE_URL</OptionName><Value>Tr0ub4dor-beanstalk</Value></member>"
    b"<member><Namespace>aws:autoscaling:launchconfiguration</Namespace><OptionName>InstanceType</OptionName>"
    b"<Value>t3.micro</Value></member></OptionSettings></member></ConfigurationSettings>"
    b"</DescribeConfigurationSettingsResult></DescribeConfigurationSettingsResponse>")
_LISTENERS = (
    b'<DescribeListenersResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">'
    b"<DescribeListenersResult><Listeners><member><ListenerArn>arn:l</ListenerArn><DefaultActions><member>"
    b"<Type>authenticate-oidc</Type><AuthenticateOidcConfig><Issuer>https://idp</Issuer><ClientId>app</ClientId>"
    b"<ClientSecret>Tr0ub4dor-oidc</ClientSecret></AuthenticateOidcConfig></member></DefaultActions></member>"
    b"</Listeners></DescribeListenersResult></DescribeListenersResponse>")


_CURATED_ANSWERS = [
    ("appsync", "ListApiKeys", json.dumps({"apiKeys": [{"id": "da2-4k7xq2m9zq5bfl3nwd8c6rj2ha", "description": "ci",
                                                        "expires": 1700000000}]}), "application/json", "ci"),
    ("glue", "GetJob", json.dumps({"Job": {"Name": "nightly", "DefaultArguments": {"--warehouse": "Tr0ub4dor-glue"}}}),
     "application/x-amz-json-1.1", "--warehouse"),
    ("glue", "GetJobRuns", json.dumps({"JobRuns": [{"Id": "jr_1", "Arguments": {"--conn": "Tr0ub4dor-run"}}]}),
     "application/x-amz-json-1.1", "--conn"),
    ("emr", "DescribeCluster", json.dumps({"Cluster": {"Id": "j-1", "Name": "etl", "Configurations": [
        {"Classification": "spark-env", "Configurations": [
            {"Classification": "export", "Properties": {"WAREHOUSE_URL": "Tr0ub4dor-emr"}}]}]}}),
     "application/x-amz-json-1.1", "spark-env"),
    ("kinesisanalyticsv2", "DescribeApplication", json.dumps({"ApplicationDetail": {
        "ApplicationName": "flink", "ApplicationConfigurationDescription": {"EnvironmentPropertyDescriptions": {
            "PropertyGroupDescriptions": [{"PropertyGroupId": "app", "PropertyMap": {"sink": "Tr0ub4dor-flink"}}]}}}}),
     "application/x-amz-json-1.1", "sink"),
    ("securityhub", "GetFindings", json.dumps({"Findings": [{"Id": "f-1", "Resources": [{
        "Type": "AwsLambdaFunction", "Details": {"AwsLambdaFunction": {
            "FunctionName": "fn", "Environment": {"Variables": {"SINK": "Tr0ub4dor-finding"}}}}}]}]}),
     "application/json", "SINK"),
    ("codepipeline", "GetPipeline", json.dumps({"pipeline": {"name": "p", "stages": [{"name": "build", "actions": [{
        "name": "a", "environmentVariables": [{"name": "SINK", "value": "Tr0ub4dor-pipeline"}]}]}]}}),
     "application/x-amz-json-1.1", "SINK"),
    ("lightsail", "GetContainerServices", json.dumps({"containerServices": [{
        "containerServiceName": "web", "currentDeployment": {
            "containers": {"app": {"image": "nginx", "environment": {"SINK": "Tr0ub4dor-lightsail"}}}}}]}),
     "application/x-amz-json-1.1", "SINK"),
    ("elasticbeanstalk", "DescribeConfigurationSettings", _BEANSTALK_SETTINGS, "text/xml", "WAREHOUSE_URL"),
    ("elbv2", "DescribeListeners", _LISTENERS, "text/xml", "https://idp"),
]


@pytest.mark.parametrize("service, operation, body, content_type, kept", _CURATED_ANSWERS,
                         ids=[f"{c[0]}:{c[1]}" for c in _CURATED_ANSWERS])
def test_curated_members_are_masked_by_where_they_sit_in_the_record_and_for_the_agent(service, operation, body,
                                                                                      content_type, kept):
    """Keys, arguments, properties and environments the models do not mark (an AppSync API key,
    which is its id; a Glue job's arguments; EMR's exported environment; a pipeline action's
    variables; Beanstalk's environment properties; an OIDC client secret) are masked by where they
    sit, whatever their names say: in the record always, and for the agent under the shipped
    policies, in an answer its SDK still parses."""
    from addons.core import actions
    from addons.core.policy import PolicySet
    from tests.test_policy import SHIPPED, principal

    action, level = actions.iam_action(service, operation)
    decision = PolicySet.load(SHIPPED).evaluate(principal(), types.SimpleNamespace(
        service=service, operation=operation, action=action, access_level=level, params={}, resources=[],
        region="us-east-1", account=None, error=None, implied=()))
    assert decision.decision == "allow", (action, decision.rule)
    raw = body.encode() if isinstance(body, str) else body
    secret = ("da2-4k7xq2m9zq5bfl3nwd8c6rj2ha" if service == "appsync"
              else re.search(r"Tr0ub4dor-\w+", raw.decode()).group())
    m = Masker(KEY)
    part, _ = m.response(call(service, operation), status=200, body=raw, content_type=content_type)  # no rule masks
    assert secret not in part.body and kept in part.body
    assert part.masked and {by for (_, _, by) in part.masked} == {"curated"}, part.masked
    _, agent = m.response(call(service, operation), status=200, body=raw, content_type=content_type,
                          policy=decision.mask_for_agent)
    copy = agent.body.decode()
    assert secret not in copy and kept in copy and AGENT_MARKER in copy and fingerprint_free(copy)
    parse(service, operation, agent.body)  # the SDK reads the masked answer
    if service == "elasticbeanstalk":  # the record keeps the other namespaces' settings; the agent gets none
        assert "t3.micro" in part.body and "t3.micro" not in copy


_CURATED_REQUESTS = [
    ("glue", "CreateConnection", json.dumps({"ConnectionInput": {"Name": "warehouse", "ConnectionType": "JDBC",
                                                                 "ConnectionProperties": {
        "JDBC_CONNECTION_URL": "jdbc:postgresql://db:5432/w", "USERNAME": "etl", "PASSWORD": "Tr0ub4dor-conn"}}}),
     "Tr0ub4dor-conn", "jdbc:postgresql://db:5432/w"),
    ("glue", "StartJobRun", json.dumps({"JobName": "nightly", "Arguments": {"--conn": "Tr0ub4dor-args"}}),
     "Tr0ub4dor-args", "--conn"),
    ("elasticache", "CreateUser", "Action=CreateUser&Version=2015-02-02&UserId=u1&UserName=app&Engine=redis"
     "&AccessString=on&Passwords.member.1=Tr0ub4dor-cache-pass", "Tr0ub4dor-cache-pass", "UserName=app"),
    ("elbv2", "CreateRule", "Action=CreateRule&Version=2015-12-01&ListenerArn=arn%3Al&Priority=1"
     "&Actions.member.1.Type=authenticate-oidc&Actions.member.1.AuthenticateOidcConfig.ClientId=app"
     "&Actions.member.1.AuthenticateOidcConfig.ClientSecret=Tr0ub4dor-oidc", "Tr0ub4dor-oidc", "ClientId=app"),
    ("elasticbeanstalk", "CreateEnvironment", "Action=CreateEnvironment&Version=2010-12-01&ApplicationName=app"
     "&OptionSettings.member.1.Namespace=aws%3Aelasticbeanstalk%3Aapplication%3Aenvironment"
     "&OptionSettings.member.1.OptionName=SINK&OptionSettings.member.1.Value=Tr0ub4dor-ebenv"
     "&OptionSettings.member.2.Namespace=aws%3Aautoscaling%3Alaunchconfiguration"
     "&OptionSettings.member.2.OptionName=InstanceType&OptionSettings.member.2.Value=t3.micro",
     "Tr0ub4dor-ebenv", "t3.micro"),
    ("neptune", "CreateDBInstance", "Action=CreateDBInstance&Version=2014-10-31&DBInstanceIdentifier=db1"
     "&DBInstanceClass=db.r5.large&Engine=neptune&MasterUserPassword=Tr0ub4dor-neptune", "Tr0ub4dor-neptune",
     "DBInstanceIdentifier=db1"),
]


@pytest.mark.parametrize("service, operation, body, secret, kept", _CURATED_REQUESTS,
                         ids=[f"{c[0]}:{c[1]}" for c in _CURATED_REQUESTS])
def test_curated_request_members_are_masked_in_the_record(service, operation, body, secret, kept):
    """Passwords, tokens, arguments and environments a request carries where the models do not mark
    them: the record's copy masks them (a Glue connection's PASSWORD property, not its URL; a
    Beanstalk environment property, not the instance type)."""
    part = Masker(KEY).request(call(service, operation), body=body.encode())
    assert secret not in part.body and kept in part.body
    assert any(by == "curated" for (_, _, by) in part.masked), part.masked


def test_an_appsync_api_key_named_in_the_url_is_masked_in_the_record():
    """An AppSync API key's id is the key: a call that names it (UpdateApiKey, DeleteApiKey) has it
    in its URL's path, which the record keeps masked as it keeps the parameter."""
    key = "da2-4k7xq2m9zq5bfl3nwd8c6rj2ha"
    m = Masker(KEY)
    c = call("appsync", "DeleteApiKey", params={"apiId": "api1", "id": key})
    params, counts = m.params(c)
    assert params["id"] == fp(key) and counts == {("params", "id", "curated"): 1}
    path, _, n = m.url_parts(f"/v1/apis/api1/apikeys/{key}", "", c.params, params)
    assert path == f"/v1/apis/api1/apikeys/{fp(key)}" and n == 1


def put_item_flow(*, answered: bool = False):
    """A DynamoDB PutItem whose item holds what a rule masks (``Item.ssn``), not yet answered
    (on its way upstream) unless ``answered``."""
    from addons.stage import CALL, DECISION, SIGNED

    item = {"TableName": "t", "Item": {"k": {"S": "a"}, "ssn": {"S": "123-45-6789"}}}
    f = tflow.tflow(resp=answered)
    f.request.path = "/"
    f.request.headers["content-type"] = "application/x-amz-json-1.0"
    f.request.content = json.dumps(item).encode()
    f.metadata[CALL] = call("dynamodb", "PutItem", params=item, action="dynamodb:PutItem")
    f.metadata[DECISION] = Decision("allow", "test-rule", "allowed", "v1", None, ("Item.ssn",), None, None, ())
    f.metadata[SIGNED] = types.SimpleNamespace(session_id="s1", role_arn="arn:aws:iam::123456789012:role/r",
                                               assumed_role_arn=None)
    return f


def test_the_request_is_masked_for_its_record_once_it_went_upstream_and_before_anything_reads_it():
    """The request's masked copy is only for its record: the request hook leaves it for the loop's
    next turn (after mitmproxy has sent the request upstream, while upstream answers); whatever reads
    it first (the record, the response's masking) has it made then. Either way the record holds
    the masked copy, never the value."""
    from addons.masking import Masking
    from addons.recorder import build_record

    addon = Masking(KEY)

    async def left_for_the_loop() -> tuple[bool, bool, bool]:
        f = put_item_flow()
        await addon.request(f)
        mc = addon.masked(f)
        left = mc.pending is not None and mc.request_body is None
        await asyncio.sleep(0)  # the loop's next turn
        return f, left, mc.pending is None and "123-45-6789" not in mc.request_body

    with taddons.context(addon):
        f, left, done = asyncio.run(left_for_the_loop())
    assert left and done
    r = build_record(f)
    assert "123-45-6789" not in r.request_body and r.params["Item"]["ssn"] == {"S": fp("123-45-6789")}
    assert {"part": "request", "path": "Item.ssn", "by": "policy", "count": 1} in r.masked

    async def read_first() -> object:
        f = put_item_flow()
        await addon.request(f)
        return build_record(f)  # before the loop's next turn: the record has it made

    with taddons.context(addon):
        r = asyncio.run(read_first())
    assert "123-45-6789" not in r.request_body and r.params["Item"]["ssn"] == {"S": fp("123-45-6789")}
    assert {"part": "request", "path": "Item.ssn", "by": "policy", "count": 1} in r.masked

    async def answered() -> tuple[object, bool]:  # refused or answered at once: nothing to wait for
        f = put_item_flow(answered=True)
        await addon.request(f)
        return f, addon.masked(f).pending is None and addon.masked(f).request_body is not None

    with taddons.context(addon):
        f, at_once = asyncio.run(answered())
    assert at_once and "123-45-6789" not in addon.masked(f).request_body


def test_a_request_whose_masking_fails_later_keeps_nothing_of_it_unmasked(monkeypatch):
    from addons.masking import Masking
    from addons.recorder import build_record

    addon = Masking(KEY)
    monkeypatch.setattr(addon.masker, "request", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))

    async def main():
        f = put_item_flow()
        f.request.path = "/?ssn=123-45-6789"
        await addon.request(f)
        return build_record(f)

    with taddons.context(addon):
        r = asyncio.run(main())
    assert r.request_body is None and r.request_headers == [] and r.params is None and "?" not in r.url
    assert "123-45-6789" not in json.dumps(dataclasses.asdict(r))
    assert "request: not masked (RuntimeError): its body, headers, parameters and query not kept" in r.body_note


@pytest.mark.parametrize("operation, body, path", [
    ("GetItem", {"Item": {"k": {"S": "a"}, "profile": {"M": {"email": {"S": "a@x"}, "phone": {"S": "555-0100"}}}}},
     "Item.profile.phone"),
    ("Scan", {"Items": [{"k": {"S": "a"}, "profile": {"M": {"phone": {"S": "555-0100"}}}}], "Count": 1},
     "Items[].profile.phone"),
])
def test_a_path_deeper_into_an_item_masks_the_attribute_it_names(operation, body, path):
    """A path into an item names its attribute (README), as a condition on a masked attribute reads
    it: Item.profile.phone, into the map profile, masked nothing (the path walked into the
    AttributeValue, where no `phone` is), while a filter on profile.email was refused as reading a
    masked attribute. It masks profile whole, as Item.profile does."""
    m = Masker(KEY)
    _, agent = m.response(call("dynamodb", operation), status=200, body=json.dumps(body).encode(), policy=(path,))
    _, whole = m.response(call("dynamodb", operation), status=200, body=json.dumps(body).encode(),
                          policy=(path.rsplit(".", 1)[0],))
    assert b"555-0100" not in agent.body and agent.body == whole.body
    got = json.loads(agent.body)
    item = got["Item"] if "Item" in got else got["Items"][0]
    assert item["k"] == {"S": "a"} and item["profile"] != body.get("Item", {}).get("profile")
