"""What the agent remembers about a file between attempts and across restarts.

One small JSON file per file being worked on (``<work folder>/state/<hash>.json``),
written atomically after every change: attempts made, when the next one is due, which
actions already succeeded (so a retry never sends twice what was delivered) and the
SHA-256 of the content. A state belongs to one version of a file: if the size or the
modification time changed, it is discarded and the new version starts afresh.

The folder is shared by every agent on the working folder, so attempts and the retry
schedule follow the file, whichever agent claims it. Only the agent holding a file's
claim writes its state; the others read it when they claim the file
(:meth:`StateStore.refresh`). Memory is updated before the disk: when the disk is full
the agent still knows what it did, and says so (``save`` raises, the caller logs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from egress.kernel.fsutil import write_atomically

STATE_VERSION = 1


@dataclass
class FileState:
    """The remembered progress of one version of one file (mutable; saved by :class:`StateStore`)."""

    name: str
    size: int
    mtime_ns: int
    first_claimed_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    done_actions: list[int] = field(default_factory=list)
    digest: str | None = None
    last_reason: str | None = None
    last_detail: str | None = None
    http_status: int | None = None  # of the last http action that succeeded
    updated_at: float = 0.0

    def matches(self, *, size: int, mtime_ns: int) -> bool:
        """True if this state is about the version of the file with that size and mtime."""
        return self.size == size and self.mtime_ns == mtime_ns

    def to_json(self) -> bytes:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FileState:
        raw: dict[str, Any] = json.loads(data)
        if raw.pop("version", None) != STATE_VERSION:
            raise ValueError("unknown state version")
        return cls(
            name=str(raw["name"]),
            size=int(raw["size"]),
            mtime_ns=int(raw["mtime_ns"]),
            first_claimed_at=float(raw["first_claimed_at"]),
            attempts=int(raw.get("attempts", 0)),
            next_attempt_at=float(raw.get("next_attempt_at", 0.0)),
            done_actions=[int(i) for i in raw.get("done_actions", [])],
            digest=raw.get("digest"),
            last_reason=raw.get("last_reason"),
            last_detail=raw.get("last_detail"),
            http_status=None if raw.get("http_status") is None else int(raw["http_status"]),
            updated_at=float(raw.get("updated_at", 0.0)),
        )


class StateStore:
    """The states of one route, in memory and on disk (the disk is the truth at start-up)."""

    def __init__(self, folder: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.clock = clock
        self._states: dict[str, FileState] = {}
        self._unsaved: set[str] = set()  # names whose last save reached memory only
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        # Names may be long or hold '/' (recursive routes): the file is named by a hash.
        return self.folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"

    def load(self) -> list[Path]:
        """Read every state file; returns the unreadable ones (left in place, ignored)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        bad: list[Path] = []
        with self._lock:
            for path in sorted(self.folder.glob("*.json")):
                try:
                    state = FileState.from_json(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError):
                    bad.append(path)
                    continue
                if path == self._path(state.name):
                    self._states[state.name] = state
                else:
                    bad.append(path)
        return bad

    def get(self, name: str) -> FileState | None:
        """The state remembered for ``name``, if any (the caller checks it still matches)."""
        with self._lock:
            return self._states.get(name)

    def save(self, state: FileState) -> None:
        """Remember ``state``: in memory, then atomically on disk (``OSError`` if the disk write fails)."""
        state.updated_at = max(self.clock(), state.updated_at)
        with self._lock:
            self._states[state.name] = state
            self._unsaved.add(state.name)
        write_atomically(self._path(state.name), state.to_json(), mode=0o600)
        with self._lock:
            if self._states.get(state.name) is state:
                self._unsaved.discard(state.name)

    def refresh(self, name: str) -> FileState | None:
        """The state of ``name`` as it is now on disk (another agent may have written it).

        Called once the file is claimed. What only memory holds (its save failed) wins
        over an older copy on disk.
        """
        try:
            on_disk: FileState | None = FileState.from_json(self._path(name).read_bytes())
        except FileNotFoundError:
            on_disk = None
        except (OSError, ValueError, KeyError, TypeError):
            return self.get(name)
        with self._lock:
            remembered = self._states.get(name)
            if (
                name in self._unsaved
                and remembered is not None
                and (on_disk is None or on_disk.updated_at <= remembered.updated_at)
            ):
                return remembered
            if on_disk is None or on_disk.name != name:
                self._states.pop(name, None)
                return None
            self._states[name] = on_disk
            self._unsaved.discard(name)
            return on_disk

    def drop(self, name: str) -> None:
        """Forget ``name`` (its file was delivered, moved to the error folder or is gone)."""
        with self._lock:
            self._states.pop(name, None)
            self._unsaved.discard(name)
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def names(self) -> list[str]:
        """Every name with a state."""
        with self._lock:
            return list(self._states)
