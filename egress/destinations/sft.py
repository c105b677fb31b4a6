"""The SFT destination: files in folders of the volume shared with the SFT agent.

A file is streamed into a hidden temporary name in its destination folder
(``.<name>.<owner>-<random>.part``, created with ``O_EXCL``), hashed while written and
flushed to disk in the background as it grows (:class:`~egress.kernel.fsutil.WritebackSyncer`),
fsync'd, then renamed over its final name, and the folder is fsync'd so the rename
survives a crash. The agent skips hidden and temporary names, so it never sees a partial
file, and nothing becomes visible before the chunk stream is exhausted without error.
Between the fsync and the rename a ``before_commit`` callback runs (the ledger records
the file there, so the agent can only ever see a file whose record exists). On any
failure — ``BaseException`` included — the temp file is removed.

``<owner>`` names the writing process, which holds a lock file under
``<root>/.egress/owners/`` for its whole life (:class:`OwnerRegistry`). Temp files of a
crashed writer are swept (:meth:`SftDestination.sweep_temp_files`) only once its lock
can be taken, so several tasks sharing one file system (EFS) never remove each other's
files in progress.

Every path is confined to the volume root: ``..``, absolute paths, empty segments,
control characters, backslashes, hidden names, names the agent treats as temporary, and
anything a symlink would lead out of the root are refused as ``unsafe_key``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from egress.destinations.base import Delivered, close_abandoned, raise_if_cancelled
from egress.errors import EgressError, PermanentError, Reason, RetryableError
from egress.kernel.fsutil import WritebackSyncer, fsync_dir
from egress.kernel.hashing import StreamHasher
from egress.kernel.tempnames import temp_name
from egress.names import AGENT_SKIPPED_SUFFIXES, sft_path_problem

__all__ = ["AGENT_SKIPPED_SUFFIXES", "OwnerRegistry", "SftDestination"]

log = structlog.get_logger("egress.destinations.sft")

MIB = 1024 * 1024
FOLDER_MODE = 0o750
FILE_MODE = 0o640
_TEMP_NAME = re.compile(r"^\..+\.part$", re.DOTALL)
# ".<name>.<owner>-<token>.part": the owner is the writing process (see OwnerRegistry).
_OWNED_TEMP_NAME = re.compile(r"^\..+\.([0-9a-f]{8})-[0-9a-f]{12}\.part$", re.DOTALL)
OWNERS_FOLDER = ".egress/owners"
_TOKEN_BYTES = 6  # 12 hex characters: collisions between concurrent writers are negligible
WRITEBACK_EVERY = 16 * MIB  # a file being written is flushed to disk in the background this often
HASH_THREAD_FROM = 8 * MIB  # files larger than this are hashed on a thread beside the writer


class SftDestination:
    """Atomic, confined file writes under ``root`` (the volume shared with the SFT agent).

    ``free_space_margin_bytes`` is kept free on the volume beyond every object written
    (:meth:`ensure_space`); ``fsync=False`` skips the fsyncs (tests on tmpfs only: a
    crash could then leave a renamed but incomplete file).
    """

    def __init__(
        self,
        root: Path,
        *,
        free_space_margin_bytes: int = 64 * MIB,
        fsync: bool = True,
        owners: OwnerRegistry | None = None,
    ) -> None:
        if free_space_margin_bytes < 0:
            raise ValueError(f"free_space_margin_bytes must be >= 0, got {free_space_margin_bytes}")
        self.root = Path(root)
        self.free_space_margin_bytes = free_space_margin_bytes
        self.fsync = fsync
        self.owners = owners or OwnerRegistry(self.root)

    # -- confinement -------------------------------------------------------------------
    def resolve(self, relative: str) -> Path:
        """The path of ``relative`` under the root; ``PermanentError(unsafe_key)`` if it is not safe.

        Refused: empty or absolute paths, empty, ``.`` or ``..`` segments, backslashes,
        NUL and other control characters, text that is not valid Unicode, segments longer
        than 255 bytes, hidden names (a leading ``.``: the agent skips them), names the
        agent treats as temporary (``.part`` and the like), and any path whose real path
        — following the symlinks that exist now — leaves the root.
        """
        problem = sft_path_problem(relative)
        if problem is not None:
            raise PermanentError(Reason.UNSAFE_KEY, f"{relative!r}: {problem}")
        path = self.root / relative
        root_real = os.path.realpath(self.root)
        # realpath follows every symlink that exists along the path (the rest is taken as
        # written): a link anywhere under the root must not lead out of it.
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real or real == root_real:
            raise PermanentError(Reason.UNSAFE_KEY, f"{relative!r}: resolves to {real}, outside the SFT root")
        return path

    # -- free space --------------------------------------------------------------------
    def ensure_space(self, size: int, *, path: Path) -> None:
        """Raise ``RetryableError(disk_short)`` unless the file system of ``path`` has ``size`` + margin free.

        ``path`` may not exist yet: its nearest existing folder is measured. Space
        available to unprivileged users is what counts (``f_bavail``).
        """
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        stats = os.statvfs(probe)
        free = stats.f_bavail * stats.f_frsize
        needed = size + self.free_space_margin_bytes
        if free < needed:
            raise RetryableError(
                Reason.DISK_SHORT,
                f"{free} bytes ({free / MIB:.1f} MiB) free on the file system of {probe}, "
                f"{needed} bytes needed ({size} object + {self.free_space_margin_bytes} margin)",
            )

    # -- writing -----------------------------------------------------------------------
    def write(
        self,
        relative: str,
        chunks: Iterable[bytes],
        *,
        expected_size: int | None = None,
        cancel: threading.Event | None = None,
        before_commit: Callable[[str, int, str], None] | None = None,
    ) -> Delivered:
        """Stream ``chunks`` into ``relative``; the file appears only once complete and synced.

        ``before_commit(temp_name, size, sha256_hex)`` runs after the fsync and before the
        rename; if it raises, nothing becomes visible. With ``expected_size`` the free
        space is checked first. Raises whatever the stream
        raises, :class:`~egress.errors.StopRequested` when ``cancel`` is set, or a
        translated file-system error (no space → retryable ``disk_short``, permission →
        ``access_denied``, a folder in the way → ``name_collision``); the temp file is
        removed in every case.
        """
        final = self.resolve(relative)
        raise_if_cancelled(cancel)
        if expected_size is not None:
            self.ensure_space(expected_size, path=final)
        folder = final.parent
        with _translated(f"creating folder for {relative!r}"):
            self._make_folders(folder)
        # The folders exist now: check again that none of them is a link out of the root.
        self.resolve(relative)
        temp = folder / temp_name(final.name, token=f"{self.owners.owner}-{secrets.token_hex(_TOKEN_BYTES)}")
        sha = StreamHasher(threshold=HASH_THREAD_FROM)
        size = 0
        with _translated(f"creating a temp file for {relative!r}"):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        # Flushed as it grows, so the disk works while the next chunks are decrypted and hashed.
        syncer = WritebackSyncer(fd, every=WRITEBACK_EVERY) if self.fsync else None
        try:
            try:
                for chunk in chunks:
                    raise_if_cancelled(cancel)
                    sha.update(chunk)
                    size += len(chunk)
                    with _translated(f"writing {relative!r}"):
                        _write_all(fd, chunk)
                        if syncer is not None:
                            syncer.wrote(len(chunk))
                # The stream ended cleanly: only now may the file become visible.
                if syncer is not None:
                    with _translated(f"syncing {relative!r}"):
                        syncer.close()
                        os.fsync(fd)
            finally:
                if syncer is not None:
                    syncer.stop()  # before the descriptor is closed
                os.close(fd)
            digest = sha.hexdigest()
            if before_commit is not None:
                before_commit(temp.name, size, digest)
            with _translated(f"renaming {temp.name!r} to {relative!r}"):
                os.replace(temp, final)
        except BaseException:
            sha.stop()
            close_abandoned(chunks)
            _remove(temp)
            raise
        if self.fsync:
            self._sync_folder(folder)
        return Delivered(name=relative, size=size, sha256=digest)

    def write_bytes(
        self, relative: str, data: bytes, *, before_commit: Callable[[str, int, str], None] | None = None
    ) -> Delivered:
        """Write a small file (a manifest) the same atomic way as :meth:`write`."""
        return self.write(relative, iter([data]), expected_size=len(data), before_commit=before_commit)

    def commit_temp(self, relative: str, temp_name: str) -> bool:
        """Finish a write a crashed claim recorded but did not rename: True if ``temp_name`` was there.

        Only a temp file of ``relative``'s own folder, named as this module names them,
        is renamed.
        """
        final = self.resolve(relative)
        if "/" in temp_name or not _TEMP_NAME.match(temp_name):
            return False
        temp = final.parent / temp_name
        try:
            os.rename(temp, final)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("recorded_write_not_finished", path=relative, error=str(exc))
            return False
        if self.fsync:
            self._sync_folder(final.parent)
        return True

    def exists(self, relative: str) -> bool:
        """True if ``relative`` is a regular file now."""
        try:
            return stat.S_ISREG(self.resolve(relative).lstat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    # -- start-up ----------------------------------------------------------------------
    def sweep_temp_files(self, folder: str = "", *, legacy_older_than: float = 3600.0) -> int:
        """Remove temp files of writers that are gone, under ``folder`` (default: the root).

        A temp file named by a writer process (``.<name>.<owner>-<token>.part``) goes once
        that owner's lock can be taken: the process is dead, whichever task it ran in.
        Other temp names (older versions) go once not modified for ``legacy_older_than``
        seconds. Hidden folders (the agent's working folders) are not entered and symlinks
        are never followed. Returns how many files were removed.
        """
        top = self.root / folder if folder else self.root
        if not top.is_dir():
            return 0
        removed = 0
        now = time.time()
        gone: dict[str, bool] = {}
        for current, folders, files in os.walk(top, followlinks=False):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in files:
                if not _TEMP_NAME.match(name):
                    continue
                path = Path(current, name)
                owned = _OWNED_TEMP_NAME.match(name)
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    if owned:
                        owner = owned.group(1)
                        if owner not in gone:
                            gone[owner] = self.owners.is_gone(owner)
                        if not gone[owner]:
                            continue
                    elif now - info.st_mtime < legacy_older_than:
                        continue
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    continue  # removed meanwhile (its writer finished or failed)
        for owner, is_gone in gone.items():
            if is_gone:
                self.owners.forget(owner)
        return removed

    # -- helpers -----------------------------------------------------------------------
    def _make_folders(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents with mode 0o750.

        ``os.makedirs`` applies its mode to the last folder only (Python ≥ 3.7), so each
        level is created here.
        """
        missing: list[Path] = []
        probe = folder
        while not probe.is_dir():
            missing.append(probe)
            if probe == probe.parent:
                break
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=FOLDER_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise  # a file where a folder is needed: translated by the caller
                # else another writer created it meanwhile

    def _sync_folder(self, folder: Path) -> None:
        """fsync the folder so the rename is durable.

        The file is complete and visible by now; a failure here is logged rather than
        raised, since redelivering it would not make it more durable.
        """
        try:
            fsync_dir(folder)
        except OSError as exc:
            log.warning("folder_fsync_failed", folder=str(folder), error=str(exc))


class OwnerRegistry:
    """Which writer processes are alive: each holds an flock on its own lock file for life.

    ``<root>/.egress/owners/<owner>.lock``: the lock goes with the process (on NFS, EFS
    included, when the client's lease lapses), so a lock that can be taken names a writer
    that is gone. The folder is hidden: the agent never looks into it.
    """

    def __init__(self, root: Path, *, owner: str | None = None) -> None:
        self.root = Path(root)
        self.owner = owner or secrets.token_hex(4)
        self.folder = self.root / OWNERS_FOLDER
        self._fd: int | None = None

    def hold(self) -> None:
        """Create and lock this process's lock file (idempotent)."""
        if self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{self.owner}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Unlock and remove this process's lock file."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / f"{self.owner}.lock").unlink()
        os.close(self._fd)
        self._fd = None

    def is_gone(self, owner: str) -> bool:
        """True if ``owner``'s lock file is missing or can be locked (its process is gone)."""
        if owner == self.owner:
            return False
        try:
            fd = os.open(self.folder / f"{owner}.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: the owner is alive
        finally:
            os.close(fd)  # closing releases a lock we took
        return True

    def forget(self, owner: str) -> None:
        """Remove the lock file of an owner that is gone."""
        if owner != self.owner:
            with contextlib.suppress(OSError):
                (self.folder / f"{owner}.lock").unlink()


def _write_all(fd: int, chunk: bytes) -> None:
    """os.write may write less than asked (signals, pipes, some network file systems)."""
    view = memoryview(chunk)
    while len(view):
        written = os.write(fd, view)
        view = view[written:]


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        # Never replace the failure being handled; the start-up sweep gets it later.
        log.warning("temp_file_remove_failed", path=str(path), error=str(exc))


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_IN_THE_WAY = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY})
_UNSAFE = frozenset({errno.ELOOP, errno.ENAMETOOLONG})


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Translate an ``OSError`` of our own file operations into the two error families."""
    try:
        yield
    except EgressError:
        raise
    except OSError as exc:
        detail = f"{doing}: {exc.strerror or exc}"
        if exc.errno in _NO_SPACE:
            raise RetryableError(Reason.DISK_SHORT, detail) from exc
        if exc.errno in _DENIED:
            raise PermanentError(Reason.ACCESS_DENIED, detail) from exc
        if exc.errno in _IN_THE_WAY:
            raise PermanentError(Reason.NAME_COLLISION, detail) from exc
        if exc.errno in _UNSAFE:
            raise PermanentError(Reason.UNSAFE_KEY, detail) from exc
        raise RetryableError(Reason.TRANSIENT, detail) from exc
