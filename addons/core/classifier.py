"""What an AWS request asks for: service, operation, parameters and IAM action, read off the wire.

``classify()`` takes one HTTP request as the gateway saw it and resolves it against botocore's
service models, for every protocol botocore speaks (json, rest-json, rest-xml, query, ec2,
smithy-rpc-v2-cbor):

1. the service, from the SigV4 credential scope (its signing name), narrowed by the host's
   endpoint prefix where several services sign with one name; from the host alone when the
   request carries no scope (SigV2 presigned S3 URLs);
2. the operation, from what the protocol puts on the wire: ``X-Amz-Target`` (json),
   ``Action=`` (query, ec2), ``/service/<S>/operation/<Op>`` (cbor), or the method and request
   URI matched against the operations' URI templates (rest-json, rest-xml);
3. the parameters, parsed back into the operation's input shape (botocore member names); a json
   call sent as CBOR (``application/x-amz-cbor-1.1``, the AWS SDKs for Java's Kinesis) is read
   into the same parameters as the call sent as JSON;
4. the resources and account the call names, and the IAM action (``actions.iam_action``).

Models are loaded lazily, one service at a time, and everything derived from them is cached, so
importing this module costs nothing and a warm call costs tens of microseconds. Bad input never
raises: the result says ``action="unknown"`` (or carries what could be read) and ``error`` says why.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import gzip
import hashlib
import json
import os
import re
import threading
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import botocore.loaders
import botocore.model

from . import actions, endpoints

UNKNOWN = "unknown"

# Query parameters that carry a signature, never an operation's input.
AUTH_QUERY_PARAMS = frozenset(
    {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-region-set",
        "x-amz-content-sha256",  # the payload's hash, in a presigned URL of the AWS SDK for JavaScript v3
        "awsaccesskeyid",
        "signature",
        "signatureversion",
        "signaturemethod",
        "expires",
        "timestamp",
        "x-id",
    }
)

# What carries a signature or a credential; in a form body (SigV2 body signing, or a second
# signature beside the header's) a call is not decided: the service would read it.
BODY_AUTH_PARAMS = (AUTH_QUERY_PARAMS - {"x-id", "x-amz-date", "x-amz-content-sha256", "expires", "timestamp"}
                    ) | {"securitytoken"}

# Query parameters some SDKs add that no operation reads (request metadata).
IGNORED_QUERY_PARAMS = frozenset({"x-amz-user-agent"})

# Signing names used by S3's feature endpoints; botocore's models only know "s3" and "s3control".
# (signing name, services, why)
SIGNING_ALIASES: dict[str, tuple[tuple[str, ...], str]] = {
    "s3-object-lambda": (("s3",), "WriteGetObjectResponse and Object Lambda access points sign as s3-object-lambda"),
    "s3-outposts": (("s3", "s3control"), "S3 on Outposts endpoints sign as s3-outposts"),
    "s3express": (("s3", "s3control"), "S3 Express One Zone (directory bucket) endpoints sign as s3express"),
}

# The S3 Express One Zone control endpoint (s3express-control) serves both S3 and S3 Control
# operations for directory buckets.
S3_EXPRESS_CONTROL_SERVICES = ("s3", "s3control")

# Services with endpoints outside every partition's DNS suffixes and unsigned operations, so that
# only the host can name them; their hosts are read from their endpoint rule sets. (service, why)
RULE_SET_HOST_SERVICES: tuple[tuple[str, str], ...] = (
    ("signin", "AWS Sign-In answers on <region>.signin.aws.amazon.com, <region>.oauth.signin.aws and "
     "per-partition domains, and its OAuth token operations are not SigV4-signed"),
)

# Services that share a signing name, an endpoint and the same wire form for some operations: the
# request is byte-for-byte the same whichever SDK client sent it. (preferred, others, why)
SAME_WIRE_PREFERENCE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("rds", ("docdb", "neptune"), "DocumentDB's and Neptune's management APIs are the RDS Query API "
     "(endpoint rds, Version 2014-10-31) and IAM authorises them as rds:*"),
    ("greengrass", ("greengrassv2",), "the account-level service-role and connectivity operations are "
     "one API shared by Greengrass V1 and V2"),
    ("lambda", ("lambda-microvms",), "the /2017-03-31/tags operations are Lambda's tagging API"),
    ("qconnect", ("wisdom",), "Amazon Q in Connect is Wisdom renamed; the shared operations are one API"),
    ("sms-voice", ("pinpoint-sms-voice",), "two botocore names for the same Pinpoint SMS and Voice v1 API"),
    ("timestream-query", ("timestream-write",), "DescribeEndpoints is one operation shared by both "
     "Timestream endpoints"),
    ("signer-data", ("signer",), "signer's GetRevocationStatus goes to the data-signer endpoint (host "
     "prefix data-), where signer-data has the same operation"),
)

# S3 hosts that are not named by S3's endpoint prefix (legacy, accelerate, access points, Express
# One Zone, Outposts); the labels before them are the bucket, except for Object Lambda routes.
S3_LABEL_RE = re.compile(
    r"^s3(?:-fips|-external-1|-accelerate|-accesspoint(?:-fips)?|-object-lambda(?:-fips)?"
    r"|-outposts(?:-fips)?|express(?:-fips)?-[a-z0-9-]+|-(?P<region>[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+))?$"
)

SIGV4_CREDENTIAL_RE = re.compile(r"Credential=([^,\s]+)")
SCOPE_DATE_RE = re.compile(r"\d{8}")
SMITHY_RPC_PATH_RE = re.compile(r"^/service/([^/]+)/operation/([^/]+)$")
TEMPLATE_LABEL_RE = re.compile(r"\{([^}]+)\}")
ENCODED_SLASH_RE = re.compile(r"%2[fF]")
ACCOUNT_RE = re.compile(r"^\d{12}$")
ARN_ACCOUNT_RE = re.compile(r"^arn:[^:]+:[^:]*:[^:]*:(\d{12}):")
QUEUE_URL_ACCOUNT_RE = re.compile(r"^https?://[^/]+/(\d{12})/[^/]+$")
ACCESS_POINT_ACCOUNT_RE = re.compile(r"-(\d{12})$")

# Top-level members whose names say they identify a resource.
# (also as ...IdList, ...ArnList, ...NameSet: Secrets Manager's BatchGetSecretValue names its
# secrets in SecretIdList).
RESOURCE_MEMBER_RE = re.compile(r"(?:(?:Arn|ARN|Id|ID|Name|Url|URL|Identifier)s?(?:List|Set)?|Bucket)$")
# Members with such names that identify a request, a session, a secret, an attribute or a version
# of a resource already recorded, not a resource (unless the request's path names them).
NOT_RESOURCE_MEMBERS = frozenset(
    {"RoleSessionName", "ExternalId", "ClientRequestId", "RequestId", "IdempotencyId", "SerialNumber",
     "VersionId", "UploadId", "AttributeName", "AttributeNames", "MessageAttributeNames",
     "MessageSystemAttributeNames", "ClientIDList", "ColumnNameList"}
)
# Every resource a call names is decided on (a rule on ``resource`` sees them all); a call naming
# more is not decided (unknown). The record keeps the first RECORDED_RESOURCES (core/records.py).
MAX_RESOURCES = 100_000
MAX_RESOURCE_LENGTH = 1024
MAX_INLINE_PAYLOAD = 64 * 1024
MAX_DECOMPRESSED_BODY = 16 * 1024 * 1024


@dataclasses.dataclass
class Classification:
    """What one request asks for. ``action`` is "unknown" when the operation could not be told."""

    service: str | None = None  # botocore service name ("s3", "dynamodb", "ec2", ...)
    operation: str | None = None  # API operation name ("PutObject")
    protocol: str | None = None  # the wire protocol used: json, rest-json, rest-xml, query, ec2, smithy-rpc-v2-cbor
    signing_name: str | None = None  # SigV4 signing name: the credential scope's, else the service's own
    region: str | None = None
    account: str | None = None  # when the request names one
    params: dict = dataclasses.field(default_factory=dict)  # input members, botocore names
    resources: list[str] = dataclasses.field(default_factory=list)
    action: str = UNKNOWN  # "<iam prefix>:<action>"
    access_level: str | None = None  # List, Read, Write, Tagging, Permissions management
    error: str | None = None  # why the call could not be (fully) classified
    # The region the agent's signature is scoped to, where it names another than the host's
    # (``region``): such a call is refused whatever policy says (addons/classify.py), since it
    # would be decided for one region and signed for another; ``error`` says so too.
    signed_region: str | None = None
    # What a REST path names once its encoded slashes are decoded, where that is another operation
    # (or another reading) than the one its raw path names: a non-greedy label holding ``%2F``
    # (``/2015-03-31/functions/x%2Fpolicy``: GetFunction of ``x/policy``, or GetPolicy of ``x`` for
    # a server that decodes the path before it routes). Such a call is refused whatever policy
    # says (addons/classify.py); ``error`` says so too.
    decoded_as: str | None = None
    # What IAM also authorises for this call, decided beside it (``implied_actions``): the source
    # object an S3 copy reads, as s3:GetObject; the ACL, tags or object lock an S3 write sets; the
    # service's tagging action for tags set with a create (``implied_tagging``); the other verbs
    # of a PartiQL batch (``partiql_statements``); a BatchWriteItem's requests (``batch_writes``,
    # which IAM does not ask for: stricter).
    implied: tuple["Classification", ...] = ()
    # An implied action that reads (or acts on) the same data as the call (an S3 object's version
    # read as the object too): the masks a rule gives it hold for the call's answer.
    same_data: bool = False
    # The call is authorised as ``implied`` alone, each part on its own (a DynamoDB transaction's
    # items: ``transaction_items``; a ReEncrypt's keys: ``reencrypt_parts``); its own action names
    # the first part that writes, else the first.
    by_parts: bool = False
    # For an implied read whose data the call writes elsewhere (an S3 copy's source), the read that
    # would later see that data (the copy's destination, as s3:GetObject): masks for the agent on
    # the first must hold on the second too, or the copy would unmask it (``PolicySet.evaluate``).
    lands_as: "Classification | None" = None
    # For a DynamoDB call whose answer or conditions carry a table's items (``item_reads``): a
    # GetItem of each such table. Not decided (IAM does not ask for it); the item masks a rule
    # gives it hold for this call, so a write returning or testing an item masks it as a read would.
    item_reads: tuple["Classification", ...] = ()


# ---------------------------------------------------------------------------------------------
# The request as it came off the wire


@dataclasses.dataclass
class WireRequest:
    method: str
    host: str
    path: str
    query: dict[str, list[str]]  # raw query, decoded, in order of appearance
    headers: dict[str, str]  # lower-case names
    body: bytes | None
    form: list[tuple[str, str]] | None = dataclasses.field(default=None, repr=False)  # form_pairs() cache
    form_error: str | None = dataclasses.field(default=None, repr=False)  # why form_pairs() could not read the body


def lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Headers as a plain dict with lower-case names (mitmproxy Headers or any mapping)."""
    out: dict[str, str] = {}
    for name, value in (headers.items() if headers else ()):
        if type(name) is not str:
            name = as_text(name)
        out[name.lower()] = value if type(value) is str else as_text(value)
    return out


def as_text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


def parse_query(query: str | None) -> dict[str, list[str]]:
    """A raw query string as name -> values, keeping blank values (``?uploads``)."""
    out: dict[str, list[str]] = {}
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
            out.setdefault(key, []).append(value)
    return out


@dataclasses.dataclass(frozen=True)
class CredentialScope:
    access_key: str
    date: str
    region: str | None
    service: str


