"""Where deliveries land: S3 buckets (:mod:`.s3`) and the volume shared with the SFT agent (:mod:`.sft`).

The contract both destinations keep:

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

from __future__ import annotations

import threading
from dataclasses import dataclass

from egress.errors import StopRequested

__all__ = ["Delivered", "raise_if_cancelled"]


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


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    """Raise :class:`StopRequested` when ``cancel`` is set (the worker is told to abort)."""
    if cancel is not None and cancel.is_set():
        raise StopRequested
