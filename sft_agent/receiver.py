"""``sft-agent receiver``: a small mutual-TLS HTTPS receiver, the stand-in for a receiving system.

Every connection must present a client certificate signed by ``--ca``. ``POST`` and
``PUT`` on any path are accepted: the body (``Content-Length`` required) is streamed to a
hidden temporary file while it is hashed; the ``Repr-Digest`` (or ``Content-Digest``)
must match, otherwise the answer is 400 and nothing is left behind; then the file is
renamed to ``OUT/<path>/<name>`` — the name from the file-name header for ``POST``, the
last URL segment for ``PUT`` — or uploaded to ``s3://BUCKET/[PREFIX/]<path>/<name>``.
Paths that could escape ``OUT`` (``..``, absolute, NUL or control characters, hidden
names) are refused with 400. ``OPTIONS`` (204) and ``HEAD`` (200) on any path answer the
probe of ``sft-agent check`` and write nothing; the client certificate is required for
them as for everything else (the TLS handshake asks for it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import structlog

from egress.kernel.fsutil import fsync_dir
from egress.kernel.tempnames import temp_name
from sft_agent.serving import QuickThreadingHTTPServer

CHUNK = 1024 * 1024
_DRAIN_LIMIT = 16 * CHUNK
_ALGORITHMS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
ALLOWED_METHODS = "POST, PUT, HEAD, OPTIONS"


class RequestRefused(Exception):  # noqa: N818 - an answer, not a crash
    """The request is answered with ``status`` and a JSON body ``{"error": code, "detail": …}``."""

    def __init__(self, status: int, code: str, detail: str, *, body_read: bool = False) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body_read = body_read


@dataclass(frozen=True)
class ReceiverSettings:
    """What the receiver needs, from its command line."""

    out: Path | None
    filename_header: str = "Filename"
    require_digest: bool = True
    max_bytes: int | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""


def check_segment(segment: str, *, what: str) -> str:
    """``segment`` if it is a safe single path segment, else :class:`RequestRefused` (400)."""
    if segment in ("", ".", ".."):
        raise RequestRefused(400, "unsafe_path", f"{what} {segment!r} is not allowed")
    if segment.startswith("."):
        raise RequestRefused(400, "unsafe_path", f"{what} {segment!r}: hidden names are not allowed")
    if "/" in segment or "\\" in segment:
        raise RequestRefused(400, "unsafe_path", f"{what} {segment!r} holds a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in segment):
        raise RequestRefused(400, "unsafe_path", f"{what} holds NUL or control characters")
    if len(segment.encode("utf-8", "surrogateescape")) > 255:
        raise RequestRefused(400, "unsafe_path", f"{what} is longer than 255 bytes")
    return segment


def url_segments(raw_path: str) -> list[str]:
    """The decoded, checked segments of a request target's path (empty segments dropped)."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise RequestRefused(400, "unsafe_path", "the request target must be an absolute path")
    segments = []
    for raw in path.split("/"):
        if raw == "":
            continue
        # Check the raw segment too: a %2F must not become a separator after decoding.
        segments.append(check_segment(_decode(raw), what="path segment"))
    return segments


