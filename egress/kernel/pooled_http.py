"""An HTTP server for probes and metrics on which idle and slow clients cost no thread.

The server beneath :class:`egress.kernel.probes.ProbeServer`, which both programs use
for ``/metrics`` and their probes; :func:`bind_without_dns` is shared with the agent's
receiver (:mod:`sft_agent.serving`).
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Final

__all__ = ["DEFAULT_LIMITS", "PooledHTTPServer", "ServingLimits", "bind_without_dns"]


@dataclass(frozen=True)
class ServingLimits:
    """How a :class:`PooledHTTPServer` bounds its threads and clients (seconds, counts).

    Checked when built; what each bound does is told on :class:`PooledHTTPServer`.
    """

    workers: int = 4
    idle_timeout: float = 5.0
    io_timeout: float = 5.0
    request_timeout: float = 10.0
    max_waiting: int = 256
    max_queued: int = 64

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_waiting < 1 or self.max_queued < 1:
            raise ValueError("workers, max_waiting and max_queued must be at least 1")
        if min(self.idle_timeout, self.io_timeout, self.request_timeout) <= 0:
            raise ValueError("the timeouts must be positive")


DEFAULT_LIMITS: Final = ServingLimits()


def bind_without_dns(server: HTTPServer) -> None:
    """``HTTPServer.server_bind`` without its ``getfqdn`` (a DNS lookup that can hang)."""
    socketserver.TCPServer.server_bind(server)
    host, port = server.server_address[:2]
    server.server_name = str(host)
    server.server_port = int(port)


class PooledHTTPServer(HTTPServer):
    """An HTTP server on which idle and slow clients cost no more than a file descriptor.

    A connection waits in a selector, holding no thread, until its request's first
    bytes arrive; it is closed if none come within ``limits.idle_timeout``, and the
    oldest waiting one is closed when ``limits.max_waiting`` wait. A ready connection
    goes to one of ``limits.workers`` threads (at most ``limits.max_queued`` queue for
    them; more are closed), which reads and answers it with ``limits.io_timeout`` on each
    socket operation and ``limits.request_timeout`` for the whole exchange, so a client
    trickling bytes is cut off. Threads: ``limits.workers`` plus the one in
    :meth:`serve_forever`, whatever the clients do.
    """

    request_queue_size = 128  # a burst of connections waits in the kernel, not refused

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        limits: ServingLimits = DEFAULT_LIMITS,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.limits = limits
        self._ready: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue()
        self._busy: dict[socket.socket, float] = {}  # connection → when it is cut off
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()  # not serving yet: shutdown() has nothing to wait for

    def server_bind(self) -> None:
        bind_without_dns(self)

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        """Accept, wait for requests and hand them to the workers until :meth:`shutdown`."""
        if self._stop.is_set():
            return
        self._stopped.clear()
        threads = [
            threading.Thread(target=self._work, name=f"http-worker-{n}", daemon=True)
            for n in range(self.limits.workers)
        ]
        for thread in threads:
            thread.start()
        waiting: dict[socket.socket, tuple[Any, float]] = {}  # in arrival order, so by deadline
        try:
            self.socket.setblocking(False)
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    timeout = poll_interval
                    if waiting:
                        first_deadline = next(iter(waiting.values()))[1]
                        timeout = min(timeout, max(0.0, first_deadline - time.monotonic()))
                    for key, _ in selector.select(timeout):
                        if key.fileobj is self.socket:
                            self._accept(selector, waiting)
                            continue
                        conn: Any = key.fileobj
                        selector.unregister(conn)
                        self._dispatch(conn, waiting.pop(conn)[0])
                    now = time.monotonic()
                    while waiting:
                        conn, (_, deadline) = next(iter(waiting.items()))
                        if deadline > now:
                            break
                        self._drop(conn, selector, waiting)
                    self._cut_off(now)
        finally:
            for conn in list(waiting):
                self.shutdown_request(conn)
            with contextlib.suppress(queue.Empty):
                while (item := self._ready.get_nowait()) is not None:
                    self.shutdown_request(item[0])
            for _ in threads:
                self._ready.put(None)
            self._cut_off(float("inf"))
            deadline = time.monotonic() + self.limits.io_timeout
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it returned."""
        self._stop.set()
        self._stopped.wait()

    def _accept(
        self, selector: selectors.BaseSelector, waiting: dict[socket.socket, tuple[Any, float]]
    ) -> None:
        for _ in range(self.request_queue_size):  # a burst at once, but never the loop forever
            try:
                conn, address = self.socket.accept()
            except OSError:  # nothing left (BlockingIOError), or out of descriptors: next turn
                return
            if len(waiting) >= self.limits.max_waiting:
                self._drop(next(iter(waiting)), selector, waiting)
            waiting[conn] = (address, time.monotonic() + self.limits.idle_timeout)
            selector.register(conn, selectors.EVENT_READ)

    def _drop(
        self,
        conn: socket.socket,
        selector: selectors.BaseSelector,
        waiting: dict[socket.socket, tuple[Any, float]],
    ) -> None:
        selector.unregister(conn)
        del waiting[conn]
        self.shutdown_request(conn)

    def _dispatch(self, conn: socket.socket, address: Any) -> None:
        if self._ready.qsize() >= self.limits.max_queued:
            self.shutdown_request(conn)  # overloaded: a closed connection is a fast answer
            return
        self._ready.put((conn, address))

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            conn, address = item
            with self._busy_lock:
                self._busy[conn] = time.monotonic() + self.limits.request_timeout
            try:
                conn.settimeout(self.limits.io_timeout)
                self.finish_request(conn, address)
            except OSError:
                pass  # the client went away, or was cut off for taking too long
            except Exception:  # noqa: BLE001 - one bad request never kills a worker
                self.handle_error(conn, address)
            finally:
                with self._busy_lock:
                    self._busy.pop(conn, None)
                self.shutdown_request(conn)

    def _cut_off(self, now: float) -> None:
        # Under the lock, so a worker cannot close (and the kernel reuse) the descriptor meanwhile;
        # shutting the socket down wakes the worker blocked on it.
        with self._busy_lock:
            for conn, deadline in self._busy.items():
                if deadline <= now:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
