"""What every multipart transfer shares: its client and config, the upload's life (start, complete, abort), the window of parts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from botocore.exceptions import ClientError

from egress.destinations.base import raise_if_cancelled
from egress.destinations.s3.config import TransferConfig
from egress.destinations.s3.target import S3Target
from egress.destinations.s3.utils import call
from egress.errors import error_code

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ABORT_DRAIN_SECONDS", "MultipartTask", "MultipartUpload", "PartWindow", "TransferContext"]

log = structlog.get_logger("egress.destinations.s3")

# How long a failed upload waits for parts already on the wire before it aborts: the
# abort must come after them, or a late part could outlive it (S3 documents that an
# abort racing an upload may need repeating). botocore's timeouts bound each request.
ABORT_DRAIN_SECONDS = 10.0
# Granularity at which waits notice a stop request.
POLL_SECONDS = 0.1

T = TypeVar("T")


@dataclass(frozen=True)
class TransferContext:
    """What the transfers of one destination share: the client, how they are cut, the part threads.

    ``executor`` runs part uploads and part copies; ``None`` gives every multipart
    transfer ``max_parts_in_flight`` threads of its own.
    """

    s3: S3Client
    config: TransferConfig
    executor: ThreadPoolExecutor | None = None

    def part_window(self, *, cancel: threading.Event | None, name: str) -> PartWindow[dict[str, Any]]:
        """A window of at most ``max_parts_in_flight`` part tasks (threads named ``name``)."""
        return PartWindow(self.executor, limit=self.config.max_parts_in_flight, cancel=cancel, name=name)


class MultipartUpload:
    """One multipart upload to ``target``: created by :meth:`start`, then completed or aborted."""

    def __init__(self, s3: S3Client, target: S3Target, upload_id: str) -> None:
        self.s3 = s3
        self.target = target
        self.upload_id = upload_id

    @classmethod
    def start(
        cls, s3: S3Client, target: S3Target, arguments: dict[str, Any], *, doing: str
    ) -> MultipartUpload:
        """CreateMultipartUpload with ``arguments`` (the target's, plus metadata and checksum choice)."""
        response = call(s3.create_multipart_upload, arguments, doing=doing)
        return cls(s3, target, response["UploadId"])

    def complete(self, parts: list[dict[str, Any]], *, doing: str) -> Any:
        """CompleteMultipartUpload: the object becomes visible. Returns S3's response."""
        return call(
            self.s3.complete_multipart_upload,
            {
                "Bucket": self.target.bucket,
                "Key": self.target.key,
                "UploadId": self.upload_id,
                "MultipartUpload": {"Parts": parts},
            },
            doing=doing,
        )

    def abort(self) -> None:
        """Abort the upload; a failure is logged (with the id) and swallowed.

        Called while another failure propagates; raising here would replace it. botocore
        retries the request as it does every other; an upload that still could not be
        aborted is caught by the bucket's AbortIncompleteMultipartUpload lifecycle rule.
        """
        try:
            self.s3.abort_multipart_upload(
                Bucket=self.target.bucket, Key=self.target.key, UploadId=self.upload_id
            )
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                return  # already gone (aborted or never created on the server's side)
            self._log_failed_abort(exc)
        except Exception as exc:  # noqa: BLE001 - never replace the failure being handled
            self._log_failed_abort(exc)

    def _log_failed_abort(self, error: Exception) -> None:
        log.error(
            "multipart_abort_failed",
            target=self.target.uri,
            upload_id=self.upload_id,
            error=str(error)[:300],
        )


class PartWindow(Generic[T]):
    """Part tasks with at most ``limit`` in flight; the first failure surfaces in the submitter.

    :meth:`submit` blocks while ``limit`` tasks are outstanding (so the submitter never
    holds more than one part besides them), re-raising any finished task's failure and
    noticing ``cancel`` while it waits. ``executor`` defaults to ``limit`` threads of the
    window's own.
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
        # Set when the transfer is failing: queued tasks do not start their request.
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
            done, _ = wait(self._in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
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


class MultipartTask:
    """A transfer to one target that may open a multipart upload: the base of the upload and the copy.

    ``on_upload_started(upload_id)`` is told the id the moment the upload exists (the
    ledger records it, so a worker taking over a dead one's delivery can abort it); if it
    raises, the upload is aborted. ``cancel`` stops the transfer between parts.
    """

    def __init__(
        self,
        context: TransferContext,
        target: S3Target,
        *,
        cancel: threading.Event | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> None:
        self._context = context
        self._s3 = context.s3
        self._config = context.config
        self._target = target
        self._cancel = cancel
        self._on_upload_started = on_upload_started

    def _open(
        self, arguments: dict[str, Any], *, doing: str, thread_name: str
    ) -> tuple[MultipartUpload, PartWindow[dict[str, Any]]]:
        """Start the multipart upload, make its window of parts, and report its id."""
        upload = MultipartUpload.start(self._s3, self._target, arguments, doing=doing)
        window = self._context.part_window(cancel=self._cancel, name=thread_name)
        if self._on_upload_started is not None:
            try:
                self._on_upload_started(upload.upload_id)
            except BaseException:
                window.close()
                upload.abort()
                raise
        return upload, window
