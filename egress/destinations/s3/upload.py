"""The streamed upload: a chunk iterator to one object, PutObject when short, a bounded multipart upload otherwise.

The stream is cut into parts of ``part_size`` bytes. A stream shorter than one part
becomes one PutObject, sent after the stream ended; a longer one becomes a multipart
upload whose parts are sent by at most ``max_parts_in_flight`` threads while the
producer fills the next part and then waits for a free slot — it never reads further
ahead. CompleteMultipartUpload is the last call, made only once the stream is exhausted
without error, so nothing is visible before then; any failure (``BaseException``
included) aborts the upload, so no incomplete multipart upload is left behind. Every
request carries the SHA-256 that S3 verifies (``ChecksumAlgorithm=SHA256``) unless
:attr:`TransferConfig.send_checksums` is off.

Why our own engine rather than s3transfer's ``TransferManager.upload``: see
``bench/bench_upload_engine.py`` for the figures. In short, the input is a transformed
iterator (decrypted, compressed), not a file; the multipart upload's id must be recorded
in the ledger the moment it exists (a worker taking over a dead one's delivery aborts
it), which ``TransferManager`` keeps to itself; and the SHA-256 of each part and of the
whole stream is computed on the bytes as they pass.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from egress.destinations.base import Delivered, close_abandoned, raise_if_cancelled
from egress.destinations.s3.config import MAX_PARTS, MIB
from egress.destinations.s3.multipart import MultipartTask, MultipartUpload, PartWindow
from egress.destinations.s3.utils import b64, call
from egress.errors import PermanentError, Reason, StopRequested

__all__ = ["StreamedUploadTask"]

log = structlog.get_logger("egress.destinations.s3")


class StreamedUploadTask(MultipartTask):
    """One streamed upload of a chunk iterator to ``target`` (run once with :meth:`run`)."""

    def run(self, chunks: Iterable[bytes]) -> Delivered:
        """Upload ``chunks``; see :meth:`egress.destinations.s3.S3Destination.upload`."""
        self._whole = hashlib.sha256()
        self._size = 0
        # The part being filled: views into the chunks received, joined once when full.
        self._pending: list[memoryview] = []
        self._pending_size = 0
        self._upload: MultipartUpload | None = None
        self._window: PartWindow[dict[str, Any]] | None = None
        try:
            raise_if_cancelled(self._cancel)
            for chunk in chunks:
                raise_if_cancelled(self._cancel)
                self._take(chunk)
            # The stream ended cleanly: only now may anything become visible.
            if self._upload is None:
                self._put_single()
            else:
                if self._pending_size:
                    self._send_part()
                self._complete()
        except BaseException:
            close_abandoned(chunks)
            self._abort()
            raise
        finally:
            if self._window is not None:
                self._window.close()
        return Delivered(name=self._target.key, size=self._size, sha256=self._whole.hexdigest())

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not isinstance(chunk, bytes):
            # A transform may hand out a buffer it reuses; parts keep views, so own the bytes.
            chunk = bytes(chunk)
        self._whole.update(chunk)
        self._size += len(chunk)
        view = memoryview(chunk)
        part_size = self._config.part_size
        while len(view):
            piece = view[: part_size - self._pending_size]
            self._pending.append(piece)
            self._pending_size += len(piece)
            view = view[len(piece) :]
            if self._pending_size == part_size:
                # One whole part and more may follow: from here on it is a multipart upload.
                self._send_part()

    def _send_part(self) -> None:
        if self._upload is None:
            self._start()
        assert self._window is not None
        number = len(self._window) + 1
        if number > MAX_PARTS:
            raise PermanentError(
                Reason.OBJECT_TOO_LARGE,
                f"uploading {self._target.uri}: the stream exceeds {MAX_PARTS} parts of "
                f"{self._config.part_size // MIB} MiB; raise the part size",
            )
        # Wait for a slot before joining, so the part being joined and its pieces are the
        # only part held besides those on the wire: memory stays part_size × (in flight + 1).
        self._window.wait_for_slot()
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._window.submit(self._upload_part, self._window, number, data)

    def _start(self) -> None:
        arguments = self._target.request_arguments() | self._target.content_arguments()
        if self._config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
        self._upload, self._window = self._open(
            arguments, doing=f"starting upload of {self._target.uri}", thread_name="s3-part"
        )

    def _upload_part(self, window: PartWindow[dict[str, Any]], number: int, data: bytes) -> dict[str, Any]:
        """Runs in a part thread: one UploadPart (botocore retries it)."""
        assert self._upload is not None
        if window.halt.is_set():
            raise StopRequested  # the transfer already failed; do not start more parts
        arguments: dict[str, Any] = {
            "Bucket": self._target.bucket,
            "Key": self._target.key,
            "UploadId": self._upload.upload_id,
            "PartNumber": number,
            "Body": data,
        }
        part: dict[str, Any] = {"PartNumber": number}
        if self._config.send_checksums:
            checksum = b64(hashlib.sha256(data).digest())
            arguments["ChecksumAlgorithm"] = "SHA256"
            arguments["ChecksumSHA256"] = checksum
            part["ChecksumSHA256"] = checksum
        response = call(
            self._s3.upload_part, arguments, doing=f"uploading part {number} of {self._target.uri}"
        )
        part["ETag"] = response["ETag"]
        return part

    def _complete(self) -> None:
        assert self._upload is not None and self._window is not None
        parts = self._window.results()
        response = self._upload.complete(parts, doing=f"completing upload of {self._target.uri}")
        self._check_composite(response, parts)

    def _check_composite(self, response: Mapping[str, Any], parts: list[dict[str, Any]]) -> None:
        """If S3 returned the composite SHA-256, it must be the one of the parts we sent."""
        returned = response.get("ChecksumSHA256")
        if not returned or not self._config.send_checksums:
            return
        expected = b64(
            hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)).digest()
        )
        if returned.split("-", 1)[0] != expected:
            raise PermanentError(
                Reason.INTEGRITY_MISMATCH,
                f"completing {self._target.uri}: S3 composite checksum {returned} != {expected}",
            )

    def _put_single(self) -> None:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        arguments = self._target.request_arguments() | self._target.content_arguments()
        arguments["Body"] = body
        checksum = b64(self._whole.digest())
        if self._config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
            arguments["ChecksumSHA256"] = checksum
        response = call(self._s3.put_object, arguments, doing=f"writing {self._target.uri}")
        returned = response.get("ChecksumSHA256")
        if self._config.send_checksums and returned and returned != checksum:
            raise PermanentError(
                Reason.INTEGRITY_MISMATCH, f"writing {self._target.uri}: S3 checksum {returned} != {checksum}"
            )

    def _abort(self) -> None:
        self._pending.clear()
        if self._window is not None and not self._window.stop():
            log.warning("parts_outlive_abort", target=self._target.uri)
        if self._upload is not None:
            self._upload.abort()
