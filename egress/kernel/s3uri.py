"""``s3://bucket/key`` URIs as the CLI takes them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Uri:
    """A bucket and a key (which may be a prefix, or empty)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str, *, want: str = "key") -> S3Uri:
    """Parse ``s3://bucket/key``.

    ``want="key"``: the key must be non-empty (an object). ``want="prefix"``: the key may
    be empty and gets a trailing ``/`` (a folder). Raises ``ValueError`` saying what is wrong.
    """
    if want not in ("key", "prefix"):
        raise ValueError(f"want must be 'key' or 'prefix', not {want!r}")
    example = "s3://bucket/prefix/" if want == "prefix" else "s3://bucket/key"
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI (expected {example})")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid bucket name")
    if want == "key" and not key:
        raise ValueError(f"{uri!r} names no object (expected {example})")
    if want == "prefix":
        if key.startswith("/") or "//" in key:
            raise ValueError(f"{uri!r}: the prefix must not start with '/' nor hold '//'")
        if key and not key.endswith("/"):
            key += "/"
    return S3Uri(bucket=bucket, key=key)
