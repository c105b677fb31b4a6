"""One route of the agent: its scanning thread, its sending threads, and each file's fate.

The life of a file: the scanner sees it ready and queues its name; a sending thread
claims it (atomic rename into this agent's own working folder), runs the route's
actions, then deletes it or moves it to ``sent_folder``. A failed attempt puts the file
back with the time of its next attempt remembered; after ``max_attempts`` it goes to
``error_folder`` with a JSON file beside it saying why. Nothing is deleted before every
action succeeded, and nothing stays in a working folder: whatever goes wrong while a file
is claimed (a full disk included), it ends back in the watched folder or in the error
folder, and a sweep puts back what a thread could not. Agents sharing a folder take over
the claims of agents that are gone (:mod:`sft_agent.claims`). With a ledger configured,
each file's fate is recorded on the worker's object rows (:mod:`sft_agent.ledger`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sft_agent.actions import RouteActions
from sft_agent.claims import ClaimedFile, ClaimFolder
from sft_agent.digests import Prehasher, sha256_base64
from sft_agent.error_folder import ErrorFolder, error_report
from sft_agent.errors import DeliveryError, Reason, StopRequested
from sft_agent.files import free_name, move
from sft_agent.ledger import FileKey, LedgerRecorder
from sft_agent.metrics import AgentMetrics
from sft_agent.retry import gives_up, retry_delay
from sft_agent.scanner import Candidate, ReadyScanner
from sft_agent.settings import RouteSettings
from sft_agent.state import FileState, StateStore
from sft_agent.stopping import Stopper
from sft_agent.tls import (
    certificate_not_after,
    days_until,
)

if TYPE_CHECKING:
    pass

_CERT_WARN_DAYS = 14
_ERROR_COUNT_EVERY = 15.0
_CERT_CHECK_EVERY = 300.0
_SWEEP_EVERY = 2.0
_TAKEOVER_EVERY = 5.0
_ROUTE_STATUS_EVERY = 60.0


@dataclass(eq=False)
class RouteRunner:
    """Everything one route does: scan, claim, act, finish, retry, park — and keep nothing stranded."""

    route: RouteSettings
    _: KW_ONLY
    claims: ClaimFolder
    states: StateStore
    actions: RouteActions
    metrics: AgentMetrics
    stopper: Stopper
    ledger: LedgerRecorder | None = None
    clock: Callable[[], float] = time.time
    spread: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        route = self.route
        self.scanner = ReadyScanner(
            route.source,
            filename_regex=route.filename_regex,
            min_age=route.min_age,
            recursive=route.recursive,
        )
        self.log = structlog.get_logger("sft_agent").bind(route=route.name)
        self.prehasher = Prehasher(
            route.source,
            chunk_size=self.actions.chunk_size,
            should_stop=lambda: self.stopper.stop_requested,
            name=route.name,
        )
        self._queue: queue.Queue[Candidate | None] = queue.Queue()
        self._busy: set[str] = set()  # names a thread (or the sweep) is working on
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._warned_folders: set[str] = set()
        self._errors_counted_at = 0.0
        self._cert_checked_at = 0.0
        self._swept_at = time.monotonic()
        self._taken_over_at = time.monotonic()
        self._status_logged_at: float | None = None
        self.errors = ErrorFolder(route.error_folder, log=self.log)
        self._status: dict[str, float | int | None] = {
            "backlog": 0,
            "oldest_file_age_seconds": 0,
            "error_files": 0,
            "cert_expiry_days": None,
        }
        self.heartbeat = time.monotonic()

    @property
    def takeover_min_age(self) -> float:
        """How long an agent folder must exist before it may be taken over (its owner locks it at once)."""
        return max(3 * self.route.poll_interval, 1.0)

    # -- start-up ------------------------------------------------------------------------

    def recover(self) -> None:
        """Put back what gone agents (or the last run) left claimed; load states; forget stale ones."""
        for bad in self.states.load():
            self.log.warning("state_file_unreadable", path=str(bad))
        self.take_over(at_start=True)
        for name in self.states.names():
            if not (self.route.source / name).is_file() and not self.claims.claimed_anywhere(name):
                with contextlib.suppress(OSError):
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

    # -- scanning and upkeep ---------------------------------------------------------------

    def _scan_loop(self) -> None:
        try:
            while not self.stopper.stop_requested:
                try:
                    self.scan_once()
                except Exception as exc:  # noqa: BLE001 - one bad scan must not kill the route
                    self.log.error("scan_failed", error=f"{type(exc).__name__}: {exc}")
                try:
                    self.upkeep()
                except Exception as exc:  # noqa: BLE001 - nor one failed sweep
                    self.log.error("upkeep_failed", error=f"{type(exc).__name__}: {exc}")
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
        self._status["backlog"] = result.waiting
        self._status["oldest_file_age_seconds"] = int(oldest)
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

    def upkeep(self) -> None:
        """What keeps files from being stranded: the sweep, the takeover, and the route_status line."""
        now = time.monotonic()
        if now - self._swept_at >= max(_SWEEP_EVERY, self.route.poll_interval):
            self._swept_at = now
            self.sweep()
        if now - self._taken_over_at >= max(_TAKEOVER_EVERY, 10 * self.route.poll_interval):
            self._taken_over_at = now
            self.take_over(at_start=False)
        if self._status_logged_at is None or now - self._status_logged_at >= _ROUTE_STATUS_EVERY:
            self._status_logged_at = now
            self.log.info("route_status", **self._status)

    def sweep(self) -> None:
        """Put back files in this agent's ``claimed/`` that no thread works on; write pending error reports."""
        for name, path in list(self.claims.in_flight()):
            if not self._hold(name):
                continue
            try:
                self._release(name, path, log=self.log.bind(file=name), why="swept")
            finally:
                self._let_go(name)
        self.errors.flush()

    def take_over(self, *, at_start: bool) -> None:
        """Put back the files of agents that are gone (their lock is free) and remove their folders."""
        for gone in self.claims.gone_agents(min_age=self.takeover_min_age):
            moved, complete = 0, True
            try:
                for name, path in list(gone.files()):
                    if not self._hold(name):
                        complete = False
                        continue
                    try:
                        self._give_back(name, path, from_agent=gone.agent_id, at_start=at_start)
                        moved += 1
                    except FileNotFoundError:
                        pass  # another agent took it over first
                    except Exception as exc:  # noqa: BLE001 - try again at the next takeover
                        complete = False
                        self.log.error(
                            "takeover_failed",
                            file=name,
                            from_agent=gone.agent_id,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    finally:
                        self._let_go(name)
            finally:
                removed = gone.remove() if complete else False
                gone.release()
            if moved or (removed and not gone.legacy):
                self.log.info(
                    "agent_folder_taken_over", from_agent=gone.agent_id, files=moved, removed=removed
                )

    def _give_back(self, name: str, path: Path, *, from_agent: str, at_start: bool) -> None:
        if self.claims.put_back_path(name, path):
            event = "put_back_at_start" if at_start else "put_back_from_gone_agent"
            self.log.info(event, file=name, from_agent=from_agent)
            return
        self.log.error("put_back_conflict", file=name, detail="a newer file with the same name is waiting")
        self._park_path(
            name,
            path,
            DeliveryError(Reason.SUPERSEDED, "a newer file with the same name arrived; not delivered"),
            state=self.states.get(name),
        )

    def _hold(self, name: str) -> bool:
        with self._lock:
            if name in self._busy:
                return False
            self._busy.add(name)
            return True

    def _let_go(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)

    def _update_error_count(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._errors_counted_at < _ERROR_COUNT_EVERY:
            return
        self._errors_counted_at = time.monotonic()
        count = self.errors.count()
        self.metrics.error_files.labels(route=self.route.name).set(count)
        self._status["error_files"] = count

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
        self._status["cert_expiry_days"] = round(days, 1)
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
                self._let_go(candidate.name)

    def handle(self, candidate: Candidate) -> None:
        """Claim one ready file and run the route's actions on it.

        Whatever happens — a full disk while saving state or writing an error report, a
        failed move — the file leaves here delivered, back in the watched folder or in the
        error folder; if even putting it back fails, the sweep tries again.
        """
        try:
            claimed = self.claims.claim(candidate.name)
        except OSError as exc:
            self.log.warning("claim_failed", file=candidate.name, error=f"{type(exc).__name__}: {exc}")
            return
        if claimed is None:
            return
        log = self.log.bind(file=claimed.name)
        try:
            self._attempt(claimed, candidate, log=log)
        finally:
            if os.path.lexists(claimed.path):
                self._release(claimed.name, claimed.path, log=log, why="after_error")

    def _attempt(self, claimed: ClaimedFile, candidate: Candidate, *, log: Any) -> None:
        if (claimed.size, claimed.mtime_ns) != (candidate.size, candidate.mtime_ns):
            log.info("changed_after_ready", size=claimed.size)
            self.scanner.forget(claimed.name)
            self._put_back(claimed, state=None, log=log)
            return
        state = self.states.refresh(claimed.name)  # another agent may have tried it meanwhile
        if state is not None and not state.matches(size=claimed.size, mtime_ns=claimed.mtime_ns):
            state = None
        if state is not None and state.next_attempt_at > self.clock():
            log.info("not_due_yet", retry_in_s=round(state.next_attempt_at - self.clock(), 3))
            self._put_back(claimed, state=state, log=log)
            return
        if state is None:
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
            if self.ledger is not None:
                if state.digest is None:
                    state.digest = sha256_base64(
                        claimed.path,
                        size=claimed.size,
                        chunk_size=self.actions.chunk_size,
                        should_stop=lambda: self.stopper.aborted,
                    )
                self.ledger.sending(self._ledger_key(claimed.name, state), attempt=state.attempts + 1)
            sent_as = self.actions.run(claimed, state, save=lambda s: self._save_state(s, log=log))
        except StopRequested:
            log.warning("send_aborted", reason="agent stopping; the file is put back untouched")
            self._put_back(claimed, state=None, log=log)
            return
        except DeliveryError as exc:
            self._failed(claimed, state, exc, log=log)
            return
        except Exception as exc:  # noqa: BLE001 - unexpected: count it as a failed attempt, keep the file
            log.error("unexpected_error", error=f"{type(exc).__name__}: {exc}")
            self._failed(
                claimed, state, DeliveryError(Reason.IO_ERROR, f"{type(exc).__name__}: {exc}"), log=log
            )
            return
        finally:
            gauge.dec()
        self._finish(claimed, state, sent_as=sent_as, seconds=time.monotonic() - started, log=log)

    def _save_state(self, state: FileState, *, log: Any) -> None:
        """Save a state; a failure (disk full) is logged, the state stays in memory and the file goes on."""
        try:
            self.states.save(state)
        except OSError as exc:
            log.warning(
                "state_save_failed",
                error=exc.strerror or str(exc),
                detail="kept in memory only; progress is lost if the agent stops now",
            )

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
        with contextlib.suppress(OSError):
            self.states.drop(claimed.name)
        self.claims.prune(claimed.path.parent)
        self.metrics.files.labels(route=self.route.name, outcome="sent").inc()
        self.metrics.send_seconds.labels(route=self.route.name).observe(seconds)
        if self.ledger is not None:
            self.ledger.sent(
                self._ledger_key(claimed.name, state),
                attempts=state.attempts + 1,
                http_status=state.http_status,
                bytes_sent=claimed.size,
            )
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
        if exc.reason in (Reason.DIGEST_MISMATCH, Reason.FILE_CHANGED):
            state.digest = None  # hash again: the content may not be what was hashed
        state.last_reason = exc.reason
        state.last_detail = exc.detail
        self.metrics.failures.labels(route=self.route.name, reason=exc.reason).inc()
        retry = self.route.retry
        failed = {
            "reason": exc.reason,
            "detail": exc.detail,
            "attempt": state.attempts,
            "max_attempts": retry.max_attempts,
        }
        if exc.permanent or gives_up(retry, state.attempts):
            log.error("attempt_failed", **failed, next="error_folder")
            self._park_path(claimed.name, claimed.path, exc, state=state)
            return
        delay = retry_delay(retry, state.attempts, spread=self.spread())
        state.next_attempt_at = self.clock() + delay
        self._save_state(state, log=log)
        log.warning("attempt_failed", **failed, next="retry", retry_in_s=round(delay, 3))
        self.metrics.files.labels(route=self.route.name, outcome="retry").inc()
        self.metrics.retries.labels(route=self.route.name).inc()
        if self.ledger is not None:
            self.ledger.retry(
                self._ledger_key(claimed.name, state),
                attempts=state.attempts,
                reason=exc.reason,
                detail=exc.detail,
            )
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
                Reason.SUPERSEDED,
                "a newer file with the same name arrived while this one was claimed; not delivered",
            ),
            state=state,
        )

    def _release(self, name: str, path: Path, *, log: Any, why: str) -> bool:
        """Get a file out of ``claimed/`` after something went wrong: back to the watched folder
        (or, if a newer file took its name, to the error folder). Never raises; False if the file
        is still there (the sweep tries again)."""
        try:
            if self.claims.put_back_path(name, path):
                log.warning("put_back", why=why, detail="returned to the watched folder")
                return True
            log.error("put_back_conflict", detail="a newer file with the same name is waiting")
            self._park_path(
                name,
                path,
                DeliveryError(Reason.SUPERSEDED, "a newer file with the same name arrived; not delivered"),
                state=self.states.get(name),
            )
            return True
        except FileNotFoundError:
            return True
        except Exception as exc:  # noqa: BLE001 - the sweep will try again
            log.error(
                "release_failed",
                error=f"{type(exc).__name__}: {exc}",
                detail="left in the working folder; the sweep tries again",
            )
            return False

    def _ledger_key(self, name: str, state: FileState | None, *, path: Path | None = None) -> FileKey | None:
        if self.ledger is None:
            return None
        digest = state.digest if state is not None else None
        if digest is None and path is not None:
            with contextlib.suppress(DeliveryError, StopRequested, OSError):
                size = path.stat().st_size
                digest = sha256_base64(
                    path, size=size, chunk_size=self.actions.chunk_size, should_stop=lambda: False
                )
        return self.ledger.key_for(self.route.source / name, digest)

    def _park_path(self, name: str, path: Path, exc: DeliveryError, *, state: FileState | None) -> None:
        """Move a file to the error folder, its reason in ``<name>.error.json`` beside it.

        The file moves even if the report cannot be written (disk full): the sweep writes
        the report once there is room (:class:`~sft_agent.error_folder.ErrorFolder`).
        """
        report = error_report(name, route=self.route, exc=exc, state=state, failed_at=self.clock())
        key = self._ledger_key(name, state, path=path)
        destination = self.errors.park(name, path, report)
        self.claims.prune(path.parent)
        with contextlib.suppress(OSError):
            self.states.drop(name)
        self.metrics.files.labels(route=self.route.name, outcome="error").inc()
        self._update_error_count(force=True)
        if self.ledger is not None:
            self.ledger.parked(
                key, attempts=state.attempts if state else 0, reason=exc.reason, detail=exc.detail
            )
        self.log.error("moved_to_error_folder", file=name, reason=exc.reason, path=str(destination))
