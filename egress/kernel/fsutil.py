"""Durable file writes: a reader sees the old content or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
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
