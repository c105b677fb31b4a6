"""Delivering one route of one flag: claim it in the ledger, move every object, manifest last.

The coordinator of the data path. It only decides which pieces to chain for each
object — server-side copy, or GET → decrypt → compress → upload/write — and leaves the
bytes to the stage modules. Objects of a route are moved in parallel (bounded), and a
byte budget bounds what all the streams of the worker hold at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from egress import metrics
from egress.destinations import Delivered
from egress.destinations.s3 import S3Destination, S3Target, TransferConfig, assume_role_s3
from egress.destinations.sft import SftDestination
from egress.errors import (
    LEASE_LOST,
    EgressError,
    RetryableError,
    StopRequested,
    error_code,
    translate_client_error,
)
from egress.ledger import (
    DONE,
    SFT_DELIVERED_STATES,
    UNSENT_KEY,
    UPLOADING,
    WRITTEN,
    Claim,
    DeliveryKey,
    Lease,
    Ledger,
    ObjectRecord,
    ProgressLog,
)
from egress.messages import FlagEvent
from egress.plan import DeliveryItem, check_names, manifest_name, name_items, plan_route
from egress.routing import Route, RouteMatch
from egress.sources import SourceObject, list_objects, open_object
from egress.streams import Chunks
from egress.transforms.compress import compress
from egress.transforms.decrypt import Decryptor

if TYPE_CHECKING:
    from egress.aws import AwsClients
    from egress.settings import WorkerSettings

log = structlog.get_logger("egress.delivery")

# ListObjectsV2 returns at most this many keys a page: a folder this size is planned in memory.
_ONE_PAGE = 1000


class ByteBudget:
    """A counting semaphore in bytes: what all streams in flight may hold together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._cond = threading.Condition()

    def acquire(self, amount: int, *, cancel: threading.Event) -> int:
        """Wait for ``amount`` bytes (clamped to the total); returns what was taken."""
        amount = max(0, min(amount, self.total))
        with self._cond:
            while self._free < amount:
                if cancel.is_set():
                    raise StopRequested
                self._cond.wait(timeout=0.5)
            self._free -= amount
        return amount

    def release(self, amount: int) -> None:
        with self._cond:
            self._free += amount
            self._cond.notify_all()


def guard(chunks: Chunks, cancel: threading.Event) -> Chunks:
    """Pass chunks through until the worker is told to abort."""
    for chunk in chunks:
        if cancel.is_set():
            raise StopRequested
        yield chunk


@dataclass(frozen=True)
class RouteResult:
    """What one route delivered for one flag."""

    match: RouteMatch
    objects: int = 0
    size: int = 0
    skipped: bool = False


@dataclass
class _Progress:
    objects: int = 0
    size: int = 0
    skipped: int = 0
    manifest: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _RouteRun:
    """One attempt at one delivery: what it needs to record progress as it goes."""

    key: DeliveryKey
    match: RouteMatch
    cancel: threading.Event
    checkpoint: ProgressLog
    progress: _Progress = field(default_factory=_Progress)
    # A lapsed claim was taken over: before writing a key, abort its open uploads (the dead
    # claim may have opened one and died before recording it).
    took_over: bool = False

    @property
    def labels(self) -> dict[str, str]:
        route = self.match.route
        return {
            "pipeline": route.pipeline_name,
            "recipient": route.recipient_name,
            "transfer_type": route.transfer_type,
        }


def _worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError) and exc.reason != LEASE_LOST


