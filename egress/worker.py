"""The worker loop: receive flag messages, hand each to a bounded pool, decide its fate.

It only coordinates: messages are parsed by :mod:`egress.messages`, routes found by
:mod:`egress.routing`, delivered by :mod:`egress.delivery`. The loop checks for a stop
request, polls, dispatches, and a heartbeat thread keeps in-flight messages invisible.
The fate of a message follows from the error family alone: none → delete; retryable →
visible again after a backoff that grows with the receive count; permanent → DLQ now.

Shutdown has two stages: the first SIGTERM/SIGINT stops receiving and lets work finish
within the grace period; the deadline (or a second signal) aborts what is left, which
releases its messages (visibility 0), aborts uploads and removes temp files.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from egress import metrics
from egress.delivery import ByteBudget, RouteDelivery
from egress.errors import (
    EgressError,
    PermanentError,
    Reason,
    RetryableError,
    StopRequested,
    translate_client_error,
)
from egress.events import NullPublisher, RouteAnnouncer, RouteEvent, failed_event, worker_announcer
from egress.ledger import DeliveryKey, LeaseHeld, Ledger
from egress.ledger_table import LedgerSchemaError, check_ledger_schema
from egress.messages import FlagEvent, Ignored, MalformedMessage, parse_body
from egress.queue import FlagQueue, Message, ReceiptGone
from egress.route_policy import approval_state
from egress.routing import RouteTable

if TYPE_CHECKING:
    from egress.aws import AwsClients
    from egress.destinations.sft import SftDestination
    from egress.routing import RouteMatch
    from egress.settings import WorkerSettings
    from egress.transforms.decrypt import Decryptor

log = structlog.get_logger("egress.worker")


@dataclass
class _InFlight:
    message: Message
    future: Future[None] | None = None
    leases: list[DeliveryKey] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set to abort this message's work: the worker aborts everything, or its lease was lost.
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False
    failures: list[RouteEvent] = field(default_factory=list)  # announced once the fate is final
    # Flags of this message whose every matching row is disabled: deleted, not dead-lettered.
    disabled_flags: int = 0


class Worker:
    """The ``egress run`` daemon."""

    def __init__(
        self,
        settings: WorkerSettings,
        aws: AwsClients,
        *,
        queue: FlagQueue,
        routes: RouteTable,
        ledger: Ledger,
        decryptor: Decryptor,
        sft: SftDestination,
        events: RouteAnnouncer | None = None,
    ) -> None:
        self.settings = settings
        self._aws = aws
        self._queue = queue
        self._events = events or RouteAnnouncer(NullPublisher())
        self._routes = routes
        self._ledger = ledger
        self._sft = sft
        self.stop_requested = threading.Event()
        self.cancel = threading.Event()
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        self._messages_pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="message")
        self._objects_pool = ThreadPoolExecutor(settings.object_concurrency, thread_name_prefix="object")
        self._delivery = RouteDelivery(
            aws,
            settings,
            ledger=ledger,
            decryptor=decryptor,
            sft=sft,
            objects_pool=self._objects_pool,
            budget=ByteBudget(settings.memory_budget()),
        )
        self._last_loop = 0.0
        self._started = False
        self._deadline_timer: threading.Timer | None = None
        self._signals: list[int] = []
        self._stopped = threading.Event()

    # -- probes -------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The loop went round recently (a long poll lasts at most ``wait_time_seconds``)."""
        return self._started and time.monotonic() - self._last_loop < self.settings.wait_time_seconds + 60

    def ready(self) -> bool:
        return self._started and not self.stop_requested.is_set()

    # -- signals ------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it: logging (structlog's logger holds a lock), starting a timer or
        # setting an Event here could deadlock on a lock the interrupted thread holds.
        # The signal watcher below acts on it.
        self._signals.append(signum)

    def _watch_signals(self) -> None:
        """Act on recorded signals: the first stops receiving, the second aborts."""
        handled = 0
        while not self._stopped.wait(0.1):
            while handled < len(self._signals):
                name = signal.Signals(self._signals[handled]).name
                if handled == 0:
                    self.request_stop(reason=name)
                else:
                    log.warning("second_signal_aborting", signal=name)
                    self._abort_all()
                handled += 1

    def _abort_all(self) -> None:
        self.cancel.set()
        with self._inflight_lock:
            entries = list(self._inflight.values())
        for entry in entries:
            entry.cancel.set()

    def request_stop(self, *, reason: str) -> None:
        """First stage: stop receiving; abort what is left when the grace period ends."""
        log.info(
            "stop_requested",
            reason=reason,
            grace_seconds=self.settings.shutdown_grace_seconds,
            in_flight=len(self._inflight),
        )
        self.stop_requested.set()
        self._deadline_timer = threading.Timer(self.settings.shutdown_grace_seconds, self._grace_over)
        self._deadline_timer.daemon = True
        self._deadline_timer.start()

    def _grace_over(self) -> None:
        if self._inflight:
            log.warning("grace_period_over", in_flight=len(self._inflight))
        self._abort_all()

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Poll until stopped; returns the process exit code (0 after a clean shutdown)."""
        try:
            self._sft.owners.hold()
            swept = self._sft.sweep_temp_files(legacy_older_than=float(self.settings.ledger_lease))
            if swept:
                log.info("dead_writers_temp_files_removed", count=swept)
        except OSError as exc:
            # S3 routes still work; SFT routes will fail with the file system's own error.
            log.warning("sft_root_unusable", path=str(self._sft.root), error=str(exc))
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        watcher = threading.Thread(target=self._watch_signals, name="signals", daemon=True)
        self._started = True
        self._last_loop = time.monotonic()
        heartbeat.start()
        watcher.start()
        log.info(
            "worker_started",
            queue=self.settings.queue_url,
            concurrency=self.settings.concurrency,
            memory_budget_mb=self.settings.memory_budget_mb,
        )
        try:
            while not self.stop_requested.is_set():
                self._last_loop = time.monotonic()
                metrics.LAST_POLL.set_to_current_time()
                free = self.settings.concurrency - len(self._inflight)
                if free <= 0:
                    self._wait_for_a_slot()
                    continue
                try:
                    messages = self._queue.receive(
                        max_messages=free,
                        wait_seconds=self.settings.wait_time_seconds,
                        visibility_timeout=self.settings.visibility_timeout_seconds,
                    )
                except RetryableError as exc:
                    log.warning("receive_failed", reason=exc.reason, detail=exc.detail)
                    self.stop_requested.wait(min(20.0, 1.0 + random.random() * 4))  # noqa: S311
                    continue
                except PermanentError as exc:
                    log.error("queue_unreachable", reason=exc.reason, detail=exc.detail)
                    self.stop_requested.wait(30.0)
                    continue
                for message in messages:
                    if self.stop_requested.is_set():
                        self._release(message, why="stopping")
                        continue
                    self._dispatch(message)
        finally:
            self._drain()
            self._messages_pool.shutdown(wait=True)
            self._objects_pool.shutdown(wait=True)
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._stopped.set()
            self._sft.owners.release()
            self._events.close(timeout=3.0)
            log.info("worker_stopped")
        return 0

    def _wait_for_a_slot(self) -> None:
        with self._inflight_lock:
            futures = [entry.future for entry in self._inflight.values() if entry.future is not None]
        if futures:
            wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
        else:
            time.sleep(0.05)

    def _dispatch(self, message: Message) -> None:
        entry = _InFlight(message=message)
        if self.cancel.is_set():
            entry.cancel.set()
        with self._inflight_lock:
            self._inflight[message.message_id] = entry
        metrics.IN_FLIGHT.inc()
        entry.future = self._messages_pool.submit(self._handle, entry)

    def _drain(self) -> None:
        """Wait for in-flight messages; the grace timer aborts them if they take too long."""
        while True:
            with self._inflight_lock:
                futures = [entry.future for entry in self._inflight.values() if entry.future is not None]
            if not futures:
                return
            wait(futures, timeout=1.0)

    # -- one message --------------------------------------------------------------------
    def _handle(self, entry: _InFlight) -> None:
        message = entry.message
        structlog.contextvars.bind_contextvars(message_id=message.message_id)
        try:
            self._handle_message(entry)
        except BaseException as exc:  # noqa: BLE001 - one message never kills the worker
            log.exception("message_unexpected_error", error=type(exc).__name__)
            metrics.FAILURES.labels(kind="retryable", reason=Reason.INTERNAL_ERROR).inc()
            self._retry_later(message, reason=Reason.INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}")
        finally:
            with self._inflight_lock:
                self._inflight.pop(message.message_id, None)
            metrics.IN_FLIGHT.dec()
            structlog.contextvars.clear_contextvars()

    def _handle_message(self, entry: _InFlight) -> None:
        message = entry.message
        log.info("message_received", receive_count=message.receive_count, body_hint=message.body[:300])
        if message.sent_timestamp_ms:
            metrics.MESSAGE_AGE.observe(max(0.0, time.time() - message.sent_timestamp_ms / 1000))
        try:
            parsed = parse_body(message.body, flag_name=self.settings.flag_name)
        except MalformedMessage as exc:
            self._dead_letter(message, PermanentError(Reason.MALFORMED_BODY, str(exc)))
            return
        if isinstance(parsed, Ignored):
            log.info("message_ignored", why=parsed.why)
            self._queue.delete(message)
            metrics.MESSAGES.labels(outcome="ignored").inc()
            return
        permanent: list[EgressError] = []
        retryable: list[EgressError] = []
        delivered = 0
        for event in parsed:
            structlog.contextvars.bind_contextvars(flag_key=event.key, bucket=event.bucket)
            try:
                delivered += self._deliver_event(entry, event, permanent=permanent, retryable=retryable)
            except StopRequested:
                if entry.lease_lost:
                    retryable.append(
                        RetryableError(Reason.LEASE_LOST, "another worker took the delivery over")
                    )
                    continue
                self._release(message, why="shutdown")
                return
            except RetryableError as exc:
                retryable.append(exc)
            except PermanentError as exc:
                permanent.append(exc)
        if self.cancel.is_set() and (retryable or permanent):
            self._release(message, why="shutdown")
        elif retryable and all(isinstance(exc, LeaseHeld) for exc in retryable):
            # Another live worker delivers it: put the message back behind a delay, as a
            # new message, so this duplicate never walks its receive count into the DLQ.
            wait = max(exc.retry_after for exc in retryable if isinstance(exc, LeaseHeld))
            self._requeue(message, delay=wait)
        elif retryable:
            first = retryable[0]
            self._retry_later(message, reason=first.reason, detail=first.detail)
            self._events.settle(entry.failures, final=self._queue.is_last_receive(message))
        elif permanent:
            detail = "; ".join(error.detail for error in permanent)
            self._dead_letter(message, PermanentError(permanent[0].reason, detail))
            self._events.settle(entry.failures, final=True)
        else:
            self._queue.delete(message)
            outcome = "disabled" if entry.disabled_flags and not delivered else "delivered"
            metrics.MESSAGES.labels(outcome=outcome).inc()
            log.info("message_done", routes_delivered=delivered, outcome=outcome)

    def _deliver_event(
        self,
        entry: _InFlight,
        event: FlagEvent,
        *,
        permanent: list[EgressError],
        retryable: list[EgressError],
    ) -> int:
        matches = self._routes.find(event)  # PermanentError(no_route) when nothing matches
        if event.only_pipeline is not None and matches:  # a replay of one route (egress replay --pipeline)
            matches = [match for match in matches if match.route.pipeline_name == event.only_pipeline]
            if not matches:
                raise PermanentError(
                    Reason.NO_ROUTE,
                    f"no enabled route with pipeline_name {event.only_pipeline!r} for {event.uri} "
                    "(the message asked for that pipeline only)",
                )
        if not matches:
            log.info("flag_routes_disabled", detail="every matching route is disabled: nothing delivered")
            entry.disabled_flags += 1
            return 0
        upload_id = self._upload_id(event)
        delivered = 0
        for match in matches:
            route = match.route
            structlog.contextvars.bind_contextvars(
                pipeline=route.pipeline_name, recipient=route.recipient_name
            )
            if match.problems:
                problems = "; ".join(match.problems)
                permanent.append(
                    PermanentError(
                        Reason.INVALID_ROUTE,
                        f"route ({route.source_prefix!r}, {route.pipeline_name!r}) is invalid: {problems}",
                    )
                )
                self._hold_failure(entry, event, match, permanent[-1])
                log.error("route_invalid", problems=list(match.problems))
                continue
            approval = approval_state(route)
            if not approval.delivers:
                log.error("route_not_approved", state=approval.state, detail=approval.detail)
                metrics.FAILURES.labels(kind="permanent", reason=Reason.ROUTE_NOT_APPROVED).inc()
                permanent.append(PermanentError(Reason.ROUTE_NOT_APPROVED, approval.detail))
                self._hold_failure(entry, event, match, permanent[-1])
                continue

            def on_lease(key: DeliveryKey) -> None:
                with entry.lock:
                    entry.leases.append(key)

            try:
                result = self._delivery.deliver(
                    event, match, upload_id=upload_id, cancel=entry.cancel, on_lease=on_lease
                )
                delivered += 0 if result.skipped else 1
                self._events.delivered(event, result)  # nothing for a route skipped as already delivered
            except LeaseHeld as exc:
                log.info("route_held_elsewhere", detail=exc.detail)
                retryable.append(exc)
            except RetryableError as exc:
                log.warning("route_failed_retrying", reason=exc.reason, detail=exc.detail)
                metrics.FAILURES.labels(kind="retryable", reason=exc.reason).inc()
                retryable.append(exc)
                self._hold_failure(entry, event, match, exc)
            except PermanentError as exc:
                log.error("route_failed_permanently", reason=exc.reason, detail=exc.detail)
                metrics.FAILURES.labels(kind="permanent", reason=exc.reason).inc()
                permanent.append(exc)
                self._hold_failure(entry, event, match, exc)
            finally:
                with entry.lock:
                    entry.leases.clear()  # the delivery ended: nothing left to renew
        structlog.contextvars.unbind_contextvars("pipeline", "recipient")
        return delivered

    @staticmethod
    def _hold_failure(entry: _InFlight, event: FlagEvent, match: RouteMatch, error: EgressError) -> None:
        """Keep a route's failure: its completion event is published once the message's fate is final."""
        entry.failures.append(failed_event(event, match, error))

    @staticmethod
    def _upload_id(event: FlagEvent) -> str:
        """Which PUT of the flag this is: sequencer, else version id, else the event time.

        The event time (millisecond precision in S3 notifications) is the same in every
        copy of one notification and differs between two PUTs; LastModified, the other
        candidate, has only one-second precision over HTTP and costs a HeadObject.
        """
        if event.sequencer:
            return f"seq:{event.sequencer}"
        if event.version_id:
            return f"ver:{event.version_id}"
        return f"time:{event.event_time.astimezone(UTC).isoformat()}"

    # -- fates --------------------------------------------------------------------------
    def _dead_letter(self, message: Message, error: EgressError) -> None:
        log.error("message_dead_lettered", reason=error.reason, detail=error.detail)
        self._queue.dead_letter(message, reason=error.reason, detail=error.detail)
        metrics.DLQ_MOVES.labels(reason=error.reason).inc()
        metrics.MESSAGES.labels(outcome="dead_lettered").inc()

    def _retry_later(self, message: Message, *, reason: Reason, detail: str) -> None:
        base = self.settings.backoff_base_seconds
        delay = min(self.settings.backoff_max_seconds, base * 2 ** max(0, message.receive_count - 1))
        delay = int(delay * (0.8 + 0.4 * random.random()))  # noqa: S311 - jitter, not crypto
        log.warning(
            "message_retry_scheduled",
            reason=reason,
            detail=detail,
            receive_count=message.receive_count,
            visible_in_seconds=delay,
        )
        try:
            self._queue.set_visibility(message, delay)
        except (ReceiptGone, EgressError) as exc:
            log.warning("retry_delay_failed", error=str(exc)[:200])
        metrics.MESSAGES.labels(outcome="retry").inc()

    def _requeue(self, message: Message, *, delay: float) -> None:
        """Look again after the holder's lease would lapse, or sooner: it may finish any moment."""
        backoff = self.settings.backoff_base_seconds * 2 ** min(message.requeues, 10)
        seconds = int(min(900.0, delay + 1, backoff) * (0.8 + 0.4 * random.random()))  # noqa: S311 - jitter
        seconds = max(1, seconds)
        try:
            self._queue.requeue(message, delay_seconds=seconds)
        except (ReceiptGone, EgressError) as exc:
            log.warning("requeue_failed", error=str(exc)[:200])
            self._retry_later(message, reason=Reason.IN_PROGRESS_ELSEWHERE, detail=str(exc)[:200])
            return
        log.info("message_requeued", visible_in_seconds=seconds)
        metrics.REQUEUES.inc()
        metrics.MESSAGES.labels(outcome="requeued").inc()

    def _release(self, message: Message, *, why: str) -> None:
        try:
            self._queue.set_visibility(message, 0)
            log.info("message_released", why=why)
        except (ReceiptGone, EgressError) as exc:
            log.warning("message_release_failed", error=str(exc)[:200])
        metrics.MESSAGES.labels(outcome="released").inc()

    # -- heartbeat ----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Renew each in-flight message's leases, then its visibility: a claim never outlives its message."""
        while not self._stopped.wait(self.settings.heartbeat_seconds):
            with self._inflight_lock:
                entries = list(self._inflight.values())
            for entry in entries:
                if entry.cancel.is_set():
                    continue  # being aborted or released: extending it would undo the release
                with entry.lock:
                    leases = list(entry.leases)
                for key in leases:
                    try:
                        self._ledger.renew(key)
                    except RetryableError as exc:
                        if exc.reason == Reason.LEASE_LOST:
                            log.warning(
                                "lease_lost",
                                message_id=entry.message.message_id,
                                pipeline=key.pipeline_name,
                            )
                            entry.lease_lost = True
                            entry.cancel.set()
                        else:
                            log.warning("lease_not_renewed", reason=exc.reason)
                    except EgressError as exc:
                        log.warning("lease_not_renewed", reason=exc.reason)
                try:
                    self._queue.set_visibility(entry.message, self.settings.visibility_timeout_seconds)
                    metrics.HEARTBEATS.inc()
                except ReceiptGone:
                    log.warning("message_receipt_invalid", message_id=entry.message.message_id)
                except EgressError as exc:
                    log.warning("heartbeat_failed", message_id=entry.message.message_id, reason=exc.reason)


