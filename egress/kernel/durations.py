"""Durations as operators write them: ``500ms``, ``2s``, ``10m``, ``1h30m``, ``1d`` or seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``2s``, ``500ms``, ``10m``, ``1h``, ``1h30m``, ``1d`` or a bare number of seconds.

    Raises ``ValueError`` for anything else, including negative values.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().lower().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0:
            raise ValueError(f"{value!r} is negative")
        return number
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 2s, 10m, 1h)")
    return sum(float(n) * _UNITS[u] for n, u in parts)
