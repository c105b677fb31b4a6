"""The two error families the worker's loop decides on.

Every failure that reaches the loop is either a :class:`RetryableError` (try again
later: throttling, 5xx, timeouts, KMS unavailable, disk short) or a
:class:`PermanentError` (retrying cannot help: the message goes to the DLQ at once).
Each carries a short machine-readable ``reason`` (used as the DLQ message attribute
and as a metric label, so the set of reasons is small and fixed) and a one-line
human ``detail``. Errors from AWS are translated where the call is made.
"""

from __future__ import annotations

from typing import Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

# Reasons of permanent failures (DLQ attribute ``reason``).
MALFORMED_BODY: Final = "malformed_body"
NO_ROUTE: Final = "no_route"
INVALID_ROUTE: Final = "invalid_route"
ACCESS_DENIED: Final = "access_denied"
UNKNOWN_ENCRYPTION: Final = "unknown_encryption"
AUTHENTICATION_FAILED: Final = "authentication_failed"
KEY_NOT_ALLOWED: Final = "key_not_allowed"
UNSAFE_KEY: Final = "unsafe_key"
SOURCE_MISSING: Final = "source_missing"
DESTINATION_MISSING: Final = "destination_missing"
BUCKET_MISMATCH: Final = "bucket_mismatch"
AWS_REJECTED: Final = "aws_rejected"
INTEGRITY: Final = "integrity_mismatch"
NAME_COLLISION: Final = "name_collision"

# Reasons of retryable failures (metric label, log field).
THROTTLED: Final = "throttled"
AWS_UNAVAILABLE: Final = "aws_unavailable"
KMS_UNAVAILABLE: Final = "kms_unavailable"
DISK_SHORT: Final = "disk_short"
IN_PROGRESS_ELSEWHERE: Final = "in_progress_elsewhere"
LEASE_LOST: Final = "lease_lost"
SHUTDOWN: Final = "shutdown"
TRANSIENT: Final = "transient"
CREDENTIALS_EXPIRED: Final = "credentials_expired"
REQUEST_TIMEOUT: Final = "request_timeout"


class EgressError(Exception):
    """Base of both families: a reason code and one human line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RetryableError(EgressError):
    """A failure that may pass if the same work is tried again later."""


class PermanentError(EgressError):
    """A failure that no retry can fix: the message goes to the DLQ with the reason."""


class StopRequested(BaseException):  # noqa: N818 - control flow, not an error
    """Raised inside work to unwind when the worker is told to abort.

    A ``BaseException`` so that ``except Exception`` in delivery code cannot swallow it.
    """


_THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "LimitExceededException",
    }
)
_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "KMS.AccessDeniedException",
        "InvalidClientTokenId",
    }
)
# Temporary credentials that lapsed mid-way (a long upload outliving an assumed role's
# session): new credentials make the same request pass, so never ``access_denied``.
_EXPIRED_CREDENTIALS_CODES: Final = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
# The service gave up waiting for the request's bytes (a slow or stalled sender).
_REQUEST_TIMEOUT_CODES: Final = frozenset({"RequestTimeout", "RequestTimeoutException"})
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NotFound", "404"})
_MISSING_BUCKET_CODES: Final = frozenset({"NoSuchBucket", "ResourceNotFoundException"})

TRANSIENT_NETWORK_ERRORS: Final = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ``ClientError`` (empty string if none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate_client_error(exc: BaseException, *, doing: str) -> EgressError:
    """Map a botocore error raised while ``doing`` something to one of the two families.

    ``doing`` is a short human phrase ("reading s3://b/k", "assuming role …") that
    becomes part of the detail; it must not contain secrets.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        if code in _THROTTLING_CODES or status == 429:
            return RetryableError(THROTTLED, f"{doing}: throttled ({code})")
        # Before the 403 test below: S3 answers an expired token with 400, STS and others with 403.
        if code in _EXPIRED_CREDENTIALS_CODES:
            return RetryableError(CREDENTIALS_EXPIRED, f"{doing}: temporary credentials expired ({code})")
        if code in _REQUEST_TIMEOUT_CODES:
            return RetryableError(
                REQUEST_TIMEOUT, f"{doing}: the service timed out reading the request ({code})"
            )
        if code in _ACCESS_DENIED_CODES or status == 403:
            return PermanentError(ACCESS_DENIED, f"{doing}: access denied ({code})")
        if code in _MISSING_BUCKET_CODES:
            return PermanentError(DESTINATION_MISSING, f"{doing}: {code}")
        if code in _MISSING_CODES or status == 404:
            return PermanentError(SOURCE_MISSING, f"{doing}: not found ({code})")
        if status >= 500 or code in {"InternalError", "ServiceUnavailable", "InternalFailure"}:
            return RetryableError(AWS_UNAVAILABLE, f"{doing}: {code or status} {message}")
        return PermanentError(AWS_REJECTED, f"{doing}: {code or status} {message}")
    if isinstance(exc, TRANSIENT_NETWORK_ERRORS):
        return RetryableError(AWS_UNAVAILABLE, f"{doing}: {type(exc).__name__}")
    if isinstance(exc, BotoCoreError):
        return RetryableError(TRANSIENT, f"{doing}: {type(exc).__name__}: {exc}")
    return RetryableError(TRANSIENT, f"{doing}: {type(exc).__name__}: {exc}")

# Appended by the destinations (permanent): a stream longer than 10,000 parts of the
# configured part size, S3's limit for one multipart upload.
OBJECT_TOO_LARGE: Final = "object_too_large"
