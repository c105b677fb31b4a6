"""Claiming files: an atomic rename out of the watched folder into this agent's own folder.

Several agents may watch one folder (tasks sharing an EFS volume). Layout of a route's
working folder (by default ``<source>/.sft-agent``, hidden, so no scan sees it)::

    <agent-id>/lock             held (flock) for the life of the agent process
    <agent-id>/claimed/<name>   files that agent is working on right now
    state/                      what is remembered between attempts, shared by every agent
                                (:mod:`sft_agent.state`; only the claim holder writes a file's state)
    claimed/, lock              the layout of earlier versions (one agent per working folder)

``<agent-id>`` is ``<host>-<pid>-<random>``, one per process. A claim is a rename from the
watched folder: of two agents racing for a file one gets ENOENT. An agent folder is
created under a hidden name, locked, then renamed into place, so a visible agent folder
whose lock can be taken belongs to a process that is gone (on NFSv4/EFS a dead client's
lock lapses with its lease). A live agent takes such folders over: it puts their claimed
files back into the watched folder and removes them (:meth:`ClaimFolder.gone_agents`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from egress.kernel.fsutil import fsync_dir
from sft_agent.files import rename_no_replace, same_file

LOCK = "lock"
CLAIMED = "claimed"
STATE = "state"
# Names in a working folder that are not agent folders.
_RESERVED = frozenset({LOCK, CLAIMED, STATE})
_CREATING = ".creating-"
_CREATING_MIN_AGE = 300.0
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def new_agent_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in a folder listing and in logs."""
    host = _HOST_UNSAFE.sub("-", socket.gethostname()).strip(".-")[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ClaimError(RuntimeError):
    """The working folder cannot be used (another file system, not writable, …)."""


@dataclass(frozen=True)
class ClaimedFile:
    """A file this agent owns until it is put back, delivered or moved to the error folder."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    inode: int = 0


class GoneAgent:
    """The folder of an agent that is gone, locked by us while we empty it."""

    def __init__(self, *, agent_id: str, folder: Path, claimed: Path, lock_fd: int, legacy: bool) -> None:
        self.agent_id = agent_id
        self.folder = folder
        self.claimed = claimed
        self.legacy = legacy
        self._lock_fd: int | None = lock_fd

    def files(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every file it had claimed."""
        yield from _walk_files(self.claimed)

    def remove(self) -> bool:
        """Remove the emptied folder and release it; False (and kept) if files are left in it."""
        try:
            _remove_empty_tree(self.claimed)
            if self.claimed.exists():
                return False
            if not self.legacy:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / LOCK).unlink()
                with contextlib.suppress(FileNotFoundError):
                    self.folder.rmdir()
            return True
        except OSError:
            return False
        finally:
            self.release()

    def release(self) -> None:
        """Let go of its lock (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class ClaimFolder:
    """The working folder of one route, as seen by one agent process."""

    def __init__(self, *, source: Path, work_folder: Path, agent_id: str) -> None:
        self.source = source
        self.work_folder = work_folder
        self.agent_id = agent_id
        self.agent_folder = work_folder / agent_id
        self.claimed = self.agent_folder / CLAIMED
        self.state_folder = work_folder / STATE
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create this agent's folder (locked before it becomes visible) and check claims can be renames."""
        for folder in (self.source, self.work_folder, self.state_folder):
            folder.mkdir(parents=True, exist_ok=True)
        if os.stat(self.source).st_dev != os.stat(self.work_folder).st_dev:
            raise ClaimError(
                f"work_folder {self.work_folder} is not on the file system of {self.source}: "
                "claims must be atomic renames"
            )
        creating = self.work_folder / f"{_CREATING}{self.agent_id}"
        (creating / CLAIMED).mkdir(parents=True)
        fd = os.open(creating / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ClaimError(f"cannot lock {creating / LOCK}: {exc.strerror}") from exc
        with contextlib.suppress(OSError):  # informative only: a full disk must not stop the agent
            os.write(fd, f"{self.agent_id} pid {os.getpid()} started {time.time():.0f}\n".encode())
        try:
            os.rename(creating, self.agent_folder)
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            fsync_dir(self.work_folder)
        self._lock_fd = fd

    def close(self) -> None:
        """Remove this agent's folder if nothing is claimed in it, and release the lock.

        A folder left behind (files still claimed after an unclean stop) is taken over
        by the next agent that finds its lock free.
        """
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            _remove_empty_tree(self.claimed)
            if not self.claimed.exists():
                (self.agent_folder / LOCK).unlink()
                self.agent_folder.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    def claim(self, name: str) -> ClaimedFile | None:
        """Take ``name`` out of the watched folder; None if it is gone (another claimer, deleted).

        Raises ``OSError`` if the rename fails otherwise (the file then stays where it was).
        """
        source = self.source / name
        target = self.claimed / name
        if os.path.lexists(target):
            return None  # a leftover of the same name: the sweep puts it back first
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
        return self.put_back_path(claimed.name, claimed.path)

    def put_back_path(self, name: str, path: Path) -> bool:
        """Move ``path`` (a claimed file, ours or a gone agent's) back as ``name``; False if the name is taken.

        Raises ``FileNotFoundError`` if ``path`` is gone (someone else moved it).
        """
        destination = self.source / name
        if not rename_no_replace(path, destination):
            if not same_file(path, destination):
                return False
            # A crash between link and unlink left both names: finish the move.
            path.unlink()
        _prune(path.parent, stop_at=path.parents[len(Path(name).parts) - 1])
        with contextlib.suppress(OSError):
            fsync_dir(destination.parent)
        return True

    def in_flight(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every file in this agent's ``claimed/``."""
        yield from _walk_files(self.claimed)

    def prune(self, folder: Path) -> None:
        """Remove empty sub-folders of ``claimed/`` left by recursive routes."""
        _prune(folder, stop_at=self.claimed)

    def claimed_anywhere(self, name: str) -> bool:
        """True if ``name`` is claimed by any agent on this working folder (this one included)."""
        if os.path.lexists(self.work_folder / CLAIMED / name):
            return True
        return any(os.path.lexists(folder / CLAIMED / name) for _, folder in self._agent_folders())

    def gone_agents(self, *, min_age: float) -> Iterator[GoneAgent]:
        """Folders of agents that are gone (lock free, untouched for ``min_age`` seconds), locked by us.

        Also the single-agent layout of earlier versions (``<work_folder>/claimed``), once
        its ``lock`` is free. The caller puts the files back, then calls ``remove()``.
        """
        legacy = self.work_folder / CLAIMED
        if legacy.is_dir():
            fd = _try_lock(self.work_folder / LOCK, create=True)
            if fd is not None:
                yield GoneAgent(
                    agent_id="(single-agent layout)",
                    folder=self.work_folder,
                    claimed=legacy,
                    lock_fd=fd,
                    legacy=True,
                )
        now = time.time()
        for agent_id, folder in self._agent_folders(include_creating=True):
            if folder == self.agent_folder:
                continue
            # A visible agent folder was locked before it was renamed into place; one being
            # created may not have its lock yet, so only an old one is a crash's leftover.
            oldest = max(min_age, _CREATING_MIN_AGE) if agent_id.startswith(_CREATING) else min_age
            try:
                if now - folder.stat().st_mtime < oldest:
                    continue
            except FileNotFoundError:
                continue
            fd = _try_lock(folder / LOCK, create=False)
            if fd is None:
                if agent_id.startswith(_CREATING) and not (folder / LOCK).exists():
                    # An agent died between mkdir and creating its lock.
                    with contextlib.suppress(OSError):
                        _remove_empty_tree(folder / CLAIMED)
                        folder.rmdir()
                continue
            if not folder.is_dir():  # removed by another agent meanwhile
                os.close(fd)
                continue
            yield GoneAgent(
                agent_id=agent_id, folder=folder, claimed=folder / CLAIMED, lock_fd=fd, legacy=False
            )

    def _agent_folders(self, *, include_creating: bool = False) -> Iterator[tuple[str, Path]]:
        try:
            entries = list(os.scandir(self.work_folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name in _RESERVED or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(".") and not (include_creating and entry.name.startswith(_CREATING)):
                continue
            yield entry.name, Path(entry.path)


def _try_lock(path: Path, *, create: bool) -> int | None:
    """An fd holding ``path``'s flock, or None if another process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _walk_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for file_name in sorted(files):
            path = Path(root) / file_name
            yield path.relative_to(folder).as_posix(), path


def _prune(folder: Path, *, stop_at: Path) -> None:
    while folder != stop_at and stop_at in folder.parents:
        with contextlib.suppress(OSError):
            folder.rmdir()
        folder = folder.parent


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` and its sub-folders if they hold no file (missing is fine)."""
    if not folder.is_dir():
        return
    for root, _, _ in sorted(os.walk(folder), key=lambda item: -len(item[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)
