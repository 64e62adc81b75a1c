"""SQS in the AWS Query protocol, as older SDKs send it (botocore up to 1.31, the AWS CLI v1 up to
1.29, older Java, Go and PHP SDKs): form posts with the names of SQS's last Query model
(Attribute.1.Name, MessageAttribute.1.Value.StringValue, SendMessageBatchRequestEntry.1.Id, ...),
which botocore's JSON model of SQS no longer carries. Each is read into the same parameters as
the same call sent in JSON by today's boto3; a form member that names nothing is still refused."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from urllib.parse import urlencode

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session
import pytest

from addons.core import classifier
from addons.core.classifier import classify
from tests.support.gateway import TEST_POLICY, Gateway
from tests.test_classifier import ACCOUNT, QUEUE_URL, capture, run
from tests.test_classifier import no_aws_config as no_aws_config_here

no_aws_config = no_aws_config_here  # an autouse fixture: no AWS configuration of the machine reaches boto3

HOST = "sqs.us-east-1.amazonaws.com"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
POLICY = json.dumps({"Version": "2012-10-17", "Statement": []})


def message_attributes(prefix: str) -> list[tuple[str, str]]:
    """The form of MESSAGE_ATTRIBUTES under ``prefix`` (MessageAttribute, or a batch entry's)."""
    return [(f"{prefix}.1.Name", "colour"), (f"{prefix}.1.Value.DataType", "String"),
            (f"{prefix}.1.Value.StringValue", "blue"),
            (f"{prefix}.2.Name", "raw"), (f"{prefix}.2.Value.DataType", "Binary"),
            (f"{prefix}.2.Value.BinaryValue", base64.b64encode(b"\x00\x01\xff").decode()),
            (f"{prefix}.3.Name", "many"), (f"{prefix}.3.Value.DataType", "String.list"),
            (f"{prefix}.3.Value.StringListValue.1", "a"), (f"{prefix}.3.Value.StringListValue.2", "b"),
            (f"{prefix}.3.Value.BinaryListValue.1", base64.b64encode(b"x").decode())]


MESSAGE_ATTRIBUTES = {"colour": {"DataType": "String", "StringValue": "blue"},
                      "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
                      "many": {"DataType": "String.list", "StringListValues": ["a", "b"], "BinaryListValues": [b"x"]}}
SYSTEM_ATTRIBUTES = {"AWSTraceHeader": {"DataType": "String", "StringValue": TRACE}}


def system_attributes(prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}.1.Name", "AWSTraceHeader"), (f"{prefix}.1.Value.DataType", "String"),
            (f"{prefix}.1.Value.StringValue", TRACE)]


