"""Just-in-time AWS credentials: one STS call per (principal, role, session policy, duration) and lifetime.

The broker assumes the role a policy binds to the principal, from the gateway's own credentials
(botocore's default chain) with ``sts:AssumeRole``, or with ``sts:AssumeRoleWithWebIdentity`` and
the agent's own token when the binding asks for it. RoleSessionName and SourceIdentity carry the
principal (``session_name``); session tags carry the gateway's session id and the principal
(``principal_tag``), so CloudTrail events join back to the records. Credentials are cached until
``refresh_margin`` seconds before they expire; concurrent first calls share one STS call. STS runs
in a worker thread: the event loop never waits on it.

STS is asked in ``sts_region`` when it is in the role's partition, else in the SDK environment's
region (AWS_REGION, AWS_DEFAULT_REGION, the profile's) when that is, else in the partition's default
region (botocore's partition data: us-east-1 for aws, us-gov-west-1 for aws-us-gov, cn-northwest-1
for aws-cn); ``endpoint_url`` (the ``upstream`` setting) only moves where the request goes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import logging
import os
import re
import threading
import time
import unicodedata
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.parsers
import botocore.session
from botocore.credentials import ReadOnlyCredentials

from .records import new_id

log = logging.getLogger("agentgate.credentials")

SESSION_NAME_MAX = 64  # RoleSessionName: 2..64 of [\w+=,.@-] (ASCII); SourceIdentity the same here
TAG_VALUE_MAX = 256  # a session tag's value: [\p{L}\p{Z}\p{N}_.:/=+\-@]*, at most 256 characters
DIGEST_CHARS = 12  # base32 characters of SHA-256(iss "\n" sub) that tell principals apart
# While STS cannot answer a renewal, credentials in hand are used as long as they have this many
# seconds left (a call signed now must not outlive them upstream), and STS is asked again after
# RETRY_FIRST seconds, then twice as long each time it fails, at most RETRY_MAX.
STILL_USABLE = 60.0
RETRY_FIRST = 2.0
RETRY_MAX = 30.0

_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)
_DIGEST_TAIL = re.compile(rf"-[a-z2-7]{{{DIGEST_CHARS}}}\Z")  # how a name with a digest ends
_TAG_PUNCTUATION = frozenset("_.:/+-@")  # '=' too, but it is the escape character here
_ERROR_CODE = re.compile(r"[A-Za-z0-9][\w.-]{0,99}", re.ASCII)


class CredentialError(Exception):
    """STS refused or could not be reached; the message says which role and why (STS's error code,
    never its message or its answer's body: those name the gateway's own identity and may carry
    anything; the gateway's log has STS's message). ``unavailable``: STS could not answer
    (unreachable, a 5xx, throttled, an unreadable answer), so a retry may succeed; otherwise it
    refused."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


# STS error codes that say "not now" rather than "no" (besides any 5xx status). IDPCommunicationError:
# STS could not reach the identity provider (web identity), which AWS says to retry.
_STS_UNAVAILABLE_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
                                    "InternalFailure", "InternalError", "RequestTimeout", "RequestTimeoutException",
                                    "IDPCommunicationError"})


def principal_digest(iss: str, sub: str) -> str:
    """12 lower-case base32 characters of SHA-256(iss "\\n" sub): what tells two principals apart
    when their subject had to be changed or shortened to fit AWS."""
    raw = f"{iss or ''}\n{sub or ''}".encode("utf-8", "surrogatepass")
    return base64.b32encode(hashlib.sha256(raw).digest()).decode("ascii")[:DIGEST_CHARS].lower()


def _ascii_fold(value: str) -> str:
    """Accented Latin letters as their base letter (é -> e), for a readable name; the rest as is."""
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))


