"""SHA-256 of a file for ``Repr-Digest``, at claim time or ahead of time.

The digest must be in the headers, before the body, so a file is read twice: once to
hash it, once to send it. For large files the first read is taken off the critical
path: while a file waits out ``min_age`` (its size and mtime already unchanged across
two scans), a background thread hashes it in place. The result is kept for that exact
version — size, mtime and inode, checked before and after hashing — and used when the
file is claimed only if all three still match; otherwise the sending thread hashes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from sft_agent.errors import DeliveryError, Reason, StopRequested

# Below this size hashing at claim time costs a few milliseconds: not worth a thread's work.
PREHASH_MIN_BYTES = 4 * 1024 * 1024


def sha256_base64(path: Path, *, size: int, chunk_size: int, should_stop: Callable[[], bool]) -> str:
    """Base64 SHA-256 of the first ``size`` bytes of ``path``.

    Raises :class:`StopRequested` when ``should_stop()`` turns true, and
    :class:`DeliveryError` if the file cannot be read or is shorter than ``size``.
    """
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    remaining = size
    try:
        with path.open("rb", buffering=0) as handle:
            while remaining:
                if should_stop():
                    raise StopRequested
                count = handle.readinto(view[: min(chunk_size, remaining)])
                if not count:
                    raise DeliveryError(Reason.FILE_CHANGED, "file shrank while its digest was computed")
                digest.update(view[:count])
                remaining -= count
    except OSError as exc:
        raise DeliveryError(Reason.IO_ERROR, f"cannot read the file: {exc.strerror}") from exc
    return base64.b64encode(digest.digest()).decode("ascii")


Version = tuple[int, int, int]  # size, mtime_ns, inode


def version_of(path: Path) -> Version | None:
    """(size, mtime_ns, inode) of ``path``, or None if it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino


class Prehasher:
    """One background thread per route hashing files that are settling in the watched folder."""

    def __init__(self, folder: Path, *, chunk_size: int, should_stop: Callable[[], bool], name: str) -> None:
        self.folder = folder
        self.chunk_size = chunk_size
        self.should_stop = should_stop
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._done: dict[str, tuple[Version, str]] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"hash-{name}", daemon=True)

    def start(self) -> None:
        """Start the hashing thread."""
        self._thread.start()

    def stop(self) -> None:
        """Let the thread end (it also ends when ``should_stop`` turns true)."""
        self._queue.put(None)

    def offer(self, name: str, *, size: int) -> None:
        """Hash ``name`` soon, unless it is small, queued, or already hashed in this version."""
        if size < PREHASH_MIN_BYTES:
            return
        with self._lock:
            if name in self._pending:
                return
            done = self._done.get(name)
            if done is not None and done[0] == version_of(self.folder / name):
                return
            self._pending.add(name)
        self._queue.put(name)

    def take(self, name: str, version: Version) -> str | None:
        """The digest of ``name`` if it was computed for exactly ``version`` (and forget it)."""
        with self._lock:
            done = self._done.pop(name, None)
        if done is not None and done[0] == version:
            return done[1]
        return None

    def forget_except(self, names: set[str]) -> None:
        """Drop digests of files no longer in the folder."""
        with self._lock:
            for name in [n for n in self._done if n not in names]:
                del self._done[name]

    def _loop(self) -> None:
        while not self.should_stop():
            name = self._queue.get()
            if name is None:
                return
            try:
                self._hash(name)
            finally:
                with self._lock:
                    self._pending.discard(name)

    def _hash(self, name: str) -> None:
        path = self.folder / name
        before = version_of(path)
        if before is None:
            return
        with contextlib.suppress(DeliveryError, StopRequested):
            digest = sha256_base64(
                path, size=before[0], chunk_size=self.chunk_size, should_stop=self.should_stop
            )
            # Claimed meanwhile (renamed away), rewritten or touched: the digest is not kept.
            if version_of(path) == before:
                with self._lock:
                    self._done[name] = (before, digest)
