"""A route's actions applied, in order, to one claimed file: rename, copy, http.

Progress is saved after each action that succeeded (``state.done_actions``), so a retry
resumes after the last success and never delivers twice what was already delivered.
Renames are pure (they change the name the following actions use) and are recomputed
on every attempt from the time of the first claim, so the name never drifts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime

import structlog

from egress.kernel.placeholders import resolve_placeholders
from sft_agent.claims import ClaimedFile
from sft_agent.digests import sha256_base64
from sft_agent.errors import DeliveryError, Reason
from sft_agent.files import copy_atomically
from sft_agent.metrics import AgentMetrics
from sft_agent.push import HttpPusher
from sft_agent.settings import CopyAction, HttpAction, RenameAction, RouteSettings
from sft_agent.state import FileState
from sft_agent.stopping import Stopper


def is_safe_name(name: str) -> bool:
    """A one-segment file name safe anywhere: not empty, ``.``/``..``, hidden, nor with odd bytes."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and all(ord(c) >= 32 and ord(c) != 127 for c in name)
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def apply_rename(action: RenameAction, name: str, *, when: datetime) -> str:
    """The new name: ``action.pattern.sub(replacement, last segment)``, date placeholders resolved.

    Raises :class:`DeliveryError` (permanent, ``invalid_name``) if the result is not a safe name.
    """
    replacement = resolve_placeholders(action.replacement, when)
    folder, _, base = name.rpartition("/")
    try:
        renamed = action.pattern.sub(replacement, base)
    except re.error as exc:
        raise DeliveryError(Reason.INVALID_NAME, f"rename of {base!r} failed: {exc}", permanent=True) from exc
    if not is_safe_name(renamed):
        raise DeliveryError(
            Reason.INVALID_NAME,
            f"rename of {base!r} gives {renamed!r}, not a usable file name",
            permanent=True,
        )
    return f"{folder}/{renamed}" if folder else renamed


@dataclass(eq=False)
class RouteActions:
    """Runs the actions of one route on its claimed files."""

    route: RouteSettings
    _: KW_ONLY
    pushers: dict[int, HttpPusher]
    stopper: Stopper
    metrics: AgentMetrics
    chunk_size: int

    def run(self, claimed: ClaimedFile, state: FileState, *, save: Callable[[FileState], None]) -> str:
        """Every action not yet done; returns the name after the last rename.

        Raises :class:`DeliveryError` on the first failure, :class:`StopRequested` on abort.
        """
        log = structlog.get_logger("sft_agent.actions")
        when = datetime.fromtimestamp(state.first_claimed_at, UTC)
        name = claimed.name
        for index, action in enumerate(self.route.actions):
            if isinstance(action, RenameAction):
                name = apply_rename(action, name, when=when)
                continue
            if index in state.done_actions:
                continue
            if isinstance(action, HttpAction):
                if state.digest is None:
                    state.digest = sha256_base64(
                        claimed.path,
                        size=claimed.size,
                        chunk_size=self.chunk_size,
                        should_stop=lambda: self.stopper.aborted,
                    )
                    save(state)
                pusher = self.pushers[index]
                result = pusher.push(claimed.path, name=name, size=claimed.size, digest=state.digest)
                state.http_status = result.status
                self.metrics.bytes_sent.labels(route=self.route.name).inc(result.bytes_sent)
                log.info(
                    "http_sent",
                    action=index,
                    sent_as=name,
                    url=pusher.where,
                    method=action.method,
                    status=result.status,
                    bytes=result.bytes_sent,
                    seconds=round(result.seconds, 3),
                    mb_per_s=round(result.bytes_sent / 1e6 / result.seconds, 1)
                    if result.seconds > 0
                    else None,
                )
            elif isinstance(action, CopyAction):
                target = action.destination / name
                try:
                    copy_atomically(claimed.path, target)
                except OSError as exc:
                    raise DeliveryError(
                        Reason.COPY_FAILED, f"copy to {action.destination} failed: {exc.strerror or exc}"
                    ) from exc
                log.info("copied", action=index, sent_as=name, destination=str(action.destination))
            state.done_actions.append(index)
            save(state)
        return name
