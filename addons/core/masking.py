"""Masking: secrets never reach the record, and reach the agent only where policy allows.

``Masker`` works on one call's parsed bodies, for every protocol botocore speaks: JSON (json,
rest-json), XML (rest-xml, query, ec2; read with defusedxml, so DTDs and entity expansion are
refused), form-encoded query and ec2 requests, and CBOR (smithy-rpc-v2-cbor, and json calls sent as
``application/x-amz-cbor-1.1``, whose timestamps are epoch milliseconds). Headers are masked too.
Event-stream and streamed bodies are not parsed, and S3 object data is not kept unless policy opts
in; the record says so (``note``).

What is masked:

1. **Sensitive members**: every member whose shape carries botocore's ``sensitive`` trait, in the
   operation's input and output shapes, found through structures, lists and maps. Worked out per
   operation on first use, from the service's model, and cached.
2. **Curated targets** (``CURATED``): members the models do not mark, or that must stay masked if a
   model drops the trait, each with its reason.
3. **Policy paths**: the ``mask_for_agent`` paths of the call's Decision (``Parameter.Value``,
   ``Items[].ssn``; DESIGN.md and policies/README.md). They mask the agent's copy, and the record's
   copy of both the request and the response.
4. **Detectors** (``core.detectors``) over every other string of the record's copy: private keys,
   JWTs, session tokens, secret access keys, passwords in URLs and connection strings; and a whole
   value whose name says it is a secret (``named-secret``): the member's name, a map entry's key,
   or the name member of a ``{Name, Value}`` pair (an environment variable ``DB_PASSWORD``, a job
   argument ``--db_password``, a member ``ClientSecret`` no model marks). The walk hands each
   string its name; a body in which no name can say so (``detectors.names_secret``) is not walked
   for them.

In the record a masked value becomes a marker carrying a keyed fingerprint,
``agentgate:masked:hmac-<12 hex>`` (HMAC-SHA256 with the fingerprint key ``agentgate init`` writes
to ``keys/fingerprint.key``): the same secret always gives the same marker, so an assessor sees it
was read twice without seeing it. In the agent's copy it becomes AGENT_MARKER, the same for every
value (a fingerprint would tell the agent which secrets are equal, and let one that can write a
value and read it back test guesses). Blob members get the marker base64-encoded, so they stay
valid base64; numbers, booleans and timestamps keep their type (``0``, ``false``, the epoch); a
DynamoDB attribute value becomes a string attribute ``{"S": marker}``.

The record's copy is always masked (1-4). The agent's copy is masked only at the policy paths, and
then only rewritten when something was masked: the caller fixes Content-Length, and
``checksum_headers`` says how to fix DynamoDB's ``x-amz-crc32`` and drop checksums that no longer
match. Every masked member is listed (part, member path, what masked it, how many values), never
its value; map keys other than those a policy names are written ``*``.

Nothing here raises into the caller: a body that cannot be masked is not kept (``note`` says why),
and the agent's copy is left as it was.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import datetime
import functools
import hmac
import json
import math
import re
import struct
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus

import brotli

from . import detectors, templates
from .records import REDACTED_HEADERS

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the zstd mitmproxy uses, before Python had one
    from backports import zstd

MARKER_PREFIX = "agentgate:masked:hmac-"
MARKER_RE = re.compile(r"agentgate:masked:hmac-[0-9a-f]{12}")
# What the agent's copy gets instead of a masked value: the same for every value, so that it tells
# the agent nothing (a fingerprint would say that two secrets are equal, and, for an agent that can
# write a value it chooses and read it back masked, whether a guess is the secret).
# (26 bytes: no key length, so that a masked data key, as a blob, cannot pass for one and encrypt
# with a value everyone knows)
AGENT_MARKER = "agentgate:masked-for-agent"
EPOCH_TEXT = "1970-01-01T00:00:00Z"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
PARSE_LIMIT = 8 << 20  # bytes; larger bodies are not parsed, and not kept
OBJECT_CAP = 1 << 20  # bytes of S3 object text masked when policy opts in
# How deep bodies and parameters are walked. DynamoDB nests attribute values 32 levels deep, two JSON
# levels each; anything deeper cannot be walked (TooDeep), so it is not kept rather than kept unmasked.
MAX_DEPTH = 128


def inflate(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """``raw`` with its Content-Encoding undone, to ``limit`` + 1 bytes at most (gzip, deflate, br and
    zstd alike; a few bytes can inflate to gigabytes, and no caller needs more than its limit to know
    that a body is over it). A body that is not what its Content-Encoding says, or whose encoding is
    unknown (or several), comes back as sent."""
    encoding = content_encoding.lower().strip()
    if encoding in ("", "identity") or not raw:
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        from .classifier import inflate_members

        for wbits in ((47,) if encoding != "deflate" else (15, -15)):  # deflate: zlib-wrapped, or raw
            try:  # every member of a gzip body, as services (and the classifier) read them
                return inflate_members(raw, wbits, limit + 1)[0]
            except zlib.error:
                continue
        return raw
    if encoding == "br":
        try:
            return brotli.Decompressor().process(raw, output_buffer_limit=limit + 1)
        except brotli.error:
            return raw
    if encoding == "zstd":
        try:
            return zstd.ZstdDecompressor().decompress(raw, max_length=limit + 1)
        except zstd.ZstdError:
            return raw
    return raw


class Unmaskable(Exception):
    """A body or parameter tree that cannot be masked in place: it is not kept (never kept unmasked)."""


class TooDeep(Unmaskable):
    """Nested deeper than MAX_DEPTH levels."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")

# ---------------------------------------------------------------------------------------------
# Curated targets: on top of the models' sensitive traits, each with its reason


@dataclasses.dataclass(frozen=True)
class Target:
    service: str
    operations: tuple[str, ...]
    direction: str  # "input" (the request) or "output" (the response)
    paths: tuple[str, ...]
    reason: str
    when: tuple[str, str] | None = None  # (sibling member, value): only when the sibling has it
    base64: bool = False  # a string member holding base64: masked as a base64 marker
    # the secret the operation is called for (a KMS plaintext): masked for the agent only where
    # policy says, not as an echo of a write (``Masker.curated_outputs``)
    asked_for: bool = False


_CREDENTIALS = ("Credentials.SecretAccessKey", "Credentials.SessionToken")
_MASTER_PASSWORD_OPS = ("CreateDBInstance", "CreateDBCluster", "ModifyDBInstance", "ModifyDBCluster",
                        "RestoreDBInstanceFromS3", "RestoreDBClusterFromS3")

_USER_DATA_MARKED = "user data carries bootstrap secrets (the model marks it; kept valid base64)"
_LAUNCH_CONFIGURATION_USER_DATA = "a launch configuration's user data carries bootstrap secrets; the model does not mark it"
# reasons that several curated targets give
_CONTAINER_ENV = "container environment variables hold credentials and connection strings"
_SAGEMAKER_CONTAINER_ENV = "container environments hold credentials"
_SAGEMAKER_JOB_ENV = "job environments hold credentials"
_BUILD_ENV = "build environment variables"
_BGP_KEY = "a BGP MD5 key"
_BUILD_ENV_CREDENTIALS = "build environment variables hold credentials"
_FUNCTION_ENV = "function environment variables hold credentials and connection strings"
_GIT_TOKEN = "a Git provider token"
_JOB_ARGUMENTS = "job arguments hold credentials (--db-password ...); the model does not mark them"
_EMR_PROPERTIES = "configuration properties hold credentials (exported environments, metastore passwords)"
# EMR configurations nest one level (spark-env's export): both levels' properties, below a prefix
_EMR_CONFIGURATIONS = ("Configurations[].Properties", "Configurations[].Configurations[].Properties")
_ENVIRONMENT = "environment variables hold credentials and connection strings; the model does not mark them"
_PENDING_PASSWORD = "a master password being changed (RDS's model marks it; this one does not)"
_OIDC_CLIENT_SECRET = "a load balancer OIDC action's client secret; the model does not mark it"
# Elastic Beanstalk's environment properties: the one namespace whose option values are the application's
_BEANSTALK_ENVIRONMENT = ("Namespace", "aws:elasticbeanstalk:application:environment")
# Glue connection properties that hold a password or a key's password (the rest: hosts, ports, URLs)
_GLUE_CONNECTION_PASSWORDS = tuple(
    "ConnectionInput.ConnectionProperties." + key for key in (
        "PASSWORD", "ENCRYPTED_PASSWORD", "KAFKA_CLIENT_KEYSTORE_PASSWORD", "KAFKA_CLIENT_KEY_PASSWORD",
        "ENCRYPTED_KAFKA_CLIENT_KEYSTORE_PASSWORD", "ENCRYPTED_KAFKA_CLIENT_KEY_PASSWORD", "KAFKA_SASL_PLAIN_PASSWORD",
        "ENCRYPTED_KAFKA_SASL_PLAIN_PASSWORD", "KAFKA_SASL_SCRAM_PASSWORD", "ENCRYPTED_KAFKA_SASL_SCRAM_PASSWORD"))