# Every SQS operation: (boto3 method, its parameters, the form an older SDK sends for the same call,
# written from SQS's last Query model: botocore 1.31's sqs/2012-11-05/service-2.json)
CALLS = {
    "CreateQueue": ("create_queue", {
        "QueueName": "jobs", "Attributes": {"VisibilityTimeout": "5", "DelaySeconds": "2"},
        "tags": {"team": "data", "env": "test"}}, [
        ("QueueName", "jobs"), ("Attribute.1.Name", "VisibilityTimeout"), ("Attribute.1.Value", "5"),
        ("Attribute.2.Name", "DelaySeconds"), ("Attribute.2.Value", "2"),
        ("Tag.1.Key", "team"), ("Tag.1.Value", "data"), ("Tag.2.Key", "env"), ("Tag.2.Value", "test")]),
    "SetQueueAttributes": ("set_queue_attributes", {
        "QueueUrl": QUEUE_URL, "Attributes": {"Policy": POLICY, "MaximumMessageSize": "2048"}}, [
        ("QueueUrl", QUEUE_URL), ("Attribute.1.Name", "Policy"), ("Attribute.1.Value", POLICY),
        ("Attribute.2.Name", "MaximumMessageSize"), ("Attribute.2.Value", "2048")]),
    "GetQueueAttributes": ("get_queue_attributes", {
        "QueueUrl": QUEUE_URL, "AttributeNames": ["QueueArn", "VisibilityTimeout"]}, [
        ("QueueUrl", QUEUE_URL), ("AttributeName.1", "QueueArn"), ("AttributeName.2", "VisibilityTimeout")]),
    "ReceiveMessage": ("receive_message", {
        "QueueUrl": QUEUE_URL, "AttributeNames": ["All"], "MessageAttributeNames": ["All", "colour"],
        "MessageSystemAttributeNames": ["SenderId"], "MaxNumberOfMessages": 10, "VisibilityTimeout": 30,
        "WaitTimeSeconds": 1, "ReceiveRequestAttemptId": "attempt-1"}, [
        ("QueueUrl", QUEUE_URL), ("AttributeName.1", "All"), ("MessageAttributeName.1", "All"),
        ("MessageAttributeName.2", "colour"), ("MessageSystemAttributeName.1", "SenderId"),
        ("MaxNumberOfMessages", "10"), ("VisibilityTimeout", "30"), ("WaitTimeSeconds", "1"),
        ("ReceiveRequestAttemptId", "attempt-1")]),
    "SendMessage": ("send_message", {
        "QueueUrl": QUEUE_URL, "MessageBody": "hello", "DelaySeconds": 3, "MessageAttributes": MESSAGE_ATTRIBUTES,
        "MessageSystemAttributes": SYSTEM_ATTRIBUTES, "MessageDeduplicationId": "d1", "MessageGroupId": "g1"}, [
        ("QueueUrl", QUEUE_URL), ("MessageBody", "hello"), ("DelaySeconds", "3"),
        *message_attributes("MessageAttribute"), *system_attributes("MessageSystemAttribute"),
        ("MessageDeduplicationId", "d1"), ("MessageGroupId", "g1")]),
    "SendMessageBatch": ("send_message_batch", {
        "QueueUrl": QUEUE_URL, "Entries": [
            {"Id": "m1", "MessageBody": "one", "DelaySeconds": 1, "MessageAttributes": MESSAGE_ATTRIBUTES},
            {"Id": "m2", "MessageBody": "two", "MessageSystemAttributes": SYSTEM_ATTRIBUTES,
             "MessageDeduplicationId": "d2", "MessageGroupId": "g2"}]}, [
        ("QueueUrl", QUEUE_URL), ("SendMessageBatchRequestEntry.1.Id", "m1"),
        ("SendMessageBatchRequestEntry.1.MessageBody", "one"), ("SendMessageBatchRequestEntry.1.DelaySeconds", "1"),
        *message_attributes("SendMessageBatchRequestEntry.1.MessageAttribute"),
        ("SendMessageBatchRequestEntry.2.Id", "m2"), ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
        *system_attributes("SendMessageBatchRequestEntry.2.MessageSystemAttribute"),
        ("SendMessageBatchRequestEntry.2.MessageDeduplicationId", "d2"),
        ("SendMessageBatchRequestEntry.2.MessageGroupId", "g2")]),
    "DeleteMessageBatch": ("delete_message_batch", {
        "QueueUrl": QUEUE_URL,
        "Entries": [{"Id": "a", "ReceiptHandle": "rh-a"}, {"Id": "b", "ReceiptHandle": "rh-b"}]}, [
        ("QueueUrl", QUEUE_URL), ("DeleteMessageBatchRequestEntry.1.Id", "a"),
        ("DeleteMessageBatchRequestEntry.1.ReceiptHandle", "rh-a"), ("DeleteMessageBatchRequestEntry.2.Id", "b"),
        ("DeleteMessageBatchRequestEntry.2.ReceiptHandle", "rh-b")]),
    "ChangeMessageVisibilityBatch": ("change_message_visibility_batch", {
        "QueueUrl": QUEUE_URL, "Entries": [{"Id": "a", "ReceiptHandle": "rh-a", "VisibilityTimeout": 60},
                                           {"Id": "b", "ReceiptHandle": "rh-b"}]}, [
        ("QueueUrl", QUEUE_URL), ("ChangeMessageVisibilityBatchRequestEntry.1.Id", "a"),
        ("ChangeMessageVisibilityBatchRequestEntry.1.ReceiptHandle", "rh-a"),
        ("ChangeMessageVisibilityBatchRequestEntry.1.VisibilityTimeout", "60"),
        ("ChangeMessageVisibilityBatchRequestEntry.2.Id", "b"),
        ("ChangeMessageVisibilityBatchRequestEntry.2.ReceiptHandle", "rh-b")]),
    "TagQueue": ("tag_queue", {"QueueUrl": QUEUE_URL, "Tags": {"team": "data", "cost": "42"}}, [
        ("QueueUrl", QUEUE_URL), ("Tag.1.Key", "team"), ("Tag.1.Value", "data"), ("Tag.2.Key", "cost"),
        ("Tag.2.Value", "42")]),
    "UntagQueue": ("untag_queue", {"QueueUrl": QUEUE_URL, "TagKeys": ["team", "cost"]}, [
        ("QueueUrl", QUEUE_URL), ("TagKey.1", "team"), ("TagKey.2", "cost")]),
    "AddPermission": ("add_permission", {
        "QueueUrl": QUEUE_URL, "Label": "share", "AWSAccountIds": ["111122223333", "444455556666"],
        "Actions": ["SendMessage", "ReceiveMessage"]}, [
        ("QueueUrl", QUEUE_URL), ("Label", "share"), ("AWSAccountId.1", "111122223333"),
        ("AWSAccountId.2", "444455556666"), ("ActionName.1", "SendMessage"), ("ActionName.2", "ReceiveMessage")]),
    "RemovePermission": ("remove_permission", {"QueueUrl": QUEUE_URL, "Label": "share"}, [
        ("QueueUrl", QUEUE_URL), ("Label", "share")]),
    "ChangeMessageVisibility": ("change_message_visibility", {
        "QueueUrl": QUEUE_URL, "ReceiptHandle": "rh", "VisibilityTimeout": 0}, [
        ("QueueUrl", QUEUE_URL), ("ReceiptHandle", "rh"), ("VisibilityTimeout", "0")]),
    "DeleteMessage": ("delete_message", {"QueueUrl": QUEUE_URL, "ReceiptHandle": "rh"}, [
        ("QueueUrl", QUEUE_URL), ("ReceiptHandle", "rh")]),
    "DeleteQueue": ("delete_queue", {"QueueUrl": QUEUE_URL}, [("QueueUrl", QUEUE_URL)]),
    "PurgeQueue": ("purge_queue", {"QueueUrl": QUEUE_URL}, [("QueueUrl", QUEUE_URL)]),
    "ListQueueTags": ("list_queue_tags", {"QueueUrl": QUEUE_URL}, [("QueueUrl", QUEUE_URL)]),
    "GetQueueUrl": ("get_queue_url", {"QueueName": "jobs", "QueueOwnerAWSAccountId": ACCOUNT}, [
        ("QueueName", "jobs"), ("QueueOwnerAWSAccountId", ACCOUNT)]),
    "ListQueues": ("list_queues", {"QueueNamePrefix": "j", "NextToken": "t", "MaxResults": 5}, [
        ("QueueNamePrefix", "j"), ("NextToken", "t"), ("MaxResults", "5")]),
    "ListDeadLetterSourceQueues": ("list_dead_letter_source_queues", {
        "QueueUrl": QUEUE_URL, "NextToken": "t", "MaxResults": 5}, [
        ("QueueUrl", QUEUE_URL), ("NextToken", "t"), ("MaxResults", "5")]),
    "StartMessageMoveTask": ("start_message_move_task", {
        "SourceArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:dlq", "DestinationArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:jobs",
        "MaxNumberOfMessagesPerSecond": 50}, [
        ("SourceArn", f"arn:aws:sqs:us-east-1:{ACCOUNT}:dlq"),
        ("DestinationArn", f"arn:aws:sqs:us-east-1:{ACCOUNT}:jobs"),
        ("MaxNumberOfMessagesPerSecond", "50")]),
    "ListMessageMoveTasks": ("list_message_move_tasks", {
        "SourceArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:dlq", "MaxResults": 3}, [
        ("SourceArn", f"arn:aws:sqs:us-east-1:{ACCOUNT}:dlq"), ("MaxResults", "3")]),
    "CancelMessageMoveTask": ("cancel_message_move_task", {"TaskHandle": "task-1"}, [("TaskHandle", "task-1")]),
}


