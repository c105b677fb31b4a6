"""Server-side copies: one CopyObject up to ``copy_threshold``, a bounded multipart UploadPartCopy above it.

No object bytes pass through the worker. Metadata and content headers travel with the
object (the envelope of an encrypted object included), unless a ``metadata_for`` gives
the copy metadata of its own (a re-wrapped envelope: ``MetadataDirective=REPLACE``, the
content headers carried over by hand); the target's ACL and SSE-KMS key apply. Every
part is copied from the version first seen (``CopySourceIfMatch``), never a mix of two.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from egress.destinations.base import Delivered, MetadataFor, raise_if_cancelled
from egress.destinations.s3.config import MAX_PART_SIZE, MAX_PARTS, MIB
from egress.destinations.s3.multipart import MultipartTask, MultipartUpload, PartWindow, TransferContext
from egress.destinations.s3.target import S3Target
from egress.destinations.s3.utils import call, full_object_sha256, quoted
from egress.errors import StopRequested
from egress.sources import SourceObject

__all__ = ["MultipartCopyTask", "copy_object", "copy_part_size"]

log = structlog.get_logger("egress.destinations.s3")

# Content headers a multipart copy carries over from the source (CopyObject with
# MetadataDirective=COPY carries them by itself).
_COPIED_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")


def copy_object(
    context: TransferContext,
    source: SourceObject,
    target: S3Target,
    *,
    metadata_for: MetadataFor | None = None,
) -> Delivered:
    """One CopyObject of ``source`` (the listed version) to ``target``, metadata and headers kept.

    With ``metadata_for``, a HeadObject of the listed version gives the source's metadata
    to it first; new metadata replaces the source's. ``sha256`` of the result is S3's
    full-object SHA-256 when it returned one, else ``None``.
    """
    arguments = target.request_arguments()
    arguments["CopySource"] = {"Bucket": source.bucket, "Key": source.key}
    # COPY keeps user metadata (the envelope of an encrypted object) and content headers.
    arguments["MetadataDirective"] = "COPY"
    if source.etag:
        # The listing is the plan: copy the version that was listed, not a newer one.
        arguments["CopySourceIfMatch"] = quoted(source.etag)
    if metadata_for is not None:
        head_arguments: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
        if source.etag:
            head_arguments["IfMatch"] = quoted(source.etag)  # the metadata of the version copied
        head = call(context.s3.head_object, head_arguments, doing=f"reading {source.uri}")
        replaced = metadata_for(dict(head.get("Metadata", {})))
        if replaced is not None:
            arguments.update(_replacing(head, replaced))
    if context.config.send_checksums:
        arguments["ChecksumAlgorithm"] = "SHA256"
    response = call(context.s3.copy_object, arguments, doing=f"copying {source.uri} to {target.uri}")
    result = response.get("CopyObjectResult", {})
    return Delivered(name=target.key, size=source.size, sha256=full_object_sha256(result))


class MultipartCopyTask(MultipartTask):
    """A server-side copy above ``copy_threshold``: UploadPartCopy with at most ``max_parts_in_flight`` parts."""

    def __init__(
        self,
        context: TransferContext,
        target: S3Target,
        *,
        source: SourceObject,
        cancel: threading.Event | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        metadata_for: MetadataFor | None = None,
    ) -> None:
        super().__init__(context, target, cancel=cancel, on_upload_started=on_upload_started)
        self._source = source
        self._metadata_for = metadata_for
        self._doing = f"copying {source.uri} to {target.uri}"

    def run(self) -> Delivered:
        """Copy; on any failure the multipart upload is aborted and the failure re-raised."""
        raise_if_cancelled(self._cancel)
        head = call(
            self._s3.head_object,
            {"Bucket": self._source.bucket, "Key": self._source.key},
            doing=f"reading {self._source.uri}",
        )
        size = int(head["ContentLength"])
        etag = str(head["ETag"])
        arguments = self._target.request_arguments()
        # UploadPartCopy carries no metadata: take the source's, so the envelope travels
        # (or what metadata_for gives in its place, on CreateMultipartUpload as well).
        metadata: Mapping[str, str] = dict(head.get("Metadata", {}))
        replaced = self._metadata_for(metadata) if self._metadata_for is not None else None
        if replaced is not None:
            metadata = replaced
        arguments["Metadata"] = dict(metadata)
        arguments.update({name: head[name] for name in _COPIED_HEADERS if head.get(name)})
        upload, window = self._open(arguments, doing=self._doing, thread_name="s3-copy-part")
        try:
            part_size = copy_part_size(size, self._config.copy_part_size)
            for number, first in enumerate(range(0, size, part_size), start=1):
                last = min(first + part_size, size) - 1
                window.submit(self._copy_part, upload, window, number, f"bytes={first}-{last}", etag)
            upload.complete(window.results(), doing=self._doing)
        except BaseException:
            if not window.stop():
                log.warning("part_copies_outlive_abort", target=self._target.uri)
            upload.abort()
            raise
        finally:
            window.close()
        return Delivered(name=self._target.key, size=size, sha256=None)

    def _copy_part(
        self,
        upload: MultipartUpload,
        window: PartWindow[dict[str, Any]],
        number: int,
        byte_range: str,
        etag: str,
    ) -> dict[str, Any]:
        """Runs in a part thread: one UploadPartCopy (botocore retries it)."""
        if window.halt.is_set():
            raise StopRequested
        response = call(
            self._s3.upload_part_copy,
            {
                "Bucket": self._target.bucket,
                "Key": self._target.key,
                "UploadId": upload.upload_id,
                "PartNumber": number,
                "CopySource": {"Bucket": self._source.bucket, "Key": self._source.key},
                "CopySourceRange": byte_range,
                # Every part from the version the HeadObject saw, never a mix of two.
                "CopySourceIfMatch": quoted(etag),
            },
            doing=f"copying part {number} of {self._source.uri} to {self._target.uri}",
        )
        return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}


def _replacing(head: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, Any]:
    """CopyObject arguments that give the copy ``metadata``; REPLACE drops the content headers, so they are set again."""
    arguments: dict[str, Any] = {"MetadataDirective": "REPLACE", "Metadata": dict(metadata)}
    arguments.update({name: head[name] for name in _COPIED_HEADERS if head.get(name)})
    return arguments


def copy_part_size(size: int, preferred: int) -> int:
    """``preferred``, grown to a whole MiB if ``size`` would otherwise need more than 10,000 parts."""
    needed = math.ceil(size / MAX_PARTS)
    if needed <= preferred:
        return preferred
    return min(MAX_PART_SIZE, math.ceil(needed / MIB) * MIB)
