"""The S3 destination: :class:`S3Destination`, streamed uploads with bounded memory and server-side copies.

One module per operation, as s3transfer is laid out: :mod:`.config` (how transfers
are cut, and the memory that costs), :mod:`.target` (where and how an object is
written), :mod:`.upload` (the streamed upload), :mod:`.copy` (CopyObject and the
multipart copy), :mod:`.multipart` (a multipart upload's life and its window of parts
in flight), :mod:`.roles` (clients acting as another account's role), :mod:`.utils`
(one translated request, checksum formats). This module is the facade.

Every AWS call is made once and translated where it is made
(:func:`egress.errors.translate_client_error`); botocore's standard retry mode retries
each request (throttling, 5xx, connection errors). Nothing here retries a whole
transfer: a consumed iterator cannot be replayed, so delivery retries the object.

What the moto server does with checksums (measured with moto 5.2.5, see
``tests/integration/test_s3_destination.py``): it accepts ``ChecksumSHA256`` on
PutObject, CreateMultipartUpload, UploadPart and CompleteMultipartUpload, stores and
echoes the value sent, but does not verify it (a wrong checksum is accepted); it
computes a full-object SHA-256 for CopyObject with ``ChecksumAlgorithm=SHA256``; it
does not enforce ``CopySourceIfMatch``. Real S3 verifies every one of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from egress.destinations.base import Delivered, MetadataFor, raise_if_cancelled
from egress.destinations.s3.config import GIB, KIB, MIB, TransferConfig
from egress.destinations.s3.copy import MultipartCopyTask, copy_object
from egress.destinations.s3.multipart import TransferContext
from egress.destinations.s3.roles import ROLE_CACHE_MAX_ENTRIES, AssumedRole, RoleClients, assume_role
from egress.destinations.s3.target import S3Target
from egress.destinations.s3.upload import StreamedUploadTask
from egress.sources import SourceObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "GIB",
    "KIB",
    "MIB",
    "ROLE_CACHE_MAX_ENTRIES",
    "AssumedRole",
    "RoleClients",
    "S3Destination",
    "S3Target",
    "TransferConfig",
    "assume_role",
]


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
        self._context = TransferContext(s3_client, config, executor)

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
        :class:`~egress.errors.StopRequested` when ``cancel`` is set, or a translated
        :class:`~egress.errors.RetryableError`/:class:`~egress.errors.PermanentError`; in
        every case no object and no incomplete multipart upload is left behind.
        """
        task = StreamedUploadTask(self._context, target, cancel=cancel, on_upload_started=on_upload_started)
        return task.run(chunks)

    def copy(
        self,
        source: SourceObject,
        target: S3Target,
        *,
        cancel: threading.Event | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """Copy ``source`` to ``target`` inside S3; no object bytes pass through the worker.

        One CopyObject up to ``copy_threshold``, a multipart copy above it (whose upload id
        goes to ``on_upload_started`` as for :meth:`upload`). Metadata and content headers
        travel with the object, unless ``metadata_for`` (asked with the source's metadata)
        gives the copy its own; the target's ACL and SSE-KMS key apply. ``sha256`` of the
        result is S3's full-object SHA-256 when it returned one, else ``None``.
        """
        raise_if_cancelled(cancel)
        if source.size <= self.config.copy_threshold or source.size == 0:
            return copy_object(self._context, source, target, metadata_for=metadata_for)
        task = MultipartCopyTask(
            self._context,
            target,
            source=source,
            cancel=cancel,
            on_upload_started=on_upload_started,
            metadata_for=metadata_for,
        )
        return task.run()
