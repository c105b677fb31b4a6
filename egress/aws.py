"""Building the boto3 clients: the only place that does, with one botocore config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient


# Emulators (moto, LocalStack) accept any credentials; these never leave the machine.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}  # noqa: S105


@dataclass(frozen=True)
class AwsConfig:
    """Where and how to reach AWS (or the local emulator)."""

    region: str = "eu-west-2"
    endpoint_url: str | None = None
    max_pool_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 4

    def botocore_config(self) -> Config:
        """One botocore config for every client: standard retries, timeouts, pool size."""
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
    session: boto3.session.Session
    config: AwsConfig

    def s3_for_role(self, credentials: dict[str, Any]) -> S3Client:
        """An S3 client using temporary credentials from ``sts:AssumeRole``."""
        return self.session.client(
            "s3",
            endpoint_url=self.config.endpoint_url,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            config=self.config.botocore_config(),
        )


def emulator_session(region: str) -> boto3.session.Session:
    """A session with the emulators' throwaway credentials (never real ones)."""
    return boto3.session.Session(
        aws_access_key_id=EMULATOR_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=EMULATOR_CREDENTIALS["aws_secret_access_key"],
        region_name=region,
    )


def session_for(config: AwsConfig) -> boto3.session.Session:
    """The default credential chain; the emulators' throwaway credentials when an endpoint
    URL is set (an emulator) and the chain finds none, as on a newcomer's laptop."""
    session = boto3.session.Session(region_name=config.region)
    if config.endpoint_url and session.get_credentials() is None:
        return emulator_session(config.region)
    return session


def build_clients(config: AwsConfig, *, session: boto3.session.Session | None = None) -> AwsClients:
    """Build every client from one session and one botocore config."""
    session = session or boto3.session.Session(region_name=config.region)
    botocore_config = config.botocore_config()

    def make(service: str) -> Any:
        return session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=config.endpoint_url,
            config=botocore_config,
        )

    return AwsClients(
        s3=make("s3"),
        sqs=make("sqs"),
        dynamodb=make("dynamodb"),
        kms=make("kms"),
        sts=make("sts"),
        session=session,
        config=config,
    )
