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
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from egress import metrics
from egress.destinations import Delivered
from egress.destinations.s3 import S3Destination, S3Target, TransferConfig, assume_role_s3
from egress.destinations.sft import SftDestination
from egress.errors import EgressError, RetryableError, StopRequested
from egress.ledger import Claim, DeliveryKey, Ledger
from egress.messages import FlagEvent
from egress.plan import DeliveryItem, plan_route
from egress.routing import RouteMatch
from egress.sources import list_objects, open_object
from egress.streams import Chunks
from egress.transforms.compress import compress
from egress.transforms.decrypt import Decryptor

if TYPE_CHECKING:
    from egress.aws import AwsClients
    from egress.settings import WorkerSettings

log = structlog.get_logger("egress.delivery")


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
    manifest: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RouteDelivery:
    """Delivers a route's objects for a flag; one instance per worker, shared by threads."""

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
    ) -> None:
        self._aws = aws
        self._settings = settings
        self._ledger = ledger
        self._decryptor = decryptor
        self._sft = sft
        self._pool = objects_pool
        self._budget = budget
        self._clock = clock
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
        """Deliver every object of the flag's folder for ``match``; idempotent via the ledger."""
        route = match.route
        key = DeliveryKey(
            bucket=event.bucket,
            flag_key=event.key,
            upload_id=upload_id,
            source_prefix=route.source_prefix,
            pipeline_name=route.pipeline_name,
        )
        labels = {
            "pipeline": route.pipeline_name,
            "recipient": route.recipient_name,
            "transfer_type": route.transfer_type,
        }
        if self._ledger.begin(key, recipient=route.recipient_name, transfer_type=route.transfer_type) is (
            Claim.ALREADY_DELIVERED
        ):
            log.info("route already delivered", **labels)
            metrics.DELIVERIES.labels(**labels, outcome="duplicate").inc()
            return RouteResult(match=match, skipped=True)
        if on_lease is not None:
            on_lease(key)
        started = self._clock()
        try:
            progress = self._deliver_objects(event, match, cancel=cancel)
            self._write_manifest(event, match, progress)
        except BaseException as exc:
            reason = exc.reason if isinstance(exc, EgressError) else type(exc).__name__
            outcome = "released" if isinstance(exc, StopRequested) else "failed"
            metrics.DELIVERIES.labels(**labels, outcome=outcome).inc()
            metrics.DELIVERY_SECONDS.labels(transfer_type=route.transfer_type, outcome=outcome).observe(
                self._clock() - started
            )
            try:
                self._ledger.fail(key, reason=reason)
            except EgressError as ledger_exc:
                log.warning("could not release ledger row", reason=ledger_exc.reason)
            raise
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
            seconds=round(elapsed, 3),
            **labels,
        )
        return RouteResult(match=match, objects=progress.objects, size=progress.size)

    def _deliver_objects(self, event: FlagEvent, match: RouteMatch, *, cancel: threading.Event) -> _Progress:
        """Run the objects through a bounded window of parallel deliveries."""
        progress = _Progress()
        listing = list_objects(
            self._aws.s3,
            bucket=event.bucket,
            prefix=match.delivery_prefix,
            flag_name=self._settings.flag_name,
        )
        # The whole plan (names only) is made before any byte moves, so a name collision
        # or an unsafe key fails the route with nothing delivered.
        items: list[DeliveryItem] = list(plan_route(match, listing, event_time=event.event_time))
        window = max(2, self._settings.object_concurrency * 2)
        pending: set[Future[None]] = set()
        failure: BaseException | None = None
        try:
            for item in items:
                if cancel.is_set():
                    raise StopRequested
                pending.add(self._pool.submit(self._deliver_one, match, item, progress, cancel))
                if len(pending) >= window:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # first failure stops the route
        except BaseException as exc:  # noqa: BLE001 - re-raised below once in-flight work drained
            failure = exc
            cancel_local = True
        else:
            cancel_local = False
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
        return progress

    def _deliver_one(
        self, match: RouteMatch, item: DeliveryItem, progress: _Progress, cancel: threading.Event
    ) -> None:
        route = match.route
        attempts = Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(max(1, self._settings.retry_attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            reraise=True,
        )
        delivered: Delivered | None = None
        for attempt in attempts:
            with attempt:
                if cancel.is_set():
                    raise StopRequested
                delivered = self._move(match, item, cancel=cancel)
        assert delivered is not None
        labels = {
            "pipeline": route.pipeline_name,
            "recipient": route.recipient_name,
            "transfer_type": route.transfer_type,
        }
        metrics.OBJECTS.labels(**labels).inc()
        metrics.BYTES.labels(**labels).inc(delivered.size)
        with progress.lock:
            progress.objects += 1
            progress.size += delivered.size
            if route.manifest_file_name:
                progress.manifest.append(
                    {
                        "name": _relative_to(item.destination_name, match.destination_prefix),
                        "size": delivered.size,
                        "sha256": delivered.sha256,
                        "source_key": item.source.key,
                    }
                )

    def _move(self, match: RouteMatch, item: DeliveryItem, *, cancel: threading.Event) -> Delivered:
        route = match.route
        source = item.source
        plain_copy = route.transfer_type == "S3" and not (route.decrypt or route.compress or route.role_arn)
        if plain_copy:
            return self._uploader.copy(source, self._s3_target(match, item.destination_name), cancel=cancel)
        if route.transfer_type == "SFT":
            self._sft.ensure_space(source.size, path=self._sft.resolve(item.destination_name))
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
                return self._sft.write(item.destination_name, chunks, cancel=cancel)
            # Undecrypted bytes keep their envelope metadata, or they could never be read.
            metadata = {} if route.decrypt else dict(opened.metadata)
            target = self._s3_target(
                match,
                item.destination_name,
                metadata=metadata,
                content_type=None if route.compress else opened.content_type,
            )
            return self._writer_for(route.role_arn).upload(target, chunks, cancel=cancel)
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

    def _write_manifest(self, event: FlagEvent, match: RouteMatch, progress: _Progress) -> None:
        route = match.route
        if not route.manifest_file_name:
            return
        body = {
            "flag": event.uri,
            "pipeline_name": route.pipeline_name,
            "recipient_name": route.recipient_name,
            "event_time": event.event_time.isoformat(),
            "generated_at": datetime.now(event.event_time.tzinfo).isoformat(timespec="seconds"),
            "objects": sorted(progress.manifest, key=lambda entry: str(entry["name"])),
        }
        data = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
        name = _join(match.destination_prefix, route.manifest_file_name)
        if route.transfer_type == "SFT":
            self._sft.write_bytes(name, data)
        else:
            target = self._s3_target(match, name, content_type="application/json")
            self._writer_for(route.role_arn).upload(target, iter([data]))


def _join(prefix: str, name: str) -> str:
    if not prefix or prefix.endswith("/"):
        return prefix + name
    return f"{prefix}/{name}"


def _relative_to(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix):
        return name[len(prefix) :].lstrip("/")
    return name
