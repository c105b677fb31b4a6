"""A stream's digest on a thread of its own, beside the thread that decrypts and writes it.

SHA-256 is the costliest step of decrypt → SFT on one core (1.57 GB/s against AES-CTR's
6.6 GB/s, MEASURED.md), and a signed Encryption SDK message adds SHA-384 over all of it.
hashlib releases the GIL while it hashes a large buffer, so a second thread can hash
chunk *n* while the writer decrypts and writes chunk *n + 1*.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Final

__all__ = ["StreamHasher"]

_DONE: Final = b""


class StreamHasher:
    """The digest (hashlib's ``algorithm``, SHA-256 by default) of the chunks given to
    :meth:`update`, computed inline or on a thread.

    Below ``threshold`` bytes every chunk is hashed inline (a thread costs more than a
    small file's hash); from then on chunks are queued to a hashing thread, at most
    ``depth`` at a time, so memory stays at ``depth`` chunks the caller already holds
    (bytes objects are immutable: the writer may go on with them while they are hashed).
    :meth:`hexdigest` waits for the thread; :meth:`stop` ends it without a digest (an
    abandoned write) and is safe to call more than once.
    """

    def __init__(self, *, threshold: int, depth: int = 2, algorithm: str = "sha256") -> None:
        self._sha = hashlib.new(algorithm)
        self._threshold = threshold
        self._seen = 0
        self._queue: queue.Queue[bytes | memoryview] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._abandoned = False

    def update(self, chunk: bytes | memoryview) -> None:
        """Hash ``chunk`` next (it must not change afterwards)."""
        if not chunk:
            return
        self._seen += len(chunk)
        if self._thread is None:
            if self._seen <= self._threshold:
                self._sha.update(chunk)
                return
            self._thread = threading.Thread(
                target=self._hash_loop, name=f"digest-{self._sha.name}", daemon=True
            )
            self._thread.start()
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """The digest of everything given to :meth:`update`, in hex."""
        self._finish()
        return self._sha.hexdigest()

    def digest(self) -> bytes:
        """The digest of everything given to :meth:`update`."""
        self._finish()
        return self._sha.digest()

    def stop(self) -> None:
        """End the hashing thread without a digest (idempotent, never raises)."""
        self._abandoned = True
        self._finish()

    def _finish(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_DONE)
        self._thread.join()
        self._thread = None

    def _hash_loop(self) -> None:
        while True:
            chunk = self._queue.get()
            if not chunk:
                return
            if not self._abandoned:
                self._sha.update(chunk)
