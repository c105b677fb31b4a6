"""Building the boto3 clients: the only place that does, with one botocore config.

That config (:meth:`AwsConfig.botocore_config`: standard retry mode, ``max_attempts``)
is the one place where retries of a single AWS call are configured. botocore retries
throttling, 5xx, request timeouts and connection errors with backoff and jitter; the
callers (queue, ledger, sources, destinations) make each call once and translate what
still fails. A retry above that is a retry of a larger unit of work (one object's
move, a message), never of one call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
    RefreshableCredentials,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_sts import STSClient


# Emulators (moto, LocalStack) accept any credentials; these never leave the machine.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}  # noqa: S105


@dataclass(frozen=True)
class AwsConfig:
    """Where and how to reach AWS (or the local emulator)."""

    region: str = "eu-west-2"
    endpoint_url: str | None = None
    # S3 alone elsewhere (AWS_ENDPOINT_URL_S3, as botocore reads it): another S3 server
    # beside the emulator of the other services, or a relay in front of S3 in benchmarks.
    s3_endpoint_url: str | None = None
    max_pool_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 4

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint URL clients of ``service`` use (``None``: AWS's own)."""
        if service == "s3" and self.s3_endpoint_url:
            return self.s3_endpoint_url
        return self.endpoint_url

    def botocore_config(self) -> Config:
        """One botocore config for every client: standard retries, timeouts, pool size.

        ``max_attempts`` counts the first try: each AWS call is sent at most that many times.
        """
        return Config(
            region_name=self.region,
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            # Checksums only where an operation requires them; uploads ask for SHA-256
            # explicitly, and moto's composite checksums of copies break default validation.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )


@dataclass(frozen=True)
class AwsClients:
    """The clients a program uses, built once and passed explicitly."""

    s3: S3Client
    sqs: SQSClient
    dynamodb: DynamoDBClient
    kms: KMSClient
    sts: STSClient
    ssm: SSMClient
    sns: SNSClient
    session: boto3.session.Session
    config: AwsConfig

    def s3_for_role(
        self,
        credentials: Mapping[str, Any],
        *,
        role_arn: str | None = None,
        session_name: str | None = None,
        duration_seconds: int = 3600,
    ) -> S3Client:
        """An S3 client using temporary credentials from ``sts:AssumeRole``.

        With ``role_arn`` (and ``session_name``) the client renews them itself, by
        assuming the role again before they expire, so an upload that outlives one
        session never meets ``ExpiredToken``; without, they are used until they lapse.
        """
        if role_arn is None:
            return self.session.client(
                "s3",
                endpoint_url=self.config.endpoint_for("s3"),
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
                config=self.config.botocore_config(),
            )
        session = self.session_for_role(
            credentials, role_arn=role_arn, session_name=session_name, duration_seconds=duration_seconds
        )
        client: S3Client = session.client(
            "s3", endpoint_url=self.config.endpoint_for("s3"), config=self.config.botocore_config()
        )
        return client

    def session_for_role(
        self,
        credentials: Mapping[str, Any],
        *,
        role_arn: str,
        session_name: str | None = None,
        duration_seconds: int = 3600,
    ) -> boto3.session.Session:
        """A session acting as ``role_arn`` from its first ``sts:AssumeRole`` credentials, renewing them itself."""
        refresh = assume_role_refresher(
            self.sts,
            role_arn=role_arn,
            session_name=session_name or "data-egress",
            duration_seconds=duration_seconds,
        )
        return refreshable_session(
            refresh, region=self.config.region, initial=credentials_metadata(credentials)
        )

    def ssm_for_session(self, session: boto3.session.Session) -> SSMClient:
        """An SSM client of ``session`` (one acting as a role), with the one botocore config."""
        client: SSMClient = session.client(
            "ssm", endpoint_url=self.config.endpoint_url, config=self.config.botocore_config()
        )
        return client


# -- temporary credentials that renew themselves ----------------------------------------
RefreshFunction = Callable[[], Mapping[str, Any]]
"""Returns new credentials in botocore's shape: ``access_key``, ``secret_key``, ``token``,
``expiry_time`` (ISO 8601) — see :func:`credentials_metadata`."""

_REFRESHING_METHOD = "egress-assume-role"


def credentials_metadata(credentials: Mapping[str, Any]) -> dict[str, str]:
    """STS ``Credentials`` (``AccessKeyId``, …, ``Expiration``) in the shape botocore refreshes from."""
    expiration = credentials["Expiration"]
    return {
        "access_key": str(credentials["AccessKeyId"]),
        "secret_key": str(credentials["SecretAccessKey"]),
        "token": str(credentials["SessionToken"]),
        "expiry_time": expiration.isoformat() if isinstance(expiration, datetime) else str(expiration),
    }


def assume_role_refresher(
    sts: STSClient, *, role_arn: str, session_name: str, duration_seconds: int = 3600
) -> RefreshFunction:
    """A refresh function that assumes ``role_arn`` again through ``sts`` (the caller's own
    credentials). Its errors propagate to the call that needed the credentials, where they
    are translated like any other (``AccessDenied`` if the role's trust was withdrawn)."""

    def refresh() -> Mapping[str, Any]:
        response = sts.assume_role(
            RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=duration_seconds
        )
        return credentials_metadata(response["Credentials"])

    return refresh


class _GivenCredentials(CredentialProvider):
    """A credential provider handing out one credentials object (the chain's only link)."""

    METHOD = _REFRESHING_METHOD

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


def refreshable_session(
    refresh: RefreshFunction, *, region: str, initial: Mapping[str, Any] | None = None
) -> boto3.session.Session:
    """A session whose credentials renew themselves through ``refresh`` before they expire.

    ``initial`` (botocore's shape) is used until it nears expiry; without it the first
    request calls ``refresh``. botocore renews 15 minutes before the expiry (one thread
    refreshes, the others keep signing with the old credentials) and, from 10 minutes
    before it, makes every caller wait for the new ones. Each request is signed with the
    credentials current at that moment, so a client built from the session is never
    rebuilt, and an upload outliving one set of credentials goes on with the next.
    """
    credentials: RefreshableCredentials
    if initial is None:
        credentials = DeferredRefreshableCredentials(refresh_using=refresh, method=_REFRESHING_METHOD)
    else:
        credentials = RefreshableCredentials.create_from_metadata(
            dict(initial), refresh_using=refresh, method=_REFRESHING_METHOD
        )
    core = botocore.session.Session()
    # A resolver with one provider: the public way to give a botocore session credentials.
    core.register_component("credential_provider", CredentialResolver([_GivenCredentials(credentials)]))
    return boto3.session.Session(botocore_session=core, region_name=region)


def emulator_session(region: str) -> boto3.session.Session:
    """A session with the emulators' throwaway credentials (never real ones)."""
    return boto3.session.Session(
        aws_access_key_id=EMULATOR_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=EMULATOR_CREDENTIALS["aws_secret_access_key"],
        region_name=region,
    )


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def session_for(config: AwsConfig) -> boto3.session.Session:
    """The default credential chain; the emulators' throwaway credentials when the endpoint
    URL is on this machine (the moto server, LocalStack) and the chain finds none, as on a
    newcomer's laptop. Never for another endpoint: there a missing credential is an error
    the caller must see, not something to paper over."""
    session = boto3.session.Session(region_name=config.region)
    if config.endpoint_url and is_loopback_url(config.endpoint_url) and session.get_credentials() is None:
        return emulator_session(config.region)
    return session


def build_clients(config: AwsConfig, *, session: boto3.session.Session | None = None) -> AwsClients:
    """Build every client from one session and one botocore config."""
    session = session or boto3.session.Session(region_name=config.region)
    botocore_config = config.botocore_config()

    def make(service: str) -> Any:
        return session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=config.endpoint_for(service),
            config=botocore_config,
        )

    return AwsClients(
        s3=make("s3"),
        sqs=make("sqs"),
        dynamodb=make("dynamodb"),
        kms=make("kms"),
        sts=make("sts"),
        ssm=make("ssm"),
        sns=make("sns"),
        session=session,
        config=config,
    )
