"""File-system primitives the agent builds on: atomic copies, no-replace renames, moves.

Everything that becomes visible under a final name is written to a hidden temporary
name in the same folder, fsynced, then renamed, so a reader never sees it partial
(atomic writes and temp names themselves are the kernel's: :mod:`egress.kernel.fsutil`,
:mod:`egress.kernel.tempnames`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from egress.kernel.fsutil import fsync_dir
from egress.kernel.tempnames import temp_name


def copy_atomically(source: Path, destination: Path) -> int:
    """Copy ``source`` to ``destination`` through a temp name (fsync, rename); returns the size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(temp_name(destination.name))
    try:
        shutil.copyfile(source, tmp)  # sendfile/copy_file_range on Linux: no bytes through Python
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(destination.parent)
    return size


def rename_no_replace(source: Path, destination: Path) -> bool:
    """Move ``source`` to ``destination`` unless something is there already (then: False).

    A hard link then an unlink: unlike ``rename``, ``link`` fails when the name exists.
    A crash between the two leaves both names on one inode, which :func:`same_file` tells.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except FileExistsError:
        return False
    os.unlink(source)
    return True


def same_file(a: Path, b: Path) -> bool:
    """True if both names exist and are one inode."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.<UTC time>[-n]`` if that is taken: never overwrite."""
    candidate = folder / name
    if not candidate.exists():
        return candidate
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        candidate = folder / (f"{name}.{stamp}" + (f"-{n}" if n else ""))
        if not candidate.exists():
            return candidate
    return folder / f"{name}.{stamp}-{secrets.token_hex(4)}"


def move(source: Path, destination: Path) -> None:
    """Rename, or copy then delete when ``destination`` is on another file system."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_atomically(source, destination)
        source.unlink()
    fsync_dir(destination.parent)
