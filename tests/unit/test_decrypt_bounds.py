"""Encryption SDK bodies read with bounded memory: every layout, any chunking, every tampering.

Messages are written by the aws-encryption-sdk library itself under a raw AES wrapping
key (no KMS at this tier) and read by :func:`egress.transforms.decrypt.esdk_plaintext`:
non-framed bodies (``frame_length=0``, what ``aws-encryption-cli --frame-length 0``
writes), frames of any length, signed and unsigned suites, message formats 1 and 2.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tracemalloc
from collections.abc import Iterator

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.exceptions import SerializationError
from aws_encryption_sdk.identifiers import (
    AlgorithmSuite,
    CommitmentPolicy,
    ContentAADString,
    ContentType,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.formatting.encryption_context import assemble_content_aad
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider, WrappingKey
from aws_encryption_sdk.materials_managers.default import DefaultCryptoMaterialsManager
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.streams import ChunkReader, rechunk
from egress.transforms.esdk import EsdkBodyError, esdk_plaintext

MIB = 1024 * 1024
SIGNED = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384  # the library's default
UNSIGNED = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
V1_SIGNED = AlgorithmSuite.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384
V1_UNSIGNED = AlgorithmSuite.AES_256_GCM_IV12_TAG16_HKDF_SHA256
TAG = 16


class _StaticKeys(RawMasterKeyProvider):  # type: ignore[misc]
    """One raw AES-256 wrapping key: the library's own non-KMS master key provider."""

    provider_id = "egress-test"

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=hashlib.sha256(key_id).digest(),
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


def _provider() -> _StaticKeys:
    provider = _StaticKeys()
    provider.add_master_key(b"unit-test-key")
    return provider


PROVIDER = _provider()
MATERIALS = DefaultCryptoMaterialsManager(PROVIDER)
READER = aws_encryption_sdk.EncryptionSDKClient(
    commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT, max_encrypted_data_keys=5
)


def encrypt(data: bytes, *, frame_length: int, suite: AlgorithmSuite = SIGNED) -> bytes:
    policy = (
        CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        if suite.is_committing()
        else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=policy)
    message, header = client.encrypt(
        source=data, key_provider=PROVIDER, frame_length=frame_length, algorithm=suite
    )
    assert header.content_type is (ContentType.NO_FRAMING if frame_length == 0 else ContentType.FRAMED_DATA)
    return bytes(message)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    return rechunk(iter([data]), size=size)


def decrypt(message: bytes, *, in_chunk: int = 64 * 1024, chunk_size: int = 64 * 1024) -> list[bytes]:
    return list(
        esdk_plaintext(READER, materials=MATERIALS, chunks=pieces(message, in_chunk), chunk_size=chunk_size)
    )


def body_layout(message: bytes) -> tuple[int, int]:
    """Where a non-framed message's body starts, and its length: after the header, IV and length."""
    stream = READER.stream(mode="d", source=io.BytesIO(message), materials_manager=MATERIALS)
    stream.header  # noqa: B018 - reads the header, the IV and the body length
    consumed = stream.source_stream.tell()
    length = stream.body_length
    io.IOBase.close(stream)
    return consumed, length


PLAIN = os.urandom(3 * MIB + 4096 * 2 + 7)


@pytest.mark.parametrize("suite", [SIGNED, UNSIGNED, V1_SIGNED, V1_UNSIGNED], ids=lambda s: s.name)
@pytest.mark.parametrize("frame_length", [0, 4096, MIB + 384, 8 * MIB], ids=lambda n: f"frame{n}")
def test_every_body_layout_round_trips(suite: AlgorithmSuite, frame_length: int) -> None:
    message = encrypt(PLAIN, frame_length=frame_length, suite=suite)
    chunks = decrypt(message, in_chunk=256 * 1024 + 3, chunk_size=256 * 1024)
    assert b"".join(chunks) == PLAIN
    assert all(len(chunk) == 256 * 1024 for chunk in chunks[:-1])


@pytest.mark.parametrize("frame_length", [0, 4096])
@pytest.mark.parametrize("data", [b"", b"x", os.urandom(4096)], ids=["empty", "one", "one-frame"])
def test_small_and_empty_messages(frame_length: int, data: bytes) -> None:
    assert b"".join(decrypt(encrypt(data, frame_length=frame_length))) == data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=0, max_value=200_000),
    frame_length=st.sampled_from([0, 128, 384, 4096, 65536, 1 << 20]),  # the library: multiples of 128
    in_chunk=st.integers(min_value=1, max_value=100_000),
    chunk_size=st.integers(min_value=1, max_value=100_000),
    signed=st.booleans(),
)
def test_any_size_framing_and_chunking(
    size: int, frame_length: int, in_chunk: int, chunk_size: int, signed: bool
) -> None:
    data = os.urandom(size)
    message = encrypt(data, frame_length=frame_length, suite=SIGNED if signed else UNSIGNED)
    chunks = decrypt(message, in_chunk=in_chunk, chunk_size=chunk_size)
    assert b"".join(chunks) == data
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])


