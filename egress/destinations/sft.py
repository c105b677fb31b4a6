"""The SFT destination: files in folders of the volume shared with the agent.

A file is written under a hidden temporary name in its destination folder
(``.<name>.<random>.part``, which the agent never picks up), fsync'd, then renamed;
the directory is fsync'd so the rename survives a crash. Paths are confined to the
volume root: ``..``, absolute paths, hidden names and odd bytes are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from egress.destinations import Delivered
from egress.errors import DISK_SHORT, UNSAFE_KEY, PermanentError, RetryableError, StopRequested

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MIB = 1024 * 1024


class SftDestination:
    """Atomic, confined writes under ``root``."""

    def __init__(self, root: Path, *, free_space_margin_bytes: int = 64 * MIB, fsync: bool = True) -> None:
        self.root = Path(root)
        self._margin = free_space_margin_bytes
        self._fsync = fsync

    def resolve(self, relative: str) -> Path:
        """The absolute path of ``relative`` under the root, or ``PermanentError(unsafe_key)``."""
        problem = self._problem(relative)
        if problem:
            raise PermanentError(UNSAFE_KEY, f"{relative!r}: {problem}")
        path = self.root / relative
        root_real = os.path.realpath(self.root)
        # Resolve symlinks of whatever exists already: a link must not lead out of the root.
        if os.path.commonpath([root_real, os.path.realpath(path)]) != root_real:
            raise PermanentError(UNSAFE_KEY, f"{relative!r}: resolves outside the SFT root")
        return path

    @staticmethod
    def _problem(relative: str) -> str | None:
        if not relative:
            return "empty path"
        if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
            return "absolute path"
        if "\\" in relative:
            return "backslash in path"
        if _CONTROL.search(relative):
            return "control character in path"
        segments = relative.split("/")
        if any(segment == "" for segment in segments):
            return "empty path segment"
        if any(segment in {".", ".."} for segment in segments):
            return "'.' or '..' segment"
        if any(segment.startswith(".") for segment in segments):
            return "hidden name (the agent skips names starting with '.')"
        if segments[-1].endswith(".part"):
            return "name ends in .part (the agent treats it as temporary)"
        if any(len(segment.encode("utf-8")) > 255 for segment in segments):
            return "a path segment longer than 255 bytes"
        return None

    def ensure_space(self, size: int, *, path: Path) -> None:
        """Refuse (retryably) when the file system lacks ``size`` plus the margin."""
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        stats = os.statvfs(probe)
        free = stats.f_bavail * stats.f_frsize
        needed = size + self._margin
        if free < needed:
            raise RetryableError(
                DISK_SHORT,
                f"{free / MIB:.0f} MiB free under {self.root}, {needed / MIB:.0f} MiB needed "
                f"({size / MIB:.1f} MiB object + {self._margin / MIB:.0f} MiB margin)",
            )

    def write(
        self,
        relative: str,
        chunks: Iterable[bytes],
        *,
        expected_size: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Delivered:
        """Stream ``chunks`` into ``relative``; visible only once complete and synced."""
        final = self.resolve(relative)
        if expected_size is not None:
            self.ensure_space(expected_size, path=final)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.resolve(relative)  # the folders now exist: check again that none is a link out
        temp = final.parent / f".{final.name}.{secrets.token_hex(6)}.part"
        sha = hashlib.sha256()
        size = 0
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            with os.fdopen(fd, "wb", buffering=0) as handle:
                for chunk in chunks:
                    if cancel is not None and cancel.is_set():
                        raise StopRequested
                    handle.write(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                if self._fsync:
                    os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self._fsync:
            self._fsync_dir(final.parent)
        return Delivered(name=relative, size=size, sha256=sha.hexdigest())

    def write_bytes(self, relative: str, data: bytes) -> Delivered:
        """Write a small file (a manifest) the same atomic way."""
        return self.write(relative, iter([data]), expected_size=len(data))

    def sweep_temp_files(self, *, older_than: float | None = None) -> int:
        """Remove leftover ``.*.part`` files (a crashed writer's); returns how many."""
        if not self.root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for path in self.root.rglob(".*.part"):
            try:
                if older_than is None or now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
