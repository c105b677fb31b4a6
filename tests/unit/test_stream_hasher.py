"""The SFT writer's SHA-256: inline for small files, on a thread beside the writer for large ones."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from egress.kernel.hashing import StreamHasher


def _threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("digest-"))


@pytest.mark.parametrize("threshold", [0, 1, 1000, 10**9])
def test_the_digest_is_hashlibs_whatever_the_chunking(threshold: int) -> None:
    rng = random.Random(threshold)
    data = os.urandom(300_000)
    hasher = StreamHasher(threshold=threshold, depth=2)
    position = 0
    while position < len(data):
        step = rng.choice([0, 1, 17, 4096, 65_536])
        hasher.update(data[position : position + step])
        position += step
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()  # asking twice gives the same
    assert _threads() == 0


def test_nothing_given_is_the_empty_digest() -> None:
    assert StreamHasher(threshold=0).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_a_thread_starts_only_past_the_threshold() -> None:
    hasher = StreamHasher(threshold=10)
    hasher.update(b"x" * 10)
    assert _threads() == 0
    hasher.update(b"y")
    assert _threads() == 1
    assert hasher.hexdigest() == hashlib.sha256(b"x" * 10 + b"y").hexdigest()
    assert _threads() == 0


def test_stop_ends_the_thread_of_an_abandoned_write() -> None:
    hasher = StreamHasher(threshold=0, depth=1)
    for _ in range(20):
        hasher.update(os.urandom(100_000))
    hasher.stop()
    hasher.stop()  # idempotent
    assert _threads() == 0
