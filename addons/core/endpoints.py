"""AWS host names: which hosts are AWS, and what a host name says about the call.

Everything comes from botocore's own data: ``partitions.json`` gives every partition's DNS
suffixes (``amazonaws.com``, ``api.aws``, ``amazonaws.com.cn``, ``c2s.ic.gov``, ...) and region
patterns, ``endpoints.json`` the endpoint prefixes and the global endpoints, and the services'
endpoint rule sets the few domains that live outside the partition suffixes (``on.aws``, the
sign-in domains). The tables are built once, on first use; ``preload()`` builds them up front.

A host is AWS when it ends, on a label boundary, with one of those suffixes:
``amazonaws.com.evil.com`` and ``evilamazonaws.com`` are not.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import os
import re

from botocore.loaders import create_loader

# Labels that stand where a region would for a global endpoint (iam.global.api.aws,
# iam.us-gov.amazonaws.com), and the partition each one names (None: any).
_GLOBAL_LABELS: dict[str, str | None] = {"global": None, "us-gov": "aws-us-gov"}

# Endpoint prefixes whose virtual-host labels name an S3 bucket (bucket.s3.amazonaws.com,
# bucket--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com).
_BUCKET_PREFIXES = frozenset({"s3", "s3express"})

# S3 Express zonal endpoints put the zone id in the prefix label (s3express-use1-az4).
_S3EXPRESS_ZONAL = re.compile(r"s3express-(?!control$)[a-z0-9-]+")

# Legacy S3 host forms with the region in the prefix label (s3-us-west-2, s3-fips-us-gov-west-1).
_S3_DASH_REGION = re.compile(r"(s3(?:-fips)?)-(.+)")

_RULE_SET_URL = re.compile(rb'"url"\s*:\s*"https?://([^"/]+)"?')


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """What an AWS host name says. ``region`` is None for a global endpoint: sign in the
    partition's default region (``default_region(partition)``)."""

    endpoint_prefix: str | None  # "s3", "dynamodb", "sts", "runtime.sagemaker", ...
    region: str | None
    bucket: str | None  # S3 virtual-host style bucket
    partition: str | None
    fips: bool
    dualstack: bool


@dataclasses.dataclass(frozen=True)
class _Partition:
    name: str
    region_pattern: re.Pattern[str]
    regions: frozenset[str]
    default_region: str


@dataclasses.dataclass(frozen=True)
class _KnownHost:
    """A global or special endpoint named in endpoints.json (sts.amazonaws.com, s3-external-1...)."""

    prefix: str
    partition: str
    region: str | None
    fips: bool


@dataclasses.dataclass(frozen=True)
class _Tables:
    partitions: tuple[_Partition, ...]
    suffixes: dict[str, tuple[str, ...]]  # DNS suffix -> partitions using it, in botocore's order
    dualstack_suffixes: frozenset[str]
    prefixes: frozenset[str]  # endpoint prefixes named in endpoints.json
    known_hosts: dict[str, _KnownHost]
    global_regions: dict[tuple[str, str], str]  # (partition, endpoint prefix) -> its global endpoint's region


@dataclasses.dataclass(frozen=True)
class _Elsewhere:
    """AWS domains outside the partition suffixes, from the endpoint rule sets."""

    suffixes: frozenset[str]
    hosts: frozenset[str]


def preload() -> None:
    """Build the host tables now (about 0.2 s) instead of on the first call."""
    _tables()
    _elsewhere()


@functools.lru_cache(maxsize=4096)  # every stage asks about the same few hosts
def is_aws_host(host: str) -> bool:
    """True when ``host`` (without port) is under an AWS DNS suffix."""
    host = _normalise(host)
    if not host or ".." in host or host.startswith("."):
        return False
    return _partition_suffix(host) is not None or _elsewhere_suffix(host) is not None


@functools.lru_cache(maxsize=4096)  # HostInfo is immutable; every stage asks about the same few hosts
def parse_host(host: str) -> HostInfo | None:
    """Endpoint prefix, region, bucket, partition, FIPS and dual-stack from a host name;
    None when the host is not an AWS host."""
    host = _normalise(host)
    suffix = _partition_suffix(host)
    if suffix is None:
        return _parse_elsewhere(host)
    labels = host[: -len(suffix) - 1].split(".")
    if not all(labels):
        return None
    tables = _tables()
    dualstack = suffix in tables.dualstack_suffixes
    known = _known_host(labels, suffix)
    if known is not None:
        rest, entry = known
        bucket = ".".join(rest) if rest and entry.prefix in _BUCKET_PREFIXES else None
        return HostInfo(entry.prefix, entry.region, bucket, entry.partition, entry.fips, dualstack)
    region, partition = _take_region(labels)
    if labels and labels[-1] == "dualstack":
        dualstack = True
        labels.pop()
    if partition is None:
        partition = tables.suffixes[suffix][0]
    if not labels:
        return HostInfo(None, region, None, partition, False, dualstack)
    prefix, fips, rest = _take_prefix(labels)
    bucket = ".".join(rest) if rest and prefix in _BUCKET_PREFIXES else None
    return HostInfo(prefix, region, bucket, partition, fips, dualstack)


