"""AWS host recognition from botocore's partition and endpoint data."""

from __future__ import annotations


import pytest

from addons.core import endpoints
from addons.core.endpoints import HostInfo


def info(prefix, region, *, bucket=None, partition="aws", fips=False, dualstack=False):
    return HostInfo(prefix, region, bucket, partition, fips, dualstack)


@pytest.mark.parametrize(
    "host, expected",
    [
        # <prefix>.<region>.amazonaws.com and the global form
        ("dynamodb.us-east-1.amazonaws.com", info("dynamodb", "us-east-1")),
        ("sts.eu-west-3.amazonaws.com", info("sts", "eu-west-3")),
        ("sts.amazonaws.com", info("sts", None)),
        ("iam.amazonaws.com", info("iam", None)),
        ("route53.amazonaws.com", info("route53", None)),
        # FIPS and dual-stack
        ("dynamodb-fips.us-east-2.amazonaws.com", info("dynamodb", "us-east-2", fips=True)),
        ("kms-fips.us-gov-west-1.amazonaws.com",
         info("kms", "us-gov-west-1", partition="aws-us-gov", fips=True)),
        ("fips.batch.us-east-1.amazonaws.com", info("batch", "us-east-1", fips=True)),
        ("ec2.dualstack.us-west-2.amazonaws.com", info("ec2", "us-west-2", dualstack=True)),
        ("s3.dualstack.eu-central-1.amazonaws.com", info("s3", "eu-central-1", dualstack=True)),
        ("s3-fips.dualstack.us-east-1.amazonaws.com",
         info("s3", "us-east-1", fips=True, dualstack=True)),
        ("lambda.us-east-1.api.aws", info("lambda", "us-east-1", dualstack=True)),
        ("aws-mcp.us-east-1.api.aws", info("aws-mcp", "us-east-1", dualstack=True)),
        ("iam.global.api.aws", info("iam", None, dualstack=True)),
        # S3 virtual-host style, path style, legacy dash-region form
        ("s3.amazonaws.com", info("s3", None)),
        ("s3.us-west-2.amazonaws.com", info("s3", "us-west-2")),
        ("examplebucket.s3.amazonaws.com", info("s3", None, bucket="examplebucket")),
        ("examplebucket.s3.us-west-2.amazonaws.com",
         info("s3", "us-west-2", bucket="examplebucket")),
        ("examplebucket.s3-us-west-2.amazonaws.com",
         info("s3", "us-west-2", bucket="examplebucket")),
        ("examplebucket.s3.dualstack.ap-south-1.amazonaws.com",
         info("s3", "ap-south-1", bucket="examplebucket", dualstack=True)),
        ("examplebucket.s3-fips.us-east-2.amazonaws.com",
         info("s3", "us-east-2", bucket="examplebucket", fips=True)),
        ("examplebucket.s3-external-1.amazonaws.com",
         info("s3", "us-east-1", bucket="examplebucket")),
        ("my.dotted.bucket.s3.amazonaws.com", info("s3", None, bucket="my.dotted.bucket")),
        ("my.dotted.bucket.s3.eu-west-1.amazonaws.com",
         info("s3", "eu-west-1", bucket="my.dotted.bucket")),
        ("us-east-1.s3.amazonaws.com", info("s3", None, bucket="us-east-1")),
        ("bkt--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com",
         info("s3express", "us-east-1", bucket="bkt--use1-az4--x-s3")),
        ("123456789012.s3-control.us-east-1.amazonaws.com", info("s3-control", "us-east-1")),
        # prefixes with dots, as endpoints.json names them
        ("runtime.sagemaker.us-east-1.amazonaws.com", info("runtime.sagemaker", "us-east-1")),
        ("api-fips.sagemaker.us-east-1.amazonaws.com",
         info("api.sagemaker", "us-east-1", fips=True)),
        ("streams.dynamodb.eu-west-1.amazonaws.com", info("streams.dynamodb", "eu-west-1")),
        ("data-ats.iot.us-east-1.amazonaws.com", info("data-ats.iot", "us-east-1")),
        # other partitions
        ("ec2.cn-north-1.amazonaws.com.cn", info("ec2", "cn-north-1", partition="aws-cn")),
        ("examplebucket.s3.cn-northwest-1.amazonaws.com.cn",
         info("s3", "cn-northwest-1", bucket="examplebucket", partition="aws-cn")),
        ("route53.amazonaws.com.cn", info("route53", None, partition="aws-cn")),
        ("lambda.cn-north-1.api.amazonwebservices.com.cn",
         info("lambda", "cn-north-1", partition="aws-cn", dualstack=True)),
        ("sts.us-gov-west-1.amazonaws.com", info("sts", "us-gov-west-1", partition="aws-us-gov")),
        ("iam.us-gov.amazonaws.com", info("iam", None, partition="aws-us-gov")),
        ("sts.us-iso-east-1.c2s.ic.gov", info("sts", "us-iso-east-1", partition="aws-iso")),
        ("sts.us-isob-east-1.sc2s.sgov.gov", info("sts", "us-isob-east-1", partition="aws-iso-b")),
        ("sts.eu-isoe-west-1.cloud.adc-e.uk", info("sts", "eu-isoe-west-1", partition="aws-iso-e")),
        ("sts.us-isof-south-1.csp.hci.ic.gov",
         info("sts", "us-isof-south-1", partition="aws-iso-f")),
        ("kms.eusc-de-east-1.amazonaws.eu", info("kms", "eusc-de-east-1", partition="aws-eusc")),
        # domains outside the partition suffixes, named by the endpoint rule sets
        ("abcdefghij.lambda-url.us-east-1.on.aws", info("lambda-url", "us-east-1")),
        ("us-east-1.signin.aws.amazon.com", info(None, "us-east-1")),
        # case, trailing dot and port do not matter
        ("DynamoDB.US-EAST-1.AmazonAWS.com.", info("dynamodb", "us-east-1")),
        ("sts.amazonaws.com:443", info("sts", None)),
    ],
)
def test_parse_host(host, expected):
    assert endpoints.is_aws_host(host)
    assert endpoints.parse_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "amazonaws.com",  # a bare suffix is no endpoint
        "api.aws",
        "amazonaws.com.evil.com",
        "s3.amazonaws.com.evil.com",
        "evilamazonaws.com",
        "s3.evilamazonaws.com",
        "amazonaws.co",
        "example.com",
        "localhost",
        "localhost:8000",  # named in endpoints.json for DynamoDB Local; not AWS
        "127.0.0.1",
        "169.254.169.254",
        "sts.amazonaws.com-evil.net",
        "on.aws.evil.com",
        "",
        "s3..amazonaws.com",
    ],
)
def test_lookalikes_are_not_aws(host):
    assert not endpoints.is_aws_host(host)
    assert endpoints.parse_host(host) is None


