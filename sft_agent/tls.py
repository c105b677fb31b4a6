"""Building the client and server ``SSLContext`` objects, and reading certificate expiry.

Both sides: TLS 1.2 at least, and for TLS 1.2 only ECDHE key exchange with AEAD ciphers
(forward secrecy); TLS 1.3 suites all have it. No compression, no renegotiation.
The client verifies the server's chain against the configured CA bundle and, unless a
route turns it off, that the certificate names the host of the URL.
"""

from __future__ import annotations

import os
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from sft_agent.settings import TlsSettings

# TLS 1.2 suites with forward secrecy and authenticated encryption only.
FORWARD_SECRET_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"  # noqa: S105 - not a secret


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the setting."""


def _harden(context: ssl.SSLContext, min_version: str) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(FORWARD_SECRET_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _check_readable(path: Path, key: str) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise TlsConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise TlsConfigError(f"{key}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(f"{key}: {path} is not readable by this user")


def client_context(settings: TlsSettings, *, prefix: str = "tls") -> ssl.SSLContext:
    """The client context of a route. Raises :class:`TlsConfigError` naming the bad setting."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context, settings.min_version)
    context.check_hostname = settings.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.ca_bundle is not None:
        _check_readable(settings.ca_bundle, f"{prefix}.ca_bundle")
        try:
            context.load_verify_locations(cafile=str(settings.ca_bundle))
        except ssl.SSLError as exc:
            raise TlsConfigError(
                f"{prefix}.ca_bundle: {settings.ca_bundle} holds no usable certificate"
            ) from exc
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_chain(
        context,
        settings.client_cert,
        settings.client_key,
        passphrase=settings.client_key_passphrase.reveal if settings.client_key_passphrase else None,
        prefix=prefix,
    )
    return context


def server_context(*, cert: Path, key: Path, ca: Path, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """The receiver's context: its own certificate, and client certificates required from ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, min_version)
    context.verify_mode = ssl.CERT_REQUIRED
    _check_readable(ca, "--ca")
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"--ca: {ca} holds no usable certificate") from exc
    _load_chain(context, cert, key, passphrase=None, prefix="--")
    return context


def _load_chain(
    context: ssl.SSLContext,
    cert: Path,
    key: Path,
    *,
    passphrase: Callable[[], str] | None,
    prefix: str,
) -> None:
    cert_key = f"{prefix}.client_cert" if prefix != "--" else "--cert"
    key_key = f"{prefix}.client_key" if prefix != "--" else "--key"
    _check_readable(cert, cert_key)
    _check_readable(key, key_key)

    def password() -> str:
        # Never let OpenSSL prompt on a terminal for an encrypted key without a passphrase.
        return passphrase() if passphrase is not None else ""

    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=password)
    except ssl.SSLError as exc:
        # The library's text names neither key material nor the passphrase.
        raise TlsConfigError(
            f"{key_key}: cannot use {key} with {cert} (wrong or missing passphrase, not a PEM key, "
            f"or the key does not match the certificate): {exc.reason or exc}"
        ) from exc


def key_permissions_too_open(key: Path) -> bool:
    """True if the private key file can be read by the group or others."""
    try:
        return bool(key.stat().st_mode & 0o077)
    except OSError:
        return False


def certificate_not_after(path: Path) -> datetime:
    """When the first certificate in a PEM file expires (UTC)."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.not_valid_after_utc


def days_until(moment: datetime, *, now: datetime | None = None) -> float:
    """Days from ``now`` (default: the clock) to ``moment``; negative once past."""
    return (moment - (now or datetime.now(UTC))).total_seconds() / 86400.0


@dataclass(eq=False)
class ReloadingClientContext:
    """A route's client context, rebuilt when its certificate, key or CA file changes on disk.

    Certificates are rotated by replacing files; a running agent picks them up within
    ``check_every`` seconds. A rebuild that fails keeps the previous context and reports
    the error through ``on_error`` (the old certificate may still be valid).
    """

    settings: TlsSettings
    _: KW_ONLY
    prefix: str = "tls"
    check_every: float = 30.0
    on_error: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._context = client_context(self.settings, prefix=self.prefix)
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[tuple[int, int], ...]:
        paths = [self.settings.client_cert, self.settings.client_key]
        if self.settings.ca_bundle is not None:
            paths.append(self.settings.ca_bundle)
        stamps = []
        for path in paths:
            try:
                info = path.stat()
                stamps.append((info.st_mtime_ns, info.st_ino))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        """The context to use for a new connection."""
        with self._lock:
            if time.monotonic() - self._checked >= self.check_every:
                self._checked = time.monotonic()
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    try:
                        self._context = client_context(self.settings, prefix=self.prefix)
                        self._stamp = stamp
                    except TlsConfigError as exc:
                        if self.on_error is not None:
                            self.on_error(str(exc))
            return self._context

    def changed_since(self, context: ssl.SSLContext) -> bool:
        """True if ``context`` is no longer the current one (idle connections made with it are dropped)."""
        with self._lock:
            return context is not self._context
