"""The S3 destination: streamed uploads with bounded memory, and server-side copies.

Streamed uploads (:meth:`S3Destination.upload`) cut the chunk stream into parts of
``part_size`` bytes. A stream shorter than one part becomes one PutObject, sent after
the stream ended; a longer one becomes a multipart upload whose parts are sent by at
most ``max_parts_in_flight`` threads while the producer fills the next part and then
waits for a free slot — it never reads further ahead. CompleteMultipartUpload is the
last call, made only once the stream is exhausted without error, so nothing is visible
before then; any failure (``BaseException`` included) aborts the upload, so no
incomplete multipart upload is left behind. Every request carries the SHA-256 that S3
verifies (``ChecksumAlgorithm=SHA256``) unless :attr:`TransferConfig.send_checksums`
is off.

Server-side copies (:meth:`S3Destination.copy`) never move object bytes through the
worker: one CopyObject up to ``copy_threshold`` (5 GiB, CopyObject's limit), a
multipart UploadPartCopy above it.

Every AWS call is translated where it is made (:func:`egress.errors.translate_client_error`)
and retried with tenacity — bounded attempts, jittered exponential backoff — only on
:class:`~egress.errors.RetryableError`, one request at a time (a part, a copy), never
the whole stream: a consumed iterator cannot be replayed.

What the moto server does with checksums (measured with moto 5.2.5, see
``tests/integration/test_s3_destination.py``): it accepts ``ChecksumSHA256`` on
PutObject, CreateMultipartUpload, UploadPart and CompleteMultipartUpload, stores and
echoes the value sent, but does not verify it (a wrong checksum is accepted); it
computes a full-object SHA-256 for CopyObject with ``ChecksumAlgorithm=SHA256``; it
does not enforce ``CopySourceIfMatch``. Real S3 verifies every one of them.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from egress.destinations import Delivered, raise_if_cancelled
from egress.errors import (
    AWS_REJECTED,
    INTEGRITY,
    INVALID_ROUTE,
    OBJECT_TOO_LARGE,
    PermanentError,
    RetryableError,
    StopRequested,
    error_code,
    translate_client_error,
)
from egress.sources import SourceObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from egress.aws import AwsClients

__all__ = ["S3Destination", "S3Target", "TransferConfig", "assume_role_s3"]

log = structlog.get_logger("egress.destinations.s3")

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MIN_PART_SIZE = 5 * MIB  # S3: every part but the last
MAX_PART_SIZE = 5 * GIB  # S3: UploadPart and UploadPartCopy
MAX_PARTS = 10_000  # S3: parts of one multipart upload
MAX_COPY_OBJECT_SIZE = 5 * GIB  # S3: a single CopyObject
# How long a failed upload waits for parts already on the wire before it aborts: the
# abort must come after them, or a late part could outlive it (S3 documents that an
# abort racing an upload may need repeating). botocore's timeouts bound each request.
ABORT_DRAIN_SECONDS = 10.0
# Granularity at which waits notice a stop request.
_POLL_SECONDS = 0.1
# Content headers a multipart copy carries over from the source (CopyObject with
# MetadataDirective=COPY carries them by itself).
_COPIED_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")

T = TypeVar("T")


@dataclass(frozen=True)
class TransferConfig:
    """How uploads and copies are cut and retried. Validated when built.

    Worst-case memory of one streamed upload is
    ``part_size × (max_parts_in_flight + 1) + chunk size``: the parts on the wire, the
    part being filled, and the one chunk being split across two parts
    (:attr:`upload_memory_bytes`). A worker running ``n`` uploads at once holds at most
    ``n ×`` that (:meth:`worst_case_memory`). Server-side copies hold no object bytes.

    ``copy_threshold`` is the largest object copied with one CopyObject (at most 5 GiB,
    CopyObject's limit); larger ones use multipart UploadPartCopy with parts of
    ``copy_part_size`` (grown if needed to stay within 10,000 parts). Lower it to
    exercise the multipart copy with small objects.

    ``send_checksums`` sends the SHA-256 of every request body for S3 to verify; turn it
    off only for an S3-compatible store that rejects the checksum headers.

    ``attempts`` bounds the tries of one request (a part, a copy) on retryable errors,
    with jittered exponential backoff between ``backoff_seconds`` and
    ``max_backoff_seconds``; botocore's own retries happen inside each try.
    """

    part_size: int = 16 * MIB
    max_parts_in_flight: int = 4
    copy_threshold: int = 5 * GIB
    copy_part_size: int = 512 * MIB
    send_checksums: bool = True
    attempts: int = 4
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 8.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("part_size", "max_parts_in_flight", "copy_threshold", "copy_part_size", "attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} must be an int, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            problems.append(f"part_size must be 5 MiB..5 GiB (S3's part limits), got {self.part_size}")
        if not 1 <= self.max_parts_in_flight <= 64:
            problems.append(f"max_parts_in_flight must be 1..64, got {self.max_parts_in_flight}")
        if not 0 <= self.copy_threshold <= MAX_COPY_OBJECT_SIZE:
            problems.append(
                f"copy_threshold must be 0..5 GiB (CopyObject's limit), got {self.copy_threshold}"
            )
        if not MIN_PART_SIZE <= self.copy_part_size <= MAX_PART_SIZE:
            problems.append(f"copy_part_size must be 5 MiB..5 GiB, got {self.copy_part_size}")
        if not isinstance(self.send_checksums, bool):
            problems.append(f"send_checksums must be a bool, got {self.send_checksums!r}")
        if not 1 <= self.attempts <= 20:
            problems.append(f"attempts must be 1..20, got {self.attempts}")
        if not 0 < self.backoff_seconds <= self.max_backoff_seconds <= 300:
            problems.append(
                "backoff must satisfy 0 < backoff_seconds <= max_backoff_seconds <= 300, got "
                f"{self.backoff_seconds} and {self.max_backoff_seconds}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def upload_memory_bytes(self) -> int:
        """Object bytes one streamed upload holds at most, besides one chunk: ``part_size × (max_parts_in_flight + 1)``."""
        return self.part_size * (self.max_parts_in_flight + 1)

    @property
    def max_stream_size(self) -> int:
        """The largest stream one upload takes: 10,000 parts of ``part_size``."""
        return self.part_size * MAX_PARTS

    def worst_case_memory(self, *, chunk_size: int, concurrent_uploads: int) -> int:
        """Object bytes a worker holds with ``concurrent_uploads`` streamed uploads at once.

        ``(part_size × (max_parts_in_flight + 1) + chunk_size) × concurrent_uploads``.
        """
        return (self.upload_memory_bytes + chunk_size) * concurrent_uploads


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
                INVALID_ROUTE, f"S3 destination needs a bucket and a key, got {self.bucket!r}/{self.key!r}"
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


class S3Destination:
    """Streamed uploads and server-side copies into S3 with one client.

    ``executor`` runs part uploads and part copies; by default every multipart transfer
    starts its own ``max_parts_in_flight`` threads. A shared executor must be used for
    nothing that waits on these transfers (a task waiting on its own parts in the same
    pool could deadlock it); each transfer still keeps at most ``max_parts_in_flight``
    parts in it.
    """

    def __init__(
        self, s3_client: S3Client, *, config: TransferConfig, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.s3 = s3_client
        self.config = config
        self.executor = executor

    # -- streamed uploads --------------------------------------------------------------
    def upload(
        self,
        target: S3Target,
        chunks: Iterable[bytes],
        *,
        cancel: threading.Event | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Delivered:
        """Upload a chunk stream to ``target``; visible only once the stream ended without error.

        ``on_upload_started(upload_id)`` runs as soon as a multipart upload exists (the
        ledger records it there, so a worker taking over a dead one's delivery can abort
        it); if it raises, the upload is aborted. Raises whatever the stream raises,
        :class:`StopRequested` when ``cancel`` is set, or a translated
        :class:`RetryableError`/:class:`PermanentError`; in every case no object and no
        incomplete multipart upload is left behind.
        """
        return _StreamedUpload(self, target, cancel=cancel, on_upload_started=on_upload_started).run(chunks)

    # -- server-side copies ------------------------------------------------------------
    def copy(
        self,
        source: SourceObject,
        target: S3Target,
        *,
        cancel: threading.Event | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Delivered:
        """Copy ``source`` to ``target`` inside S3; no object bytes pass through the worker.

        Metadata and content headers travel with the object; the target's ACL and SSE-KMS
        key apply. ``sha256`` of the result is S3's full-object SHA-256 when it returned
        one (CopyObject asked for it), else ``None``.
        """
        raise_if_cancelled(cancel)
        if source.size <= self.config.copy_threshold or source.size == 0:
            return self._copy_object(source, target)
        return _MultipartCopy(self, source, target, cancel=cancel, on_upload_started=on_upload_started).run()

    def _copy_object(self, source: SourceObject, target: S3Target) -> Delivered:
        arguments = target.request_arguments()
        arguments["CopySource"] = {"Bucket": source.bucket, "Key": source.key}
        # COPY keeps user metadata (the envelope of an encrypted object) and content headers.
        arguments["MetadataDirective"] = "COPY"
        if source.etag:
            # The listing is the plan: copy the version that was listed, not a newer one.
            arguments["CopySourceIfMatch"] = _quoted(source.etag)
        if self.config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
        response = _request(
            self.config, self.s3.copy_object, arguments, doing=f"copying {source.uri} to {target.uri}"
        )
        result = response.get("CopyObjectResult", {})
        return Delivered(name=target.key, size=source.size, sha256=_full_object_sha256(result))


# -- one AWS request, translated and retried -------------------------------------------
def _request(
    config: TransferConfig,
    operation: Callable[..., Any],
    arguments: Mapping[str, Any],
    *,
    doing: str,
    stop: tuple[threading.Event | None, ...] = (),
) -> Any:
    """Make one request; retry it on :class:`RetryableError` until ``config.attempts`` or a stop.

    ``doing`` names the request in error details. A set event in ``stop`` ends the
    backoff at once with :class:`StopRequested` (an aborting transfer must not keep
    retrying its parts).
    """
    retrying = Retrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(config.attempts),
        wait=wait_random_exponential(multiplier=config.backoff_seconds, max=config.max_backoff_seconds),
        sleep=_interruptible_sleep(stop),
        before_sleep=_log_retry,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            try:
                return operation(**arguments)
            except ParamValidationError as exc:
                # A request botocore refuses to build will never succeed: not retryable.
                raise PermanentError(AWS_REJECTED, f"{doing}: {exc}") from exc
            except (ClientError, BotoCoreError) as exc:
                raise translate_client_error(exc, doing=doing) from exc
    raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover


# -- shared machinery ------------------------------------------------------------------
class _PartWindow(Generic[T]):
    """Part tasks with at most ``limit`` in flight; the first failure surfaces in the submitter.

    :meth:`submit` blocks while ``limit`` tasks are outstanding (so the submitter never
    holds more than one part besides them), re-raising any finished task's failure and
    noticing ``cancel`` while it waits.
    """

    def __init__(
        self, executor: ThreadPoolExecutor | None, *, limit: int, cancel: threading.Event | None, name: str
    ) -> None:
        self._owned = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=limit, thread_name_prefix=name)
        self._limit = limit
        self._cancel = cancel
        self._ordered: list[Future[T]] = []
        self._in_flight: set[Future[T]] = set()
        # Set when the transfer is failing: queued tasks and retry backoffs stop at once.
        self.halt = threading.Event()

    def __len__(self) -> int:
        return len(self._ordered)

    def wait_for_slot(self) -> None:
        """Block until fewer than ``limit`` tasks are in flight; raise the first failure."""
        self._reap(block=False)
        while len(self._in_flight) >= self._limit:
            self._reap(block=True)

    def submit(self, function: Callable[..., T], *arguments: Any) -> None:
        """Run ``function(*arguments)`` once a slot is free (see :meth:`wait_for_slot`)."""
        self.wait_for_slot()
        future = self._executor.submit(function, *arguments)
        self._ordered.append(future)
        self._in_flight.add(future)

    def results(self) -> list[T]:
        """Wait for every task; their results in submission order, or the first failure."""
        while self._in_flight:
            self._reap(block=True)
        return [future.result() for future in self._ordered]

    def _reap(self, *, block: bool) -> None:
        raise_if_cancelled(self._cancel)
        if block:
            done, _ = wait(self._in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
        else:
            done = {future for future in self._in_flight if future.done()}
        for future in done:
            self._in_flight.discard(future)
            future.result()  # a failed part fails the transfer here, in the submitting thread
        raise_if_cancelled(self._cancel)

    def stop(self) -> bool:
        """Cancel queued tasks and wait (bounded) for those on the wire; True if all ended."""
        self.halt.set()
        for future in self._in_flight:
            future.cancel()
        running = [future for future in self._in_flight if not future.done()]
        if running:
            _, not_done = wait(running, timeout=ABORT_DRAIN_SECONDS)
            return not not_done
        return True

    def close(self) -> None:
        """Release the threads this window started (tasks still on the wire finish on their own)."""
        if self._owned:
            self._executor.shutdown(wait=False, cancel_futures=True)


class _MultipartUpload:
    """One multipart upload's identity, and the abort that must never mask the failure."""

    def __init__(self, destination: S3Destination, target: S3Target, upload_id: str) -> None:
        self.destination = destination
        self.target = target
        self.upload_id = upload_id

    def abort(self) -> None:
        """Abort the upload: tried a few times, then logged (with the id) and swallowed.

        Called while another failure propagates; raising here would replace it. An upload
        that could not be aborted is also caught by the bucket's AbortIncompleteMultipartUpload
        lifecycle rule.
        """
        s3 = self.destination.s3
        last_error: BaseException | None = None
        for attempt in range(3):
            try:
                s3.abort_multipart_upload(
                    Bucket=self.target.bucket, Key=self.target.key, UploadId=self.upload_id
                )
                return
            except ClientError as exc:
                if error_code(exc) == "NoSuchUpload":
                    return  # already gone (aborted or never created on the server's side)
                last_error = exc
            except Exception as exc:  # noqa: BLE001 - never replace the failure being handled
                last_error = exc
            if attempt < 2:
                time.sleep(0.2 * (attempt + 1))
        log.error(
            "could not abort multipart upload",
            target=self.target.uri,
            upload_id=self.upload_id,
            error=str(last_error)[:300],
        )


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _full_object_sha256(result: Mapping[str, Any]) -> str | None:
    """Hex of a full-object ``ChecksumSHA256`` from S3, ``None`` if absent or composite."""
    checksum = result.get("ChecksumSHA256")
    if not checksum or "-" in checksum or result.get("ChecksumType") == "COMPOSITE":
        return None
    return base64.b64decode(checksum).hex()


def _interruptible_sleep(events: tuple[threading.Event | None, ...]) -> Callable[[float], None]:
    """A tenacity sleep that ends with :class:`StopRequested` as soon as one of ``events`` is set."""
    watched = [event for event in events if event is not None]

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if any(event.is_set() for event in watched):
                raise StopRequested
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _POLL_SECONDS))

    return sleep