def test_every_partition_suffix_is_recognised():
    """Every dnsSuffix and dualStackDnsSuffix in partitions.json, not a hand list."""
    from botocore.loaders import create_loader

    for partition in create_loader().load_data("partitions")["partitions"]:
        outputs = partition["outputs"]
        region = next(r for r in partition["regions"] if not r.endswith("-global"))
        for suffix in (outputs["dnsSuffix"], outputs["dualStackDnsSuffix"]):
            host = f"sts.{region}.{suffix}"
            assert endpoints.is_aws_host(host), host
            parsed = endpoints.parse_host(host)
            assert parsed.partition == partition["id"], host
            assert parsed.region == region
            assert parsed.endpoint_prefix == "sts"


@pytest.mark.parametrize(
    "partition, region",
    [
        ("aws", "us-east-1"),
        ("aws-cn", "cn-northwest-1"),
        ("aws-us-gov", "us-gov-west-1"),
        ("aws-iso", "us-iso-east-1"),
        ("aws-iso-b", "us-isob-east-1"),
        (None, "us-east-1"),
        ("no-such-partition", "us-east-1"),
    ],
)
def test_default_region(partition, region):
    assert endpoints.default_region(partition) == region


def test_partition_of():
    assert endpoints.partition_of("eu-west-1") == "aws"
    assert endpoints.partition_of("cn-north-1") == "aws-cn"
    assert endpoints.partition_of("us-gov-east-1") == "aws-us-gov"
    assert endpoints.partition_of("moon-base-1") is None


def test_a_host_is_parsed_once_however_often_it_is_asked_about():
    """Every stage asks about the same few hosts on every call: the answer is computed once per host."""
    endpoints.preload()
    endpoints.is_aws_host.cache_clear()
    endpoints.parse_host.cache_clear()
    hosts = ["dynamodb.us-east-1.amazonaws.com", "bucket.s3.amazonaws.com", "www.example.com"] * 1000
    answers = {host: endpoints.is_aws_host(host) for host in hosts}
    for host in hosts:
        endpoints.parse_host(host)
    assert answers == {"dynamodb.us-east-1.amazonaws.com": True, "bucket.s3.amazonaws.com": True,
                       "www.example.com": False}
    assert endpoints.is_aws_host.cache_info().misses == 3
    assert endpoints.parse_host.cache_info().misses == 3