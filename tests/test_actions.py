"""IAM action naming: the curated tables hold up against IAM's data and botocore's models."""

from __future__ import annotations

import pytest

from addons.core import actions
from addons.core.actions import iam_action
from addons.core.classifier import default_classifier


@pytest.mark.parametrize("operation, action, level", [
    ("HeadObject", "s3:GetObject", "Read"),
    ("GetObject", "s3:GetObject", "Read"),
    ("GetObjectAttributes", "s3:GetObjectAttributes", "Read"),
    ("ListObjectsV2", "s3:ListBucket", "List"),
    ("ListObjects", "s3:ListBucket", "List"),
    ("HeadBucket", "s3:ListBucket", "List"),
    ("CreateMultipartUpload", "s3:PutObject", "Write"),
    ("UploadPart", "s3:PutObject", "Write"),
    ("UploadPartCopy", "s3:PutObject", "Write"),
    ("CompleteMultipartUpload", "s3:PutObject", "Write"),
    ("CopyObject", "s3:PutObject", "Write"),
    ("AbortMultipartUpload", "s3:AbortMultipartUpload", "Write"),
    ("ListObjectVersions", "s3:ListBucketVersions", "List"),
    ("DeleteObjects", "s3:DeleteObject", "Write"),
    ("ListParts", "s3:ListMultipartUploadParts", "List"),
    ("ListMultipartUploads", "s3:ListBucketMultipartUploads", "List"),
    ("ListBuckets", "s3:ListAllMyBuckets", "List"),
    ("GetBucketLifecycleConfiguration", "s3:GetLifecycleConfiguration", "Read"),
    ("PutBucketLifecycleConfiguration", "s3:PutLifecycleConfiguration", "Write"),
    ("DeleteBucketLifecycle", "s3:PutLifecycleConfiguration", "Write"),
    ("GetBucketNotificationConfiguration", "s3:GetBucketNotification", "Read"),
    ("PutBucketNotificationConfiguration", "s3:PutBucketNotification", "Write"),
    ("GetBucketCors", "s3:GetBucketCORS", "Read"),  # IAM's own case
    ("PutBucketPolicy", "s3:PutBucketPolicy", "Permissions management"),
    ("PutBucketTagging", "s3:PutBucketTagging", "Tagging"),
    ("GetPublicAccessBlock", "s3:GetBucketPublicAccessBlock", "Read"),
])
def test_s3_operations(operation, action, level):
    assert iam_action("s3", operation) == (action, level)


@pytest.mark.parametrize("service, operation, expected", [
    ("ec2", "DescribeInstances", ("ec2:DescribeInstances", "List")),
    ("dynamodb", "GetItem", ("dynamodb:GetItem", "Read")),
    ("iam", "CreateAccessKey", ("iam:CreateAccessKey", "Write")),
    ("iam", "PutRolePolicy", ("iam:PutRolePolicy", "Permissions management")),
    ("iam", "TagRole", ("iam:TagRole", "Tagging")),
    ("sts", "AssumeRole", ("sts:AssumeRole", "Write")),
    ("cloudwatch", "PutMetricData", ("cloudwatch:PutMetricData", "Write")),
    ("elbv2", "DescribeLoadBalancers", ("elasticloadbalancing:DescribeLoadBalancers", "List")),
    ("sqs", "SendMessageBatch", ("sqs:SendMessage", "Write")),
    ("lambda", "Invoke", ("lambda:InvokeFunction", "Write")),
    ("resourcegroupstaggingapi", "GetResources", ("tag:GetResources", "Read")),
    ("apigateway", "GetRestApis", ("apigateway:GET", "Read")),
    ("apigateway", "CreateRestApi", ("apigateway:POST", "Write")),
    ("apigatewayv2", "DeleteApi", ("apigateway:DELETE", "Write")),
    ("apigatewaymanagementapi", "PostToConnection", ("execute-api:ManageConnections", "Write")),
])
def test_straight_and_curated(service, operation, expected):
    assert iam_action(service, operation) == expected


def test_no_entry_in_iam_data_keeps_the_operation_name():
    assert iam_action("sso", "GetRoleCredentials") == ("awsssoportal:GetRoleCredentials", None)
    assert iam_action("s3", "NoSuchOperation") == ("s3:NoSuchOperation", None)
    assert iam_action("nosuchservice", "Foo") == ("nosuchservice:Foo", None)


def test_access_levels_are_iams_words():
    assert actions.access_level("Tagging, Write") == "Tagging"
    assert actions.access_level("Permissions management, Write") == "Permissions management"
    assert actions.access_level(None) is None
    levels = {level for prefix in ("s3", "iam", "ec2", "kms") for _, level in actions.iam_actions(prefix).values()}
    assert levels <= set(actions.ACCESS_LEVELS)


def test_every_curated_operation_names_an_action_iam_has():
    classifier = default_classifier()
    for service, rows in actions.OPERATION_ACTIONS.items():
        operations = classifier.routing(service).operations
        for names, action, reason in rows:
            assert reason.strip(), (service, names)
            prefix, _, name = action.partition(":")
            assert name.lower() in actions.iam_actions(prefix), f"{action} is not in IAM's data"
            for operation in names:
                assert operation in operations, f"{service} has no operation {operation}"
                assert iam_action(service, operation)[0] == action
                assert iam_action(service, operation)[1] is not None


def test_every_curated_prefix_exists_in_iam_data():
    classifier = default_classifier()
    for service, (prefix, reason) in actions.SERVICE_PREFIXES.items():
        assert reason.strip()
        assert service in classifier.catalogue.by_name, service
        assert actions.iam_actions(prefix), f"IAM's data has no prefix {prefix}"
    for service, reason in actions.ACTIONS_BY_HTTP_METHOD.items():
        assert reason.strip() and service in classifier.catalogue.by_name
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            assert method.lower() in actions.iam_actions(actions.iam_prefix(service))


def test_coverage_counts():
    counts = actions.coverage()
    assert counts["operations"] == sum(p["operations"] for p in counts["by_protocol"].values())
    assert counts["mapped"] == sum(p["mapped"] for p in counts["by_protocol"].values())
    assert counts["operations"] > 15000 and counts["mapped"] / counts["operations"] > 0.9
    assert set(counts["by_protocol"]) >= {"json", "rest-json", "rest-xml", "query", "ec2"}