def default_region(partition: str | None) -> str:
    """The region a partition's global endpoints sign in (``us-east-1`` for ``aws``)."""
    for entry in _tables().partitions:
        if entry.name == partition:
            return entry.default_region
    return "us-east-1"


def global_region(endpoint_prefix: str, partition: str = "aws") -> str | None:
    """The region every call of a service whose endpoint is global in ``partition`` is signed for
    (IAM, Route 53, CloudFront, Organizations: ``us-east-1`` in ``aws``; Network Manager
    ``us-west-2``), whatever region the SDK is set to; None for a service with regional endpoints."""
    return _tables().global_regions.get((partition, endpoint_prefix))


def partition_of(region: str) -> str | None:
    """The partition a region belongs to, by botocore's region patterns."""
    for entry in _tables().partitions:
        if region in entry.regions or entry.region_pattern.match(region):
            return entry.name
    return None


# -- matching -------------------------------------------------------------------------------


def _normalise(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = host.partition(":")[0]
    return host


def _partition_suffix(host: str) -> str | None:
    """The longest partition DNS suffix ``host`` ends with, below at least one label."""
    suffixes = _tables().suffixes
    dot = host.find(".")
    while dot != -1:
        if host[dot + 1 :] in suffixes:
            return host[dot + 1 :]
        dot = host.find(".", dot + 1)
    return None


def _elsewhere_suffix(host: str) -> str | None:
    elsewhere = _elsewhere()
    if host in elsewhere.hosts:
        return host
    dot = host.find(".")
    while dot != -1:
        if host[dot + 1 :] in elsewhere.suffixes:
            return host[dot + 1 :]
        dot = host.find(".", dot + 1)
    return None


def _parse_elsewhere(host: str) -> HostInfo | None:
    suffix = _elsewhere_suffix(host)
    if suffix is None:
        return None
    labels = host[: -len(suffix) - 1].split(".") if host != suffix else []
    if not all(labels):
        return None
    region, partition = _take_region(labels)
    if not labels:
        return HostInfo(None, region, None, partition, False, False)
    prefix, fips, _ = _take_prefix(labels)
    return HostInfo(prefix, region, None, partition, fips, False)


def _known_host(labels: list[str], suffix: str) -> tuple[list[str], _KnownHost] | None:
    """A global endpoint named in endpoints.json, possibly under virtual-host labels."""
    known = _tables().known_hosts
    for start in range(len(labels)):
        entry = known.get(".".join(labels[start:]) + "." + suffix)
        if entry is not None:
            return labels[:start], entry
    return None


def _take_region(labels: list[str]) -> tuple[str | None, str | None]:
    """Pop the region (or a global pseudo-region label) off the end of ``labels``;
    return (region, partition)."""
    last = labels[-1]
    partition = partition_of(last)
    if partition is not None:
        labels.pop()
        return last, partition
    if last in _GLOBAL_LABELS:
        labels.pop()
        return None, _GLOBAL_LABELS[last]
    legacy = _S3_DASH_REGION.fullmatch(last)
    if legacy and (partition := partition_of(legacy.group(2))) is not None:
        labels[-1] = legacy.group(1)
        return legacy.group(2), partition
    return None, None


def _take_prefix(labels: list[str]) -> tuple[str, bool, list[str]]:
    """Split the labels left of the region into (endpoint prefix, fips, leading labels)."""
    fips = False
    names: list[str] = []
    for label in labels:
        if label == "fips":
            fips = True
            continue
        if label.endswith("-fips"):
            fips = True
            label = label[: -len("-fips")]
        names.append(label)
    if not names:
        return "", fips, []
    if _S3EXPRESS_ZONAL.fullmatch(names[-1]):
        return "s3express", fips, names[:-1]
    prefixes = _tables().prefixes
    for start in range(len(names) - 1):
        dotted = ".".join(names[start:])
        if dotted in prefixes:
            return dotted, fips, names[:start]
    return names[-1], fips, names[:-1]


# -- tables ---------------------------------------------------------------------------------


@functools.cache
def _tables() -> _Tables:
    loader = create_loader()
    partitions_data = loader.load_data("partitions")["partitions"]
    endpoints_data = loader.load_data("endpoints")["partitions"]
    partitions = tuple(_partition(p) for p in partitions_data)
    suffixes: dict[str, list[str]] = {}
    dualstack: set[str] = set()
    for p in partitions_data:
        outputs = p["outputs"]
        suffixes.setdefault(outputs["dnsSuffix"], []).append(p["id"])
        if outputs.get("dualStackDnsSuffix"):
            suffixes.setdefault(outputs["dualStackDnsSuffix"], []).append(p["id"])
            dualstack.add(outputs["dualStackDnsSuffix"])
    for p in endpoints_data:
        suffixes.setdefault(p["dnsSuffix"], []).append(p["partition"])
    prefixes = frozenset(name for p in endpoints_data for name in p["services"])
    return _Tables(
        partitions=partitions,
        suffixes={k: tuple(dict.fromkeys(v)) for k, v in suffixes.items()},
        dualstack_suffixes=frozenset(dualstack),
        prefixes=prefixes,
        known_hosts=_known_hosts(endpoints_data),
        global_regions=_global_regions(endpoints_data),
    )


def _partition(data: dict) -> _Partition:
    outputs = data["outputs"]
    return _Partition(
        name=data["id"],
        region_pattern=re.compile(data["regionRegex"]),
        regions=frozenset(r for r in data["regions"] if not r.endswith("-global")),
        default_region=outputs.get("implicitGlobalRegion") or "us-east-1",
    )


def _known_hosts(endpoints_data: list[dict]) -> dict[str, _KnownHost]:
    """Endpoints named by a host without a region label: the global endpoints."""
    known: dict[str, _KnownHost] = {}
    for p in endpoints_data:
        region_pattern = re.compile(p["regionRegex"])
        for prefix, service in p["services"].items():
            for key, endpoint in service.get("endpoints", {}).items():
                hostname = endpoint.get("hostname")
                if not hostname or key in p["regions"] or endpoint.get("deprecated"):
                    continue
                if ":" in hostname or any(map(region_pattern.match, hostname.split("."))):
                    continue  # a local endpoint, or the host names its region
                scope_region = endpoint.get("credentialScope", {}).get("region")
                region = None if "global" in key else scope_region
                fips = "fips" in key or "-fips." in hostname
                known.setdefault(hostname, _KnownHost(prefix, p["partition"], region, fips))
    return known


def _global_regions(endpoints_data: list[dict]) -> dict[tuple[str, str], str]:
    """The services endpoints.json marks not regionalized, each with its global endpoint's region."""
    found: dict[tuple[str, str], str] = {}
    for p in endpoints_data:
        for prefix, service in p["services"].items():
            endpoint = service.get("endpoints", {}).get(service.get("partitionEndpoint") or "", {})
            region = endpoint.get("credentialScope", {}).get("region")
            if service.get("isRegionalized") is False and region:
                found[(p["partition"], prefix)] = region
    return found


@functools.cache
def _elsewhere() -> _Elsewhere:
    """Domains the endpoint rule sets name outside every partition suffix."""
    loader = create_loader()
    suffixes: set[str] = set()
    hosts: set[str] = set()
    for base in loader.search_paths:
        pattern = os.path.join(base, "*", "*", "endpoint-rule-set-1.json*")
        for path in glob.glob(pattern):
            for template in _rule_set_hosts(path):
                _classify_template(template.lower(), suffixes, hosts)
    return _Elsewhere(frozenset(suffixes), frozenset(hosts))


def _rule_set_hosts(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    return [m.decode() for m in _RULE_SET_URL.findall(raw)]


def _classify_template(template: str, suffixes: set[str], hosts: set[str]) -> None:
    """Add a rule set URL host (``{Region}.signin.aws.amazon.com``) to suffixes or hosts."""
    if ":" in template or "localhost" in template:
        return
    if "}" not in template:
        if "." in template and _partition_suffix(template) is None:
            hosts.add(template)
        return
    tail = template.rsplit("}", 1)[1]
    domain = tail[1:] if tail.startswith(".") else tail.partition(".")[2]
    if domain.count(".") >= 1 and "{" not in domain and domain not in _tables().suffixes:
        if _partition_suffix(domain) is None:
            suffixes.add(domain)
