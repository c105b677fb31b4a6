"""Ready detection: which files in a watched folder are complete and may be claimed.

A file is ready when it is a regular file (not a link, not a folder), its name is
neither hidden nor a temp name (:func:`egress.kernel.tempnames.is_hidden_or_temp`), it matches
the route's ``filename_regex`` (whole name), and its size and modification time have not
changed for ``min_age`` — measured on this agent's monotonic clock from the first scan
that saw them, so a file copied in with an old mtime still waits ``min_age``.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from egress.kernel.tempnames import is_hidden_or_temp


@dataclass(frozen=True)
class Candidate:
    """A file seen by a scan: its name relative to the folder, size and mtime."""

    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanResult:
    """One scan: the ready files (oldest first) and what is waiting overall."""

    ready: tuple[Candidate, ...]
    waiting: int
    oldest_mtime: float | None
    skipped_folders: tuple[str, ...] = ()
    settling: tuple[Candidate, ...] = ()  # unchanged since an earlier scan, not yet min_age
    names: frozenset[str] = frozenset()


@dataclass(eq=False)
class ReadyScanner:
    """Scans one folder repeatedly, remembering how long each file has looked the same."""

    folder: Path
    _: KW_ONLY
    filename_regex: re.Pattern[str]
    min_age: float
    recursive: bool = False
    clock: Callable[[], float] = time.monotonic
    # name → (size, mtime_ns, first time this agent saw exactly that size and mtime)
    _seen: dict[str, tuple[int, int, float]] = field(default_factory=dict, init=False, repr=False)

    def _entries(self, folder: Path, prefix: str, skipped: list[str]) -> Iterator[tuple[str, os.stat_result]]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if is_hidden_or_temp(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            name = prefix + entry.name
            if stat.S_ISDIR(info.st_mode):
                if self.recursive:
                    yield from self._entries(Path(entry.path), name + "/", skipped)
                else:
                    skipped.append(name)
            elif stat.S_ISREG(info.st_mode) and self.filename_regex.fullmatch(entry.name):
                yield name, info

    def scan(self) -> ScanResult:
        """List the folder once and say which files are ready now."""
        now = self.clock()
        ready: list[tuple[int, Candidate]] = []
        settling: list[Candidate] = []
        seen: dict[str, tuple[int, int, float]] = {}
        skipped: list[str] = []
        oldest: float | None = None
        for name, info in self._entries(self.folder, "", skipped):
            before = self._seen.get(name)
            if before is not None and before[0] == info.st_size and before[1] == info.st_mtime_ns:
                since = before[2]
            else:
                since = now
            seen[name] = (info.st_size, info.st_mtime_ns, since)
            oldest = info.st_mtime if oldest is None else min(oldest, info.st_mtime)
            if now - since >= self.min_age:
                ready.append((info.st_mtime_ns, Candidate(name, info.st_size, info.st_mtime_ns)))
            elif before is not None and since < now:
                settling.append(Candidate(name, info.st_size, info.st_mtime_ns))
        self._seen = seen
        ready.sort(key=lambda item: (item[0], item[1].name))
        return ScanResult(
            ready=tuple(c for _, c in ready),
            waiting=len(seen),
            oldest_mtime=oldest,
            skipped_folders=tuple(skipped),
            settling=tuple(settling),
            names=frozenset(seen),
        )

    def forget(self, name: str) -> None:
        """Start the stability clock of ``name`` again (it changed after it looked ready)."""
        self._seen.pop(name, None)