CURATED: tuple[Target, ...] = (
    Target("ssm", ("GetParameter",), "output", ("Parameter.Value",),
           "a SecureString parameter's value is a decrypted secret", ("Type", "SecureString")),
    Target("ssm", ("GetParameters", "GetParametersByPath", "GetParameterHistory"), "output", ("Parameters[].Value",),
           "SecureString parameters' values are decrypted secrets", ("Type", "SecureString")),
    Target("ssm", ("PutParameter",), "input", ("Value",),
           "a SecureString parameter's value is a secret", ("Type", "SecureString")),
    Target("lambda", ("GetFunction",), "output", ("Configuration.Environment.Variables",),
           _FUNCTION_ENV),
    Target("lambda", ("GetFunctionConfiguration", "CreateFunction", "UpdateFunctionConfiguration", "UpdateFunctionCode",
                      "PublishVersion"),
           "output", ("Environment.Variables",),
           _FUNCTION_ENV),
    Target("lambda", ("Invoke",), "output", ("LogResult",),
           "the last 4 KB of the function's log, base64 (X-Amz-Log-Result): the detectors cannot read it, and logs "
           "print secrets", base64=True, asked_for=True),
    Target("lambda", ("ListFunctions",), "output", ("Functions[].Environment.Variables",),
           _FUNCTION_ENV),
    Target("lambda", ("ListVersionsByFunction",), "output", ("Versions[].Environment.Variables",),
           _FUNCTION_ENV),
    Target("lambda", ("CreateFunction", "UpdateFunctionConfiguration"), "input", ("Environment.Variables",),
           _FUNCTION_ENV),
    Target("ec2", ("DescribeInstanceAttribute",), "output", ("UserData.Value",),
           "user data carries bootstrap secrets; the model does not mark this copy sensitive", base64=True),
    Target("ec2", ("DescribeLaunchTemplateVersions",),
           "output", ("LaunchTemplateVersions[].LaunchTemplateData.UserData",),
           _USER_DATA_MARKED, base64=True),
    Target("ec2", ("GetLaunchTemplateData",), "output", ("LaunchTemplateData.UserData",),
           _USER_DATA_MARKED, base64=True),
    Target("ec2", ("DescribeSpotInstanceRequests",), "output", ("SpotInstanceRequests[].LaunchSpecification.UserData",),
           _USER_DATA_MARKED, base64=True),
    Target("ec2", ("DescribeSpotFleetRequests",), "output",
           ("SpotFleetRequestConfigs[].SpotFleetRequestConfig.LaunchSpecifications[].UserData",),
           _USER_DATA_MARKED, base64=True),
    Target("autoscaling", ("DescribeLaunchConfigurations",), "output", ("LaunchConfigurations[].UserData",),
           _LAUNCH_CONFIGURATION_USER_DATA, base64=True),
    Target("autoscaling", ("CreateLaunchConfiguration",), "input", ("UserData",),
           _LAUNCH_CONFIGURATION_USER_DATA, base64=True),
    Target("ec2", ("ModifyInstanceAttribute",), "input", ("UserData.Value",),
           "user data carries bootstrap secrets; the model does not mark this copy sensitive", base64=True),
    Target("ec2", ("GetPasswordData",), "output", ("PasswordData",), "an instance's encrypted Administrator password",
           base64=True),
    Target("ec2", ("CreateKeyPair",), "output", ("KeyMaterial",), "the key pair's private key"),
    Target("ecr", ("GetAuthorizationToken",), "output", ("authorizationData[].authorizationToken",),
           "a registry login token (base64 user:password)", base64=True),
    Target("ecr-public", ("GetAuthorizationToken",), "output", ("authorizationData.authorizationToken",),
           "a registry login token", base64=True),
    Target("codeartifact", ("GetAuthorizationToken",), "output", ("authorizationToken",), "a repository login token"),
    Target("iam", ("CreateAccessKey",), "output", ("AccessKey.SecretAccessKey",), "a long-term secret access key"),
    Target("iam", ("CreateServiceSpecificCredential", "ResetServiceSpecificCredential"), "output",
           ("ServiceSpecificCredential.ServicePassword", "ServiceSpecificCredential.ServiceCredentialSecret"),
           "a service password (CodeCommit, Keyspaces, Bedrock)"),
    Target("iam", ("CreateLoginProfile", "UpdateLoginProfile"), "input", ("Password",), "a console password"),
    Target("iam", ("ChangePassword",), "input", ("OldPassword", "NewPassword"), "console passwords"),
    Target("sts", ("AssumeRole", "AssumeRoleWithSAML", "AssumeRoleWithWebIdentity", "AssumeRoot", "GetSessionToken",
                   "GetFederationToken"), "output", _CREDENTIALS, "temporary AWS credentials"),
    Target("sts", ("AssumeRoleWithWebIdentity",), "input", ("WebIdentityToken",), "an identity provider's token"),
    Target("sts", ("AssumeRoleWithSAML",), "input", ("SAMLAssertion",), "a signed SAML assertion"),
    Target("sso", ("GetRoleCredentials",),
           "output", ("roleCredentials.secretAccessKey", "roleCredentials.sessionToken"),
           "temporary AWS credentials from IAM Identity Center"),
    Target("sso", ("GetRoleCredentials", "ListAccounts", "ListAccountRoles", "Logout"), "input", ("accessToken",),
           "the portal access token"),
    Target("sso-oidc", ("CreateToken", "CreateTokenWithIAM"), "output", ("accessToken", "refreshToken", "idToken"),
           "OIDC tokens"),
    # Amazon Connect's chat participants authenticate with bearer tokens the models do not mark: a
    # participant token (X-Amz-Bearer on CreateParticipantConnection) buys a connection token, which
    # then rides in X-Amz-Bearer on every participant call; whoever holds one speaks as the participant
    Target("connectparticipant", ("CreateParticipantConnection",), "input", ("ParticipantToken",),
           "a chat participant's bearer token"),
    Target("connectparticipant", ("CancelParticipantAuthentication", "CompleteAttachmentUpload", "DescribeView",
                                  "DisconnectParticipant", "GetAttachment", "GetAuthenticationUrl", "GetTranscript",
                                  "SendEvent", "SendMessage", "StartAttachmentUpload"), "input", ("ConnectionToken",),
           "a chat participant's connection token, a bearer credential"),
    Target("connectparticipant", ("CreateParticipantConnection",), "output", ("ConnectionCredentials.ConnectionToken",),
           "a chat participant's connection token, a bearer credential"),
    Target("connect", ("StartChatContact",), "output", ("ParticipantToken", "ConnectionCredentials.ConnectionToken"),
           "a chat participant's bearer tokens"),
    Target("connect", ("StartWebRTCContact",), "output", ("ParticipantToken",), "a chat participant's bearer token"),
    Target("connect", ("CreateParticipant",), "output", ("ParticipantCredentials.ParticipantToken",),
           "a chat participant's bearer token"),
    Target("cognito-identity", ("GetCredentialsForIdentity",), "output",
           ("Credentials.SecretKey", "Credentials.SessionToken"), "temporary AWS credentials from Cognito"),
    Target("cognito-identity", ("GetOpenIdToken", "GetOpenIdTokenForDeveloperIdentity"), "output", ("Token",),
           "an OpenID token that can be traded for AWS credentials"),
    Target("cognito-idp", ("InitiateAuth", "AdminInitiateAuth", "RespondToAuthChallenge",
                           "AdminRespondToAuthChallenge"), "output",
           ("AuthenticationResult.AccessToken", "AuthenticationResult.IdToken", "AuthenticationResult.RefreshToken"),
           "user pool tokens"),
    Target("kms", ("Decrypt", "GenerateDataKey", "GenerateRandom"), "output", ("Plaintext",), "plaintext key material",
           asked_for=True),
    Target("kms", ("GenerateDataKeyPair",), "output", ("PrivateKeyPlaintext",), "a plaintext private key",
           asked_for=True),
    Target("kms", ("Encrypt",), "input", ("Plaintext",), "the plaintext being encrypted"),
    Target("secretsmanager", ("GetSecretValue",), "output", ("SecretString", "SecretBinary"), "the secret's value"),
    Target("secretsmanager", ("BatchGetSecretValue",), "output",
           ("SecretValues[].SecretString", "SecretValues[].SecretBinary"), "the secrets' values"),
    Target("secretsmanager", ("CreateSecret", "PutSecretValue", "UpdateSecret"), "input",
           ("SecretString", "SecretBinary"), "the secret's value"),
    Target("secretsmanager", ("GetRandomPassword",), "output", ("RandomPassword",), "a generated password"),
    Target("rds", _MASTER_PASSWORD_OPS, "input", ("MasterUserPassword",), "a database master password"),
    Target("docdb", ("CreateDBCluster", "ModifyDBCluster"),
           "input", ("MasterUserPassword",), "a database master password"),
    Target("neptune", ("CreateDBCluster", "ModifyDBCluster"),
           "input", ("MasterUserPassword",), "a database master password"),
    Target("redshift", ("CreateCluster", "ModifyCluster"),
           "input", ("MasterUserPassword",), "a database master password"),
    Target("redshift", ("GetClusterCredentials", "GetClusterCredentialsWithIAM"), "output", ("DbPassword",),
           "a temporary database password"),
    Target("redshift-serverless", ("GetCredentials",), "output", ("dbPassword",), "a temporary database password"),
    Target("redshift-serverless", ("CreateNamespace", "UpdateNamespace"), "input", ("adminUserPassword",),
           "a database admin password"),
    Target("lightsail", ("GetRelationalDatabaseMasterUserPassword",), "output", ("masterUserPassword",),
           "a database master password"),
    Target("lightsail", ("CreateRelationalDatabase", "UpdateRelationalDatabase"), "input", ("masterUserPassword",),
           "a database master password"),
    Target("lightsail", ("DownloadDefaultKeyPair", "CreateKeyPair"), "output", ("privateKeyBase64",), "a private key",
           base64=True),
    Target("lightsail", ("GetInstanceAccessDetails",), "output", ("accessDetails.password", "accessDetails.privateKey"),
           "an instance's password and private key"),
    Target("elasticache", ("CreateReplicationGroup", "CreateCacheCluster", "ModifyReplicationGroup",
                           "ModifyCacheCluster"), "input", ("AuthToken",), "a Redis AUTH token"),
    Target("glue", ("GetConnection",), "output", ("Connection.ConnectionProperties",),
           "connection properties hold database passwords"),
    Target("glue", ("GetConnections",), "output", ("ConnectionList[].ConnectionProperties",),
           "connection properties hold database passwords"),
    # a template's NoEcho parameter as ValidateTemplate and GetTemplateSummary describe it: its default
    # is the secret the template holds (the template itself: templates.py), as are the values allowed
    Target("cloudformation", ("ValidateTemplate",), "output", ("Parameters[].DefaultValue",),
           "a NoEcho parameter's default (AWS shows the parameter's value as ****)", ("NoEcho", "true")),
    Target("cloudformation", ("GetTemplateSummary",), "output",
           ("Parameters[].DefaultValue", "Parameters[].ParameterConstraints"),
           "a NoEcho parameter's default and allowed values (AWS shows the parameter's value as ****)",
           ("NoEcho", "true")),
    # secrets for other systems that reads (and writes) return: keys, tokens, passwords, environments
    Target("apigateway", ("GetApiKey", "CreateApiKey", "UpdateApiKey", "GetUsagePlanKey", "CreateUsagePlanKey"),
           "output", ("value",),
           "an API key's value (GetApiKey with includeValue; a usage plan key's value is the API key's)"),
    Target("apigateway", ("GetApiKeys", "GetUsagePlanKeys"), "output", ("items[].value",),
           "API key values"),
    Target("apigateway", ("CreateApiKey",), "input", ("value",),
           "an API key's value"),
    Target("cognito-idp", ("DescribeIdentityProvider", "GetIdentityProviderByIdentifier", "CreateIdentityProvider",
                           "UpdateIdentityProvider"),
           "output", ("IdentityProvider.ProviderDetails.client_secret", "IdentityProvider.ProviderDetails.private_key"),
           "an identity provider's OAuth client secret (OIDC, Google, Facebook, Amazon) or Sign in with Apple private key"),
    Target("cognito-idp", ("CreateIdentityProvider", "UpdateIdentityProvider"),
           "input", ("ProviderDetails.client_secret", "ProviderDetails.private_key"),
           "an identity provider's client secret or private key"),
    Target("cognito-idp", ("ListUserPoolClientSecrets",), "output", ("ClientSecrets[].ClientSecretValue",),
           "app client secrets (the model marks them; AWS documents that List leaves them out)"),
    Target("cognito-idp", ("AddUserPoolClientSecret",), "output", ("ClientSecretDescriptor.ClientSecretValue",),
           "a new app client secret"),
    Target("ec2", ("DescribeVpnConnections",),
           "output", ("VpnConnections[].CustomerGatewayConfiguration",
                      "VpnConnections[].Options.TunnelOptions[].PreSharedKey"),
           "IPsec pre-shared keys (in the tunnel options and the customer gateway configuration); the model marks them"),
    Target("ec2", ("CreateVpnConnection", "ModifyVpnConnection", "ModifyVpnConnectionOptions",
                   "ModifyVpnTunnelCertificate", "ModifyVpnTunnelOptions"),
           "output", ("VpnConnection.CustomerGatewayConfiguration",
                      "VpnConnection.Options.TunnelOptions[].PreSharedKey"),
           "IPsec pre-shared keys (in the tunnel options and the customer gateway configuration); the model marks them"),
    Target("ec2", ("GetVpnConnectionDeviceSampleConfiguration",), "output", ("VpnConnectionDeviceSampleConfiguration",),
           "a device configuration with the tunnels' pre-shared keys in it"),
    Target("ec2", ("DescribeVerifiedAccessTrustProviders",),
           "output", ("VerifiedAccessTrustProviders[].OidcOptions.ClientSecret",),
           "an OIDC trust provider's client secret"),
    Target("ec2", ("CreateVerifiedAccessTrustProvider", "ModifyVerifiedAccessTrustProvider",
                   "DeleteVerifiedAccessTrustProvider", "AttachVerifiedAccessTrustProvider",
                   "DetachVerifiedAccessTrustProvider"),
           "output", ("VerifiedAccessTrustProvider.OidcOptions.ClientSecret",),
           "an OIDC trust provider's client secret"),
    Target("ec2", ("ExportVerifiedAccessInstanceClientConfiguration",), "output", ("UserTrustProvider.ClientSecret",),
           "the user trust provider's OIDC client secret"),
    Target("ecs", ("DescribeTaskDefinition", "RegisterTaskDefinition", "DeregisterTaskDefinition"),
           "output", ("taskDefinition.containerDefinitions[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("DeleteTaskDefinitions",),
           "output", ("taskDefinitions[].containerDefinitions[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("DescribeDaemonTaskDefinition",),
           "output", ("daemonTaskDefinition.containerDefinitions[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("DescribeTasks", "RunTask", "StartTask"),
           "output", ("tasks[].overrides.containerOverrides[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("StopTask",), "output", ("task.overrides.containerOverrides[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("DescribeExpressGatewayService", "CreateExpressGatewayService", "DeleteExpressGatewayService"),
           "output", ("service.activeConfigurations[].primaryContainer.environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("UpdateExpressGatewayService",),
           "output", ("service.targetConfiguration.primaryContainer.environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("RegisterTaskDefinition",), "input", ("containerDefinitions[].environment[].value",),
           _CONTAINER_ENV),
    Target("ecs", ("RunTask", "StartTask"), "input", ("overrides.containerOverrides[].environment[].value",),
           _CONTAINER_ENV),
    Target("glue", ("GetSessionEndpoint",), "output", ("SparkConnect.AuthToken",),
           "a Spark Connect session's auth token"),
    Target("glue", ("GetJob",), "output", ("Job.SourceControlDetails.AuthToken",),
           "a Git provider token; the model does not mark it"),
    Target("glue", ("GetJobs", "BatchGetJobs"), "output", ("Jobs[].SourceControlDetails.AuthToken",),
           "Git provider tokens; the model does not mark them"),
    Target("glue", ("CreateJob",), "input", ("SourceControlDetails.AuthToken",),
           _GIT_TOKEN),
    Target("glue", ("UpdateJob",), "input", ("JobUpdate.SourceControlDetails.AuthToken",),
           _GIT_TOKEN),
    Target("glue", ("UpdateJobFromSourceControl", "UpdateSourceControlFromJob"), "input", ("AuthToken",),
           _GIT_TOKEN),
    Target("ivs", ("GetStreamKey", "CreateStreamKey"), "output", ("streamKey.value",),
           "a stream key: anyone holding it can broadcast"),
    Target("ivs", ("BatchGetStreamKey",), "output", ("streamKeys[].value",),
           "stream keys"),
    Target("ivs", ("CreateChannel",), "output", ("streamKey.value", "channel.srt.passphrase"),
           "a stream key and the SRT passphrase"),
    Target("ivs", ("GetChannel", "UpdateChannel"), "output", ("channel.srt.passphrase",),
           "a channel's SRT ingest passphrase"),
    Target("ivs", ("BatchGetChannel",), "output", ("channels[].srt.passphrase",),
           "channels' SRT ingest passphrases"),
    Target("ivs", ("GetStreamSession",), "output", ("streamSession.channel.srt.passphrase",),
           "a channel's SRT ingest passphrase"),
    Target("ivs-realtime", ("GetIngestConfiguration", "CreateIngestConfiguration", "UpdateIngestConfiguration"),
           "output", ("ingestConfiguration.streamKey", "ingestConfiguration.redundantIngestCredentials[].streamKey"),
           "a stage ingest stream key"),
    Target("storagegateway", ("DescribeChapCredentials",),
           "output", ("ChapCredentials[].SecretToAuthenticateInitiator",
            "ChapCredentials[].SecretToAuthenticateTarget"),
           "iSCSI CHAP secrets"),
    Target("ds", ("DescribeDirectories",),
           "output", ("DirectoryDescriptions[].RadiusSettings.SharedSecret",
            "DirectoryDescriptions[].OwnerDirectoryDescription.RadiusSettings.SharedSecret"),
           "the RADIUS server's shared secret"),
    Target("directconnect", ("DescribeVirtualInterfaces",),
           "output", ("virtualInterfaces[].authKey", "virtualInterfaces[].bgpPeers[].authKey"),
           "BGP MD5 authentication keys; the model does not mark them"),
    Target("directconnect", ("CreatePrivateVirtualInterface", "CreatePublicVirtualInterface",
                             "AllocatePrivateVirtualInterface", "AllocatePublicVirtualInterface",
                             "AssociateVirtualInterface", "UpdateVirtualInterfaceAttributes"),
           "output", ("authKey", "bgpPeers[].authKey"), "BGP MD5 authentication keys"),
    Target("directconnect", ("CreateTransitVirtualInterface", "AllocateTransitVirtualInterface", "CreateBGPPeer",
                             "DeleteBGPPeer"),
           "output", ("virtualInterface.authKey", "virtualInterface.bgpPeers[].authKey"),
           "BGP MD5 authentication keys"),
    Target("directconnect", ("CreatePrivateVirtualInterface",), "input", ("newPrivateVirtualInterface.authKey",),
           _BGP_KEY),
    Target("directconnect", ("CreatePublicVirtualInterface",), "input", ("newPublicVirtualInterface.authKey",),
           _BGP_KEY),
    Target("directconnect", ("CreateTransitVirtualInterface",), "input", ("newTransitVirtualInterface.authKey",),
           _BGP_KEY),
    Target("directconnect", ("AllocatePrivateVirtualInterface",),
           "input", ("newPrivateVirtualInterfaceAllocation.authKey",),
           _BGP_KEY),
    Target("directconnect", ("AllocatePublicVirtualInterface",),
           "input", ("newPublicVirtualInterfaceAllocation.authKey",),
           _BGP_KEY),
    Target("directconnect", ("AllocateTransitVirtualInterface",),
           "input", ("newTransitVirtualInterfaceAllocation.authKey",),
           _BGP_KEY),
    Target("directconnect", ("CreateBGPPeer",), "input", ("newBGPPeer.authKey",),
           _BGP_KEY),
    Target("codepipeline", ("ListWebhooks",),
           "output", ("webhooks[].definition.authenticationConfiguration.SecretToken",),
           "webhook secret tokens (GITHUB_HMAC); the model does not mark them"),
    Target("codepipeline", ("PutWebhook",), "output", ("webhook.definition.authenticationConfiguration.SecretToken",),
           "a webhook secret token"),
    Target("codepipeline", ("PutWebhook",), "input", ("webhook.authenticationConfiguration.SecretToken",),
           "a webhook secret token"),
    Target("amplify", ("GetApp", "CreateApp", "UpdateApp", "DeleteApp"),
           "output", ("app.basicAuthCredentials", "app.autoBranchCreationConfig.basicAuthCredentials"),
           "basic auth credentials (base64 user:password)", base64=True),
    Target("amplify", ("ListApps",),
           "output", ("apps[].basicAuthCredentials", "apps[].autoBranchCreationConfig.basicAuthCredentials"),
           "basic auth credentials (base64 user:password)", base64=True),
    Target("amplify", ("GetBranch", "CreateBranch", "UpdateBranch", "DeleteBranch"),
           "output", ("branch.basicAuthCredentials",),
           "basic auth credentials (base64 user:password)", base64=True),
    Target("amplify", ("ListBranches",), "output", ("branches[].basicAuthCredentials",),
           "basic auth credentials (base64 user:password)", base64=True),
    Target("amplify", ("GetApp", "CreateApp", "UpdateApp", "DeleteApp"),
           "output", ("app.environmentVariables", "app.autoBranchCreationConfig.environmentVariables"),
           _BUILD_ENV_CREDENTIALS),
    Target("amplify", ("ListApps",),
           "output", ("apps[].environmentVariables", "apps[].autoBranchCreationConfig.environmentVariables"),
           _BUILD_ENV_CREDENTIALS),
    Target("amplify", ("GetBranch", "CreateBranch", "UpdateBranch", "DeleteBranch"),
           "output", ("branch.environmentVariables",),
           _BUILD_ENV_CREDENTIALS),
    Target("amplify", ("ListBranches",), "output", ("branches[].environmentVariables",),
           _BUILD_ENV_CREDENTIALS),
    Target("amplify", ("CreateApp", "UpdateApp"),
           "input", ("environmentVariables", "autoBranchCreationConfig.environmentVariables"),
           _BUILD_ENV_CREDENTIALS),
    Target("amplify", ("CreateBranch", "UpdateBranch"), "input", ("environmentVariables",),
           _BUILD_ENV_CREDENTIALS),
    Target("gamelift", ("GetComputeAuthToken",), "output", ("AuthToken",),
           "a game server's auth token for Amazon GameLift; the model does not mark it"),
    Target("gamelift", ("GetPlayerConnectionDetails",), "output", ("PlayerConnectionDetails[].PlayerGatewayToken",),
           "a player's token for GameLift's player gateway; the model does not mark it"),
    Target("kinesis-video-signaling", ("GetIceServerConfig",), "output", ("IceServerList[].Password",),
           "a TURN server's password for a signaling channel; the model does not mark it"),
    Target("mediapackage", ("DescribeChannel", "CreateChannel", "UpdateChannel", "ConfigureLogs",
                            "RotateChannelCredentials", "RotateIngestEndpointCredentials"),
           "output", ("HlsIngest.IngestEndpoints[].Password",), "HLS ingest passwords"),
    Target("mediapackage", ("ListChannels",), "output", ("Channels[].HlsIngest.IngestEndpoints[].Password",),
           "HLS ingest passwords"),
    Target("codebuild", ("BatchGetProjects",),
           "output", ("projects[].environment.environmentVariables[].value", "projects[].webhook.secret"),
           "build environment variables (PLAINTEXT ones hold credentials) and the webhook secret"),
    Target("codebuild", ("CreateProject", "UpdateProject"),
           "output", ("project.environment.environmentVariables[].value", "project.webhook.secret"),
           "build environment variables and the webhook secret"),
    Target("codebuild", ("CreateWebhook", "UpdateWebhook"), "output", ("webhook.secret",),
           "a webhook secret"),
    Target("codebuild", ("BatchGetBuilds",), "output", ("builds[].environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("StartBuild", "StopBuild", "RetryBuild"),
           "output", ("build.environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("BatchGetBuildBatches",),
           "output", ("buildBatches[].environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("StartBuildBatch", "StopBuildBatch", "RetryBuildBatch"),
           "output", ("buildBatch.environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("BatchGetSandboxes",), "output", ("sandboxes[].environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("StartSandbox", "StopSandbox"),
           "output", ("sandbox.environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("codebuild", ("CreateProject", "UpdateProject"), "input", ("environment.environmentVariables[].value",),
           _BUILD_ENV),
    Target("batch", ("RegisterJobDefinition",), "input",
           ("containerProperties.environment[].value", "eksProperties.podProperties.containers[].env[].value",
            "ecsProperties.taskProperties[].containers[].environment[].value",
            "nodeProperties.nodeRangeProperties[].container.environment[].value"),
           _CONTAINER_ENV),
    Target("batch", ("SubmitJob",), "input", ("containerOverrides.environment[].value",),
           _CONTAINER_ENV),
    Target("apprunner", ("CreateService", "UpdateService"), "input",
           ("SourceConfiguration.ImageRepository.ImageConfiguration.RuntimeEnvironmentVariables",
            "SourceConfiguration.CodeRepository.CodeConfiguration.CodeConfigurationValues.RuntimeEnvironmentVariables"),
           "runtime environment variables hold credentials and connection strings"),
    Target("sagemaker", ("CreateModel",), "input", ("PrimaryContainer.Environment", "Containers[].Environment"),
           "container environments hold credentials and connection strings"),
    Target("sagemaker", ("CreateTrainingJob", "CreateProcessingJob", "CreateTransformJob"), "input", ("Environment",),
           "job environments hold credentials and connection strings"),
    Target("codebuild", ("StartBuild", "StartBuildBatch"), "input", ("environmentVariablesOverride[].value",),
           _BUILD_ENV),
    Target("batch", ("DescribeJobDefinitions",),
           "output", ("jobDefinitions[].containerProperties.environment[].value",
                      "jobDefinitions[].nodeProperties.nodeRangeProperties[].container.environment[].value",
                      "jobDefinitions[].nodeProperties.nodeRangeProperties[].ecsProperties.taskProperties[].containers[].environment[].value",
                      "jobDefinitions[].nodeProperties.nodeRangeProperties[].eksProperties.podProperties.containers[].env[].value",
                      "jobDefinitions[].nodeProperties.nodeRangeProperties[].eksProperties.podProperties.initContainers[].env[].value",
                      "jobDefinitions[].ecsProperties.taskProperties[].containers[].environment[].value",
                      "jobDefinitions[].eksProperties.podProperties.containers[].env[].value",
                      "jobDefinitions[].eksProperties.podProperties.initContainers[].env[].value"), _CONTAINER_ENV),
    Target("batch", ("DescribeJobs",),
           "output", ("jobs[].container.environment[].value",
                      "jobs[].nodeProperties.nodeRangeProperties[].container.environment[].value",
                      "jobs[].nodeProperties.nodeRangeProperties[].ecsProperties.taskProperties[].containers[].environment[].value",
                      "jobs[].nodeProperties.nodeRangeProperties[].eksProperties.podProperties.containers[].env[].value",
                      "jobs[].nodeProperties.nodeRangeProperties[].eksProperties.podProperties.initContainers[].env[].value",
                      "jobs[].ecsProperties.taskProperties[].containers[].environment[].value",
                      "jobs[].eksProperties.podProperties.containers[].env[].value",
                      "jobs[].eksProperties.podProperties.initContainers[].env[].value"), _CONTAINER_ENV),
    Target("apprunner", ("DescribeService", "CreateService", "UpdateService", "DeleteService", "PauseService",
                         "ResumeService"),
           "output", ("Service.SourceConfiguration.CodeRepository.CodeConfiguration.CodeConfigurationValues.RuntimeEnvironmentVariables",
                      "Service.SourceConfiguration.ImageRepository.ImageConfiguration.RuntimeEnvironmentVariables"),
           "runtime environment variables hold credentials"),
    Target("sagemaker", ("DescribeModel",),
           "output", ("PrimaryContainer.Environment", "Containers[].Environment",
            "DeploymentRecommendation.RealTimeInferenceRecommendations[].Environment"),
           "container environments hold credentials (HF tokens, API keys)"),
    Target("sagemaker", ("DescribeTrainingJob", "DescribeProcessingJob", "DescribeTransformJob"),
           "output", ("Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeHyperParameterTuningJob",),
           "output", ("TrainingJobDefinition.Environment", "TrainingJobDefinitions[].Environment"),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeModelPackage", "DescribeAlgorithm"),
           "output", ("InferenceSpecification.Containers[].Environment",
            "ValidationSpecification.ValidationProfiles[].TransformJobDefinition.Environment"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("DescribeModelPackage",),
           "output", ("AdditionalInferenceSpecifications[].Containers[].Environment",),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("BatchDescribeModelPackage",),
           "output", ("ModelPackageSummaries.*.InferenceSpecification.Containers[].Environment",),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("DescribeInferenceComponent",),
           "output", ("Specification.Container.Environment", "Specifications[].Container.Environment"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("DescribeAutoMLJob", "DescribeAutoMLJobV2"),
           "output", ("BestCandidate.InferenceContainers[].Environment",
            "BestCandidate.InferenceContainerDefinitions.*[].Environment"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("ListCandidatesForAutoMLJob",),
           "output", ("Candidates[].InferenceContainers[].Environment",
            "Candidates[].InferenceContainerDefinitions.*[].Environment"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("DescribeDataQualityJobDefinition",), "output", ("DataQualityAppSpecification.Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeModelBiasJobDefinition",), "output", ("ModelBiasAppSpecification.Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeModelExplainabilityJobDefinition",),
           "output", ("ModelExplainabilityAppSpecification.Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeModelQualityJobDefinition",), "output", ("ModelQualityAppSpecification.Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeMonitoringSchedule",),
           "output", ("MonitoringScheduleConfig.MonitoringJobDefinition.Environment",),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeOptimizationJob",),
           "output", ("OptimizationEnvironment", "OptimizationConfigs[].ModelQuantizationConfig.OverrideEnvironment",
            "OptimizationConfigs[].ModelCompilationConfig.OverrideEnvironment",
            "OptimizationConfigs[].ModelShardingConfig.OverrideEnvironment"),
           _SAGEMAKER_JOB_ENV),
    Target("sagemaker", ("DescribeAIRecommendationJob",),
           "output", ("Recommendations[].DeploymentConfiguration.EnvironmentVariables",),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("DescribeAppImageConfig",),
           "output", ("JupyterLabAppImageConfig.ContainerConfig.ContainerEnvironmentVariables",
            "CodeEditorAppImageConfig.ContainerConfig.ContainerEnvironmentVariables"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("ListAppImageConfigs",),
           "output", ("AppImageConfigs[].JupyterLabAppImageConfig.ContainerConfig.ContainerEnvironmentVariables",
            "AppImageConfigs[].CodeEditorAppImageConfig.ContainerConfig.ContainerEnvironmentVariables"),
           _SAGEMAKER_CONTAINER_ENV),
    Target("sagemaker", ("Search",),
           "output", ("Results[].TrainingJob.Environment",
            "Results[].TrialComponent.SourceDetail.TrainingJob.Environment",
            "Results[].TrialComponent.SourceDetail.ProcessingJob.Environment",
            "Results[].TrialComponent.SourceDetail.TransformJob.Environment",
            "Results[].Endpoint.MonitoringSchedules[].MonitoringScheduleConfig.MonitoringJobDefinition.Environment",
            "Results[].ModelPackage.InferenceSpecification.Containers[].Environment",
            "Results[].ModelPackage.ValidationSpecification.ValidationProfiles[].TransformJobDefinition.Environment",
            "Results[].ModelPackage.AdditionalInferenceSpecifications[].Containers[].Environment",
            "Results[].HyperParameterTuningJob.TrainingJobDefinition.Environment",
            "Results[].HyperParameterTuningJob.TrainingJobDefinitions[].Environment",
            "Results[].Model.Model.PrimaryContainer.Environment", "Results[].Model.Model.Containers[].Environment",
            "Results[].Model.Model.DeploymentRecommendation.RealTimeInferenceRecommendations[].Environment",
            "Results[].Model.LastBatchTransformJob.Environment",
            "Results[].Model.MonitoringSchedules[].MonitoringScheduleConfig.MonitoringJobDefinition.Environment"),
           "environments of the jobs, models and schedules a search returns"),
    Target("amplifybackend", ("GetBackendAuth",),
           "output", ("ResourceConfig.UserPoolConfigs.OAuth.SocialProviderSettings.Facebook.ClientSecret",
            "ResourceConfig.UserPoolConfigs.OAuth.SocialProviderSettings.Google.ClientSecret",
            "ResourceConfig.UserPoolConfigs.OAuth.SocialProviderSettings.LoginWithAmazon.ClientSecret",
            "ResourceConfig.UserPoolConfigs.OAuth.SocialProviderSettings.SignInWithApple.PrivateKey"),
           "social sign-in client secrets and the Apple private key; the model does not mark them"),
    Target("cloudhsmv2", ("DescribeClusters",), "output", ("Clusters[].PreCoPassword",),
           "the cluster's default PRECO password"),
    Target("cloudhsmv2", ("CreateCluster", "DeleteCluster", "ModifyCluster"), "output", ("Cluster.PreCoPassword",),
           "the cluster's default PRECO password"),
    Target("dataexchange", ("GetAsset", "UpdateAsset"), "output", ("AssetDetails.ApiGatewayApiAsset.ApiKey",),
           "an API Gateway API key"),
    Target("dataexchange", ("ListRevisionAssets",), "output", ("Assets[].AssetDetails.ApiGatewayApiAsset.ApiKey",),
           "API Gateway API keys"),
    Target("dataexchange", ("GetJob", "CreateJob"), "output", ("Details.ImportAssetFromApiGatewayApi.ApiKey",),
           "an API Gateway API key"),
    Target("dataexchange", ("ListJobs",), "output", ("Jobs[].Details.ImportAssetFromApiGatewayApi.ApiKey",),
           "API Gateway API keys"),
    Target("emr", ("DescribeCluster",),
           "output", ("Cluster.KerberosAttributes.KdcAdminPassword",
            "Cluster.KerberosAttributes.CrossRealmTrustPrincipalPassword",
            "Cluster.KerberosAttributes.ADDomainJoinPassword"),
           "Kerberos and AD join passwords; the model does not mark them"),
    Target("firehose", ("DescribeDeliveryStream",),
           "output", ("DeliveryStreamDescription.Destinations[].SplunkDestinationDescription.HECToken",),
           "a Splunk HEC token; the model does not mark it"),
    Target("invoicing", ("GetProcurementPortalPreference",),
           "output", ("ProcurementPortalPreference.ProcurementPortalSharedSecret",
            "ProcurementPortalPreference.TestEnvPreference.ProcurementPortalSharedSecret"),
           "a procurement portal shared secret"),
    Target("iot", ("GetTopicRule",), "output", ("rule.actions[].salesforce.token", "rule.errorAction.salesforce.token"),
           "a Salesforce IoT input stream token"),
    Target("iotwireless", ("GetWirelessDevice",),
           "output", ("LoRaWAN.OtaaV1_1.AppKey", "LoRaWAN.OtaaV1_1.NwkKey", "LoRaWAN.OtaaV1_0_x.AppKey",
            "LoRaWAN.OtaaV1_0_x.GenAppKey", "LoRaWAN.AbpV1_1.SessionKeys.FNwkSIntKey",
            "LoRaWAN.AbpV1_1.SessionKeys.SNwkSIntKey", "LoRaWAN.AbpV1_1.SessionKeys.NwkSEncKey",
            "LoRaWAN.AbpV1_1.SessionKeys.AppSKey", "LoRaWAN.AbpV1_0_x.SessionKeys.NwkSKey",
            "LoRaWAN.AbpV1_0_x.SessionKeys.AppSKey"),
           "LoRaWAN root and session keys"),
    Target("pinpoint", ("GetGcmChannel", "UpdateGcmChannel", "DeleteGcmChannel"),
           "output", ("GCMChannelResponse.Credential",),
           "an FCM server API key"),
    Target("pinpoint", ("GetBaiduChannel", "UpdateBaiduChannel", "DeleteBaiduChannel"),
           "output", ("BaiduChannelResponse.Credential",),
           "a Baidu push API key"),
    Target("medialive", ("DescribeChannel", "DeleteChannel", "StartChannel", "StopChannel", "RestartChannelPipelines"),
           "output", ("EncoderSettings.OutputGroups[].OutputGroupSettings.HlsGroupSettings.HlsCdnSettings.HlsAkamaiSettings.Token",),
           "an Akamai token"),
    Target("medialive", ("CreateChannel", "UpdateChannel", "UpdateChannelClass"),
           "output", ("Channel.EncoderSettings.OutputGroups[].OutputGroupSettings.HlsGroupSettings.HlsCdnSettings.HlsAkamaiSettings.Token",),
           "an Akamai token"),
    Target("quicksight", ("DescribeAssetBundleImportJob",),
           "output", ("OverrideParameters.DataSources[].Credentials.CredentialPair.Password",),
           "data source passwords given as import overrides"),
    Target("chime", ("GetBot", "CreateBot", "UpdateBot", "RegenerateSecurityToken"), "output", ("Bot.SecurityToken",),
           "a chat bot's security token"),
    Target("chime", ("ListBots",), "output", ("Bots[].SecurityToken",),
           "chat bots' security tokens"),
    Target("chime-sdk-meetings", ("GetAttendee", "CreateAttendee", "UpdateAttendeeCapabilities"),
           "output", ("Attendee.JoinToken",),
           "a meeting join token"),
    Target("chime-sdk-meetings", ("ListAttendees", "BatchCreateAttendee", "CreateMeetingWithAttendees"),
           "output", ("Attendees[].JoinToken",),
           "meeting join tokens"),
    Target("eventbridgev2", ("DescribeEventSource",),
           "output", ("Configuration.WebhookEventsConfiguration.AuthConfiguration.HmacAuthConfiguration.SecretValue",
            "Configuration.WebhookEventsConfiguration.AuthConfiguration.StaticTokenAuthConfiguration.SecretValue",
            "Configuration.WebhookEventsConfiguration.AuthConfiguration.BasicHttpAuthConfiguration.Password"),
           "webhook authentication secrets"),
    Target("lexv2-models", ("DescribeBotRecommendation", "StartBotRecommendation", "UpdateBotRecommendation"),
           "output", ("encryptionSetting.botLocaleExportPassword", "encryptionSetting.associatedTranscriptsPassword"),
           "export encryption passwords"),
    Target("wickr", ("GetOidcInfo",),
           "output", ("openidConnectInfo.clientSecret", "openidConnectInfo.secret", "tokenInfo.accessToken",
            "tokenInfo.idToken", "tokenInfo.refreshToken"),
           "OIDC client secret and the tokens of a code exchange"),
    Target("wickr", ("GetOpentdfConfig",), "output", ("clientSecret",),
           "an OpenTDF client secret"),
    Target("securityhub", ("GetFindings",),
           "output", ("Findings[].Resources[].Details.AwsEc2VpnConnection.Options.TunnelOptions[].PreSharedKey",),
           "a VPN tunnel's pre-shared key copied into a finding"),
    Target("securityhub", ("GetFindings",),
           "output", ("Findings[].Resources[].Details.AwsLambdaFunction.Environment.Variables",
                      "Findings[].Resources[].Details.AwsEcsTaskDefinition.ContainerDefinitions[].Environment[].Value",
                      "Findings[].Resources[].Details.AwsCodeBuildProject.Environment.EnvironmentVariables[].Value",
                      "Findings[].Resources[].Details.AwsRdsDbInstance.PendingModifiedValues.MasterUserPassword",
                      "Findings[].Resources[].Details.AwsRedshiftCluster.PendingModifiedValues.MasterUserPassword",
                      "Findings[].Resources[].Details.AwsOpenSearchServiceDomain.AdvancedSecurityOptions.MasterUserOptions.MasterUserPassword"),
           "a function's, task's or build's environment and database or domain master passwords copied into a "
           "finding; the model does not mark them"),
    Target("datazone", ("GetConnection",),
           "output", ("props.redshiftProperties.credentials", "props.sparkEmrProperties.credentials",
            "props.sparkEmrProperties.managedEndpointCredentials",
            "physicalEndpoints[].glueConnection.authenticationConfiguration.oAuth2Properties.oAuth2Credentials"),
           "database passwords, an EMR endpoint token and OAuth client secrets and tokens"),
    Target("datazone", ("ListConnections",),
           "output", ("items[].props.redshiftProperties.credentials", "items[].props.sparkEmrProperties.credentials",
                      "items[].props.sparkEmrProperties.managedEndpointCredentials",
                      "items[].physicalEndpoints[].glueConnection.authenticationConfiguration.oAuth2Properties.oAuth2Credentials"),
           "database passwords, an EMR endpoint token and OAuth client secrets and tokens"),
    # keys, environments and arguments that reads (and writes) return, which the models do not mark
    Target("appsync", ("ListApiKeys",), "output", ("apiKeys[].id",),
           "API keys: an AppSync API key's id is the key itself (da2-...)"),
    Target("appsync", ("CreateApiKey", "UpdateApiKey"), "output", ("apiKey.id",),
           "an API key: an AppSync API key's id is the key itself"),
    Target("appsync", ("GetGraphqlApiEnvironmentVariables", "PutGraphqlApiEnvironmentVariables"),
           "output", ("environmentVariables",), _ENVIRONMENT),
    Target("glue", ("GetJob",), "output", ("Job.DefaultArguments", "Job.NonOverridableArguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("GetJobs", "BatchGetJobs"), "output",
           ("Jobs[].DefaultArguments", "Jobs[].NonOverridableArguments"), _JOB_ARGUMENTS),
    Target("glue", ("GetJobRun",), "output", ("JobRun.Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("GetJobRuns",), "output", ("JobRuns[].Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("GetTrigger", "UpdateTrigger"), "output", ("Trigger.Actions[].Arguments",),
           _JOB_ARGUMENTS),
    Target("glue", ("GetTriggers", "BatchGetTriggers"), "output", ("Triggers[].Actions[].Arguments",),
           _JOB_ARGUMENTS),
    Target("glue", ("GetWorkflow",),
           "output", ("Workflow.Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Workflow.Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments",
                      "Workflow.LastRun.Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Workflow.LastRun.Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("BatchGetWorkflows",),
           "output", ("Workflows[].Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Workflows[].Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments",
                      "Workflows[].LastRun.Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Workflows[].LastRun.Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("GetWorkflowRun",),
           "output", ("Run.Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Run.Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("GetWorkflowRuns",),
           "output", ("Runs[].Graph.Nodes[].JobDetails.JobRuns[].Arguments",
                      "Runs[].Graph.Nodes[].TriggerDetails.Trigger.Actions[].Arguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("GetSession", "CreateSession"), "output", ("Session.DefaultArguments",), _JOB_ARGUMENTS),
    Target("glue", ("ListSessions",), "output", ("Sessions[].DefaultArguments",), _JOB_ARGUMENTS),
    Target("glue", ("GetDevEndpoint",), "output", ("DevEndpoint.Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("GetDevEndpoints", "BatchGetDevEndpoints"), "output", ("DevEndpoints[].Arguments",),
           _JOB_ARGUMENTS),
    Target("glue", ("CreateDevEndpoint",), "output", ("Arguments",), _JOB_ARGUMENTS),
    Target("emr", ("DescribeCluster",), "output", tuple("Cluster." + p for p in _EMR_CONFIGURATIONS),
           _EMR_PROPERTIES),
    Target("emr", ("ListInstanceGroups",),
           "output", tuple(f"InstanceGroups[].{p}" for p in _EMR_CONFIGURATIONS) + (
               "InstanceGroups[].LastSuccessfullyAppliedConfigurations[].Properties",
               "InstanceGroups[].LastSuccessfullyAppliedConfigurations[].Configurations[].Properties"),
           _EMR_PROPERTIES),
    Target("emr", ("ListInstanceFleets",),
           "output", tuple(f"InstanceFleets[].InstanceTypeSpecifications[].{p}" for p in _EMR_CONFIGURATIONS),
           _EMR_PROPERTIES),
    Target("emr", ("DescribeNotebookExecution",), "output", ("NotebookExecution.EnvironmentVariables",),
           _ENVIRONMENT),
    Target("kinesisanalyticsv2",
           ("DescribeApplication", "CreateApplication", "UpdateApplication", "RollbackApplication"),
           "output", ("ApplicationDetail.ApplicationConfigurationDescription.EnvironmentPropertyDescriptions"
                      ".PropertyGroupDescriptions[].PropertyMap",),
           "runtime properties hold credentials and connection strings; the model does not mark them"),
    Target("kinesisanalyticsv2", ("DescribeApplicationVersion",),
           "output", ("ApplicationVersionDetail.ApplicationConfigurationDescription.EnvironmentPropertyDescriptions"
                      ".PropertyGroupDescriptions[].PropertyMap",),
           "runtime properties hold credentials and connection strings; the model does not mark them"),
    Target("lightsail", ("GetContainerServices",),
           "output", ("containerServices[].currentDeployment.containers.*.environment",
                      "containerServices[].nextDeployment.containers.*.environment"),
           _ENVIRONMENT),
    Target("lightsail", ("CreateContainerService", "UpdateContainerService", "CreateContainerServiceDeployment"),
           "output", ("containerService.currentDeployment.containers.*.environment",
                      "containerService.nextDeployment.containers.*.environment"),
           _ENVIRONMENT),
    Target("lightsail", ("GetContainerServiceDeployments",), "output", ("deployments[].containers.*.environment",),
           _ENVIRONMENT),
    Target("elasticbeanstalk", ("DescribeConfigurationSettings",),
           "output", ("ConfigurationSettings[].OptionSettings[].Value",),
           "environment properties (option settings in the application's environment namespace) hold credentials",
           _BEANSTALK_ENVIRONMENT),
    Target("elasticbeanstalk", ("CreateConfigurationTemplate", "UpdateConfigurationTemplate"),
           "output", ("OptionSettings[].Value",),
           "environment properties (option settings in the application's environment namespace) hold credentials",
           _BEANSTALK_ENVIRONMENT),
    Target("codepipeline", ("GetPipeline", "CreatePipeline", "UpdatePipeline"),
           "output", ("pipeline.stages[].actions[].environmentVariables[].value",),
           "action environment variables (PLAINTEXT ones hold credentials); the model does not mark them"),
    Target("pipes", ("DescribePipe",),
           "output", ("TargetParameters.EcsTaskParameters.Overrides.ContainerOverrides[].Environment[].value",
                      "TargetParameters.BatchJobParameters.ContainerOverrides.Environment[].Value"),
           _CONTAINER_ENV),
    Target("gamelift", ("DescribeContainerGroupDefinition", "CreateContainerGroupDefinition",
                        "UpdateContainerGroupDefinition"),
           "output", ("ContainerGroupDefinition.GameServerContainerDefinition.EnvironmentOverride[].Value",
                      "ContainerGroupDefinition.SupportContainerDefinitions[].EnvironmentOverride[].Value"),
           _CONTAINER_ENV),
    Target("gamelift", ("ListContainerGroupDefinitions", "ListContainerGroupDefinitionVersions"),
           "output", ("ContainerGroupDefinitions[].GameServerContainerDefinition.EnvironmentOverride[].Value",
                      "ContainerGroupDefinitions[].SupportContainerDefinitions[].EnvironmentOverride[].Value"),
           _CONTAINER_ENV),
    Target("greengrass", ("GetFunctionDefinitionVersion",),
           "output", ("Definition.Functions[].FunctionConfiguration.Environment.Variables",),
           _FUNCTION_ENV),
    Target("devicefarm", ("GetProject", "CreateProject", "UpdateProject"),
           "output", ("project.environmentVariables[].value",), _ENVIRONMENT),
    Target("devicefarm", ("ListProjects",), "output", ("projects[].environmentVariables[].value",), _ENVIRONMENT),
    Target("devicefarm", ("GetRun", "ScheduleRun", "StopRun"), "output", ("run.environmentVariables[].value",),
           _ENVIRONMENT),
    Target("devicefarm", ("ListRuns",), "output", ("runs[].environmentVariables[].value",), _ENVIRONMENT),
    Target("docdb", ("DescribeDBInstances",), "output", ("DBInstances[].PendingModifiedValues.MasterUserPassword",),
           _PENDING_PASSWORD),
    Target("docdb", ("CreateDBInstance", "ModifyDBInstance", "DeleteDBInstance", "RebootDBInstance"),
           "output", ("DBInstance.PendingModifiedValues.MasterUserPassword",), _PENDING_PASSWORD),
    Target("neptune", ("DescribeDBInstances",), "output", ("DBInstances[].PendingModifiedValues.MasterUserPassword",),
           _PENDING_PASSWORD),
    Target("neptune", ("CreateDBInstance", "ModifyDBInstance", "DeleteDBInstance", "RebootDBInstance"),
           "output", ("DBInstance.PendingModifiedValues.MasterUserPassword",), _PENDING_PASSWORD),
    Target("iotwireless", ("GetWirelessDevice",), "output", ("Sidewalk.PrivateKeys[].Value",),
           "a Sidewalk device's private keys"),
    Target("evs", ("GetDepotUrl",), "output", ("token",),
           "a token for the VCF software depot"),
    Target("grafana", ("DescribeWorkspace", "CreateWorkspace", "UpdateWorkspace", "DeleteWorkspace",
                       "AssociateLicense", "DisassociateLicense"),
           "output", ("workspace.grafanaToken",),
           "the token that ties a workspace to a Grafana Labs account (its Enterprise license)"),
    Target("grafana", ("ListWorkspaces",), "output", ("workspaces[].grafanaToken",),
           "tokens that tie workspaces to Grafana Labs accounts"),
    Target("elbv2", ("DescribeListeners", "CreateListener", "ModifyListener"),
           "output", ("Listeners[].DefaultActions[].AuthenticateOidcConfig.ClientSecret",),
           _OIDC_CLIENT_SECRET),
    Target("elbv2", ("DescribeRules", "CreateRule", "ModifyRule", "SetRulePriorities"),
           "output", ("Rules[].Actions[].AuthenticateOidcConfig.ClientSecret",),
           _OIDC_CLIENT_SECRET),
    # the same secrets, and passwords, as requests carry them
    Target("appsync", ("UpdateApiKey", "DeleteApiKey"), "input", ("id",),
           "an API key: an AppSync API key's id is the key itself, named in the URL"),
    Target("appsync", ("PutGraphqlApiEnvironmentVariables",), "input", ("environmentVariables",), _ENVIRONMENT),
    Target("glue", ("CreateConnection", "UpdateConnection"), "input", _GLUE_CONNECTION_PASSWORDS,
           "connection passwords and key passwords (the other properties are hosts, ports and URLs)"),
    Target("glue", ("CreateJob",), "input", ("DefaultArguments", "NonOverridableArguments"), _JOB_ARGUMENTS),
    Target("glue", ("UpdateJob",), "input", ("JobUpdate.DefaultArguments", "JobUpdate.NonOverridableArguments"),
           _JOB_ARGUMENTS),
    Target("glue", ("StartJobRun", "CreateDevEndpoint"), "input", ("Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("CreateTrigger",), "input", ("Actions[].Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("UpdateTrigger",), "input", ("TriggerUpdate.Actions[].Arguments",), _JOB_ARGUMENTS),
    Target("glue", ("CreateSession",), "input", ("DefaultArguments",), _JOB_ARGUMENTS),
    Target("emr", ("RunJobFlow",),
           "input", ("KerberosAttributes.KdcAdminPassword", "KerberosAttributes.CrossRealmTrustPrincipalPassword",
                     "KerberosAttributes.ADDomainJoinPassword") + _EMR_CONFIGURATIONS,
           "Kerberos and AD join passwords, and configuration properties; the model does not mark them"),
    Target("emr", ("StartNotebookExecution",), "input", ("EnvironmentVariables",), _ENVIRONMENT),
    Target("kinesisanalyticsv2", ("CreateApplication",),
           "input", ("ApplicationConfiguration.EnvironmentProperties.PropertyGroups[].PropertyMap",),
           "runtime properties hold credentials and connection strings"),
    Target("kinesisanalyticsv2", ("UpdateApplication",),
           "input", ("ApplicationConfigurationUpdate.EnvironmentPropertyUpdates.PropertyGroups[].PropertyMap",),
           "runtime properties hold credentials and connection strings"),
    Target("lightsail", ("CreateContainerServiceDeployment",), "input", ("containers.*.environment",), _ENVIRONMENT),
    Target("lightsail", ("CreateContainerService",), "input", ("deployment.containers.*.environment",), _ENVIRONMENT),
    Target("elasticbeanstalk", ("CreateEnvironment", "UpdateEnvironment", "CreateConfigurationTemplate",
                                "UpdateConfigurationTemplate", "ValidateConfigurationSettings"),
           "input", ("OptionSettings[].Value",),
           "environment properties (option settings in the application's environment namespace) hold credentials",
           _BEANSTALK_ENVIRONMENT),
    Target("codepipeline", ("CreatePipeline", "UpdatePipeline"),
           "input", ("pipeline.stages[].actions[].environmentVariables[].value",),
           "action environment variables"),
    Target("pipes", ("CreatePipe", "UpdatePipe"),
           "input", ("TargetParameters.EcsTaskParameters.Overrides.ContainerOverrides[].Environment[].value",
                     "TargetParameters.BatchJobParameters.ContainerOverrides.Environment[].Value"),
           _CONTAINER_ENV),
    Target("gamelift", ("CreateContainerGroupDefinition", "UpdateContainerGroupDefinition"),
           "input", ("GameServerContainerDefinition.EnvironmentOverride[].Value",
                     "SupportContainerDefinitions[].EnvironmentOverride[].Value"),
           _CONTAINER_ENV),
    Target("greengrass", ("CreateFunctionDefinition",),
           "input", ("InitialVersion.Functions[].FunctionConfiguration.Environment.Variables",), _FUNCTION_ENV),
    Target("greengrass", ("CreateFunctionDefinitionVersion",),
           "input", ("Functions[].FunctionConfiguration.Environment.Variables",), _FUNCTION_ENV),
    Target("devicefarm", ("CreateProject", "UpdateProject"), "input", ("environmentVariables[].value",),
           _ENVIRONMENT),
    Target("devicefarm", ("ScheduleRun", "GetDevicePoolCompatibility"),
           "input", ("configuration.environmentVariables[].value",), _ENVIRONMENT),
    Target("grafana", ("AssociateLicense",), "input", ("grafanaToken",),
           "the token that ties a workspace to a Grafana Labs account"),
    Target("elbv2", ("CreateListener", "ModifyListener"),
           "input", ("DefaultActions[].AuthenticateOidcConfig.ClientSecret",), _OIDC_CLIENT_SECRET),
    Target("elbv2", ("CreateRule", "ModifyRule"),
           "input", ("Actions[].AuthenticateOidcConfig.ClientSecret",), _OIDC_CLIENT_SECRET),
    Target("mq", ("CreateUser", "UpdateUser"), "input", ("Password",), "a broker user's password"),
    Target("mq", ("CreateBroker",), "input", ("Users[].Password", "LdapServerMetadata.ServiceAccountPassword"),
           "broker users' passwords and the LDAP service account's"),
    Target("mq", ("UpdateBroker",), "input", ("LdapServerMetadata.ServiceAccountPassword",),
           "the LDAP service account's password"),
    Target("elasticache", ("CreateUser", "ModifyUser"), "input", ("Passwords", "AuthenticationMode.Passwords"),
           "a cache user's passwords"),
    Target("memorydb", ("CreateUser", "UpdateUser"), "input", ("AuthenticationMode.Passwords",),
           "a cluster user's passwords"),
    Target("neptune", ("CreateDBInstance", "ModifyDBInstance"), "input", ("MasterUserPassword",),
           "a database master password"),
    Target("redshift", ("CreateHsmConfiguration",), "input", ("HsmPartitionPassword",),
           "an HSM partition's password"),
    Target("firehose", ("CreateDeliveryStream",), "input", ("SplunkDestinationConfiguration.HECToken",),
           "a Splunk HEC token; the model does not mark it"),
    Target("firehose", ("UpdateDestination",), "input", ("SplunkDestinationUpdate.HECToken",),
           "a Splunk HEC token; the model does not mark it"),
    Target("pinpoint", ("UpdateAdmChannel",), "input", ("ADMChannelRequest.ClientSecret",),
           "an Amazon Device Messaging client secret"),
    Target("pinpoint", ("UpdateApnsChannel",),
           "input", ("APNSChannelRequest.PrivateKey", "APNSChannelRequest.TokenKey"),
           "an APNs certificate's private key or token signing key"),
    Target("pinpoint", ("UpdateApnsSandboxChannel",),
           "input", ("APNSSandboxChannelRequest.PrivateKey", "APNSSandboxChannelRequest.TokenKey"),
           "an APNs certificate's private key or token signing key"),
    Target("pinpoint", ("UpdateApnsVoipChannel",),
           "input", ("APNSVoipChannelRequest.PrivateKey", "APNSVoipChannelRequest.TokenKey"),
           "an APNs certificate's private key or token signing key"),
    Target("pinpoint", ("UpdateApnsVoipSandboxChannel",),
           "input", ("APNSVoipSandboxChannelRequest.PrivateKey", "APNSVoipSandboxChannelRequest.TokenKey"),
           "an APNs certificate's private key or token signing key"),
    Target("pinpoint", ("UpdateBaiduChannel",),
           "input", ("BaiduChannelRequest.ApiKey", "BaiduChannelRequest.SecretKey"),
           "a Baidu push API key and secret key"),
    Target("pinpoint", ("UpdateGcmChannel",), "input", ("GCMChannelRequest.ApiKey", "GCMChannelRequest.ServiceJson"),
           "an FCM server API key, or a service account's JSON with its private key"),
    Target("iot", ("CreateTopicRule", "ReplaceTopicRule"),
           "input", ("topicRulePayload.actions[].salesforce.token", "topicRulePayload.errorAction.salesforce.token"),
           "a Salesforce IoT input stream token"),
    Target("securitylake", ("CreateSubscriberNotification", "UpdateSubscriberNotification"),
           "input", ("configuration.httpsNotificationConfiguration.authorizationApiKeyValue",),
           "the API key a subscriber's HTTPS endpoint takes"),
)

# Shapes masked as one value, not member by member. (service, shape): (how, why)
WHOLE_VALUES: dict[tuple[str, str], str] = {
    ("dynamodb", "AttributeValue"): "an attribute value becomes a string attribute {\"S\": marker}, which every "
                                    "SDK reads (a masked N, B or M would not parse)",
    ("dynamodbstreams", "AttributeValue"): "as for DynamoDB",
}

# Services whose items are maps of attribute name to AttributeValue. A policy path into an item
# (``Item.ssn``, ``Items[].ssn``) names an attribute, and masks it wherever the call carries an item
# (``ServiceShapes.item_maps``): BatchGetItem's ``Responses``, TransactGetItems' and PartiQL's
# ``Responses[].Item``, a write's ``Attributes`` (ReturnValues), ``LastEvaluatedKey``, a stream
# record's ``NewImage``/``OldImage``, ..., so that one rule's path holds across every operation it
# matches and an agent cannot read the attribute by another operation than the one the path names.
ITEM_SERVICES = frozenset({"dynamodb", "dynamodbstreams"})
# The direction of an error response, masked against its exception's shape: "error:<shape>".
ERROR_DIRECTION = "error:"
_JSON_ERROR_TYPE = re.compile(rb'"__type"\s*:\s*"([^"\\]{1,256})"')
ITEM_PATH_HEADS = frozenset({"Item", "Items"})
NOT_ITEMS = frozenset({"AttributeValue", "ExpressionAttributeValueMap"})  # a value, not an item; placeholders

OBJECT_TEXT_TYPES = re.compile(
    r"^(?:text/|application/(?:json|xml|x-yaml|yaml|javascript|x-www-form-urlencoded|csv|x-ndjson|toml)\b"
    r"|application/[\w.+-]+\+(?:json|xml)\b)", re.I)
EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
# Headers whose values are protocol metadata: the detectors skip them. (Not the ones an agent writes
# free text into, User-Agent, X-Amz-User-Agent and X-Amzn-Trace-Id: a token put there is masked.)
PLAIN_HEADERS = frozenset({
    "host", "content-type", "content-length", "content-encoding", "transfer-encoding", "connection", "date",
    "server", "accept", "accept-encoding", "expect", "x-amz-date", "x-amz-content-sha256",
    "x-amz-target", "x-amz-api-version", "amz-sdk-invocation-id", "amz-sdk-request",
    "x-amzn-requestid", "x-amz-request-id", "x-amz-id-2", "x-amz-crc32", "x-amz-decoded-content-length",
    "x-amz-sdk-checksum-algorithm", "x-amz-trailer", "etag", "last-modified", "x-amz-version-id",
    "x-amz-apigw-id", "x-amzn-query-mode", "x-amz-checksum-type"})


# ---------------------------------------------------------------------------------------------
# What the record keeps, and what the agent gets


@dataclasses.dataclass
class Part:
    """One message (request or response) as the record keeps it."""

    body: str | None = None  # masked text; None when not kept
    headers: list[tuple[str, str]] | None = None  # masked, credential headers dropped
    query: str | None = None  # the request's masked query string, when something in it was masked
    note: str | None = None  # why the body is not kept, or how it was kept
    masked: Counter = dataclasses.field(default_factory=Counter)  # (part, path, by) -> values


@dataclasses.dataclass
class AgentCopy:
    """How the agent's copy of a response differs from upstream's."""

    body: bytes | None = None  # the new (decoded) body; None: the body is unchanged
    headers: dict[str, str | None] = dataclasses.field(default_factory=dict)  # lower-case name -> value, None drops
    masked: Counter = dataclasses.field(default_factory=Counter)
    # why the copy policy asks for cannot be made (a body that does not parse, an object that is not
    # text): the agent must then get no body at all (ResponseWithheld), never upstream's
    withheld: str | None = None


@dataclasses.dataclass
class MaskedCall:
    """A call's masked copy for the record (flow.metadata ``agentgate.masked``)."""

    request_body: str | None = None
    response_body: str | None = None
    request_headers: list[tuple[str, str]] | None = None
    response_headers: list[tuple[str, str]] | None = None
    query: str | None = None
    path: str | None = None  # the URL's path as the record keeps it, when masking changed it
    params: dict | None = None
    params_masked: bool = False  # the call's parameters were masked (``params`` replaces them)
    resources: list[str] | None = None
    counts: Counter = dataclasses.field(default_factory=Counter)
    notes: list[str] = dataclasses.field(default_factory=list)
    request_done: bool = False
    response_done: bool = False
    # the request's masking, left to run once the request is on its way upstream (``finish``)
    pending: Callable[[], None] | None = None

    def finish(self) -> None:
        """Run the request's masking if it was left for later: before anything reads the request's
        masked copy. Whatever it cannot mask is not kept (it says so in the record's note)."""
        work, self.pending = self.pending, None
        if work is None:
            return
        try:
            work()
        except Exception as e:  # noqa: BLE001 - nothing of the request is kept unmasked
            self.request_body, self.request_headers, self.params, self.params_masked = None, [], None, True
            self.query = ""  # the URL without its query
            self.notes.append(f"request: not masked ({type(e).__name__}): its body, headers, parameters and query "
                              "not kept")

    def add(self, part: Part, which: str) -> None:
        if which == "request":
            self.request_body, self.request_headers, self.query = part.body, part.headers, part.query
            self.request_done = True
        else:
            self.response_body, self.response_headers = part.body, part.headers
            self.response_done = True
        if part.masked:
            self.counts.update(part.masked)
        if part.note:
            self.notes.append(f"{which}: {part.note}")

    @property
    def masked(self) -> list[dict]:
        """What was masked: part, member path, what masked it, how many values. Never a value."""
        return [{"part": part, "path": path, "by": by, "count": n}
                for (part, path, by), n in sorted(self.counts.items())]

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None


# ---------------------------------------------------------------------------------------------
# Paths and plans


def parse_path(path: str) -> tuple[str, ...]:
    """``Parameters[].Value`` -> ("Parameters", "Value"). Lists are walked through, so ``[]`` is
    optional; after a map, a step is a key (``Item.ssn``), ``*`` any key."""
    steps = []
    for part in path.split("."):
        while part.endswith("[]") or part.endswith("[*]"):
            part = part[: -2 if part.endswith("[]") else -3]
        if part:
            steps.append(part)
    return tuple(steps)


@functools.lru_cache(maxsize=64)
def _checked_shapes(service: str) -> "ServiceShapes | None":
    try:
        description = _default_models(service)
    except Exception:  # noqa: BLE001 - a service botocore does not have
        return None
    return ServiceShapes(service, description) if description else None


def policy_path_reaches(service: str, operation: str, path: str) -> bool | None:
    """Whether a ``mask_for_agent`` path names something in the operation's answer, as the masker
    reads it (``parse_path``: members of structures, any key of a map or document, lists walked
    through; ``Item.x`` in a DynamoDB answer that carries items wherever they sit); None when the
    model has no such operation."""
    shapes = _checked_shapes(service)
    if shapes is None or operation not in shapes.operations:
        return None
    top = shapes.message(operation, "output").top
    steps = parse_path(path)
    if not steps:
        return False
    if (service in ITEM_SERVICES and len(steps) >= 2 and steps[0] in ITEM_PATH_HEADS
            and shapes.item_maps(top)):
        return True

    def reach(name: str | None, rest: tuple[str, ...], depth: int) -> bool:
        if not rest:
            return True
        shape = shapes.shapes.get(name) if name else None
        if not shape or depth > 64:
            return False
        kind = shape.get("type")
        if kind == "list":
            return reach(shape.get("member", {}).get("shape"), rest, depth + 1)
        if kind == "structure" and shape.get("document"):
            return True
        if kind == "structure":
            ref = shape.get("members", {}).get(rest[0])
            return ref is not None and reach(ref.get("shape"), rest[1:], depth + 1)
        if kind == "map":
            return reach(shape.get("value", {}).get("shape"), rest[1:], depth + 1)
        return False

    return reach(top, steps, 0)


def output_members(service: str, operation: str) -> list[str]:
    """The top-level members of an operation's answer, as its output shape names them."""
    shapes = _checked_shapes(service)
    if shapes is None or operation not in shapes.operations:
        return []
    top = shapes.message(operation, "output").top
    return list(shapes.shapes.get(top, {}).get("members", {})) if top else []


class Overlay:
    """Paths to mask, as a tree of member names (and map keys); lists are transparent."""

    __slots__ = ("mask", "when", "b64", "children")

    def __init__(self) -> None:
        self.mask: str | None = None  # what masks the node, when it is a target
        self.when: tuple[str, str] | None = None
        self.b64 = False  # a string holding base64: its marker is base64 too
        self.children: dict[str, Overlay] = {}


def build_overlay(entries: Iterable[tuple[tuple[str, ...], str, tuple[str, str] | None]],
                  base64_paths: Iterable[tuple[str, ...]] = ()) -> Overlay | None:
    root: Overlay | None = None
    b64 = set(base64_paths)
    for steps, label, when in entries:
        if not steps:
            continue
        root = root or Overlay()
        node = root
        for step in steps:
            node = node.children.setdefault(step, Overlay())
        if node.mask is None or (node.when is not None and when is None):
            node.mask, node.when = label, when
        node.b64 = node.b64 or steps in b64
    return root


class Node:
    """Where sensitive members sit below a shape (one node per shape; recursive shapes make cycles)."""

    __slots__ = ("shape", "mask", "members", "item", "value", "linked")

    def __init__(self, shape: str, mask: str | None = None) -> None:
        self.shape = shape
        self.mask = mask
        self.members: dict[str, Node] = {}
        self.item: Node | None = None
        self.value: Node | None = None
        self.linked = False


@dataclasses.dataclass
class Message:
    """An operation's request or response as the wire carries it."""

    top: str | None  # the input or output shape
    wrapper: str | None = None  # query protocol: the element the output sits in
    payload: str | None = None  # the member that is the whole body
    payload_shape: str | None = None
    payload_kind: str | None = None  # structure | blob | string | stream | eventstream
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # lower-case header -> member
    header_maps: tuple[tuple[str, str], ...] = ()  # (lower-case prefix, member)
    query: dict[str, str] = dataclasses.field(default_factory=dict)  # query key -> member


class ServiceShapes:
    """One service's shapes and what masking derives from them, cached per shape and operation."""

    def __init__(self, name: str, description: dict) -> None:
        self.name = name
        self.shapes: dict = description["shapes"]
        self.operations: dict = description["operations"]
        self._nodes: dict[str, Node | None] = {}
        self._messages: dict[tuple[str, str], Message] = {}
        self._json_wire: dict[str, dict[str, str]] = {}
        self._json_members: dict[str, dict[str, tuple[str, str]]] = {}
        self._by_member: dict[str, dict[str, tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._xml_wire: dict[str, dict[str, tuple[str, bool]]] = {}
        self._query_wire: dict[tuple[str, bool], dict[str, str]] = {}
        self._items: dict[str | None, tuple[tuple[str, ...], ...]] = {}
        self._templated: dict[str | None, tuple[tuple[tuple[str, ...], str], ...]] = {}
        self._reaches: dict[tuple[str | None, str], bool] = {}

    def item_maps(self, top: str | None) -> tuple[tuple[str, ...], ...]:
        """Where below ``top`` an item sits: the member paths (``*`` for a map's key) to every map
        of attribute name to AttributeValue, not into such a value itself."""
        found: list[tuple[str, ...]] = []

        def walk(name: str | None, steps: tuple[str, ...], seen: frozenset) -> None:
            shape = self.shapes.get(name) if name else None
            if not shape or name in seen or name in NOT_ITEMS or len(steps) > 8:
                return
            seen = seen | {name}
            kind = shape["type"]
            if kind == "structure":
                for member, ref in shape.get("members", {}).items():
                    walk(ref.get("shape"), steps + (member,), seen)
            elif kind == "list":
                walk(shape.get("member", {}).get("shape"), steps, seen)
            elif kind == "map":
                value = shape.get("value", {}).get("shape")
                if value == "AttributeValue":
                    found.append(steps)
                else:
                    walk(value, steps + ("*",), seen)

        with self._lock:
            cached = self._items.get(top)
            if cached is None:
                walk(top, (), frozenset())
                cached = self._items[top] = tuple(found)
        return cached

    def templated_parameters(self, top: str | None) -> tuple[tuple[tuple[str, ...], str], ...]:
        """Where below ``top`` a CloudFormation template sits beside the values given to its
        parameters: (the member path, lists crossed unmarked, to a structure with a ``TemplateBody``
        member, the member beside it that lists ``{ParameterKey, ParameterValue}``)."""
        found: list[tuple[tuple[str, ...], str]] = []

        def walk(name: str | None, steps: tuple[str, ...], seen: frozenset) -> None:
            shape = self.shapes.get(name) if name else None
            if not shape or name in seen or len(steps) > 8:
                return
            seen = seen | {name}
            if shape["type"] == "list":
                walk(shape.get("member", {}).get("shape"), steps, seen)
            if shape["type"] != "structure":
                return
            members = shape.get("members", {})
            if members.get("TemplateBody", {}).get("shape") == "TemplateBody":
                for member, ref in members.items():
                    items = self.shapes.get(ref["shape"], {})
                    item = self.shapes.get(items.get("member", {}).get("shape"), {}) if items.get("type") == "list" else {}
                    if {"ParameterKey", "ParameterValue"} <= set(item.get("members", {})):
                        found.append((steps, member))
            for member, ref in members.items():
                walk(ref.get("shape"), steps + (member,), seen)

        with self._lock:
            cached = self._templated.get(top)
            if cached is None:
                walk(top, (), frozenset())
                cached = self._templated[top] = tuple(found)
        return cached

    def reaches(self, top: str | None, target: str) -> bool:
        """Does a member of shape ``target`` sit anywhere below ``top``?"""
        key = (top, target)
        found = self._reaches.get(key)
        if found is None:
            seen: set[str] = set()
            todo = [top] if top else []
            while todo and not found:
                name = todo.pop()
                if name in seen or name not in self.shapes:
                    continue
                seen.add(name)
                shape = self.shapes[name]
                refs = list(shape.get("members", {}).values()) + [shape[k] for k in ("member", "key", "value")
                                                                   if k in shape]
                found = any(ref.get("shape") == target for ref in refs)
                todo.extend(ref["shape"] for ref in refs if "shape" in ref)
            found = self._reaches[key] = bool(found)
        return found

    def type_of(self, shape: str | None) -> str | None:
        found = self.shapes.get(shape) if shape else None
        return found["type"] if found else None

    def message(self, operation: str, direction: str) -> Message:
        key = (operation, direction)
        found = self._messages.get(key)
        if found is None:
            if direction.startswith(ERROR_DIRECTION):  # an error response: its error shape is the top
                found = self._messages[key] = Message(direction[len(ERROR_DIRECTION):])
            else:
                found = self._messages[key] = self._message(operation, direction)
        return found

    def error_shape(self, code: str | None) -> str | None:
        """The exception shape an error code names (``com.amazonaws.dynamodb.v20120810#Name``,
        ``Name:http://...``, ``Name``), or None when the model has no such exception."""
        if not code:
            return None
        name = code.rsplit("#", 1)[-1].split(":", 1)[0].strip()
        shape = self.shapes.get(name)
        return name if shape and shape.get("type") == "structure" and shape.get("exception") else None

    def _message(self, operation: str, direction: str) -> Message:
        ref = self.operations[operation].get(direction) or {}
        top = ref.get("shape")
        msg = Message(top, wrapper=ref.get("resultWrapper"))
        shape = self.shapes.get(top) if top else None
        if not shape:
            return msg
        payload = shape.get("payload")
        for name, member in shape.get("members", {}).items():
            where = member.get("location")
            wire = member.get("locationName", name)
            if where == "header":
                msg.headers[wire.lower()] = name
            elif where == "headers":
                msg.header_maps += ((wire.lower(), name),)
            elif where == "querystring" and self.type_of(member["shape"]) != "map":
                msg.query[wire] = name
        if payload:
            target = shape["members"][payload]["shape"]
            payload_shape = self.shapes[target]
            msg.payload, msg.payload_shape = payload, target
            if payload_shape.get("eventstream"):
                msg.payload_kind = "eventstream"
            elif payload_shape["type"] in ("blob", "string"):
                member = shape["members"][payload]
                streaming = payload_shape.get("streaming") or member.get("streaming") or payload_shape.get("requiresLength")
                msg.payload_kind = "stream" if streaming else payload_shape["type"]
            else:
                msg.payload_kind = "structure"
        return msg

    # -- sensitive members

    def sensitive(self, root: str | None) -> Node | None:
        """The plan of sensitive members below ``root`` (None when there are none)."""
        if not root:
            return None
        if root in self._nodes:
            return self._nodes[root]
        with self._lock:  # large bodies are masked on worker threads: one builder at a time
            return self._sensitive(root)

    def _sensitive(self, root: str) -> Node | None:
        if root in self._nodes:
            return self._nodes[root]
        shapes = self.shapes
        edges: dict[str, list[str]] = {}
        stack, seen = [root], {root}
        while stack:
            name = stack.pop()
            shape = shapes[name]
            kids = [] if shape.get("sensitive") else list(self._children(shape))
            edges[name] = kids
            for kid in kids:
                if kid not in seen:
                    seen.add(kid)
                    stack.append(kid)
        reverse: dict[str, list[str]] = {}
        for name, kids in edges.items():
            for kid in kids:
                reverse.setdefault(kid, []).append(name)
        reach = {n for n in seen if shapes[n].get("sensitive")}
        queue = list(reach)
        while queue:
            for parent in reverse.get(queue.pop(), ()):
                if parent not in reach:
                    reach.add(parent)
                    queue.append(parent)
        for name in seen:
            if name not in self._nodes:
                self._nodes[name] = (Node(name, "sensitive" if shapes[name].get("sensitive") else None)
                                     if name in reach else None)
        for name in seen:
            node = self._nodes[name]
            if node is None or node.mask or node.linked:
                continue
            shape = shapes[name]
            kind = shape["type"]
            if kind == "structure":
                for member, ref in shape.get("members", {}).items():
                    child = self._nodes.get(ref["shape"])
                    if child is not None:
                        node.members[member] = child
            elif kind == "list":
                node.item = self._nodes.get(shape["member"]["shape"])
            elif kind == "map":
                node.value = self._nodes.get(shape["value"]["shape"])
            node.linked = True
        return self._nodes[root]

    @staticmethod
    def _children(shape: dict) -> Iterable[str]:
        kind = shape["type"]
        if kind == "structure":
            return (m["shape"] for m in shape.get("members", {}).values())
        if kind == "list":
            return (shape["member"]["shape"],)
        if kind == "map":
            return (shape["key"]["shape"], shape["value"]["shape"])
        return ()

    def key_sensitive(self, map_shape: str) -> bool:
        shape = self.shapes[map_shape]
        return bool(self.shapes[shape["key"]["shape"]].get("sensitive"))

    # -- wire names

    def json_wire(self, shape: str) -> dict[str, str]:
        """member -> JSON key."""
        found = self._json_wire.get(shape)
        if found is None:
            found = self._json_wire[shape] = {
                m: ref.get("locationName", m) for m, ref in self.shapes[shape].get("members", {}).items()}
        return found

    def json_members(self, shape: str) -> dict[str, tuple[str, str]]:
        """JSON key -> (member, member's shape)."""
        found = self._json_members.get(shape)
        if found is None:
            found = self._json_members[shape] = {
                ref.get("locationName", m): (m, ref["shape"]) for m, ref in self.shapes[shape].get("members", {}).items()}
        return found

    def member_names(self, shape: str) -> dict[str, tuple[str, str]]:
        """member -> (member, member's shape): for trees keyed by member names (parameters, CBOR)."""
        found = self._by_member.get(shape)
        if found is None:
            found = self._by_member[shape] = {
                m: (m, ref["shape"]) for m, ref in self.shapes[shape].get("members", {}).items()}
        return found

    def same_names(self, shape: str) -> dict[str, str]:
        return {m: m for m in self.member_names(shape)}

    def xml_wire(self, shape: str) -> dict[str, tuple[str, bool]]:
        """member -> (element name, flattened), as botocore's XML parser reads them."""
        found = self._xml_wire.get(shape)
        if found is None:
            found = {}
            for m, ref in self.shapes[shape].get("members", {}).items():
                target = self.shapes[ref["shape"]]
                flattened = bool(ref.get("flattened") or target.get("flattened"))
                name = ref.get("locationName", m)
                if target["type"] == "list" and flattened:
                    name = target["member"].get("locationName") or name
                found[m] = (name, flattened)
            self._xml_wire[shape] = found
        return found

    def query_wire(self, shape: str, ec2: bool) -> dict[str, str]:
        """form key -> member, for query and ec2 requests."""
        key = (shape, ec2)
        found = self._query_wire.get(key)
        if found is None:
            found = {}
            for m, ref in self.shapes[shape].get("members", {}).items():
                target = self.shapes[ref["shape"]]
                if ec2:
                    name = ref.get("queryName") or (ref["locationName"][0].upper() + ref["locationName"][1:]
                                                    if ref.get("locationName") else m)
                elif target["type"] == "list" and (ref.get("flattened") or target.get("flattened")):
                    name = target["member"].get("locationName") or ref.get("locationName", m)
                else:
                    name = ref.get("locationName", m)
                found[name] = m
            self._query_wire[key] = found
        return found


@functools.lru_cache(maxsize=4096)
def _render(path: tuple) -> str:
    """A path kept as nested tuples (parent, step) as text."""
    steps = []
    while path:
        path, step = path
        steps.append(step)
    out = ""
    for step in reversed(steps):
        out += step if step == "[]" or not out else "." + step
    return out


def _map_step(ov, key):
    """The policy override for a map entry and the path step that names it: the key itself when
    the policy names that key, else ``*`` (with the policy's ``*`` override, if any)."""
    if ov is None:
        return None, "*"
    child = ov.children.get(key)
    if child is not None:
        return child, key
    return ov.children.get("*"), "*"


def _join(path: tuple, step: str) -> tuple:
    return (path, step)


# ---------------------------------------------------------------------------------------------
# The masker


class Masker:
    """Masks calls with one fingerprint key, against botocore's models."""

    def __init__(self, key: bytes, *, models: Callable[[str], dict] | None = None,
                 object_cap: int = OBJECT_CAP, parse_limit: int = PARSE_LIMIT) -> None:
        if not key:
            raise ValueError("the fingerprint key is empty")
        self.key = key
        self._models = models
        self.object_cap = object_cap
        self.parse_limit = parse_limit
        self._services: dict[str, ServiceShapes | None] = {}
        self._overlays: dict[tuple, Overlay | None] = {}
        self._for_agent = threading.local()  # set while the agent's copy is made: markers without fingerprints
        self._curated_outputs: dict[tuple, tuple[str, ...]] = {}

    # -- fingerprints and markers

    def fingerprint(self, value: bytes | str) -> str:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        return hmac.digest(self.key, data, "sha256").hex()[:12]

    def marker(self, value: bytes | str) -> str:
        """The record's marker (a keyed fingerprint: the same secret read twice shows as such); in the
        agent's copy, AGENT_MARKER."""
        if getattr(self._for_agent, "on", False):
            return AGENT_MARKER
        return MARKER_PREFIX + self.fingerprint(value)

    @contextlib.contextmanager
    def _agents(self) -> Iterator[None]:
        """While the agent's copy is made."""
        before = getattr(self._for_agent, "on", False)
        self._for_agent.on = True
        try:
            yield
        finally:
            self._for_agent.on = before

    def blob_marker(self, value: bytes) -> str:
        return base64.b64encode(self.marker(value).encode("ascii")).decode("ascii")

    # -- models

    def service(self, name: str | None) -> ServiceShapes | None:
        if not name:
            return None
        if name not in self._services:
            try:
                description = (self._models or _default_models)(name)
            except Exception:  # noqa: BLE001 - an unknown service is masked without a model
                description = None
            self._services[name] = ServiceShapes(name, description) if description else None
        return self._services[name]

    def overlay(self, service: str, operation: str, direction: str, policy: tuple[str, ...], curated: bool) -> Overlay | None:
        """The policy paths (and the curated targets, for the record) as one overlay."""
        key = (service, operation, direction, policy, curated)
        if key not in self._overlays:
            targets = [t for t in CURATED if t.service == service and operation in t.operations
                       and t.direction == direction]
            entries = [(parse_path(p), "curated", t.when) for t in targets for p in t.paths] if curated else []
            entries += [(steps, "policy", None) for p in policy for steps in self._policy_steps(service, operation,
                                                                                              direction, p)]
            if len(self._overlays) > 4096:
                self._overlays.clear()
            self._overlays[key] = build_overlay(entries, (parse_path(p) for t in targets if t.base64 for p in t.paths))
        return self._overlays[key]

    def curated_outputs(self, service: str | None, operation: str | None) -> tuple[str, ...]:
        """The curated targets of an operation's answer (those that hold whatever their siblings say,
        and are not what the operation is called for: a KMS plaintext is the policy's to mask) as
        policy paths: what a write's answer echoes (a function's environment from
        UpdateFunctionConfiguration, a new key's secret) is masked for the agent with them."""
        key = (service, operation)
        found = self._curated_outputs.get(key)
        if found is None:
            found = self._curated_outputs[key] = tuple(dict.fromkeys(
                p for t in CURATED if t.service == service and operation in t.operations
                and t.direction == "output" and t.when is None and not t.asked_for for p in t.paths))
        return found

    def _policy_steps(self, service: str, operation: str, direction: str, path: str) -> list[tuple[str, ...]]:
        """A policy path's steps; a path into an item (``Item.ssn``) also at every other place the
        operation carries an item (``ITEM_SERVICES``). A path into an item names its attribute
        (``policy.item_attribute``), as conditions on masked attributes read it: one deeper
        (``Item.profile.phone``, into a map attribute's AttributeValue) masks the attribute whole."""
        steps = parse_path(path)
        if service not in ITEM_SERVICES or len(steps) < 2 or steps[0] not in ITEM_PATH_HEADS:
            return [steps]
        steps = steps[:2]
        shapes = self.service(service)
        if shapes is None or operation not in shapes.operations:
            return [steps]
        top = shapes.message(operation, direction).top
        return [steps] + [where + steps[1:] for where in shapes.item_maps(top) if where + steps[1:] != steps]

    def error_direction(self, call: Any, headers: list[tuple[str, str]], body: bytes | None) -> str | None:
        """For a JSON error response, ``error:<its exception shape>`` when the service's model has
        it (DynamoDB's ConditionalCheckFailedException carries the item it checked): the shape its
        body is masked against, policy paths included. None otherwise (detectors only)."""
        if getattr(call, "protocol", None) not in ("json", "rest-json"):
            return None
        shapes = self.service(getattr(call, "service", None))
        if shapes is None:
            return None
        code = next((v for k, v in headers if k.lower() == "x-amzn-errortype"), None)
        if code is None and body:
            found = _JSON_ERROR_TYPE.search(body[:4096])
            code = found.group(1).decode("ascii", "replace") if found else None
        name = shapes.error_shape(code)
        return ERROR_DIRECTION + name if name else None

    def plan(self, call: Any, direction: str, policy: tuple[str, ...], *, record: bool) -> tuple:
        """(service shapes, message, sensitive node, overlay) for the call, or Nones."""
        shapes = self.service(getattr(call, "service", None))
        operation = getattr(call, "operation", None)
        if shapes is None or not operation or operation not in shapes.operations:
            return None, None, None, None
        message = shapes.message(operation, direction)
        node = shapes.sensitive(message.top) if record else None
        return shapes, message, node, self.overlay(shapes.name, operation, direction, tuple(policy), record)

    def names_payload(self, call: Any, policy: tuple[str, ...]) -> bool:
        """Whether ``policy`` masks the call's response payload when it is a stream (an S3 object's
        ``Body``): the agent then gets the object whole, masked, or nothing."""
        if not policy:
            return False
        _, message, _, ov = self.plan(call, "output", policy, record=False)
        if ov is None or message is None or message.payload_kind != "stream":
            return False
        child = ov.children.get(message.payload)
        return child is not None and child.mask

    def names_output(self, call: Any, policy: tuple[str, ...]) -> bool:
        """Whether ``policy`` names a member of the call's response (its body or headers), that is,
        whether the agent's copy of it can differ from upstream's."""
        shapes, message, _, ov = self.plan(call, "output", policy, record=False)
        if ov is None or message is None or not message.top:
            return False
        members = shapes.shapes.get(message.top, {}).get("members", {})
        return any(name == "*" or name in members for name in ov.children)

    # ------------------------------------------------------------------------------ requests

    def request(self, call: Any, *, query: str = "", headers: Iterable[tuple[str, str]] = (),
                body: bytes | None, streamed: bool = False, policy: tuple[str, ...] = (),
                content_type: str = "") -> Part:
        """The request as the record keeps it. Never raises."""
        part = Part()
        try:
            shapes, message, node, ov = self.plan(call, "input", policy, record=True)
            protocol = getattr(call, "protocol", None)
            part.headers = self._headers(headers, "request", shapes, message, node, ov, part.masked)
            if query:
                part.query = self._query(query, protocol, shapes, message, node, ov, part.masked)
            if streamed:
                part.note = "body streamed, not kept (its SHA-256 and size are)"
            elif body:
                self._body(part, "request", body, protocol, shapes, message, node, ov, content_type, policy)
        except Exception as e:  # noqa: BLE001 - masking never breaks the call
            part = Part(headers=_safe_headers(headers), note=f"not masked: {_reason(e)}")
        return part

    def params(self, call: Any, policy: tuple[str, ...] = ()) -> tuple[dict | None, Counter]:
        """The call's parameters (botocore member names) as the record keeps them."""
        counts: Counter = Counter()
        params = getattr(call, "params", None)
        if not params:
            return params, counts
        shapes, message, node, ov = self.plan(call, "input", policy, record=True)
        walk = _Tree(self, shapes, "params", "params", counts, by_member=True)
        top = message.top if message else None
        if node is not None or ov is not None:
            walk.plan(params, top, node, ov, (), None, None)
        if _cloudformation(shapes):
            walk.noecho_parameters(params, top)
        walk.detect = detectors.suspicious("\n".join(_strings(params)))
        if (walk.detect or detectors.names_secret("\n".join(_strings(params, keys=True)))
                or _templates(shapes, top)):
            walk.scan(params, top, (), None, None)
        if not walk.edits:
            return params, counts
        copy = _deep_copy(params)
        walk.apply_to(params, copy)
        return copy, counts

    def fingerprint_query(self, query: str) -> str:
        """A query string with every value replaced by its marker (names kept): for a call no
        model describes."""
        pairs = parse_qsl(query, keep_blank_values=True)
        return "&".join(f"{quote(k, safe='')}={quote(self.marker(v), safe=':')}" if v else quote(k, safe="")
                        for k, v in pairs)

    def resources(self, resources: list[str]) -> list[str]:
        return [self.mask_text(r)[0] for r in resources]

    def url_parts(self, path: str, query: str, params: Any, masked_params: Any) -> tuple[str, str, int]:
        """The URL's path and query as the record keeps them: each parameter value masking replaced
        (a sensitive URI label, a header member given in a presigned query) replaced in them too,
        as sent (percent-encoded or not); then what the detectors find in them. (path, query, how
        many values were replaced)"""
        n = 0
        pairs = sorted({(a, b) for a, b in _changed_strings(params, masked_params) if len(a) >= 4},
                       key=lambda p: -len(p[0]))
        for original, marker in pairs:
            for form in dict.fromkeys((original, quote(original, safe=""), quote(original, safe="/~"),
                                       quote_plus(original))):
                if form in path or form in query:
                    n += path.count(form) + query.count(form)
                    path, query = path.replace(form, marker), query.replace(form, marker)
        path, found = self.mask_text(path)
        n += sum(found.values())
        if query:
            query, found = self.mask_text(query)
            n += sum(found.values())
        return path, query, n

    # ------------------------------------------------------------------------------ responses

    def response(self, call: Any, *, status: int, headers: Iterable[tuple[str, str]] = (), body: bytes | None,
                 streamed: bool = False, policy: tuple[str, ...] = (), content_type: str = "",
                 agent: bool = True) -> tuple[Part, AgentCopy | None]:
        """The response as the record keeps it, and the agent's copy where ``policy`` names members
        (None: the agent's copy is upstream's). Never raises."""
        headers = list(headers)
        part = Part()
        copy: AgentCopy | None = None
        direction = "output"
        if status >= 300:  # an error: masked against its exception's shape where the model has it
            try:
                direction = self.error_direction(call, headers, body) if not streamed else None
            except Exception:  # noqa: BLE001 - detectors only
                direction = None
        for_agent = bool(agent and policy and direction is not None and not streamed)
        shared = _Shared() if for_agent else None  # a JSON body parsed once for both copies
        try:
            shapes, message, node, ov = self.plan(call, "output", policy, record=True)
            protocol = getattr(call, "protocol", None)
            part.headers = self._headers(headers, "response", shapes, message, node, ov, part.masked)
            if direction is None:  # an error the model does not describe: detectors only
                shapes = message = node = ov = None
            elif direction != "output":
                shapes, message, node, ov = self.plan(call, direction, policy, record=True)
            if for_agent and message is not None:
                shared.overlay = self.plan(call, direction, policy, record=False)[3]
            if streamed:
                part.note = "body streamed, not kept (its SHA-256 and size are)"
            elif body:
                self._body(part, "response", body, protocol, shapes, message, node, ov, content_type, policy, shared)
        except Exception as e:  # noqa: BLE001
            part = Part(headers=_safe_headers(headers), note=f"not masked: {_reason(e)}")
            shared = _Shared() if for_agent else None
        if for_agent:
            try:
                copy = self.agent_copy(call, headers=headers, body=body, policy=policy, content_type=content_type,
                                       shared=shared, direction=direction)
            except Exception as e:  # noqa: BLE001 - the agent gets no copy of what could not be masked
                part.note = "; ".join(filter(None, [part.note, f"agent's copy not masked: {_reason(e)}"]))
                copy = AgentCopy(withheld=_reason(e))
        if getattr(call, "service", None) == "sqs" and getattr(call, "operation", None) in SQS_DIGESTS:
            part, copy = sqs_digests(call.operation, part, copy)
        return part, copy

    def agent_copy(self, call: Any, *, headers: list[tuple[str, str]], body: bytes | None, policy: tuple[str, ...],
                   content_type: str = "", shared: _Shared | None = None, direction: str = "output") -> AgentCopy | None:
        """The agent's copy of a response, masked at the policy paths only (with AGENT_MARKER); None
        when nothing was. ``direction``: "output", or an error's (``error_direction``)."""
        with self._agents():
            return self._agent_copy(call, headers, body, policy, content_type, shared, direction)

    def _agent_copy(self, call: Any, headers: list[tuple[str, str]], body: bytes | None, policy: tuple[str, ...],
                    content_type: str, shared: _Shared | None, direction: str) -> AgentCopy | None:
        shapes, message, _, ov = self.plan(call, direction, policy, record=False)
        if ov is None:
            return None
        copy = AgentCopy()
        for name, value in headers:
            member = _header_member(message, name.lower())
            if member is None:
                continue
            child = ov.children.get(member[0])
            if member[1] is not None and child is not None and not child.mask:  # a header map: keys
                child = child.children.get(member[1]) or child.children.get("*")
            if child is not None and child.mask and child.when is None:
                copy.headers[name.lower()] = self.marker(value)
                copy.masked[("agent", member[0], "policy")] += 1
        if shared is not None and shared.done:  # masked with the record's copy, from one parse
            if shared.body is not None:
                copy.body = shared.body
                copy.masked.update(shared.masked)
        elif body and len(body) <= self.parse_limit:
            part = Part()
            protocol = getattr(call, "protocol", None)
            new = self._agent_body(part, body, protocol, shapes, message, ov, content_type)
            if new is not None:
                copy.body = new
                copy.masked.update({("agent",) + k[1:]: n for k, n in part.masked.items()})
        return copy if copy.headers or copy.body is not None else None

    # ------------------------------------------------------------------------------ bodies

    def _body(self, part: Part, which: str, body: bytes, protocol: str | None, shapes: ServiceShapes | None,
              message: Message | None, node: Node | None, ov: Overlay | None, content_type: str,
              policy: tuple[str, ...], shared: _Shared | None = None) -> None:
        if len(body) > self.parse_limit:
            part.note = f"body of {len(body)} bytes is over the {self.parse_limit}-byte masking limit, not kept"
            return
        kind = message.payload_kind if message else None
        if kind == "eventstream" or content_type.startswith(EVENT_STREAM_TYPE):
            part.note = "event-stream body not parsed, not kept"
            return
        if kind in ("stream", "blob", "string") and message is not None:
            self._payload(part, which, body, message, node, ov, content_type, policy)
            return
        fmt = _format(protocol, which, body, content_type)
        try:
            if fmt == "json":
                return self._json(part, which, body, shapes, message, node, ov, shared)
            if fmt == "xml":
                return self._xml(part, which, body, protocol, shapes, message, node, ov)
            if fmt == "form":
                return self._form(part, which, body, protocol, shapes, message, node, ov)
            if fmt == "cbor":
                return self._cbor(part, which, body, shapes, message, node, ov, _amz_cbor(content_type))
        except (Unmaskable, RecursionError) as e:  # cannot be masked in place: never kept unmasked
            part.masked.clear()
            if shared is not None:
                shared.done, shared.body = False, None
            part.note = f"{fmt.upper()} body not kept: it cannot be masked in place ({_reason(e)})"
            return
        except (ValueError, SyntaxError) as e:  # not what the protocol says: masked as text
            part.masked.clear()
            if shared is not None:
                shared.done, shared.body = False, None
            if node is not None or ov is not None:
                # the model (or policy) names members to mask, and text does not say where they are
                part.note = (f"not valid {fmt.upper()} ({_reason(e)}), not kept: it may hold members "
                             "the model marks sensitive")
                return
            part.note = f"not valid {fmt.upper()} ({_reason(e)}), masked as text"
        text = _text(body)
        if text is None:
            part.note = "binary body not kept"
            return
        masked, counts = self.mask_text(text, which)
        decoded = unquote_plus(masked) if ("%" in masked or "+" in masked) else masked
        if decoded != masked and detectors.suspicious(decoded) and detectors.find(decoded):
            # URL-encoded text hides what the detectors look for, and cannot be masked in place
            part.note = "; ".join(filter(None, [part.note, "URL-encoded text that holds a secret, not kept"]))
            return
        part.body = masked
        part.masked.update(counts)

    def _payload(self, part: Part, which: str, body: bytes, message: Message, node: Node | None,
                 ov: Overlay | None, content_type: str, policy: tuple[str, ...]) -> None:
        """A body that is one blob or string member: S3 object data, a Lambda payload, a policy."""
        member = message.payload
        child_node = node.members.get(member) if node else None
        child_ov = ov.children.get(member) if ov else None
        if message.payload_kind == "stream":
            named = child_ov is not None and child_ov.mask == "policy"
            if not named:
                part.note = "object data not kept (policy does not opt it into masking)"
                return
            if not OBJECT_TEXT_TYPES.match(content_type) or len(body) > self.object_cap:
                part.note = f"object data not masked (not text, or over {self.object_cap} bytes), not kept"
                return
            text = _text(body)
            if text is None:
                part.note = "object data is not UTF-8 text, not kept"
                return
            part.body, counts = self.mask_text(text, which, member)
            part.masked.update(counts)
            return
        target = (child_node.mask if child_node and child_node.mask else None) or (
            child_ov.mask if child_ov and child_ov.mask and child_ov.when is None else None)
        if target:
            part.body = self.marker(body)
            part.masked[(which, member, target)] += 1
            return
        text = _text(body)
        if text is None:
            part.note = "binary body not kept"
            return
        part.body, counts = self.mask_text(text, which, member)
        part.masked.update(counts)

    def mask_text(self, text: str, which: str = "text", path: str = "", name: str | None = None) -> tuple[str, Counter]:
        """Free text with what the detectors find masked."""
        counts: Counter = Counter()
        if not detectors.suspicious(text) and not (name and detectors.secret_name(name)):
            return text, counts
        findings = detectors.find(text, name)
        if not findings:
            return text, counts
        return self._replace(text, findings, counts, which, path), counts

    def template(self, text: str, counts: Counter, which: str, path: str) -> str:
        """A CloudFormation template with the secrets it holds by where they sit masked in place
        (``templates.secrets``), the rest as written; as it was where it does not parse."""
        found = templates.secrets(text)
        if not found:
            return text
        for s in found:
            counts[(which, f"{path}.{s.path}" if path else s.path, f"template-{s.where}")] += 1
        return templates.replace(text, found, self.marker)

    def _replace(self, text: str, findings: list[detectors.Finding], counts: Counter, which: str, path: str) -> str:
        out, last = [], 0
        for f in findings:
            out.append(text[last:f.start])
            out.append(self.marker(text[f.start:f.end]))
            last = f.end
            counts[(which, path, f.detector)] += 1
        out.append(text[last:])
        return "".join(out)

    # -- JSON

    def _json(self, part: Part, which: str, body: bytes, shapes: ServiceShapes | None, message: Message | None,
              node: Node | None, ov: Overlay | None, shared: _Shared | None = None) -> None:
        text = body.decode("utf-8")
        root, node, ov = _body_root(message, node, ov)
        agent_ov = _body_root(message, None, shared.overlay)[2] if shared is not None and shared.overlay else None
        suspect, by_name = detectors.hints(text, json=True)
        if node is None and ov is None and agent_ov is None and not by_name:
            part.body = text
            return
        data = json.loads(text)
        agent = None
        if agent_ov is not None:
            agent = _Tree(self, shapes, "agent", "json", shared.masked)
            with self._agents():
                agent.plan(data, root, None, agent_ov, (), None, None)
        walk = _Tree(self, shapes, which, "json", part.masked)
        if node is not None or ov is not None:
            walk.plan(data, root, node, ov, (), None, None)
        if by_name:
            walk.detect = suspect
            walk.scan(data, root, (), None, None)
        if shared is not None and agent_ov is not None:
            shared.done = True
            if agent.edits or agent.root is not _UNSET:
                shared.body = _dumps(agent.apply(data)).encode("utf-8")
                if walk.same_as(agent):
                    part.body = shared.body.decode("utf-8")
                    return
        if not walk.edits and walk.root is _UNSET:
            part.body = text
            return
        part.body = _dumps(walk.apply(data))

    def _agent_body(self, part: Part, body: bytes, protocol: str | None, shapes: ServiceShapes | None,
                    message: Message | None, ov: Overlay, content_type: str) -> bytes | None:
        kind = message.payload_kind if message else None
        if kind == "eventstream":
            raise Unmaskable("an event-stream body is not parsed")
        if kind in ("stream", "blob", "string"):
            child = ov.children.get(message.payload)
            if child is None or not child.mask or child.when is not None:
                return None
            if kind == "stream":  # policy opts S3 object text into the detectors
                if not OBJECT_TEXT_TYPES.match(content_type):
                    raise Unmaskable(f"the object is {content_type or 'of no type'}, not text the detectors read")
                if len(body) > self.object_cap:
                    raise Unmaskable(f"the object is over {self.object_cap} bytes, the most masked")
                text = _text(body)
                if text is None:
                    raise Unmaskable("the object's text does not decode")
                masked, counts = self.mask_text(text, "agent", message.payload)
                part.masked.update(counts)
                return masked.encode("utf-8") if counts else None
            part.masked[("agent", message.payload, "policy")] += 1
            return self.marker(body).encode("ascii")
        fmt = _format(protocol, "response", body, content_type)
        root, _, ov = _body_root(message, None, ov)
        if ov is None:
            return None
        if fmt == "json":
            data = json.loads(body)
            walk = _Tree(self, shapes, "agent", "json", part.masked)
            walk.plan(data, root, None, ov, (), None, None)
            return _dumps(walk.apply(data)).encode("utf-8") if walk.edits else None
        if fmt == "xml":
            tree = parse_xml(body)
            start = _xml_start(tree, protocol, message)
            if start is None:
                raise Unmaskable("the XML body has not the response's element")
            walk = _Xml(self, shapes, "agent", part.masked)
            walk.plan(start, root, None, ov, ())
            return walk.splice(body) if walk.spans else None
        if fmt == "cbor":
            millis = _amz_cbor(content_type)
            data = decode_cbor(body, millis)
            walk = _Tree(self, shapes, "agent", "cbor", part.masked)
            walk.plan(data, root, None, ov, (), None, None)
            return cbor_encode(walk.apply(data), millis) if walk.edits else None
        raise Unmaskable(f"a {content_type or 'untyped'} body agentgate does not parse")

    # -- XML

    def _xml(self, part: Part, which: str, body: bytes, protocol: str | None, shapes: ServiceShapes | None,
             message: Message | None, node: Node | None, ov: Overlay | None) -> None:
        text = body.decode("utf-8")
        root, node, ov = _body_root(message, node, ov)
        suspect, by_name = detectors.hints(text)
        template = _cloudformation(shapes) and "TemplateBody>" in text
        if node is None and ov is None and not by_name and not template:
            part.body = text
            return
        tree = parse_xml(body)
        walk = _Xml(self, shapes, which, part.masked)
        start = _xml_start(tree, protocol, message) if (node is not None or ov is not None) else None
        if start is not None:
            walk.plan(start, root, node, ov, ())
        if template and message is not None:
            walk.noecho_parameters(_xml_start(tree, protocol, message), root)
        if by_name or template:
            walk.detect = suspect
            walk.scan(tree, ())
        part.body = walk.splice(body).decode("utf-8") if walk.spans else text

    # -- form-encoded (query and ec2 requests)

    def _form(self, part: Part, which: str, body: bytes, protocol: str | None, shapes: ServiceShapes | None,
              message: Message | None, node: Node | None, ov: Overlay | None) -> None:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True)
        _no_secret_across_fields(text, pairs)
        values = self._form_pairs(pairs, protocol, shapes, message, node, ov, part.masked, which)
        if values is None:
            part.body = text
            return
        part.body = _form_text(values)

    def _form_pairs(self, pairs: list[tuple[str, str]], protocol: str | None, shapes: ServiceShapes | None,
                    message: Message | None, node: Node | None, ov: Overlay | None, counts: Counter,
                    which: str) -> list[tuple[str, str]] | None:
        """Query-protocol pairs with targets and secrets masked; None when nothing was."""
        walk = _Form(self, shapes, protocol == "ec2", which, counts, pairs)
        tree = None
        if message is not None and message.top and (node is not None or ov is not None):
            tree = walk.tree()
            walk.plan(tree, message.top, node, ov, ())
        if message is not None and message.top and _cloudformation(shapes) and any(
                _form_name(k) == "TemplateBody" for k, _ in pairs):
            walk.noecho_parameters(tree or walk.tree(), message.top)
        keys: dict[int, str] = {}  # a key that holds a secret (a body of another format, read as a form)
        names = _form_names(pairs)
        for i, (key, value) in enumerate(pairs):
            if key in ("Action", "Version"):
                continue
            masked, found = self.mask_text(key, which, "*")
            if found:
                keys[i] = masked
                counts.update(found)
            if i in walk.edits:
                continue
            if _form_name(key) in templates.MEMBERS and _cloudformation(shapes):
                found = Counter()
                masked = self.template(value, found, which, _form_path(key))
                masked, more = self.mask_text(masked, which, _form_path(key), names.get(i) or _form_name(key))
                found.update(more)
            else:
                masked, found = self.mask_text(value, which, _form_path(key), names.get(i) or _form_name(key))
            if found:
                walk.edits[i] = masked
                counts.update(found)
        if not walk.edits and not keys:
            return None
        return [(keys.get(i, k), walk.edits.get(i, v)) for i, (k, v) in enumerate(pairs)]

    def _query(self, query: str, protocol: str | None, shapes: ServiceShapes | None, message: Message | None,
               node: Node | None, ov: Overlay | None, counts: Counter) -> str | None:
        """The URL's query string, masked; None when nothing in it was."""
        pairs = parse_qsl(query, keep_blank_values=True)
        if protocol in ("query", "ec2"):
            values = self._form_pairs(pairs, protocol, shapes, message, node, ov, counts, "request.query")
        else:
            values, changed = [], False
            for key, value in pairs:
                member = message.query.get(key) if message else None
                target = _target(node, ov, member) if member else None
                if target and value:
                    values.append((key, self.marker(value)))
                    counts[("request.query", member, target)] += 1
                    changed = True
                    continue
                masked, found = self.mask_text(value, "request.query", member or _form_path(key), member or key)
                counts.update(found)
                changed = changed or bool(found)
                masked_key, found = self.mask_text(key, "request.query", "*")
                counts.update(found)
                changed = changed or bool(found)
                values.append((masked_key, masked))
            values = values if changed else None
        if values is None:
            return None
        return _form_text(values)

    # -- CBOR

    def _cbor(self, part: Part, which: str, body: bytes, shapes: ServiceShapes | None, message: Message | None,
              node: Node | None, ov: Overlay | None, millis: bool = False) -> None:
        data = decode_cbor(body, millis)
        root, node, ov = _body_root(message, node, ov)
        walk = _Tree(self, shapes, which, "cbor", part.masked)
        if node is not None or ov is not None:
            walk.plan(data, root, node, ov, (), None, None)
        walk.scan(data, root, (), None, None)
        part.body = _dumps(_jsonable(walk.apply(data) if walk.edits else data))
        part.note = "CBOR body kept as JSON"

    # -- headers

    def _headers(self, headers: Iterable[tuple[str, str]], which: str, shapes: ServiceShapes | None,
                 message: Message | None, node: Node | None, ov: Overlay | None, counts: Counter) -> list[tuple[str, str]]:
        out = []
        part = f"{which}.headers"
        for name, value in headers:
            lower = name.lower()
            if lower in REDACTED_HEADERS:
                continue
            member = _header_member(message, lower) if message else None
            if member is not None:
                target = _target(node, ov, member[0])
                if target is None and member[1] is not None and ov is not None and member[0] in ov.children:
                    keyed = ov.children[member[0]]
                    child = keyed.children.get(member[1]) or keyed.children.get("*")
                    target = child.mask if child is not None and child.when is None else None
                if target is None and member[1] is not None and node is not None and member[0] in node.members:
                    target = node.members[member[0]].mask or (node.members[member[0]].value.mask
                                                              if node.members[member[0]].value else None)
                if target and value:
                    out.append((name, self.marker(value)))
                    counts[(part, member[0] if member[1] is None else f"{member[0]}.*", target)] += 1
                    continue
            if lower in PLAIN_HEADERS or lower.startswith("x-amz-checksum-"):
                out.append((name, value))
                continue
            masked, found = self.mask_text(value, part, lower, lower)
            counts.update(found)
            out.append((name, masked))
        return out


def checksum_headers(header_names: Iterable[str], raw: bytes) -> dict[str, str | None]:
    """Header changes that keep a rewritten response valid for SDKs: DynamoDB's ``x-amz-crc32``
    recomputed over the body as sent; checksums that would no longer match dropped (S3's
    ``x-amz-checksum-*``, ``Content-MD5``)."""
    changes: dict[str, str | None] = {}
    for name in header_names:
        lower = name.lower()
        if lower == "x-amz-crc32":
            changes[lower] = str(zlib.crc32(raw) & 0xFFFFFFFF)
        elif (lower.startswith("x-amz-checksum-") and lower != "x-amz-checksum-type") or lower == "content-md5":
            changes[lower] = None
    return changes


# ---------------------------------------------------------------------------------------------
# Walking parsed bodies


def _target(node: Node | None, ov: Overlay | None, member: str) -> str | None:
    """What masks ``member`` of a structure outright, if anything (conditions are not checked)."""
    child = node.members.get(member) if node else None
    if child is not None and child.mask:
        return child.mask
    child_ov = ov.children.get(member) if ov else None
    if child_ov is not None and child_ov.mask and child_ov.when is None:
        return child_ov.mask
    return None


def _header_member(message: Message | None, lower: str) -> tuple[str, str | None] | None:
    """(member, map key) for a header bound to a member (``x-amz-meta-k`` -> ("Metadata", "k"))."""
    if message is None:
        return None
    member = message.headers.get(lower)
    if member is not None:
        return member, None
    for prefix, name in message.header_maps:
        if lower.startswith(prefix) and len(lower) > len(prefix):
            return name, lower[len(prefix):]
    return None


def _body_root(message: Message | None, node: Node | None, ov: Overlay | None) -> tuple:
    """The shape the body holds, and the plans for it: the payload member's when there is one."""
    if message is None:
        return None, None, None
    if message.payload and message.payload_kind == "structure":
        child_ov = ov.children.get(message.payload) if ov else None
        return message.payload_shape, (node.members.get(message.payload) if node else None), child_ov
    return message.top, node, ov


class _Shared:
    """The agent's copy of a JSON response, made from the parse that made the record's."""

    __slots__ = ("overlay", "done", "body", "masked")

    def __init__(self) -> None:
        self.overlay: Overlay | None = None
        self.done = False  # the body was handled with the record's
        self.body: bytes | None = None  # the agent's body, when something in it was masked
        self.masked: Counter = Counter()


class _Tree:
    """Masks a decoded JSON (or CBOR, or parameters) tree. Edits are collected as (container,
    key, new value) without touching the tree, so one parse serves several copies."""

    def __init__(self, masker: Masker, shapes: ServiceShapes | None, which: str, mode: str, counts: Counter,
                 by_member: bool = False) -> None:
        self.m = masker
        self.shapes = shapes
        self.which = which
        self.mode = mode  # json | cbor | params
        self.counts = counts
        self.by_member = by_member or mode == "cbor"
        self.edits: list[tuple[Any, Any, Any]] = []
        self.covered: set[tuple[int, Any]] = set()
        self.root: Any = _UNSET
        self.detect = True  # every detector; False: only values named as secrets (no detector's hint in the body)

    def _edit(self, container: Any, key: Any, value: Any) -> None:
        if container is None:
            self.root = value
        else:
            self.edits.append((container, key, value))
            self.covered.add((id(container), key))

    def same_as(self, other: "_Tree") -> bool:
        """Do both make the same edits (so one copy serves both)?"""
        if self.root is not _UNSET or other.root is not _UNSET or len(self.edits) != len(other.edits):
            return False
        theirs = {(id(c), k): v for c, k, v in other.edits}
        return all(theirs.get((id(c), k), _UNSET) == v for c, k, v in self.edits)

    def apply(self, data: Any) -> Any:
        for container, key, value in self.edits:
            container[key] = value
        return data if self.root is _UNSET else self.root

    def apply_to(self, original: Any, copy: Any) -> None:
        """Apply the edits (made against ``original``) to a deep copy of it."""
        index: dict[int, Any] = {}
        _pair_ids(original, copy, index)
        for container, key, value in self.edits:
            index[id(container)][key] = value

    def _members(self, shape: str) -> dict[str, tuple[str, str]]:
        return self.shapes.member_names(shape) if self.by_member else self.shapes.json_members(shape)

    def _wire(self, shape: str) -> dict[str, str]:
        return self.shapes.same_names(shape) if self.by_member else self.shapes.json_wire(shape)

    # -- the plan: sensitive members, curated targets, policy paths

    def plan(self, value: Any, shape: str | None, node: Node | None, ov: Overlay | None, path: tuple,
             container: Any, key: Any, depth: int = 0) -> None:
        if value is None:
            return
        if depth > MAX_DEPTH:
            raise TooDeep()
        label = node.mask if node is not None and node.mask else (ov.mask if ov is not None and ov.mask else None)
        if label:
            new, n = self.masked(value, shape, keys=label == "sensitive", b64=ov is not None and ov.b64)
            if n:
                self._edit(container, key, new)
                self.counts[(self.which, _render(path), label)] += n
            return
        kind = self.shapes.type_of(shape) if self.shapes else None
        if isinstance(value, list):
            item = self.shapes.shapes[shape]["member"]["shape"] if kind == "list" else None
            child = node.item if node is not None else None
            for i, v in enumerate(value):
                self.plan(v, item, child, ov, _join(path, "[]"), value, i, depth + 1)
            return
        if not isinstance(value, dict):
            return
        if kind == "structure" and not self.shapes.shapes[shape].get("document"):
            members = self.shapes.shapes[shape].get("members", {})
            wire = self._wire(shape)
            names = set(node.members) if node is not None else set()
            if ov is not None:
                names.update(ov.children)
            for member in names:
                ref = members.get(member)
                w = wire.get(member)
                if ref is None or w not in value:
                    continue
                child_ov = ov.children.get(member) if ov is not None else None
                if child_ov is not None and child_ov.when is not None and not self._when(value, wire, child_ov.when):
                    child_ov = None if not child_ov.children else _without_mask(child_ov)
                child = node.members.get(member) if node is not None else None
                if child is None and child_ov is None:
                    continue
                self.plan(value[w], ref["shape"], child, child_ov, _join(path, member), value, w, depth + 1)
            return
        # a map (or a document): keys a policy names, or every key
        vshape = self.shapes.shapes[shape]["value"]["shape"] if kind == "map" else None
        child = node.value if node is not None else None
        if child is None and ov is not None and "*" not in ov.children:
            for k, child_ov in ov.children.items():
                if k in value:
                    self.plan(value[k], vshape, None, child_ov, _join(path, k), value, k, depth + 1)
            return
        for k, v in value.items():
            child_ov, step = _map_step(ov, k)
            if child is None and child_ov is None:
                continue
            self.plan(v, vshape, child, child_ov, _join(path, step), value, k, depth + 1)

    def _when(self, value: dict, wire: dict[str, str], when: tuple[str, str]) -> bool:
        sibling, expected = when
        return value.get(wire.get(sibling, sibling)) == expected

    def masked(self, value: Any, shape: str | None, keys: bool = False, depth: int = 0,
               b64: bool = False) -> tuple[Any, int]:
        """A copy of ``value`` with every leaf masked, keeping types (and keys, unless their shape is
        sensitive and ``keys``); ``b64``: a string holding base64 gets a base64 marker."""
        m = self.m
        if depth > MAX_DEPTH:
            raise TooDeep()
        if isinstance(value, str):
            # a value that looks like a marker is masked like any other: an agent that sends one it was
            # given (as a new secret's value, say) must not have the record vouch for the secret behind it
            kind = self.shapes.type_of(shape) if self.shapes else None
            if b64 or (kind == "blob" and self.mode != "cbor"):
                return m.blob_marker(_b64decode(value)), 1
            if kind == "timestamp":
                return EPOCH_TEXT, 1
            return m.marker(value), 1
        if isinstance(value, bool):
            return False, 1
        if isinstance(value, int):
            return 0, 1
        if isinstance(value, float):
            return 0.0, 1
        if isinstance(value, (bytes, bytearray)):
            return m.marker(bytes(value)).encode("ascii"), 1
        if isinstance(value, datetime.datetime):
            return datetime.datetime.fromtimestamp(0, datetime.timezone.utc), 1
        shapes = self.shapes
        kind = shapes.type_of(shape) if shapes else None
        if isinstance(value, dict) and shapes is not None and (shapes.name, shape) in WHOLE_VALUES:
            return {"S": m.marker(_attribute_bytes(value))}, 1
        if isinstance(value, list):
            item = shapes.shapes[shape]["member"]["shape"] if kind == "list" else None
            out, n = [], 0
            for v in value:
                new, k = self.masked(v, item, keys, depth + 1)
                out.append(new)
                n += k
            return out, n
        if isinstance(value, dict):
            out, n = {}, 0
            if kind == "structure" and not shapes.shapes[shape].get("document"):
                members = self._members(shape)
                for k, v in value.items():
                    found = members.get(k)
                    out[k], c = self.masked(v, found[1] if found else None, keys, depth + 1)
                    n += c
                return out, n
            vshape = shapes.shapes[shape]["value"]["shape"] if kind == "map" else None
            mask_keys = keys and kind == "map" and shapes.key_sensitive(shape)
            for k, v in value.items():
                new, c = self.masked(v, vshape, keys, depth + 1)
                if mask_keys:
                    k = m.marker(k)
                    c += 1
                out[k] = new
                n += c
            return out, n
        return value, 0

    # -- the values given to a template's NoEcho parameters beside it

    def noecho_parameters(self, value: Any, top: str | None) -> None:
        """``{ParameterKey, ParameterValue}`` items whose key names a parameter the template beside
        them marks NoEcho (``templates.noecho``): their values masked (parameters, by member name)."""
        for steps, member in self.shapes.templated_parameters(top) if self.by_member else ():
            for holder, path in _dicts_at(value, steps, ()):
                template, items = holder.get("TemplateBody"), holder.get(member)
                if not isinstance(template, str) or not isinstance(items, list) or not items:
                    continue
                names = templates.noecho(template)
                for item in items if names else ():
                    for vm in NOECHO_VALUES if isinstance(item, dict) else ():
                        if _noecho_value(names, item.get("ParameterKey"), item.get(vm)):
                            self._edit(item, vm, self.m.marker(item[vm]))
                            self.counts[(self.which, _render(_join(_join(_join(path, member), "[]"), vm)),
                                         "template-noecho")] += 1

    # -- detectors over every other string

    def scan(self, value: Any, shape: str | None, path: tuple, container: Any, key: Any, name: str | None = None,
             depth: int = 0, by_name: bool = True) -> None:
        """Detectors over every string not masked yet; each goes by its ``name`` (``by_name``: that
        name may say it is a secret; not for a label of the URL's path, which names a resource)."""
        if depth > MAX_DEPTH:
            raise TooDeep()
        if container is not None and (id(container), key) in self.covered:
            return
        if container is None and self.root is not _UNSET:
            return
        if isinstance(value, str):
            if len(value) >= 8 or name:
                spec = self.shapes.shapes.get(shape) if self.shapes is not None and shape else None
                if spec is not None and spec["type"] == "blob":
                    return
                by_name = by_name and (spec is None or "enum" not in spec)  # an enum's value is a setting
                original = value
                if shape == "TemplateBody" and _cloudformation(self.shapes):
                    value = self.m.template(value, self.counts, self.which, _render(path))
                findings = (detectors.find(value, name, by_name) if self.detect
                            else detectors.named(value, name) if by_name else None)
                if findings:
                    value = self.m._replace(value, findings, self.counts, self.which, _render(path))
                if value is not original:
                    self._edit(container, key, value)
            return
        shapes = self.shapes
        kind = shapes.type_of(shape) if shapes else None
        if isinstance(value, list):
            item = shapes.shapes[shape]["member"]["shape"] if kind == "list" else None
            step = _join(path, "[]")
            for i, v in enumerate(value):
                self.scan(v, item, step, value, i, name, depth + 1, by_name)
            return
        if not isinstance(value, dict):
            return
        for k in value if self.detect else ():
            if isinstance(k, str) and len(k) >= 8 and detectors.find(k):
                raise Unmaskable("an object key holds what looks like a secret")
        # {Name, Value}: the value member goes by the name its sibling gives it; a message
        # attribute's StringValue by its entry's key
        value_member, value_name = detectors.named_value(value) or detectors.named_attribute(value, name) or (None, None)
        if kind == "structure" and not shapes.shapes[shape].get("document"):
            members = self._members(shape)
            refs = shapes.shapes[shape].get("members", {})
            for k, v in value.items():
                found = members.get(k)
                if found is not None:
                    self.scan(v, found[1], _join(path, found[0]), value, k,
                              value_name if k == value_member else found[0], depth + 1,
                              refs[found[0]].get("location") != "uri")
                else:
                    self.scan(v, None, _join(path, _key_step(k)), value, k, value_name if k == value_member else k,
                              depth + 1)
            return
        if kind == "map" or (kind == "structure"):
            vshape = shapes.shapes[shape]["value"]["shape"] if kind == "map" else None
            step = _join(path, "*")
            for k, v in value.items():
                self.scan(v, vshape, step, value, k, k, depth + 1)
            return
        for k, v in value.items():  # no model: an error body, or an unclassified call
            self.scan(v, None, _join(path, _key_step(k)), value, k, value_name if k == value_member else k,
                      depth + 1)


def _dicts_at(value: Any, steps: tuple[str, ...], path: tuple) -> Iterator[tuple[dict, tuple]]:
    """The objects at member path ``steps`` (lists crossed) below ``value``, with their paths."""
    if isinstance(value, list):
        for item in value:
            yield from _dicts_at(item, steps, _join(path, "[]"))
    elif isinstance(value, dict):
        if not steps:
            yield value, path
        else:
            yield from _dicts_at(value.get(steps[0]), steps[1:], _join(path, steps[0]))


_UNSET = object()
_KEY_STEP = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _key_step(key: Any) -> str:
    """A JSON key without a model, as a path step: a name, or ``*`` for what may be data."""
    return key if isinstance(key, str) and _KEY_STEP.match(key) else "*"


def _without_mask(ov: Overlay) -> Overlay:
    copy = Overlay()
    copy.children = ov.children
    return copy


def _pair_ids(original: Any, copy: Any, index: dict[int, Any]) -> None:
    if isinstance(original, dict):
        index[id(original)] = copy
        for k, v in original.items():
            _pair_ids(v, copy[k], index)
    elif isinstance(original, list):
        index[id(original)] = copy
        for a, b in zip(original, copy):
            _pair_ids(a, b, index)


def _strings(value: Any, depth: int = 0, keys: bool = False) -> Iterable[str]:
    """Every string value in a tree of dicts and lists (``keys``: and every key)."""
    if depth > MAX_DEPTH:
        raise TooDeep()
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if keys and isinstance(k, str):
                yield k
            yield from _strings(v, depth + 1, keys)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, depth + 1, keys)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _attribute_bytes(value: dict) -> bytes:
    """What a DynamoDB attribute value's fingerprint is taken over: its scalar, or its JSON."""
    if len(value) == 1:
        (kind, scalar), = value.items()
        if kind in ("S", "N") and isinstance(scalar, str):
            return scalar.encode("utf-8")
        if kind == "B":
            return scalar if isinstance(scalar, bytes) else _b64decode(scalar)
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return text.encode("utf-8", "surrogatepass")


# -- XML


class Elem:
    """An XML element with where it sits in the raw bytes, for masking by splicing."""

    __slots__ = ("tag", "start", "end", "children", "parts", "attrib")

    def __init__(self, tag: str, start: int, attrib: dict) -> None:
        self.tag = tag
        self.start = start  # index of "<"
        self.end = -1  # index of "</", or just after "/>"
        self.children: list[Elem] = []
        self.parts: list[str] = []
        self.attrib = attrib

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _XmlBuilder:
    def __init__(self) -> None:
        self.stack: list[Elem] = []
        self.root: Elem | None = None
        self.parser: Any = None

    def start(self, tag: str, attrib: dict) -> None:
        if len(self.stack) >= MAX_DEPTH:  # stop reading at once: it could not be walked
            raise TooDeep()
        elem = Elem(tag.rpartition("}")[2], self.parser.parser.CurrentByteIndex, attrib)
        if self.stack:
            self.stack[-1].children.append(elem)
        else:
            self.root = elem
        self.stack.append(elem)

    def end(self, tag: str) -> None:
        self.stack.pop().end = self.parser.parser.CurrentByteIndex

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1].parts.append(text)

    def close(self) -> Elem | None:
        return self.root


def parse_xml(body: bytes) -> Elem:
    """An XML body as a tree of Elems; DTDs, entity declarations and external references are refused."""
    import defusedxml.ElementTree

    builder = _XmlBuilder()
    parser = defusedxml.ElementTree.DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True,
                                                     forbid_external=True)
    builder.parser = parser
    parser.feed(body)
    root = parser.close()
    if root is None:
        raise ValueError("no XML root element")
    return root


def _xml_start(root: Elem, protocol: str | None, message: Message | None) -> Elem | None:
    """The element the output shape starts at: the result wrapper (query), else the root."""
    if message is not None and message.wrapper:
        return next((c for c in root.children if c.tag == message.wrapper), None)
    return root


def _content(raw: bytes, elem: Elem) -> tuple[int, int] | None:
    """The span of a leaf element's content; None for an empty element (``<a/>``)."""
    if raw[elem.end:elem.end + 2] != b"</":
        return None
    i, quote_char = elem.start + 1, None
    while i < elem.end:
        c = raw[i]
        if quote_char is not None:
            if c == quote_char:
                quote_char = None
        elif c in (0x22, 0x27):
            quote_char = c
        elif c == 0x3E:  # ">"
            return i + 1, elem.end
        i += 1
    return None


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Xml:
    """Masks an XML body: the replacements are spans of the raw bytes."""

    WRAPPER_TAGS = ("member", "item", "entry")

    def __init__(self, masker: Masker, shapes: ServiceShapes | None, which: str, counts: Counter) -> None:
        self.m = masker
        self.shapes = shapes
        self.which = which
        self.counts = counts
        self.spans: dict[int, tuple[Elem, str]] = {}  # id(elem) -> (elem, new text)
        self.detect = True  # every detector; False: only values named as secrets

    def splice(self, raw: bytes) -> bytes:
        edits = []
        for elem, text in self.spans.values():
            span = _content(raw, elem)
            if span is not None:
                edits.append((span[0], span[1], _xml_escape(text).encode("utf-8")))
        out, last = [], 0
        for start, end, new in sorted(edits):
            if start < last:
                continue
            out.append(raw[last:start])
            out.append(new)
            last = end
        out.append(raw[last:])
        return b"".join(out)

    def plan(self, elem: Elem, shape: str | None, node: Node | None, ov: Overlay | None, path: tuple,
             depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise TooDeep()
        label = node.mask if node is not None and node.mask else (ov.mask if ov is not None and ov.mask else None)
        if label:
            n = self.masked(elem, shape, keys=label == "sensitive", b64=ov is not None and ov.b64)
            if n:
                self.counts[(self.which, _render(path), label)] += n
            return
        shapes = self.shapes
        kind = shapes.type_of(shape) if shapes else None
        if kind == "structure":
            self._structure(elem, shape, node, ov, path, depth)
        elif kind == "list":
            item_tag = shapes.shapes[shape]["member"].get("locationName", "member")
            item = shapes.shapes[shape]["member"]["shape"]
            for child in elem.children:
                if child.tag == item_tag:
                    self.plan(child, item, node.item if node else None, ov, _join(path, "[]"), depth + 1)
        elif kind == "map":
            self._map(elem.children, shape, node, ov, path, depth, flattened=False)

    def _structure(self, elem: Elem, shape: str, node: Node | None, ov: Overlay | None, path: tuple, depth: int) -> None:
        shapes = self.shapes
        members = shapes.shapes[shape].get("members", {})
        wire = shapes.xml_wire(shape)
        by_tag: dict[str, list[Elem]] = {}
        for child in elem.children:
            by_tag.setdefault(child.tag, []).append(child)
        names = set(node.members) if node is not None else set()
        if ov is not None:
            names.update(ov.children)
        for member in names:
            if member not in members or member not in wire:
                continue
            ref = members[member]
            if ref.get("location"):
                continue
            tag, flattened = wire[member]
            found = by_tag.get(tag)
            if not found:
                continue
            child_ov = ov.children.get(member) if ov is not None else None
            if child_ov is not None and child_ov.when is not None:
                sibling, expected = child_ov.when
                stag = wire.get(sibling, (sibling, False))[0]
                if not any(s.text == expected for s in by_tag.get(stag, ())):
                    child_ov = None if not child_ov.children else _without_mask(child_ov)
            child = node.members.get(member) if node is not None else None
            if child is None and child_ov is None:
                continue
            target = ref["shape"]
            kind = shapes.type_of(target)
            step = _join(path, member)
            if flattened and kind == "list":
                label = child.mask if child is not None and child.mask else (
                    child_ov.mask if child_ov is not None and child_ov.mask else None)
                item = shapes.shapes[target]["member"]["shape"]
                for e in found:
                    if label:
                        n = self.masked(e, item, keys=label == "sensitive")
                        self.counts[(self.which, _render(step), label)] += n
                    else:
                        self.plan(e, item, child.item if child else None, child_ov, _join(step, "[]"), depth + 1)
            elif flattened and kind == "map":
                self._map(found, target, child, child_ov, step, depth + 1, flattened=True)
            else:
                self.plan(found[0], target, child, child_ov, step, depth + 1)

    def _map(self, elems: list[Elem], shape: str, node: Node | None, ov: Overlay | None, path: tuple, depth: int,
             flattened: bool) -> None:
        shapes = self.shapes
        spec = shapes.shapes[shape]
        key_tag = spec["key"].get("locationName", "key")
        value_tag = spec["value"].get("locationName", "value")
        entries = elems if flattened else [e for e in elems if e.tag == "entry"]
        label = node.mask if node is not None and node.mask else (ov.mask if ov is not None and ov.mask else None)
        child = node.value if node is not None else None
        for entry in entries:
            parts = {c.tag: c for c in entry.children}
            if key_tag not in parts or value_tag not in parts:
                continue
            if label:
                n = self.masked(parts[value_tag], spec["value"]["shape"], keys=label == "sensitive")
                if label == "sensitive" and shapes.key_sensitive(shape):
                    n += self.masked(parts[key_tag], spec["key"]["shape"])
                self.counts[(self.which, _render(path), label)] += n
                continue
            key = parts[key_tag].text
            child_ov, step = _map_step(ov, key)
            if child is None and child_ov is None:
                continue
            self.plan(parts[value_tag], spec["value"]["shape"], child, child_ov, _join(path, step), depth + 1)

    def masked(self, elem: Elem, shape: str | None, keys: bool = False, depth: int = 0, b64: bool = False) -> int:
        """Mask every leaf below ``elem``, keeping each leaf's type; how many were masked."""
        if depth > MAX_DEPTH:
            raise TooDeep()
        if not elem.children:
            text = elem.text
            if not text or id(elem) in self.spans:
                return 1 if id(elem) in self.spans else 0
            kind = self.shapes.type_of(shape) if self.shapes else None
            m = self.m
            if kind == "blob" or b64:
                new = m.blob_marker(_b64decode(text.strip()))
            elif kind in ("integer", "long", "float", "double"):
                new = "0"
            elif kind == "boolean":
                new = "false"
            elif kind == "timestamp":
                new = EPOCH_TEXT
            else:
                new = m.marker(text)
            self.spans[id(elem)] = (elem, new)
            return 1
        shapes = self.shapes
        kind = shapes.type_of(shape) if shapes else None
        n = 0
        if kind == "structure":
            wire = {tag: member for member, (tag, _) in shapes.xml_wire(shape).items()}
            members = shapes.shapes[shape].get("members", {})
            for child in elem.children:
                member = wire.get(child.tag)
                target = members[member]["shape"] if member else None
                if target and shapes.type_of(target) == "list" and shapes.xml_wire(shape)[member][1]:
                    target = shapes.shapes[target]["member"]["shape"]
                n += self.masked(child, target, keys, depth + 1)
        elif kind == "list":
            item = shapes.shapes[shape]["member"]["shape"]
            for child in elem.children:
                n += self.masked(child, item, keys, depth + 1)
        elif kind == "map":
            spec = shapes.shapes[shape]
            key_tag = spec["key"].get("locationName", "key")
            mask_keys = keys and shapes.key_sensitive(shape)
            for entry in elem.children:
                for part in entry.children:
                    if part.tag == key_tag:
                        if mask_keys:
                            n += self.masked(part, spec["key"]["shape"], keys, depth + 1)
                    else:
                        n += self.masked(part, spec["value"]["shape"], keys, depth + 1)
        else:
            for child in elem.children:
                n += self.masked(child, None, keys, depth + 1)
        return n

    def noecho_parameters(self, start: Elem | None, top: str | None) -> None:
        """``{ParameterKey, ParameterValue}`` items whose key names a parameter the template beside
        them marks NoEcho (``templates.noecho``): their values masked (DescribeStackSet's)."""
        for steps, member in self.shapes.templated_parameters(top) if start is not None else ():
            for elem, shape, path in self._structures(start, top, steps, ()):
                wire = self.shapes.xml_wire(shape)
                children = {c.tag: c for c in elem.children}
                template = children.get(wire["TemplateBody"][0])
                if template is None or template.children or not template.text:
                    continue
                names = templates.noecho(template.text)
                if not names:
                    continue
                tag, flattened = wire[member]
                items = ([c for c in elem.children if c.tag == tag] if flattened
                         else [c for c in children[tag].children] if tag in children else [])
                for item in items:
                    parts = {c.tag: c for c in item.children if not c.children}
                    key = parts["ParameterKey"].text if "ParameterKey" in parts else None
                    for vm in NOECHO_VALUES:
                        value = parts.get(vm)
                        if value is not None and id(value) not in self.spans and _noecho_value(names, key, value.text):
                            self.spans[id(value)] = (value, self.m.marker(value.text))
                            self.counts[(self.which, _render(_join(_join(_join(path, member), "[]"), vm)),
                                         "template-noecho")] += 1

    def _structures(self, elem: Elem, shape: str, steps: tuple[str, ...], path: tuple) -> Iterator[tuple[Elem, str, tuple]]:
        """The elements of the structures at member path ``steps`` (lists crossed) below ``elem``."""
        spec = self.shapes.shapes[shape]
        if spec["type"] == "list":
            item_tag = spec["member"].get("locationName", "member")
            for child in elem.children:
                if child.tag == item_tag:
                    yield from self._structures(child, spec["member"]["shape"], steps, _join(path, "[]"))
            return
        if spec["type"] != "structure":
            return
        if not steps:
            yield elem, shape, path
            return
        tag, flattened = self.shapes.xml_wire(shape)[steps[0]]
        target = spec["members"][steps[0]]["shape"]
        for child in elem.children:
            if child.tag == tag:
                if flattened:  # each element is an item
                    item = self.shapes.shapes[target]["member"]["shape"]
                    yield from self._structures(child, item, steps[1:], _join(_join(path, steps[0]), "[]"))
                else:
                    yield from self._structures(child, target, steps[1:], _join(path, steps[0]))
                    break

    def scan(self, elem: Elem, path: tuple, depth: int = 0, name: str | None = None) -> None:
        """Detectors over every leaf's text (paths from element names, list items as ``[]``); a
        leaf goes by its element's name, a list item by its list's, the value of a ``{Name,
        Value}`` pair or a map entry by the name beside it."""
        if depth > MAX_DEPTH:
            raise TooDeep()
        if id(elem) in self.spans:
            return
        name = name or elem.tag
        for attribute, value in elem.attrib.items() if self.detect else ():
            if len(value) >= 8 and detectors.find(value, attribute, by_name=False):
                raise Unmaskable(f"an attribute of <{elem.tag}> holds what looks like a secret")
        if not elem.children:
            text = original = elem.text
            if text:
                if elem.tag in templates.MEMBERS and _cloudformation(self.shapes):
                    text = self.m.template(text, self.counts, self.which, _render(path))
                findings = detectors.find(text, name) if self.detect else detectors.named(text, name)
                if findings:
                    text = self.m._replace(text, findings, self.counts, self.which, _render(path))
                if text is not original:
                    self.spans[id(elem)] = (elem, text)
            return
        text = elem.text  # text beside child elements (mixed content)
        if self.detect and len(text.strip()) >= 8 and detectors.find(text, elem.tag, by_name=False):
            raise Unmaskable(f"text beside the elements in <{elem.tag}> holds what looks like a secret")
        value_member, value_name = detectors.named_value(
            {c.tag: c.text for c in elem.children if not c.children}) or (None, None)
        for child in elem.children:
            wrapped = child.tag in self.WRAPPER_TAGS
            self.scan(child, _join(path, "[]" if wrapped else child.tag), depth + 1,
                      value_name if child.tag == value_member else name if wrapped else None)


# -- form-encoded requests


def _cloudformation(shapes: ServiceShapes | None) -> bool:
    return shapes is not None and shapes.name == "cloudformation"


def _templates(shapes: ServiceShapes | None, top: str | None) -> bool:
    """Can a CloudFormation call's parameters carry a template (read by ``Masker.template``), at
    the top (``CreateStack``) or deeper (``CreateStackRefactor``'s ``StackDefinitions[]``)?"""
    return _cloudformation(shapes) and shapes.reaches(top, "TemplateBody")


NOECHO_VALUES = ("ParameterValue", "ResolvedValue")  # a parameter's value, as given and as resolved


def _noecho_value(names: frozenset[str], key: Any, value: Any) -> bool:
    """Is ``value``, given to the parameter ``key`` beside a template whose NoEcho parameters are
    ``names``, a secret? Not when empty, AWS's ``****``, or a ``{{resolve:...}}`` reference."""
    return (key in names and isinstance(value, str) and value != "" and value.strip("*") != ""
            and "{{resolve:" not in value)


def _form_text(pairs: Iterable[tuple[str, str]]) -> str:
    """Pairs as a form, markers left readable."""
    return "&".join(f"{quote(k, safe='-_.~:')}={quote(v, safe='-_.~:')}" for k, v in pairs)


def _no_secret_across_fields(text: str, pairs: list[tuple[str, str]]) -> None:
    """Raise Unmaskable when a secret in the form spans several fields (a body of another format cut
    at its & and =): masked field by field, its pieces would pass."""
    decoded = unquote_plus(text)
    if not detectors.suspicious(decoded):
        return
    fields = [part for pair in pairs for part in pair]
    for finding in detectors.find(decoded):
        secret = decoded[finding.start:finding.end]
        if not any(secret in field for field in fields):
            raise Unmaskable("a secret spans several form fields")


def _form_path(key: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", "[]", key)


def _form_name(key: str) -> str:
    """The name a form value goes by: its member's (``Users.member.1.Password``), or its list's for
    an item (``Passwords.member.1``)."""
    for part in reversed(key.split(".")):
        if not part.isdigit() and part not in ("member", "item", "entry"):
            return part
    return key


def _form_names(pairs: list[tuple[str, str]]) -> dict[int, str]:
    """Pair index -> the name the value goes by, for the values of ``{Name, Value}`` pairs and map
    entries (``OptionSettings.member.1.OptionName``/``.Value``, ``Attributes.entry.1.key``/``.value``)
    whose names say they are secrets."""
    if not detectors.names_secret("\n".join(v for pair in pairs for v in pair)):
        return {}
    groups: dict[str, dict[str, str]] = {}
    where: dict[tuple[str, str], int] = {}
    for i, (key, value) in enumerate(pairs):
        prefix, _, leaf = key.rpartition(".")
        if prefix:
            groups.setdefault(prefix, {})[leaf] = value
            where[(prefix, leaf)] = i
    names = {}
    for prefix, members in groups.items():
        found = detectors.named_value(members) if len(members) > 1 else None
        if found is not None:
            names[where[(prefix, found[0])]] = found[1]
        # a message attribute: MessageAttributes.entry.1.Name beside .Value.StringValue
        found = detectors.named_attribute(groups.get(prefix + ".Value", {}), members.get("Name"))
        if found is not None:
            names[where[(prefix + ".Value", found[0])]] = found[1]
    return names


class _Form:
    """Masks query-protocol pairs; edits are pair index -> new value."""

    def __init__(self, masker: Masker, shapes: ServiceShapes | None, ec2: bool, which: str, counts: Counter,
                 pairs: list[tuple[str, str]]) -> None:
        self.m = masker
        self.shapes = shapes
        self.ec2 = ec2
        self.which = which
        self.counts = counts
        self.pairs = pairs
        self.edits: dict[int, str] = {}

    def tree(self) -> dict:
        root: dict = {}
        for i, (key, _) in enumerate(self.pairs):
            node = root
            for part in key.split("."):
                node = node.setdefault(part, {})
            node[None] = i
        return root

    def plan(self, tree: dict, shape: str, node: Node | None, ov: Overlay | None, path: tuple, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise TooDeep()
        label = node.mask if node is not None and node.mask else (ov.mask if ov is not None and ov.mask else None)
        if label:
            n = self.masked(tree, shape, b64=ov is not None and ov.b64)
            if n:
                self.counts[(self.which, _render(path), label)] += n
            return
        shapes = self.shapes
        spec = shapes.shapes[shape]
        kind = spec["type"]
        if kind == "structure":
            names = shapes.query_wire(shape, self.ec2)
            members = spec.get("members", {})
            for wire, child in tree.items():
                member = names.get(wire) if wire is not None else None
                if member is None:
                    continue
                child_node = node.members.get(member) if node is not None else None
                child_ov = ov.children.get(member) if ov is not None else None
                if child_ov is not None and child_ov.when is not None:
                    sibling = next((w for w, m in names.items() if m == child_ov.when[0]), None)
                    index = tree.get(sibling, {}).get(None) if sibling else None
                    if index is None or self.pairs[index][1] != child_ov.when[1]:
                        child_ov = None if not child_ov.children else _without_mask(child_ov)
                if child_node is None and child_ov is None:
                    continue
                self.plan(child, members[member]["shape"], child_node, child_ov, _join(path, member), depth + 1)
        elif kind == "list":
            items = tree if self.ec2 or spec.get("flattened") else tree.get(spec["member"].get("locationName", "member"), {})
            for k, child in items.items():
                if k is not None and k.isdigit():
                    self.plan(child, spec["member"]["shape"], node.item if node else None, ov, _join(path, "[]"), depth + 1)
        elif kind == "map":
            entries = tree if spec.get("flattened") else tree.get("entry", {})
            key_name = spec["key"].get("locationName", "key")
            value_name = spec["value"].get("locationName", "value")
            for k, entry in entries.items():
                if k is None or not k.isdigit() or value_name not in entry:
                    continue
                index = entry.get(key_name, {}).get(None)
                key = self.pairs[index][1] if index is not None else None
                child_ov, step = None, "*"
                if ov is not None:
                    child_ov = ov.children.get(key) if key is not None else None
                    if child_ov is not None:
                        step = key
                    else:
                        child_ov = ov.children.get("*")
                child_node = node.value if node is not None else None
                if child_node is None and child_ov is None:
                    continue
                self.plan(entry[value_name], spec["value"]["shape"], child_node, child_ov, _join(path, step), depth + 1)

    def masked(self, tree: dict, shape: str | None, b64: bool = False, depth: int = 0) -> int:
        if depth > MAX_DEPTH:
            raise TooDeep()
        n = 0
        for k, child in tree.items():
            if k is None:
                index = child
                value = self.pairs[index][1]
                if not value:
                    continue
                kind = self.shapes.type_of(shape) if self.shapes else None
                if kind == "blob" or b64:
                    new = self.m.blob_marker(_b64decode(value))
                elif kind in ("integer", "long", "float", "double"):
                    new = "0"
                elif kind == "boolean":
                    new = "false"
                elif kind == "timestamp":
                    new = EPOCH_TEXT
                else:
                    new = self.m.marker(value)
                self.edits[index] = new
                n += 1
            else:
                n += self.masked(child, self._child_shape(shape, k), b64, depth + 1)
        return n

    def noecho_parameters(self, tree: dict, top: str) -> None:
        """``{ParameterKey, ParameterValue}`` items whose key names a parameter the template beside
        them marks NoEcho (``templates.noecho``): their values masked (CreateStack's form)."""
        for steps, member in self.shapes.templated_parameters(top):
            for holder, shape in self._structures(tree, top, steps):
                wire = {m: w for w, m in self.shapes.query_wire(shape, self.ec2).items()}
                at = holder.get(wire["TemplateBody"], {}).get(None)
                names = templates.noecho(self.pairs[at][1]) if at is not None else frozenset()
                items_spec = self.shapes.shapes[self.shapes.shapes[shape]["members"][member]["shape"]]
                items = holder.get(wire[member], {})
                if not (self.ec2 or items_spec.get("flattened")):
                    items = items.get(items_spec["member"].get("locationName", "member"), {})
                for k, item in items.items() if names else ():
                    if k is None or not k.isdigit():
                        continue
                    key_at = item.get("ParameterKey", {}).get(None)
                    key = self.pairs[key_at][1] if key_at is not None else None
                    for vm in NOECHO_VALUES:
                        i = item.get(vm, {}).get(None)
                        if i is not None and i not in self.edits and _noecho_value(names, key, self.pairs[i][1]):
                            self.edits[i] = self.m.marker(self.pairs[i][1])
                            self.counts[(self.which, _form_path(self.pairs[i][0]), "template-noecho")] += 1

    def _structures(self, tree: dict, shape: str, steps: tuple[str, ...]) -> Iterator[tuple[dict, str]]:
        """The subtrees of the structures at member path ``steps`` (lists crossed) below ``tree``."""
        spec = self.shapes.shapes[shape]
        if spec["type"] == "list":
            items = tree if self.ec2 or spec.get("flattened") else tree.get(spec["member"].get("locationName", "member"), {})
            for k, child in items.items():
                if k is not None and k.isdigit():
                    yield from self._structures(child, spec["member"]["shape"], steps)
            return
        if spec["type"] != "structure":
            return
        if not steps:
            yield tree, shape
            return
        wire = {m: w for w, m in self.shapes.query_wire(shape, self.ec2).items()}
        child = tree.get(wire.get(steps[0]))
        if isinstance(child, dict):
            yield from self._structures(child, spec["members"][steps[0]]["shape"], steps[1:])

    def _child_shape(self, shape: str | None, key: str) -> str | None:
        if not shape or self.shapes is None:
            return None
        spec = self.shapes.shapes[shape]
        if spec["type"] == "structure":
            member = self.shapes.query_wire(shape, self.ec2).get(key)
            return spec["members"][member]["shape"] if member else None
        if spec["type"] == "list":
            return spec["member"]["shape"] if key.isdigit() else shape
        if spec["type"] == "map":
            if key == spec["value"].get("locationName", "value"):
                return spec["value"]["shape"]
            if key == spec["key"].get("locationName", "key"):
                return spec["key"]["shape"]
            return shape
        return None


# ---------------------------------------------------------------------------------------------
# Formats


def _changed_strings(before: Any, after: Any, depth: int = 0) -> Iterable[tuple[str, str]]:
    """(original, masked) of every string leaf masking changed between two parameter trees."""
    if depth > MAX_DEPTH:
        return
    if isinstance(before, str):
        if isinstance(after, str) and after != before:
            yield before, after
    elif isinstance(before, dict) and isinstance(after, dict):
        for k, v in before.items():
            if k in after:
                yield from _changed_strings(v, after[k], depth + 1)
    elif isinstance(before, list) and isinstance(after, list):
        for v, w in zip(before, after):
            yield from _changed_strings(v, w, depth + 1)


def _format(protocol: str | None, which: str, body: bytes, content_type: str) -> str:
    """How a body is written: json, xml, form, cbor or text."""
    ctype = content_type.lower()
    if protocol == "smithy-rpc-v2-cbor" or "cbor" in ctype:
        return "cbor"
    if which == "request" and protocol in ("query", "ec2"):
        return "form"
    head = body[:64].lstrip()
    if protocol in ("json", "rest-json") and head[:1] in (b"{", b"["):
        return "json"  # as the classifier reads it, whatever Content-Type the agent declares
    if "x-www-form-urlencoded" in ctype:
        return "form"
    if protocol in ("rest-xml", "query", "ec2") and head[:1] == b"<":
        return "xml"
    if head[:1] in (b"{", b"[") and "json" in ctype or head[:1] == b"{":
        return "json"
    if head[:1] == b"<" and ("xml" in ctype or head.startswith(b"<?xml") or not ctype):
        return "xml"
    return "text"


def _text(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text


def _dumps(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _amz_cbor(content_type: str) -> bool:
    """Whether a body of ``content_type`` is AWS CBOR (a json-protocol call's, as the Java SDKs send
    Kinesis): its timestamps are epoch milliseconds."""
    from .classifier import amz_cbor

    return amz_cbor(content_type) is not None


def decode_cbor(body: bytes, millis: bool = False) -> Any:
    from .classifier import decode_cbor as decode

    return decode(body, millis)


def cbor_encode(value: Any, millis: bool = False) -> bytes:
    """CBOR (RFC 8949) for what ``decode_cbor`` returns: maps, arrays, strings, bytes, integers,
    floats, booleans, null and timestamps (tag 1: epoch seconds, or with ``millis`` epoch
    milliseconds, as AWS CBOR writes them)."""
    out = bytearray()
    _cbor(value, out, millis)
    return bytes(out)


def _cbor_head(major: int, n: int, out: bytearray) -> None:
    if n < 24:
        out.append(major << 5 | n)
    elif n < 1 << 8:
        out += bytes((major << 5 | 24, n))
    elif n < 1 << 16:
        out.append(major << 5 | 25)
        out += n.to_bytes(2, "big")
    elif n < 1 << 32:
        out.append(major << 5 | 26)
        out += n.to_bytes(4, "big")
    else:
        out.append(major << 5 | 27)
        out += n.to_bytes(8, "big")


def _cbor(value: Any, out: bytearray, millis: bool = False) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _cbor_head(0, value, out)
        else:
            _cbor_head(1, -1 - value, out)
    elif isinstance(value, float):
        out.append(0xFB)
        out += struct.pack(">d", value)
    elif isinstance(value, (bytes, bytearray)):
        _cbor_head(2, len(value), out)
        out += value
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        _cbor_head(3, len(data), out)
        out += data
    elif isinstance(value, list):
        _cbor_head(4, len(value), out)
        for v in value:
            _cbor(v, out, millis)
    elif isinstance(value, dict):
        _cbor_head(5, len(value), out)
        for k, v in value.items():
            _cbor(k, out, millis)
            _cbor(v, out, millis)
    elif isinstance(value, datetime.datetime):
        out.append(0xC1)
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        if millis:  # whole milliseconds as an integer, as AWS CBOR writes them
            since = value - _EPOCH
            ms = since // datetime.timedelta(milliseconds=1)
            _cbor(ms if since % datetime.timedelta(milliseconds=1) == datetime.timedelta(0)
                  else since / datetime.timedelta(milliseconds=1), out)
        else:
            _cbor(value.timestamp(), out)
    else:
        _cbor(str(value), out)


# ---------------------------------------------------------------------------------------------
# Helpers


def _default_models(service: str) -> dict:
    from .classifier import default_classifier

    return default_classifier().routing(service).description


def _safe_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers when masking failed: only those that cannot carry a secret of the call's own."""
    keep = {"content-type", "content-length", "date", "x-amz-date", "x-amzn-requestid", "x-amz-request-id",
            "x-amz-id-2", "host", "user-agent", "server", "connection", "content-encoding", "transfer-encoding"}
    return [(k, v) for k, v in headers if k.lower() in keep]


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def header_pairs(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs of mitmproxy Headers or a mapping."""
    if hasattr(headers, "fields"):
        return [(k, v) for k, v in headers.items(multi=True)]
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


# SQS ReceiveMessage: each message carries the MD5 of its body and of its attributes. Beside a masked
# body, the plain digest would let whoever reads it test guesses of the secret offline (a six-digit
# PIN in a second), and an SDK that checks it (Java's, Go's) would refuse the masked copy. The
# agent's copy gets the digests of what it is given; the record keeps none.
DIGEST_MARKER = "agentgate:masked:digest"


SQS_DIGESTS = ("ReceiveMessage", "SendMessage", "SendMessageBatch")
_SENT_DIGESTS = ("MD5OfMessageBody", "MD5OfMessageAttributes", "MD5OfMessageSystemAttributes")


def _masked_text(value: Any) -> bool:
    """Whether a text holds a masked value, whole (a member) or in part (what a detector found)."""
    return isinstance(value, str) and (AGENT_MARKER in value or "agentgate:masked:" in value)


def sqs_attributes_md5(attributes: dict) -> str | None:
    """SQS's MD5OfMessageAttributes of ``attributes`` as the JSON protocol gives them: for each
    attribute by name, its name, data type, transport type (1 string, 2 binary) and value, each
    length-prefixed (4 bytes, big-endian). None for what cannot be digested so."""
    out = bytearray()
    for name in sorted(attributes):
        attr = attributes[name]
        if not isinstance(attr, dict) or not isinstance(attr.get("DataType"), str):
            return None
        for text in (name, attr["DataType"]):
            raw = text.encode("utf-8")
            out += struct.pack(">I", len(raw)) + raw
        if isinstance(attr.get("StringValue"), str):
            raw, kind = attr["StringValue"].encode("utf-8"), 1
        elif isinstance(attr.get("BinaryValue"), str):
            try:
                raw, kind = base64.b64decode(attr["BinaryValue"], validate=True), 2
            except ValueError:
                return None
        else:
            return None
        out += bytes([kind]) + struct.pack(">I", len(raw)) + raw
    return hashlib.md5(bytes(out)).hexdigest()  # noqa: S324 - SQS's own digest, recomputed


def _fix_digests(doc: Any, record: bool) -> bool:
    changed = False
    for message in doc.get("Messages") or () if isinstance(doc, dict) else ():
        if not isinstance(message, dict):
            continue
        if _masked_text(message.get("Body")) and "MD5OfBody" in message:
            message["MD5OfBody"] = DIGEST_MARKER if record else hashlib.md5(  # noqa: S324 - SQS's own digest
                message["Body"].encode("utf-8")).hexdigest()
            changed = True
        attributes = message.get("MessageAttributes")
        if "MD5OfMessageAttributes" in message and (not isinstance(attributes, dict) or any(
                _masked_text(v) for a in attributes.values() if isinstance(a, dict) for v in a.values())):
            digest = None if record or not isinstance(attributes, dict) else sqs_attributes_md5(attributes)
            message["MD5OfMessageAttributes"] = digest or DIGEST_MARKER
            changed = True
    return changed


def _sent_digests(doc: Any) -> bool:
    """(A SendMessage or SendMessageBatch answer, for the record.) The digests of what was sent, whose
    masked copy the record keeps: none of them kept (each is a guessing oracle for what was masked)."""
    changed = False
    entries = [doc] + list(doc.get("Successful") or ()) if isinstance(doc, dict) else []
    for entry in entries:
        for name in _SENT_DIGESTS if isinstance(entry, dict) else ():
            if isinstance(entry.get(name), str) and entry[name] != DIGEST_MARKER:
                entry[name] = DIGEST_MARKER
                changed = True
    return changed


def sqs_digests(operation: str, part: "Part", copy: "AgentCopy | None") -> tuple["Part", "AgentCopy | None"]:
    """(SQS in JSON.) The digests of masked bodies and attributes: none in the record, those of what
    the agent gets in its copy (ReceiveMessage); a send's answer keeps none in the record."""
    if part.body:
        try:
            doc = json.loads(part.body)
        except ValueError:
            doc = None
        if _fix_digests(doc, record=True) if operation == "ReceiveMessage" else _sent_digests(doc):
            part = dataclasses.replace(part, body=json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    if copy is not None and copy.body and operation == "ReceiveMessage":
        try:
            doc = json.loads(copy.body)
        except ValueError:
            doc = None
        if _fix_digests(doc, record=False):
            copy.body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return part, copy
