"""Clients acting as another account's role (``sts:AssumeRole``), cached per role by :class:`RoleClients`.

S3 to write the route's destination; SSM to read a re-wrap route's recipient key there.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from egress.errors import PermanentError, Reason, translate_client_error

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient

    from egress.aws import AwsClients

__all__ = [
    "ROLE_CACHE_MAX_ENTRIES",
    "ROLE_REFRESH_SECONDS",
    "ROLE_SESSION_SECONDS",
    "AssumedRole",
    "RoleClients",
    "assume_role",
]

ROLE_CACHE_MAX_ENTRIES = 32
ROLE_REFRESH_SECONDS = 300.0  # take new credentials this long before the old ones expire
ROLE_SESSION_SECONDS = 3600
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")


@dataclass(frozen=True)
class AssumedRole:
    """An S3 client acting as a role, and when its first credentials expire (epoch seconds).

    ``session`` (renewing its credentials itself) makes the role's other clients.
    """

    client: S3Client
    expires_at: float
    session: boto3.session.Session = field(repr=False, compare=False)


def assume_role(aws: AwsClients, *, role_arn: str, session_name: str) -> AssumedRole:
    """One ``sts:AssumeRole`` and an S3 client with those credentials, renewing itself before they lapse.

    STS errors are translated here: AccessDenied is a permanent ``access_denied``;
    throttling and 5xx, already retried by botocore, are raised as retryable.
    """
    name = _SESSION_NAME_UNSAFE.sub("-", session_name)[:64].ljust(2, "-")
    doing = f"assuming role {role_arn}"
    try:
        response = aws.sts.assume_role(
            RoleArn=role_arn, RoleSessionName=name, DurationSeconds=ROLE_SESSION_SECONDS
        )
    except ParamValidationError as exc:
        raise PermanentError(Reason.INVALID_ROUTE, f"{doing}: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=doing) from exc
    credentials = response["Credentials"]
    # Credentials that renew themselves: an upload outliving this session goes on signed.
    session = aws.session_for_role(
        credentials, role_arn=role_arn, session_name=name, duration_seconds=ROLE_SESSION_SECONDS
    )
    client: S3Client = session.client(
        "s3", endpoint_url=aws.config.endpoint_url, config=aws.config.botocore_config()
    )
    return AssumedRole(client=client, expires_at=credentials["Expiration"].timestamp(), session=session)


class RoleClients:
    """One S3 client (and, when asked, one SSM client) per role ARN, shared by the threads of one delivery service.

    A role's client is assumed again ``ROLE_REFRESH_SECONDS`` before its credentials
    expire, and at most ``max_entries`` roles are kept (expired ones go first, then
    those expiring soonest). The lock is the cache's own and is never held over STS:
    two threads missing the same role at once may both assume it, which is harmless.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        session_name: str = "data-egress",
        clock: Callable[[], float] = time.time,
        max_entries: int = ROLE_CACHE_MAX_ENTRIES,
    ) -> None:
        self._aws = aws
        self._session_name = session_name
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, AssumedRole] = {}
        # The SSM client of each role, with the assumed role (entry) it was made from.
        self._ssm: dict[str, tuple[AssumedRole, SSMClient]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def cached(self, role_arn: str) -> AssumedRole | None:
        """The cache entry of ``role_arn``, fresh or not (for inspection)."""
        with self._lock:
            return self._entries.get(role_arn)

    def client_for(self, role_arn: str) -> S3Client:
        """The S3 client acting as ``role_arn``, assumed now if none is cached or it is near expiry."""
        return self._assumed(role_arn).client

    def ssm_client_for(self, role_arn: str) -> SSMClient:
        """An SSM client acting as ``role_arn`` (made once per assumed role, from its session)."""
        assumed = self._assumed(role_arn)
        with self._lock:
            cached = self._ssm.get(role_arn)
            if cached is not None and cached[0] is assumed:
                return cached[1]
        client = self._aws.ssm_for_session(assumed.session)
        with self._lock:
            self._ssm[role_arn] = (assumed, client)
        return client

    def _assumed(self, role_arn: str) -> AssumedRole:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(role_arn)
            if entry is not None and entry.expires_at - now > ROLE_REFRESH_SECONDS:
                return entry
        assumed = assume_role(self._aws, role_arn=role_arn, session_name=self._session_name)
        with self._lock:
            self._entries[role_arn] = assumed
            self._evict(now=now)
        return assumed

    def _evict(self, *, now: float) -> None:
        for arn in [
            arn for arn, entry in self._entries.items() if entry.expires_at - now <= ROLE_REFRESH_SECONDS
        ]:
            del self._entries[arn]
        if len(self._entries) > self._max_entries:
            by_expiry = sorted(self._entries, key=lambda arn: self._entries[arn].expires_at)
            for arn in by_expiry[: len(self._entries) - self._max_entries]:
                del self._entries[arn]
        for arn in [arn for arn in self._ssm if arn not in self._entries]:
            del self._ssm[arn]