class RouteDelivery:
    """Delivers a route's objects for a flag; one instance per worker, shared by threads.

    ``sft_receipt_grace`` is how long a resumed delivery waits for the agent's receipt of
    an SFT file it recorded but can no longer find (the agent claimed it a moment ago),
    before it writes the file again.
    """

    def __init__(
        self,
        aws: AwsClients,
        settings: WorkerSettings,
        *,
        ledger: Ledger,
        decryptor: Decryptor,
        sft: SftDestination,
        objects_pool: ThreadPoolExecutor,
        budget: ByteBudget,
        clock: Callable[[], float] = time.monotonic,
        sft_receipt_grace: float = 3.0,
    ) -> None:
        self._aws = aws
        self._settings = settings
        self._ledger = ledger
        self._decryptor = decryptor
        self._sft = sft
        self._pool = objects_pool
        self._budget = budget
        self._clock = clock
        self._receipt_grace = sft_receipt_grace
        self._transfer = TransferConfig(
            part_size=settings.part_size,
            max_parts_in_flight=settings.parts_in_flight,
            copy_threshold=settings.copy_threshold_mb * 1024 * 1024,
        )
        self._uploader = S3Destination(aws.s3, config=self._transfer)
        self._role_cache: dict[str, Any] = {}
        self._per_object_cost = settings.part_size * (settings.parts_in_flight + 1) + settings.chunk_size * 4

    def deliver(
        self,
        event: FlagEvent,
        match: RouteMatch,
        *,
        upload_id: str,
        cancel: threading.Event,
        on_lease: Callable[[DeliveryKey], None] | None = None,
    ) -> RouteResult:
        """Deliver every object of the flag's folder for ``match``; idempotent via the ledger.

        Objects an earlier attempt recorded as done are not moved again; a claim taken
        over from a dead worker has its open uploads aborted and its temp files removed.
        """
        route = match.route
        key = DeliveryKey(
            bucket=event.bucket,
            flag_key=event.key,
            upload_id=upload_id,
            source_prefix=route.source_prefix,
            pipeline_name=route.pipeline_name,
        )
        run = _RouteRun(key=key, match=match, cancel=cancel, checkpoint=ProgressLog(self._ledger, key))
        labels = run.labels
        lease = self._ledger.begin(key, recipient=route.recipient_name, transfer_type=route.transfer_type)
        if lease.claim is Claim.ALREADY_DELIVERED:
            log.info("route already delivered", **labels)
            metrics.DELIVERIES.labels(**labels, outcome="duplicate").inc()
            return RouteResult(match=match, skipped=True)
        if on_lease is not None:
            on_lease(key)
        started = self._clock()
        try:
            # The whole plan (names only) is made before any byte moves, so a name collision
            # or a name the destination would refuse fails the route with nothing delivered.
            items = self._plan(event, match)
            manifest = manifest_name(match)
            done = self._resume(run, lease) if lease.resumed else {}
            self._deliver_objects(run, items(), done)
            self._write_manifest(event, run, manifest, done)
            run.checkpoint.flush()
        except BaseException as exc:
            reason = exc.reason if isinstance(exc, EgressError) else type(exc).__name__
            outcome = "released" if isinstance(exc, StopRequested) else "failed"
            metrics.DELIVERIES.labels(**labels, outcome=outcome).inc()
            metrics.DELIVERY_SECONDS.labels(transfer_type=route.transfer_type, outcome=outcome).observe(
                self._clock() - started
            )
            if reason != LEASE_LOST:
                self._release(run, reason=reason)
            raise
        finally:
            run.checkpoint.close()
        progress = run.progress
        self._ledger.finish(key, objects=progress.objects, size=progress.size)
        elapsed = self._clock() - started
        metrics.DELIVERIES.labels(**labels, outcome="delivered").inc()
        metrics.DELIVERY_SECONDS.labels(transfer_type=route.transfer_type, outcome="delivered").observe(
            elapsed
        )
        log.info(
            "route delivered",
            objects=progress.objects,
            bytes=progress.size,
            skipped=progress.skipped,
            seconds=round(elapsed, 3),
            **labels,
        )
        return RouteResult(match=match, objects=progress.objects, size=progress.size)

    def _release(self, run: _RouteRun, *, reason: str) -> None:
        """Keep what was done (a last checkpoint), then give the lease back."""
        try:
            run.checkpoint.flush()
        except EgressError as exc:
            log.warning("could not record the last progress", reason=exc.reason)
        try:
            self._ledger.fail(run.key, reason=reason)
        except EgressError as ledger_exc:
            log.warning("could not release ledger row", reason=ledger_exc.reason)

    def _plan(self, event: FlagEvent, match: RouteMatch) -> Callable[[], Iterator[DeliveryItem]]:
        """Check every name before any byte moves; returns how to walk the objects to deliver.

        A folder that fits in one listing page is kept (names and all). A larger one is
        checked page by page keeping 8 bytes a name (:func:`egress.plan.check_names`), then
        listed again while it is delivered, so memory does not grow with the folder.
        """
        listing = self._list(event, match)
        head = list(islice(listing, _ONE_PAGE + 1))
        if len(head) <= _ONE_PAGE:
            items = list(plan_route(match, head, event_time=event.event_time))
            return lambda: iter(items)
        count = check_names(match, chain(head, listing), event_time=event.event_time)
        del head
        log.info("large folder: names checked, listing again to deliver", objects=count)
        return lambda: name_items(match, self._list(event, match), event_time=event.event_time)

    def _list(self, event: FlagEvent, match: RouteMatch) -> Iterator[SourceObject]:
        return list_objects(
            self._aws.s3,
            bucket=event.bucket,
            prefix=match.delivery_prefix,
            flag_name=self._settings.flag_name,
        )

    # -- resuming --------------------------------------------------------------------------
    def _resume(self, run: _RouteRun, lease: Lease) -> dict[str, ObjectRecord]:
        """What an earlier attempt finished; clean up what a dead claim left open."""
        route = run.match.route
        records = self._ledger.objects(run.key)
        if lease.taken_over:
            metrics.TAKEOVERS.inc()
            log.warning("taking over a lapsed claim", previous_claim=lease.taken_over, recorded=len(records))
        if route.transfer_type == "SFT":
            done = self._resume_sft(run, records)
            if lease.taken_over:
                folder = run.match.destination_prefix.strip("/")
                removed = self._sft.sweep_temp_files(folder)
                if removed:
                    log.info("removed temp files of the lapsed claim", count=removed)
        else:
            done = {name: record for name, record in records.items() if record.status == DONE}
            for record in records.values():
                if record.status == UPLOADING and record.mpu_id:
                    self._abort_recorded_upload(route, record)
            run.took_over = lease.taken_over is not None
        if done:
            log.info("resuming a delivery", done=len(done))
        return done

    def _resume_sft(self, run: _RouteRun, records: dict[str, ObjectRecord]) -> dict[str, ObjectRecord]:
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
                log.info("finished a write the lapsed claim recorded", file=name)
                done[name] = record
            else:
                unaccounted.append(record)
        if not unaccounted:
            return done
        # Neither the file nor its temp file is there: the agent may have claimed it a
        # moment ago (its receipt follows at once), or it never got renamed and its temp
        # file was swept. Wait for receipts before writing anything again.
        deadline = time.monotonic() + self._receipt_grace
        while time.monotonic() < deadline and not run.cancel.is_set():
            time.sleep(0.2)
        for record in unaccounted:
            fresh = self._ledger.object_row(run.key, record.name)
            if (fresh is not None and fresh.status != WRITTEN) or self._sft.exists(record.name):
                done[record.name] = fresh or record
            else:
                log.warning(
                    "recorded file is gone with no receipt from the agent; writing it again", file=record.name
                )
        return done

    def _abort_recorded_upload(self, route: Route, record: ObjectRecord) -> None:
        writer = self._writer_for(route.role_arn)
        try:
            writer.s3.abort_multipart_upload(
                Bucket=record.bucket or route.destination_bucket or "",
                Key=record.name,
                UploadId=record.mpu_id or "",
            )
            log.info("aborted the upload of an earlier attempt", key=record.name, upload_id=record.mpu_id)
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise translate_client_error(exc, doing=f"aborting the upload of {record.name}") from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=f"aborting the upload of {record.name}") from exc

    def _abort_open_uploads(self, route: Route, key: str) -> None:
        """Abort open uploads to ``key``: a dead claim's, opened but not recorded (killed in between).

        Made before this claim writes ``key``, so any other upload to it is a stale
        writer's. (The upload's ``Initiated`` time cannot tell whose it is: the emulator
        reports a fixed date.)
        """
        writer = self._writer_for(route.role_arn)
        bucket = route.destination_bucket or ""
        try:
            paginator = writer.s3.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") != key:
                        continue
                    writer.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
                    log.info("aborted an unrecorded upload of the lapsed claim", key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=f"listing open uploads of s3://{bucket}/{key}") from exc

    # -- moving objects --------------------------------------------------------------------
    def _deliver_objects(
        self, run: _RouteRun, items: Iterator[DeliveryItem], done: dict[str, ObjectRecord]
    ) -> None:
        """Run the objects not done yet through a bounded window of parallel deliveries."""
        progress = run.progress
        match = run.match
        window = max(2, self._settings.object_concurrency * 2)
        pending: set[Future[None]] = set()
        failure: BaseException | None = None
        cancel = run.cancel
        try:
            for item in items:
                record = done.get(item.destination_name)
                if record is not None:
                    progress.objects += 1
                    progress.size += record.size
                    progress.skipped += 1
                    if match.route.manifest_file_name:
                        progress.manifest.append(
                            record.manifest_entry(
                                _relative_to(item.destination_name, match.destination_prefix)
                            )
                        )
                    continue
                if cancel.is_set():
                    raise StopRequested
                pending.add(self._pool.submit(self._deliver_one, run, item))
                if len(pending) >= window:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # first failure stops the route
        except BaseException as exc:  # noqa: BLE001 - re-raised below once in-flight work drained
            failure = exc
            cancel_local = True
        else:
            cancel_local = False
        if progress.skipped:
            metrics.OBJECTS_SKIPPED.labels(**run.labels).inc(progress.skipped)
        # Drain what is in flight; on failure the remaining objects still finish or fail on
        # their own, so nothing is left half-written behind the route's back.
        for future in pending:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - keep the first failure, log the rest
                if failure is None:
                    failure = exc
                elif not cancel_local:
                    log.warning("another object failed", error=str(exc)[:200])
        if failure is not None:
            raise failure

    def _deliver_one(self, run: _RouteRun, item: DeliveryItem) -> None:
        route = run.match.route
        attempts = Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(max(1, self._settings.retry_attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            reraise=True,
        )
        delivered: Delivered | None = None
        for attempt in attempts:
            with attempt:
                if run.cancel.is_set():
                    raise StopRequested
                delivered = self._move(run, item)
        assert delivered is not None
        if route.transfer_type == "S3":
            run.checkpoint.add(self._row(run, item.destination_name, item.source.key, DONE, delivered))
        metrics.OBJECTS.labels(**run.labels).inc()
        metrics.BYTES.labels(**run.labels).inc(delivered.size)
        progress = run.progress
        with progress.lock:
            progress.objects += 1
            progress.size += delivered.size
            if route.manifest_file_name:
                progress.manifest.append(
                    {
                        "name": _relative_to(item.destination_name, run.match.destination_prefix),
                        "size": delivered.size,
                        "sha256": delivered.sha256,
                        "source_key": item.source.key,
                    }
                )

    def _row(
        self,
        run: _RouteRun,
        name: str,
        source_key: str,
        status: str,
        delivered: Delivered | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return self._ledger.object_item(
            run.key,
            name=name,
            status=status,
            source_key=source_key,
            size=delivered.size if delivered else 0,
            sha256=delivered.sha256 if delivered else None,
            **extra,
        )

    def _before_rename(self, run: _RouteRun, name: str, source_key: str) -> Callable[[str, int, str], None]:
        """The SFT write-ahead: the file's row exists before the agent can see the file."""

        def record(temp_name: str, size: int, sha256: str) -> None:
            delivered = Delivered(name=name, size=size, sha256=sha256)
            run.checkpoint.record_now(
                [
                    self._row(
                        run,
                        name,
                        source_key,
                        WRITTEN,
                        delivered,
                        sft_path=name,
                        unsent=UNSENT_KEY,
                        temp_name=temp_name,
                    )
                ]
            )

        return record

    def _upload_started(
        self, run: _RouteRun, name: str, source_key: str, bucket: str
    ) -> Callable[[str], None]:
        def record(upload_id: str) -> None:
            run.checkpoint.record_now(
                [self._row(run, name, source_key, UPLOADING, mpu_id=upload_id, bucket=bucket)]
            )

        return record

    def _move(self, run: _RouteRun, item: DeliveryItem) -> Delivered:
        match = run.match
        cancel = run.cancel
        route = match.route
        source = item.source
        name = item.destination_name
        plain_copy = route.transfer_type == "S3" and not (route.decrypt or route.compress or route.role_arn)
        multipart = not plain_copy or source.size > self._transfer.copy_threshold
        if run.took_over and route.transfer_type == "S3" and multipart:
            self._abort_open_uploads(route, name)
        if plain_copy:
            return self._uploader.copy(
                source,
                self._s3_target(match, name),
                cancel=cancel,
                on_upload_started=self._upload_started(run, name, source.key, route.destination_bucket or ""),
            )
        if route.transfer_type == "SFT":
            self._sft.ensure_space(source.size, path=self._sft.resolve(name))
        taken = self._budget.acquire(
            min(source.size + self._settings.chunk_size, self._per_object_cost), cancel=cancel
        )
        try:
            opened = open_object(self._aws.s3, source, chunk_size=self._settings.chunk_size)
            chunks: Chunks = guard(opened.chunks, cancel)
            if route.decrypt:
                chunks = self._decryptor.decrypt(
                    source=source.uri, metadata=opened.metadata, chunks=chunks, size=opened.size
                )
            if route.compress:
                chunks = compress(chunks, fmt=route.compress_fmt or "gz")
            if route.transfer_type == "SFT":
                return self._sft.write(
                    name, chunks, cancel=cancel, before_commit=self._before_rename(run, name, source.key)
                )
            # Undecrypted bytes keep their envelope metadata, or they could never be read.
            metadata = {} if route.decrypt else dict(opened.metadata)
            target = self._s3_target(
                match,
                name,
                metadata=metadata,
                content_type=None if route.compress else opened.content_type,
            )
            return self._writer_for(route.role_arn).upload(
                target,
                chunks,
                cancel=cancel,
                on_upload_started=self._upload_started(run, name, source.key, target.bucket),
            )
        finally:
            self._budget.release(taken)

    def _s3_target(
        self,
        match: RouteMatch,
        name: str,
        *,
        metadata: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> S3Target:
        route = match.route
        return S3Target(
            bucket=route.destination_bucket or "",
            key=name,
            kms_key_id=route.destination_kms_key_id or None,
            bucket_owner_full_control=bool(route.role_arn),
            metadata=metadata or {},
            content_type=content_type,
        )

    def _writer_for(self, role_arn: str | None) -> S3Destination:
        if not role_arn:
            return self._uploader
        client = assume_role_s3(
            self._aws, role_arn=role_arn, session_name="data-egress", cache=self._role_cache
        )
        return S3Destination(client, config=self._transfer)

    def _write_manifest(
        self, event: FlagEvent, run: _RouteRun, name: str | None, done: dict[str, ObjectRecord]
    ) -> None:
        """The manifest, last; once written (recorded like an object) it is not written again."""
        if name is None or name in done:
            return
        route = run.match.route
        body = {
            "flag": event.uri,
            "pipeline_name": route.pipeline_name,
            "recipient_name": route.recipient_name,
            "event_time": event.event_time.isoformat(),
            "generated_at": datetime.now(event.event_time.tzinfo).isoformat(timespec="seconds"),
            "objects": sorted(run.progress.manifest, key=lambda entry: str(entry["name"])),
        }
        data = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
        source_key = run.match.delivery_prefix + (route.manifest_file_name or "")
        if route.transfer_type == "SFT":
            self._sft.write_bytes(name, data, before_commit=self._before_rename(run, name, source_key))
        else:
            target = self._s3_target(run.match, name, content_type="application/json")
            delivered = self._writer_for(route.role_arn).upload(target, iter([data]))
            run.checkpoint.add(self._row(run, name, source_key, DONE, delivered))


def _relative_to(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix):
        return name[len(prefix) :].lstrip("/")
    return name
