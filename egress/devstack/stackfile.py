"""Where a running ``egress local up`` is: ``<state-dir>/stack.json``, for the local commands to find it.

``up`` writes the file (atomically) once everything answers and removes it at teardown;
``egress local publish`` without an endpoint reads it, from ``./.local-stack`` or the
checkout's, and uses the stack only while the ``up`` that wrote it still runs and its
endpoint still answers — a file left by a killed ``up`` is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from egress.kernel.fsutil import write_atomically

STACK_FILE = "stack.json"
DEFAULT_STATE_DIR = Path(".local-stack")
# The repository this module is in (egress/devstack/stackfile.py): where `make run` runs.
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunningStack:
    """A live ``egress local up``: where its AWS endpoint is, and everything else it recorded."""

    path: Path
    endpoint_url: str
    region: str
    facts: Mapping[str, Any]


def write_stack_file(state_dir: Path, facts: Mapping[str, Any]) -> Path:
    """Record ``facts`` (``endpoint_url``, ``region``, ``pid``, resources, folders) for the local commands."""
    path = state_dir / STACK_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(dict(facts), indent=2))
    return path


def remove_stack_file(state_dir: Path) -> None:
    """Forget the stack (teardown, or a stale file found at start)."""
    with contextlib.suppress(OSError):
        (state_dir / STACK_FILE).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though probably not ours — the endpoint decides
    return True


def _answers(endpoint_url: str, *, timeout: float = 1.0) -> bool:
    parts = urlsplit(endpoint_url)
    if not parts.hostname:
        return False
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def read_running_stack(path: Path) -> RunningStack | None:
    """The stack ``path`` describes, if its ``up`` still runs and its endpoint answers; else None."""
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        endpoint, region, pid = str(facts["endpoint_url"]), str(facts["region"]), int(facts["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid) or not _answers(endpoint):
        return None
    return RunningStack(path=path, endpoint_url=endpoint, region=region, facts=facts)


def default_state_dirs() -> list[Path]:
    """Where the local commands look for a running stack: ``./.local-stack``, then the checkout's."""
    found: list[Path] = []
    for folder in (Path.cwd() / DEFAULT_STATE_DIR, CHECKOUT / DEFAULT_STATE_DIR):
        if folder.resolve() not in [f.resolve() for f in found]:
            found.append(folder)
    return found


def find_running_stack(state_dirs: Sequence[Path] | None = None) -> RunningStack | None:
    """The first live stack recorded in ``state_dirs`` (default :func:`default_state_dirs`)."""
    for folder in default_state_dirs() if state_dirs is None else state_dirs:
        stack = read_running_stack(folder / STACK_FILE)
        if stack is not None:
            return stack
    return None
