"""The source bucket: listing the objects a flag covers, streaming them, and the small reads format detection makes.

A large object is streamed as parallel ranged GETs when the :class:`~egress.ranged.GetConfig`
says so (:mod:`egress.ranged`); the caller sees the same :class:`OpenedObject` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import EgressError, Reason, translate_client_error
from egress.ranged import SINGLE_GET, GetConfig, open_ranged
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


def _nothing_to_release() -> None:
    return None


@dataclass(frozen=True)
class OpenedObject:
    """A streaming GET (or ranged GETs): the object's metadata and its body as chunks.

    :meth:`close` lets go of the body's connections whether or not it was read.
    """

    size: int
    metadata: Mapping[str, str]
    content_type: str | None
    chunks: Chunks
    extra: Mapping[str, Any] = field(default_factory=dict)
    release: Callable[[], None] = field(default=_nothing_to_release, repr=False, compare=False)

    def close(self) -> None:
        """Stop reading: outstanding GETs are cancelled and their connections released. Idempotent."""
        close = getattr(self.chunks, "close", None)
        if callable(close):
            close()
        self.release()


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


def open_object(
    s3: S3Client, obj: SourceObject, *, chunk_size: int, gets: GetConfig = SINGLE_GET
) -> OpenedObject:
    """Start reading ``obj``; the body is read lazily in pieces of at most ``chunk_size``.

    One streaming GET, unless ``gets`` reads an object of this size in ranges: then the
    first range's GET is made here and the others as the chunks are iterated.
    """
    if gets.uses_ranges(obj.size):
        reader = open_ranged(s3, bucket=obj.bucket, key=obj.key, config=gets, chunk_size=chunk_size)
        return _opened(reader.first, size=reader.size, chunks=reader.chunks(), release=reader.close)
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

    size = int(response.get("ContentLength", obj.size))
    return _opened(response, size=size, chunks=chunks(), release=body.close)


def _opened(
    response: Mapping[str, Any], *, size: int, chunks: Chunks, release: Callable[[], None]
) -> OpenedObject:
    """What a GET's answer says of the object (size, user metadata, content type), with its body."""
    return OpenedObject(
        size=size,
        metadata={k.lower(): v for k, v in response.get("Metadata", {}).items()},
        content_type=response.get("ContentType"),
        chunks=chunks,
        release=release,
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
