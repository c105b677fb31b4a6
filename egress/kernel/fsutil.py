"""Durable file writes: a reader sees the old content or the whole new one, never a part; long
writes flushed to disk as they go."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from egress.kernel.tempnames import temp_name


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` through a temp sibling: fsync, rename, fsync the folder."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class WritebackSyncer:
    """Flushes a file that is being written to disk in the background, every ``every`` bytes.

    A long write otherwise leaves every dirty page for the final fsync, which then waits
    for the whole file while nothing else happens. Flushing (``fdatasync``) on a thread of
    its own as the file grows lets the disk work while the writer decrypts and hashes the
    next chunks, and the final fsync finds little left: the worker's 512 MiB envelope
    decrypt → SFT went from 207 to 327 MB/s (medians of three rounds, ``bench/bench_worker.py``;
    ``bench/bench_sft_stages.py`` shows each stage's cost).

    No thread is started before ``every`` bytes were written, so small files cost nothing.
    A flush that fails (EIO, ENOSPC) is raised by the next :meth:`wrote` or by
    :meth:`close`: Linux reports a writeback error to one sync only, so the final fsync
    could otherwise succeed over lost data. :meth:`stop` must run before the descriptor is
    closed (a flush of a closed, perhaps reused, descriptor would sync another file).
    """

    def __init__(self, fd: int, *, every: int) -> None:
        self._fd = fd
        self._every = every
        self._unflushed = 0
        self._due = threading.Event()
        self._stopping = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def wrote(self, size: int) -> None:
        """``size`` more bytes were written; raises the error of an earlier background flush."""
        self._raise_error()
        self._unflushed += size
        if self._unflushed < self._every:
            return
        self._unflushed = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._flush_loop, name="writeback", daemon=True)
            self._thread.start()
        self._due.set()

    def close(self) -> None:
        """Stop the background flushes; raise the error of one that failed."""
        self.stop()
        self._raise_error()

    def stop(self) -> None:
        """Stop the background flushes and wait for one in progress (idempotent, never raises)."""
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _flush_loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._error = exc
                return
