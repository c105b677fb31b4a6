"""Delivering one route of one flag: claim it in the ledger, move every object, manifest and control file last.

The coordinator of the data path. It only decides which pieces to chain for each
object — server-side copy, or GET → decrypt → compress → upload/write, a re-wrapped
envelope in place of the source's on a re-wrap route — and leaves the bytes to the
stage modules. The route's destination is picked once
(:meth:`egress.destinations.routes.Destinations.for_route`) and then asked, through the
:class:`~egress.destinations.Destination` protocol, everything that differs between S3
and SFT: how to resume, whether to copy server-side, what to record when. Objects of a
route are moved in parallel (bounded), and a byte budget bounds what all the streams of
the worker hold at once.

Retries: botocore retries every AWS request (standard mode, :mod:`egress.aws`); the one
tenacity layer here retries what it cannot, an object's whole transfer (a stream that
broke mid-way starts again from its GET). Its waits end at once when the delivery is
cancelled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from egress import metrics
from egress.destinations import Delivered, Destination
from egress.destinations.base import MetadataFor
from egress.destinations.routes import Destinations
from egress.destinations.s3 import RoleClients, S3Destination, TransferConfig
from egress.destinations.sft import SftDestination
from egress.errors import EgressError, Reason, RetryableError, StopRequested
from egress.ledger import Claim, DeliveryKey, Lease, Ledger, ProgressLog
from egress.ledger_table import ObjectRecord
from egress.messages import FlagEvent
from egress.plan import (
    DeliveryItem,
    check_names,
    control_file_body,
    control_file_name,
    manifest_name,
    name_items,
    plan_route,
)
from egress.ranged import GetConfig
from egress.route_policy import ObjectFilter
from egress.routing import Route, RouteMatch
from egress.sources import SourceObject, list_objects
from egress.stream_source import ByteBudget, SourceProbe, StreamSource
from egress.transforms.decrypt import Decryptor
from egress.transforms.rewrap import RecipientKeys, Rewrapper

if TYPE_CHECKING:
    from egress.aws import AwsClients
    from egress.settings import WorkerSettings

log = structlog.get_logger("egress.delivery")

# ListObjectsV2 returns at most this many keys a page: a folder this size is planned in memory.
_ONE_PAGE = 1000


@dataclass(frozen=True)
class RouteResult:
    """What one route delivered for one flag (``skipped``: an earlier attempt had delivered it).

    ``manifest_name`` is the manifest written (S3 key, or path under the SFT root);
    ``delivery_id`` the ledger's id of the delivery.
    """

    match: RouteMatch
    objects: int = 0
    size: int = 0
    skipped: bool = False
    manifest_name: str | None = None
    delivery_id: str = ""

    @property
    def manifest(self) -> str | None:
        """The manifest's URI: ``s3://bucket/key`` on S3 routes, its path under the SFT root on SFT routes."""
        return manifest_uri(self.match, self.manifest_name)


def manifest_uri(match: RouteMatch, name: str | None) -> str | None:
    """Where a route's manifest named ``name`` is: an ``s3://`` URI, or a path under the SFT root."""
    if name is None:
        return None
    route = match.route
    return f"s3://{route.destination_bucket}/{name}" if route.transfer_type == "S3" else name


@dataclass
class _Progress:
    objects: int = 0
    size: int = 0
    skipped: int = 0
    excluded: int = 0  # kept back by the route's include/exclude patterns
    manifest: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # for the control file
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, match: RouteMatch, name: str, entry: Callable[[str], dict[str, Any]]) -> None:
        """Keep what the manifest and the control file list of a delivered (or done) object."""
        route = match.route
        with self.lock:
            if route.manifest_file_name:
                self.manifest.append(entry(_relative_to(name, match.destination_prefix)))
            if route.control_file_prefix:
                self.names.append(name)


@dataclass
class _RouteRun:
    """One attempt at one delivery: where it goes, and what it needs to record progress as it goes."""

    key: DeliveryKey
    match: RouteMatch
    cancel: threading.Event
    checkpoint: ProgressLog
    destination: Destination
    progress: _Progress = field(default_factory=_Progress)

    @property
    def labels(self) -> dict[str, str]:
        route = self.match.route
        return {
            "pipeline": route.pipeline_name,
            "recipient": route.recipient_name,
            "transfer_type": route.transfer_type,
        }