def worker_id() -> str:
    """Who holds a ledger lease: host, pid and start time (unique per process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(datetime.now(UTC).timestamp())}"


def run_worker(settings: WorkerSettings) -> int:
    """Build everything from the settings and run the daemon until it is stopped."""
    from egress.aws import build_clients
    from egress.destinations.sft import SftDestination
    from egress.logs import configure_logging
    from egress.transforms.decrypt import Decryptor

    configure_logging(fmt=settings.log_format, level=settings.log_level)
    aws = build_clients(settings.aws)
    try:
        check_ledger_schema(aws.dynamodb, settings.ledger_table)
    except LedgerSchemaError as exc:
        log.error("cannot_start", detail=str(exc))
        return 2
    except (ClientError, BotoCoreError) as exc:
        # Not fatal here: the first claim reports a missing table or missing rights per message.
        log.warning("ledger_check_failed", error=str(translate_client_error(exc, doing="describing it")))
    queue = FlagQueue.discover(aws.sqs, queue_url=settings.queue_url, dlq_url=settings.dlq_url)
    worker = Worker(
        settings,
        aws,
        queue=queue,
        routes=RouteTable(
            aws.dynamodb,
            settings.routes_table,
            cache_seconds=settings.route_cache_seconds,
            sft_root=settings.sft_root,
        ),
        ledger=Ledger(
            aws.dynamodb,
            settings.ledger_table,
            owner=worker_id(),
            lease_seconds=settings.ledger_lease,
            ttl_days=settings.ledger_ttl_days,
        ),
        decryptor=Decryptor(
            aws.kms,
            allowed_key_arns=settings.kms_key_arns,
            key_cache_seconds=settings.key_cache_seconds,
            chunk_size=settings.chunk_size,
        ),
        sft=SftDestination(
            settings.sft_root, free_space_margin_bytes=settings.free_space_margin_mb * 1024 * 1024
        ),
        events=worker_announcer(aws, settings, queue),
    )
    probes = metrics.WorkerProbeServer(
        host=settings.metrics_host, port=settings.metrics_port, healthy=worker.healthy, ready=worker.ready
    )
    probes.start()
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        probes.stop()