def credential_scope(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> CredentialScope | None:
    """The SigV4 (or SigV4a) credential scope from the Authorization header or presigned query."""
    credential = None
    auth = headers.get("authorization", "")
    if auth.startswith("AWS4-"):
        found = SIGV4_CREDENTIAL_RE.findall(auth)
        credential = found[0] if len(found) == 1 else None  # two scopes: read neither (the gateway refuses it)
    else:  # presigned: the name read as the signer reads it, without regard to case, and only once
        found = [v for k, values in query.items() if k.lower() == "x-amz-credential" for v in values]
        credential = found[0] if len(found) == 1 else None
    if not credential:
        return None
    parts = credential.split("/")
    if len(parts) == 5 and parts[-1] == "aws4_request" and SCOPE_DATE_RE.fullmatch(parts[1]):
        return CredentialScope(parts[0], parts[1], parts[2], parts[3])
    if len(parts) == 4 and parts[-1] == "aws4_request":  # SigV4a: no region in the scope
        region_set = headers.get("x-amz-region-set") or (query.get("X-Amz-Region-Set") or [None])[0]
        region = region_set if region_set and "," not in region_set and "*" not in region_set else None
        return CredentialScope(parts[0], parts[1], region, parts[2])
    return None


# ---------------------------------------------------------------------------------------------
# Hosts


@dataclasses.dataclass(frozen=True)
class Partitions:
    """DNS suffixes and region patterns of every AWS partition (botocore's partitions.json)."""

    suffixes: tuple[str, ...]  # longest first, each starting with "."
    region_res: tuple[re.Pattern, ...]
    regions: frozenset[str]
    other_hosts: tuple[tuple[str, str], ...] = ()  # (".suffix" after a region label, or a host; endpoint prefix)

    def is_region(self, label: str) -> bool:
        return label in self.regions or any(r.match(label) for r in self.region_res)


def read_partitions(loader: botocore.loaders.Loader) -> Partitions:
    data = loader.load_data("partitions")
    suffixes, res, regions = set(), [], set()
    for partition in data["partitions"]:
        outputs = partition.get("outputs", {})
        for key in ("dnsSuffix", "dualStackDnsSuffix"):
            if outputs.get(key):
                suffixes.add("." + outputs[key])
        if partition.get("regionRegex"):
            res.append(re.compile(partition["regionRegex"]))
        regions.update(partition.get("regions", {}))
    others = tuple(h for service, _ in RULE_SET_HOST_SERVICES for h in rule_set_hosts(loader, service))
    return Partitions(tuple(sorted(suffixes, key=len, reverse=True)), tuple(res), frozenset(regions), others)


def rule_set_hosts(loader: botocore.loaders.Loader, service: str) -> list[tuple[str, str]]:
    """The literal hosts of a service's endpoint rule set outside the partitions' DNS suffixes:
    (".domain" that follows a region label, or a whole host; the service's endpoint prefix)."""
    try:
        rules = json.dumps(loader.load_service_model(service, "endpoint-rule-set-1"))
        prefix = read_model_metadata(loader, service)["endpointPrefix"]
    except Exception:
        return []
    out = []
    for host in sorted(set(re.findall(r'"https://([^"/]+)"', rules))):
        if host.startswith("{Region}.") and "{" not in host[len("{Region}"):]:
            out.append((host[len("{Region}"):], prefix))
        elif "{" not in host:
            out.append((host, prefix))
    return out


@dataclasses.dataclass(frozen=True)
class HostParts:
    """An AWS host split into the labels before the region, and the region."""

    labels: tuple[str, ...]
    region: str | None


def split_host(host: str, partitions: Partitions) -> HostParts | None:
    """``bucket.s3.dualstack.eu-west-1.amazonaws.com`` -> (("bucket", "s3"), "eu-west-1").

    None for hosts outside every AWS partition's DNS suffixes (and for IP literals).
    """
    name = (host or "").strip().lower().rstrip(".")
    if not name or name.startswith("["):
        return None
    if ":" in name:
        name, _, port = name.rpartition(":")
        if not port.isdigit():
            return None
    for suffix in partitions.suffixes:
        if name.endswith(suffix):
            labels = name[: -len(suffix)].split(".")
            break
    else:
        return other_host(name, partitions)
    if not labels or not all(labels):
        return None
    region = None
    if len(labels) > 1 and partitions.is_region(labels[-1]):
        region = labels.pop()
    elif len(labels) > 1 and labels[-1] == "global":  # <service>.global.api.aws
        labels.pop()
    if len(labels) > 1 and labels[-1] == "dualstack":
        labels.pop()
    return HostParts(tuple(labels), region)


def other_host(name: str, partitions: Partitions) -> HostParts | None:
    """A host from RULE_SET_HOST_SERVICES' rule sets: ``us-east-1.signin.aws.amazon.com``."""
    for host, prefix in partitions.other_hosts:
        if name == host:
            return HostParts((prefix,), None)
        if host.startswith(".") and name.endswith(host) and partitions.is_region(name[: -len(host)]):
            return HostParts((prefix,), name[: -len(host)])
    return None


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What a host says about the service: its endpoint prefix and the labels in front of it."""

    prefix: str  # endpoint prefix, as in the models' metadata
    leading: str  # labels before the prefix: an S3 bucket, or an operation's host prefix
    region: str | None
    bucket: str | None = None  # S3 virtual-hosted bucket (or access point alias)
    s3_label: str = ""  # the S3 host label when it is not plain "s3" (s3-accesspoint, s3express-control, ...)

    @property
    def s3_control(self) -> bool:
        """The S3 Express One Zone control endpoint."""
        return self.s3_label.startswith("s3express-control")

    @property
    def s3_access_point(self) -> bool:
        return self.s3_label.startswith(("s3-accesspoint", "s3-object-lambda"))


def match_endpoint(parts: HostParts, known_prefixes: Mapping[str, Any]) -> Endpoint | None:
    """Find the endpoint prefix among a host's labels, longest match first."""
    labels = parts.labels
    if len(labels) >= 3 and labels[-2:] == ("accesspoint", "s3-global"):
        # a multi-region access point, <alias>.mrap.accesspoint.s3-global: virtual-hosted like a bucket
        return Endpoint("s3", "", None, bucket=".".join(labels[:-2]), s3_label="accesspoint.s3-global")
    for i in range(len(labels)):
        leading = ".".join(labels[:i])
        candidate = ".".join(labels[i:])
        if candidate in known_prefixes:
            if candidate == "s3":
                return Endpoint("s3", "", parts.region, bucket=leading or None)
            return Endpoint(candidate, leading, parts.region)
        s3 = S3_LABEL_RE.match(labels[i]) if i == len(labels) - 1 else None
        if s3:
            region = parts.region or s3.group("region")
            if labels[i].startswith("s3-object-lambda") and not ACCESS_POINT_ACCOUNT_RE.search(leading):
                return Endpoint("s3", leading, region, s3_label=labels[i])  # a WriteGetObjectResponse route
            return Endpoint("s3", "", region, bucket=leading or None, s3_label=labels[i])
        for variant in endpoint_label_variants(labels[i]):
            candidate = ".".join((variant,) + labels[i + 1:])
            if candidate in known_prefixes:
                return Endpoint(candidate, leading, parts.region)
    return None


def endpoint_label_variants(label: str) -> Iterable[str]:
    """``kms-fips`` -> ``kms``; ``sync-states`` -> ``states`` (operation host prefixes like ``sync-``)."""
    if label.endswith("-fips"):
        yield label[: -len("-fips")]
    start = label.find("-")
    while start != -1:
        yield label[start + 1:]
        start = label.find("-", start + 1)


# ---------------------------------------------------------------------------------------------
# The service catalogue: every service's metadata, read cheaply from the head of its model file


@dataclasses.dataclass(frozen=True)
class ServiceEntry:
    name: str
    signing_name: str
    endpoint_prefix: str
    target_prefix: str | None
    protocol: str  # the protocol botocore uses (ServiceModel.resolved_protocol)
    protocols: tuple[str, ...]  # every protocol the service accepts
    api_version: str
    query_compatible: bool


def entry_from_metadata(name: str, metadata: dict) -> ServiceEntry:
    stub = botocore.model.ServiceModel({"metadata": metadata, "operations": {}, "shapes": {}}, name)
    protocols = tuple(metadata.get("protocols") or (metadata.get("protocol"),))
    if "awsQueryCompatible" in metadata and "query" not in protocols:
        protocols += ("query",)  # still accepts the Query wire form from older SDKs
    return ServiceEntry(
        name=name,
        signing_name=stub.signing_name,
        endpoint_prefix=metadata["endpointPrefix"],
        target_prefix=metadata.get("targetPrefix"),
        protocol=stub.resolved_protocol,
        protocols=protocols,
        api_version=metadata.get("apiVersion", ""),
        query_compatible="awsQueryCompatible" in metadata,
    )


def read_model_metadata(loader: botocore.loaders.Loader, service: str) -> dict:
    """The ``metadata`` object of a service's newest service-2 model without parsing the whole file."""
    version = loader.determine_latest_version(service, "service-2")
    for root in loader.search_paths:
        base = os.path.join(root, service, version, "service-2")
        for ext, opener in ((".json", open), (".json.gz", gzip.open)):
            if os.path.isfile(base + ext):
                with opener(base + ext, "rb") as f:
                    head = f.read(16384).decode("utf-8", "replace")
                try:
                    start = head.index("{", head.index('"metadata"'))
                    return json.JSONDecoder().raw_decode(head, start)[0]
                except ValueError:
                    break
    return loader.load_service_model(service, "service-2")["metadata"]


class Catalogue:
    """Every botocore service, indexed by signing name, endpoint prefix and target prefix."""

    def __init__(self, entries: Iterable[ServiceEntry]):
        self.by_name: dict[str, ServiceEntry] = {}
        self.by_signing_name: dict[str, list[ServiceEntry]] = {}
        self.by_endpoint_prefix: dict[str, list[ServiceEntry]] = {}
        self.by_target_prefix: dict[str, list[ServiceEntry]] = {}
        for e in entries:
            self.by_name[e.name] = e
            self.by_signing_name.setdefault(e.signing_name, []).append(e)
            self.by_endpoint_prefix.setdefault(e.endpoint_prefix, []).append(e)
            if e.target_prefix:
                self.by_target_prefix.setdefault(e.target_prefix, []).append(e)
        for alias, (names, _) in SIGNING_ALIASES.items():
            self.by_signing_name.setdefault(alias, []).extend(
                self.by_name[n] for n in names if n in self.by_name
            )

    @classmethod
    def read(cls, loader: botocore.loaders.Loader) -> Catalogue:
        names = loader.list_available_services("service-2")
        return cls(entry_from_metadata(n, read_model_metadata(loader, n)) for n in names)


# ---------------------------------------------------------------------------------------------
# Per-service routing tables, built once per service from its model


@dataclasses.dataclass(frozen=True)
class Route:
    """One rest operation's request URI template, compiled."""

    operation: str
    pattern: re.Pattern
    labels: tuple[str, ...]  # the template's label names, in group order
    query_literals: tuple[tuple[str, str | None], ...]  # ?uploads, ?list-type=2
    required_query: tuple[str, ...]  # wire names of required querystring members
    required_headers: tuple[str, ...]  # lower-case names of required header members
    rank: tuple  # static part of the match score: more literal wins
    greedy: tuple[bool, ...] = ()  # per label: whether it is greedy ({Key+}), and may hold slashes


def compile_route(name: str, operation: dict, shapes: dict) -> Route:
    uri = operation["http"].get("requestUri", "/")
    path, _, literal_query = uri.partition("?")
    regex, labels, greedy_labels, literal_chars, position = ["^"], [], [], 0, 0
    for found in TEMPLATE_LABEL_RE.finditer(path):
        literal = path[position:found.start()]
        regex.append(re.escape(literal))
        literal_chars += len(literal)
        label = found.group(1)
        greedy = label.endswith("+")
        labels.append(label.rstrip("+"))
        greedy_labels.append(greedy)
        regex.append(f"(?P<g{len(labels)}>.+)" if greedy else f"(?P<g{len(labels)}>[^/]+)")
        position = found.end()
    regex.append(re.escape(path[position:]) + "$")
    literal_chars += len(path) - position
    literals = tuple(
        (k, v if sep else None)
        for k, sep, v in (part.partition("=") for part in literal_query.split("&") if part)
    )
    required_query, required_headers = [], []
    input_shape = shapes.get(operation.get("input", {}).get("shape", ""), {})
    for member in input_shape.get("required", []):
        ref = input_shape.get("members", {}).get(member, {})
        wire = ref.get("locationName", member)
        if ref.get("location") == "querystring":
            required_query.append(wire)
        elif ref.get("location") == "header":
            required_headers.append(wire.lower())
    rank = (len(literals), len(required_query) + len(required_headers), literal_chars, -len(labels))
    return Route(name, re.compile("".join(regex), re.S), tuple(labels), literals,
                 tuple(required_query), tuple(required_headers), rank, tuple(greedy_labels))


@dataclasses.dataclass
class MethodRoutes:
    """One HTTP method's routes: those without query literals, and the others by their first literal."""

    plain: list[Route] = dataclasses.field(default_factory=list)
    by_literal: dict[str, list[Route]] = dataclasses.field(default_factory=dict)

    def add(self, route: Route) -> None:
        if route.query_literals:
            self.by_literal.setdefault(route.query_literals[0][0], []).append(route)
        else:
            self.plain.append(route)

    def for_query(self, query: Mapping[str, list[str]]) -> Iterable[Route]:
        """The routes a request with this query string can match."""
        yield from self.plain
        for key in query:
            for route in self.by_literal.get(key, ()):
                if query_literals_match(route, query):
                    yield route


NO_ROUTES = MethodRoutes()


class ServiceRouting:
    """A loaded service model and what it takes to find an operation in a request."""

    def __init__(self, entry: ServiceEntry, model: dict):
        self.entry = entry
        self.description = model
        self.model = botocore.model.ServiceModel(model, entry.name)
        self.operations: dict[str, dict] = model["operations"]
        self._routes: dict[str, MethodRoutes] | None = None
        self._located: dict[str, LocatedMembers] = {}
        self._lock = threading.Lock()

    def routes(self, method: str) -> MethodRoutes:
        if self._routes is None:
            with self._lock:
                if self._routes is None:
                    self._routes = self._compile_routes()
        return self._routes.get(method, NO_ROUTES)

    def _compile_routes(self) -> dict[str, MethodRoutes]:
        routes: dict[str, MethodRoutes] = {}
        shapes = self.description["shapes"]
        for name, op in self.operations.items():
            routes.setdefault(op["http"].get("method", "POST"), MethodRoutes()).add(compile_route(name, op, shapes))
        return routes

    def operation_model(self, name: str) -> botocore.model.OperationModel:
        return self.model.operation_model(name)

    def located(self, name: str) -> LocatedMembers:
        """Where the operation's input members sit on a rest request (cached)."""
        found = self._located.get(name)
        if found is None:
            found = self._located[name] = located_members(self.operation_model(name).input_shape)
        return found

    def deprecated(self, name: str) -> bool:
        return bool(self.operations[name].get("deprecated"))

    def uses_s3_express_control(self, name: str) -> bool:
        static = self.operations[name].get("staticContextParams") or {}
        return bool(static.get("UseS3ExpressControlEndpoint", {}).get("value"))


# ---------------------------------------------------------------------------------------------
# Scalars and shapes


class ParamErrors(list):
    """What did not fit the input shape; the call is still classified."""

    def add(self, path: str, message: str) -> None:
        if len(self) < 20:
            self.append(f"{path}: {message}")


def timestamp_text(value: Any) -> Any:
    """A timestamp as ISO 8601 text, whatever the wire form (epoch seconds, ISO 8601, RFC 822)."""
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        from botocore.utils import parse_timestamp

        parsed = parse_timestamp(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc).isoformat()


def scalar_from_text(text: str, shape: botocore.model.Shape, errors: ParamErrors, path: str) -> Any:
    """A scalar read from text (query, XML, headers, URI) typed per its shape."""
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "boolean":
            lowered = text.strip().lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            raise ValueError(f"not a boolean: {text[:40]!r}")
        if kind == "timestamp":
            return timestamp_text(text)
    except (ValueError, OverflowError, TypeError) as exc:
        errors.add(path, f"expected {kind}: {exc}")
    return text


def typed_value(value: Any, shape: botocore.model.Shape, errors: ParamErrors, path: str,
                millis: bool = False) -> Any:
    """A decoded JSON or CBOR value read into a shape: members renamed, scalars checked. ``millis``:
    a number given for a timestamp is epoch milliseconds (AWS CBOR), not seconds."""
    kind = shape.type_name
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            return value
        if not isinstance(value, dict):
            errors.add(path, "expected an object")
            return value
        return typed_structure(value, shape, errors, path, millis=millis)
    if kind == "list":
        if not isinstance(value, list):
            errors.add(path, "expected a list")
            return value
        return [typed_value(v, shape.member, errors, f"{path}[{i}]", millis) for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            errors.add(path, "expected a map")
            return value
        return {k: typed_value(v, shape.value, errors, f"{path}.{k}", millis) for k, v in value.items()}
    if kind == "timestamp":
        try:
            if millis and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = epoch_millis(value)
            return timestamp_text(value)
        except (ValueError, OverflowError, TypeError) as exc:
            errors.add(path, f"expected timestamp: {exc}")
            return value
    if kind == "blob" and isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if kind in ("integer", "long") and (not isinstance(value, int) or isinstance(value, bool)):
        errors.add(path, f"expected {kind}")
    elif kind == "boolean" and not isinstance(value, bool):
        errors.add(path, "expected boolean")
    elif kind in ("string", "blob") and not isinstance(value, str):
        errors.add(path, f"expected {kind}")
    return value


def typed_structure(value: dict, shape: botocore.model.StructureShape, errors: ParamErrors, path: str,
                    body_only: bool = False, millis: bool = False) -> dict:
    members = shape.members
    wire_names = json_wire_names(shape)
    out = {}
    for key, item in value.items():
        name = wire_names.get(key)
        if name is None:
            errors.add(f"{path}.{key}" if path else key, "not a member of " + shape.name)
            out[key] = item
            continue
        if body_only and members[name].serialization.get("location"):
            continue
        out[name] = typed_value(item, members[name], errors, f"{path}.{name}" if path else name, millis)
    return out


_wire_name_cache: dict[int, tuple[botocore.model.Shape, dict[str, str]]] = {}


def json_wire_names(shape: botocore.model.StructureShape) -> dict[str, str]:
    """Wire (JSON key) -> member name for a structure; cached per shape object."""
    cached = _wire_name_cache.get(id(shape))
    if cached is not None and cached[0] is shape:
        return cached[1]
    names = {m.serialization.get("name", n): n for n, m in shape.members.items()}
    _wire_name_cache[id(shape)] = (shape, names)
    return names


# ---------------------------------------------------------------------------------------------
# Query and EC2 form bodies


def query_tree(pairs: Iterable[tuple[str, str]]) -> dict:
    """``Filter.1.Name=x`` pairs as a tree of dicts; a leaf's text sits under the key None."""
    root: dict = {}
    for key, value in pairs:
        node = root
        for part in key.split("."):
            node = node.setdefault(part, {})
        node[None] = value
    return root


def query_member_name(shape: botocore.model.Shape, member: str, ec2: bool) -> str:
    if ec2:
        if "queryName" in shape.serialization:
            return shape.serialization["queryName"]
        name = shape.serialization.get("name")
        return name[0].upper() + name[1:] if name else member
    if shape.type_name == "list" and shape.serialization.get("flattened"):
        return shape.member.serialization.get("name") or shape.serialization.get("name", member)
    return shape.serialization.get("name", member)


@dataclasses.dataclass(frozen=True)
class QueryNames:
    """The Query wire names of an awsQueryCompatible service whose botocore model, now JSON (or
    CBOR), no longer carries them, as its last Query model wrote them: older SDKs still send the
    service Query forms under these names. Read only where the model names nothing itself."""

    members: dict[str, dict[str, str]]  # structure shape -> {member: form name}
    maps: dict[str, tuple[str, str]]  # map shape -> (key name, value name)
    items: dict[str, str] = dataclasses.field(default_factory=dict)  # list shape, not flattened -> item name
    # the member a request's path stands for, as the Query API takes it (SQS: POST /<account>/<queue>
    # is the queue's URL)
    path_member: str | None = None


_SQS_VALUE_LISTS = {"StringListValues": "StringListValue", "BinaryListValues": "BinaryListValue"}
_SQS_MESSAGE_MAPS = {"MessageAttributes": "MessageAttribute", "MessageSystemAttributes": "MessageSystemAttribute"}

# botocore 1.31's sqs/2012-11-05 (the last Query model): every list and map of SQS is flattened,
# so a member's form name is its list item's or map's name (Attribute.1.Name, AttributeName.1).
# ReceiveMessage's MessageSystemAttributeNames came later, named after AttributeNames.
QUERY_NAMES: dict[str, QueryNames] = {
    "sqs": QueryNames(
        members={
            "AddPermissionRequest": {"AWSAccountIds": "AWSAccountId", "Actions": "ActionName"},
            "ChangeMessageVisibilityBatchRequest": {"Entries": "ChangeMessageVisibilityBatchRequestEntry"},
            "CreateQueueRequest": {"Attributes": "Attribute", "tags": "Tag"},
            "DeleteMessageBatchRequest": {"Entries": "DeleteMessageBatchRequestEntry"},
            "GetQueueAttributesRequest": {"AttributeNames": "AttributeName"},
            "ReceiveMessageRequest": {"AttributeNames": "AttributeName",
                                      "MessageAttributeNames": "MessageAttributeName",
                                      "MessageSystemAttributeNames": "MessageSystemAttributeName"},
            "SendMessageRequest": _SQS_MESSAGE_MAPS,
            "SendMessageBatchRequest": {"Entries": "SendMessageBatchRequestEntry"},
            "SendMessageBatchRequestEntry": _SQS_MESSAGE_MAPS,
            "SetQueueAttributesRequest": {"Attributes": "Attribute"},
            "TagQueueRequest": {"Tags": "Tag"},
            "UntagQueueRequest": {"TagKeys": "TagKey"},
            "MessageAttributeValue": _SQS_VALUE_LISTS,
            "MessageSystemAttributeValue": _SQS_VALUE_LISTS,
        },
        maps={
            "QueueAttributeMap": ("Name", "Value"),
            "TagMap": ("Key", "Value"),
            "MessageBodyAttributeMap": ("Name", "Value"),
            "MessageBodySystemAttributeMap": ("Name", "Value"),
        },
        path_member="QueueUrl",
    ),
}


def queue_from_path(request: WireRequest, shape: botocore.model.Shape | None, params: dict, member: str,
                    errors: ParamErrors) -> None:
    """(A Query form of SQS.) The Query API takes a queue's URL as the request's path as well as
    in ``QueueUrl``: the path's queue is the call's ``QueueUrl`` (so policy sees it); a path and a
    ``QueueUrl`` naming two queues, a path to an operation that takes no queue, or no queue where
    the operation needs one, leave the call undecided."""
    # decoded as a service that decodes it would (if SQS does not, the other spelling names no queue)
    path = unquote(request.path, errors="surrogateescape").rstrip("/")
    members = shape.members if shape is not None else {}
    required = getattr(shape, "required_members", None) or []
    if path:
        if member not in members:
            errors.add("path", f"names a queue ({path[:100]}), and this operation takes none")
            return
        given = params.get(member)
        if given is None:
            params[member] = f"https://{request.host}{path}"
        elif not isinstance(given, str) or urlsplit(given).path.rstrip("/") != path:
            errors.add(member, f"names another queue than the request's path ({path[:100]}): which one the service "
                       "acts on is not known")
    if member in required and not params.get(member):
        errors.add(member, "missing: the operation needs a queue")


def query_names_of(entry: ServiceEntry) -> QueryNames | None:
    """The Query names overlay of a service that accepts Query forms its model no longer describes."""
    if entry.query_compatible and entry.protocol != "query":
        return QUERY_NAMES.get(entry.name)
    return None


def has_query_name(shape: botocore.model.Shape) -> bool:
    if shape.type_name == "list" and shape.serialization.get("flattened") and "name" in shape.member.serialization:
        return True
    return "name" in shape.serialization


_query_name_cache: dict[tuple[int, bool, int], tuple[botocore.model.Shape, dict[str, str]]] = {}


def query_wire_names(shape: botocore.model.StructureShape, ec2: bool,
                     overlay: QueryNames | None = None) -> dict[str, str]:
    """Wire (form key) -> member name for a structure; cached per shape object."""
    cached = _query_name_cache.get((id(shape), ec2, id(overlay)))
    if cached is not None and cached[0] is shape:
        return cached[1]
    extra = overlay.members.get(shape.name, {}) if overlay and not ec2 else {}
    names = {}
    for n, m in shape.members.items():
        if n in extra and not has_query_name(m):
            names[extra[n]] = n
        else:
            names[query_member_name(m, n, ec2)] = n
    _query_name_cache[(id(shape), ec2, id(overlay))] = (shape, names)
    return names


def numbered(node: dict, errors: ParamErrors | None = None, path: str = "") -> list:
    """The children of a list or map node, in index order. Indexes are 1, 2, 3, ... as SDKs write
    them; a gap, a 0 or a leading zero (which services read differently: some stop at a gap) is an
    error, and so is a key that is no index."""
    keys = sorted((k for k in node if k is not None and k.isascii() and k.isdigit()), key=int)
    if errors is not None and (keys != [str(i) for i in range(1, len(keys) + 1)] or len(keys) != len(
            [k for k in node if k is not None])):
        errors.add(path or "list", "list or map items not numbered 1, 2, 3, ...: the request is ambiguous")
    return [node[k] for k in keys]


def query_value(node: dict, shape: botocore.model.Shape, ec2: bool, errors: ParamErrors, path: str,
                overlay: QueryNames | None = None) -> Any:
    kind = shape.type_name
    if kind == "structure":
        names = query_wire_names(shape, ec2, overlay)
        members = shape.members
        out = {}
        for key, child in node.items():
            name = names.get(key) if key is not None else None
            if name is not None:
                out[name] = query_value(child, members[name], ec2, errors, f"{path}.{name}" if path else name,
                                        overlay)
            elif key is not None and path:  # (the top level's own unknown names are reported by query_params)
                errors.add(f"{path}.{key[:100]}", "not a member of " + shape.name)
        return out
    if kind == "list":
        if node.get(None) == "" and len(node) == 1:
            return []
        if ec2 or shape.serialization.get("flattened"):
            items = node
        else:
            item_name = shape.member.serialization.get("name")
            if item_name is None and overlay:
                item_name = overlay.items.get(shape.name)
            items = node.get(item_name or "member", {})
        return [query_value(item, shape.member, ec2, errors, f"{path}[{i}]", overlay)
                for i, item in enumerate(numbered(items, errors, path))]
    if kind == "map":
        entries = node if shape.serialization.get("flattened") else node.get("entry", {})
        key_name, value_name = overlay.maps.get(shape.name, ("key", "value")) if overlay else ("key", "value")
        key_name = shape.key.serialization.get("name", key_name)
        value_name = shape.value.serialization.get("name", value_name)
        out = {}
        for i, entry in enumerate(numbered(entries, errors, path)):
            for part in entry:
                if part is not None and part not in (key_name, value_name):
                    errors.add(f"{path}[{i}].{part[:100]}",
                               f"not {key_name} or {value_name} of an entry of {shape.name}")
            key_node = entry.get(key_name, {})
            key = key_node.get(None)
            if len(key_node) > 1:
                errors.add(f"{path}[{i}].{key_name}", "a map key has no members")
            if key is not None and value_name in entry:
                if key in out:  # which of the two the service acts on is not known (as a JSON key named twice)
                    errors.add(f"{path}.{key[:100]}", "a map key given twice: the request is ambiguous")
                out[key] = query_value(entry[value_name], shape.value, ec2, errors, f"{path}.{key}", overlay)
        return out
    text = node.get(None)
    if text is None:
        errors.add(path, f"expected {kind}, found nested parameters")
        return None
    if len(node) > 1:  # a value with parameters below it (Attribute.1.Value.Policy=...): they name nothing
        extra = next(k for k in node if k is not None)
        errors.add(f"{path}.{extra[:100]}", f"a {kind} has no members")
    return scalar_from_text(text, shape, errors, path)


def query_params(pairs: list[tuple[str, str]], shape: botocore.model.Shape | None, ec2: bool,
                 errors: ParamErrors, overlay: QueryNames | None = None) -> dict:
    """Query/EC2 form parameters (without Action, Version and signature) read into the input shape.
    A name given twice (in the query string and the body, or twice in either) is an error: which
    one the service acts on is not known, and an Action read from one while the service reads the
    other would decide one operation and run another."""
    for key in repeated(k for k, _ in pairs) if len(pairs) > 1 else ():
        errors.add(key, "given more than once: the request is ambiguous")
    tree = query_tree((k, v) for k, v in pairs if k not in ("Action", "Version") and k.lower() not in AUTH_QUERY_PARAMS)
    if shape is None:
        return {}
    known = query_wire_names(shape, ec2, overlay)
    for key in tree:
        if key not in known:
            errors.add(key, "not a member of " + shape.name)
    return query_value(tree, shape, ec2, errors, "", overlay)


# ---------------------------------------------------------------------------------------------
# XML bodies


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2] if tag.startswith("{") else tag


def xml_value(element: Any, shape: botocore.model.Shape, errors: ParamErrors, path: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return xml_structure(element, shape, errors, path)
    if kind == "list":
        item_name = shape.member.serialization.get("name", "member")
        return [xml_value(child, shape.member, errors, f"{path}[{i}]")
                for i, child in enumerate(c for c in element if local_name(c.tag) == item_name)]
    if kind == "map":
        return xml_map_entries((e for e in element if local_name(e.tag) == "entry"), shape, errors, path)
    return scalar_from_text(element.text or "", shape, errors, path)


def xml_map_entries(entries: Iterable[Any], shape: botocore.model.MapShape, errors: ParamErrors, path: str) -> dict:
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    out = {}
    for entry in entries:
        children = {local_name(c.tag): c for c in entry}
        if key_name in children and value_name in children:
            key = children[key_name].text or ""
            out[key] = xml_value(children[value_name], shape.value, errors, f"{path}.{key}")
    return out


def xml_structure(element: Any, shape: botocore.model.StructureShape, errors: ParamErrors, path: str,
                  body_only: bool = False) -> dict:
    children: dict[str, list] = {}
    for child in element:
        children.setdefault(local_name(child.tag), []).append(child)
    attributes = {local_name(k): v for k, v in element.attrib.items()}
    out = {}
    for name, member in shape.members.items():
        if body_only and member.serialization.get("location"):
            continue
        wire = member.serialization.get("name", name)
        sub = f"{path}.{name}" if path else name
        if member.serialization.get("xmlAttribute"):
            value = attributes.get(wire.rpartition(":")[2])
            if value is not None:
                out[name] = scalar_from_text(value, member, errors, sub)
        elif wire not in children:
            continue
        elif member.type_name == "list" and member.serialization.get("flattened"):
            out[name] = [xml_value(c, member.member, errors, f"{sub}[{i}]") for i, c in enumerate(children[wire])]
        elif member.type_name == "map" and member.serialization.get("flattened"):
            out[name] = xml_map_entries(children[wire], member, errors, sub)
        else:
            if len(children[wire]) > 1:
                errors.add(sub, f"element <{wire}> given more than once: the request is ambiguous")
            out[name] = xml_value(children[wire][0], member, errors, sub)
    return out


def parse_xml(body: bytes) -> Any:
    """An XML document's root element; DTDs and entities are refused."""
    import defusedxml.ElementTree

    return defusedxml.ElementTree.fromstring(body, forbid_dtd=True, forbid_entities=True,
                                             forbid_external=True)


# The Content-Type of a json-protocol call sent as CBOR: the AWS SDKs for Java (v1 and v2, and the
# KCL and KPL over them) send Kinesis this way by default ("application/x-amz-cbor-" and the service's
# jsonVersion, 1.1 for Kinesis), with the JSON body's keys and values, blobs as byte strings and
# timestamps as epoch milliseconds (tag 1). botocore never sends it.
AMZ_CBOR_CONTENT_TYPES = frozenset({"application/x-amz-cbor-1.1"})

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def amz_cbor(content_type: str | None) -> str | None:
    """The AWS CBOR content type ``content_type`` names (AMZ_CBOR_CONTENT_TYPES), or None."""
    found = (content_type or "").split(";")[0].strip().lower()
    return found if found in AMZ_CBOR_CONTENT_TYPES else None


def epoch_millis(value: Any) -> datetime.datetime:
    """A timestamp given as epoch milliseconds (AWS CBOR), as a datetime; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not epoch milliseconds: {str(value)[:40]!r}")
    return _EPOCH + datetime.timedelta(milliseconds=value)


@functools.cache
def _cbor_parser_class(millis: bool = False) -> Any:
    """botocore's CBOR reader, refusing a map that names a key twice (as ``load_json`` does); with
    ``millis``, a timestamp (tag 1) read as epoch milliseconds, as AWS CBOR writes it."""
    from botocore.parsers import RpcV2CBORParser

    class OneValuePerKey(RpcV2CBORParser):
        def _parse_datetime(self, value: Any) -> Any:
            return epoch_millis(value) if millis else super()._parse_datetime(value)

        def _parse_map(self, stream: Any, additional_info: int) -> dict:
            items: dict = {}
            seen: set = set()  # every key named, a null's too: {"a": null, "a": [...]} is two readings

            def pair() -> None:
                key = self.parse_data_item(stream)
                value = self.parse_data_item(stream)
                if key in seen:
                    raise ValueError(f"key {str(key)[:100]!r} given more than once in one map: the request is "
                                     "ambiguous")
                seen.add(key)
                if value is not None:
                    items[key] = value

            if additional_info != self.INDEFINITE_ITEM_ADDITIONAL_INFO:
                for _ in range(self._parse_unsigned_integer(stream, additional_info)):
                    pair()
            else:
                while not self._handle_break_code(stream):
                    pair()
            return items

    return OneValuePerKey


def decode_cbor(body: bytes, millis: bool = False) -> Any:
    """One CBOR data item; ``millis``: timestamps (tag 1) in epoch milliseconds (AWS CBOR)."""
    parser = _cbor_parser_class(millis)()
    stream = parser.get_peekable_stream_from_bytes(body)
    value = parser.parse_data_item(stream)
    if stream.read(1):
        raise ValueError("trailing bytes after the CBOR data item")
    return value


# ---------------------------------------------------------------------------------------------
# Bodies


def decoded_body(request: WireRequest) -> bytes | None:
    """The request body with gzip/deflate content-encoding undone (request compression)."""
    body = request.body
    if not body:
        return body
    encodings = [e.strip() for e in request.headers.get("content-encoding", "").lower().split(",") if e.strip()]
    for encoding in reversed(encodings):
        if encoding in ("gzip", "x-gzip", "deflate"):
            body = inflate_whole(body, encoding, MAX_DECOMPRESSED_BODY)
    return body


def unread_coding(request: WireRequest, operation: botocore.model.OperationModel | None) -> str | None:
    """Why a body read for its parameters cannot be decided as the gateway inflates it, or None.
    AWS services undo one request content coding, ``gzip``, as SDKs write it (request compression);
    a body sent as ``deflate``, ``x-gzip``, ``br``, ``GZIP``, or in two codings, the gateway would
    read inflated (or as sent) while a service reads it otherwise: moto inflates ``gzip`` alone and
    reads any other body as sent, where a gzip header's file name or comment, which inflating drops,
    can name an ``Action``. An operation's streaming payload (an S3 object's bytes, which S3 keeps
    with their Content-Encoding) is data, not read for parameters, and not judged here."""
    value = request.headers.get("content-encoding")
    if not value or not request.body:
        return None
    shape = operation.input_shape if operation is not None else None
    name = shape.serialization.get("payload") if shape is not None else None
    if name and name in shape.members and is_streaming(shape.members[name]):
        return None
    codings = [c.strip() for c in value.split(",") if c.strip() and c.strip().lower() not in ("identity", "aws-chunked")]
    if codings in ([], ["gzip"]):
        return None
    return (f"the body's Content-Encoding is {value[:60]!r}: AWS services undo gzip alone (request compression, "
            "written 'gzip'), so a service could read the body as sent while agentgate would decide it inflated: "
            "the request is ambiguous; send the body as it is, or with Content-Encoding: gzip")


def inflate_members(body: bytes, wbits: int, limit: int) -> tuple[bytes, str | None]:
    """``body`` inflated (zlib's ``wbits``; 47: gzip), every member of a gzip body one after
    another as services read them, to ``limit`` bytes at most; with what keeps it from being whole,
    or None: "too large" (more than ``limit``), "cut short", or "data after" a deflate stream.
    zlib.error where the data is not what ``wbits`` says. The classifier and masking share it."""
    out: list[bytes] = []
    left = limit
    while True:
        decompressor = zlib.decompressobj(wbits=wbits)
        out.append(decompressor.decompress(body, left))
        left -= len(out[-1])
        if decompressor.unconsumed_tail:
            return b"".join(out), "too large"
        if not decompressor.eof:
            return b"".join(out), "cut short"
        body = decompressor.unused_data
        if not body:
            return b"".join(out), None
        if wbits != 47:
            return b"".join(out), "data after"


_NOT_WHOLE = {"too large": "compressed body too large",
              "cut short": "the {encoding} body ends before its compressed data does",
              "data after": "data after the end of the deflate body"}


def inflate_whole(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body inflated whole: every member of a gzip body (a service that reads
    them all must not act on more than the gateway decided on), none cut short, nothing after a
    deflate stream, at most ``limit`` bytes; ValueError otherwise."""
    out, problem = inflate_members(body, 47 if encoding != "deflate" else 15, limit)
    if problem is not None:
        raise ValueError(_NOT_WHOLE[problem].format(encoding=encoding))
    return out


def is_streaming(shape: botocore.model.Shape) -> bool:
    return shape.type_name in ("blob", "string") and bool(
        shape.serialization.get("streaming") or shape.metadata.get("streaming")
        or shape.metadata.get("requiresLength") or shape.metadata.get("eventstream")
    )


def payload_digest(body: bytes) -> dict:
    """A request payload not kept as text, as parameters hold it: its SHA-256 and size."""
    return {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


def inline_payload(body: bytes) -> str | None:
    """A small non-streaming text payload as text; binary or large payloads are left out."""
    if len(body) > MAX_INLINE_PAYLOAD:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# rest-json / rest-xml: URI, query string, headers, body


def split_header_list(value: str) -> list[str]:
    """A comma-separated header list; items may be double-quoted."""
    items = re.findall(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)', value)
    out = [q.replace('\\"', '"') if q else p.strip() for q, p in items]
    return [i for i in out if i != ""] if value.strip() else []


def repeated(names: Iterable[str]) -> list[str]:
    """Each name that comes again after its first time, in order: what a request gives twice."""
    seen: set[str] = set()
    again = []
    for name in names:
        if name in seen:
            again.append(name)
        seen.add(name)
    return again


def _one_value_per_name(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        twice = repeated(k for k, _ in pairs)[0]
        raise ValueError(f"member {twice[:100]!r} given more than once in one object: the request is ambiguous")
    return out


_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_one_value_per_name)


def load_json(body: bytes | str) -> Any:
    """A JSON document, refused (ValueError) where an object names a member twice: which of the
    two a service would act on is not known, so neither policy nor the record may pick one.
    (``json.loads`` as it reads text and bytes, with one decoder kept instead of one made per call.)"""
    if isinstance(body, str):
        if body.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", body, 0)
    else:
        body = body.decode(json.detect_encoding(body), "surrogatepass")
    return _JSON_DECODER.decode(body)


def header_value(text: str, shape: botocore.model.Shape, errors: ParamErrors, path: str) -> Any:
    if shape.type_name == "list":
        return [scalar_from_text(v, shape.member, errors, path) for v in split_header_list(text)]
    if shape.serialization.get("jsonvalue"):
        try:
            return load_json(base64.b64decode(text))
        except ValueError:
            errors.add(path, "expected base64-encoded JSON")
            return text
    return scalar_from_text(text, shape, errors, path)


@dataclasses.dataclass(frozen=True)
class LocatedMembers:
    """Where a rest operation's input members sit on the request, for quick lookup."""

    uri: dict[str, tuple[str, botocore.model.Shape]]  # template label -> (member, shape)
    query: dict[str, tuple[str, botocore.model.Shape]]  # query key -> (member, shape)
    query_map: tuple[str, botocore.model.Shape] | None  # the member taking all other query keys
    headers: dict[str, tuple[str, botocore.model.Shape]]  # lower-case header -> (member, shape)
    header_maps: tuple[tuple[str, str], ...]  # (lower-case header prefix, member)
    host_labels: tuple[str, ...]


def located_members(shape: botocore.model.StructureShape | None) -> LocatedMembers:
    uri, query, headers, header_maps, host_labels, query_map = {}, {}, {}, [], [], None
    for name, member in (shape.members.items() if shape else ()):
        where = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if member.serialization.get("hostLabel"):
            host_labels.append(name)
        if where == "uri":
            uri[wire] = (name, member)
        elif where == "querystring" and member.type_name == "map":
            query_map = (name, member)
        elif where == "querystring":
            query[wire] = (name, member)
        elif where == "header":
            headers[wire.lower()] = (name, member)
        elif where == "headers":
            header_maps.append((wire.lower(), name))
    return LocatedMembers(uri, query, query_map, headers, tuple(header_maps), tuple(host_labels))


def rest_located_params(request: WireRequest, route: Route, match: re.Match, located: LocatedMembers,
                        host_labels: Mapping[str, str], errors: ParamErrors) -> dict:
    """Members bound to the URI, query string, headers and host of a rest request."""
    params: dict[str, Any] = {name: host_labels[name] for name in located.host_labels if name in host_labels}
    for i, label in enumerate(route.labels, 1):
        if label in located.uri:
            name, member = located.uri[label]
            params[name] = scalar_from_text(unquote(match.group(f"g{i}"), errors="surrogateescape"), member, errors, name)
    literal_keys = {k for k, _ in route.query_literals}
    unclaimed = {}
    for key, values in request.query.items():
        if key in located.query:
            name, member = located.query[key]
            params[name] = (
                [scalar_from_text(v, member.member, errors, name) for v in values]
                if member.type_name == "list"
                else scalar_from_text(values[0], member, errors, name)
            )
            if len(values) > 1 and member.type_name != "list":
                errors.add(name, f"query parameter {key[:100]!r} given more than once: the request is ambiguous")
        elif key not in literal_keys and key.lower() not in AUTH_QUERY_PARAMS:
            unclaimed[key] = values
    # A presigned URL carries the headers it was signed with in its query string (boto3's SigV2
    # presigns ``content-type``, ``x-amz-acl``, ``x-amz-meta-*``; other SDKs hoist checksums): read
    # as the header members they stand for, unless the request's own header says otherwise.
    as_headers: dict[str, str] = {}
    for key in list(unclaimed):
        lower = key.lower()
        if lower in located.headers or any(lower.startswith(prefix) for prefix, _ in located.header_maps):
            values = unclaimed.pop(key)
            if len(values) > 1:
                errors.add(key[:100], "query parameter given more than once: the request is ambiguous")
            if lower in request.headers and request.headers[lower] != values[0]:
                errors.add(key[:100], "given in the query string and as a header, with different values: the "
                                      "request is ambiguous")
            as_headers[lower] = values[0]
    if unclaimed and not located.query_map:
        # a query parameter the operation does not have: a service that reads it (moto dispatches on
        # an Action there before the path) could run another operation than the one decided
        for key in list(unclaimed)[:5]:
            if key.lower() not in IGNORED_QUERY_PARAMS:
                errors.add(key[:100], "not a query-string parameter of this operation: the request is ambiguous")
    if located.query_map and unclaimed:
        name, member = located.query_map
        params[name] = unclaimed if member.value.type_name == "list" else {k: v[0] for k, v in unclaimed.items()}
        for key in (k for k, v in unclaimed.items() if len(v) > 1 and member.value.type_name != "list"):
            errors.add(f"{name}.{key[:100]}", "query parameter given more than once: the request is ambiguous")
    headers = {**as_headers, **request.headers} if as_headers else request.headers
    for key, value in headers.items():
        if key in located.headers:
            name, member = located.headers[key]
            params[name] = header_value(value, member, errors, name)
    for prefix, name in located.header_maps:
        found = {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix) and len(k) > len(prefix)}
        if found:
            params[name] = found
    return params


def rest_body_params(body: bytes, shape: botocore.model.StructureShape, protocol: str,
                     errors: ParamErrors) -> dict:
    """Members carried in a rest-json or rest-xml body (the payload member, or the body members)."""
    payload = shape.serialization.get("payload")
    if payload:
        member = shape.members[payload]
        if member.type_name in ("blob", "string"):
            if is_streaming(member):
                return {}
            text = inline_payload(body)
            # a payload too large or not text to keep as a parameter is bound by its digest, so that
            # conditions, an approval's binding and its approver see which one it is
            return {payload: text if text is not None else payload_digest(body)}
        if protocol == "rest-xml":
            return {payload: xml_value(parse_xml(body), member, errors, payload)}
        value = load_json(body)
        if getattr(member, "is_document_type", False):
            return {payload: value}
        return {payload: typed_value(value, member, errors, payload)}
    if protocol == "rest-xml":
        return xml_structure(parse_xml(body), shape, errors, "", body_only=True)
    value = load_json(body)
    if not isinstance(value, dict):
        errors.add("body", "expected a JSON object")
        return {}
    return typed_structure(value, shape, errors, "", body_only=True)


def without_aws_chunked(params: dict) -> dict:
    """Drop ``aws-chunked`` from ContentEncoding: it frames the upload and is not stored (S3)."""
    encoding = params.get("ContentEncoding")
    if isinstance(encoding, str) and "aws-chunked" in encoding:
        rest = ",".join(e for e in (x.strip() for x in encoding.split(",")) if e and e != "aws-chunked")
        if rest:
            params["ContentEncoding"] = rest
        else:
            del params["ContentEncoding"]
    return params


def host_prefix_labels(operation: botocore.model.OperationModel, leading: str) -> dict[str, str]:
    """Members bound to the host by an operation's ``hostPrefix`` (``{AccountId}.``)."""
    prefix = (operation.endpoint or {}).get("hostPrefix")
    if not prefix or "{" not in prefix or not leading:
        return {}
    pattern, position = ["^"], 0
    for found in TEMPLATE_LABEL_RE.finditer(prefix):
        pattern.append(re.escape(prefix[position:found.start()]))
        pattern.append(f"(?P<{found.group(1)}>[^.]+)")
        position = found.end()
    pattern.append(re.escape(prefix[position:]))
    match = re.match("".join(pattern), leading + ".")
    return match.groupdict() if match else {}


# ---------------------------------------------------------------------------------------------
# Resources and account


def unrecordable(value: Any, path: str = "params", depth: int = 0) -> str | None:
    """Where a parameter's text holds a NUL or a lone surrogate (bytes that were not UTF-8, as
    mitmproxy decodes them), which the store keeps as U+FFFD: two such values would be recorded,
    and bound to an approval, as one. None when there is none."""
    if isinstance(value, str):
        if "\x00" in value:
            return path
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        return None
    if depth > 256:  # deeper than any service takes: not checked, so not decided
        return path[:200]
    if isinstance(value, dict):
        for k, v in value.items():
            if (found := unrecordable(k, f"{path}.*", depth + 1) or unrecordable(v, f"{path}.{k}", depth + 1)):
                return found[:200]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (found := unrecordable(v, f"{path}[{i}]", depth + 1)) is not None:
                return found[:200]
    return None


def resources_of(params: dict, uri_members: Iterable[str], service: str | None = None) -> list[str]:
    """Resource names a call names: bucket or bucket/key, identifiers among the top-level
    members (URI labels, members named ...Arn, ...Id(s), ...Name(s), ...Url), and any ARN; each as
    sent, followed by its bare name where the API takes it in other spellings too (``bare_names``),
    so that a rule on the name holds whichever spelling the agent sent."""
    out: list[str] = []
    seen: set[str] = set()

    def add(value: Any, member: str | None = None) -> None:
        if isinstance(value, str) and value:
            value = value[:MAX_RESOURCE_LENGTH]
            for name in (value, *bare_names(value, service, member)):
                if name not in seen and len(out) <= MAX_RESOURCES:  # one over: too many
                    seen.add(name)
                    out.append(name)

    bucket = params.get("Bucket")
    if isinstance(bucket, str) and isinstance(params.get("Key"), str):
        add(f"{bucket}/{params['Key']}")
    elif isinstance(bucket, str):
        add(bucket)
    source = copy_source(params.get("CopySource"))
    if source is not None:
        add(f"{source[0]}/{source[1]}")
    tables = params.get("RequestItems")  # DynamoDB BatchGetItem, BatchWriteItem: table -> requests
    if isinstance(tables, dict):
        for table in tables:
            add(table)
    delete = params.get("Delete")  # S3 DeleteObjects: each object
    if isinstance(bucket, str) and isinstance(delete, dict) and isinstance(delete.get("Objects"), list):
        for obj in delete["Objects"]:
            if isinstance(obj, dict) and isinstance(obj.get("Key"), str):
                add(f"{bucket}/{obj['Key']}")
    for item in params.get("TransactItems") or ():  # TransactGetItems, TransactWriteItems
        for request in item.values() if isinstance(item, dict) else ():
            if isinstance(request, dict):
                add(request.get("TableName"))
    uri = set(uri_members)
    for name, value in params.items():
        if name in ("Bucket", "Key") and isinstance(bucket, str):
            continue
        if name in uri or (name not in NOT_RESOURCE_MEMBERS and RESOURCE_MEMBER_RE.search(name)):
            for item in value if isinstance(value, list) else [value]:
                add(item, name)
    for arn in find_arns(params):
        add(arn)
    return out


# The spellings an API takes for one resource, read for its bare name (``bare_names``).
LAMBDA_FUNCTION_ARN_RE = re.compile(r"^arn:[^:]+:lambda:[^:]*:\d{12}:function:([A-Za-z0-9_.-]+)(?::[^:]+)?$")
DYNAMODB_TABLE_ARN_RE = re.compile(r"^arn:[^:]+:dynamodb:[^:]*:\d{12}:table/([A-Za-z0-9_.-]+)(?:/|$)")
QUEUE_URL_NAME_RE = re.compile(r"^https?://[^/]+/\d{12}/([^/]+)$")
SECRET_ARN_RE = re.compile(r"^arn:[^:]+:secretsmanager:[^:]*:\d{12}:secret:(.+)$")
SECRET_SUFFIX_RE = re.compile(r"^(.+)-[A-Za-z0-9]{6}$")  # the six characters AWS adds to a secret's full ARN
# Lambda's FunctionName as its model's pattern takes it: before the name, an optional
# arn:<partition>:lambda:, region, account and function:; after it, an optional version or alias.
LAMBDA_FUNCTION_NAME_RE = re.compile(
    r"^(?:arn:(?:aws[a-zA-Z-]*)?:lambda:)?(?:(?:eusc-)?[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d:)?(?:\d{12}:)?"
    r"(?:function:)?([a-zA-Z0-9_.-]+)(?::(?:\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]+))?$")


def bare_names(value: str, service: str | None = None, member: str | None = None) -> tuple[str, ...]:
    """The resource's own name where an API takes it in other spellings too, none where ``value``
    is that name or names no such resource: a Lambda function's name, of any form Lambda's
    ``FunctionName`` takes (``billing:1``, ``arn:aws:lambda:us-east-1:123456789012:function:billing``,
    with a version or alias, the partial ARN ``123456789012:function:billing``: qualifiers
    stripped), and of a function's ARN wherever it is; a DynamoDB table's name, of the table's ARN
    (or an index's, a stream's); an SQS queue's name, of its URL; a Secrets Manager secret's name,
    of its ARN, full (``...:secret:prod/db-AbCdEf``, six characters AWS adds) or partial
    (``...:secret:prod/db``), which Secrets Manager takes alike: both readings where the ARN could
    be either (``prod/db`` and ``prod/db-AbCdEf``). A rule on ``resource`` then holds for every
    spelling of one name, not only for the one it was written with."""
    if service == "lambda" and member == "FunctionName":
        found = LAMBDA_FUNCTION_NAME_RE.match(value)
    elif value.startswith("arn:"):
        secret = SECRET_ARN_RE.match(value)
        if secret is not None:
            name = secret.group(1)
            full = SECRET_SUFFIX_RE.match(name)
            return (full.group(1), name) if full else (name,)
        found = LAMBDA_FUNCTION_ARN_RE.match(value) or DYNAMODB_TABLE_ARN_RE.match(value)
    elif service == "sqs":
        found = QUEUE_URL_NAME_RE.match(value)
    else:
        return ()
    return (found.group(1),) if found and found.group(1) != value else ()


def spellings(value: str) -> list[str]:
    """``value`` and its bare names (``bare_names``), if it has any: a table as a transaction's item
    or a PartiQL statement names it."""
    return [value, *bare_names(value)]


def copy_source(value: Any) -> tuple[str, str, str | None] | None:
    """(bucket, key, version id) of an S3 ``x-amz-copy-source``: ``bucket/key`` with an optional
    leading slash and ``?versionId=``, URL-encoded; an access point's ARN stands as the bucket."""
    if not isinstance(value, str) or not value:
        return None
    text, _, query = value.partition("?")
    version = next((unquote(v, errors="surrogateescape") for k, _, v in (p.partition("=") for p in query.split("&"))
                    if k == "versionId"), None)
    text = unquote(text, errors="surrogateescape").lstrip("/")
    if text.startswith("arn:"):
        bucket, sep, key = text.partition("/object/")
    else:
        bucket, sep, key = text.partition("/")
    return (bucket, key, version) if sep and bucket and key else None


# S3 operations whose source object IAM authorises as a read of its own (s3:GetObject, or
# s3:GetObjectVersion for a version), beside the write the operation is.
COPYING = frozenset({("s3", "CopyObject"), ("s3", "UploadPartCopy")})


# Members whose presence IAM authorises as an action of its own beside the operation's (S3's
# documented permissions for each operation): an ACL set while writing an object needs
# s3:PutObjectAcl, tags s3:PutObjectTagging, and so on. (operations, members, action)
IMPLIED_BY_MEMBERS: tuple[tuple[frozenset, tuple[str, ...], str], ...] = (
    (frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"}),
     ("ACL", "GrantFullControl", "GrantRead", "GrantReadACP", "GrantWriteACP"), "s3:PutObjectAcl"),
    (frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"}), ("Tagging",), "s3:PutObjectTagging"),
    (frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"}), ("ObjectLockMode", "ObjectLockRetainUntilDate"),
     "s3:PutObjectRetention"),
    (frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"}), ("ObjectLockLegalHoldStatus",),
     "s3:PutObjectLegalHold"),
    (frozenset({"CreateBucket"}), ("ACL", "GrantFullControl", "GrantRead", "GrantReadACP", "GrantWrite",
                                   "GrantWriteACP"), "s3:PutBucketAcl"),
    (frozenset({"CreateBucket"}), ("ObjectOwnership",), "s3:PutBucketOwnershipControls"),
    (frozenset({"CreateBucket"}), ("ObjectLockEnabledForBucket",), "s3:PutBucketObjectLockConfiguration"),
)


# Input members that set the tags of what a call creates or changes, as the models name them: the
# names below, and <Resource>Tags where the operation's name holds <Resource> (BackupVaultTags of
# CreateBackupVault, UserPoolTags of CreateUserPool, jobTags of CreateModelCustomizationJob); a
# list, map or structure, never a flag (CopyTags) or a setting (InstanceMetadataTags). They are
# read among the input's own members and one level down, in a structure (or a list of them) that
# describes what the call creates: S3 CreateBucket's CreateBucketConfiguration.Tags, EC2
# RequestSpotFleet's SpotFleetRequestConfig.TagSpecifications, CloudFront's
# DistributionConfigWithTags.Tags, each of CreateWorkspaces' Workspaces[].Tags.
TAG_MEMBER_NAMES = frozenset({"Tags", "tags", "TagSpecifications", "TagList", "TagsList", "tagList",
                              "ResourceTags", "resourceTags"})
TAG_MEMBER_TYPES = frozenset({"list", "map", "structure"})
# Members named so that are not the tags of what the call acts on: (service, member) -> why; a
# member one level down by its path (``Parent.Tags``; ``Parent[].Tags`` in a list's items).
NOT_TAG_MEMBERS: dict[tuple[str, str], str] = {
    ("rbin", "ResourceTags"): "the tags that select the resources a retention rule keeps",
    ("cognito-identity", "PrincipalTags"): "the session tags mapped from an identity provider's claims",
    ("imagebuilder", "imageTags"): "tags Image Builder puts on the images a pipeline builds later",
    ("imagebuilder", "resourceTags"): "tags Image Builder puts on the instances it launches to build",
    ("ecr", "resourceTags"): "tags ECR puts on the repositories it creates from a template later",
    ("ses", "Tags"): "SES's message tags of a sent email, for event publishing",
    ("sesv2", "EmailTags"): "SES's message tags of a sent email, for event publishing",
    ("pinpoint-email", "EmailTags"): "SES's message tags of a sent email, for event publishing",
    ("inspector", "resourceGroupTags"): "the tags that select the instances of an assessment's resource group",
    ("swf", "tagList"): "a workflow execution's tags, labels to filter executions by, not IAM resource tags",
    # one level down
    ("ec2", "LaunchTemplateData.TagSpecifications"): "tags a launch template gives the instances and volumes "
                                                     "launched from it later, not the template's own",
    ("ec2", "AssociationTarget.InstanceTags"): "the tags that select the instances of an event window",
    ("batch", "computeResources.tags"): "tags Batch puts on the EC2 instances it launches in the compute "
                                        "environment later",
    ("emr-containers", "jobTemplateData.jobTags"): "tags given to the jobs started from the template later",
    ("dataexchange", "AssetConfiguration.Tags"): "tags Data Exchange puts on the assets a job creates when it "
                                                 "is started (StartJob), not on the job",
    ("billing", "dataFilterExpression.tags"): "the cost allocation tags a billing view's filter selects",
    ("ce", "ThresholdExpression.Tags"): "the cost allocation tags an anomaly subscription's threshold selects",
    ("devops-guru", "ResourceCollection.Tags"): "the tags that select the resources DevOps Guru analyses",
    ("fms", "Policy.ResourceTags"): "the tags that select the resources a Firewall Manager policy covers",
    ("inspector2", "filterCriteria.resourceTags"): "the resource tags a filter or report selects findings by",
    ("securityhub", "Filters.ResourceTags"): "the resource tags an insight or update selects findings by",
    ("securityhub", "Criteria.ResourceTags"): "the resource tags an automation rule selects findings by",
    ("resiliencehubv2", "resourceConfiguration.resourceTags"): "the tags that select the resources an "
                                                               "input source discovers",
    ("wellarchitected", "content.resourceTags"): "the tags that select the resources of an application context",
    ("meteringmarketplace", "UsageAllocations[].Tags"): "the tags that split metered usage into buckets, "
                                                        "on no resource",
}
# Operations whose tag members set no tags, by the model's own word: (service, operation prefix) -> why
TAGS_NOT_SET_BY: dict[tuple[str, str], str] = {
    ("pinpoint", "Update"): "Pinpoint ignores the tags of its updates since 2023-05-22 (its model says so); "
                            "TagResource sets them",
}
# A read's tag members filter what it reads (glue:ListCrawlers' Tags) or ask for tags back: an
# operation named as a read whose action IAM gives no level beyond List or Read sets no tags
# (sts:GetFederationToken, Write, does: its session tags).
READ_NAME_RE = re.compile(r"^(?:Get|List|Describe|Search|Count|Query|Lookup|Scan|BatchGet|BatchDescribe)[A-Z0-9]")


def named_as_tags(name: str, ref: dict, shapes: dict, operation: str) -> bool:
    """An input member named as the tags of what ``operation`` acts on (``TAG_MEMBER_NAMES``, or
    <Resource>Tags where the operation's name holds <Resource>), a list, map or structure."""
    if shapes.get(ref.get("shape"), {}).get("type") not in TAG_MEMBER_TYPES:
        return False
    resource = name[:-4] if name.endswith(("Tags", "tags")) else ""
    return name in TAG_MEMBER_NAMES or bool(resource and resource.lower() in operation.lower())


def tag_members(service: str, description: dict, operation: str) -> tuple[str, ...]:
    """The input members of ``operation`` (in ``service``'s raw model, ``description``) that set
    tags on what the call creates or changes (``TAG_MEMBER_NAMES``): its own members, then those
    one level down, as a path (``CreateBucketConfiguration.Tags``, ``Workspaces[].Tags`` in each
    item of a list); () for a read. The members ``NOT_TAG_MEMBERS`` names are left out, and all of
    an operation ``TAGS_NOT_SET_BY`` names."""
    op = description.get("operations", {}).get(operation)
    if op is None:
        return ()
    if READ_NAME_RE.match(operation) and actions.iam_action(service, operation)[1] in (None, "List", "Read"):
        return ()
    if any(service == s and operation.startswith(prefix) for s, prefix in TAGS_NOT_SET_BY):
        return ()
    shapes = description.get("shapes", {})
    top = shapes.get((op.get("input") or {}).get("shape"), {})
    own, nested = [], []
    for name, ref in top.get("members", {}).items():
        if named_as_tags(name, ref, shapes, operation):
            if (service, name) not in NOT_TAG_MEMBERS:
                own.append(name)
            continue
        inner, path = shapes.get(ref.get("shape"), {}), name
        if inner.get("type") == "list":
            inner, path = shapes.get(inner.get("member", {}).get("shape"), {}), f"{name}[]"
        if inner.get("type") != "structure":
            continue
        for member, member_ref in inner.get("members", {}).items():
            found = f"{path}.{member}"
            if named_as_tags(member, member_ref, shapes, operation) and (service, found) not in NOT_TAG_MEMBERS:
                nested.append(found)
    return tuple(own + nested)


_tag_members: dict[tuple[str, str], tuple[str, ...]] = {}


def tag_members_of(service: str, operation: str) -> tuple[str, ...]:
    """``tag_members`` of a botocore service's operation (cached); () for one the models lack."""
    key = (service, operation)
    found = _tag_members.get(key)
    if found is None:
        classifier = default_classifier()
        if service not in classifier.catalogue.by_name:
            return ()
        found = _tag_members[key] = tag_members(service, classifier.routing(service).description, operation)
    return found


def operations_tagging_as(action: str) -> list[tuple[str, str]]:
    """The (service, operation) pairs whose calls, setting tags, are also ``action`` (any case), a
    tagging action (``implied_tagging``): ec2:CreateTags for RunInstances, CreateVolume, ...; empty
    for an action that adds no tags."""
    prefix, _, name = action.lower().partition(":")
    if name not in {n.lower() for n, _ in actions.tagging_actions(prefix)}:
        return []
    classifier = default_classifier()
    out = []
    for service in actions.services_named(prefix):
        if service not in classifier.catalogue.by_name:
            continue
        description = classifier.routing(service).description
        for operation in description.get("operations", {}):
            found = actions.tagging_action(service, operation) if tag_members(service, description, operation) else None
            if found is not None and found[0].lower() == action.lower():
                out.append((service, operation))
    return out


def _values_at(params: Any, path: str) -> list[Any]:
    """The values at a member's path in a call's parameters (``Workspaces[].Tags``: each item's)."""
    values = [params]
    for step in path.split("."):
        name, each = (step[:-2], True) if step.endswith("[]") else (step, False)
        values = [v.get(name) for v in values if isinstance(v, dict)]
        if each:
            values = [item for v in values if isinstance(v, list) for item in v]
    return values


def tags_set(result: Classification) -> list[str]:
    """The members of a call that set tags and are not empty (in any item of a list's)."""
    if not result.service or not result.operation or not result.params:
        return []
    out = []
    for member in tag_members_of(result.service, result.operation):
        if any(value not in (None, [], {}, "") for value in _values_at(result.params, member)):
            out.append(member)
    return out


def implied_tagging(result: Classification) -> tuple[Classification, ...]:
    """A call that sets tags on what it creates or changes (RunInstances' TagSpecifications,
    CreateQueue's tags, CreateTable's Tags) is also the service's tagging action, as IAM
    authorises it (``actions.tagging_action``: ec2:CreateTags, sqs:TagQueue, dynamodb:TagResource),
    with the call's parameters and resources."""
    if result.action == UNKNOWN or not tags_set(result):
        return ()
    found = actions.tagging_action(result.service, result.operation)
    if found is None:
        return ()
    action, level = found
    return (dataclasses.replace(result, action=action, access_level=level, implied=()),)


# KMS's ReEncrypt: IAM authorises it as kms:ReEncryptFrom on the key that decrypts (the
# SourceKeyId, where the call names it; else the key the ciphertext names) and kms:ReEncryptTo on
# the key that encrypts (the DestinationKeyId), each on its own key.
REENCRYPT = (("kms:ReEncryptFrom", "SourceKeyId"), ("kms:ReEncryptTo", "DestinationKeyId"))


def reencrypt_parts(result: Classification) -> list[Classification]:
    """(KMS ReEncrypt.) The call as IAM authorises it: kms:ReEncryptFrom on its source key and
    kms:ReEncryptTo on its destination key, each with the call's parameters; empty for other calls."""
    if result.service != "kms" or result.operation != "ReEncrypt":
        return []
    parts = []
    for action, member in REENCRYPT:
        key = result.params.get(member)
        _, level = actions.lookup(action) or (action, None)
        parts.append(dataclasses.replace(result, action=action, access_level=level, implied=(), by_parts=False,
                                         resources=[key] if isinstance(key, str) and key else []))
    return parts


def implied_actions(result: Classification) -> tuple[Classification, ...]:
    """What a call asks for that IAM authorises apart, each as a call of its own: an S3 copy's read
    of its source; the ACL, tags or object lock an S3 write sets with the object (or bucket); the
    tagging action of a call that sets tags on what it creates (``implied_tagging``)."""
    implied: list[Classification] = []
    if result.service == "s3":
        bucket, key = result.params.get("Bucket"), result.params.get("Key")
        target = ([f"{bucket}/{key}"] if isinstance(key, str) else [bucket]) if isinstance(bucket, str) else []
        for operations, members, action in IMPLIED_BY_MEMBERS:
            if result.operation in operations and any(result.params.get(m) not in (None, False, "") for m in members):
                _, level = actions.lookup(action) or (action, None)
                # on the object (or bucket) written, not a copy's source
                implied.append(dataclasses.replace(result, action=action, access_level=level, implied=(),
                                                   resources=target or list(result.resources)))
    return tuple(implied) + implied_tagging(result) + implied_reads(result)


def implied_reads(result: Classification) -> tuple[Classification, ...]:
    """The reads a call makes that IAM authorises apart: an S3 copy's source object."""
    if (result.service, result.operation) not in COPYING:
        return ()
    source = copy_source(result.params.get("CopySource"))
    if source is None:
        return ()
    landing = copy_destination_read(result)
    read = dataclasses.replace(object_read(result, *source), lands_as=landing)
    if source[2] is None:
        return (read,)
    # a version of the source is the object too: a rule on reading the object holds for the copy
    return (read, dataclasses.replace(object_read(result, source[0], source[1]), lands_as=landing))


def object_read(result: Classification, bucket: str, key: str, version: str | None = None) -> Classification:
    """An S3 GetObject (or GetObjectVersion) of ``bucket/key``, in ``result``'s region and account:
    how a copy's source is read, and how its destination would be read afterwards."""
    operation_params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
    action, level = actions.iam_action("s3", "GetObject")
    if version:
        action = "s3:GetObjectVersion"
    return Classification(service="s3", operation="GetObject", protocol=result.protocol,
                          signing_name=result.signing_name, region=result.region, account=result.account,
                          params=operation_params, resources=[f"{bucket}/{key}"], action=action,
                          access_level=level)


def copy_destination_read(result: Classification) -> Classification | None:
    """For an S3 copy, the GetObject that would read what it writes; None for other calls."""
    if (result.service, result.operation) not in COPYING:
        return None
    bucket, key = result.params.get("Bucket"), result.params.get("Key")
    if not (isinstance(bucket, str) and isinstance(key, str) and bucket and key):
        return None
    return object_read(result, bucket, key)


# S3 calls that name an object's version (VersionId) are authorised as the version's action, as IAM
# authorises them; the object's own action is decided too (a rule on the object holds for its
# versions: a deny is no way round by naming a version, and its masks hold).
VERSION_ACTIONS = {"s3:GetObject": "s3:GetObjectVersion", "s3:DeleteObject": "s3:DeleteObjectVersion",
                   "s3:GetObjectAcl": "s3:GetObjectVersionAcl", "s3:PutObjectAcl": "s3:PutObjectVersionAcl",
                   "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
                   "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
                   "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
                   "s3:GetObjectAttributes": "s3:GetObjectVersionAttributes",
                   "s3:GetObjectTorrent": "s3:GetObjectVersionTorrent"}


def name_versions(result: Classification) -> None:
    """(S3.) A call naming an object's version is its version's action, the object's own action
    implied beside it (its masks holding: ``same_data``)."""
    if result.service != "s3":
        return
    params = result.params
    version = params.get("VersionId")
    if isinstance(version, str) and version and result.action in VERSION_ACTIONS:
        plain = dataclasses.replace(result, implied=(), same_data=True)
        action = VERSION_ACTIONS[result.action]
        _, level = actions.lookup(action) or (action, result.access_level)
        result.action, result.access_level = action, level
        result.implied += (plain,)


# DynamoDB's transactions: IAM has no action for the operation; it authorises each item as the
# operation the item names, on the item's table (AWS: "Using IAM with DynamoDB transactions").
TRANSACTION_ITEMS = {"TransactGetItems": {"Get": "GetItem"},
                     "TransactWriteItems": {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                                            "ConditionCheck": "ConditionCheckItem"}}


class NotAuthorisable(ValueError):
    """A call whose parts IAM would authorise one by one, one of which names no such part."""


def transaction_items(result: Classification) -> list[Classification]:
    """Each item of a DynamoDB transaction as the call IAM authorises it as: its operation
    (GetItem, PutItem, UpdateItem, DeleteItem, ConditionCheckItem), with the item's own members as
    its parameters and its table as its resource; empty for other calls. NotAuthorisable for a
    transaction with an item that names no one such operation (not decided: the service refuses
    it, and no rule could decide it by its items)."""
    kinds = TRANSACTION_ITEMS.get(result.operation) if result.service == "dynamodb" else None
    items = result.params.get("TransactItems") if kinds else None
    if not kinds or not isinstance(items, list) or not items:
        return []
    parts = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise NotAuthorisable(f"TransactItems[{i}] names {len(item) if isinstance(item, dict) else 'no'} "
                                  f"operations, not one of {', '.join(kinds)}")
        (kind, body), = item.items()
        operation = kinds.get(kind)
        if operation is None or not isinstance(body, dict):
            raise NotAuthorisable(f"TransactItems[{i}] is not one of {', '.join(kinds)} with its members")
        action, level = actions.iam_action("dynamodb", operation)
        table = body.get("TableName")
        # the call's own members (ClientRequestToken, ReturnConsumedCapacity, ...) beside the item's
        item_params = {**{k: v for k, v in result.params.items() if k != "TransactItems"}, **body}
        parts.append(dataclasses.replace(result, operation=operation, action=action, access_level=level,
                                         params=item_params,
                                         resources=spellings(table) if isinstance(table, str) and table else [],
                                         implied=(), by_parts=False))
    return parts


# DynamoDB's BatchWriteItem: IAM authorises the batch as dynamodb:BatchWriteItem alone; the gateway
# decides each request too, as the operation it stands for, on its table (``batch_writes``).
BATCH_WRITE_REQUESTS = {"PutRequest": ("PutItem", "Item"), "DeleteRequest": ("DeleteItem", "Key")}
BATCH_WRITE_MAX = 25  # requests DynamoDB takes in one batch; a body with more is no batch it runs


def batch_writes(result: Classification) -> list[Classification]:
    """(DynamoDB BatchWriteItem.) Each request of the batch as the call it stands for: a
    PutRequest as dynamodb:PutItem of its ``Item``, a DeleteRequest as dynamodb:DeleteItem of its
    ``Key``, on the request's table (its ``TableName`` param and resource), the call's own members
    beside; empty for other calls. Decided beside dynamodb:BatchWriteItem, so a rule on deleting a
    table's items (``*:Delete*``) holds for a batch that deletes them. NotAuthorisable for a request
    that is not one PutRequest or one DeleteRequest with its member, and for more requests than
    DynamoDB takes (each would be decided, and the service refuses such a batch)."""
    if result.service != "dynamodb" or result.operation != "BatchWriteItem":
        return []
    tables = result.params.get("RequestItems")
    if not isinstance(tables, dict):
        return []
    count = sum(len(r) if isinstance(r, list) else 1 for r in tables.values())
    if count > BATCH_WRITE_MAX:
        raise NotAuthorisable(f"RequestItems holds {count} requests; DynamoDB takes at most {BATCH_WRITE_MAX} in a batch")
    own = {k: v for k, v in result.params.items() if k != "RequestItems"}
    parts = []
    for table, requests in tables.items():
        if not isinstance(requests, list):
            raise NotAuthorisable(f"RequestItems[{table!r}] is not a list of requests")
        for i, request in enumerate(requests):
            kind, body = next(iter(request.items())) if isinstance(request, dict) and len(request) == 1 else (None, None)
            found = BATCH_WRITE_REQUESTS.get(kind)
            if found is None or not isinstance(body, dict) or not isinstance(body.get(found[1]), dict):
                raise NotAuthorisable(f"RequestItems[{table!r}][{i}] is not one PutRequest with its Item or one "
                                      "DeleteRequest with its Key")
            operation, member = found
            action, level = actions.iam_action("dynamodb", operation)
            parts.append(dataclasses.replace(result, operation=operation, action=action, access_level=level,
                                             params={**own, "TableName": table, member: body[member]},
                                             resources=spellings(table), implied=(), by_parts=False))
    return parts


# DynamoDB operations whose answer, error or conditions carry the items of the tables they name: a
# Get, a Query or Scan, a write's ReturnValues, the item a failed condition answers with
# (ReturnValuesOnConditionCheckFailure, a transaction's CancellationReasons), PartiQL's Items, a
# condition expression. Not BatchWriteItem: its answer holds only the requests it did not process,
# as the agent sent them, which the SDK sends again (masked, the marker would be written).
ITEM_OPERATIONS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "PutItem", "UpdateItem", "DeleteItem",
                             "TransactGetItems", "TransactWriteItems", "ExecuteStatement", "BatchExecuteStatement",
                             "ExecuteTransaction"})


def item_reads(result: Classification) -> tuple[Classification, ...]:
    """(DynamoDB.) A GetItem of each table whose items the call's answer or conditions carry
    (``ITEM_OPERATIONS``): the table it names (``TableName``, BatchGetItem's ``RequestItems``), a
    transaction's items' tables, a PartiQL statement's; with the call's ``Key`` where it names one
    on that table. Empty for a GetItem itself and for other calls. A call whose table is not read
    (a statement the classifier finds no table in) is a GetItem naming none, which rules not
    conditioned on the table decide alike."""
    if result.service != "dynamodb" or result.operation not in ITEM_OPERATIONS or result.operation == "GetItem":
        return ()
    tables: list[str | None] = []
    if result.operation in ("ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"):
        tables = [table for _, _, table in partiql_statements(result)] or [None]
    else:
        items = result.params.get("TransactItems")
        for item in items if isinstance(items, list) else ():
            for body in item.values() if isinstance(item, dict) else ():
                if isinstance(body, dict) and isinstance(body.get("TableName"), str):
                    tables.append(body["TableName"])
        named = result.params.get("TableName")
        tables += [named] if isinstance(named, str) else []
        requests = result.params.get("RequestItems")
        tables += [t for t in requests if isinstance(t, str)] if isinstance(requests, dict) else []
        tables = tables or [None]
    action, level = actions.iam_action("dynamodb", "GetItem")
    reads = []
    for table in dict.fromkeys(tables):
        params = {"TableName": table} if table else {}
        key = result.params.get("Key")
        if table and table == result.params.get("TableName") and isinstance(key, dict):
            params["Key"] = key
        reads.append(dataclasses.replace(result, operation="GetItem", action=action, access_level=level, params=params,
                                         resources=spellings(table) if table else [], implied=(), by_parts=False, item_reads=()))
    return tuple(reads)


def deleted_objects(result: Classification) -> list[Classification]:
    """(S3 DeleteObjects.) Each object it deletes as the call IAM authorises it as: s3:DeleteObject
    of ``bucket/key``, s3:DeleteObjectVersion where it names a version (with the object's own
    s3:DeleteObject beside it); empty for other calls. NotAuthorisable for an object without a key."""
    if result.service != "s3" or result.operation != "DeleteObjects":
        return []
    bucket = result.params.get("Bucket")
    delete = result.params.get("Delete")
    objects = delete.get("Objects") if isinstance(delete, dict) else None
    if not isinstance(bucket, str) or not isinstance(objects, list) or not objects:
        return []
    parts = []
    for i, obj in enumerate(objects):
        key = obj.get("Key") if isinstance(obj, dict) else None
        if not isinstance(key, str) or not key:
            raise NotAuthorisable(f"Delete.Objects[{i}] names no key")
        # the call's own members (BypassGovernanceRetention, MFA, ExpectedBucketOwner, ...) hold for each object
        params = {**{k: v for k, v in result.params.items() if k != "Delete"}, "Bucket": bucket, "Key": key}
        version = obj.get("VersionId")
        if isinstance(version, str) and version:
            params["VersionId"] = version
        action, level = actions.iam_action("s3", "DeleteObject")
        part = dataclasses.replace(result, operation="DeleteObject", action=action, access_level=level, params=params,
                                   resources=[f"{bucket}/{key}"], implied=(), by_parts=False)
        name_versions(part)  # a version: s3:DeleteObjectVersion, the object's s3:DeleteObject implied
        parts.append(part)
        parts.extend(part.implied)
        part.implied = ()
    return parts


def authorised_as(result: Classification) -> None:
    """(A call with its service, operation, parameters, resources and IAM action.) What IAM
    authorises it as beyond its own action, as the gateway decides it: the actions it implies
    (``implied_actions``), an object's version (``name_versions``), a DynamoDB transaction's items
    (``transaction_items``), a DeleteObjects' objects (``deleted_objects``), a ReEncrypt's keys
    (``reencrypt_parts``), a BatchWriteItem's requests (``batch_writes``) and a PartiQL call's
    statements (``partiql_statements``); and the reads whose item masks hold for it
    (``item_reads``). Used by the classifier and by ``agentgate policy explain``, so the two decide
    alike. NotAuthorisable: a part that names nothing IAM authorises."""
    result.implied = implied_actions(result)
    name_versions(result)
    parts = transaction_items(result) or deleted_objects(result) or reencrypt_parts(result)
    if parts:  # IAM authorises a transaction item by item, a DeleteObjects object by object, a ReEncrypt by key
        named = next((p for p in parts if p.access_level not in ("List", "Read")), parts[0])
        result.action, result.access_level = named.action, named.access_level
        result.implied, result.by_parts = tuple(parts), True
    # a BatchWriteItem's requests, decided beside the batch's own action (stricter than IAM)
    result.implied += tuple(batch_writes(result))
    statements = partiql_statements(result)
    if statements:  # IAM authorises each PartiQL statement as the action its verb names
        first, *rest = statements
        result.action, result.access_level = first[0], first[1]
        for table in (name for _, _, t in statements for name in spellings(t)):
            if table not in result.resources and len(result.resources) < MAX_RESOURCES:
                result.resources.append(table)
        seen = {first[0]}
        for action, level, table in rest:
            if action not in seen:
                seen.add(action)
                result.implied += (dataclasses.replace(result, action=action, access_level=level, implied=()),)
    result.item_reads = item_reads(result)


# DynamoDB's PartiQL operations: IAM authorises each statement by its verb, not by the operation.
PARTIQL_ACTIONS = {"SELECT": "dynamodb:PartiQLSelect", "EXISTS": "dynamodb:PartiQLSelect",
                   "INSERT": "dynamodb:PartiQLInsert", "UPDATE": "dynamodb:PartiQLUpdate",
                   "DELETE": "dynamodb:PartiQLDelete"}
# PartiQL's lexical rules: whitespace and comments (-- to the end of the line, /* to */) between
# tokens; '...' strings and "..." identifiers, each with its quote doubled inside; `...` Ion
# literals; bare identifiers and keywords (case-insensitive); any other character a token of its
# own. A quote or a comment left open is ``open``: such a statement is not read.
PARTIQL_TOKEN_RE = re.compile(r"""
    [ \t\n\r\f\v]+ | --[^\r\n]* | /\*.*?\*/
    | (?P<word>[A-Za-z_$][A-Za-z0-9_$]*)
    | "(?P<name>(?:[^"]|"")*)"
    | (?P<value>'(?:[^']|'')*'|`[^`]*`)
    | (?P<open>["'`]|/\*)
    | (?P<other>[0-9]+|.)
""", re.S | re.X)
# A SELECT's projection, by the same rules, up to its first FROM keyword: skipped in one match, as
# reading a projection of a thousand names token by token takes milliseconds
PARTIQL_PROJECTION_RE = re.compile(r"""(?:
    [^"'`/\-A-Za-z_$]+ | --[^\r\n]* | /\*.*?\*/ | -(?!-) | /(?!\*)
    | "(?:[^"]|"")*" | '(?:[^']|'')*' | `[^`]*`
    | (?!FROM(?![A-Za-z0-9_$]))[A-Za-z_$][A-Za-z0-9_$]*
)*""", re.S | re.X | re.I)
# What DynamoDB's PartiQL puts after a statement's table (and a SELECT's "index"): a keyword, a
# character, or the statement's end (None).
PARTIQL_AFTER_TABLE = {"SELECT": {"WHERE", "ORDER", None}, "EXISTS": {"WHERE", ")"}, "INSERT": {"VALUE"},
                       "UPDATE": {"SET", "REMOVE"}, "DELETE": {"WHERE"}}


def partiql_statement(text: Any) -> tuple[str, str]:
    """(verb, table) of one statement of DynamoDB's PartiQL, read as its grammar puts them:
    ``SELECT ... FROM table[."index"] [WHERE ...]``, ``INSERT INTO table VALUE {...}``, ``UPDATE
    table SET|REMOVE ...``, ``DELETE FROM table WHERE ...``, ``EXISTS(SELECT ... FROM table WHERE
    ...)`` (in a transaction). Only as many tokens are read as it takes to reach the table and the
    one after it. NotAuthorisable for a statement whose verb or table cannot be read: no verb
    DynamoDB runs, a quote or comment left open before the table, a table that is a string, a
    parameter or missing, or followed by what the grammar does not put there (``audit-x``
    unquoted, a path), which DynamoDB would read some other way or not at all."""
    if not isinstance(text, str):
        raise NotAuthorisable("is not given")
    pos = 0

    def token() -> tuple[str | None, str]:
        """The next token: (word, a keyword or an identifier), (name, a quoted identifier unescaped),
        (value, a string or an Ion literal), (other, a character); (None, "") at the end."""
        nonlocal pos
        while (m := PARTIQL_TOKEN_RE.match(text, pos)) is not None:
            pos, kind = m.end(), m.lastgroup
            if kind == "open":
                raise NotAuthorisable(f"has a {m.group(kind)} at {m.start()} that is never closed")
            if kind is not None:
                return kind, m.group(kind).replace('""', '"') if kind == "name" else m.group(kind)
        return None, ""

    def keyword(found: tuple[str | None, str]) -> str | None:
        """A token as the grammar reads it: a keyword upper-cased, a character as it is, None at the end."""
        kind, value = found
        return value.upper() if kind == "word" else value if kind == "other" else None if kind is None else ""

    verb = keyword(token())
    if verb not in PARTIQL_ACTIONS:
        raise NotAuthorisable(f"is not a PartiQL statement DynamoDB runs ({', '.join(PARTIQL_ACTIONS)})")
    if verb == "EXISTS" and not (keyword(token()) == "(" and keyword(token()) == "SELECT"):
        raise NotAuthorisable("is an EXISTS that holds no SELECT")
    if verb in ("SELECT", "EXISTS"):  # its first FROM keyword (a quoted "from", a 'from' string are none)
        pos = PARTIQL_PROJECTION_RE.match(text, pos).end()
    found = verb == "UPDATE" or keyword(token()) == ("INTO" if verb == "INSERT" else "FROM")
    kind, table = token() if found else (None, "")
    follows = keyword(token())
    if follows == "." and verb in ("SELECT", "EXISTS") and kind == "name" and token()[0] == "name":
        follows = keyword(token())  # past "table"."index" (both quoted, as DynamoDB asks)
    if follows == ";" and verb == "SELECT" and keyword(token()) is None:
        follows = None  # a SELECT ended by a semicolon, nothing after it
    if kind not in ("word", "name") or not table or follows not in PARTIQL_AFTER_TABLE[verb]:
        raise NotAuthorisable(f"is {'an' if verb[0] in 'AEIOU' else 'a'} {verb} whose table cannot be read")
    return verb, table


def partiql_statements(result: Classification) -> list[tuple[str, str | None, str]]:
    """(IAM action, access level, table) of each statement of a DynamoDB PartiQL call, in order;
    empty for other calls. NotAuthorisable for a call with no statement or a statement whose verb or
    table cannot be read (not decided: no rule could decide it by what it does)."""
    if result.service != "dynamodb":
        return []
    params = result.params
    if result.operation == "ExecuteStatement":
        texts = [("Statement", params.get("Statement"))]
    elif result.operation in ("BatchExecuteStatement", "ExecuteTransaction"):
        member = "Statements" if result.operation == "BatchExecuteStatement" else "TransactStatements"
        items = params.get(member)
        if not isinstance(items, list) or not items:
            raise NotAuthorisable(f"{member} names no statement")
        texts = [(f"{member}[{i}].Statement", s.get("Statement") if isinstance(s, dict) else None)
                 for i, s in enumerate(items)]
    else:
        return []
    out = []
    for where, text in texts:
        try:
            verb, table = partiql_statement(text)
        except NotAuthorisable as e:
            raise NotAuthorisable(f"{where} {e}") from None
        action = PARTIQL_ACTIONS[verb]
        _, level = actions.lookup(action) or (action, None)
        out.append((action, level, table))
    return out


def find_arns(value: Any, depth: int = 0) -> Iterable[str]:
    if depth > 8:
        return
    if isinstance(value, str):
        if value.startswith("arn:"):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from find_arns(item, depth + 1)
    elif isinstance(value, list):
        for item in value[:100]:
            yield from find_arns(item, depth + 1)


def account_of(params: dict, resources: list[str], endpoint: Endpoint | None) -> str | None:
    """The AWS account a request names, if any: an account-id member, an ARN's account, a queue
    URL's account, an S3 access point host. Not a header the operation does not model: an
    ``x-amz-account-id`` header sent to DynamoDB would name one account while the ARN it acts on
    names another (where an operation takes that header, S3 Control's, it is its AccountId)."""
    for value in (params.get("AccountId"), params.get("ExpectedBucketOwner")):
        if isinstance(value, str) and ACCOUNT_RE.match(value):
            return value
    for resource in resources:
        found = ARN_ACCOUNT_RE.match(resource) or QUEUE_URL_ACCOUNT_RE.match(resource)
        if found:
            return found.group(1)
    if endpoint and endpoint.bucket and endpoint.s3_access_point:
        found = ACCESS_POINT_ACCOUNT_RE.search(endpoint.bucket)
        if found:
            return found.group(1)
    return None


# ---------------------------------------------------------------------------------------------
# The classifier


@dataclasses.dataclass
class Resolution:
    """Which service and operation a request is, and how it was found."""

    routing: ServiceRouting
    operation: str
    protocol: str
    route: Route | None = None
    match: re.Match | None = None
    request: WireRequest | None = None  # the request as matched, when it had to be read differently
    decoded_as: str | None = None  # what its path names once decoded, where that differs (``decoded_reading``)


class Classifier:
    """Classifies wire requests against botocore's models; loads and caches them lazily."""

    def __init__(self, loader: botocore.loaders.Loader | None = None):
        self._loader = loader
        self._catalogue: Catalogue | None = None
        self._partitions: Partitions | None = None
        self._routing: dict[str, ServiceRouting] = {}
        self._endpoints: dict[str, Endpoint | None] = {}
        self._lock = threading.RLock()

    # -- lazily loaded data

    @property
    def loader(self) -> botocore.loaders.Loader:
        if self._loader is None:
            self._loader = botocore.loaders.create_loader()
        return self._loader

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            with self._lock:
                if self._catalogue is None:
                    self._catalogue = Catalogue.read(self.loader)
        return self._catalogue

    @property
    def partitions(self) -> Partitions:
        if self._partitions is None:
            with self._lock:
                if self._partitions is None:
                    self._partitions = read_partitions(self.loader)
        return self._partitions

    def routing(self, service: str) -> ServiceRouting:
        routing = self._routing.get(service)
        if routing is None:
            with self._lock:
                routing = self._routing.get(service)
                if routing is None:
                    entry = self.catalogue.by_name[service]
                    routing = ServiceRouting(entry, self.loader.load_service_model(service, "service-2"))
                    self._routing[service] = routing
        return routing

    def endpoint(self, host: str) -> Endpoint | None:
        """The endpoint a host names (cached per host)."""
        if host in self._endpoints:
            return self._endpoints[host]
        parts = split_host(host, self.partitions)
        found = match_endpoint(parts, self.catalogue.by_endpoint_prefix) if parts else None
        if parts and found is None:
            found = Endpoint("", ".".join(parts.labels), parts.region)  # an AWS host, service unknown
        if len(self._endpoints) > 4096:
            self._endpoints.clear()
        self._endpoints[host] = found
        return found

    # -- classification

    def classify(self, method: str, host: str, path: str, query: str, headers: Mapping[str, str],
                 body: bytes | None) -> Classification:
        request = WireRequest((method or "").upper(), host or "", path or "/", parse_query(query),
                              lower_headers(headers), body)
        scope = credential_scope(request.headers, request.query)
        invoked = invoked_endpoint(request, scope)
        if invoked is not None:
            return invoked
        if EXECUTE_API_HOST_RE.match(request.host) and (staged := CONNECTIONS_PATH_RE.match(request.path)):
            # the WebSocket management API, under its stage: botocore's endpoint holds the stage
            request = dataclasses.replace(request, path=staged.group(1))
        endpoint = self.endpoint(request.host)
        result = Classification(
            signing_name=scope.service if scope else None,
            region=(endpoint.region if endpoint else None) or (scope.region if scope else None),
        )
        if result.region is None and (info := endpoints.parse_host(request.host)) is not None:
            # no region in the host or a credential scope (SigV2, unsigned, a global endpoint): the
            # call is re-signed for, and so reaches, its partition's default region (sigv4.region_for)
            result.region = endpoints.default_region(info.partition)
        if signed_globally(scope, endpoint):
            # a global service at a regional host (AWS Health's health.eu-west-1 with botocore
            # signing for us-east-1, as endpoints.json's global endpoint says): decided, and signed
            # again, for the region the agent signed for, which is where AWS authorises it
            result.region = scope.region
        elif (mismatch := region_mismatch(scope, request.host, endpoint.region if endpoint else None)) is not None:
            # refused whatever policy says (addons/classify.py); its record names what it asked for
            named = self._resolved(request, scope, endpoint, dataclasses.replace(result))
            result.service, result.operation = named.service, named.operation
            result.error, result.signed_region = mismatch, scope.region
            return result
        return self._resolved(request, scope, endpoint, result)

    def _resolved(self, request: WireRequest, scope: CredentialScope | None, endpoint: Endpoint | None,
                  result: Classification) -> Classification:
        """``result`` with the service and operation found for ``request``, described, or why not."""
        tiers, why_not = self.candidates(scope, endpoint)
        by_target = self.target_candidates(request) if endpoint else []
        if by_target and by_target not in tiers:
            tiers.append(by_target)
        if not tiers:
            result.error = why_not
            return result
        for candidates in tiers:  # the host's services first, then all that sign with the scope's name
            resolution = self.resolve(request, candidates, endpoint)
            if not isinstance(resolution, str) and resolution.decoded_as is not None:
                # not described: it is refused as it is (addons/classify.py), named as its raw path reads
                result.service, result.operation = resolution.routing.entry.name, resolution.operation
                result.protocol = resolution.protocol
                result.signing_name = result.signing_name or resolution.routing.entry.signing_name
                result.error = result.decoded_as = resolution.decoded_as
                return result
            if not isinstance(resolution, str):
                self.describe(result, resolution.request or request, resolution, endpoint)
                return result
        if len(tiers[0]) == 1:
            result.service = tiers[0][0].name
        result.error = resolution
        return result

    def candidates(self, scope: CredentialScope | None, endpoint: Endpoint | None) -> tuple[list[list[ServiceEntry]], str]:
        """The services a request may be for, in tiers to try in turn: those that sign with the
        scope's name and have the host's endpoint prefix, then all that sign with that name."""
        catalogue = self.catalogue
        by_scope = catalogue.by_signing_name.get(scope.service, []) if scope else []
        by_host = catalogue.by_endpoint_prefix.get(endpoint.prefix, []) if endpoint and endpoint.prefix else []
        if endpoint and endpoint.s3_control:
            by_host = [catalogue.by_name[n] for n in S3_EXPRESS_CONTROL_SERVICES if n in catalogue.by_name]
        if by_scope and by_host:
            both = [e for e in by_scope if e in by_host]
            return ([both, by_scope] if both and len(both) < len(by_scope) else [by_scope]), ""
        if by_scope or by_host:
            return [by_scope or by_host], ""
        if scope:
            return [], f"no AWS service signs as {scope.service!r} (SigV4 credential scope)"
        if endpoint:
            return [], "no SigV4 credential scope, and no AWS service has the host's endpoint prefix"
        return [], "not an AWS request: no SigV4 credential scope and the host is not an AWS endpoint"

    def target_candidates(self, request: WireRequest) -> list[ServiceEntry]:
        """The services named by a json ``X-Amz-Target`` or an RPC v2 path's target prefix: the last
        resort for AWS hosts that are not named by any endpoint prefix and carry no credential scope."""
        target = request.headers.get("x-amz-target")
        if target:
            return self.catalogue.by_target_prefix.get(target.rpartition(".")[0], [])
        rpc = SMITHY_RPC_PATH_RE.match(request.path)
        return self.catalogue.by_target_prefix.get(rpc.group(1), []) if rpc else []

    def resolve(self, request: WireRequest, candidates: list[ServiceEntry], endpoint: Endpoint | None) -> Resolution | str:
        """Find the operation; returns why not as a string when it cannot."""
        target = request.headers.get("x-amz-target")
        if target:
            if request.path not in ("/", ""):
                # every json operation's request URI is "/": another path is for a server that routes
                # by path (an RPC v2 /service/<S>/operation/<Op>, say), which may run another operation
                return (f"X-Amz-Target names {target[:100]!r} and the path is {request.path[:100]!r}, not '/': "
                        "the request is ambiguous")
            return self.resolve_target(target, candidates)
        rpc = SMITHY_RPC_PATH_RE.match(request.path)
        if rpc and any("smithy-rpc-v2-cbor" in e.protocols for e in candidates):
            return self.resolve_rpc(rpc.group(1), rpc.group(2), candidates)
        query_capable = [e for e in candidates if {"query", "ec2"} & set(e.protocols)]
        if query_capable:
            action = self.query_action(request)
            if action:
                found = self.resolve_action(action, request, query_capable)
                if not isinstance(found, str) or len(query_capable) == len(candidates):
                    return found
        rest = [e for e in candidates if {"rest-json", "rest-xml"} & set(e.protocols)]
        if rest:
            return self.resolve_rest(request, rest, endpoint)
        return (f"cannot tell the operation: no X-Amz-Target, Action or known request URI for "
                f"{', '.join(e.name for e in candidates)}")

    def target_names_an_operation(self, target: str) -> bool:
        """Whether an X-Amz-Target names an operation of some service (from its head alone: a json
        call's operation is its target's, whatever its body holds)."""
        prefix, _, operation = target.rpartition(".")
        return any(operation in self.routing(e.name).operations for e in self.catalogue.by_target_prefix.get(prefix, ()))

    def resolve_target(self, target: str, candidates: list[ServiceEntry]) -> Resolution | str:
        prefix, _, operation = target.rpartition(".")
        signing_names = {c.signing_name for c in candidates}
        matching = [e for e in candidates if e.target_prefix == prefix] or [
            e for e in self.catalogue.by_target_prefix.get(prefix, []) if e.signing_name in signing_names
        ]
        for entry in prefer(matching):
            routing = self.routing(entry.name)
            if operation in routing.operations:
                return Resolution(routing, operation, "json")
        if not matching:
            return f"X-Amz-Target {target[:100]!r} names no operation of {', '.join(e.name for e in candidates)}"
        return f"{matching[0].name} has no operation {operation[:100]!r} (X-Amz-Target)"

    def resolve_rpc(self, target_prefix: str, operation: str, candidates: list[ServiceEntry]) -> Resolution | str:
        for entry in prefer(e for e in candidates if e.target_prefix == target_prefix):
            routing = self.routing(entry.name)
            if operation in routing.operations:
                return Resolution(routing, operation, "smithy-rpc-v2-cbor")
        return f"/service/{target_prefix[:100]}/operation/{operation[:100]} names no known operation"

    @staticmethod
    def query_action(request: WireRequest) -> str | None:
        if "Action" in request.query:
            return request.query["Action"][0]
        if request.body and b"Action=" in request.body[:65536]:
            for key, value in form_pairs(request):
                if key == "Action":
                    return value
        return None

    def resolve_action(self, action: str, request: WireRequest, candidates: list[ServiceEntry]) -> Resolution | str:
        version = (request.query.get("Version") or [None])[0]
        if version is None and request.body:
            version = next((v for k, v in form_pairs(request) if k == "Version"), None)
        ordered = sorted(prefer(candidates), key=lambda e: e.api_version != version)
        for entry in ordered:
            routing = self.routing(entry.name)
            if action in routing.operations:
                protocol = "ec2" if "ec2" in entry.protocols else "query"
                return Resolution(routing, action, protocol)
        return f"Action={action[:100]!r} is no operation of {', '.join(e.name for e in candidates)}"

    def resolve_rest(self, request: WireRequest, candidates: list[ServiceEntry],
                     endpoint: Endpoint | None) -> Resolution | str:
        path = request.path
        bucket = endpoint.bucket if endpoint else None
        if bucket and any(e.name == "s3" for e in candidates):
            path = "/" + bucket + (path if path != "/" else "")
        best: tuple | None = None
        for order, entry in enumerate(prefer(candidates)):
            routing = self.routing(entry.name)
            for route in routing.routes(request.method).for_query(request.query):
                match = route.pattern.match(path)
                if match is None:
                    continue
                score = self.route_score(route, routing, request, endpoint) + (
                    endpoint is not None and endpoint.prefix == entry.endpoint_prefix, -order)
                if best is None or score > best[0]:
                    best = (score, routing, route, match)
        if best is None:
            as_get = get_from_form_post(request) if any(e.name in FORM_POST_SERVICES for e in candidates) else None
            if as_get is not None:
                found = self.resolve_rest(as_get, candidates, endpoint)
                if isinstance(found, Resolution):
                    found.request = found.request or as_get
                    return found
            if (request.path.endswith("/") and not request.path.endswith("//") and len(request.path) > 1
                    and not any(e.name in ("s3", "s3control") for e in candidates)):
                # /2015-03-31/functions/ (older models' ListFunctions, and what AWS's own routing takes
                # for /2015-03-31/functions): the operation of the path without its last slash. Not
                # for S3, where a key may end with one.
                found = self.resolve_rest(dataclasses.replace(request, path=request.path[:-1]), candidates, endpoint)
                if isinstance(found, Resolution):
                    return found
            if (request.method == "POST" and any(e.name == "s3" for e in candidates)
                    and request.headers.get("content-type", "").lower().startswith("multipart/form-data")):
                return (f"POST {request.path[:200]} is S3's browser-form upload (POST Object, what boto3's "
                        "generate_presigned_post makes), which no botocore model has and agentgate cannot sign "
                        "again: upload with put_object, or a presigned PUT URL (generate_presigned_url('put_object'))")
            return (f"{request.method} {request.path[:200]} matches no operation of "
                    f"{', '.join(e.name for e in candidates)}")
        _, routing, route, match = best
        hint = (request.query.get("x-id") or [None])[0]
        if hint is not None and hint != route.operation:
            return (f"the request is {route.operation} by its path and query, and says x-id={hint[:60]}: "
                    "the request is ambiguous")
        found = Resolution(routing, route.operation, rest_protocol(routing.entry), route, match)
        if "%2" in path and ENCODED_SLASH_RE.search(path):
            found.decoded_as = self.decoded_reading(routing, route, match, request, path, endpoint)
        return found

    def decoded_reading(self, routing: ServiceRouting, route: Route, match: re.Match, request: WireRequest,
                        path: str, endpoint: Endpoint | None) -> str | None:
        """Why ``path``, matched as ``route`` at its raw slashes (as AWS and moto route), names
        something else once decoded, as a server that decodes a path before it routes reads it
        (and perhaps then folds ``//`` and drops a last ``/``); None when it names the same. Only an
        encoded slash in a non-greedy label can move a segment boundary: one in a greedy label (an
        S3 key) is part of its value either way, and one whose decoded path matches no operation
        of the service is left as it is."""
        held = [label for label, greedy, value in zip(route.labels, route.greedy, match.groups())
                if not greedy and ENCODED_SLASH_RE.search(value)]
        if not held:
            return None
        what = (f"{request.method} {request.path[:200]} is {route.operation} by its raw path, whose "
                f"{', '.join(held)} holds an encoded slash (%2F)")
        raw_values = tuple(unquote(v, errors="surrogateescape") for v in match.groups())
        decoded = unquote(path, errors="surrogateescape")
        folded = re.sub("/+", "/", decoded)
        folded = folded[:-1] if len(folded) > 1 and folded.endswith("/") else folded
        for reading in dict.fromkeys((decoded, folded)):
            best: tuple | None = None
            ties: list[tuple[Route, re.Match]] = []
            for other in routing.routes(request.method).for_query(request.query):
                found = other.pattern.match(reading)
                if found is None:
                    continue
                score = self.route_score(other, routing, request, endpoint)
                if best is None or score > best:
                    best, ties = score, [(other, found)]
                elif score == best:
                    ties.append((other, found))
            if not ties:
                continue
            decoded_as = "decoded" if reading == decoded else f"decoded as {reading[:200]}"
            operations = sorted({r.operation for r, _ in ties})
            if len(operations) > 1:
                return f"{what}; {decoded_as}, the path matches {', '.join(operations)} alike: the request is ambiguous"
            other, found = ties[0]
            if other.operation != route.operation:
                return (f"{what}; {decoded_as}, as a server that decodes a path before it routes reads it, the "
                        f"path is {other.operation}: the request is ambiguous")
            if found.groups() != raw_values:
                return (f"{what}; {decoded_as}, the path is {other.operation} of another "
                        f"{', '.join(other.labels)}: the request is ambiguous")
        return None

    @staticmethod
    def route_score(route: Route, routing: ServiceRouting, request: WireRequest, endpoint: Endpoint | None) -> tuple:
        satisfied = all(q in request.query for q in route.required_query) and all(
            h in request.headers for h in route.required_headers)
        named = (request.query.get("x-id") or [None])[0] == route.operation
        s3_control = endpoint.s3_control if endpoint else False
        # the query literals the service dispatches on (?acl, ?session) come before x-id, which
        # botocore adds as a hint and S3 does not act on
        return (satisfied, route.rank[0], named) + route.rank[1:] + (
            routing.uses_s3_express_control(route.operation) == s3_control,
            not routing.deprecated(route.operation),
        )

    # -- parameters and the rest of the description

    def describe(self, result: Classification, request: WireRequest, resolution: Resolution,
                 endpoint: Endpoint | None) -> None:
        routing = resolution.routing
        result.service = routing.entry.name
        result.operation = resolution.operation
        result.protocol = resolution.protocol
        if result.signing_name is None:
            result.signing_name = routing.entry.signing_name
        operation = routing.operation_model(resolution.operation)
        errors = ParamErrors()
        try:
            result.params = self.params(request, resolution, operation, endpoint, errors)
        except Exception as exc:  # a body that does not parse for the protocol
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
            sent_as = amz_cbor(request.headers.get("content-type")) if resolution.protocol == "json" else None
            what = f"json request body, sent as {sent_as}" if sent_as else f"{resolution.protocol} request body"
            errors.insert(0, f"could not read the {what}: {why}")
        if (where := unrecordable(result.params)) is not None:
            errors.add(where, "holds a NUL or bytes that are not UTF-8, which no record or approval can name "
                       "apart from another value: agentgate decides no such call")
        uri = resolution.routing.located(resolution.operation).uri if resolution.route else {}
        result.resources = resources_of(result.params, [name for name, _ in uri.values()], routing.entry.name)
        if len(result.resources) > MAX_RESOURCES:
            del result.resources[MAX_RESOURCES:]
            errors.add("resources", f"the call names more than {MAX_RESOURCES} resources; agentgate decides no such call")
        result.account = account_of(result.params, result.resources, endpoint)
        result.action, result.access_level = actions.iam_action(routing.entry.name, resolution.operation)
        try:
            authorised_as(result)
        except NotAuthorisable as e:
            errors.add("params", f"{e}: agentgate decides no such call")
        if errors:
            result.error = "; ".join(errors)

    def params(self, request: WireRequest, resolution: Resolution, operation: botocore.model.OperationModel,
               endpoint: Endpoint | None, errors: ParamErrors) -> dict:
        shape = operation.input_shape
        protocol = resolution.protocol
        if (coding := unread_coding(request, operation)) is not None:
            errors.add("body", coding)
        if protocol in ("query", "ec2"):
            pairs = form_pairs(request)
            if request.form_error:
                errors.add("body", request.form_error)
            in_query = sum(len(values) for values in request.query.values())
            for key, _ in pairs[in_query:]:  # the form body's own
                if key.lower() in BODY_AUTH_PARAMS:
                    errors.add(key[:100], "a signature parameter in the form body: agentgate signs calls itself, "
                               "and the service would read it beside the gateway's signature")
            overlay = query_names_of(resolution.routing.entry) if protocol == "query" else None
            params = query_params(pairs, shape, protocol == "ec2", errors, overlay)
            if overlay is not None and overlay.path_member:
                queue_from_path(request, shape, params, overlay.path_member, errors)
            return params
        if (request.body and not any(k.lower() not in AUTH_QUERY_PARAMS for k in request.query)
                and not (protocol == "rest-xml" and payload_is_data(operation)) and body_names_an_action(request)):
            # moto (the stand-in for AWS in tests and sandboxes) reads a body that is no form, under
            # a URL with no query (as forwarded: the agent's signature parameters are dropped),
            # inflated, as a form too, and runs the Action it names before the target or the path
            errors.add("body", "read as a form, the body names an Action beside the operation: the request is "
                               "ambiguous")
        if shape is None:
            return {}
        leading = endpoint.leading if endpoint else ""
        host_labels = host_prefix_labels(operation, leading)
        if protocol in ("rest-json", "rest-xml"):
            located = resolution.routing.located(resolution.operation)
            params = rest_located_params(request, resolution.route, resolution.match, located, host_labels, errors)
            body = decoded_body(request)
            if body and not operation.has_event_stream_input:
                params.update(rest_body_params(body, shape, protocol, errors))
            return without_aws_chunked(params)
        # json and CBOR calls carry every parameter in the body; anything in the query string (an
        # Action, say, which moto dispatches on before X-Amz-Target) is not the call policy decides
        for key in request.query:
            if key.lower() not in AUTH_QUERY_PARAMS:
                errors.add(key[:100], f"a query-string parameter on a {protocol} call, whose parameters are all in "
                                      "its body: the request is ambiguous")
        body = decoded_body(request)
        params = dict(host_labels)
        if not body or operation.has_event_stream_input:
            return params
        millis = protocol == "json" and amz_cbor(request.headers.get("content-type")) is not None
        if protocol == "smithy-rpc-v2-cbor" or millis:
            # a json call sent as CBOR (AMZ_CBOR_CONTENT_TYPES) is read as the service reads it: by its
            # Content-Type, into the parameters the same call sent as JSON has
            value = decode_cbor(body, millis)
        else:
            value = load_json(body)
        if not isinstance(value, dict):
            errors.add("body", "expected an object")
            return params
        params.update(typed_structure(value, shape, errors, "", millis=millis))
        return params


# Services whose SDK sends a GET of the model as a form POST (the query string in the body), which the
# service reads as that GET. Nowhere else: S3 reads a form POST as a POST Object upload, not a read.
FORM_POST_SERVICES = frozenset({"cloudsearchdomain"})


def get_from_form_post(request: WireRequest) -> WireRequest | None:
    """A form-encoded POST read as the GET it stands for (botocore sends cloudsearchdomain Search,
    a GET in the model, as a POST with its query string in the body)."""
    if request.method != "POST" or not request.body:
        return None
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    query = {k: list(v) for k, v in request.query.items()}
    try:
        pairs = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, errors="surrogateescape")
    except UnicodeDecodeError:
        return None
    for key, value in pairs:
        query.setdefault(key, []).append(value)
    return dataclasses.replace(request, method="GET", query=query, body=None)


