"""``WritebackSyncer``: background flushes of a long write; no thread for small files; errors surface."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from egress.kernel.fsutil import WritebackSyncer


def _writeback_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "writeback")


def test_a_small_file_starts_no_thread(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "small", os.O_WRONLY | os.O_CREAT)
    try:
        syncer = WritebackSyncer(fd, every=1024)
        os.write(fd, b"x" * 1000)
        syncer.wrote(1000)
        assert _writeback_threads() == 0
        syncer.close()
    finally:
        os.close(fd)


def test_a_long_write_is_flushed_as_it_goes_and_ends_whole(tmp_path: Path) -> None:
    path = tmp_path / "long"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    chunks = [bytes([i]) * 4096 for i in range(64)]
    try:
        syncer = WritebackSyncer(fd, every=16 * 1024)
        for chunk in chunks:
            os.write(fd, chunk)
            syncer.wrote(len(chunk))
        assert _writeback_threads() == 1
        syncer.close()
        assert _writeback_threads() == 0
        syncer.stop()  # idempotent
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)


def test_a_failed_background_flush_is_raised_not_lost() -> None:
    # fdatasync on a pipe fails (EINVAL): the stand-in for a disk's EIO at writeback.
    read_end, write_end = os.pipe()
    try:
        syncer = WritebackSyncer(write_end, every=10)
        syncer.wrote(10)  # the flush runs on its thread, and fails there
        deadline = time.monotonic() + 5
        with pytest.raises(OSError):  # the writer hears of it at a next chunk
            while time.monotonic() < deadline:
                syncer.wrote(0)
                time.sleep(0.01)
        with pytest.raises(OSError):  # and at the end, before its final fsync
            syncer.close()
        syncer.stop()  # never raises
    finally:
        os.close(read_end)
        os.close(write_end)
    assert _writeback_threads() == 0
