"""The receiver's HTTP server base (IPv6-aware, no reverse DNS at bind) and ``HOST:PORT`` parsing.

:class:`QuickThreadingHTTPServer` (the receiver) runs a thread per connection, with TLS
optional per connection; the handshake runs in the connection's own thread (not in the
accept loop), so a client that connects and stalls holds only its thread, never the
listener. The metrics endpoint is the kernel's probe server (:mod:`egress.kernel.probes`),
which holds no thread for an idle client, so probes keep answering whoever connects.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from egress.kernel.pooled_http import bind_without_dns


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port). Raises ``ValueError``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host or "0.0.0.0", number  # noqa: S104 - an empty host means every interface


class QuickThreadingHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that binds IPv4 or IPv6 and skips ``getfqdn`` (a DNS lookup) at bind.

    With ``tls`` set, each accepted connection is wrapped server-side before the handler
    runs; a failed handshake is reported through ``on_handshake_error`` and dropped.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        io_timeout: float = 60.0,
        on_handshake_error: Callable[[tuple[Any, ...], BaseException], None] | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.io_timeout = io_timeout
        self.on_handshake_error = on_handshake_error
        super().__init__(address, handler)

    def server_bind(self) -> None:
        bind_without_dns(self)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            request.settimeout(self.io_timeout)
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            if self.on_handshake_error is not None:
                self.on_handshake_error(client_address, exc)
            with contextlib.suppress(OSError):
                request.close()
            return
        try:
            wrapped.settimeout(self.io_timeout)
            self.RequestHandlerClass(wrapped, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                wrapped.close()
