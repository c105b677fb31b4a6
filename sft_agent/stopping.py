"""The two-stage stop: a stop request (claim nothing new, let sends finish) and an abort.

An abort cuts the sends in flight short: every socket registered here is shut down, so a
blocked ``sendall`` returns at once, and the sender raises
:class:`~sft_agent.errors.StopRequested`; the file is then put back untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class Stopper:
    """Shared by every thread of the agent; set from the signal handler."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    @property
    def stop_requested(self) -> bool:
        """True once the agent was asked to stop (first signal)."""
        return self._stop.is_set()

    @property
    def aborted(self) -> bool:
        """True once sends in flight must be cut short (grace period over, second signal)."""
        return self._abort.is_set()

    def request_stop(self) -> None:
        """Stop claiming; sends in flight go on."""
        self._stop.set()

    def abort(self) -> None:
        """Stop now: shut every registered socket down."""
        self._stop.set()
        self._abort.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on a stop request; True if stopping."""
        return self._stop.wait(seconds)

    @contextlib.contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        """Register ``sock`` for the duration of a send, so an abort can interrupt it."""
        with self._lock:
            self._sockets.add(sock)
        try:
            if self._abort.is_set():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)
