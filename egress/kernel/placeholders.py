"""The date placeholders of route rows and agent renames, resolved from an event's time."""

from __future__ import annotations

from datetime import datetime
from typing import Final

PLACEHOLDERS: Final[dict[str, str]] = {
    # longest name first: the HHMMSS form contains the YYYYMMDD one
    "$TODAYS_YYYYMMDD_HHMMSS_FORMATTED_DATE": "%Y%m%d_%H%M%S",
    "$TODAYS_YYYYMMDD_FORMATTED_DATE": "%Y%m%d",
    "$TODAYS_DATE": "%Y-%m-%d",
}


def resolve_placeholders(template: str, when: datetime) -> str:
    """Replace the date placeholders in ``template`` by the values of ``when``."""
    for name, fmt in PLACEHOLDERS.items():
        template = template.replace(name, when.strftime(fmt))
    return template