@dataclass
class _Journal:
    """One object's rows in the ledger, written when its destination says (an :class:`ObjectJournal`).

    ``encryption`` is set once the object's format is known (decrypt and re-wrap routes).
    """

    ledger: Ledger
    run: _RouteRun
    name: str
    source_key: str
    encryption: str | None = None

    def record_now(self, status: str, delivered: Delivered | None = None, **extra: Any) -> None:
        self.run.checkpoint.record_now([self._row(status, delivered, **extra)])

    def record_later(self, status: str, delivered: Delivered, **extra: Any) -> None:
        self.run.checkpoint.add(self._row(status, delivered, **extra))

    def _row(self, status: str, delivered: Delivered | None, **extra: Any) -> dict[str, Any]:
        return self.ledger.object_item(
            self.run.key,
            name=self.name,
            status=status,
            source_key=self.source_key,
            size=delivered.size if delivered else 0,
            sha256=delivered.sha256 if delivered else None,
            encryption=self.encryption,
            **extra,
        )


def _worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError) and exc.reason != Reason.LEASE_LOST


def _sleep_unless_cancelled(cancel: threading.Event) -> Callable[[float], None]:
    """A tenacity sleep that ends with :class:`StopRequested` as soon as ``cancel`` is set."""

    def sleep(seconds: float) -> None:
        if cancel.wait(seconds):
            raise StopRequested

    return sleep


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
        self._pool = objects_pool
        self._clock = clock
        transfer = TransferConfig(
            part_size=settings.part_size,
            max_parts_in_flight=settings.parts_in_flight,
            copy_threshold=settings.copy_threshold_mb * 1024 * 1024,
        )
        roles = RoleClients(aws, session_name="data-egress")
        self._destinations = Destinations(
            s3=S3Destination(aws.s3, config=transfer),
            roles=roles,
            sft=sft,
            receipt_grace=sft_receipt_grace,
        )
        self._rewrapper = Rewrapper(
            decryptor, RecipientKeys(lambda role_arn: roles.ssm_client_for(role_arn) if role_arn else aws.ssm)
        )
        self._streams = StreamSource(
            s3=aws.s3,
            decryptor=decryptor,
            budget=budget,
            chunk_size=settings.chunk_size,
            # The stages' chunks, and those queued to the digests on threads (two each); an
            # S3 upload's parts come on top (Destination.write_buffer_bytes), a file's nothing.
            per_object_cost=settings.chunk_size * 8,
            gets=GetConfig(
                strategy=settings.get_strategy,
                range_size=settings.range_size,
                ranges_in_flight=settings.ranges_in_flight,
            ),
        )

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
        lease = self._ledger.begin(
            key,
            recipient=route.recipient_name,
            transfer_type=route.transfer_type,
            event_time=event.event_time,
        )
        run = _RouteRun(
            key=key,
            match=match,
            cancel=cancel,
            checkpoint=ProgressLog(self._ledger, key),
            destination=self._destinations.for_route(match, taken_over=lease.taken_over is not None),
        )
        labels = run.labels
        if lease.claim is Claim.ALREADY_DELIVERED:
            log.info("route_already_delivered", **labels)
            metrics.DELIVERIES.labels(**labels, outcome="duplicate").inc()
            return RouteResult(match=match, skipped=True)
        if on_lease is not None:
            on_lease(key)
        started = self._clock()
        try:
            # The whole plan (names only) is made before any byte moves, so a name collision
            # or a name the destination would refuse fails the route with nothing delivered.
            items = self._plan(event, match, run.progress)
            manifest = manifest_name(match)
            control = control_file_name(match, event_time=event.event_time)
            done = self._resume(run, lease) if lease.resumed else {}
            self._deliver_objects(run, items(), done)
            self._write_manifest(event, run, manifest, done)
            self._write_control_file(run, control, done)
            run.checkpoint.flush()
        except BaseException as exc:
            reason = exc.reason if isinstance(exc, EgressError) else type(exc).__name__
            outcome = "released" if isinstance(exc, StopRequested) else "failed"
            metrics.DELIVERIES.labels(**labels, outcome=outcome).inc()
            metrics.DELIVERY_SECONDS.labels(transfer_type=route.transfer_type, outcome=outcome).observe(
                self._clock() - started
            )
            if reason != Reason.LEASE_LOST:
                self._release(run, reason=reason)
            raise
        finally:
            run.checkpoint.close()
        progress = run.progress
        self._ledger.finish(
            key,
            objects=progress.objects,
            size=progress.size,
            excluded=progress.excluded,
            manifest=manifest_uri(match, manifest),
        )
        if progress.excluded:
            metrics.OBJECTS_EXCLUDED.labels(**labels).inc(progress.excluded)
        elapsed = self._clock() - started
        metrics.DELIVERIES.labels(**labels, outcome="delivered").inc()
        metrics.DELIVERY_SECONDS.labels(transfer_type=route.transfer_type, outcome="delivered").observe(
            elapsed
        )
        log.info(
            "route_delivered",
            objects=progress.objects,
            bytes=progress.size,
            skipped=progress.skipped,
            excluded=progress.excluded,
            seconds=round(elapsed, 3),
            **labels,
        )
        return RouteResult(
            match=match,
            objects=progress.objects,
            size=progress.size,
            manifest_name=manifest,
            delivery_id=key.delivery_id,
        )

    def _release(self, run: _RouteRun, *, reason: str) -> None:
        """Keep what was done (a last checkpoint), then give the lease back."""
        try:
            run.checkpoint.flush()
        except EgressError as exc:
            log.warning("final_progress_not_recorded", reason=exc.reason)
        try:
            self._ledger.fail(run.key, reason=reason)
        except EgressError as ledger_exc:
            log.warning("ledger_release_failed", reason=ledger_exc.reason)

    def _plan(
        self, event: FlagEvent, match: RouteMatch, progress: _Progress
    ) -> Callable[[], Iterator[DeliveryItem]]:
        """Check every name before any byte moves; returns how to walk the objects to deliver.

        A folder that fits in one listing page is kept (names and all). A larger one is
        checked page by page keeping 8 bytes a name (:func:`egress.plan.check_names`), then
        listed again while it is delivered, so memory does not grow with the folder.
        """
        listing = self._list(event, match, progress=progress)
        head = list(islice(listing, _ONE_PAGE + 1))
        if len(head) <= _ONE_PAGE:
            items = list(plan_route(match, head, event_time=event.event_time))
            return lambda: iter(items)
        count = check_names(match, chain(head, listing), event_time=event.event_time)
        del head
        log.info("large_folder_names_checked", objects=count)
        return lambda: name_items(match, self._list(event, match), event_time=event.event_time)

    def _list(
        self, event: FlagEvent, match: RouteMatch, *, progress: _Progress | None = None
    ) -> Iterator[SourceObject]:
        """The folder's objects the route's patterns keep; ``progress`` counts those kept back."""
        listing = list_objects(
            self._aws.s3,
            bucket=event.bucket,
            prefix=match.delivery_prefix,
            flag_name=self._settings.flag_name,
        )
        patterns = ObjectFilter.for_route(match.route)
        if not patterns.active:
            return listing
        return self._filtered(listing, match, patterns, progress)

    @staticmethod
    def _filtered(
        listing: Iterator[SourceObject], match: RouteMatch, patterns: ObjectFilter, progress: _Progress | None
    ) -> Iterator[SourceObject]:
        for obj in listing:
            verdict = patterns.verdict(_relative_to(obj.key, match.delivery_prefix))
            if verdict.kept:
                yield obj
                continue
            log.debug("object_excluded", key=obj.key, why=verdict.describe())
            if progress is not None:
                progress.excluded += 1

    def _resume(self, run: _RouteRun, lease: Lease) -> dict[str, ObjectRecord]:
        """What an earlier attempt finished; the destination cleans up what a dead claim left open."""
        records = self._ledger.objects(run.key)
        if lease.taken_over:
            metrics.TAKEOVERS.inc()
            log.warning("lapsed_claim_taken_over", previous_claim=lease.taken_over, recorded=len(records))
        done = run.destination.resume(
            records, reread=lambda name: self._ledger.object_row(run.key, name), cancel=run.cancel
        )
        if done:
            log.info("delivery_resumed", done=len(done))
        return done

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
                    progress.add(match, item.destination_name, record.manifest_entry)
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
                    log.warning("sibling_object_failed", error=str(exc)[:200])
        if failure is not None:
            raise failure

    def _deliver_one(self, run: _RouteRun, item: DeliveryItem) -> None:
        """Move one object, retrying its whole transfer on retryable errors; then record and count it."""
        journal = _Journal(self._ledger, run, item.destination_name, item.source.key)
        attempts = Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(max(1, self._settings.retry_attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            sleep=_sleep_unless_cancelled(run.cancel),
            reraise=True,
        )
        delivered: Delivered | None = None
        for attempt in attempts:
            with attempt:
                if run.cancel.is_set():
                    raise StopRequested
                delivered = self._move(run, item, journal)
        assert delivered is not None
        run.destination.record_delivered(delivered, journal=journal)
        metrics.OBJECTS.labels(**run.labels).inc()
        metrics.BYTES.labels(**run.labels).inc(delivered.size)
        progress = run.progress
        with progress.lock:
            progress.objects += 1
            progress.size += delivered.size
        listed: dict[str, Any] = {
            "size": delivered.size,
            "sha256": delivered.sha256,
            "source_key": item.source.key,
        }
        if journal.encryption is not None:
            listed["encryption"] = journal.encryption
        progress.add(run.match, item.destination_name, lambda relative: {"name": relative, **listed})

    def _move(self, run: _RouteRun, item: DeliveryItem, journal: _Journal) -> Delivered:
        """One try: a server-side copy if the destination offers one, else GET → transforms → write."""
        destination = run.destination
        source = item.source
        name = item.destination_name
        route = run.match.route
        destination.prepare(source, name)
        metadata_for = self._rewrap_for(route, source, journal) if route.rewrap_datakey else None
        if destination.copies(source):
            return destination.copy(
                source, name, cancel=run.cancel, journal=journal, metadata_for=metadata_for
            )
        with self._streams.open(
            source, route, cancel=run.cancel, write_buffer=destination.write_buffer_bytes
        ) as stream:
            if stream.encryption is not None:
                journal.encryption = stream.encryption
            return destination.write(
                name,
                stream.chunks,
                opened=stream.opened,
                cancel=run.cancel,
                journal=journal,
                metadata_for=metadata_for,
            )

    def _rewrap_for(self, route: Route, source: SourceObject, journal: _Journal) -> MetadataFor:
        """The re-wrapped envelope of ``source``, from the metadata of the version delivered."""

        def rewrapped(metadata: Mapping[str, str]) -> Mapping[str, str] | None:
            result = self._rewrapper.rewrap(
                source=source.uri,
                metadata=metadata,
                parameter=route.encrypting_key_ssm_parm_name,
                role_arn=route.role_arn,
                probe=SourceProbe(self._aws.s3, source),
            )
            journal.encryption = result.encryption.value
            return result.metadata

        return rewrapped

    def _write_manifest(
        self, event: FlagEvent, run: _RouteRun, name: str | None, done: dict[str, ObjectRecord]
    ) -> None:
        """The manifest, after the data; once written (recorded like an object) it is not written again."""
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
        self._write_file(run, name, data, content_type="application/json")

    def _write_control_file(self, run: _RouteRun, name: str | None, done: dict[str, ObjectRecord]) -> None:
        """The control file, after the data and the manifest: the delivered data files' base names."""
        if name is None or name in done:
            return
        body = control_file_body(sorted(delivered.rsplit("/", 1)[-1] for delivered in run.progress.names))
        self._write_file(run, name, body, content_type="text/plain")

    def _write_file(self, run: _RouteRun, name: str, data: bytes, *, content_type: str) -> None:
        """One of the route's own files, recorded like an object, so a resumed delivery does not write it again."""
        source_key = run.match.delivery_prefix + name.rsplit("/", 1)[-1]
        journal = _Journal(self._ledger, run, name, source_key)
        delivered = run.destination.write_bytes(name, data, content_type=content_type, journal=journal)
        run.destination.record_delivered(delivered, journal=journal)


def _relative_to(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix):
        return name[len(prefix) :].lstrip("/")
    return name
