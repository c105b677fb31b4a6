"""How uploads and copies are cut: :class:`TransferConfig`, S3's limits, and the worst-case memory they imply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "GIB",
    "KIB",
    "MAX_COPY_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIB",
    "MIN_PART_SIZE",
    "TransferConfig",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
MIN_PART_SIZE: Final = 5 * MIB  # S3: every part but the last
MAX_PART_SIZE: Final = 5 * GIB  # S3: UploadPart and UploadPartCopy
MAX_PARTS: Final = 10_000  # S3: parts of one multipart upload
MAX_COPY_OBJECT_SIZE: Final = 5 * GIB  # S3: a single CopyObject


@dataclass(frozen=True)
class TransferConfig:
    """How uploads and copies are cut. Validated when built.

    Worst-case memory of one streamed upload is
    ``part_size × (max_parts_in_flight + 1) + chunk size``: the parts on the wire, the
    part being filled, and the one chunk being split across two parts
    (:attr:`upload_memory_bytes`). A worker running ``n`` uploads at once holds at most
    ``n ×`` that (:meth:`worst_case_memory`). Server-side copies hold no object bytes.

    ``copy_threshold`` is the largest object copied with one CopyObject (at most 5 GiB,
    CopyObject's limit); larger ones use multipart UploadPartCopy with parts of
    ``copy_part_size`` (grown if needed to stay within 10,000 parts). Lower it to
    exercise the multipart copy with small objects.

    ``send_checksums`` sends the SHA-256 of every request body for S3 to verify; turn it
    off only for an S3-compatible store that rejects the checksum headers.

    Retries are not configured here: each request is retried by botocore (the standard
    mode of the clients' one config, :class:`egress.aws.AwsConfig`), and a transfer that
    still fails is retried whole by delivery (a consumed stream cannot be replayed part
    by part).
    """

    part_size: int = 16 * MIB
    max_parts_in_flight: int = 4
    copy_threshold: int = 5 * GIB
    copy_part_size: int = 512 * MIB
    send_checksums: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("part_size", "max_parts_in_flight", "copy_threshold", "copy_part_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} must be an int, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            problems.append(f"part_size must be 5 MiB..5 GiB (S3's part limits), got {self.part_size}")
        if not 1 <= self.max_parts_in_flight <= 64:
            problems.append(f"max_parts_in_flight must be 1..64, got {self.max_parts_in_flight}")
        if not 0 <= self.copy_threshold <= MAX_COPY_OBJECT_SIZE:
            problems.append(
                f"copy_threshold must be 0..5 GiB (CopyObject's limit), got {self.copy_threshold}"
            )
        if not MIN_PART_SIZE <= self.copy_part_size <= MAX_PART_SIZE:
            problems.append(f"copy_part_size must be 5 MiB..5 GiB, got {self.copy_part_size}")
        if not isinstance(self.send_checksums, bool):
            problems.append(f"send_checksums must be a bool, got {self.send_checksums!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def upload_memory_bytes(self) -> int:
        """Object bytes one streamed upload holds at most, besides one chunk: ``part_size × (max_parts_in_flight + 1)``."""
        return self.part_size * (self.max_parts_in_flight + 1)

    @property
    def max_stream_size(self) -> int:
        """The largest stream one upload takes: 10,000 parts of ``part_size``."""
        return self.part_size * MAX_PARTS

    def worst_case_memory(self, *, chunk_size: int, concurrent_uploads: int) -> int:
        """Object bytes a worker holds with ``concurrent_uploads`` streamed uploads at once.

        ``(part_size × (max_parts_in_flight + 1) + chunk_size) × concurrent_uploads``.
        """
        return (self.upload_memory_bytes + chunk_size) * concurrent_uploads
