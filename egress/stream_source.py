"""One object's body as its route delivers it: GET → decrypt → compress, within the worker's byte budget.

Also what format detection may ask of a source object beyond its metadata and stream
(:class:`SourceProbe`: its first bytes, its S3 Encryption Client instruction file), for
decrypt routes and re-wrap routes alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from egress.errors import StopRequested
from egress.ranged import SINGLE_GET, GetConfig
from egress.routing import Route
from egress.sources import OpenedObject, SourceObject, object_exists, open_object, read_head
from egress.streams import Chunks
from egress.transforms.compress import compress
from egress.transforms.decrypt import Decryptor
from egress.transforms.formats import HEAD_BYTES, INSTRUCTION_SUFFIX

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ByteBudget", "SourceProbe", "Stream", "StreamSource", "guard"]


class ByteBudget:
    """A counting semaphore in bytes: what all streams in flight may hold together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._cond = threading.Condition()

    def acquire(self, amount: int, *, cancel: threading.Event) -> int:
        """Wait for ``amount`` bytes (clamped to the total); returns what was taken."""
        amount = max(0, min(amount, self.total))
        with self._cond:
            while self._free < amount:
                if cancel.is_set():
                    raise StopRequested
                self._cond.wait(timeout=0.5)
            self._free -= amount
        return amount

    def release(self, amount: int) -> None:
        """Give back what :meth:`acquire` returned."""
        with self._cond:
            self._free += amount
            self._cond.notify_all()


def guard(chunks: Chunks, cancel: threading.Event) -> Chunks:
    """Pass chunks through until the worker is told to abort."""
    for chunk in chunks:
        if cancel.is_set():
            raise StopRequested
        yield chunk


@dataclass(frozen=True)
class SourceProbe:
    """What format detection may ask of a source object beyond its metadata and stream (two small requests)."""

    s3: S3Client
    source: SourceObject

    def head(self) -> bytes:
        """The object's first bytes (one ranged GET)."""
        return read_head(self.s3, self.source, length=HEAD_BYTES)

    def instruction_file_exists(self) -> bool:
        """Whether the S3 Encryption Client's ``<key>.instruction`` is there (one HeadObject)."""
        return object_exists(self.s3, bucket=self.source.bucket, key=self.source.key + INSTRUCTION_SUFFIX)


@dataclass(frozen=True)
class Stream:
    """An object's body as the route wants it delivered.

    ``encryption`` is the format a decrypt route found (``none``: delivered as it is);
    ``None`` when the route does not decrypt.
    """

    opened: OpenedObject
    chunks: Chunks
    encryption: str | None = None


@dataclass(frozen=True)
class StreamSource:
    """GET → decrypt → compress for one object, within the worker's byte budget.

    ``per_object_cost`` is the most the stages of one stream hold (their chunks, those
    queued to digests on threads); the destination's write adds its own buffers
    (``write_buffer``: an S3 upload's parts in flight, nothing for a file). A small object
    takes only its own size and a chunk. An object read in ranges (``gets``) takes its
    range buffers on top (:meth:`GetConfig.buffer_bytes`), in the same acquisition.
    """

    s3: S3Client
    decryptor: Decryptor
    budget: ByteBudget
    chunk_size: int
    per_object_cost: int
    gets: GetConfig = SINGLE_GET

    def cost(self, source: SourceObject, *, write_buffer: int = 0) -> int:
        """The bytes ``source``'s stream takes from the budget (fewer if the budget is smaller)."""
        held = min(source.size + self.chunk_size, self.per_object_cost + write_buffer)
        return held + self.gets.buffer_bytes(source.size)

    @contextmanager
    def open(
        self, source: SourceObject, route: Route, *, cancel: threading.Event, write_buffer: int = 0
    ) -> Iterator[Stream]:
        """The opened object and its body as the route wants it delivered.

        The budget is held, and the GETs' connections, until exit; whatever of the body
        was not read by then is cancelled.
        """
        taken = self.budget.acquire(self.cost(source, write_buffer=write_buffer), cancel=cancel)
        try:
            opened = open_object(self.s3, source, chunk_size=self.chunk_size, gets=self.gets)
            try:
                chunks: Chunks = guard(opened.chunks, cancel)
                encryption = None
                if route.decrypt:
                    decrypted = self.decryptor.open(
                        source=source.uri,
                        metadata=opened.metadata,
                        chunks=chunks,
                        size=opened.size,
                        instruction_file_exists=SourceProbe(self.s3, source).instruction_file_exists,
                    )
                    chunks, encryption = decrypted.chunks, decrypted.format.value
                if route.compress:
                    chunks = compress(chunks, fmt=route.compress_fmt or "gz")
                yield Stream(opened, chunks, encryption)
            finally:
                opened.close()
        finally:
            self.budget.release(taken)
