"""File-system primitives the agent builds on: atomic writes, no-replace renames, moves.

Everything that becomes visible under a final name is written to a hidden temporary
name in the same folder, fsynced, then renamed, so a reader never sees it partial.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

# Names a writer uses while a file is incomplete; the agent never picks them up.
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", "~")


def is_hidden_or_temp(name: str) -> bool:
    """True for names that are hidden (``.x``) or that writers use for unfinished files."""
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def temp_name(final: Path) -> Path:
    """A hidden temporary sibling of ``final``: ``.<name>.<random>.part``, at most 255 bytes.

    The name is cut by its UTF-8 bytes at a character boundary: a 255-byte name of
    multibyte characters must still get a temp name the file system accepts.
    """
    token = secrets.token_hex(4)
    room = 255 - len(f"..{token}.part")
    stem = final.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return final.with_name(f".{stem}.{token}.part")


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the whole new content."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def copy_atomically(source: Path, destination: Path) -> int:
    """Copy ``source`` to ``destination`` through a temp name (fsync, rename); returns the size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(destination)
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