def query_literals_match(route: Route, query: Mapping[str, list[str]]) -> bool:
    for key, value in route.query_literals:
        if key not in query or (value is not None and value not in query[key]):
            return False
    return True


# "Action" as a form's key, each letter written plainly or percent-encoded, as a form reader decodes
# it (moto's parse_qs): at the start of the body or after an "&", up to "=", the next "&" or the end
_ACTION_KEY = rb"(?:A|%41)(?:c|%63)(?:t|%74)(?:i|%69)(?:o|%6[Ff])(?:n|%6[Ee])(?:=|&|$)"
_FORM_ACTION_FIRST = re.compile(_ACTION_KEY)
_FORM_ACTION_AFTER = re.compile(b"&" + _ACTION_KEY)  # led by a literal: scanned fast


def body_names_an_action(request: WireRequest) -> bool:
    """Whether the request's body, inflated and read as a form (as moto reads a body that is no
    form), names an Action, written plainly or percent-encoded: one scan of the body, no parse. A
    body that does not inflate is left to the reading that reports it."""
    body = request.body
    if not body:
        return False
    if "content-encoding" in request.headers:
        try:
            body = decoded_body(request)
        except (ValueError, zlib.error):
            return False
    return bool(body) and (_FORM_ACTION_FIRST.match(body) is not None or _FORM_ACTION_AFTER.search(body) is not None)


