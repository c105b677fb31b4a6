"""structlog configuration: one JSON line per event (default), or readable console lines.

The agent logs the way the worker does (the same configuration, :mod:`egress.logs`).
Log events carry the route and the file name, never file contents, key material,
passphrases or secret header values: callers pass only names, sizes, reasons.
"""

from __future__ import annotations

from egress.logs import configure_logging

__all__ = ["configure_logging"]
