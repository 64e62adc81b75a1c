"""Fuzzing the masker (core.masking) for the record and for the agent: a secret planted anywhere in
any JSON, XML, form or CBOR body, header or query string never reaches the record; random bytes,
deep nesting, entity bombs and huge arrays never raise, never take long, and a body that cannot
be walked is not kept (its note says why) rather than kept unmasked. FUZZ_EXAMPLES raises the
number of examples per property."""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core.classifier import Classification
from addons.core.masking import AGENT_MARKER, MARKER_PREFIX, MARKER_RE, Masker, cbor_encode
from tests.support.bounds import not_hung

KEY = b"fingerprint-key-for-fuzzing-0001"


def fuzz(examples: int):
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Secrets the detectors know by their form, and the piece of each that must never be recorded.
SECRETS = {
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCfuzzA\n-----END PRIVATE KEY-----": "BAQEFAASCfuzzA",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmdXp6YWdlbnQifQ.c2lnbmF0dXJlZnV6enphYmM": "eyJzdWIiOiJmdXp6YWdlbnQifQ",
    "postgres://app:Fuzz3dPassw0rd@db.internal:5432/orders": "Fuzz3dPassw0rd",
    "aws_secret_access_key = Xk3/b9QmR2vT7wLp0sN4uYc8Hj6gFa1eZd5KiO2r": "Xk3/b9QmR2vT7wLp0sN4uYc8Hj6gFa1eZd5KiO2r",
}
FRAGMENTS = tuple(SECRETS.values())

# Calls of each protocol: (service, operation, protocol)
CALLS = [
    (None, None, None),
    ("dynamodb", "GetItem", "json"),
    ("dynamodb", "Scan", "json"),
    ("secretsmanager", "GetSecretValue", "json"),
    ("lambda", "GetFunction", "rest-json"),
    ("s3", "ListObjectsV2", "rest-xml"),
    ("sts", "AssumeRole", "query"),
    ("ec2", "DescribeInstances", "ec2"),
    ("cloudwatch", "ListMetrics", "smithy-rpc-v2-cbor"),
]
MASKER = Masker(KEY)


def call(spec) -> Classification:
    service, operation, protocol = spec
    return Classification(service=service, operation=operation, protocol=protocol)


def leaked(text: str | None) -> list[str]:
    return [f for f in FRAGMENTS if text and f in text]


def json_escaped(fragment: str) -> str:
    return json.dumps(fragment)[1:-1]


def assert_record_clean(part, original: bytes) -> None:
    """Nothing planted survives in what the record keeps; a body not kept says why."""
    body = part.body
    assert not leaked(body) and not leaked(json.dumps(part.headers)), (part.note, body and body[:300])
    if body is not None:
        for fragment in FRAGMENTS:  # as JSON writes it, too
            assert json_escaped(fragment) not in body
    elif original:
        assert part.note, "a body that is not kept says why"


def planted(secret: str, leaf) -> st.SearchStrategy:
    return st.sampled_from([secret, f"config: {secret}", f"{secret} and more", leaf])


def deep(depth: int, leaf):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))


