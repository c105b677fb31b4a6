"""What the upload and the copy share: one translated S3 request, and the checksum and ETag formats."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from egress.errors import PermanentError, Reason, translate_client_error

__all__ = ["b64", "call", "full_object_sha256", "quoted"]


def call(operation: Callable[..., Any], arguments: Mapping[str, Any], *, doing: str) -> Any:
    """Make one request, its errors translated here into the two families; ``doing`` names it in details.

    No retry loop of our own: botocore's standard mode (:mod:`egress.aws`) already retries
    the request on throttling, 5xx and connection errors, with backoff. Another loop here
    would multiply the attempts (4 × 4 before) and the time a failing transfer takes to
    give up; a transfer that still fails is retried whole by delivery.
    """
    try:
        return operation(**arguments)
    except ParamValidationError as exc:
        # A request botocore refuses to build will never succeed: not retryable.
        raise PermanentError(Reason.AWS_REJECTED, f"{doing}: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=doing) from exc


def quoted(etag: str) -> str:
    """An ETag in the double quotes ``CopySourceIfMatch`` compares with."""
    return etag if etag.startswith('"') else f'"{etag}"'


def b64(digest: bytes) -> str:
    """A digest in the base64 form of S3's ``Checksum*`` fields."""
    return base64.b64encode(digest).decode("ascii")


def full_object_sha256(result: Mapping[str, Any]) -> str | None:
    """Hex of a full-object ``ChecksumSHA256`` from S3, ``None`` if absent or composite."""
    checksum = result.get("ChecksumSHA256")
    if not checksum or "-" in checksum or result.get("ChecksumType") == "COMPOSITE":
        return None
    return base64.b64decode(checksum).hex()
