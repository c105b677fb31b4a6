"""The two error families the worker's loop decides on, and the translation of AWS errors.

Every failure that reaches the loop is either a :class:`RetryableError` (try again
later: throttling, 5xx, timeouts, KMS unavailable, disk short) or a
:class:`PermanentError` (retrying cannot help: the message goes to the DLQ at once).
Each carries a :class:`~egress.kernel.errors.Reason` (the DLQ message attribute and a
metric label; the vocabulary of both programs is in :mod:`egress.kernel.errors`) and a
one-line human ``detail``. Errors from AWS are translated where the call is made, by
:func:`translate_client_error`.
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

from egress.kernel.errors import EgressError, Reason, StopRequested

__all__ = [
    "TRANSIENT_NETWORK_ERRORS",
    "EgressError",
    "PermanentError",
    "Reason",
    "RetryableError",
    "StopRequested",
    "error_code",
    "translate_client_error",
]


class RetryableError(EgressError):
    """A failure that may pass if the same work is tried again later."""


class PermanentError(EgressError):
    """A failure that no retry can fix: the message goes to the DLQ with the reason."""


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


def http_status(exc: ClientError) -> int:
    """The HTTP status of a ``ClientError`` (0 if none)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def translate_client_error(exc: BaseException, *, doing: str) -> EgressError:
    """Map a botocore error raised while ``doing`` something to one of the two families.

    ``doing`` is a short human phrase ("reading s3://b/k", "assuming role …") that
    becomes part of the detail; it must not contain secrets.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = http_status(exc)
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        if code in _THROTTLING_CODES or status == 429:
            return RetryableError(Reason.THROTTLED, f"{doing}: throttled ({code})")
        # Before the 403 test below: S3 answers an expired token with 400, STS and others with 403.
        if code in _EXPIRED_CREDENTIALS_CODES:
            return RetryableError(
                Reason.CREDENTIALS_EXPIRED, f"{doing}: temporary credentials expired ({code})"
            )
        if code in _REQUEST_TIMEOUT_CODES:
            return RetryableError(
                Reason.REQUEST_TIMEOUT, f"{doing}: the service timed out reading the request ({code})"
            )
        if code in _ACCESS_DENIED_CODES or status == 403:
            return PermanentError(Reason.ACCESS_DENIED, f"{doing}: access denied ({code})")
        if code in _MISSING_BUCKET_CODES:
            return PermanentError(Reason.DESTINATION_MISSING, f"{doing}: {code}")
        if code in _MISSING_CODES or status == 404:
            return PermanentError(Reason.SOURCE_MISSING, f"{doing}: not found ({code})")
        if status >= 500 or code in {"InternalError", "ServiceUnavailable", "InternalFailure"}:
            return RetryableError(Reason.AWS_UNAVAILABLE, f"{doing}: {code or status} {message}")
        return PermanentError(Reason.AWS_REJECTED, f"{doing}: {code or status} {message}")
    if isinstance(exc, TRANSIENT_NETWORK_ERRORS):
        return RetryableError(Reason.AWS_UNAVAILABLE, f"{doing}: {type(exc).__name__}")
    if isinstance(exc, BotoCoreError):
        return RetryableError(Reason.TRANSIENT, f"{doing}: {type(exc).__name__}: {exc}")
    return RetryableError(Reason.TRANSIENT, f"{doing}: {type(exc).__name__}: {exc}")