def session_name(iss: str, sub: str, *, limit: int = SESSION_NAME_MAX) -> str:
    """The principal's RoleSessionName and SourceIdentity (2..``limit`` of AWS's ASCII [\\w+=,.@-]).

    A subject that fits as it is is used as it is. Any other (a character AWS does not take, such as
    Auth0's ``|`` or a non-ASCII letter; longer than ``limit``; shorter than 2; or one that ends as a
    digest does) becomes ``<readable prefix>-<principal_digest(iss, sub)>``, so that no two
    principals share a name (``auth0|alice`` and ``auth0-alice``, or two long subjects that start
    alike): names with a digest end in one, and names without one are the subjects themselves."""
    sub = sub or ""
    if 2 <= len(sub) <= limit and not _SESSION_NAME_BAD.search(sub) and not _DIGEST_TAIL.search(sub):
        return sub
    prefix = _SESSION_NAME_BAD.sub("-", _ascii_fold(sub))[:limit - DIGEST_CHARS - 1] or "p"
    return f"{prefix}-{principal_digest(iss, sub)}"


def _tag_char(c: str) -> bool:
    return c in _TAG_PUNCTUATION or unicodedata.category(c)[0] in "LZN"


def principal_tag(iss: str, sub: str, *, limit: int = TAG_VALUE_MAX) -> str:
    """The ``agentgate-principal`` session tag's value: the subject, with every character a tag value
    cannot hold (anything but letters, numbers, separators and ``_.:/=+-@``; ``=`` itself too)
    written as ``=XX`` per UTF-8 byte (``auth0|alice`` -> ``auth0=7Calice``), so the value reads
    back to the exact subject. One longer than ``limit`` is cut, at a character, and ends with
    ``==`` and ``principal_digest(iss, sub)``, which no escaped subject contains."""
    out = "".join(c if c != "=" and _tag_char(c) else
                  "".join(f"={b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in sub or "")
    if len(out) <= limit:
        return out
    cut = limit - 2 - DIGEST_CHARS
    if "=" in out[max(0, cut - 2):cut]:  # do not split an escape
        cut = out.rindex("=", 0, cut)
    return f"{out[:cut]}=={principal_digest(iss, sub)}"


@functools.cache
def _partitions() -> tuple[dict, ...]:
    return tuple(botocore.loaders.create_loader().load_data("partitions")["partitions"])


def partition_of_region(region: str) -> str | None:
    """The partition a region is in (botocore's partition data), or None when botocore knows none."""
    for p in _partitions():
        if region in p.get("regions", {}):
            return p["id"]
    for p in _partitions():
        if re.match(p["regionRegex"], region):
            return p["id"]
    return None


def partition_default_region(partition: str) -> str | None:
    """Where the SDKs send a partition's global calls (botocore's ``implicitGlobalRegion``)."""
    for p in _partitions():
        if p["id"] == partition:
            return p.get("outputs", {}).get("implicitGlobalRegion")
    return None


def sdk_region(session: botocore.session.Session | None = None) -> str | None:
    """The region of the SDK environment: AWS_REGION, else AWS_DEFAULT_REGION or the profile's."""
    region = os.environ.get("AWS_REGION")
    if region:
        return region
    try:
        return (session or botocore.session.Session()).get_config_variable("region") or None
    except botocore.exceptions.BotoCoreError:  # an unreadable profile: no region from it
        return None


def _forget_loaded_data(client: Any) -> None:
    """Let go of the data botocore's loader read to build ``client`` (endpoints.json's ~8 MB of
    Python objects among it), which the client keeps for as long as it lives but no longer needs:
    its endpoint and model are built. Read again if ever asked for (a paginator, a waiter)."""
    cache = getattr(getattr(client, "_loader", None), "_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def sts_region_for(role_arn: str, sts_region: str | None = None, env_region: str | None = None) -> str:
    """The region to ask STS in for ``role_arn``: ``sts_region`` when it is in the role's partition
    (or the partition is one botocore does not know), else ``env_region`` when it is in the role's
    partition, else the partition's default region."""
    parts = role_arn.split(":")
    partition = parts[1] if len(parts) > 1 and parts[1] else "aws"
    default = partition_default_region(partition)
    if sts_region and (default is None or partition_of_region(sts_region) == partition):
        return sts_region
    if env_region and default is not None and partition_of_region(env_region) == partition:
        return env_region
    if default is None:
        raise CredentialError(f"role {role_arn} is in partition {partition!r}, which this gateway's botocore does not "
                              "know: set sts_region to the region whose STS should issue its credentials")
    return default


@dataclasses.dataclass(frozen=True)
class Grant:
    role_arn: str
    session_id: str  # the gateway's session id, also carried as a session tag
    session_name: str
    credentials: ReadOnlyCredentials
    expiration: float  # epoch seconds
    assumed_role_arn: str | None = None


class CredentialBroker:
    """``region``: the ``sts_region`` setting (None: the SDK environment's region, else the role's
    partition's default; see ``sts_region_for``). ``endpoint_url``: where STS requests go instead of
    the region's endpoint (the ``upstream`` setting; else botocore's own AWS_ENDPOINT_URL_STS)."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        refresh_margin: float = 300.0,
        session: botocore.session.Session | None = None,
    ) -> None:
        self.refresh_margin = refresh_margin
        self.sts_calls = 0
        self._cache: dict[tuple, Grant] = {}
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._session_ids: dict[tuple, str] = {}
        self._endpoint_url = endpoint_url or None
        self._region = region or None
        self._env_region: str | None = None
        self._session = session
        self._clients: dict[str, Any] = {}  # region -> STS client
        self._client_lock = threading.Lock()
        self._answer = threading.local()  # size of the STS answer being parsed, per worker thread
        self._warned: set[tuple] = set()
        self._failures: dict[tuple, int] = {}  # renewals STS could not answer in a row, per cache key
        self._retry_at: dict[tuple, float] = {}  # when STS is asked again for a renewal it could not answer

    def region_for(self, role_arn: str) -> str:
        """The region STS is asked in for ``role_arn``."""
        with self._client_lock:
            if self._env_region is None:
                self._env_region = sdk_region(self._session) or ""
        return sts_region_for(role_arn, self._region, self._env_region)

    def _sts(self, region: str) -> Any:
        with self._client_lock:
            client = self._clients.get(region)
            if client is None:
                session = self._session or botocore.session.Session()
                client = session.create_client(
                    "sts",
                    region_name=region,
                    endpoint_url=self._endpoint_url,
                    config=botocore.config.Config(
                        retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=15
                    ),
                )
                client.meta.events.register("before-parse.sts", self._measure)
                _forget_loaded_data(client)
                self._clients[region] = client
            return client

    def _measure(self, response_dict: dict | None = None, **_: Any) -> None:
        """How many bytes STS answered (its body is never quoted: it may hold credentials)."""
        self._answer.size = len((response_dict or {}).get("body") or b"")

    async def grant(self, principal: Any, binding: Any, token: str | None = None) -> Grant:
        """Credentials for ``principal`` as ``binding.role_arn``; cached, shared, never blocking."""
        # everything the AssumeRole request is made of: the principal (its session name and tags), and
        # the binding's role, session policy, mode and duration (a reload that shortens a duration
        # must not leave calls on credentials issued for the longer one)
        key = (principal.iss, principal.sub, binding.role_arn, binding.session_policy, bool(binding.web_identity),
               int(binding.duration))
        cached = self._cache.get(key)
        now = time.time()
        if cached and cached.expiration - self.refresh_margin > now:
            return cached
        usable = cached is not None and cached.expiration - STILL_USABLE > now
        if usable and self._retry_at.get(key, 0.0) > now:  # STS failed a moment ago: not asked again yet
            return cached
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        if binding.duration <= self.refresh_margin and key[2:] not in self._warned:
            self._warned.add(key[2:])
            log.warning("role %s has a duration of %ss, not longer than credential_refresh_margin (%gs): its credentials "
                        "are never reused, every call asks STS", binding.role_arn, int(binding.duration),
                        self.refresh_margin)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._inflight[key] = fut
        try:
            session_id = self._session_ids.setdefault(key, new_id())
            try:
                grant = await asyncio.to_thread(self._assume, principal, binding, token, session_id)
            except CredentialError as e:
                if not (e.unavailable and usable):
                    raise
                # STS cannot answer a renewal: the credentials in hand stay good until they expire
                # (AWS honours them till then), so calls go on with them; STS is asked again later
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                self._retry_at[key] = time.time() + min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)
                log.warning("could not renew credentials for %s as %s (%s); the ones in hand are used until they "
                            "expire at %s", principal.sub, binding.role_arn, e,
                            time.strftime("%H:%M:%SZ", time.gmtime(cached.expiration)))
                grant = cached
            else:
                self._cache[key] = grant
                self._failures.pop(key, None)
                self._retry_at.pop(key, None)
            fut.set_result(grant)
            return grant
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters get it through their own await
            raise
        finally:
            self._inflight.pop(key, None)

    def _assume(self, principal: Any, binding: Any, token: str | None, session_id: str) -> Grant:
        role = binding.role_arn
        name = session_name(principal.iss, principal.sub)
        kwargs: dict[str, Any] = {
            "RoleArn": role,
            "RoleSessionName": name,
            "DurationSeconds": int(binding.duration),
        }
        if binding.session_policy:
            kwargs["Policy"] = binding.session_policy
        self.sts_calls += 1
        self._answer.size = None
        try:  # the client first: an error making it is the gateway's, not in any answer of STS's
            sts = self._sts(self.region_for(role))
        except Exception as e:  # noqa: BLE001 - a region or endpoint botocore will not take
            raise CredentialError(f"agentgate cannot make an STS client for role {role}: {type(e).__name__}: "
                                  f"{str(e)[:300]}") from None
        try:
            if binding.web_identity:
                if not token:
                    raise CredentialError(f"role {role} needs the agent's token (web identity) and none was presented")
                resp = sts.assume_role_with_web_identity(WebIdentityToken=token, **kwargs)
            else:
                kwargs["SourceIdentity"] = name
                kwargs["Tags"] = [
                    {"Key": "agentgate-session", "Value": session_id},
                    {"Key": "agentgate-principal", "Value": principal_tag(principal.iss, principal.sub)},
                ]
                resp = sts.assume_role(**kwargs)
            c = resp["Credentials"]
            exp = c["Expiration"]
            expiration = exp.timestamp() if hasattr(exp, "timestamp") else float(exp)
            credentials = ReadOnlyCredentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("SessionToken"))
            if not (credentials.access_key and credentials.secret_key):
                raise KeyError("AccessKeyId")
        except CredentialError:
            raise
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(err.get("Code") or "")
            shown = code if _ERROR_CODE.fullmatch(code) else "an error without a code"
            # STS's message (it names the gateway's own identity) goes to the log only
            log.warning("STS answered %s for %s as %s: %s", shown, principal.sub, role,
                        str(err.get("Message") or "")[:1000].replace("\n", " "))
            if status >= 500 or code in _STS_UNAVAILABLE_CODES:
                raise CredentialError(f"STS is unavailable for role {role}: {shown}", unavailable=True) from None
            raise CredentialError(f"STS refused to issue credentials for role {role}: {shown} (the gateway's log has "
                                  "STS's message)") from None
        except botocore.exceptions.NoCredentialsError:
            raise CredentialError(
                f"agentgate has no AWS credentials of its own to ask STS for role {role}: give the "
                "gateway's process some as to any AWS SDK (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "an instance or task role)", unavailable=True) from None
        except botocore.exceptions.ParamValidationError as e:  # a retry would not help
            raise CredentialError(f"agentgate cannot ask STS for role {role}: {str(e)[:500]}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise CredentialError(f"STS could not be reached for role {role}: {e}", unavailable=True) from None
        except botocore.parsers.ResponseParserError:
            # its message quotes the answer's body, which may hold credentials: never shown, never logged
            size = getattr(self._answer, "size", None)
            raise CredentialError(f"STS sent an answer for role {role} that could not be read"
                                  + (f" ({size} bytes)" if size is not None else ""), unavailable=True) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise CredentialError(f"STS sent an answer for role {role} without usable credentials", unavailable=True) \
                from None
        except Exception as e:  # noqa: BLE001 - anything else: its message is not shown, it may quote the answer
            raise CredentialError(f"STS gave no usable answer for role {role} ({type(e).__name__})",
                                  unavailable=True) from None
        log.info("issued credentials for %s as %s (session %s, until %s)", principal.sub, role, session_id,
                 time.strftime("%H:%M:%SZ", time.gmtime(expiration)))
        return Grant(
            role_arn=role,
            session_id=session_id,
            session_name=name,
            credentials=credentials,
            expiration=expiration,
            assumed_role_arn=(resp.get("AssumedRoleUser") or {}).get("Arn"),
        )
