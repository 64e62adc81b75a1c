"""Just-in-time AWS credentials: one STS call per (principal, role, session policy) and lifetime.

The broker assumes the role a policy binds to the principal, from the gateway's own credentials
(botocore's default chain) with ``sts:AssumeRole``, or with ``sts:AssumeRoleWithWebIdentity`` and
the agent's own token when the binding asks for it. RoleSessionName and SourceIdentity carry the
principal; a session tag carries the gateway's session id, so CloudTrail events join back to the
records. Credentials are cached until ``refresh_margin`` seconds before they expire; concurrent
first calls share one STS call. STS runs in a worker thread: the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from botocore.credentials import ReadOnlyCredentials

from .records import new_id

log = logging.getLogger("agentgate.credentials")

_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")


class CredentialError(Exception):
    """STS refused or could not be reached; the message says which role and why. ``unavailable``:
    STS could not answer (unreachable, a 5xx, throttled, an unreadable answer), so a retry may
    succeed; otherwise it refused."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


# STS error codes that say "not now" rather than "no" (besides any 5xx status)
_STS_UNAVAILABLE_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
                                    "InternalFailure", "InternalError", "RequestTimeout", "RequestTimeoutException"})


def sanitize_session_name(value: str, *, limit: int = 64) -> str:
    """AWS's charset for RoleSessionName/SourceIdentity ([\\w+=,.@-], 2..64 characters)."""
    s = _SESSION_NAME_BAD.sub("-", value or "")[:limit]
    if s.lower().startswith("aws:"):
        s = "p-" + s[:limit - 2]
    while len(s) < 2:
        s += "-"
    return s


@dataclasses.dataclass(frozen=True)
class Grant:
    role_arn: str
    session_id: str  # the gateway's session id, also carried as a session tag
    session_name: str
    credentials: ReadOnlyCredentials
    expiration: float  # epoch seconds
    assumed_role_arn: str | None = None


class CredentialBroker:
    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        refresh_margin: float = 300.0,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.refresh_margin = refresh_margin
        self.sts_calls = 0
        self._cache: dict[tuple, Grant] = {}
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._session_ids: dict[tuple, str] = {}
        self._endpoint_url = endpoint_url or None
        self._region = region
        self._session = session
        self._client: Any = None
        self._client_lock = threading.Lock()

    def _sts(self) -> Any:
        with self._client_lock:
            if self._client is None:
                session = self._session or boto3.session.Session()
                self._client = session.client(
                    "sts",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    config=botocore.config.Config(
                        retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=15
                    ),
                )
            return self._client

    async def grant(self, principal: Any, binding: Any, token: str | None = None) -> Grant:
        """Credentials for ``principal`` as ``binding.role_arn``; cached, shared, never blocking."""
        key = (principal.iss, principal.sub, binding.role_arn, binding.session_policy, bool(binding.web_identity))
        cached = self._cache.get(key)
        if cached and cached.expiration - self.refresh_margin > time.time():
            return cached
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._inflight[key] = fut
        try:
            session_id = self._session_ids.setdefault(key, new_id())
            grant = await asyncio.to_thread(self._assume, principal, binding, token, session_id)
            self._cache[key] = grant
            fut.set_result(grant)
            return grant
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters get it through their own await
            raise
        finally:
            self._inflight.pop(key, None)

    def _assume(self, principal: Any, binding: Any, token: str | None, session_id: str) -> Grant:
        name = sanitize_session_name(principal.sub)
        kwargs: dict[str, Any] = {
            "RoleArn": binding.role_arn,
            "RoleSessionName": name,
            "DurationSeconds": int(binding.duration),
        }
        if binding.session_policy:
            kwargs["Policy"] = binding.session_policy
        self.sts_calls += 1
        try:
            if binding.web_identity:
                if not token:
                    raise CredentialError(f"role {binding.role_arn} needs the agent's token (web identity) and none was presented")
                resp = self._sts().assume_role_with_web_identity(WebIdentityToken=token, **kwargs)
            else:
                kwargs["SourceIdentity"] = name
                kwargs["Tags"] = [
                    {"Key": "agentgate-session", "Value": session_id},
                    {"Key": "agentgate-principal", "Value": principal.sub[:256]},
                ]
                resp = self._sts().assume_role(**kwargs)
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or err.get("Code") in _STS_UNAVAILABLE_CODES:
                raise CredentialError(
                    f"STS is unavailable for role {binding.role_arn}: {err.get('Code')}: {err.get('Message')}",
                    unavailable=True) from None
            raise CredentialError(
                f"STS refused to issue credentials for role {binding.role_arn}: {err.get('Code')}: {err.get('Message')}"
            ) from None
        except botocore.exceptions.NoCredentialsError:
            raise CredentialError(
                f"agentgate has no AWS credentials of its own to ask STS for role {binding.role_arn}: give the "
                "gateway's process some as to any AWS SDK (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "an instance or task role)", unavailable=True) from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise CredentialError(f"STS could not be reached for role {binding.role_arn}: {e}", unavailable=True) from None
        except Exception as e:  # noqa: BLE001 - an unparseable STS answer, for one
            raise CredentialError(f"STS gave no usable answer for role {binding.role_arn}: {type(e).__name__}: {str(e)[:200]}",
                                  unavailable=True) from None
        c = resp["Credentials"]
        exp = c["Expiration"]
        expiration = exp.timestamp() if hasattr(exp, "timestamp") else float(exp)
        log.info("issued credentials for %s as %s (session %s, until %s)", principal.sub, binding.role_arn, session_id,
                 time.strftime("%H:%M:%SZ", time.gmtime(expiration)))
        return Grant(
            role_arn=binding.role_arn,
            session_id=session_id,
            session_name=name,
            credentials=ReadOnlyCredentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("SessionToken")),
            expiration=expiration,
            assumed_role_arn=(resp.get("AssumedRoleUser") or {}).get("Arn"),
        )
