"""A route's destination: the S3 and SFT implementations of :class:`Destination`, and :meth:`Destinations.for_route`.

Each knows what it records in the ledger and when, since its own resume reads it back
(``docs/exactly-once.md``): S3 records ``uploading`` with the upload id the moment a
multipart upload exists and ``done`` once the object is there; SFT records ``written``
after the fsync and before the rename (write-ahead: the agent can only see a file whose
row exists), and the agent's receipts follow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from egress.destinations.base import Delivered, Destination, MetadataFor, ObjectJournal
from egress.destinations.s3 import RoleClients, S3Destination, S3Target
from egress.destinations.sft import SftDestination
from egress.errors import PermanentError, Reason, error_code, translate_client_error
from egress.ledger_table import DONE, SFT_DELIVERED_STATES, UNSENT_KEY, UPLOADING, WRITTEN, ObjectRecord
from egress.routing import Route, RouteMatch
from egress.sources import OpenedObject, SourceObject

__all__ = ["Destinations", "S3RouteDestination", "SftRouteDestination"]

log = structlog.get_logger("egress.delivery")


@dataclass(frozen=True)
class Destinations:
    """What a route's destination is made from: one set per delivery service, shared by its threads.

    ``s3`` writes with the worker's own client; ``roles`` gives clients for routes that
    write as another account's role; ``receipt_grace`` is how long a resumed SFT delivery
    waits for the agent's receipt of a file it recorded but can no longer find (the agent
    claimed it a moment ago), before it writes the file again.
    """

    s3: S3Destination
    roles: RoleClients
    sft: SftDestination
    receipt_grace: float = 3.0

    def for_route(self, match: RouteMatch, *, taken_over: bool) -> Destination:
        """The destination of one delivery of ``match``; ``taken_over`` when its claim was a lapsed one's."""
        route = match.route
        if route.rewrap_datakey and (route.transfer_type != "S3" or route.decrypt):
            # Routing refuses these rows too; a re-wrapped key only travels as S3 metadata,
            # and a decrypted body has no key left to re-wrap.
            raise PermanentError(
                Reason.INVALID_ROUTE, "rewrap_datakey applies to S3 routes that do not decrypt"
            )
        if route.transfer_type == "SFT":
            return SftRouteDestination(
                self.sft,
                folder=match.destination_prefix.strip("/"),
                taken_over=taken_over,
                receipt_grace=self.receipt_grace,
            )
        # Routing refuses any other transfer type before a route is delivered.
        return S3RouteDestination(self.s3, self.roles, route=route, taken_over=taken_over)


