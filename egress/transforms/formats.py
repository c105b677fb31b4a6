"""Which encrypted format an object is in: metadata markers, the Encryption SDK header, instruction files.

Decrypt routes (:mod:`.decrypt`) and re-wrap routes (:mod:`.rewrap`) both ask. An object
with no marker of any format at all is ``NONE`` and passes through as it is, as the
replaced system delivered it (DESIGN §12); a marker of a format nothing here reads is
``unknown_encryption``, never delivered as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from enum import Enum

from egress.errors import PermanentError, Reason
from egress.transforms.esdk import looks_like_esdk

__all__ = [
    "ENVELOPE_KEYS",
    "HEAD_BYTES",
    "INSTRUCTION_SUFFIX",
    "EncryptionFormat",
    "classify",
    "detect",
    "strip_meta",
]


class EncryptionFormat(Enum):
    """What an object's metadata and first bytes say it is; the value is what the ledger and manifest record.

    ``NONE``: no marker of any encrypted format at all, so a decrypt route delivers the
    object as it is (DESIGN §12).
    """

    ENVELOPE = "envelope"
    ESDK = "esdk"
    S3EC = "s3ec"
    NONE = "none"


ENVELOPE_KEYS = ("datakeyencryptionkeyid", "ciphertext", "iv")
# S3 Encryption Client metadata: v1/v2 and the key-committing v3 (compressed names).
# Any ``x-amz-key…`` name counts as well (see _has_s3ec_marker).
_S3EC_KEYS = frozenset(
    {
        "x-amz-key",
        "x-amz-key-v2",
        "x-amz-iv",
        "x-amz-unencrypted-content-length",
        "x-amz-cek-alg",
        "x-amz-wrap-alg",
        "x-amz-matdesc",
        "x-amz-tag-len",
        "x-amz-3",
        "x-amz-c",
        "x-amz-w",
        "x-amz-d",
        "x-amz-i",
        "x-amz-m",
        "x-amz-t",
    }
)
# An S3 Encryption Client instruction file: the object's metadata kept beside it as JSON.
INSTRUCTION_SUFFIX = ".instruction"
# How many leading bytes detection looks at: enough for any ESDK header we accept
# (at most 5 encrypted data keys of a few hundred bytes each).
HEAD_BYTES = 128 * 1024


def _has_s3ec_marker(meta: Mapping[str, str]) -> bool:
    return bool(_S3EC_KEYS & set(meta)) or any(name.startswith("x-amz-key") for name in meta)


def _is_instruction_file(source: str, head: bytes) -> bool:
    """Whether ``source`` is itself an instruction file: ``….instruction`` holding S3EC metadata as JSON."""
    if not source.endswith(INSTRUCTION_SUFFIX):
        return False
    try:
        body = json.loads(head)
    except ValueError:
        return False
    return isinstance(body, dict) and _has_s3ec_marker({str(name).lower(): "" for name in body})


def strip_meta(metadata: Mapping[str, str]) -> dict[str, str]:
    """User metadata by lower-case name, any ``x-amz-meta-`` prefix dropped (boto3 gives it without)."""
    prefix = "x-amz-meta-"
    return {
        (name.lower()[len(prefix) :] if name.lower().startswith(prefix) else name.lower()): value
        for name, value in metadata.items()
    }


def detect(*, metadata: Mapping[str, str], head: bytes) -> EncryptionFormat:
    """Which format an object is in, from its user metadata and first bytes."""
    meta = strip_meta(metadata)
    if all(name in meta for name in ENVELOPE_KEYS):
        return EncryptionFormat.ENVELOPE
    if _has_s3ec_marker(meta):
        return EncryptionFormat.S3EC
    if looks_like_esdk(head):
        return EncryptionFormat.ESDK
    return EncryptionFormat.NONE


def classify(
    *,
    source: str,
    metadata: Mapping[str, str],
    head: bytes,
    instruction_file_exists: Callable[[], bool],
) -> EncryptionFormat:
    """:func:`detect`, then the instruction file: ``NONE`` only when nothing says the object is encrypted.

    ``instruction_file_exists()`` (a HeadObject of ``<key>.instruction``) is asked only
    when no other marker is there. An object whose metadata sits in an instruction
    file, or an instruction file itself, is ``unknown_encryption``: none is read here.
    """
    fmt = detect(metadata=metadata, head=head)
    if fmt is not EncryptionFormat.NONE:
        return fmt
    if _is_instruction_file(source, head):
        raise PermanentError(
            Reason.UNKNOWN_ENCRYPTION,
            f"{source}: an S3 Encryption Client instruction file (another object's encryption metadata)",
        )
    if instruction_file_exists():
        raise PermanentError(
            Reason.UNKNOWN_ENCRYPTION,
            f"{source}: its S3 Encryption Client metadata sits in {source}{INSTRUCTION_SUFFIX}, "
            "a layout this worker does not decrypt",
        )
    return EncryptionFormat.NONE
