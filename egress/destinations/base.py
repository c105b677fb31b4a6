"""The contract every destination keeps, as types: :class:`Destination`, :class:`ObjectJournal`, :class:`Delivered`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from egress.errors import StopRequested

if TYPE_CHECKING:
    from egress.ledger_table import ObjectRecord
    from egress.sources import OpenedObject, SourceObject

__all__ = [
    "Delivered",
    "Destination",
    "MetadataFor",
    "ObjectJournal",
    "close_abandoned",
    "raise_if_cancelled",
]

log = structlog.get_logger("egress.destinations")

MetadataFor = Callable[[Mapping[str, str]], "Mapping[str, str] | None"]
"""Given the source object's user metadata, the delivered object's in its place, or ``None``
to keep what the route implies (a re-wrap route's new envelope: :mod:`egress.transforms.rewrap`)."""


@dataclass(frozen=True)
class Delivered:
    """One delivered file.

    ``name`` is the S3 key or the path relative to the SFT root, ``size`` the number of
    bytes delivered and ``sha256`` the hex SHA-256 of those bytes. ``sha256`` is ``None``
    only for server-side copies for which S3 returned no full-object SHA-256 (the bytes
    never passed through the worker, so it could not compute one).
    """

    name: str
    size: int
    sha256: str | None


class ObjectJournal(Protocol):
    """Where a destination records one object's progress in the ledger; delivery provides it.

    The journal knows the delivery, the object's destination name and its source key;
    the destination decides which status a row gets and when (S3: ``uploading`` the
    moment a multipart upload exists, ``done`` after; SFT: ``written`` after the fsync
    and before the rename), since that is what its resume reads back.
    """

    def record_now(self, status: str, delivered: Delivered | None = None, **extra: Any) -> None:
        """Write the object's row at once (fenced by the claim); raises if it could not be written."""

    def record_later(self, status: str, delivered: Delivered, **extra: Any) -> None:
        """Queue the object's row for the next checkpoint batch."""


class Destination(Protocol):
    """Where one route of one flag delivers: everything delivery asks, whatever the transfer type.

    Delivery picks one per route delivery and then calls only these methods. The writing
    methods (:meth:`copy`, :meth:`write`, :meth:`write_bytes`) keep one contract:

    - They consume a chunk iterator and make the result visible only after the iterator
      is exhausted without error (authenticated decryption raises at its very end, so
      nothing unauthenticated may become visible before that).
    - On any exception, ``BaseException`` included (``StopRequested``,
      ``KeyboardInterrupt``), they clean up — abort the multipart upload, remove the temp
      file — and re-raise it unchanged.
    - A ``cancel`` event is checked between chunks and parts; once set they raise
      :class:`~egress.errors.StopRequested` (and clean up as above).
    - They return :class:`Delivered`, whose SHA-256 was computed while streaming.
    """

    def resume(
        self,
        records: Mapping[str, ObjectRecord],
        *,
        reread: Callable[[str], ObjectRecord | None],
        cancel: threading.Event,
    ) -> dict[str, ObjectRecord]:
        """The recorded objects that need no delivery again; first clean up what an earlier claim left.

        ``records`` are the delivery's object rows by destination name, ``reread(name)``
        reads one row again (a receipt may have arrived meanwhile). S3 aborts the recorded
        multipart uploads; SFT finishes recorded renames, removes a lapsed claim's temp
        files and waits briefly for the agent's receipts of files it cannot find.
        """
        ...

    @property
    def write_buffer_bytes(self) -> int:
        """Object bytes one streamed :meth:`write` holds beyond the stream's own chunks (its parts in flight)."""
        ...

    def copies(self, source: SourceObject) -> bool:
        """True if ``source`` is copied inside the store, with no byte passing through the worker."""
        ...

    def prepare(self, source: SourceObject, name: str) -> None:
        """Ready ``name`` for ``source`` before any budget is taken or byte read.

        SFT checks free space for the object; S3, after a takeover, aborts any upload to
        ``name`` a lapsed claim opened but did not live to record.
        """
        ...

    def copy(
        self,
        source: SourceObject,
        name: str,
        *,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """Copy ``source`` to ``name`` inside the store (only when :meth:`copies` said so).

        ``metadata_for`` is asked once per copy with the metadata of the version copied.
        """
        ...

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        opened: OpenedObject,
        cancel: threading.Event,
        journal: ObjectJournal,
        metadata_for: MetadataFor | None = None,
    ) -> Delivered:
        """Stream ``chunks`` (the transformed body of ``opened``) to ``name``.

        ``metadata_for`` is asked with ``opened.metadata`` before anything is written (a
        folder's files carry no metadata: SFT never asks it).
        """
        ...

    def write_bytes(self, name: str, data: bytes, *, content_type: str, journal: ObjectJournal) -> Delivered:
        """Write a small file of the route's own (the manifest, the control file) to ``name`` the same atomic way."""
        ...

    def record_delivered(self, delivered: Delivered, *, journal: ObjectJournal) -> None:
        """Record a finished object, unless its row was written before it became visible."""
        ...


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    """Raise :class:`StopRequested` when ``cancel`` is set (the worker is told to abort)."""
    if cancel is not None and cancel.is_set():
        raise StopRequested


def close_abandoned(chunks: Iterable[bytes]) -> None:
    """Close an abandoned stream (a generator) so its source, e.g. an open GET, is released now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - never replace the failure being handled
            log.warning("abandoned_stream_close_failed", error=str(exc)[:200])
