"""What can go wrong with one file, as a :class:`~egress.kernel.errors.Reason` and one human line.

Reasons are metric labels and the ``reason`` of the JSON left beside a file in the error
folder, so the set is small and fixed: the agent's group of the shared vocabulary
(:mod:`egress.kernel.errors`). Every delivery failure is retried with backoff until the
route's ``max_attempts``, except the few marked permanent (no retry can help).
"""

from __future__ import annotations

from typing import Final

from egress.kernel.errors import EgressError, Reason, StopRequested

# The reasons the agent reports; a DeliveryError with any other is a bug.
REASONS: Final = frozenset(
    {
        Reason.CONNECT,
        Reason.TLS_VERIFY,
        Reason.TLS,
        Reason.TIMEOUT,
        Reason.DISCONNECTED,
        Reason.HTTP_4XX,
        Reason.HTTP_5XX,
        Reason.HTTP_OTHER,
        Reason.DIGEST_MISMATCH,
        Reason.EARLY_RESPONSE,
        Reason.COPY_FAILED,
        Reason.FILE_CHANGED,
        Reason.INVALID_NAME,
        Reason.IO_ERROR,
        Reason.SUPERSEDED,
    }
)

# The agent's "stop now" is the worker's: one control-flow exception (egress.kernel.errors).

__all__ = ["REASONS", "DeliveryError", "Reason", "StopRequested"]


class DeliveryError(EgressError):
    """One action failed for one file. ``permanent``: retrying cannot help.

    ``status`` is the receiver's HTTP status when it answered.
    """

    def __init__(
        self, reason: Reason | str, detail: str, *, permanent: bool = False, status: int | None = None
    ) -> None:
        super().__init__(reason, detail)
        assert self.reason in REASONS, reason
        self.permanent = permanent
        self.status = status
