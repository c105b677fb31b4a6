"""Streaming one file to a receiving system over HTTPS with mutual TLS.

The body is read from disk in ``chunk_size`` blocks into one reused buffer and written
to the socket as it is read: memory is one buffer per sending thread, whatever the file
size. Headers: ``Content-Length``, ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530), the
file name (header name configurable, value percent-encoded where it is not plain
printable ASCII) and the route's extra headers. ``PUT`` appends the percent-encoded
name to the URL (a collection); ``POST`` sends to the URL as it is.

Connections are kept alive and reused between files of a route, but only while fresh
and quiet (a server may close an idle connection at any moment).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from sft_agent.errors import DeliveryError, Reason, StopRequested
from sft_agent.settings import HttpAction
from sft_agent.stopping import Stopper
from sft_agent.tls import ReloadingClientContext

USER_AGENT = "sft-agent/1"
# Printable ASCII except '%': sent as is in the file-name header; anything else is %XX.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")
_MAX_RESPONSE_BODY = 64 * 1024
_IDLE_REUSE_SECONDS = 4.0
_EARLY_HEAD_BYTES = 16 * 1024
_EARLY_HEAD_WAIT = 2.0
_STATUS_LINE = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})(?: (.*))?$")


@dataclass
class _Progress:
    """Body bytes handed to the socket so far."""

    sent: int = 0


@dataclass(frozen=True)
class _EarlyAnswer:
    """What a server sent before the whole body was sent (status None: not an HTTP answer)."""

    status: int | None
    reason: str
    body: bytes
    content_type: str = ""

    @classmethod
    def parse(cls, data: bytes) -> _EarlyAnswer:
        head, _, body = data.partition(b"\r\n\r\n")
        match = _STATUS_LINE.match(head.split(b"\r\n", 1)[0])
        if match is None:
            return cls(status=None, reason="", body=b"")
        return cls(status=int(match.group(1)), reason=match.group(2).decode("latin-1").strip(), body=body)


@dataclass(frozen=True)
class PushResult:
    """A 2xx answer to one push."""

    status: int
    bytes_sent: int
    seconds: float


def filename_header_value(name: str) -> str:
    """The file-name header's value: ``name`` with non-printable-ASCII and ``%`` percent-encoded."""
    return quote(name, safe=_HEADER_SAFE)


def put_target(base_path: str, name: str) -> str:
    """The path of a PUT: the collection ``base_path`` with the percent-encoded name appended."""
    collection = base_path if base_path.endswith("/") else base_path + "/"
    return collection + "/".join(quote(segment, safe="") for segment in name.split("/"))


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned[:limit] + ("…" if len(cleaned) > limit else "")