def payload_is_data(operation: botocore.model.OperationModel) -> bool:
    """Whether the operation's body is its payload member's data (an S3 object's bytes), not a
    document of its parameters."""
    shape = operation.input_shape if operation is not None else None
    name = shape.serialization.get("payload") if shape is not None else None
    member = shape.members.get(name) if name else None
    return member is not None and member.type_name in ("blob", "string")


def form_pairs(request: WireRequest) -> list[tuple[str, str]]:
    """Query-protocol parameters: the query string and, for a form POST, the body."""
    if request.form is None:
        pairs = [(k, v) for k, values in request.query.items() for v in values]
        if request.body:
            try:
                pairs.extend(parse_qsl(decoded_body(request).decode("utf-8"), keep_blank_values=True,
                                       errors="surrogateescape"))
            except (ValueError, zlib.error) as e:  # a body the service may read otherwise: not decided without it
                request.form_error = f"could not read the form body: {type(e).__name__}: {str(e)[:200]}"
        request.form = pairs
    return request.form


def rest_protocol(entry: ServiceEntry) -> str:
    if entry.protocol.startswith("rest-"):
        return entry.protocol
    return next((p for p in entry.protocols if p.startswith("rest-")), "rest-json")


_PREFERRED = {other: preferred for preferred, others, _ in SAME_WIRE_PREFERENCE for other in others}


