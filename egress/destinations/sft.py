"""The SFT destination: files in folders of the volume shared with the SFT agent.

A file is streamed into a hidden temporary name in its destination folder
(``.<name>.<random>.part``, created with ``O_EXCL``), hashed while written, fsync'd,
then renamed over its final name, and the folder is fsync'd so the rename survives a
crash. The agent skips hidden and temporary names, so it never sees a partial file, and
nothing becomes visible before the chunk stream is exhausted without error. On any
failure — ``BaseException`` included — the temp file is removed; leftovers of a crashed
worker are swept at start-up (:meth:`SftDestination.sweep_temp_files`).

Every path is confined to the volume root: ``..``, absolute paths, empty segments,
control characters, backslashes, hidden names, names the agent treats as temporary, and
anything a symlink would lead out of the root are refused as ``unsafe_key``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from egress.destinations import Delivered, raise_if_cancelled
from egress.errors import (
    ACCESS_DENIED,
    DISK_SHORT,
    NAME_COLLISION,
    TRANSIENT,
    UNSAFE_KEY,
    EgressError,
    PermanentError,
    RetryableError,
)

__all__ = ["AGENT_SKIPPED_SUFFIXES", "SftDestination"]

log = structlog.get_logger("egress.destinations.sft")

MIB = 1024 * 1024
NAME_MAX = 255  # bytes per path segment (ext4, xfs, EFS)
PATH_MAX = 4096
FOLDER_MODE = 0o750
FILE_MODE = 0o640
# Suffixes the SFT agent treats as unfinished files and never sends (the same list as
# sft_agent.files.TEMP_SUFFIXES; a test keeps the two equal). A delivered file with one
# of them would sit on the volume forever, so such names are refused up front.
AGENT_SKIPPED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", "~")
_TEMP_NAME = re.compile(r"^\..+\.part$", re.DOTALL)
_TOKEN_BYTES = 6  # 12 hex characters: collisions between concurrent writers are negligible


class SftDestination:
    """Atomic, confined file writes under ``root`` (the volume shared with the SFT agent).

    ``free_space_margin_bytes`` is kept free on the volume beyond every object written
    (:meth:`ensure_space`); ``fsync=False`` skips the fsyncs (tests on tmpfs only: a
    crash could then leave a renamed but incomplete file).
    """

    def __init__(self, root: Path, *, free_space_margin_bytes: int = 64 * MIB, fsync: bool = True) -> None:
        if free_space_margin_bytes < 0:
            raise ValueError(f"free_space_margin_bytes must be >= 0, got {free_space_margin_bytes}")
        self.root = Path(root)
        self.free_space_margin_bytes = free_space_margin_bytes
        self.fsync = fsync

    # -- confinement -------------------------------------------------------------------
    def resolve(self, relative: str) -> Path:
        """The path of ``relative`` under the root; ``PermanentError(unsafe_key)`` if it is not safe.

        Refused: empty or absolute paths, empty, ``.`` or ``..`` segments, backslashes,
        NUL and other control characters, text that is not valid Unicode, segments longer
        than 255 bytes, hidden names (a leading ``.``: the agent skips them), names the
        agent treats as temporary (``.part`` and the like), and any path whose real path
        — following the symlinks that exist now — leaves the root.
        """
        problem = _problem(relative)
        if problem is not None:
            raise PermanentError(UNSAFE_KEY, f"{relative!r}: {problem}")
        path = self.root / relative
        root_real = os.path.realpath(self.root)
        # realpath follows every symlink that exists along the path (the rest is taken as
        # written): a link anywhere under the root must not lead out of it.
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real or real == root_real:
            raise PermanentError(UNSAFE_KEY, f"{relative!r}: resolves to {real}, outside the SFT root")
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
                DISK_SHORT,
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
    ) -> Delivered:
        """Stream ``chunks`` into ``relative``; the file appears only once complete and synced.

        With ``expected_size`` the free space is checked first. Raises whatever the stream
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
        temp = folder / _temp_name(final.name)
        sha = hashlib.sha256()
        size = 0
        with _translated(f"creating a temp file for {relative!r}"):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                for chunk in chunks:
                    raise_if_cancelled(cancel)
                    sha.update(chunk)
                    size += len(chunk)
                    with _translated(f"writing {relative!r}"):
                        _write_all(fd, chunk)
                # The stream ended cleanly: only now may the file become visible.
                if self.fsync:
                    with _translated(f"syncing {relative!r}"):
                        os.fsync(fd)
            finally:
                os.close(fd)
            with _translated(f"renaming {temp.name!r} to {relative!r}"):
                os.replace(temp, final)
        except BaseException:
            _close(chunks)
            _remove(temp)
            raise
        if self.fsync:
            self._sync_folder(folder)
        return Delivered(name=relative, size=size, sha256=sha.hexdigest())

    def write_bytes(self, relative: str, data: bytes) -> Delivered:
        """Write a small file (a manifest) the same atomic way as :meth:`write`."""
        return self.write(relative, iter([data]), expected_size=len(data))

    # -- start-up ----------------------------------------------------------------------
    def sweep_temp_files(self, older_than: float | None = None) -> int:
        """Remove leftover ``.*.part`` files under the root (a crashed writer's); return how many.

        With ``older_than`` (seconds) only files not modified for that long go, so a
        writer still running elsewhere keeps its file. Hidden folders (the agent's
        working folders) are not entered and symlinks are never followed.
        """
        if not self.root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for folder, folders, files in os.walk(self.root, followlinks=False):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in files:
                if not _TEMP_NAME.match(name):
                    continue
                path = Path(folder, name)
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    if older_than is not None and now - info.st_mtime < older_than:
                        continue
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    continue  # removed meanwhile (its writer finished or failed)
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
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not fsync folder after rename", folder=str(folder), error=str(exc))


