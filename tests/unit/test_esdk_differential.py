"""Differential test: our Encryption SDK body reader against the library itself.

The worker decrypts an Encryption SDK message's body itself (:func:`egress.transforms.esdk.
esdk_plaintext`), the library reading the header. Over randomised messages — every algorithm
suite the library offers; frames of 1, 2, 3, 17, 127, 128, 4096, 65536 bytes and 1 MiB and
non-framed bodies; bodies of 0, 1, frame - 1, frame, frame + 1 and random lengths; random
chunkings — both give the same plaintext. Over single-byte tampering in every region of a
message (header, each frame's number, IV, body and tag, the final frame's mark, number,
length, body and tag, the signature's length and the signature), over messages cut short in
every region and over bytes after the end: whenever the library refuses a message ours
refuses it too, before its iterator ends; ours never ends with other plaintext than the
library's; and while frames fit in a chunk (each decrypted in one call that checks its tag
first) every byte ours hands on before refusing is true plaintext — nothing unauthenticated.

The library writes only frames of a multiple of 128 bytes (below); the other lengths, which
other writers use and the library reads, are written by the library with that one check
bypassed.
"""

from __future__ import annotations

import io
import random
import struct
import threading
from unittest import mock

import aws_encryption_sdk
import aws_encryption_sdk.internal.utils
import pytest
from aws_encryption_sdk.exceptions import SerializationError
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy
from aws_encryption_sdk.internal.defaults import MAX_FRAME_SIZE

from egress.transforms.esdk import EsdkBodyError, esdk_plaintext
from tests.unit.test_decrypt_bounds import MATERIALS, PROVIDER, READER, pieces

MIB = 1024 * 1024
TAG = 16
SUITES = list(AlgorithmSuite)
FRAME_LENGTHS = [0, 1, 2, 3, 17, 127, 128, 4096, 65536, MIB]  # 0: non-framed
FINAL_FRAME_MARK = 0xFFFFFFFF


def _any_frame_length(frame_length: int, algorithm: AlgorithmSuite) -> None:
    """The library's frame length check without its multiple-of-128 rule."""
    if not 0 <= frame_length <= MAX_FRAME_SIZE:
        raise SerializationError(f"frame length {frame_length} out of range")


def encrypt(data: bytes, *, suite: AlgorithmSuite, frame_length: int) -> bytes:
    """A message written by the library, with frames of any length."""
    policy = (
        CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        if suite.is_committing()
        else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=policy)
    with mock.patch.object(aws_encryption_sdk.internal.utils, "validate_frame_length", _any_frame_length):
        message, header = client.encrypt(
            source=data, key_provider=PROVIDER, frame_length=frame_length, algorithm=suite
        )
    assert header.frame_length == frame_length
    return bytes(message)


def library(message: bytes) -> bytes | None:
    """The library's own plaintext, or None if it refuses the message."""
    try:
        plaintext, _ = READER.decrypt(source=io.BytesIO(message), materials_manager=MATERIALS)
    except Exception:  # noqa: BLE001 - any refusal counts
        return None
    return bytes(plaintext)


def ours(message: bytes, *, in_chunk: int, chunk_size: int) -> tuple[list[bytes], BaseException | None]:
    """The pieces our reader hands on, and the error it ended with (None: it ended)."""
    handed: list[bytes] = []
    try:
        for piece in esdk_plaintext(
            READER, materials=MATERIALS, chunks=pieces(message, in_chunk), chunk_size=chunk_size
        ):
            handed.append(piece)
    except Exception as exc:  # noqa: BLE001 - any refusal counts
        return handed, exc
    return handed, None