def sqs_model():
    return botocore.session.get_session().get_service_model("sqs")


def form_request(operation: str, pairs: list[tuple[str, str]]) -> classifier.Classification:
    """The form classified as the gateway sees it: a POST to SQS's endpoint, signed for sqs."""
    signed = capture("sqs", "list_queues")
    headers = {"Authorization": signed["headers"]["Authorization"], "Content-Type": FORM}
    body = urlencode([("Action", operation), ("Version", "2012-11-05"), *pairs]).encode()
    return classify("POST", HOST, "/", "", headers, body)


def test_every_sqs_operation_is_covered():
    assert set(CALLS) == set(sqs_model().operation_names)


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_an_old_sdks_query_form_reads_as_todays_json(operation):
    method, params, pairs = CALLS[operation]
    today = run(capture("sqs", method, **params))
    assert (today.operation, today.protocol, today.error) == (operation, "json", None)
    old = form_request(operation, pairs)
    assert (old.operation, old.protocol, old.error) == (operation, "query", None), old.error
    assert old.params == today.params
    assert (old.action, old.resources, old.account) == (today.action, today.resources, today.account)


def test_every_list_and_map_of_sqs_has_its_query_name():
    """A member botocore's JSON model gives no Query name has one in the overlay: a new list or map
    member in a newer model fails here rather than in front of an older SDK."""
    model, names = sqs_model(), classifier.QUERY_NAMES["sqs"]
    seen, todo = set(), [model.operation_model(op).input_shape for op in model.operation_names]
    while todo:
        shape = todo.pop()
        if shape is None or shape.name in seen:
            continue
        seen.add(shape.name)
        if shape.type_name == "structure":
            for name, member in shape.members.items():
                if member.type_name in ("list", "map") and not classifier.has_query_name(member):
                    assert name in names.members.get(shape.name, {}), f"{shape.name}.{name}"
                todo.append(member)
        elif shape.type_name == "list":
            todo.append(shape.member)
        elif shape.type_name == "map":
            assert shape.name in names.maps, shape.name
            todo.append(shape.value)


