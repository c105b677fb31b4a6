"""A misbehaving receiving system for tests: answers 500, drops the connection mid-body,
flips a byte on the way to the real receiver, reads slowly, or stalls — one behaviour per
request, from a plan. Runs in the test process (a thread), with real TLS and client
certificates; the agent under test is a separate process.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from sft_agent.serving import QuickThreadingHTTPServer
from tests.support.ports import free_port

MODES = ("forward", "500", "close_mid_body", "flip_byte", "slow_forward", "stall")


class FaultyReceiver:
    """TLS server on loopback; request ``n`` behaves as ``plan[n]`` (then ``default``)."""

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        client_cert: Path,
        client_key: Path,
        upstream_port: int | None,
        plan: list[str],
        default: str = "forward",
    ) -> None:
        assert all(m in MODES for m in [*plan, default]), plan
        self.plan = list(plan)
        self.default = default
        self.upstream_port = upstream_port
        self.requests: list[tuple[str, str]] = []
        self.request_started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        server_tls.load_verify_locations(ca)
        server_tls.verify_mode = ssl.CERT_REQUIRED
        self.client_tls = ssl.create_default_context(cafile=str(ca))
        self.client_tls.load_cert_chain(client_cert, client_key)
        self.port = free_port()
        faulty = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_PUT(self) -> None:  # noqa: N802
                faulty.handle(self)

            do_POST = do_PUT  # noqa: N815

        self.server = QuickThreadingHTTPServer(("127.0.0.1", self.port), Handler, tls=server_tls)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def modes_seen(self) -> list[str]:
        with self._lock:
            return [mode for mode, _ in self.requests]

    def _next_mode(self, path: str) -> str:
        with self._lock:
            mode = self.plan.pop(0) if self.plan else self.default
            self.requests.append((mode, path))
            return mode

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        mode = self._next_mode(handler.path)
        self.request_started.set()
        length = int(handler.headers.get("Content-Length", "0"))
        if mode == "stall":
            # Read nothing; hold the connection until released (or the client goes away).
            self.release.wait(60)
            handler.close_connection = True
            return
        if mode == "close_mid_body":
            handler.rfile.read(max(1, length // 2))
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if mode == "slow_forward":
            body = bytearray()
            while len(body) < length:
                body += handler.rfile.read(min(64 * 1024, length - len(body)))
                time.sleep(0.05)
        else:
            body = bytearray(handler.rfile.read(length))
        if mode == "500":
            self._reply(handler, 500, b"internal error (injected)\n", "text/plain")
            return
        if mode == "flip_byte" and body:
            body[len(body) // 2] ^= 0xFF
        assert self.upstream_port is not None, "forwarding needs an upstream receiver"
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.upstream_port, context=self.client_tls, timeout=30
        )
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(handler.command, handler.path, body=bytes(body), headers=headers)
            response = conn.getresponse()
            data = response.read()
            self._reply(handler, response.status, data, response.getheader("Content-Type") or "text/plain")
        finally:
            conn.close()


class EarlyAnswerServer:
    """An mTLS server that answers ``200 OK`` right after the request headers, before any body.

    ``mode="hold"``: it then reads nothing and holds the connection until the client goes
    (or the test ends). ``mode="drain"``: it answers early, then reads and discards the body.
    A raw ``ssl`` socket server (not ``http.server``), so nothing reads the body on its behalf.
    """

    def __init__(self, *, cert: Path, key: Path, ca: Path, mode: str = "hold") -> None:
        assert mode in ("hold", "drain"), mode
        self.mode = mode
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.tls.load_verify_locations(ca)
        self.tls.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.requests = 0
        self.bytes_drained = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> EarlyAnswerServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            with self.tls.wrap_socket(conn, server_side=True) as tls:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                with self._lock:
                    self.requests += 1
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                if self.mode == "hold":
                    self._stop.wait(60)
                    return
                while True:
                    chunk = tls.recv(1 << 16)
                    if not chunk:
                        return
                    with self._lock:
                        self.bytes_drained += len(chunk)
        except OSError:
            return