@pytest.mark.parametrize("frame_length", [0, 16 * MIB], ids=["non-framed", "one-16MiB-frame"])
def test_memory_stays_a_few_chunks_whatever_the_body_length(frame_length: int) -> None:
    """A 24 MiB body in one block (or a 16 MiB frame) is never held whole: the library
    would read all of it before the first byte comes out."""
    size = 24 * MIB
    data = os.urandom(size)
    message = encrypt(data, frame_length=frame_length, suite=SIGNED)
    digest = hashlib.sha256()
    read = [0]

    def source() -> Iterator[bytes]:
        view = memoryview(message)
        for at in range(0, len(message), MIB):
            read[0] = at
            yield bytes(view[at : at + MIB])

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        first_at: int | None = None
        for chunk in esdk_plaintext(READER, materials=MATERIALS, chunks=source(), chunk_size=MIB):
            if first_at is None:
                first_at = read[0]
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(data).digest()
    # A few chunks: the reader's (9 MiB measured), and up to three more a large signed
    # message's digest thread holds (two queued, one being hashed).
    assert peak < 13 * MIB, f"peak {peak / MIB:.1f} MiB for a {size // MIB} MiB body"
    assert first_at is not None and first_at < 4 * MIB  # streamed, not read whole first


# -- tampering: every change raises, before the iterator ends -------------------------------


def consume(message: bytes, *, chunk_size: int = 256 * 1024) -> tuple[int, BaseException]:
    """Plaintext bytes handed on before the error, and the error (the iterator must not end)."""
    handed = 0
    iterator = esdk_plaintext(
        READER, materials=MATERIALS, chunks=pieces(message, 100_000), chunk_size=chunk_size
    )
    try:
        for chunk in iterator:
            handed += len(chunk)
    except Exception as exc:  # noqa: BLE001 - returned for the test to look at
        return handed, exc
    raise AssertionError(f"the iterator ended without error after {handed} bytes")


def flip(message: bytes, at: int) -> bytes:
    tampered = bytearray(message)
    tampered[at] ^= 0x01
    return bytes(tampered)


@pytest.mark.parametrize("suite", [SIGNED, UNSIGNED], ids=lambda s: s.name)
@pytest.mark.parametrize("where", ["body-start", "body-middle", "body-end", "tag", "iv", "length"])
def test_tampered_non_framed_body_raises_before_the_end(suite: AlgorithmSuite, where: str) -> None:
    message = encrypt(PLAIN, frame_length=0, suite=suite)
    start, length = body_layout(message)
    assert length == len(PLAIN)
    at = {
        "body-start": start,
        "body-middle": start + length // 2,
        "body-end": start + length - 1,
        "tag": start + length + TAG - 1,
        "iv": start - 8 - 1,  # the last byte of the IV (the length field follows it)
        "length": start - 1,  # the body length's low byte: a body one byte off
    }[where]
    handed, error = consume(flip(message, at))
    if where == "length":
        assert isinstance(error, (InvalidTag, EsdkBodyError)), repr(error)
    else:
        assert isinstance(error, InvalidTag), repr(error)
    assert handed < len(PLAIN)  # the last piece is held back until the tag is checked


def test_plaintext_of_a_bad_non_framed_block_is_streamed_then_refused() -> None:
    """The body streams out before its tag is checked (destinations commit nothing before
    the end), and the bad tag raises before the iterator ends."""
    message = encrypt(PLAIN, frame_length=0, suite=UNSIGNED)
    handed, error = consume(flip(message, len(message) - 1), chunk_size=64 * 1024)
    assert isinstance(error, InvalidTag)
    assert handed >= len(PLAIN) - 64 * 1024


def footer_at(message: bytes) -> int:
    """Where a signed message's footer starts: the signature's 2-byte length, then the signature."""
    for length in range(110, 60, -1):  # a DER ECDSA P-384 signature is about 102-104 bytes
        at = len(message) - length - 2
        if struct.unpack(">H", message[at : at + 2])[0] == length:
            return at
    raise AssertionError("no footer found")


@pytest.mark.parametrize("frame_length", [0, 4096])
@pytest.mark.parametrize("where", ["last-byte", "first-byte", "length"])
def test_tampered_signature_raises_before_the_end(frame_length: int, where: str) -> None:
    message = encrypt(PLAIN, frame_length=frame_length, suite=SIGNED)
    at = footer_at(message)
    position = {"last-byte": len(message) - 1, "first-byte": at + 2, "length": at + 1}[where]
    handed, error = consume(flip(message, position))
    if where == "length":  # the signature read is one byte off: short, or a byte too many
        assert isinstance(error, (InvalidSignature, SerializationError)), repr(error)
    else:
        assert isinstance(error, InvalidSignature), repr(error)
    assert handed <= len(PLAIN)


