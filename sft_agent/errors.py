"""What can go wrong with one file, as a short reason code and one human line.

Reasons are metric labels and the ``reason`` of the JSON left beside a file in the error
folder, so the set is small and fixed. Every delivery failure is retried with backoff
until the route's ``max_attempts``, except the few marked permanent (no retry can help).
"""

from __future__ import annotations

from typing import Final

# Network and TLS.
CONNECT: Final = "connect"
TLS_VERIFY: Final = "tls_verify"
TLS: Final = "tls"
TIMEOUT: Final = "timeout"
DISCONNECTED: Final = "disconnected"
# Answers of the receiving system.
HTTP_4XX: Final = "http_4xx"
HTTP_5XX: Final = "http_5xx"
HTTP_OTHER: Final = "http_other"
DIGEST_MISMATCH: Final = "digest_mismatch"
# Any answer (even a 2xx) that came before the whole body was sent: never a delivery.
EARLY_RESPONSE: Final = "early_response"
# Local.
COPY_FAILED: Final = "copy_failed"
FILE_CHANGED: Final = "file_changed"
INVALID_NAME: Final = "invalid_name"
IO_ERROR: Final = "io_error"
SUPERSEDED: Final = "superseded"

REASONS: Final = frozenset(
    {
        CONNECT,
        TLS_VERIFY,
        TLS,
        TIMEOUT,
        DISCONNECTED,
        HTTP_4XX,
        HTTP_5XX,
        HTTP_OTHER,
        DIGEST_MISMATCH,
        EARLY_RESPONSE,
        COPY_FAILED,
        FILE_CHANGED,
        INVALID_NAME,
        IO_ERROR,
        SUPERSEDED,
    }
)


class DeliveryError(Exception):
    """One action failed for one file. ``permanent``: retrying cannot help."""

    def __init__(
        self, reason: str, detail: str, *, permanent: bool = False, status: int | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        self.permanent = permanent
        self.status = status


class AbortRequested(BaseException):  # noqa: N818 - control flow, not an error
    """Raised inside a send when the agent must stop now (grace period over, second signal).

    A ``BaseException`` so that ``except Exception`` in action code cannot swallow it: the
    file is put back untouched and no attempt is counted.
    """
