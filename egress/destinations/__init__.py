"""Where deliveries land: S3 buckets (``s3``) and the volume shared with the SFT agent (``sft``).

Both consume a chunk iterator and make the result visible only after the iterator is
exhausted without error (authenticated decryption raises at its end); on any exception,
including a stop request, they clean up (abort the upload, remove the temp file).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivered:
    """One delivered file: its name, size and the SHA-256 of the delivered bytes."""

    name: str
    size: int
    sha256: str | None
