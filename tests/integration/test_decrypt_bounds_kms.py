"""Large Encryption SDK bodies and the fail-closed key allow-list, against KMS on the moto server.

Non-framed messages (``frame_length=0``, as ``aws-encryption-cli --frame-length 0``
writes) and messages with frames larger than the memory budget are decrypted by the
:class:`~egress.transforms.decrypt.Decryptor` with a few chunks in memory, and a tampered
one leaves nothing behind in the real destinations: no file and no temp file in the SFT
folder, no object and no open multipart upload in S3.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy

from egress.aws import AwsClients
from egress.destinations.s3 import S3Destination, S3Target, TransferConfig
from egress.destinations.sft import SftDestination
from egress.devstack.encrypt import envelope_encrypt
from egress.errors import PermanentError, Reason
from egress.streams import rechunk
from egress.transforms.decrypt import Decryptor
from egress.transforms.esdk import esdk_provider
from tests.conftest import REGION

MIB = 1024 * 1024
SIGNED = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384  # the default suite
UNSIGNED = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY


def esdk_message(
    aws: AwsClients, key_arn: str, data: bytes, *, frame_length: int, suite: AlgorithmSuite = SIGNED
) -> bytes:
    """A message written by the library under a KMS key of the moto server."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    message, _ = client.encrypt(
        source=data,
        key_provider=esdk_provider(aws.kms, [key_arn]),
        frame_length=frame_length,
        algorithm=suite,
    )
    return bytes(message)


def pieces(data: bytes, size: int = MIB) -> Iterator[bytes]:
    return rechunk(iter([data]), size=size)


def count_kms_decrypts(aws: AwsClients) -> list[str]:
    calls: list[str] = []
    aws.kms.meta.events.register("before-call.kms.Decrypt", lambda **_: calls.append("Decrypt"))
    return calls


@pytest.fixture()
def key_arn(aws: AwsClients) -> str:
    return aws.kms.create_key(Description="egress bounds test")["KeyMetadata"]["Arn"]


@pytest.mark.parametrize(
    ("size", "frame_length"), [(48 * MIB, 0), (20 * MIB, 16 * MIB)], ids=["non-framed-48MiB", "16MiB-frames"]
)
def test_large_bodies_are_decrypted_with_a_few_chunks_in_memory(
    aws: AwsClients, key_arn: str, size: int, frame_length: int
) -> None:
    """The library reads a whole non-framed body or frame before its first byte: 48 MiB
    message peaked at ~97 MiB in the worker. Now: a few 1 MiB chunks, and the first
    plaintext comes out after a few MiB of input."""
    data = os.urandom(size)
    message = esdk_message(aws, key_arn, data, frame_length=frame_length)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=MIB)
    consumed = [0]

    def source() -> Iterator[bytes]:
        view = memoryview(message)
        for at in range(0, len(message), MIB):
            consumed[0] = at + MIB
            yield bytes(view[at : at + MIB])

    digest = hashlib.sha256()
    first_after: int | None = None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in decryptor.open(
            source="s3://src/big", metadata={}, chunks=source(), size=len(message)
        ).chunks:
            if first_after is None:
                first_after = consumed[0]
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(data).digest()
    # tracemalloc also counts the in-process moto server answering KMS meanwhile: the bound
    # leaves room for it (the library's own path held 34 MiB for 16 MiB frames, 97 for 48 MiB).
    assert peak < 24 * MIB, f"{peak / MIB:.1f} MiB held for a {size // MIB} MiB message"
    assert first_after is not None and first_after <= 4 * MIB


def body_tamperings(message: bytes, body_length: int, *, signed: bool) -> dict[str, bytes]:
    """A non-framed message changed in each of its parts (the body is followed by its tag,
    then, for a signed suite, the footer: a 2-byte length and the signature)."""
    footer = 0
    if signed:
        for length in range(110, 60, -1):
            if int.from_bytes(message[-length - 2 : -length], "big") == length:
                footer = length + 2
                break
    tag_end = len(message) - footer
    body_start = tag_end - 16 - body_length
    iv_end = body_start - 8

    def flipped(at: int) -> bytes:
        changed = bytearray(message)
        changed[at] ^= 0x01
        return bytes(changed)

    cases = {
        "body": flipped(body_start + body_length // 2),
        "tag": flipped(tag_end - 1),
        "iv": flipped(iv_end - 1),
        "truncated": message[:-1],
        "trailing-bytes": message + b"\x00",
    }
    if signed:
        cases["signature"] = flipped(len(message) - 1)
    return cases


@pytest.mark.parametrize("suite", [SIGNED, UNSIGNED], ids=["signed", "unsigned"])
def test_tampered_non_framed_message_is_refused_as_authentication_failed(
    aws: AwsClients, key_arn: str, suite: AlgorithmSuite
) -> None:
    data = os.urandom(3 * MIB + 5)
    message = esdk_message(aws, key_arn, data, frame_length=0, suite=suite)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=256 * 1024)
    assert b"".join(decryptor.open(source="s3://src/ok", metadata={}, chunks=pieces(message)).chunks) == data
    for where, tampered in body_tamperings(message, len(data), signed=suite is SIGNED).items():
        with pytest.raises(PermanentError) as caught:
            for _ in decryptor.open(source="s3://src/bad", metadata={}, chunks=pieces(tampered)).chunks:
                pass
        assert caught.value.reason == Reason.AUTHENTICATION_FAILED, (where, caught.value.detail)
        if where == "trailing-bytes":
            assert "bytes after the end of the message" in caught.value.detail


