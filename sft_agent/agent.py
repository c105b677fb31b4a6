"""The daemon: one :class:`~sft_agent.route_runner.RouteRunner` per route; start and stop.

Stopping (SIGTERM, SIGINT): claim nothing new, let sends in flight finish within
``shutdown_grace``, then abort what is left (put back untouched) and exit 0. A second
signal aborts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from sft_agent.actions import RouteActions
from sft_agent.claims import ClaimError, ClaimFolder, new_agent_id
from sft_agent.ledger import LedgerRecorder
from sft_agent.metrics import AgentMetrics, MetricsServer
from sft_agent.push import HttpPusher
from sft_agent.route_runner import RouteRunner
from sft_agent.settings import AgentSettings, HttpAction
from sft_agent.state import StateStore
from sft_agent.stopping import Stopper
from sft_agent.tls import (
    ReloadingClientContext,
    TlsConfigError,
    key_permissions_too_open,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient

_MAIN_TICK = 0.05
_ABORT_WAIT = 10.0
_LEDGER_DRAIN = 3.0


class StartupError(RuntimeError):
    """The agent cannot start (certificates, folders, port); the message says what to fix."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class Agent:
    """The whole agent: builds every route, serves metrics, runs until told to stop."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        metrics: AgentMetrics | None = None,
        dynamodb: DynamoDBClient | None = None,
        sns: SNSClient | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.stopper = Stopper()
        self.agent_id = agent_id or new_agent_id()
        self.log = structlog.get_logger("sft_agent")
        self.ledger: LedgerRecorder | None = None
        if settings.ledger is not None:
            if dynamodb is None:
                raise StartupError("ledger: a DynamoDB client is needed (built by the entry point)")
            if settings.ledger.events_topic_arn and sns is None:
                raise StartupError(
                    "ledger.events_topic_arn: an SNS client is needed (built by the entry point)"
                )
            self.ledger = LedgerRecorder(
                settings.ledger, dynamodb=dynamodb, agent_id=self.agent_id, metrics=self.metrics, sns=sns
            )
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
            claims = ClaimFolder(source=route.source, work_folder=route.work_folder, agent_id=self.agent_id)
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
            ledger_settings = self.settings.ledger
            tracked = ledger_settings is not None and _inside(route.source, ledger_settings.sft_root)
            if ledger_settings is not None and not tracked:
                self.log.warning(
                    "ledger_route_outside_sft_root",
                    route=route.name,
                    source=str(route.source),
                    sft_root=str(ledger_settings.sft_root),
                    detail="files of this route are not recorded in the ledger",
                )
            runner = RouteRunner(
                route,
                claims=claims,
                states=StateStore(claims.state_folder),
                ledger=self.ledger if tracked else None,
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
        if self.ledger is not None:
            self.ledger.start()
        for runner in self.runners:
            runner.start()
        self.log.info(
            "agent_started",
            routes=[r.route.name for r in self.runners],
            metrics=f"{self.settings.metrics_host}:{self._server.port}",
            pid=os.getpid(),
            agent_id=self.agent_id,
            ledger=self.settings.ledger.table if self.settings.ledger else None,
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
        if self.ledger is not None:
            self.ledger.stop(timeout=_LEDGER_DRAIN)
        with contextlib.suppress(Exception):
            self._server.stop()
        self.log.info("agent_stopped", clean=finished)
        return 0 if finished else 1
