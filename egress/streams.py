"""Byte streams as iterators of chunks, and the small adapters around them.

A stream is an ``Iterator[bytes]``; a transform takes one and returns one. Memory in
flight is the chunk size times the number of chunks a stage holds, never an object.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

Chunks = Iterator[bytes]


class ChunkReader(io.RawIOBase):
    """A read-only file object over a chunk iterator (for libraries that want ``read``)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self._offset = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes, from the current chunk only (a short read, as ``readinto``).

        Overridden for the copies: a slice of the current chunk (or the chunk itself) rather
        than a buffer of ``size`` bytes filled and copied again.
        """
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        while self._offset >= len(self._buffer):
            if self._eof:
                return b""
            try:
                self._buffer = next(self._chunks)
                self._offset = 0
            except StopIteration:
                self._eof = True
                self._buffer = b""
                return b""
        start = self._offset
        if start == 0 and size >= len(self._buffer):
            piece = bytes(self._buffer)
        else:
            piece = bytes(self._buffer[start : start + size])
        self._offset += len(piece)
        return piece

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._offset >= len(self._buffer):
            if self._eof:
                return 0
            try:
                self._buffer = next(self._chunks)
                self._offset = 0
            except StopIteration:
                self._eof = True
                return 0
        size = min(len(buffer), len(self._buffer) - self._offset)
        buffer[:size] = self._buffer[self._offset : self._offset + size]
        self._offset += size
        return size

    def tell(self) -> int:  # ESDK asks; position is not meaningful for a pipe
        return 0


def rechunk(chunks: Iterable[bytes], *, size: int) -> Chunks:
    """Yield pieces of exactly ``size`` bytes (the last may be shorter)."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == size:
            yield chunk  # already the right size: no copy
            continue
        pending += chunk
        while len(pending) >= size:
            with memoryview(pending) as view:
                piece = bytes(view[:size])  # one copy (a bytearray slice would be two)
            del pending[:size]
            yield piece
    if pending:
        yield bytes(pending)