def test_the_overlay_is_for_query_forms_of_a_service_whose_model_lacks_them():
    sqs = classifier.entry_from_metadata("sqs", sqs_model().metadata)
    assert classifier.query_names_of(sqs) is classifier.QUERY_NAMES["sqs"]
    sts = botocore.session.get_session().get_service_model("sts")
    assert classifier.query_names_of(classifier.entry_from_metadata("sts", sts.metadata)) is None
    # the JSON body names the members as the JSON model does, overlay or not
    today = run(capture("sqs", "create_queue", QueueName="q", Attributes={"VisibilityTimeout": "5"}))
    assert today.params == {"QueueName": "q", "Attributes": {"VisibilityTimeout": "5"}} and not today.error


@pytest.mark.parametrize("operation, pairs, reason", [
    ("CreateQueue", [("QueueName", "q"), ("Bogus", "1")], "Bogus: not a member of CreateQueueRequest"),
    # the JSON model's names are not what SQS reads from a form
    ("CreateQueue", [("QueueName", "q"), ("Attributes.1.key", "VisibilityTimeout"), ("Attributes.1.value", "5")],
     "Attributes: not a member of CreateQueueRequest"),
    ("CreateQueue", [("QueueName", "q"), ("Attribute.1.Name", "VisibilityTimeout"), ("Attribute.1.Value", "5"),
                     ("Attribute.1.Other", "x")],
     "Attributes[0].Other: not Name or Value of an entry of QueueAttributeMap"),
    ("GetQueueAttributes", [("QueueUrl", QUEUE_URL), ("AttributeNames.1", "All")],
     "AttributeNames: not a member of GetQueueAttributesRequest"),
    ("SendMessage", [("QueueUrl", QUEUE_URL), ("MessageBody", "x"), ("MessageAttribute.1.Name", "a"),
                     ("MessageAttribute.1.Value.DataType", "String"), ("MessageAttribute.1.Value.Colour", "red")],
     "MessageAttributes.a.Colour: not a member of MessageAttributeValue"),
    ("SendMessageBatch", [("QueueUrl", QUEUE_URL), ("SendMessageBatchRequestEntry.1.Id", "1"),
                          ("SendMessageBatchRequestEntry.1.MessageBody", "x"),
                          ("SendMessageBatchRequestEntry.1.Body", "y")],
     "Entries[0].Body: not a member of SendMessageBatchRequestEntry"),
    ("SendMessageBatch", [("QueueUrl", QUEUE_URL), ("Entries.1.Id", "1"), ("Entries.1.MessageBody", "x")],
     "Entries: not a member of SendMessageBatchRequest"),
])
def test_a_form_member_that_names_nothing_is_still_refused(operation, pairs, reason):
    got = form_request(operation, pairs)
    assert (got.operation, got.protocol) == (operation, "query")
    assert got.error and reason in got.error, got.error