@st.composite
def json_with_secret(draw):
    """A JSON value with the secret as (part of) one of its string leaves, at any depth."""
    secret = draw(st.sampled_from(sorted(SECRETS)))
    keys = st.sampled_from(["Item", "Items", "SecretString", "Value", "Name", "Tags", "Environment", "Variables",
                            "Configuration", "S", "M", "L", "message"]) | st.text(max_size=8)
    value = draw(st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(keys, inner, max_size=3), max_leaves=15))
    path = []
    node = value
    while isinstance(node, (list, dict)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    text = draw(st.sampled_from([secret, f"config: {secret}", f"{secret} and more"]))
    if not path:
        return {"Item": {"note": {"S": text}}, "Extra": value}
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = text
    return value


@given(json_with_secret(), st.sampled_from(CALLS), st.booleans())
@fuzz(300)
@example({"Extra": "x", "Deep": deep(70, next(iter(SECRETS)))}, CALLS[1], True)  # was kept unmasked below 64 levels
@example({"Item": {"note": {"S": next(iter(SECRETS))}}}, CALLS[6], True)  # JSON read as a form: the key was not masked
def test_a_secret_anywhere_in_json_never_reaches_the_record(value, spec, is_request):
    body = json.dumps(value).encode()
    if is_request:
        part = MASKER.request(call(spec), body=body, content_type="application/json")
    else:
        part, _ = MASKER.response(call(spec), status=200, body=body, content_type="application/json")
    assert_record_clean(part, body)


def _xml(draw, depth: int = 0) -> str:
    tag = draw(st.sampled_from(["Credentials", "SessionToken", "member", "item", "Value", "Contents", "Key",
                                "UserData", "a"]))
    if depth > 4 or draw(st.booleans()):
        text = draw(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>&\x00"), max_size=20))
        return f"<{tag}>{text}</{tag}>"
    return f"<{tag}>" + "".join(_xml(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))) + f"</{tag}>"


@st.composite
def xml_with_secret(draw) -> bytes:
    secret = draw(st.sampled_from(sorted(SECRETS))).replace("&", "&amp;")
    inner = _xml(draw)
    where = draw(st.integers(0, len(inner)))
    cut = inner.rfind(">", 0, where) + 1 or inner.find(">") + 1  # between elements, never inside a tag
    root = draw(st.sampled_from(["AssumeRoleResponse", "ListBucketResult", "DescribeInstancesResponse", "Error"]))
    planted = draw(st.sampled_from([f"<Note>{secret}</Note>", secret,  # a leaf, or text beside elements
                                    '<Note value="{}"/>'.format(secret.replace("\n", "&#10;").replace('"', "&quot;"))]))
    doc = inner[:cut] + planted + inner[cut:]
    prolog = draw(st.sampled_from(["", '<?xml version="1.0" encoding="UTF-8"?>\n',
                                   '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]>']))
    return f"{prolog}<{root} xmlns=\"https://example.com/doc\">{doc}</{root}>".encode()


@given(xml_with_secret(), st.sampled_from(CALLS), st.booleans())
@fuzz(300)
@example(b"<Error><Note value='password=Fuzz3dPassw0rd'/></Error>", CALLS[0], False)  # attributes were not scanned
@example(b"<Error><a>x</a>postgres://app:Fuzz3dPassw0rd@db.internal:5432/orders<b/></Error>", CALLS[0], False)  # mixed
@example(b'<AssumeRoleResponse><Note v="-----BEGIN PRIVATE KEY-----&#10;MIIEvQIBADANBgkqhkiG9w0BAQEFAASCfuzzA&#10;'
         b'-----END PRIVATE KEY-----"/></AssumeRoleResponse>', CALLS[6], True)  # read as a form: split at &
def test_a_secret_anywhere_in_xml_never_reaches_the_record(body, spec, is_request):
    if is_request:
        part = MASKER.request(call(spec), body=body, content_type="application/xml")
    else:
        part, _ = MASKER.response(call(spec), status=200, body=body, content_type="text/xml")
    assert_record_clean(part, body)


@given(st.sampled_from(sorted(SECRETS)), st.sampled_from(CALLS),
       st.lists(st.tuples(st.sampled_from(["Action", "Version", "Filter.1.Name", "Password", "UserData", "a.b.c",
                                           "Tag.1.Value"]) | st.text(max_size=10), st.text(max_size=10)), max_size=5),
       st.integers(0, 5))
@fuzz(200)
@example(next(iter(SECRETS)), CALLS[8], [], 0)  # a form sent to a CBOR operation: kept URL-encoded, unmasked
def test_a_secret_in_a_form_body_or_query_never_reaches_the_record(secret, spec, pairs, at):
    from urllib.parse import urlencode

    pairs = list(pairs)
    pairs.insert(min(at, len(pairs)), ("Note", secret))
    text = urlencode(pairs)
    part = MASKER.request(call(spec), body=text.encode(), query=text, content_type="application/x-www-form-urlencoded")
    assert_record_clean(part, text.encode())
    assert not leaked(part.query) and not leaked(part.query and __import__("urllib.parse").parse.unquote(part.query))


@given(st.sampled_from(sorted(SECRETS)), st.sampled_from(["x-amz-meta-note", "x-custom", "authorization",
                                                          "x-amz-security-token", "x-amz-server-side-encryption-customer-key"]))
@fuzz(100)
def test_a_secret_in_a_header_never_reaches_the_record(secret, name):
    headers = [("Host", "s3.amazonaws.com"), (name, secret.replace("\n", " "))]
    part = MASKER.request(call(("s3", "PutObject", "rest-xml")), body=None, headers=headers)
    assert not leaked(json.dumps(part.headers)) and not leaked(json.dumps(part.headers).replace("\\n", " "))


@given(st.one_of(st.binary(max_size=500), st.binary(max_size=200).map(lambda b: b"{" + b), st.binary(max_size=200)
                 .map(lambda b: b"<a>" + b), st.binary(max_size=200).map(lambda b: b"\xa1" + b)),
       st.sampled_from(CALLS), st.sampled_from(["", "application/json", "text/xml", "application/cbor",
                                                "application/x-www-form-urlencoded", "application/octet-stream"]),
       st.sampled_from([200, 400, 500]))
@fuzz(300)
def test_any_bytes_in_any_protocol_never_raise(body, spec, content_type, status):
    part = MASKER.request(call(spec), body=body, content_type=content_type)
    assert part.body is None or isinstance(part.body, str)
    part, copy = MASKER.response(call(spec), status=status, body=body, content_type=content_type,
                                 policy=("SecretString", "Item.ssn"))
    assert part.body is None or isinstance(part.body, str)
    assert copy is None or copy.body is None or isinstance(copy.body, bytes)


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip()), json_leaves, st.booleans())
@fuzz(200)
@example("hunter2", float("inf"), False)  # Infinity made the record fall back to text, the secret in clear
def test_the_agents_copy_never_holds_a_member_policy_masks(secret, other, nested):
    """mask_for_agent: SecretString. Whatever else the body holds, the agent's copy has AGENT_MARKER
    there (and no fingerprint upstream did not send), or the masker says it could not make the copy
    (and the addon withholds the response); the record has the secret's fingerprint there."""
    value = {"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s", "Name": "s", "SecretString": secret,
             "Other": [[other]] if nested else other}
    body = json.dumps(value).encode()
    part, copy = MASKER.response(call(("secretsmanager", "GetSecretValue", "json")), status=200, body=body,
                                 policy=("SecretString",))
    if copy.withheld is not None:  # the masker says why it could not make the copy: the addon withholds it
        assert "agent's copy not masked" in part.note and copy.body is None
    else:
        assert json.loads(copy.body)["SecretString"] == AGENT_MARKER
        if MARKER_PREFIX not in body.decode():
            assert MARKER_PREFIX not in copy.body.decode()
    if part.body is None:
        assert "not kept" in part.note
    else:
        assert json.loads(part.body)["SecretString"] == MASKER.marker(secret)


