"""The source bucket: listing the objects a flag covers, streaming them, and the small reads format detection makes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import EgressError, Reason, translate_client_error
from egress.streams import Chunks

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class SourceObject:
    """One object under a flagged prefix, as listed."""

    bucket: str
    key: str
    size: int
    etag: str = ""
    last_modified: datetime | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class OpenedObject:
    """A streaming GET: the object's metadata and its body as chunks."""

    size: int
    metadata: Mapping[str, str]
    content_type: str | None
    chunks: Chunks
    extra: Mapping[str, Any] = field(default_factory=dict)


def is_flag_or_marker(key: str, *, flag_name: str) -> bool:
    """True for keys never delivered: folder markers and any flag object."""
    return key.endswith("/") or key.rsplit("/", 1)[-1] == flag_name


def list_objects(s3: S3Client, *, bucket: str, prefix: str, flag_name: str) -> Iterator[SourceObject]:
    """Every deliverable object under ``prefix`` (paginated; flags and folder markers skipped)."""
    paginator = s3.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if is_flag_or_marker(key, flag_name=flag_name):
                    continue
                yield SourceObject(
                    bucket=bucket,
                    key=key,
                    size=int(item.get("Size", 0)),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=item.get("LastModified"),
                )
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=f"listing s3://{bucket}/{prefix}") from exc


def open_object(s3: S3Client, obj: SourceObject, *, chunk_size: int) -> OpenedObject:
    """Start a streaming GET of ``obj``; the body is read lazily in ``chunk_size`` pieces."""
    doing = f"reading {obj.uri}"
    try:
        response = s3.get_object(Bucket=obj.bucket, Key=obj.key)
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=doing) from exc
    body = response["Body"]

    def chunks() -> Chunks:
        try:
            yield from body.iter_chunks(chunk_size)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=doing) from exc
        except EgressError:
            raise
        finally:
            body.close()

    return OpenedObject(
        size=int(response.get("ContentLength", obj.size)),
        metadata={k.lower(): v for k, v in response.get("Metadata", {}).items()},
        content_type=response.get("ContentType"),
        chunks=chunks(),
    )


def read_head(s3: S3Client, obj: SourceObject, *, length: int) -> bytes:
    """The first ``length`` bytes of ``obj`` (all of it if shorter): one ranged GET.

    For format detection where the body itself is not read (a re-wrap route looks there
    for an Encryption SDK header).
    """
    if obj.size == 0 or length <= 0:
        return b""  # S3 answers a range on an empty object with 416
    doing = f"reading the first bytes of {obj.uri}"
    try:
        response = s3.get_object(Bucket=obj.bucket, Key=obj.key, Range=f"bytes=0-{length - 1}")
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=doing) from exc


def object_exists(s3: S3Client, *, bucket: str, key: str) -> bool:
    """Whether ``key`` exists: one HeadObject, 404 meaning no (the worker may list the folder, so S3 says 404, not 403)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        error = translate_client_error(exc, doing=f"looking for s3://{bucket}/{key}")
        if error.reason == Reason.SOURCE_MISSING:
            return False
        raise error from exc
    return True
