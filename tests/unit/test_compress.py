"""Streaming compression round trips."""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.transforms.compress import FORMATS, compress


@settings(max_examples=30, deadline=None)
@given(pieces=st.lists(st.binary(max_size=5000), max_size=20), fmt=st.sampled_from(FORMATS))
def test_round_trip_any_chunking(pieces: list[bytes], fmt: str) -> None:
    out = b"".join(compress(iter(pieces), fmt=fmt))
    data = b"".join(pieces)
    restored = (
        gzip.decompress(out) if fmt == "gz" else zstandard.ZstdDecompressor().decompressobj().decompress(out)
    )
    assert restored == data


def test_large_stream_comes_out_in_big_chunks() -> None:
    data = [os.urandom(64 * 1024) for _ in range(64)]  # 4 MiB incompressible
    out = list(compress(iter(data), fmt="zstd"))
    assert len(out) <= 6 and all(len(chunk) >= 1024 * 1024 for chunk in out[:-1])


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown compression format 'rar'"):
        list(compress(iter([b"x"]), fmt="rar"))