def prefer(entries: Iterable[ServiceEntry]) -> list[ServiceEntry]:
    """Candidates in order of preference where services share a wire form (SAME_WIRE_PREFERENCE)."""
    return sorted(entries, key=lambda e: e.name in _PREFERRED)


_default: Classifier | None = None
_default_lock = threading.Lock()


def prepare(services: Iterable[str] = ()) -> None:
    """Load the service catalogue (and the named services' models) now rather than on the first call."""
    classifier = default_classifier()
    classifier.catalogue, classifier.partitions  # noqa: B018 (loads them)
    for service in services:
        classifier.routing(service).routes("GET")


_body_is_data: dict[tuple[str, str, str], bool] = {}


def body_is_data(call: Classification) -> bool:
    """Whether ``call``'s body may stream past the stages under a declared payload hash: only where
    it is data, not parameters: the operation's streaming payload (S3 PutObject's and UploadPart's
    ``Body``, Glacier archives), an event stream, or the body of an invoked endpoint (a function
    URL, an API), which is the customer's. Any other body is read first, so that policy, an
    approval's binding and the record see what upstream will act on (also a body the operation has
    no member for: a server may still read it, as moto read an Action from one). A call not
    classified: False (its body is read)."""
    if not call.service or not call.operation or not call.protocol:
        return False
    key = (call.service, call.operation, call.protocol)
    found = _body_is_data.get(key)
    if found is None:
        found = _body_is_data[key] = _data_body(call.service, call.operation)
    return found


