"""The error folder: parked files, the JSON report beside each, and how many there are."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sft_agent.errors import DeliveryError
from sft_agent.settings import RouteSettings
from sft_agent.state import FileState

ERROR_SUFFIX = ".error.json"


def count_error_files(folder: Path) -> int:
    """Files parked in an error folder (their ``.error.json`` companions not counted)."""
    total = 0
    for _, _, files in os.walk(folder):
        total += sum(1 for f in files if not f.endswith(ERROR_SUFFIX) and not f.startswith("."))
    return total


def report_path_for(parked: Path) -> Path:
    """Where the report of the file parked at ``parked`` goes: beside it, ``<name>.error.json``."""
    return parked.with_name(parked.name + ERROR_SUFFIX)


def error_report(
    name: str, *, route: RouteSettings, exc: DeliveryError, state: FileState | None, failed_at: float
) -> dict[str, Any]:
    """Why ``name`` was parked: the reason, the attempts and what was done, as JSON fields."""
    return {
        "file": name,
        "route": route.name,
        "reason": exc.reason,
        "detail": exc.detail,
        "http_status": exc.status,
        "attempts": state.attempts if state else 0,
        "max_attempts": route.retry.max_attempts,
        "size": state.size if state else None,
        "sha256": state.digest if state else None,
        "first_claimed_at": _iso(state.first_claimed_at) if state else None,
        "failed_at": _iso(failed_at),
        "actions_done": state.done_actions if state else [],
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