def test_signature_covers_the_body_even_when_every_tag_is_valid() -> None:
    """A body re-encrypted under the message's own data key, with a valid GCM tag: only the
    signature over the whole message can tell, and it is checked before the end."""
    message = encrypt(PLAIN, frame_length=0, suite=SIGNED)
    start, length = body_layout(message)
    stream = READER.stream(mode="d", source=io.BytesIO(message), materials_manager=MATERIALS)
    header = stream.header
    key, iv = stream._derived_data_key, stream._unframed_body_iv
    io.IOBase.close(stream)
    forged_plain = b"forged!" + PLAIN[7:]
    encryptor = Cipher(header.algorithm.encryption_algorithm(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(
        assemble_content_aad(
            message_id=header.message_id,
            aad_content_string=ContentAADString.NON_FRAMED_STRING_ID,
            seq_num=1,
            length=length,
        )
    )
    body = encryptor.update(forged_plain) + encryptor.finalize()
    forged = message[:start] + body + encryptor.tag + message[start + length + TAG :]
    handed, error = consume(forged)
    assert isinstance(error, InvalidSignature), repr(error)
    # Every tag was fine: the body came out (all but the piece still being joined when the
    # footer was read), and only the signature refused it, before the iterator ended.
    assert handed >= len(PLAIN) - 256 * 1024


@pytest.mark.parametrize("frame_length", [0, 4096])
@pytest.mark.parametrize("cut", [1, TAG, TAG + 1, 5000])
def test_truncated_message_raises_before_the_end(frame_length: int, cut: int) -> None:
    message = encrypt(PLAIN, frame_length=frame_length, suite=UNSIGNED)
    _, error = consume(message[:-cut])
    assert isinstance(error, (InvalidTag, SerializationError)), repr(error)  # EsdkBodyError is one


@pytest.mark.parametrize("suite", [SIGNED, UNSIGNED], ids=lambda s: s.name)
@pytest.mark.parametrize("frame_length", [0, 4096])
def test_bytes_after_the_message_are_refused(suite: AlgorithmSuite, frame_length: int) -> None:
    message = encrypt(PLAIN, frame_length=frame_length, suite=suite)
    _, error = consume(message + b"\x00")
    assert isinstance(error, EsdkBodyError) and "after the end" in str(error)


def test_frames_out_of_order_are_refused() -> None:
    frame = 4096
    message = encrypt(os.urandom(frame * 3 + 10), frame_length=frame, suite=UNSIGNED)
    stream = READER.stream(mode="d", source=io.BytesIO(message), materials_manager=MATERIALS)
    stream.header  # noqa: B018
    start = stream.source_stream.tell()
    io.IOBase.close(stream)
    size = 4 + 12 + frame + TAG  # sequence number, IV, content, tag
    first, second = message[start : start + size], message[start + size : start + 2 * size]
    swapped = message[:start] + second + first + message[start + 2 * size :]
    _, error = consume(swapped)
    assert isinstance(error, EsdkBodyError) and "frame 2 where frame 1 was due" in str(error)


def test_non_framed_and_framed_layouts_are_what_the_cli_writes() -> None:
    """``frame_length=0`` is a non-framed message (content type 1), as ``--frame-length 0``."""
    message = encrypt(b"abc", frame_length=0)
    stream = READER.stream(mode="d", source=io.BytesIO(message), materials_manager=MATERIALS)
    assert stream.header.content_type is ContentType.NO_FRAMING
    io.IOBase.close(stream)


def test_chunk_reader_reads_short_from_the_current_chunk_without_copying_whole_chunks() -> None:
    """The body reader's source: ``read(n)`` returns at most the rest of the current chunk."""
    first, second = b"a" * 10, b"b" * 10
    reader = ChunkReader(iter([first, b"", second]))
    assert reader.read(4) == b"aaaa"
    assert reader.read(100) == b"a" * 6  # short: the rest of the first chunk only
    whole = reader.read(10)
    assert whole == second and whole is second  # a whole chunk is handed on as it is
    assert reader.read(1) == b""
    assert ChunkReader(iter([first, second])).read() == first + second


def test_rechunk_passes_chunks_of_the_right_size_through() -> None:
    exact = b"x" * 8
    out = list(rechunk(iter([exact, b"y" * 5, b"z" * 11, exact]), size=8))
    assert out[0] is exact
    assert b"".join(out) == exact + b"y" * 5 + b"z" * 11 + exact
    assert [len(piece) for piece in out] == [8, 8, 8, 8]