class S3RouteDestination:
    """A route's S3 bucket: server-side copy when nothing changes the bytes, else a streamed upload."""

    def __init__(self, s3: S3Destination, roles: RoleClients, *, route: Route, taken_over: bool) -> None:
        self._own = s3
        self._roles = roles
        self._route = route
        self._taken_over = taken_over
        # Nothing to transform and the worker's own credentials: the bytes can stay in S3.
        self._plain_copy = not (route.decrypt or route.compress or route.role_arn)

    # -- resuming --------------------------------------------------------------------------
    def resume(
        self,
        records: Mapping[str, ObjectRecord],
        *,
        reread: Callable[[str], ObjectRecord | None],
        cancel: threading.Event,
    ) -> dict[str, ObjectRecord]:
        """Objects recorded ``done``; every multipart upload an earlier attempt recorded is aborted."""
        done = {name: record for name, record in records.items() if record.status == DONE}
        for record in records.values():
            if record.status == UPLOADING and record.mpu_id:
                self._abort_recorded_upload(record)
        return done

    def _abort_recorded_upload(self, record: ObjectRecord) -> None:
        s3 = self._writer().s3
        doing = f"aborting the upload of {record.name}"
        try:
            s3.abort_multipart_upload(
                Bucket=record.bucket or self._route.destination_bucket or "",
                Key=record.name,
                UploadId=record.mpu_id or "",
            )
            log.info("earlier_upload_aborted", key=record.name, upload_id=record.mpu_id)
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise translate_client_error(exc, doing=doing) from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=doing) from exc

    def _abort_open_uploads(self, key: str) -> None:
        """Abort open uploads to ``key``: a dead claim's, opened but not recorded (killed in between).

        Made before this claim writes ``key``, so any other upload to it is a stale
        writer's. (The upload's ``Initiated`` time cannot tell whose it is: the emulator
        reports a fixed date.)
        """
        s3 = self._writer().s3
        bucket = self._route.destination_bucket or ""
        try:
            paginator = s3.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") != key:
                        continue
                    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
                    log.info("lapsed_claim_upload_aborted", key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=f"listing open uploads of s3://{bucket}/{key}") from exc

    # -- writing ---------------------------------------------------------------------------
    @property
    def write_buffer_bytes(self) -> int:
        """A streamed upload's parts in flight and the one being filled."""
        return self._own.config.upload_memory_bytes

    def copies(self, source: SourceObject) -> bool:
        """True when the route changes nothing and writes with the worker's own credentials."""
        return self._plain_copy

    def prepare(self, source: SourceObject, name: str) -> None:
        """After a takeover, abort uploads to ``name`` a lapsed claim left, if this write is multipart too."""
        multipart = not self._plain_copy or source.size > self._own.config.copy_threshold
        if self._taken_over and multipart:
            self._abort_open_uploads(name)

    def copy(
        self,
        source: SourceObject,
        name: str,
        *,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """CopyObject, or a multipart copy (recorded ``uploading`` as it starts) above the threshold."""
        return self._own.copy(
            source,
            self._target(name),
            cancel=cancel,
            on_upload_started=self._upload_started(journal),
            metadata_for=metadata_for,
        )

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        opened: OpenedObject,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """A streamed upload; a multipart one is recorded ``uploading`` the moment it exists."""
        route = self._route
        # Undecrypted bytes keep their envelope metadata, or they could never be read.
        metadata = {} if route.decrypt else dict(opened.metadata)
        replaced = metadata_for(opened.metadata) if metadata_for is not None else None
        target = self._target(
            name,
            metadata=metadata if replaced is None else dict(replaced),
            content_type=None if route.compress else opened.content_type,
        )
        return self._writer().upload(
            target, chunks, cancel=cancel, on_upload_started=self._upload_started(journal)
        )

    def write_bytes(self, name: str, data: bytes, *, content_type: str, journal: ObjectJournal) -> Delivered:
        """One small upload."""
        target = self._target(name, content_type=content_type)
        return self._writer().upload(target, iter([data]))

    def record_delivered(self, delivered: Delivered, *, journal: ObjectJournal) -> None:
        """``done``, in the next checkpoint batch."""
        journal.record_later(DONE, delivered)

    # -- helpers ---------------------------------------------------------------------------
    def _upload_started(self, journal: ObjectJournal) -> Callable[[str], None]:
        bucket = self._route.destination_bucket or ""

        def record(upload_id: str) -> None:
            journal.record_now(UPLOADING, mpu_id=upload_id, bucket=bucket)

        return record

    def _target(
        self, name: str, *, metadata: dict[str, str] | None = None, content_type: str | None = None
    ) -> S3Target:
        route = self._route
        return S3Target(
            bucket=route.destination_bucket or "",
            key=name,
            kms_key_id=route.destination_kms_key_id or None,
            bucket_owner_full_control=bool(route.role_arn),
            metadata=metadata or {},
            content_type=content_type,
        )

    def _writer(self) -> S3Destination:
        """The worker's own writer, or one acting as the route's role (its client cached, renewed before expiry)."""
        if not self._route.role_arn:
            return self._own
        return S3Destination(self._roles.client_for(self._route.role_arn), config=self._own.config)


class SftRouteDestination:
    """A route's folder on the volume shared with the SFT agent: atomic files, recorded before the rename."""

    def __init__(self, sft: SftDestination, *, folder: str, taken_over: bool, receipt_grace: float) -> None:
        self._sft = sft
        self._folder = folder
        self._taken_over = taken_over
        self._receipt_grace = receipt_grace

    # -- resuming --------------------------------------------------------------------------
    def resume(
        self,
        records: Mapping[str, ObjectRecord],
        *,
        reread: Callable[[str], ObjectRecord | None],
        cancel: threading.Event,
    ) -> dict[str, ObjectRecord]:
        """Files the agent has, or that are on the volume (a recorded rename finished now).

        A file recorded ``written`` that is neither on the volume nor in its temp file is
        waited for (the agent's receipt follows its claim at once) before it counts as
        lost. After a takeover, the lapsed claim's temp files in the folder are removed.
        """
        done = self._recorded_files(records, reread=reread, cancel=cancel)
        if self._taken_over:
            removed = self._sft.sweep_temp_files(self._folder)
            if removed:
                log.info("lapsed_claim_temp_files_removed", count=removed)
        return done

    def _recorded_files(
        self,
        records: Mapping[str, ObjectRecord],
        *,
        reread: Callable[[str], ObjectRecord | None],
        cancel: threading.Event,
    ) -> dict[str, ObjectRecord]:
        done: dict[str, ObjectRecord] = {}
        unaccounted: list[ObjectRecord] = []
        for name, record in records.items():
            if record.status in SFT_DELIVERED_STATES - {WRITTEN}:
                done[name] = record  # the agent has it, sent it or parked it
            elif record.status != WRITTEN:
                continue
            elif self._sft.exists(name):
                done[name] = record
            elif record.temp_name and self._sft.commit_temp(name, record.temp_name):
                log.info("lapsed_claim_write_finished", file=name)
                done[name] = record
            else:
                unaccounted.append(record)
        if not unaccounted:
            return done
        # Neither the file nor its temp file is there: the agent may have claimed it a
        # moment ago (its receipt follows at once), or it never got renamed and its temp
        # file was swept. Wait for receipts before writing anything again.
        deadline = time.monotonic() + self._receipt_grace
        while time.monotonic() < deadline and not cancel.is_set():
            time.sleep(0.2)
        for record in unaccounted:
            fresh = reread(record.name)
            if (fresh is not None and fresh.status != WRITTEN) or self._sft.exists(record.name):
                done[record.name] = fresh or record
            else:
                log.warning("recorded_file_gone_rewriting", file=record.name)
        return done

    # -- writing ---------------------------------------------------------------------------
    @property
    def write_buffer_bytes(self) -> int:
        """None: each chunk goes to the file as it comes (the page cache is the kernel's, flushed every 16 MiB)."""
        return 0

    def copies(self, source: SourceObject) -> bool:
        """Never: every byte is written by the worker."""
        return False

    def prepare(self, source: SourceObject, name: str) -> None:
        """Raise ``RetryableError(disk_short)`` unless the volume has room for the object and the margin."""
        self._sft.ensure_space(source.size, path=self._sft.resolve(name))

    def copy(
        self,
        source: SourceObject,
        name: str,
        *,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """Not offered (:meth:`copies` is always false)."""
        raise NotImplementedError("an SFT folder has no server-side copy")

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        opened: OpenedObject,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """A temp file, fsync'd, recorded ``written``, then renamed to ``name`` (files carry no metadata)."""
        return self._sft.write(name, chunks, cancel=cancel, before_commit=self._before_rename(name, journal))

    def write_bytes(self, name: str, data: bytes, *, content_type: str, journal: ObjectJournal) -> Delivered:
        """Written and recorded as any file is."""
        return self._sft.write_bytes(name, data, before_commit=self._before_rename(name, journal))

    def record_delivered(self, delivered: Delivered, *, journal: ObjectJournal) -> None:
        """Nothing: the row was written before the rename, and the agent's receipts follow."""

    def _before_rename(self, name: str, journal: ObjectJournal) -> Callable[[str, int, str], None]:
        """The write-ahead: the file's row exists before the agent can see the file."""

        def record(temp_name: str, size: int, sha256: str) -> None:
            delivered = Delivered(name=name, size=size, sha256=sha256)
            journal.record_now(WRITTEN, delivered, sft_path=name, unsent=UNSENT_KEY, temp_name=temp_name)

        return record
