"""Claiming files: an atomic rename out of the watched folder into the route's working folder.

Layout of a working folder (by default ``<source>/.sft-agent``, hidden, so no scan sees it)::

    lock            held (flock) while an agent runs the route: one agent per working folder
    claimed/<name>  files being sent right now
    state/          what is remembered between attempts (:mod:`sft_agent.state`)

A claimed file keeps its name; whatever is in ``claimed/`` when an agent starts was in
flight when the last one stopped, and is put back into the watched folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sft_agent.files import fsync_dir, rename_no_replace, same_file


class ClaimError(RuntimeError):
    """The working folder cannot be used (another agent holds it, another file system, …)."""


@dataclass(frozen=True)
class ClaimedFile:
    """A file this agent owns until it is put back, delivered or moved to the error folder."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    inode: int = 0


class ClaimFolder:
    """The working folder of one route."""

    def __init__(self, *, source: Path, work_folder: Path) -> None:
        self.source = source
        self.work_folder = work_folder
        self.claimed = work_folder / "claimed"
        self.state_folder = work_folder / "state"
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the folders, take the lock and check claims can be atomic renames."""
        for folder in (self.source, self.claimed, self.state_folder):
            folder.mkdir(parents=True, exist_ok=True)
        if os.stat(self.source).st_dev != os.stat(self.claimed).st_dev:
            raise ClaimError(
                f"work_folder {self.work_folder} is not on the file system of {self.source}: "
                "claims must be atomic renames"
            )
        fd = os.open(self.work_folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ClaimError(
                f"work_folder {self.work_folder} is in use by another running agent (lock held); "
                "give each agent its own work_folder"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def claim(self, name: str) -> ClaimedFile | None:
        """Take ``name`` out of the watched folder; None if it is gone (another claimer, deleted)."""
        source = self.source / name
        target = self.claimed / name
        if "/" in name:
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return None
        stat = os.stat(target)
        return ClaimedFile(
            name=name, path=target, size=stat.st_size, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino
        )

    def put_back(self, claimed: ClaimedFile) -> bool:
        """Return a claimed file to the watched folder; False if a newer file took its name."""
        return self._put_back(claimed.path, self.source / claimed.name)

    def _put_back(self, path: Path, destination: Path) -> bool:
        if not rename_no_replace(path, destination):
            if not same_file(path, destination):
                return False
            # A crash between link and unlink left both names: finish the move.
            path.unlink()
        self.prune(path.parent)
        with contextlib.suppress(OSError):
            fsync_dir(destination.parent)
        return True

    def in_flight(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every file in ``claimed/`` (at start: what the last run left)."""
        for root, dirs, files in os.walk(self.claimed):
            dirs.sort()
            for file_name in sorted(files):
                path = Path(root) / file_name
                yield path.relative_to(self.claimed).as_posix(), path

    def put_back_path(self, name: str, path: Path) -> bool:
        """Put back a file found in ``claimed/`` at start; False if the name is taken."""
        return self._put_back(path, self.source / name)

    def prune(self, folder: Path) -> None:
        """Remove empty sub-folders of ``claimed/`` left by recursive routes."""
        while folder != self.claimed and self.claimed in folder.parents:
            with contextlib.suppress(OSError):
                folder.rmdir()
            folder = folder.parent
