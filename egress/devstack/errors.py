"""The one error of the dev tooling, and how it words AWS's errors for a person at a terminal."""

from __future__ import annotations

from botocore.exceptions import ClientError


class LocalSetupError(Exception):
    """A local command could not do its job; the message says why, for a human."""


def describe(exc: BaseException) -> str:
    """``Code: message`` of an AWS error, else the exception's type and text."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