def test_tampered_non_framed_message_leaves_nothing_in_the_sft_folder(
    aws: AwsClients, key_arn: str, tmp_path: Path
) -> None:
    """The plaintext streams into the hidden temp file before the tag is checked; the bad
    tag raises before the stream ends, so the temp file is removed and nothing is renamed."""
    data = os.urandom(12 * MIB + 3)
    message = esdk_message(aws, key_arn, data, frame_length=0)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=MIB)
    sft = SftDestination(tmp_path / "sft", free_space_margin_bytes=0, fsync=False)
    seen_during: list[list[str]] = []

    def watched(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            seen_during.append(sorted(p.name for p in (tmp_path / "sft").rglob("*") if p.is_file()))
            yield chunk

    for where, tampered in body_tamperings(message, len(data), signed=True).items():
        plaintext = decryptor.open(source="s3://src/bad", metadata={}, chunks=pieces(tampered)).chunks
        with pytest.raises(PermanentError) as caught:
            sft.write("out/data.csv", watched(plaintext))
        assert caught.value.reason == Reason.AUTHENTICATION_FAILED, where
        assert [p for p in (tmp_path / "sft").rglob("*") if p.is_file() and "owners" not in p.parts] == [], (
            where
        )
    # While the plaintext streamed, only the hidden temp name existed (the agent skips it).
    assert any(seen_during), "the body was not streamed into the temp file"
    assert all(name.startswith(".") and name.endswith(".part") for names in seen_during for name in names)
    delivered = sft.write(
        "out/data.csv", decryptor.open(source="s3://src/ok", metadata={}, chunks=pieces(message)).chunks
    )
    assert (tmp_path / "sft" / "out" / "data.csv").read_bytes() == data
    assert delivered.sha256 == hashlib.sha256(data).hexdigest()


def test_tampered_non_framed_message_leaves_no_object_and_no_upload(
    aws: AwsClients, key_arn: str, unique: str
) -> None:
    bucket = f"bounds-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    data = os.urandom(12 * MIB + 3)  # three 5 MiB parts: a multipart upload is open when the tag fails
    message = esdk_message(aws, key_arn, data, frame_length=0)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=MIB)
    uploader = S3Destination(aws.s3, config=TransferConfig(part_size=5 * MIB, max_parts_in_flight=2))
    started: list[str] = []
    for where in ("tag", "signature"):
        tampered = body_tamperings(message, len(data), signed=True)[where]
        plaintext = decryptor.open(source="s3://src/bad", metadata={}, chunks=pieces(tampered)).chunks
        with pytest.raises(PermanentError) as caught:
            uploader.upload(S3Target(bucket, "out/data.csv"), plaintext, on_upload_started=started.append)
        assert caught.value.reason == Reason.AUTHENTICATION_FAILED, where
    assert len(started) == 2  # the parts were on their way...
    assert aws.s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []  # ...and nothing is visible
    assert aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_envelope_object_with_an_empty_allow_list_is_refused_before_kms(
    aws: AwsClients, key_arn: str
) -> None:
    """Fail closed, like the other formats: no EGRESS_KMS_KEY_ARNS, no envelope object decrypted.

    The key id is the object's own metadata, so an empty list used to let any key that
    the worker's role may use decrypt anything."""
    metadata, body = envelope_encrypt(aws.kms, key_id=key_arn, chunks=iter([b"secret,rows\n"]))
    ciphertext = b"".join(body)
    calls = count_kms_decrypts(aws)
    with pytest.raises(PermanentError) as caught:
        list(
            Decryptor(aws.kms, allowed_key_arns=[])
            .open(source="s3://src/e", metadata=metadata, chunks=iter([ciphertext]))
            .chunks
        )
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED
    assert "EGRESS_KMS_KEY_ARNS is empty" in caught.value.detail
    assert calls == []  # refused before any KMS call
    # The same object decrypts once its key is allowed (by ARN or by key id).
    for allowed in (key_arn, key_arn.rsplit("/", 1)[-1]):
        decryptor = Decryptor(aws.kms, allowed_key_arns=[allowed])
        assert b"".join(
            decryptor.open(source="s3://src/e", metadata=metadata, chunks=iter([ciphertext])).chunks
        ) == (b"secret,rows\n")
