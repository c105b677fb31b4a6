"""The daemon: per route, one scanning thread and ``threads`` sending threads; start and stop.

The life of a file: the scanner sees it ready and queues its name; a sending thread
claims it (atomic rename into the working folder), runs the route's actions, then
deletes it or moves it to ``sent_folder``. A failed attempt puts the file back with the
time of its next attempt remembered; after ``max_attempts`` it goes to ``error_folder``
with a JSON file beside it saying why. Nothing is deleted before every action succeeded.

Stopping (SIGTERM, SIGINT): claim nothing new, let sends in flight finish within
``shutdown_grace``, then abort what is left (put back untouched) and exit 0. A second
signal aborts at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from sft_agent import errors
from sft_agent.actions import RouteActions
from sft_agent.claims import ClaimedFile, ClaimError, ClaimFolder
from sft_agent.digests import Prehasher
from sft_agent.errors import AbortRequested, DeliveryError
from sft_agent.files import free_name, move, write_atomically
from sft_agent.metrics import AgentMetrics, MetricsServer
from sft_agent.push import HttpPusher
from sft_agent.retry import gives_up, retry_delay
from sft_agent.scanner import Candidate, ReadyScanner
from sft_agent.settings import AgentSettings, HttpAction, RouteSettings
from sft_agent.state import FileState, StateStore
from sft_agent.stopping import Stopper
from sft_agent.tls import (
    ReloadingClientContext,
    TlsConfigError,
    certificate_not_after,
    days_until,
    key_permissions_too_open,
)

ERROR_SUFFIX = ".error.json"
_CERT_WARN_DAYS = 14
_ERROR_COUNT_EVERY = 15.0
_CERT_CHECK_EVERY = 300.0
_MAIN_TICK = 0.05
_ABORT_WAIT = 10.0


class StartupError(RuntimeError):
    """The agent cannot start (certificates, folders, port); the message says what to fix."""


def count_error_files(folder: Path) -> int:
    """Files parked in an error folder (their ``.error.json`` companions not counted)."""
    total = 0
    for _, _, files in os.walk(folder):
        total += sum(1 for f in files if not f.endswith(ERROR_SUFFIX) and not f.startswith("."))
    return total


class RouteRunner:
    """Everything one route does: scan, claim, act, finish, retry, park."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        claims: ClaimFolder,
        states: StateStore,
        actions: RouteActions,
        metrics: AgentMetrics,
        stopper: Stopper,
        clock: Callable[[], float] = time.time,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self.route = route
        self.claims = claims
        self.states = states
        self.actions = actions
        self.metrics = metrics
        self.stopper = stopper
        self.clock = clock
        self.spread = spread
        self.scanner = ReadyScanner(
            route.source,
            filename_regex=route.filename_regex,
            min_age=route.min_age,
            recursive=route.recursive,
        )
        self.log = structlog.get_logger("sft_agent").bind(route=route.name)
        self.prehasher = Prehasher(
            route.source,
            chunk_size=actions.chunk_size,
            should_stop=lambda: stopper.stop_requested,
            name=route.name,
        )
        self._queue: queue.Queue[Candidate | None] = queue.Queue()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._warned_folders: set[str] = set()
        self._errors_counted_at = 0.0
        self._cert_checked_at = 0.0
        self.heartbeat = time.monotonic()

    # -- start-up ------------------------------------------------------------------------

    def recover(self) -> None:
        """Put back what the last run left claimed; load remembered states; forget stale ones."""
        for name, path in list(self.claims.in_flight()):
            if self.claims.put_back_path(name, path):
                self.log.info("put_back_at_start", file=name)
            else:
                self._park_path(
                    name,
                    path,
                    DeliveryError(
                        errors.SUPERSEDED, "a newer file with the same name arrived; not delivered"
                    ),
                    state=None,
                )
        for bad in self.states.load():
            self.log.warning("state_file_unreadable", path=str(bad))
        for name in self.states.names():
            if not (self.route.source / name).is_file():
                self.states.drop(name)
        self.metrics.register_route(self.route.name)
        self._update_error_count(force=True)
        self._update_cert_expiry(force=True)

    def start(self) -> None:
        """Start the scanning thread and the sending threads."""
        self._threads = [
            threading.Thread(target=self._scan_loop, name=f"scan-{self.route.name}", daemon=True)
        ]
        self._threads += [
            threading.Thread(target=self._work_loop, name=f"send-{self.route.name}-{n}", daemon=True)
            for n in range(self.route.threads)
        ]
        for thread in self._threads:
            thread.start()
        if self.route.http_actions and self.route.min_age > 0:
            self.prehasher.start()

    def alive(self) -> bool:
        """True while any of the route's threads runs."""
        return any(t.is_alive() for t in self._threads)

    def healthy(self, *, stale_after: float) -> bool:
        """True while the scanner beats and every thread runs."""
        return (
            bool(self._threads)
            and all(t.is_alive() for t in self._threads)
            and time.monotonic() - self.heartbeat < stale_after
        )

    # -- scanning ------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        try:
            while not self.stopper.stop_requested:
                try:
                    self.scan_once()
                except Exception as exc:  # noqa: BLE001 - one bad scan must not kill the route
                    self.log.error("scan_failed", error=f"{type(exc).__name__}: {exc}")
                self.heartbeat = time.monotonic()
                self.stopper.wait(self.route.poll_interval)
        finally:
            for _ in range(self.route.threads):
                self._queue.put(None)
            self.prehasher.stop()

    def scan_once(self) -> None:
        """Scan the folder and queue the files that are ready and due."""
        result = self.scanner.scan()
        now = self.clock()
        for candidate in result.ready:
            with self._lock:
                if candidate.name in self._busy:
                    continue
            state = self.states.get(candidate.name)
            if (
                state is not None
                and state.matches(size=candidate.size, mtime_ns=candidate.mtime_ns)
                and state.next_attempt_at > now
            ):
                continue
            with self._lock:
                self._busy.add(candidate.name)
            self._queue.put(candidate)
        if self.route.http_actions and self.route.min_age > 0:
            for candidate in result.settling:
                self.prehasher.offer(candidate.name, size=candidate.size)
            self.prehasher.forget_except(set(result.names))
        route = self.route.name
        self.metrics.backlog.labels(route=route).set(result.waiting)
        oldest = 0.0 if result.oldest_mtime is None else max(0.0, now - result.oldest_mtime)
        self.metrics.oldest_age.labels(route=route).set(oldest)
        self.metrics.last_scan.labels(route=route).set(now)
        for folder in result.skipped_folders:
            if folder not in self._warned_folders:
                self._warned_folders.add(folder)
                self.log.warning(
                    "sub_folder_ignored",
                    folder=folder,
                    hint="set recursive: true to send files in sub-folders",
                )
        self._update_error_count()
        self._update_cert_expiry()

    def _update_error_count(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._errors_counted_at < _ERROR_COUNT_EVERY:
            return
        self._errors_counted_at = time.monotonic()
        self.metrics.error_files.labels(route=self.route.name).set(count_error_files(self.route.error_folder))

    def _update_cert_expiry(self, *, force: bool = False) -> None:
        tls = self.route.tls
        if tls is None or (not force and time.monotonic() - self._cert_checked_at < _CERT_CHECK_EVERY):
            return
        self._cert_checked_at = time.monotonic()
        try:
            days = days_until(certificate_not_after(tls.client_cert))
        except (OSError, ValueError) as exc:
            self.log.warning("client_certificate_unreadable", path=str(tls.client_cert), error=str(exc))
            return
        self.metrics.cert_expiry_days.labels(route=self.route.name).set(round(days, 3))
        if force and days < 0:
            self.log.error("client_certificate_expired", path=str(tls.client_cert), days=round(days, 1))
        elif force and days < _CERT_WARN_DAYS:
            self.log.warning(
                "client_certificate_expires_soon", path=str(tls.client_cert), days=round(days, 1)
            )

    # -- sending -------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            candidate = self._queue.get()
            if candidate is None:
                return
            try:
                if not self.stopper.stop_requested:
                    self.handle(candidate)
            except Exception as exc:  # noqa: BLE001 - a thread must outlive any one file
                self.log.error("unexpected_error", file=candidate.name, error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._busy.discard(candidate.name)

    def handle(self, candidate: Candidate) -> None:
        """Claim one ready file and run the route's actions on it."""
        claimed = self.claims.claim(candidate.name)
        if claimed is None:
            return
        log = self.log.bind(file=claimed.name)
        if (claimed.size, claimed.mtime_ns) != (candidate.size, candidate.mtime_ns):
            log.info("changed_after_ready", size=claimed.size)
            self.scanner.forget(claimed.name)
            self._put_back(claimed, state=None, log=log)
            return
        state = self.states.get(claimed.name)
        if state is None or not state.matches(size=claimed.size, mtime_ns=claimed.mtime_ns):
            state = FileState(
                name=claimed.name, size=claimed.size, mtime_ns=claimed.mtime_ns, first_claimed_at=self.clock()
            )
        if state.digest is None:
            state.digest = self.prehasher.take(claimed.name, (claimed.size, claimed.mtime_ns, claimed.inode))
        log.info(
            "claimed", size=claimed.size, attempt=state.attempts + 1, digest_ready=state.digest is not None
        )
        started = time.monotonic()
        gauge = self.metrics.in_flight.labels(route=self.route.name)
        gauge.inc()
        try:
            sent_as = self.actions.run(claimed, state, save=self.states.save)
        except AbortRequested:
            log.warning("send_aborted", reason="agent stopping; the file is put back untouched")
            self._put_back(claimed, state=None, log=log)
            return
        except DeliveryError as exc:
            self._failed(claimed, state, exc, log=log)
            return
        except Exception as exc:  # noqa: BLE001 - unexpected: count it as a failed attempt, keep the file
            log.error("unexpected_error", error=f"{type(exc).__name__}: {exc}")
            self._failed(
                claimed, state, DeliveryError(errors.IO_ERROR, f"{type(exc).__name__}: {exc}"), log=log
            )
            return
        finally:
            gauge.dec()
        self._finish(claimed, state, sent_as=sent_as, seconds=time.monotonic() - started, log=log)

    def _finish(
        self, claimed: ClaimedFile, state: FileState, *, sent_as: str, seconds: float, log: Any
    ) -> None:
        if self.route.sent_folder is not None:
            folder, _, base = claimed.name.rpartition("/")
            destination = free_name(self.route.sent_folder / folder, base)
            move(claimed.path, destination)
            kept: str | None = str(destination)
        else:
            claimed.path.unlink()
            kept = None
        self.states.drop(claimed.name)
        self.claims.prune(claimed.path.parent)
        self.metrics.files.labels(route=self.route.name, outcome="sent").inc()
        self.metrics.send_seconds.labels(route=self.route.name).observe(seconds)
        log.info(
            "file_sent",
            sent_as=sent_as,
            size=claimed.size,
            seconds=round(seconds, 3),
            attempts=state.attempts + 1,
            kept_in=kept,
        )

    def _failed(self, claimed: ClaimedFile, state: FileState, exc: DeliveryError, *, log: Any) -> None:
        state.attempts += 1
        if exc.reason in (errors.DIGEST_MISMATCH, errors.FILE_CHANGED):
            state.digest = None  # hash again: the content may not be what was hashed
        state.last_reason = exc.reason
        state.last_detail = exc.detail
        self.metrics.failures.labels(route=self.route.name, reason=exc.reason).inc()
        retry = self.route.retry
        if exc.permanent or gives_up(retry, state.attempts):
            log.error(
                "attempt_failed",
                reason=exc.reason,
                detail=exc.detail,
                attempt=state.attempts,
                max_attempts=retry.max_attempts,
                next="error_folder",
            )
            self._park_path(claimed.name, claimed.path, exc, state=state)
            return
        delay = retry_delay(retry, state.attempts, spread=self.spread())
        state.next_attempt_at = self.clock() + delay
        self.states.save(state)
        log.warning(
            "attempt_failed",
            reason=exc.reason,
            detail=exc.detail,
            attempt=state.attempts,
            max_attempts=retry.max_attempts,
            next="retry",
            retry_in_s=round(delay, 3),
        )
        self.metrics.files.labels(route=self.route.name, outcome="retry").inc()
        self.metrics.retries.labels(route=self.route.name).inc()
        self._put_back(claimed, state=state, log=log)

    def _put_back(self, claimed: ClaimedFile, *, state: FileState | None, log: Any) -> None:
        if self.claims.put_back(claimed):
            return
        log.error(
            "put_back_conflict", detail="a newer file with the same name arrived while this one was claimed"
        )
        self._park_path(
            claimed.name,
            claimed.path,
            DeliveryError(
                errors.SUPERSEDED,
                "a newer file with the same name arrived while this one was claimed; not delivered",
            ),
            state=state,
        )

    def _park_path(self, name: str, path: Path, exc: DeliveryError, *, state: FileState | None) -> None:
        """Move a file to the error folder, its reason in ``<name>.error.json`` beside it."""
        folder, _, base = name.rpartition("/")
        destination = free_name(self.route.error_folder / folder, base)
        destination.parent.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        report = {
            "file": name,
            "route": self.route.name,
            "reason": exc.reason,
            "detail": exc.detail,
            "http_status": exc.status,
            "attempts": state.attempts if state else 0,
            "max_attempts": self.route.retry.max_attempts,
            "size": state.size if state else None,
            "sha256": state.digest if state else None,
            "first_claimed_at": _iso(state.first_claimed_at) if state else None,
            "failed_at": _iso(now),
            "actions_done": state.done_actions if state else [],
        }
        write_atomically(
            destination.with_name(destination.name + ERROR_SUFFIX),
            (json.dumps(report, indent=2) + "\n").encode(),
        )
        move(path, destination)
        self.claims.prune(path.parent)
        self.states.drop(name)
        self.metrics.files.labels(route=self.route.name, outcome="error").inc()
        self._update_error_count(force=True)
        self.log.error("moved_to_error_folder", file=name, reason=exc.reason, path=str(destination))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class Agent:
    """The whole agent: builds every route, serves metrics, runs until told to stop."""

    def __init__(self, settings: AgentSettings, *, metrics: AgentMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.stopper = Stopper()
        self.log = structlog.get_logger("sft_agent")
        self.runners: list[RouteRunner] = []
        self._claims: list[ClaimFolder] = []
        self._pushers: list[HttpPusher] = []
        self._server: MetricsServer | None = None
        self._signals: list[int] = []

    def prepare(self) -> None:
        """Everything that can fail at start-up: certificates, folders, locks, the metrics port."""
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self.log.warning("running_as_root", hint="run the agent as an unprivileged user")
        contexts: dict[int, ReloadingClientContext] = {}
        for index, route in enumerate(self.settings.routes):
            if route.tls is None:
                continue
            prefix = f"routes[{index}]({route.name}).tls"
            try:
                contexts[index] = ReloadingClientContext(
                    route.tls,
                    prefix=prefix,
                    on_error=self._tls_reload_failed(route.name),
                )
            except TlsConfigError as exc:
                raise StartupError(str(exc)) from exc
            if key_permissions_too_open(route.tls.client_key):
                self.log.warning(
                    "client_key_readable_by_others",
                    route=route.name,
                    path=str(route.tls.client_key),
                    hint="chmod 600",
                )
        for index, route in enumerate(self.settings.routes):
            pushers = {
                position: HttpPusher(
                    action,
                    tls=contexts[index],
                    stopper=self.stopper,
                    chunk_size=self.settings.chunk_size,
                    max_idle=route.threads,
                )
                for position, action in enumerate(route.actions)
                if isinstance(action, HttpAction)
            }
            self._pushers += pushers.values()
            claims = ClaimFolder(source=route.source, work_folder=route.work_folder)
            try:
                route.error_folder.mkdir(parents=True, exist_ok=True)
                if route.sent_folder is not None:
                    route.sent_folder.mkdir(parents=True, exist_ok=True)
                claims.open()
            except ClaimError as exc:
                raise StartupError(f"routes[{index}]({route.name}).work_folder: {exc}") from exc
            except OSError as exc:
                raise StartupError(
                    f"routes[{index}]({route.name}): cannot prepare {exc.filename}: {exc.strerror}"
                ) from exc
            self._claims.append(claims)
            runner = RouteRunner(
                route,
                claims=claims,
                states=StateStore(claims.state_folder),
                actions=RouteActions(
                    route,
                    pushers=pushers,
                    stopper=self.stopper,
                    metrics=self.metrics,
                    chunk_size=self.settings.chunk_size,
                ),
                metrics=self.metrics,
                stopper=self.stopper,
            )
            runner.recover()
            self.runners.append(runner)
        try:
            self._server = MetricsServer(
                self.metrics,
                host=self.settings.metrics_host,
                port=self.settings.metrics_port,
                healthy=self.healthy,
            )
        except OSError as exc:
            raise StartupError(
                f"metrics.port: cannot listen on {self.settings.metrics_host}:{self.settings.metrics_port}: "
                f"{exc.strerror}"
            ) from exc

    def _tls_reload_failed(self, route: str) -> Callable[[str], None]:
        def report(message: str) -> None:
            self.log.error("tls_reload_failed", route=route, error=message)

        return report

    def healthy(self) -> bool:
        """True while every route's scanner beats (``/healthz``)."""
        if self.stopper.stop_requested:
            return True  # stopping on purpose is not a failure to restart for
        return all(
            runner.healthy(stale_after=max(30.0, 5 * runner.route.poll_interval)) for runner in self.runners
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it: logging or setting an Event here could deadlock on a lock the
        # interrupted main thread holds. The main loop below acts on it.
        self._signals.append(signum)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
        assert self._server is not None, "call prepare() first"
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._server.start()
        for runner in self.runners:
            runner.start()
        self.log.info(
            "agent_started",
            routes=[r.route.name for r in self.runners],
            metrics=f"{self.settings.metrics_host}:{self._server.port}",
            pid=os.getpid(),
        )
        while not self._signals:
            time.sleep(_MAIN_TICK)
        self.log.info(
            "stop_requested",
            signal=signal.Signals(self._signals[0]).name,
            grace_s=self.settings.shutdown_grace,
        )
        self.stopper.request_stop()
        grace_ends = time.monotonic() + self.settings.shutdown_grace
        abort_ends: float | None = None
        while any(runner.alive() for runner in self.runners):
            now = time.monotonic()
            if abort_ends is None and (len(self._signals) > 1 or now >= grace_ends):
                if len(self._signals) > 1:
                    self.log.warning("abort_requested", signal=signal.Signals(self._signals[1]).name)
                else:
                    self.log.warning(
                        "grace_period_over", detail="aborting sends in flight; files are put back"
                    )
                self.stopper.abort()
                abort_ends = now + _ABORT_WAIT
            if abort_ends is not None and now >= abort_ends:
                break
            time.sleep(_MAIN_TICK)
        finished = not any(runner.alive() for runner in self.runners)
        for pusher in self._pushers:
            pusher.close()
        for claims in self._claims:
            claims.close()
        with contextlib.suppress(Exception):
            self._server.stop()
        self.log.info("agent_stopped", clean=finished)
        return 0 if finished else 1