def _decode(value: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise RequestRefused(400, "unsafe_path", "percent-encoding that is not UTF-8") from exc


def header_name(value: str) -> list[str]:
    """The file name of the file-name header (percent-decoded) as checked segments.

    A relative path (``sub/file``) is allowed for senders that keep sub-folders; an
    absolute one is not.
    """
    decoded = _decode(value)
    if decoded.startswith("/") or decoded.startswith("\\"):
        raise RequestRefused(400, "unsafe_path", f"file name {decoded!r} is absolute")
    parts = decoded.split("/")
    return [check_segment(part, what="file name") for part in parts]


def resolve_target(method: str, raw_path: str, header: str | None) -> list[str]:
    """Where a request writes, as path segments ending with the file name."""
    segments = url_segments(raw_path)
    if method == "PUT":
        if not segments:
            raise RequestRefused(400, "no_file_name", "PUT needs the file name as the last URL segment")
        return segments
    if header is None or not header.strip():
        raise RequestRefused(400, "no_file_name", "POST needs the file-name header")
    return segments + header_name(header.strip())


def parse_digest(value: str) -> tuple[str, bytes]:
    """The strongest supported (algorithm, digest) of a ``Repr-Digest``/``Content-Digest`` value."""
    found: dict[str, bytes] = {}
    for member in value.split(","):
        key, sep, rest = member.strip().partition("=")
        rest = rest.strip()
        if not sep or not (rest.startswith(":") and rest.endswith(":") and len(rest) >= 2):
            raise RequestRefused(400, "bad_digest_header", f"cannot parse digest member {member.strip()!r}")
        algorithm = key.strip().lower()
        if algorithm in _ALGORITHMS:
            try:
                found[algorithm] = base64.b64decode(rest[1:-1], validate=True)
            except ValueError as exc:
                raise RequestRefused(400, "bad_digest_header", f"{algorithm} is not valid base64") from exc
    for algorithm in ("sha-512", "sha-256"):
        if algorithm in found:
            return algorithm, found[algorithm]
    raise RequestRefused(400, "bad_digest_header", "no sha-256 or sha-512 digest")


class ReceiverHandler(BaseHTTPRequestHandler):
    """One connection (keep-alive: several requests) of the receiver."""

    protocol_version = "HTTP/1.1"
    server_version = "sft-receiver"
    sys_version = ""
    receiver: Receiver  # set on the subclass the server builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        return

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self._receive()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._receive()

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        self._probe(204)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._probe(200)

    def _probe(self, status: int) -> None:
        """``sft-agent check``'s probe: the TLS handshake took our client certificate, so we are
        up and it is accepted. Nothing is read or written beyond a small body, if one came."""
        self.receiver.log.info(
            "probe_answered", method=self.command, path=self.path.split("?", 1)[0], client=self._client()
        )
        bodiless = not self.headers.get("Content-Length") and not self.headers.get("Transfer-Encoding")
        consumed = bodiless or self._drain()
        self.send_response(status)
        self.send_header("Allow", ALLOWED_METHODS)
        self.send_header("Content-Length", "0")
        if not consumed:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _not_allowed(self) -> None:
        self._answer(405, {"error": "method_not_allowed", "detail": f"only {ALLOWED_METHODS}"}, close=True)

    do_GET = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def _client(self) -> str:
        with contextlib.suppress(Exception):
            cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            subject: Any = (cert or {}).get("subject", ())
            for rdn in subject:
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        return "?"

    def _answer(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _receive(self) -> None:
        receiver = self.receiver
        log = receiver.log.bind(method=self.command, path=self.path.split("?", 1)[0], client=self._client())
        started = time.monotonic()
        try:
            stored, size, digest = receiver.store(self, log=log)
        except RequestRefused as exc:
            log.warning("request_refused", status=exc.status, error=exc.code, detail=exc.detail)
            # Read a small unread body first, so that the client, still sending, gets the answer
            # rather than a reset; a large one is cut off by closing.
            consumed = exc.body_read or self._drain()
            self._answer(exc.status, {"error": exc.code, "detail": exc.detail}, close=not consumed)
            return
        except _ClientGone as exc:
            log.warning("upload_incomplete", detail=str(exc))
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - disk full, S3 down: the sender retries on a 500
            log.error("store_failed", error=f"{type(exc).__name__}: {exc}")
            self._answer(500, {"error": "store_failed", "detail": type(exc).__name__}, close=True)
            return
        seconds = time.monotonic() - started
        log.info("file_received", stored=stored, bytes=size, sha256=digest, seconds=round(seconds, 3))
        self._answer(201, {"stored": stored, "size": size, "sha256": digest})

    def _drain(self) -> bool:
        """Read and drop a body of at most ``_DRAIN_LIMIT`` bytes; True if it was read whole."""
        length = (self.headers.get("Content-Length") or "").strip()
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > _DRAIN_LIMIT:
            return False
        remaining = int(length)
        try:
            while remaining:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    return False
                remaining -= len(chunk)
        except (TimeoutError, OSError):
            return False
        return True


class _ClientGone(Exception):  # noqa: N818 - the client went away mid-body
    """The body ended before ``Content-Length`` bytes (closed, reset or timed out)."""


class Receiver:
    """Stores uploads on disk (atomically) or in an S3 bucket."""

    def __init__(self, settings: ReceiverSettings, *, s3: Any = None) -> None:
        if settings.out is None and settings.s3_bucket is None:
            raise ValueError("the receiver needs --out or --s3-bucket")
        if settings.s3_bucket is not None and s3 is None:
            raise ValueError("--s3-bucket needs an S3 client")
        self.settings = settings
        self.s3 = s3
        self.log = structlog.get_logger("sft_agent.receiver")
        self.out = settings.out.resolve() if settings.out is not None else None
        self.scratch = self.out or Path(tempfile.gettempdir())

    def store(self, handler: BaseHTTPRequestHandler, *, log: Any) -> tuple[str, int, str]:
        """Read, check and store one request's body; returns (where, size, base64 sha-256)."""
        headers = handler.headers
        segments = resolve_target(handler.command, handler.path, headers.get(self.settings.filename_header))
        if headers.get("Transfer-Encoding"):
            raise RequestRefused(
                411, "length_required", "chunked bodies are not accepted; send Content-Length"
            )
        length_text = headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            raise RequestRefused(411, "length_required", "Content-Length is required")
        length = int(length_text)
        if self.settings.max_bytes is not None and length > self.settings.max_bytes:
            raise RequestRefused(
                413, "too_large", f"{length} bytes is over the limit of {self.settings.max_bytes}"
            )
        digest_header = headers.get("Repr-Digest") or headers.get("Content-Digest")
        expected: tuple[str, bytes] | None = None
        if digest_header:
            expected = parse_digest(digest_header)
        elif self.settings.require_digest:
            raise RequestRefused(400, "no_digest", "Repr-Digest (sha-256) is required")
        relative = "/".join(segments)
        if self.out is not None:
            folder = self.out.joinpath(*segments[:-1])
            self._check_inside(folder)
        else:
            folder = self.scratch
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / segments[-1]
        if self.out is not None and final.is_dir():
            raise RequestRefused(409, "is_a_folder", f"{relative} is a folder")
        tmp = folder / temp_name(segments[-1])
        sha256 = hashlib.sha256()
        other = _ALGORITHMS[expected[0]]() if expected and expected[0] != "sha-256" else None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as handle:
                self._copy_body(handler, handle, length, sha256, other)
                handle.flush()
                os.fsync(handle.fileno())
            actual = (other or sha256).digest()
            if expected is not None and actual != expected[1]:
                raise RequestRefused(
                    400,
                    "digest_mismatch",
                    f"the body's {expected[0]} is {base64.b64encode(actual).decode()}, "
                    f"the header says {base64.b64encode(expected[1]).decode()}",
                    body_read=True,
                )
            if self.settings.s3_bucket is not None:
                key = "/".join(p for p in (self.settings.s3_prefix.strip("/"), relative) if p)
                self.s3.upload_file(str(tmp), self.settings.s3_bucket, key)
                stored = f"s3://{self.settings.s3_bucket}/{key}"
                tmp.unlink()
            else:
                os.replace(tmp, final)
                fsync_dir(folder)
                stored = relative
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return stored, length, base64.b64encode(sha256.digest()).decode()

    def _check_inside(self, folder: Path) -> None:
        assert self.out is not None
        # A symlink planted under OUT must not lead a write outside it.
        real = Path(os.path.realpath(folder))
        if real != self.out and self.out not in real.parents:
            raise RequestRefused(400, "unsafe_path", "the target folder resolves outside the output folder")

    @staticmethod
    def _copy_body(
        handler: BaseHTTPRequestHandler, handle: Any, length: int, sha256: Any, other: Any
    ) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        remaining = length
        reader = handler.rfile
        while remaining:
            try:
                count = reader.readinto(view[: min(CHUNK, remaining)])
            except (TimeoutError, OSError) as exc:
                raise _ClientGone(f"{remaining} of {length} bytes missing: {type(exc).__name__}") from exc
            if not count:
                raise _ClientGone(f"connection closed with {remaining} of {length} bytes missing")
            chunk = view[:count]
            sha256.update(chunk)
            if other is not None:
                other.update(chunk)
            handle.write(chunk)
            remaining -= count


def build_server(
    receiver: Receiver, *, host: str, port: int, tls: ssl.SSLContext, io_timeout: float = 60.0
) -> QuickThreadingHTTPServer:
    """The receiver's HTTPS server (not started)."""
    handler = type("BoundReceiverHandler", (ReceiverHandler,), {"receiver": receiver})

    def handshake_failed(client: tuple[Any, ...], exc: BaseException) -> None:
        receiver.log.warning("tls_handshake_failed", client=str(client[0]), error=str(exc))

    return QuickThreadingHTTPServer(
        (host, port), handler, tls=tls, io_timeout=io_timeout, on_handshake_error=handshake_failed
    )


def serve(server: QuickThreadingHTTPServer, *, log: Any) -> int:
    """Serve until SIGTERM/SIGINT; returns 0."""
    signals: list[int] = []

    def record(signum: int, _frame: object) -> None:
        # Only record it (no logging, no locks here): the main thread acts on it.
        signals.append(signum)

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="serve")
    thread.start()
    log.info("receiver_started", listen=f"{server.server_name}:{server.server_port}", pid=os.getpid())
    try:
        while not signals and thread.is_alive():
            time.sleep(0.1)
        if signals:
            log.info("receiver_stopping", signal=signal.Signals(signals[0]).name)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    log.info("receiver_stopped")
    return 0