def _problem(relative: str) -> str | None:
    """Why ``relative`` may not be written, or ``None``."""
    if not relative:
        return "empty path"
    if relative.startswith("/"):
        return "absolute path"
    if "\\" in relative:
        return "backslash in path"
    if "\x00" in relative:
        return "NUL character in path"
    if any(unicodedata.category(char) == "Cc" for char in relative):
        return "control character in path"
    try:
        encoded = relative.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode (lone surrogate)"
    if len(encoded) > PATH_MAX - 256:
        return "path too long"
    segments = relative.split("/")
    if any(segment == "" for segment in segments):
        return "empty path segment ('//' or a trailing '/')"
    if any(segment in {".", ".."} for segment in segments):
        return "'.' or '..' segment"
    if any(segment.startswith(".") for segment in segments):
        return "hidden name (the SFT agent skips names starting with '.')"
    if any(segment.endswith(AGENT_SKIPPED_SUFFIXES) for segment in segments):
        return (
            f"name ends in one of {' '.join(AGENT_SKIPPED_SUFFIXES)} (the SFT agent treats it as unfinished)"
        )
    if any(len(segment.encode("utf-8")) > NAME_MAX for segment in segments):
        return f"a path segment longer than {NAME_MAX} bytes"
    return None


def _temp_name(name: str) -> str:
    """``.<name>.<random>.part``, with ``name`` shortened so the whole stays within 255 bytes."""
    token = secrets.token_hex(_TOKEN_BYTES)
    room = NAME_MAX - len(f"..{token}.part")
    stem = name.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return f".{stem}.{token}.part"


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
        log.warning("could not remove temp file", path=str(path), error=str(exc))


def _close(chunks: Iterable[bytes]) -> None:
    """Close an abandoned stream (a generator) so its source, e.g. an open GET, is released now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - never replace the failure being handled
            log.warning("closing the abandoned stream failed", error=str(exc)[:200])


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
            raise RetryableError(DISK_SHORT, detail) from exc
        if exc.errno in _DENIED:
            raise PermanentError(ACCESS_DENIED, detail) from exc
        if exc.errno in _IN_THE_WAY:
            raise PermanentError(NAME_COLLISION, detail) from exc
        if exc.errno in _UNSAFE:
            raise PermanentError(UNSAFE_KEY, detail) from exc
        raise RetryableError(TRANSIENT, detail) from exc
