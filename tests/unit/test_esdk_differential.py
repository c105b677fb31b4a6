"""Differential test: our streamed Encryption SDK body reader against the library itself.

The worker decrypts an Encryption SDK message's body with its own streaming AES-GCM
(:func:`egress.transforms.decrypt.esdk_plaintext`), the library reading the header. Over
randomised messages — every algorithm suite the library offers, every frame size it
writes (multiples of 128 bytes), non-framed bodies, empty bodies, several chunkings — both must give the same
plaintext; and over single-byte tampering anywhere in the message (header, frame
numbers, IVs, lengths, bodies, tags, final frame, signature), whenever the library
refuses the message ours must refuse it too, before its plaintext iterator ends.
"""

from __future__ import annotations

import io
import os
import random

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy

from egress.transforms.esdk import esdk_plaintext
from tests.unit.test_decrypt_bounds import MATERIALS, PROVIDER, READER, pieces

SUITES = list(AlgorithmSuite)


def _encrypt(data: bytes, *, suite: AlgorithmSuite, frame_length: int) -> bytes:
    policy = (
        CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        if suite.is_committing()
        else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=policy)
    message, _ = client.encrypt(
        source=data, key_provider=PROVIDER, frame_length=frame_length, algorithm=suite
    )
    return bytes(message)


def _library(message: bytes) -> bytes | None:
    """The library's own plaintext, or None if it refuses the message."""
    try:
        plaintext, _ = READER.decrypt(source=io.BytesIO(message), materials_manager=MATERIALS)
    except Exception:  # noqa: BLE001 - any refusal counts
        return None
    return bytes(plaintext)


def _ours(message: bytes, *, in_chunk: int, chunk_size: int) -> bytes | None:
    try:
        return b"".join(
            esdk_plaintext(
                READER, materials=MATERIALS, chunks=pieces(message, in_chunk), chunk_size=chunk_size
            )
        )
    except Exception:  # noqa: BLE001 - any refusal counts
        return None


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
def test_every_suite_agrees_with_the_library_on_random_messages(suite: AlgorithmSuite) -> None:
    rng = random.Random(f"suite-{suite.name}")
    # The library writes frames of multiples of 128 bytes (its encrypt refuses others).
    for frame_length in (0, 128, 128 * rng.randint(2, 20), 4096, 128 * rng.randint(33, 600)):
        for size in (0, 1, frame_length, frame_length + 1, rng.randint(0, 200_000)):
            data = os.urandom(size)
            message = _encrypt(data, suite=suite, frame_length=frame_length)
            assert _library(message) == data
            in_chunk, chunk_size = rng.choice([1, 7, 4096, 65_536]), rng.choice([1, 1000, 65_536])
            if in_chunk == 1 and len(message) > 20_000:
                in_chunk = 13
            assert _ours(message, in_chunk=in_chunk, chunk_size=chunk_size) == data, (frame_length, size)


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
@pytest.mark.parametrize("frame_length", [0, 128], ids=["non-framed", "frames-of-128"])
def test_single_byte_tampering_anywhere_is_refused_whenever_the_library_refuses(
    suite: AlgorithmSuite, frame_length: int
) -> None:
    rng = random.Random(f"tamper-{suite.name}-{frame_length}")
    data = os.urandom(400)
    message = _encrypt(data, suite=suite, frame_length=frame_length)
    # Every byte of the tail (frames, tags, final frame, footer) and a sample of the header.
    tail = range(max(0, len(message) - 450), len(message))
    positions = sorted({*tail, *rng.sample(range(len(message)), min(len(message), 60))})
    for position in positions:
        tampered = bytearray(message)
        tampered[position] ^= 1 << rng.randrange(8)
        library = _library(bytes(tampered))
        ours = _ours(bytes(tampered), in_chunk=rng.choice([5, 64, 4096]), chunk_size=rng.choice([50, 4096]))
        if library is None:
            assert ours is None, (
                f"the library refuses a flip at byte {position} of {len(message)}; we did not"
            )
        else:
            # A flip the format tolerates (e.g. in a field the library does not authenticate):
            # the plaintext must still be the true one, never something else.
            assert library == data
            assert ours in (None, data), f"flip at byte {position} gave other plaintext"