def test_the_library_writes_only_frames_of_a_multiple_of_128_bytes() -> None:
    """Why :func:`encrypt` bypasses one check: the library compares the frame length with
    the AES block size of ``cryptography``, 128 — in bits — and so refuses any frame length
    that is not a multiple of 128 bytes (its issue #30, "remove frame-size block-length
    restriction", closed; the check is still in 4.x). It reads any frame length."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    for frame_length in (1, 16, 17, 127, 4095):
        with pytest.raises(SerializationError, match="multiple of the block size"):
            client.encrypt(source=b"x", key_provider=PROVIDER, frame_length=frame_length)
    client.encrypt(source=b"x", key_provider=PROVIDER, frame_length=128)


def _sizes(frame_length: int, rng: random.Random) -> list[int]:
    if frame_length == 0:
        return [0, 1, rng.randint(2, 4096), rng.randint(4097, 300_000)]
    if frame_length == MIB:  # a few: the library takes tens of ms to write and read each
        return [0, frame_length - 1, frame_length, frame_length + 1]
    # Tiny frames cost the library ~0.2 ms each to write and read: up to ~300 frames.
    top = min(200_000, 300 * frame_length)
    return sorted({0, 1, frame_length - 1, frame_length, frame_length + 1, rng.randint(0, top)})


def _chunkings(frame_length: int, size: int, rng: random.Random) -> list[tuple[int, int]]:
    """How the source comes (``in_chunk``) and the plaintext goes (``chunk_size``): at
    random; in chunks smaller than a frame (frames streamed through AES-GCM); and in
    chunks that hold a frame (each frame decrypted in one call)."""
    small = size < 20_000  # one byte at a time only for small messages
    in_chunk = rng.choice([1, 7, 4096, 65_536, MIB] if small else [13, 4096, 65_536, MIB])
    chunk_size = rng.choice([1, 50, 4096, 65_536, MIB] if small else [1000, 4096, 65_536, MIB])
    streamed = max(1 if small else 1000, frame_length // 2 if frame_length else rng.randint(1, 4096))
    whole = frame_length + TAG + rng.randint(0, frame_length) if frame_length else size + TAG
    return [
        (in_chunk, chunk_size),
        (rng.choice([3, 4096] if small else [4096, MIB]), streamed),
        (rng.choice([5, MIB] if small else [4096, MIB]), whole),
    ]


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
def test_every_suite_and_frame_length_agrees_with_the_library(suite: AlgorithmSuite) -> None:
    rng = random.Random(f"agree-{suite.name}")
    for frame_length in FRAME_LENGTHS:
        for size in _sizes(frame_length, rng):
            data = rng.randbytes(size)
            message = encrypt(data, suite=suite, frame_length=frame_length)
            assert library(message) == data
            for in_chunk, chunk_size in _chunkings(frame_length, len(message), rng):
                handed, error = ours(message, in_chunk=in_chunk, chunk_size=chunk_size)
                where = f"frame length {frame_length}, {size} bytes, in {in_chunk}, out {chunk_size}"
                assert error is None, f"{where}: {error!r}"
                assert b"".join(handed) == data, where
                assert all(len(piece) == chunk_size for piece in handed[:-1]), where


# -- the message's regions, for tampering and cutting ------------------------------------


def regions(message: bytes) -> dict[str, list[range]]:
    """Where each field of a message lies, walking the message format: the header, then
    each frame's fields (or the non-framed block's), then the footer. Empty fields are left
    out (the body of an empty final frame)."""
    stream = READER.stream(mode="d", source=io.BytesIO(message), materials_manager=MATERIALS)
    header = stream.header
    body_at = stream.source_stream.tell()  # after the header (a non-framed block: its IV and length)
    signed = stream.verifier is not None
    body_length = stream.body_length if header.frame_length == 0 else None
    io.IOBase.close(stream)
    iv_len = header.algorithm.iv_len
    spans: dict[str, list[range]] = {}
    at = 0

    def field(name: str, length: int) -> int:
        """Note the next ``length`` bytes as a field ``name``; their value as a number."""
        nonlocal at
        if length:
            spans.setdefault(name, []).append(range(at, at + length))
        at += length
        return int.from_bytes(message[at - length : at], "big")

    if body_length is not None:
        field("header", body_at - iv_len - 8)
        field("block-iv", iv_len)
        field("block-length", 8)
        field("block-body", body_length)
        field("block-tag", TAG)
    else:
        field("header", body_at)
        while struct.unpack_from(">I", message, at)[0] != FINAL_FRAME_MARK:
            field("frame-number", 4)
            field("frame-iv", iv_len)
            field("frame-body", header.frame_length)
            field("frame-tag", TAG)
        field("final-mark", 4)
        field("final-number", 4)
        field("final-iv", iv_len)
        field("final-body", field("final-length", 4))
        field("final-tag", TAG)
    if signed:
        field("signature", field("signature-length", 2))
    assert at == len(message), (at, len(message))
    return spans


def targets(message: bytes, rng: random.Random) -> list[tuple[int, str]]:
    """Bytes to tamper with, each named: a sample of the header (both readers read it with
    the library), and in every other field of every frame its first, last and a random byte."""
    chosen: list[tuple[int, str]] = []
    for name, spans in regions(message).items():
        if name == "header":
            chosen += [(at, name) for at in sorted(rng.sample(spans[0], 12))]
            continue
        for index, span in enumerate(spans, start=1):
            for at in sorted({span[0], span[-1], rng.choice(span)}):
                chosen.append((at, f"{name} #{index}"))
    return chosen


LAYOUTS = [0, 1, 128, 4096]  # non-framed, and frames of 1, 128 and 4096 bytes


def _body(frame_length: int) -> int:
    """Three frames and half a frame (1-byte frames: four frames and an empty final frame)."""
    return 400 if frame_length == 0 else 3 * frame_length + frame_length // 2


def _chunk_holding_a_frame(frame_length: int) -> int:
    """A chunk that holds whole frames (each decrypted in one call), not the whole body."""
    return 2 * (frame_length + TAG) if frame_length else 400 + TAG


def _regions_named(suite: AlgorithmSuite, frame_length: int) -> set[str]:
    """The regions every message of this suite and layout has."""
    names = {"header", "signature-length", "signature"} if suite.is_signing() else {"header"}
    if frame_length == 0:
        return names | {"block-iv", "block-length", "block-body", "block-tag"}
    frame = {"number", "iv", "body", "tag"}
    final = {"mark", "number", "iv", "length", "body", "tag"} - ({"body"} if frame_length == 1 else set())
    return names | {f"frame-{n}" for n in frame} | {f"final-{n}" for n in final}


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
@pytest.mark.parametrize("frame_length", LAYOUTS, ids=lambda n: f"frame{n}" if n else "non-framed")
def test_tampering_in_any_region_is_refused_whenever_the_library_refuses(
    suite: AlgorithmSuite, frame_length: int
) -> None:
    rng = random.Random(f"tamper-{suite.name}-{frame_length}")
    data = rng.randbytes(_body(frame_length))
    message = encrypt(data, suite=suite, frame_length=frame_length)
    chosen = targets(message, rng)
    assert {where.split(" #")[0] for _, where in chosen} == _regions_named(suite, frame_length)
    chunk_size = _chunk_holding_a_frame(frame_length)
    assert len(data) % chunk_size, "the last piece must be a short one: it waits for the footer"
    for position, where in chosen:
        tampered = bytearray(message)
        tampered[position] ^= 1 << rng.randrange(8)
        what = f"a flip in {where} (byte {position} of {len(message)})"
        expected = library(bytes(tampered))
        assert expected in (None, data), what
        # Whole frames in each chunk: whatever is handed on before a refusal is true plaintext
        # (bar a non-framed block's length grown past the chunk: that block is streamed, and
        # its length, in its AAD, is authenticated only by the tag at its end), and never all
        # of it: the last piece waits for the end of the message.
        handed, error = ours(bytes(tampered), in_chunk=rng.choice([5, 64, 4096]), chunk_size=chunk_size)
        got = b"".join(handed)
        if error is None:
            assert got == expected, f"{what}: we ended with other plaintext than the library"
        elif not where.startswith("block-length"):
            assert data.startswith(got), f"{what}: other plaintext handed on"
            assert len(got) < len(data), f"{what}: all of the plaintext handed on before refusing"
        # Frames larger than a chunk: streamed through AES-GCM, refused all the same.
        _, streamed_error = ours(bytes(tampered), in_chunk=rng.choice([3, 4096]), chunk_size=7)
        if expected is None:
            assert error is not None, f"{what}: the library refuses it, we did not"
            assert streamed_error is not None, f"{what}: the library refuses it, we did not (streamed)"


def frames(message: bytes) -> list[bytes]:
    """A framed message's frames (the final one last), each from its number to its tag."""
    spans = regions(message)
    starts = [span[0] for span in spans["frame-number"]] + [spans["final-mark"][0][0]]
    ends = [span[-1] + 1 for span in spans["frame-tag"]] + [spans["final-tag"][0][-1] + 1]
    return [message[start:end] for start, end in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
@pytest.mark.parametrize("frame_length", [1, 128, 4096], ids=lambda n: f"frame{n}")
def test_frames_reordered_repeated_or_dropped_are_refused(suite: AlgorithmSuite, frame_length: int) -> None:
    """Frames moved whole: each keeps a valid tag (its AAD has its own number), so only the
    order check — and a signed suite's signature — can tell."""
    rng = random.Random(f"order-{suite.name}-{frame_length}")
    data = rng.randbytes(_body(frame_length))
    message = encrypt(data, suite=suite, frame_length=frame_length)
    first, second, third, *rest = frames(message)
    head = message[: message.index(first)]
    tail = message[message.index(rest[-1]) + len(rest[-1]) :]  # the footer
    variants = {
        "swapped": [second, first, third, *rest],
        "repeated": [first, first, second, third, *rest],
        "dropped": [first, third, *rest],
        "final frame early": [first, second, rest[-1], third, *rest[:-1]],
        "final frame repeated": [first, second, third, *rest, rest[-1]],
    }
    for name, body in variants.items():
        changed = head + b"".join(body) + tail
        if name == "final frame repeated" and not suite.is_signing():
            # The library stops at the final frame and ignores what follows; we refuse it.
            assert library(changed) == data
        else:
            assert library(changed) is None, f"{name}: the library accepts it"
        handed, error = ours(
            changed, in_chunk=rng.choice([5, 4096]), chunk_size=_chunk_holding_a_frame(frame_length)
        )
        assert error is not None, f"{name}: the library refuses it, we did not"
        assert len(b"".join(handed)) < len(data), name


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.name)
@pytest.mark.parametrize("frame_length", LAYOUTS, ids=lambda n: f"frame{n}" if n else "non-framed")
def test_a_message_cut_short_anywhere_or_followed_by_bytes_is_refused(
    suite: AlgorithmSuite, frame_length: int
) -> None:
    rng = random.Random(f"cut-{suite.name}-{frame_length}")
    data = rng.randbytes(_body(frame_length))
    message = encrypt(data, suite=suite, frame_length=frame_length)
    cuts = {len(message) - 1}
    for spans in regions(message).values():
        for span in spans:  # at the start of each field and inside it
            cuts |= {span[0], span[len(span) // 2]}
    for cut in sorted(cuts):
        short = message[:cut]
        assert library(short) is None, f"the library accepts the message cut at {cut}"
        handed, error = ours(
            short, in_chunk=rng.choice([5, 4096]), chunk_size=_chunk_holding_a_frame(frame_length)
        )
        assert error is not None, f"cut at {cut} of {len(message)}: the iterator ended"
        got = b"".join(handed)
        assert data.startswith(got) and len(got) < len(data), f"cut at {cut}"
    # Bytes after the end: the library ignores them; a message is delivered whole or not at all.
    for extra in (b"\x00", rng.randbytes(100), message):
        assert library(message + extra) in (None, data)
        _, error = ours(message + extra, in_chunk=rng.choice([5, 4096]), chunk_size=4096)
        assert isinstance(error, EsdkBodyError) and "after the end" in str(error), repr(error)


SIGNING_SUITES = [suite for suite in SUITES if suite.is_signing()]


@pytest.mark.parametrize("suite", SIGNING_SUITES, ids=lambda suite: suite.name)
@pytest.mark.parametrize("frame_length", [0, 128], ids=["non-framed", "frame128"])
def test_the_signature_digest_on_a_thread_refuses_what_the_library_refuses(
    suite: AlgorithmSuite, frame_length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large signed message's digest runs on a thread (hashlib): as strict as the library's own."""
    monkeypatch.setattr("egress.transforms.esdk._DIGEST_THREAD_FROM", 0)  # every message, every byte
    rng = random.Random(f"digest-thread-{suite.name}-{frame_length}")
    data = rng.randbytes(_body(frame_length))
    message = encrypt(data, suite=suite, frame_length=frame_length)
    handed, error = ours(message, in_chunk=rng.choice([7, 300, 4096]), chunk_size=256)
    assert error is None and b"".join(handed) == data
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("digest-")]
    for position, where in targets(message, rng):
        tampered = bytearray(message)
        tampered[position] ^= 1 << rng.randrange(8)
        expected = library(bytes(tampered))
        handed, error = ours(bytes(tampered), in_chunk=rng.choice([5, 64, 4096]), chunk_size=256)
        if expected is None:
            assert error is not None, (
                f"a flip in {where} (byte {position}): the library refuses it, we did not"
            )
        else:
            assert error is None and b"".join(handed) == expected, where


def test_a_large_signed_message_is_read_with_its_digest_on_a_thread() -> None:
    """Past the threshold (8 MiB) for real: accepted whole, refused for one flipped bit near the end."""
    suite = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384
    data = random.Random("large-signed").randbytes(9 * MIB + 5)
    message = encrypt(data, suite=suite, frame_length=4096)
    handed, error = ours(message, in_chunk=MIB, chunk_size=MIB)
    assert error is None and b"".join(handed) == data
    for position in (len(message) - 1, len(message) - 200, len(message) // 2):
        tampered = bytearray(message)
        tampered[position] ^= 0x10
        _, error = ours(bytes(tampered), in_chunk=MIB, chunk_size=MIB)
        assert error is not None, position