def _data_body(service: str, operation: str) -> bool:
    classifier = default_classifier()
    routing = classifier.routing(service) if service in classifier.catalogue.by_name else None
    if routing is None or operation not in routing.operations:
        return True  # an invoked endpoint (a function URL, an API): its body is the customer's
    model = routing.operation_model(operation)
    shape = model.input_shape
    if model.has_event_stream_input:
        return True
    payload = shape.serialization.get("payload") if shape is not None else None
    return bool(payload) and is_streaming(shape.members[payload])


def region_mismatch(scope: CredentialScope | None, host: str, region: str | None) -> str | None:
    """Why a signature scoped to another region than its host's cannot be decided, or None. AWS
    refuses such a signature (S3 naming the region to sign for, which SDKs retry in); decided for
    the one region, the call must not be signed for the other."""
    if scope is None or not scope.region or not region or scope.region == region:
        return None
    return f"the signature's credential scope names region {scope.region[:40]!r}, and the host {host[:100]} region {region!r}"


def signed_globally(scope: CredentialScope | None, endpoint: Endpoint | None) -> bool:
    """Whether a call to a regional host of a service that endpoints.json makes global is signed
    for that service's global region in the host's partition, as botocore signs it: botocore builds
    the host from the service's endpoint rules (``health.eu-west-1.amazonaws.com``) and the signing
    region from its global endpoint (``us-east-1``; ``cn-northwest-1`` in the China partition)."""
    if scope is None or not scope.region or endpoint is None or not endpoint.region or scope.region == endpoint.region:
        return False
    partition = endpoints.partition_of(endpoint.region)
    return partition is not None and endpoints.global_region(endpoint.prefix, partition) == scope.region


