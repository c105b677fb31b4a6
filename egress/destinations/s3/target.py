"""Where and how one object is written: :class:`S3Target`, and the request arguments it implies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egress.errors import PermanentError, Reason

__all__ = ["S3Target"]


@dataclass(frozen=True)
class S3Target:
    """Where and how one object is written.

    ``kms_key_id`` selects SSE-KMS with that key; ``bucket_owner_full_control`` adds the
    ``bucket-owner-full-control`` ACL that cross-account writes need so the destination
    bucket's owner owns what it receives. ``metadata`` and ``content_type`` apply to
    streamed uploads; a server-side copy carries the source's own (so the envelope
    metadata of an encrypted object travels with its bytes).
    """

    bucket: str
    key: str
    kms_key_id: str | None = None
    bucket_owner_full_control: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def __post_init__(self) -> None:
        # An empty bucket or key can only come from a route row that slipped validation:
        # a permanent, operator-fixable failure rather than a crash.
        if not self.bucket or not self.key:
            raise PermanentError(
                Reason.INVALID_ROUTE,
                f"S3 destination needs a bucket and a key, got {self.bucket!r}/{self.key!r}",
            )

    @property
    def uri(self) -> str:
        """``s3://bucket/key``, for logs and error details."""
        return f"s3://{self.bucket}/{self.key}"

    def request_arguments(self) -> dict[str, Any]:
        """Bucket, key, ACL and SSE arguments shared by PutObject, CopyObject and CreateMultipartUpload."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.kms_key_id:
            arguments["ServerSideEncryption"] = "aws:kms"
            arguments["SSEKMSKeyId"] = self.kms_key_id
        if self.bucket_owner_full_control:
            arguments["ACL"] = "bucket-owner-full-control"
        return arguments

    def content_arguments(self) -> dict[str, Any]:
        """User metadata and content type of a streamed upload."""
        arguments: dict[str, Any] = {"Metadata": dict(self.metadata)}
        if self.content_type:
            arguments["ContentType"] = self.content_type
        return arguments
