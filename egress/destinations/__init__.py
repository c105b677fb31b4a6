"""Where deliveries land: S3 buckets (:mod:`.s3`) and the volume shared with the SFT agent (:mod:`.sft`).

:class:`~egress.destinations.base.Destination` states the contract both keep (nothing
visible before the stream ended cleanly, clean-up on any exception, ``cancel`` honoured,
the SHA-256 computed while streaming) and what delivery asks of a route's destination
(resume, copy or stream, the manifest, what to record when). :mod:`.routes` implements it
for S3 and SFT and picks one per route, so delivery never asks which kind it has.
"""

from __future__ import annotations

from egress.destinations.base import (
    Delivered,
    Destination,
    ObjectJournal,
    close_abandoned,
    raise_if_cancelled,
)

__all__ = ["Delivered", "Destination", "ObjectJournal", "close_abandoned", "raise_if_cancelled"]
