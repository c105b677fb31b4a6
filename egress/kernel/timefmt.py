"""ISO-8601 times as events, the ledger and the CLI write them: always timezone-aware, UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_iso8601(value: str) -> datetime:
    """An aware UTC datetime from ISO 8601 (``Z`` accepted; a time without offset is UTC).

    Raises ``ValueError`` for anything else, a year out of range included.
    """
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # year 1 with a positive offset
        raise ValueError(f"{value[:40]!r} is out of range") from exc


def iso_from_epoch(epoch: float, *, timespec: str = "auto") -> str:
    """An epoch time as ISO 8601 in UTC (``timespec`` as :meth:`datetime.isoformat` takes it)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec)