@dataclass(eq=False)
class HttpPusher:
    """Sends files for one ``http`` action of one route (thread-safe; one connection per send)."""

    action: HttpAction
    _: KW_ONLY
    tls: ReloadingClientContext
    stopper: Stopper
    chunk_size: int
    max_idle: int = 4

    def __post_init__(self) -> None:
        parts = urlsplit(self.action.url)
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.base_path = parts.path or "/"
        self.query = parts.query
        # Where it goes, for logs and errors: never the query string (it may hold a token).
        self.where = f"https://{parts.netloc}{self.base_path}"
        self._idle: list[tuple[http.client.HTTPSConnection, float, ssl.SSLContext]] = []
        self._lock = threading.Lock()

    def target(self, name: str) -> str:
        """The request target for a file called ``name``."""
        path = put_target(self.base_path, name) if self.action.method == "PUT" else self.base_path
        return f"{path}?{self.query}" if self.query else path

    def headers(self, *, name: str, size: int, digest: str) -> list[tuple[str, str]]:
        """Every header of the request, the agent's own last (they cannot be overridden)."""
        headers = list(self.action.headers)
        headers += [(key, secret.reveal()) for key, secret in self.action.secret_headers]
        headers += [
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/octet-stream"),
            (self.action.filename_header, filename_header_value(name)),
            ("Content-Length", str(size)),
            ("Repr-Digest", f"sha-256=:{digest}:"),
        ]
        return headers

    def push(self, path: Path, *, name: str, size: int, digest: str) -> PushResult:
        """Send ``size`` bytes of ``path`` as ``name``. Raises :class:`DeliveryError` unless 2xx."""
        started = time.monotonic()
        try:
            handle = path.open("rb", buffering=0)
        except OSError as exc:
            raise DeliveryError(Reason.IO_ERROR, f"cannot read the claimed file: {exc.strerror}") from exc
        with handle:
            return self._push(handle, name=name, size=size, digest=digest, started=started)

    def _push(self, handle: io.FileIO, *, name: str, size: int, digest: str, started: float) -> PushResult:
        conn, context = self._connection()
        reusable = False
        progress = _Progress()
        try:
            assert conn.sock is not None
            with self.stopper.watching(conn.sock):
                early = self._exchange(conn, handle, name=name, size=size, digest=digest, progress=progress)
                if early is not None:
                    raise self._early_error(early, sent=progress.sent, size=size)
                response = conn.getresponse()
                body = response.read(_MAX_RESPONSE_BODY)
                reusable = not response.will_close and response.isclosed()
            status = response.status
            if 200 <= status < 300:
                return PushResult(status=status, bytes_sent=progress.sent, seconds=time.monotonic() - started)
            raise self._status_error(response, body)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if self.stopper.aborted:
                raise StopRequested from exc
            raise self._network_error(exc, during="send") from exc
        finally:
            if reusable:
                self._release(conn, context)
            else:
                conn.close()

    def _exchange(
        self,
        conn: http.client.HTTPSConnection,
        handle: io.FileIO,
        *,
        name: str,
        size: int,
        digest: str,
        progress: _Progress,
    ) -> _EarlyAnswer | None:
        """Send the request; an answer that arrived before the last body byte was sent, or None.

        Between chunks the socket is polled (no wait): a server has nothing to say before
        the whole body is in, so anything it sends by then — even ``200 OK`` — is an early
        answer, and the file is not delivered whatever it says.
        """
        conn.putrequest(self.action.method, self.target(name), skip_accept_encoding=True)
        for key, value in self.headers(name=name, size=size, digest=digest):
            conn.putheader(key, value)
        conn.endheaders()
        sock = conn.sock
        assert sock is not None
        buffer = bytearray(self.chunk_size)
        view = memoryview(buffer)
        remaining = size
        try:
            while remaining:
                if self.stopper.aborted:
                    raise StopRequested
                early = self._answered_already(sock)
                if early is not None:
                    return early
                count = handle.readinto(view[: min(self.chunk_size, remaining)])
                if not count:
                    raise DeliveryError(
                        Reason.FILE_CHANGED, f"file shrank while being sent ({remaining} bytes short)"
                    )
                sock.sendall(view[:count])
                progress.sent += count
                remaining -= count
        except (TimeoutError, OSError) as exc:
            if self.stopper.aborted:
                raise StopRequested from exc
            # The server may have answered and closed (e.g. 413) or stopped reading: read its answer.
            early = self._early_response(conn)
            if early is not None:
                return early
            raise
        return None

    def _answered_already(self, sock: socket.socket) -> _EarlyAnswer | None:
        """What the server sent while the body is still going out (None: nothing yet).

        A readable socket may hold only TLS housekeeping (TLS 1.3 session tickets arrive
        after the handshake): a non-blocking read of it returns no data, and the send goes on.
        """
        if not _readable(sock):
            return None
        sock.setblocking(False)
        try:
            data = sock.recv(_EARLY_HEAD_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return None
        finally:
            sock.settimeout(self.action.read_timeout)
        if not data:
            raise ConnectionResetError("the server closed the connection before the whole body was sent")
        return _EarlyAnswer.parse(_read_head(sock, data))

    @staticmethod
    def _early_response(conn: http.client.HTTPSConnection) -> _EarlyAnswer | None:
        with contextlib.suppress(Exception):
            if conn.sock is not None:
                conn.sock.settimeout(1.0)
                response = conn.getresponse()
                body = b""
                with contextlib.suppress(Exception):
                    body = response.read(_MAX_RESPONSE_BODY)
                return _EarlyAnswer(
                    status=response.status,
                    reason=response.reason,
                    body=body,
                    content_type=response.getheader("Content-Type") or "",
                )
        return None

    def _early_error(self, early: _EarlyAnswer, *, sent: int, size: int) -> DeliveryError:
        if early.status is None:
            detail = (
                f"{self.action.method} {self.where} sent something that is not an HTTP answer "
                f"after {sent} of {size} body bytes"
            )
        else:
            detail = (
                f"{self.action.method} {self.where} answered {early.status} {early.reason} "
                f"after {sent} of {size} body bytes: an answer before the whole body is not a delivery"
            )
        text = early.body.decode("utf-8", "replace")
        if text.strip():
            detail += f": {_printable(text)}"
        return DeliveryError(Reason.EARLY_RESPONSE, detail, status=early.status)

    def _status_error(self, response: http.client.HTTPResponse, body: bytes) -> DeliveryError:
        status = response.status
        text = body.decode("utf-8", "replace")
        reason = (
            Reason.HTTP_4XX
            if 400 <= status < 500
            else Reason.HTTP_5XX
            if status >= 500
            else Reason.HTTP_OTHER
        )
        if status == 400 and "json" in (response.getheader("Content-Type") or ""):
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(text).get("error") == Reason.DIGEST_MISMATCH:
                    reason = Reason.DIGEST_MISMATCH
        detail = f"{self.action.method} {self.where} answered {status} {response.reason}"
        if text.strip():
            detail += f": {_printable(text)}"
        return DeliveryError(reason, detail, status=status)

    def _network_error(self, exc: BaseException, *, during: str) -> DeliveryError:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return DeliveryError(
                Reason.TLS_VERIFY,
                f"the server certificate of {where} was rejected: {exc.verify_message} "
                "(check the CA bundle, and that the certificate names this host)",
            )
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) and during == "send":
            return DeliveryError(
                Reason.DISCONNECTED, f"{where} closed the connection during the request: {exc}"
            )
        if isinstance(exc, ssl.SSLError):
            alert = "CERTIFICATE" in str(exc.reason or "").upper() or "ALERT" in str(exc.reason or "").upper()
            hint = " (was our client certificate refused?)" if during == "send" and alert else ""
            return DeliveryError(
                Reason.TLS, f"TLS with {where} failed during {during}: {exc.reason or exc}{hint}"
            )
        if isinstance(exc, TimeoutError):
            if during == "connect":
                return DeliveryError(
                    Reason.CONNECT, f"connecting to {where} timed out after {self.action.connect_timeout:g}s"
                )
            return DeliveryError(
                Reason.TIMEOUT, f"{where} did not answer or read within {self.action.read_timeout:g}s"
            )
        if during == "connect":
            return DeliveryError(
                Reason.CONNECT, f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}"
            )
        return DeliveryError(
            Reason.DISCONNECTED, f"connection to {where} lost during the request: {type(exc).__name__}: {exc}"
        )

    def _connection(self) -> tuple[http.client.HTTPSConnection, ssl.SSLContext]:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since, context = self._idle.pop()
                if (
                    now - since <= _IDLE_REUSE_SECONDS
                    and not self.tls.changed_since(context)
                    and _quiet(conn)
                ):
                    return conn, context
                conn.close()
        context = self.tls.current()
        conn = http.client.HTTPSConnection(
            self.host,
            self.port,
            timeout=self.action.connect_timeout,
            context=context,
            blocksize=self.chunk_size,
        )
        try:
            conn.connect()
        except (TimeoutError, OSError) as exc:
            conn.close()
            if self.stopper.aborted:
                raise StopRequested from exc
            raise self._network_error(exc, during="connect") from exc
        assert conn.sock is not None
        conn.sock.settimeout(self.action.read_timeout)
        return conn, context

    def _release(self, conn: http.client.HTTPSConnection, context: ssl.SSLContext) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append((conn, time.monotonic(), context))
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _, _ in idle:
            conn.close()


def _quiet(conn: http.client.HTTPSConnection) -> bool:
    """True if nothing (not even a close) arrived on an idle connection."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending())


def _readable(sock: socket.socket) -> bool:
    """True if the peer sent something (data, TLS records or a close), without waiting."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _read_head(sock: socket.socket, first: bytes) -> bytes:
    """``first`` and what follows it, up to the end of the answer's headers (bounded in size and time)."""
    data = bytearray(first)
    deadline = time.monotonic() + _EARLY_HEAD_WAIT
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data and len(data) < _EARLY_HEAD_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(_EARLY_HEAD_BYTES - len(data))
            if not chunk:
                break
            data += chunk
    return bytes(data)