def _log_retry(state: Any) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    log.warning(
        "retrying S3 request",
        attempt=state.attempt_number,
        reason=getattr(error, "reason", None),
        detail=getattr(error, "detail", str(error))[:300],
    )


def _close(chunks: Iterable[bytes]) -> None:
    """Close an abandoned stream (a generator) so its source, e.g. an open GET, is released now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - never replace the failure being handled
            log.warning("closing the abandoned stream failed", error=str(exc)[:200])


# -- streamed upload -------------------------------------------------------------------
class _StreamedUpload:
    """One streamed upload: PutObject for a short stream, a bounded multipart upload otherwise."""

    def __init__(
        self,
        destination: S3Destination,
        target: S3Target,
        *,
        cancel: threading.Event | None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> None:
        self._destination = destination
        self._config = destination.config
        self._s3 = destination.s3
        self._target = target
        self._cancel = cancel
        self._on_upload_started = on_upload_started
        self._whole = hashlib.sha256()
        self._size = 0
        # The part being filled: views into the chunks received, joined once when full.
        self._pending: list[memoryview] = []
        self._pending_size = 0
        self._upload: _MultipartUpload | None = None
        self._window: _PartWindow[dict[str, Any]] | None = None

    def run(self, chunks: Iterable[bytes]) -> Delivered:
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
            _close(chunks)
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
                OBJECT_TOO_LARGE,
                f"uploading {self._target.uri}: the stream exceeds {MAX_PARTS} parts of "
                f"{self._config.part_size // MIB} MiB; raise the part size",
            )
        # Wait for a slot before joining, so the part being joined and its pieces are the
        # only part held besides those on the wire: memory stays part_size × (in flight + 1).
        self._window.wait_for_slot()
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._window.submit(self._upload_part, number, data)

    def _start(self) -> None:
        arguments = self._target.request_arguments() | self._target.content_arguments()
        if self._config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
        response = _request(
            self._config,
            self._s3.create_multipart_upload,
            arguments,
            doing=f"starting upload of {self._target.uri}",
        )
        self._upload = _MultipartUpload(self._destination, self._target, response["UploadId"])
        self._window = _PartWindow(
            self._destination.executor,
            limit=self._config.max_parts_in_flight,
            cancel=self._cancel,
            name="s3-part",
        )
        if self._on_upload_started is not None:
            self._on_upload_started(self._upload.upload_id)

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        """Runs in a part thread: one UploadPart, retried on its own."""
        assert self._upload is not None and self._window is not None
        if self._window.halt.is_set():
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
            checksum = _b64(hashlib.sha256(data).digest())
            arguments["ChecksumAlgorithm"] = "SHA256"
            arguments["ChecksumSHA256"] = checksum
            part["ChecksumSHA256"] = checksum
        response = _request(
            self._config,
            self._s3.upload_part,
            arguments,
            doing=f"uploading part {number} of {self._target.uri}",
            stop=(self._window.halt, self._cancel),
        )
        part["ETag"] = response["ETag"]
        return part

    def _complete(self) -> None:
        assert self._upload is not None and self._window is not None
        parts = self._window.results()
        response = _request(
            self._config,
            self._s3.complete_multipart_upload,
            {
                "Bucket": self._target.bucket,
                "Key": self._target.key,
                "UploadId": self._upload.upload_id,
                "MultipartUpload": {"Parts": parts},
            },
            doing=f"completing upload of {self._target.uri}",
            stop=(self._cancel,),
        )
        self._check_composite(response, parts)

    def _check_composite(self, response: Mapping[str, Any], parts: list[dict[str, Any]]) -> None:
        """If S3 returned the composite SHA-256, it must be the one of the parts we sent."""
        returned = response.get("ChecksumSHA256")
        if not returned or not self._config.send_checksums:
            return
        expected = _b64(
            hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)).digest()
        )
        if returned.split("-", 1)[0] != expected:
            raise PermanentError(
                INTEGRITY, f"completing {self._target.uri}: S3 composite checksum {returned} != {expected}"
            )

    def _put_single(self) -> None:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        arguments = self._target.request_arguments() | self._target.content_arguments()
        arguments["Body"] = body
        checksum = _b64(self._whole.digest())
        if self._config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
            arguments["ChecksumSHA256"] = checksum
        response = _request(
            self._config,
            self._s3.put_object,
            arguments,
            doing=f"writing {self._target.uri}",
            stop=(self._cancel,),
        )
        returned = response.get("ChecksumSHA256")
        if self._config.send_checksums and returned and returned != checksum:
            raise PermanentError(
                INTEGRITY, f"writing {self._target.uri}: S3 checksum {returned} != {checksum}"
            )

    def _abort(self) -> None:
        self._pending.clear()
        if self._window is not None and not self._window.stop():
            log.warning("parts still on the wire while aborting", target=self._target.uri)
        if self._upload is not None:
            self._upload.abort()


# -- multipart server-side copy --------------------------------------------------------
class _MultipartCopy:
    """A server-side copy above ``copy_threshold``: UploadPartCopy with bounded parallelism."""

    def __init__(
        self,
        destination: S3Destination,
        source: SourceObject,
        target: S3Target,
        *,
        cancel: threading.Event | None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> None:
        self._destination = destination
        self._config = destination.config
        self._s3 = destination.s3
        self._on_upload_started = on_upload_started
        self._source = source
        self._target = target
        self._cancel = cancel
        self._doing = f"copying {source.uri} to {target.uri}"

    def run(self) -> Delivered:
        head = _request(
            self._config,
            self._s3.head_object,
            {"Bucket": self._source.bucket, "Key": self._source.key},
            doing=f"reading {self._source.uri}",
        )
        size = int(head["ContentLength"])
        etag = str(head["ETag"])
        arguments = self._target.request_arguments()
        # UploadPartCopy carries no metadata: take the source's, so the envelope travels.
        arguments["Metadata"] = dict(head.get("Metadata", {}))
        arguments.update({name: head[name] for name in _COPIED_HEADERS if head.get(name)})
        response = _request(self._config, self._s3.create_multipart_upload, arguments, doing=self._doing)
        upload = _MultipartUpload(self._destination, self._target, response["UploadId"])
        window: _PartWindow[dict[str, Any]] = _PartWindow(
            self._destination.executor,
            limit=self._config.max_parts_in_flight,
            cancel=self._cancel,
            name="s3-copy-part",
        )
        try:
            if self._on_upload_started is not None:
                self._on_upload_started(upload.upload_id)
            part_size = _copy_part_size(size, self._config.copy_part_size)
            for number, first in enumerate(range(0, size, part_size), start=1):
                last = min(first + part_size, size) - 1
                window.submit(self._copy_part, upload, window, number, f"bytes={first}-{last}", etag)
            parts = window.results()
            _request(
                self._config,
                self._s3.complete_multipart_upload,
                {
                    "Bucket": self._target.bucket,
                    "Key": self._target.key,
                    "UploadId": upload.upload_id,
                    "MultipartUpload": {"Parts": parts},
                },
                doing=self._doing,
                stop=(self._cancel,),
            )
        except BaseException:
            if not window.stop():
                log.warning("part copies still running while aborting", target=self._target.uri)
            upload.abort()
            raise
        finally:
            window.close()
        return Delivered(name=self._target.key, size=size, sha256=None)

    def _copy_part(
        self,
        upload: _MultipartUpload,
        window: _PartWindow[dict[str, Any]],
        number: int,
        byte_range: str,
        etag: str,
    ) -> dict[str, Any]:
        """Runs in a part thread: one UploadPartCopy, retried on its own."""
        if window.halt.is_set():
            raise StopRequested
        response = _request(
            self._config,
            self._s3.upload_part_copy,
            {
                "Bucket": self._target.bucket,
                "Key": self._target.key,
                "UploadId": upload.upload_id,
                "PartNumber": number,
                "CopySource": {"Bucket": self._source.bucket, "Key": self._source.key},
                "CopySourceRange": byte_range,
                # Every part from the version the HeadObject saw, never a mix of two.
                "CopySourceIfMatch": _quoted(etag),
            },
            doing=f"copying part {number} of {self._source.uri} to {self._target.uri}",
            stop=(window.halt, self._cancel),
        )
        return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}


def _copy_part_size(size: int, preferred: int) -> int:
    """``preferred``, grown to a whole MiB if ``size`` would otherwise need more than 10,000 parts."""
    needed = math.ceil(size / MAX_PARTS)
    if needed <= preferred:
        return preferred
    return min(MAX_PART_SIZE, math.ceil(needed / MIB) * MIB)


# -- cross-account writes --------------------------------------------------------------
ROLE_CACHE_MAX_ENTRIES = 32
ROLE_REFRESH_SECONDS = 300.0  # take new credentials this long before the old ones expire
ROLE_SESSION_SECONDS = 3600
_role_cache_lock = threading.Lock()
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")


@dataclass(frozen=True)
class AssumedRole:
    """A cached S3 client acting as a role, and when its credentials expire (epoch seconds)."""

    client: S3Client
    expires_at: float


def assume_role_s3(
    aws: AwsClients,
    *,
    role_arn: str,
    session_name: str,
    cache: MutableMapping[str, Any],
    clock: Callable[[], float] = time.time,
) -> S3Client:
    """An S3 client acting as ``role_arn`` (``sts:AssumeRole``), for cross-account writes.

    ``cache`` (a plain dict owned by the caller, shared by its threads) keeps one
    :class:`AssumedRole` per role ARN; credentials are renewed ``ROLE_REFRESH_SECONDS``
    before they expire, and the cache holds at most ``ROLE_CACHE_MAX_ENTRIES`` roles
    (expired ones go first, then those expiring soonest). STS errors are translated:
    AccessDenied is a permanent ``access_denied``; throttling and 5xx are retried here
    with backoff, then raised as retryable.
    """
    now = clock()
    with _role_cache_lock:
        entry = cache.get(role_arn)
        if isinstance(entry, AssumedRole) and entry.expires_at - now > ROLE_REFRESH_SECONDS:
            return entry.client
    # Two threads may both assume the role on a miss; harmless, and no lock is held over STS.
    name = _SESSION_NAME_UNSAFE.sub("-", session_name)[:64].ljust(2, "-")
    doing = f"assuming role {role_arn}"
    retrying = Retrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(3),
        wait=wait_random_exponential(multiplier=0.5, max=5),
        before_sleep=_log_retry,
        reraise=True,
    )
    response: Any = None
    for attempt in retrying:
        with attempt:
            try:
                response = aws.sts.assume_role(
                    RoleArn=role_arn, RoleSessionName=name, DurationSeconds=ROLE_SESSION_SECONDS
                )
            except ParamValidationError as exc:
                raise PermanentError(INVALID_ROUTE, f"{doing}: {exc}") from exc
            except (ClientError, BotoCoreError) as exc:
                raise translate_client_error(exc, doing=doing) from exc
    credentials = response["Credentials"]
    # Credentials that renew themselves: an upload outliving this session goes on signed.
    client = aws.s3_for_role(
        credentials, role_arn=role_arn, session_name=name, duration_seconds=ROLE_SESSION_SECONDS
    )
    assumed = AssumedRole(client=client, expires_at=credentials["Expiration"].timestamp())
    with _role_cache_lock:
        cache[role_arn] = assumed
        _evict_roles(cache, now=now)
    return client


def _evict_roles(cache: MutableMapping[str, Any], *, now: float) -> None:
    for arn in [
        arn
        for arn, entry in cache.items()
        if not isinstance(entry, AssumedRole) or entry.expires_at - now <= ROLE_REFRESH_SECONDS
    ]:
        del cache[arn]
    if len(cache) > ROLE_CACHE_MAX_ENTRIES:
        by_expiry = sorted(cache, key=lambda arn: cache[arn].expires_at)
        for arn in by_expiry[: len(cache) - ROLE_CACHE_MAX_ENTRIES]:
            del cache[arn]