# -- bombs ---------------------------------------------------------------------------------------

def timed(fn):
    with not_hung():
        return fn()


@pytest.mark.parametrize("spec", CALLS, ids=lambda s: s[0] or "no-model")
def test_json_nested_100k_levels_is_not_kept_and_does_not_raise(spec):
    body = b"[" * 100_000 + json.dumps(next(iter(SECRETS))).encode() + b"]" * 100_000
    part = timed(lambda: MASKER.request(call(spec), body=body, content_type="application/json"))
    assert_record_clean(part, body)
    part, _ = timed(lambda: MASKER.response(call(spec), status=200, body=body, content_type="application/json"))
    assert_record_clean(part, body)


@pytest.mark.parametrize("depth", [70, 129, 300, 900])
def test_a_secret_nested_deeper_than_the_walk_is_never_kept_unmasked(depth):
    """The walk stopped at 64 levels and kept what lay below unmasked; now it masks down to 128
    levels and does not keep a body nested deeper."""
    secret = next(iter(SECRETS))
    body = ("[" * depth + json.dumps(secret) + "]" * depth).encode()
    for spec in CALLS[1:4]:
        part, _ = MASKER.response(call(spec), status=200, body=body, content_type="application/json")
        assert_record_clean(part, body)
        if depth > 128:
            assert part.body is None and "nested deeper than" in part.note
        else:
            assert MARKER_RE.search(part.body)


def test_parameters_nested_too_deeply_are_not_kept():
    secret = next(iter(SECRETS))
    params = {"TableName": "t"}
    node = params
    for _ in range(200):
        node["Next"] = {}
        node = node["Next"]
    node["Value"] = secret
    with pytest.raises(Exception, match="nested deeper"):  # the addon then keeps no parameters
        MASKER.params(Classification(service="dynamodb", operation="PutItem", protocol="json", params=params))


ENTITY_BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
               + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                          for i in range(1, 10))
               + b"]><AssumeRoleResponse><AssumeRoleResult><Credentials><SessionToken>&lol9;</SessionToken>"
               + b"<SecretAccessKey>Xk3/b9QmR2vT7wLp0sN4uYc8Hj6gFa1eZd5KiO2r</SecretAccessKey>"
               + b"</Credentials></AssumeRoleResult></AssumeRoleResponse>")
QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"x" * 100_000 + b'">]><AssumeRoleResponse>'
             + b"&a;" * 20_000 + b"<Note>aws_secret_access_key = Xk3/b9QmR2vT7wLp0sN4uYc8Hj6gFa1eZd5KiO2r</Note>"
             + b"</AssumeRoleResponse>")
EXTERNAL = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>'
            b"<AssumeRoleResponse>&ext;</AssumeRoleResponse>")


@pytest.mark.parametrize("bomb", [ENTITY_BOMB, QUADRATIC, EXTERNAL], ids=["billion-laughs", "quadratic", "external"])
@pytest.mark.parametrize("spec", [CALLS[0], CALLS[5], CALLS[6]], ids=["no-model", "s3", "sts"])
def test_xml_entity_bombs_are_never_expanded(bomb, spec):
    for policy in ((), ("Credentials.SessionToken",)):
        part, copy = timed(lambda: MASKER.response(call(spec), status=200, body=bomb, content_type="text/xml",
                                                   policy=policy))
        assert_record_clean(part, bomb)
        assert part.body is None or len(part.body) <= len(bomb), "nothing was expanded"
        assert "root:" not in (part.body or "")
        if policy and spec[0] == "sts":
            assert copy.withheld and copy.body is None and "agent's copy not masked" in part.note  # withheld


def test_xml_nested_100k_levels_is_not_kept_when_it_must_be_walked():
    body = (b"<AssumeRoleResponse>" + b"<a>" * 100_000
            + b"aws_secret_access_key = Xk3/b9QmR2vT7wLp0sN4uYc8Hj6gFa1eZd5KiO2r" + b"</a>" * 100_000
            + b"</AssumeRoleResponse>")
    for spec in (CALLS[0], CALLS[5], CALLS[6]):
        part, _ = timed(lambda: MASKER.response(call(spec), status=200, body=body, content_type="text/xml"))
        assert part.body is None and "nested deeper than" in part.note
        assert_record_clean(part, body)


def test_cbor_nested_deeply_does_not_raise():
    body = b"\x81" * 100_000 + b"\x61a"
    part, _ = timed(lambda: MASKER.response(call(CALLS[8]), status=200, body=body, content_type="application/cbor"))
    assert part.body is None and part.note


@pytest.mark.parametrize("items", [10_000, 50_000])
def test_huge_arrays_are_masked_in_bounded_time(items):
    secret = next(iter(SECRETS))
    body = json.dumps({"Items": [{"a": {"S": "x"}}] * items + [{"a": {"S": secret}}], "Count": items + 1}).encode()
    part, _ = timed(lambda: MASKER.response(call(CALLS[2]), status=200, body=body))
    assert_record_clean(part, body) or MARKER_RE.search(part.body)
    body = cbor_encode({"Items": ["x"] * items + [secret]})
    part, _ = timed(lambda: MASKER.response(call(CALLS[8]), status=200, body=body))
    assert_record_clean(part, body)


def test_a_form_key_nested_100k_levels_does_not_raise():
    body = b"Action=RunInstances&Version=2016-11-15&" + b"UserData." * 100_000 + b"1=" + base64.b64encode(b"pw=x")
    part = timed(lambda: MASKER.request(call(("ec2", "RunInstances", "ec2")), body=body))
    assert part.body is None or "pw=x" not in part.body


def test_a_secret_in_an_object_key_is_not_kept():
    body = json.dumps({"Tags": {next(iter(SECRETS)): "v"}}).encode()
    part, _ = MASKER.response(call(("lambda", "ListTags", "rest-json")), status=200, body=body)
    assert part.body is None and "object key" in part.note


@pytest.mark.parametrize("body", [
    b'{"Name": "db", "SecretString": "hunter2-plain", "ARN": "arn:aws:secretsmanager:us-east-1:1:secret:db',  # cut short
    b'{"Name": "db", "SecretString": "hunter2-plain", "Other": NaN}',  # parsed, but not JSON that can be written
])
def test_a_broken_body_with_sensitive_members_is_not_kept_as_text(body):
    """Text detectors cannot know which values the model marks sensitive: such a body is not kept."""
    part, copy = MASKER.response(call(("secretsmanager", "GetSecretValue", "json")), status=200, body=body,
                                 policy=("SecretString",))
    assert part.body is None and "not kept" in part.note
    assert copy.withheld and copy.body is None and "agent's copy not masked" in part.note
    part = MASKER.request(call(("secretsmanager", "CreateSecret", "json")), body=body.replace(b"Name", b"Name"))
    assert part.body is None or "hunter2-plain" not in part.body
