"""Hardening of the worker's AWS boundary: expired credentials and request timeouts are
transient, reasons leave as plain strings, and assumed-role credentials renew themselves
while a client is in use."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry, Counter, generate_latest

from egress.aws import AwsClients, credentials_metadata, refreshable_session
from egress.errors import PermanentError, Reason, RetryableError, translate_client_error

ROLE_ARN = "arn:aws:iam::210987654321:role/egress-writer"
_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


def client_error(code: str, status: int, operation: str = "UploadPart") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


# -- translate_client_error ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("ExpiredToken", 400, Reason.CREDENTIALS_EXPIRED),  # S3
        ("ExpiredToken", 403, Reason.CREDENTIALS_EXPIRED),
        ("ExpiredTokenException", 403, Reason.CREDENTIALS_EXPIRED),  # STS, DynamoDB, KMS
        ("RequestExpired", 400, Reason.CREDENTIALS_EXPIRED),
        ("RequestTimeout", 400, Reason.REQUEST_TIMEOUT),  # S3: the body came too slowly
        ("RequestTimeoutException", 408, Reason.REQUEST_TIMEOUT),
    ],
)
def test_expired_credentials_and_request_timeouts_are_retryable(
    code: str, status: int, reason: Reason
) -> None:
    translated = translate_client_error(client_error(code, status), doing="uploading part 3 of s3://b/k")
    assert isinstance(translated, RetryableError), translated
    assert translated.reason == reason
    assert code in translated.detail and "uploading part 3 of s3://b/k" in translated.detail


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "InvalidClientTokenId"])
def test_real_denials_stay_permanent(code: str) -> None:
    translated = translate_client_error(client_error(code, 403), doing="writing s3://b/k")
    assert isinstance(translated, PermanentError) and translated.reason == Reason.ACCESS_DENIED


def test_reasons_are_plain_strings_on_the_wire() -> None:
    """Metric labels, str() and JSON (error files, log lines, AWS's JSON requests) see the value."""
    error = translate_client_error(client_error("AccessDenied", 403), doing="writing s3://b/k")
    assert error.reason is Reason.ACCESS_DENIED and error.reason == "access_denied"
    assert str(error.reason) == f"{error.reason}" == "access_denied"
    assert str(error).startswith("access_denied: ")
    assert json.dumps({"reason": error.reason}) == '{"reason": "access_denied"}'
    registry = CollectorRegistry()
    Counter("failures", "by reason", ["reason"], registry=registry).labels(reason=error.reason).inc()
    assert 'failures_total{reason="access_denied"} 1.0' in generate_latest(registry).decode()
    assert json.loads(structlog.processors.JSONRenderer()(None, "", {"reason": error.reason})) == {
        "reason": "access_denied"
    }


# -- refreshable sessions (a fake refresh function, real botocore credentials) -----------


class CountingRefresh:
    """A refresh function handing out numbered credentials valid for ``lifetime``."""

    def __init__(self, lifetime: timedelta) -> None:
        self.lifetime = lifetime
        self.calls = 0

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        return {
            "access_key": f"AKIAREFRESHED{self.calls}",
            "secret_key": "secret",
            "token": f"token-{self.calls}",
            "expiry_time": (datetime.now(UTC) + self.lifetime).isoformat(),
        }


def initial(expires_in: timedelta) -> dict[str, str]:
    return credentials_metadata(
        {
            "AccessKeyId": "AKIAINITIAL",
            "SecretAccessKey": "secret",
            "SessionToken": "token-0",
            "Expiration": datetime.now(UTC) + expires_in,
        }
    )


def test_expired_initial_credentials_are_refreshed_before_use_and_then_kept() -> None:
    refresh = CountingRefresh(timedelta(hours=1))
    session = refreshable_session(refresh, region="eu-west-2", initial=initial(-timedelta(minutes=1)))
    credentials = session.get_credentials()
    assert credentials is not None

    assert credentials.get_frozen_credentials().access_key == "AKIAREFRESHED1"
    assert credentials.get_frozen_credentials().token == "token-1"
    assert refresh.calls == 1  # an hour left: no refresh until it nears expiry


def test_credentials_close_to_expiry_are_refreshed_again() -> None:
    # Five minutes left is inside botocore's mandatory window (ten): every use renews them.
    refresh = CountingRefresh(timedelta(minutes=5))
    session = refreshable_session(refresh, region="eu-west-2", initial=initial(timedelta(minutes=5)))
    credentials = session.get_credentials()
    assert credentials is not None

    keys = [credentials.get_frozen_credentials().access_key for _ in range(3)]
    assert keys == ["AKIAREFRESHED1", "AKIAREFRESHED2", "AKIAREFRESHED3"]
    assert refresh.calls == 3


def test_fresh_credentials_are_not_refreshed_and_deferred_ones_load_on_first_use() -> None:
    refresh = CountingRefresh(timedelta(hours=1))
    session = refreshable_session(refresh, region="eu-west-2", initial=initial(timedelta(hours=1)))
    credentials = session.get_credentials()
    assert credentials is not None and credentials.get_frozen_credentials().access_key == "AKIAINITIAL"
    assert refresh.calls == 0

    deferred = refreshable_session(refresh, region="eu-west-2").get_credentials()
    assert deferred is not None and deferred.get_frozen_credentials().access_key == "AKIAREFRESHED1"


def test_one_client_signs_each_request_with_the_credentials_current_then(moto_endpoint: str) -> None:
    """An upload outliving one set of credentials: the same client goes on with the next."""
    refresh = CountingRefresh(timedelta(minutes=5))
    session = refreshable_session(refresh, region="eu-west-2", initial=initial(timedelta(minutes=5)))
    s3 = session.client("s3", endpoint_url=moto_endpoint)
    signed: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        match = _CREDENTIAL.search(str(request.headers.get("Authorization", b""), "ascii", "replace"))
        signed.append(match.group(1) if match else "")

    s3.meta.events.register("before-send.s3", seen)
    for _ in range(3):
        s3.list_buckets()
    assert signed == ["AKIAREFRESHED1", "AKIAREFRESHED2", "AKIAREFRESHED3"]


# -- against moto's STS ----------------------------------------------------------------------


def test_assumed_role_client_renews_its_credentials_through_sts(aws: AwsClients, unique: str) -> None:
    assumed: list[str] = []
    aws.sts.meta.events.register(
        "before-parameter-build.sts.AssumeRole", lambda params, **_: assumed.append(params["RoleArn"])
    )
    response = aws.sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="first", DurationSeconds=900)
    first = response["Credentials"]
    # 15-minute credentials are inside botocore's advisory window from the start, so every
    # request renews them: a stand-in for a long upload reaching the end of a session.
    client = aws.s3_for_role(first, role_arn=ROLE_ARN, session_name="egress-test", duration_seconds=900)
    signed: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        match = _CREDENTIAL.search(str(request.headers.get("Authorization", b""), "ascii", "replace"))
        signed.append(match.group(1) if match else "")

    client.meta.events.register("before-send.s3", seen)
    bucket = f"dest-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    client.put_object(Bucket=bucket, Key="a", Body=b"one")
    client.put_object(Bucket=bucket, Key="b", Body=b"two")

    assert assumed == [ROLE_ARN] * 3  # the first assumption, then one per request
    assert len(signed) == 2 and first["AccessKeyId"] not in signed and signed[0] != signed[1]
    assert aws.s3.get_object(Bucket=bucket, Key="b")["Body"].read() == b"two"