# ---------------------------------------------------------------------------------------------
# Through a real gateway, upstream moto (which reads SQS's Query forms with the same names)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    with Gateway(tmp_path_factory.mktemp("sqsq"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as g:
        yield g


def query_call(gw: Gateway, token: str, operation: str, pairs: list[tuple[str, str]], path: str = "/") -> tuple[int, str]:
    """A Query form as an older SDK posts it, SigV4-signed, through the proxy (transport A)."""
    body = urlencode([("Action", operation), ("Version", "2012-11-05"), *pairs])
    request = botocore.awsrequest.AWSRequest("POST", f"https://{HOST}{path}", data=body, headers={"Content-Type": FORM})
    credentials = botocore.credentials.Credentials("agentgate", "x")
    botocore.auth.SigV4Auth(credentials, "sqs", "us-east-1").add_auth(request)
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=60)
    proxy_auth = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
    conn.set_tunnel(HOST, 443, headers={"Proxy-Authorization": proxy_auth})
    try:
        conn.request("POST", path, body=body.encode(), headers=dict(request.headers.items()))
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_an_old_sdks_query_sqs_calls_go_through_the_gateway(gw, issuer):
    token = issuer.mint("query-sqs-agent", groups=["data-agents"])
    status, text = query_call(gw, token, "CreateQueue", [
        ("QueueName", "old-sdk"), ("Attribute.1.Name", "VisibilityTimeout"), ("Attribute.1.Value", "7"),
        ("Attribute.2.Name", "DelaySeconds"), ("Attribute.2.Value", "0")])
    assert status == 200, text
    url = text.split("<QueueUrl>", 1)[1].split("</QueueUrl>", 1)[0]
    assert url.endswith("/old-sdk")
    status, text = query_call(gw, token, "GetQueueAttributes", [
        ("QueueUrl", url), ("AttributeName.1", "VisibilityTimeout")])
    assert status == 200 and "<Name>VisibilityTimeout</Name>" in text and "<Value>7</Value>" in text, text

    status, text = query_call(gw, token, "SendMessage", [
        ("QueueUrl", url), ("MessageBody", "hello"), ("MessageAttribute.1.Name", "colour"),
        ("MessageAttribute.1.Value.DataType", "String"), ("MessageAttribute.1.Value.StringValue", "blue")])
    assert status == 200 and "<MD5OfMessageAttributes>" in text, text
    status, text = query_call(gw, token, "SendMessageBatch", [
        ("QueueUrl", url), ("SendMessageBatchRequestEntry.1.Id", "m1"),
        ("SendMessageBatchRequestEntry.1.MessageBody", "one"),
        ("SendMessageBatchRequestEntry.2.Id", "m2"), ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
        ("SendMessageBatchRequestEntry.2.MessageAttribute.1.Name", "n"),
        ("SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.DataType", "Number"),
        ("SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue", "42")])
    assert status == 200 and text.count("<SendMessageBatchResultEntry>") == 2 and "<Id>m2</Id>" in text, text
    assert "BatchResultErrorEntry" not in text, text

    status, text = query_call(gw, token, "ReceiveMessage", [
        ("QueueUrl", url), ("AttributeName.1", "All"), ("MessageAttributeName.1", "All"),
        ("MaxNumberOfMessages", "10")])
    assert status == 200, text
    assert text.count("<Message>") == 3 and "<Body>hello</Body>" in text, text
    assert "<Name>colour</Name>" in text and "<StringValue>blue</StringValue>" in text  # the message attribute
    assert "<Name>SenderId</Name>" in text  # the system attributes, AttributeName.1=All

    records = [r for r in gw.records() if r["principal"] == "query-sqs-agent"]
    calls = [(r["operation"], r["action"], json.loads(r["params"]) if isinstance(r["params"], str) else r["params"])
             for r in records]
    assert [(r["decision"], r["error"]) for r in records] == [("allow", None)] * 5, records
    assert calls == [
        ("CreateQueue", "sqs:CreateQueue", {"QueueName": "old-sdk",
                                            "Attributes": {"VisibilityTimeout": "7", "DelaySeconds": "0"}}),
        ("GetQueueAttributes", "sqs:GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["VisibilityTimeout"]}),
        ("SendMessage", "sqs:SendMessage", {
            "QueueUrl": url, "MessageBody": "hello",
            "MessageAttributes": {"colour": {"DataType": "String", "StringValue": "blue"}}}),
        # (IAM authorises a batch send as sqs:SendMessage)
        ("SendMessageBatch", "sqs:SendMessage", {"QueueUrl": url, "Entries": [
            {"Id": "m1", "MessageBody": "one"},
            {"Id": "m2", "MessageBody": "two",
             "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "42"}}}]}),
        ("ReceiveMessage", "sqs:ReceiveMessage", {"QueueUrl": url, "AttributeNames": ["All"],
                                                  "MessageAttributeNames": ["All"], "MaxNumberOfMessages": 10}),
    ]


def test_an_unknown_form_member_is_refused_through_the_gateway(gw, issuer):
    token = issuer.mint("query-sqs-odd", groups=["data-agents"])
    status, text = query_call(gw, token, "CreateQueue", [
        ("QueueName", "odd"), ("Attribute.1.Name", "VisibilityTimeout"), ("Attribute.1.Value", "7"), ("Colour", "red")])
    assert status == 403 and "AccessDenied" in text, text
    assert "Colour: not a member of CreateQueueRequest" in text, text
    [record] = [r for r in gw.records() if r["principal"] == "query-sqs-odd"]
    assert (record["decision"], record["outcome"]) == ("deny", "refused")
    assert "Colour: not a member of CreateQueueRequest" in record["error"]
    status, text = query_call(gw, token, "ListQueues", [("QueueNamePrefix", "odd")])
    assert status == 200 and "<QueueUrl>" not in text, text  # the refused call did not reach SQS


@pytest.mark.parametrize("extra", ["Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=5"
                                   "&Attribute.2.Name=VisibilityTimeout&Attribute.2.Value=9",
                                   "Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=5&Attribute.1.Value.Policy=x",
                                   "Attribute.1.Name=VisibilityTimeout&Attribute.1.Name.x=z&Attribute.1.Value=5"])
def test_a_form_that_reads_two_ways_is_not_decided(extra):
    """A map key given twice (policy would read one, the service perhaps the other), or parameters
    below a value: the call is not decided, as a JSON key named twice is not."""
    body = f"Action=CreateQueue&Version=2012-11-05&QueueName=q&{extra}".encode()
    got = classify("POST", HOST, "/", "", {"content-type": FORM}, body)
    assert got.error, extra


MASKING_POLICY = TEST_POLICY.replace("""  - id: data-plane""", """  - id: vault-is-off-limits
    action: "sqs:*"
    when: "length(resource[?ends_with(@, '/vault')]) > `0`"
    decision: deny
    reason: the vault queue is off limits
  - id: bodies-masked
    action: [sqs:ReceiveMessage, sqs:SendMessage]
    decision: allow
    mask_for_agent: ["Messages[].Body", MessageBody]
  - id: data-plane""")


def test_a_query_forms_answer_that_masks_cannot_reach_is_withheld_and_a_queue_in_the_path_is_decided(
        tmp_path, issuer, moto):
    """SQS answers a Query form in XML named as its old Query model, which its JSON model (all the
    masks know) does not have: where policy masks for the agent, the answer is withheld, and
    neither body is kept in the record; the same read in JSON is masked as usual. A queue named by
    the request's path (POST /<account>/<queue>, as the Query API takes it) is the call's QueueUrl,
    which a rule on resource decides."""
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, policy=MASKING_POLICY,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as g:
        token = issuer.mint("masked-sqs-agent", groups=["data-agents"])
        status, text = query_call(g, token, "CreateQueue", [("QueueName", "masked")])
        url = text.split("<QueueUrl>", 1)[1].split("</QueueUrl>", 1)[0]
        status, text = query_call(g, token, "SendMessage", [("QueueUrl", url), ("MessageBody", "BODY-SECRET-7f3a")])
        assert status == 200, text
        status, text = query_call(g, token, "ReceiveMessage", [("QueueUrl", url)])
        assert status == 400 and "ResponseWithheld" in text and "BODY-SECRET-7f3a" not in text, text
        records = [r for r in g.records() if r["principal"] == "masked-sqs-agent"]
        assert all("BODY-SECRET-7f3a" not in json.dumps(r) for r in records)
        received = [r for r in records if r["operation"] == "ReceiveMessage"][-1]
        assert received["response_body"] is None and "whose members the masks cannot find" in received["body_note"]
        sent = [r for r in records if r["operation"] == "SendMessage"][-1]
        assert sent["request_body"] is None and "whose members the masks cannot find" in sent["body_note"]
        # a queue in the path: decided by the rule on its URL
        status, text = query_call(g, token, "CreateQueue", [("QueueName", "vault")])
        status, text = query_call(g, token, "ReceiveMessage", [], path="/123456789012/vault")
        assert status == 403 and "vault-is-off-limits" in text, text
        status, text = query_call(g, token, "PurgeQueue", [], path="/123456789012/vault")
        assert status == 403 and "vault-is-off-limits" in text, text


def test_a_queue_in_the_path_is_read_decoded():
    """A path percent-encoded (guarde%64) names the queue a decoding service would read (guarded):
    a rule on that queue holds whichever way the path is spelt."""
    got = classify("POST", HOST, "/123456789012/guarde%64", "", {"content-type": FORM},
                   b"Action=ReceiveMessage&Version=2012-11-05")
    assert got.params == {"QueueUrl": f"https://{HOST}/123456789012/guarded"} and got.error is None
