"""The error folder: parked files, the JSON report beside each, and how many there are."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from egress.kernel.fsutil import write_atomically
from egress.kernel.timefmt import iso_from_epoch
from sft_agent.errors import DeliveryError
from sft_agent.files import free_name, move
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
        "first_claimed_at": iso_from_epoch(state.first_claimed_at) if state else None,
        "failed_at": iso_from_epoch(failed_at),
        "actions_done": state.done_actions if state else [],
    }


class ErrorFolder:
    """One route's error folder: files parked with a report beside each, none lost to a full disk.

    The file moves even if its report cannot be written (disk full): the report waits in
    memory and :meth:`flush` writes it once there is room.
    """

    def __init__(self, folder: Path, *, log: Any) -> None:
        self.folder = folder
        self._log = log
        self._lock = threading.Lock()
        # Reports that could not be written: report path → (parked file, content).
        self._pending: dict[Path, tuple[Path, bytes]] = {}

    def park(self, name: str, path: Path, report: dict[str, Any]) -> Path:
        """Move ``path`` (the file ``name``) below the folder, never over another; returns where."""
        folder, _, base = name.rpartition("/")
        destination = free_name(self.folder / folder, base)
        destination.parent.mkdir(parents=True, exist_ok=True)
        report_path = report_path_for(destination)
        data = (json.dumps(report, indent=2) + "\n").encode()
        try:
            write_atomically(report_path, data)
            written = True
        except OSError as error:
            written = False
            with self._lock:
                self._pending[report_path] = (destination, data)
            self._log.error(
                "error_report_failed",
                file=name,
                path=str(report_path),
                error=error.strerror or str(error),
                detail="the file is parked all the same; the report is written once there is room",
            )
        try:
            move(path, destination)
        except BaseException:
            if written:
                with contextlib.suppress(OSError):
                    report_path.unlink()
            with self._lock:
                self._pending.pop(report_path, None)
            raise
        return destination

    def flush(self) -> None:
        """Write the reports that could not be written before (their files still parked)."""
        with self._lock:
            pending = list(self._pending.items())
        for report, (parked, data) in pending:
            if parked.exists():
                try:
                    write_atomically(report, data)
                except OSError:
                    continue
                self._log.info("error_report_written", file=parked.name, path=str(report), late=True)
            with self._lock:
                self._pending.pop(report, None)

    def count(self) -> int:
        """Files parked here (reports not counted)."""
        return count_error_files(self.folder)