LAMBDA_URL_HOST_RE = re.compile(r"^([a-z0-9]+)\.lambda-url\.([a-z0-9-]+)\.on\.aws$")
EXECUTE_API_HOST_RE = re.compile(r"^([a-z0-9]+)\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
CONNECTIONS_PATH_RE = re.compile(r"^/[^/]+(/@connections(?:/.*)?)$")


def invoked_endpoint(request: WireRequest, scope: CredentialScope | None) -> Classification | None:
    """A call to a customer's own endpoint, which AWS authorises as invoking it, whatever its path
    and body: a Lambda function URL (lambda:InvokeFunctionUrl, resource the URL's host) or an API
    Gateway API (execute-api:Invoke, resource ``<api>/<stage>/<METHOD>/<path>`` as IAM writes it).
    Their paths are the customer's, not an AWS API's: read as one, a function URL's would be
    decided as a control-plane read."""
    host = request.host.lower().rstrip(".")
    if (m := LAMBDA_URL_HOST_RE.match(host)) is not None:
        action, resource = "lambda:InvokeFunctionUrl", host
    elif (m := EXECUTE_API_HOST_RE.match(host)) is not None and not CONNECTIONS_PATH_RE.match(request.path):
        stage, _, rest = request.path.lstrip("/").partition("/")
        action, resource = "execute-api:Invoke", f"{m.group(1)}/{stage}/{request.method}/{rest}"
    else:
        return None
    service, _, operation = action.partition(":")
    _, level = actions.lookup(action) or (action, None)
    region = m.group(2)
    if (mismatch := region_mismatch(scope, host, region)) is not None:
        return Classification(service=service, region=region, error=mismatch, signed_region=scope.region)
    return Classification(service=service, operation=operation,
                          signing_name=scope.service if scope else service, region=region, resources=[resource[:MAX_RESOURCE_LENGTH]],
                          params={"method": request.method, "path": request.path[:MAX_RESOURCE_LENGTH]},
                          action=action, access_level=level)


def default_classifier() -> Classifier:
    """The process-wide classifier (created on first use; models load as services are seen)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Classifier()
    return _default


def classify(method: str, host: str, path: str, query: str, headers: Mapping[str, str],
             body: bytes | None) -> Classification:
    """Classify one request. Never raises: what could not be read is in ``error``."""
    try:
        return default_classifier().classify(method, host, path, query, headers, body)
    except Exception as exc:
        return Classification(error=f"could not classify the request: {type(exc).__name__}: {str(exc)[:200]}")
