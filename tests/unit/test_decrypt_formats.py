"""Format detection and the envelope round trip over any size and any chunking."""

from __future__ import annotations

import io
import json
import os

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.aws import AwsClients
from egress.devstack.encrypt import envelope_encrypt, esdk_encrypt_stream
from egress.errors import PermanentError, Reason
from egress.plan import decrypted_name
from egress.streams import rechunk
from egress.transforms.decrypt import Decryptor
from egress.transforms.esdk import esdk_provider, looks_like_esdk
from egress.transforms.formats import EncryptionFormat, classify, detect

ENVELOPE_META = {"datakeyencryptionkeyid": "k", "ciphertext": "Y2lwaGVy", "iv": "aXY="}


@pytest.fixture(scope="module")
def detector() -> Decryptor:
    return Decryptor(None, allowed_key_arns=[])  # type: ignore[arg-type]  # detection never calls KMS


@pytest.fixture()
def key_arn(aws: AwsClients) -> str:
    return aws.kms.create_key()["KeyMetadata"]["Arn"]


def esdk_message(aws: AwsClients, key_arn: str, data: bytes, suite: AlgorithmSuite | None = None) -> bytes:
    if suite is None:
        out = io.BytesIO()
        esdk_encrypt_stream(aws.kms, key_arn=key_arn, source=io.BytesIO(data), dest=out)
        return out.getvalue()
    # A legacy (format v1, non-committing) message, as older producers wrote them.
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    message, _ = client.encrypt(source=data, key_provider=esdk_provider(aws.kms, [key_arn]), algorithm=suite)
    return bytes(message)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("a/b/data.csv.enc", "a/b/data.csv"),
        ("data.csv", "data.csv"),
        ("a/.enc", "a/.enc"),
        ("a/b.enc/c", "a/b.enc/c"),
        ("x.ENC", "x.ENC"),
        ("x.enc.gz", "x.enc.gz"),
    ],
)
def test_decrypted_name(key: str, name: str) -> None:
    assert decrypted_name(key) == name


def test_metadata_decides_before_bytes() -> None:
    assert detect(metadata=ENVELOPE_META, head=b"") is EncryptionFormat.ENVELOPE
    # as boto3 returns it (lower-cased, prefix stripped) or with the header prefix
    prefixed = {f"X-Amz-Meta-{k.title()}": v for k, v in ENVELOPE_META.items()}
    assert detect(metadata=prefixed, head=b"") is EncryptionFormat.ENVELOPE
    partial = {"datakeyencryptionkeyid": "k", "iv": "aXY="}
    assert detect(metadata=partial, head=b"plain") is EncryptionFormat.NONE


@pytest.mark.parametrize(
    "metadata",
    [
        {
            "x-amz-key-v2": "a",
            "x-amz-iv": "b",
            "x-amz-cek-alg": "AES/GCM/NoPadding",
            "x-amz-wrap-alg": "kms+context",
        },
        {"x-amz-key": "a", "x-amz-iv": "b", "x-amz-matdesc": "{}"},
        {"x-amz-c": "115", "x-amz-3": "blob", "x-amz-w": "12", "x-amz-d": "c", "x-amz-i": "i"},
    ],
)
def test_s3_encryption_client_metadata(metadata: dict[str, str]) -> None:
    assert detect(metadata=metadata, head=b"\x02\x05\x78") is EncryptionFormat.S3EC


def test_real_esdk_headers_are_recognised(aws: AwsClients, key_arn: str) -> None:
    v2 = esdk_message(aws, key_arn, b"hello")
    v1 = esdk_message(aws, key_arn, b"hello", AlgorithmSuite.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384)
    v1_unsigned = esdk_message(aws, key_arn, b"hello", AlgorithmSuite.AES_256_GCM_IV12_TAG16_HKDF_SHA256)
    for message, version in ((v2, 2), (v1, 1), (v1_unsigned, 1)):
        assert message[0] == version
        assert detect(metadata={}, head=message) is EncryptionFormat.ESDK
        assert looks_like_esdk(message[:400])
        # cut inside the header: not enough to call it a message
        assert not looks_like_esdk(message[:30])


def test_legacy_non_committing_messages_still_decrypt(aws: AwsClients, key_arn: str) -> None:
    data = os.urandom(10_000)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    for suite in (
        AlgorithmSuite.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384,
        AlgorithmSuite.AES_256_GCM_IV12_TAG16,
    ):
        message = esdk_message(aws, key_arn, data, suite)
        assert b"".join(decryptor.open(source="s3://b/k", metadata={}, chunks=iter([message])).chunks) == data


@settings(max_examples=300, deadline=None)
@given(
    first=st.sampled_from([b"\x01", b"\x02", b"\x01\x80"]),
    suite=st.sampled_from([s.algorithm_id for s in AlgorithmSuite]),
    rest=st.binary(min_size=0, max_size=2000),
)
def test_random_bytes_that_start_like_esdk_are_not_taken_for_it(
    first: bytes, suite: int, rest: bytes
) -> None:
    head = first + suite.to_bytes(2, "big") + rest
    assert detect(metadata={}, head=head) is EncryptionFormat.NONE


@pytest.mark.parametrize("seed", range(20))
def test_large_random_heads_starting_like_esdk(seed: int) -> None:
    rng = __import__("random").Random(seed)
    rest = rng.randbytes(256 * 1024)
    for prefix in (b"\x02\x05\x78", b"\x02\x04\x78", b"\x01\x80\x03\x78", b"\x01\x80\x00\x14"):
        assert detect(metadata={}, head=prefix + rest) is EncryptionFormat.NONE


@pytest.mark.parametrize("head", [b"", b"\x00", b"PK\x03\x04", b"\x1f\x8b\x08", b"id,name\n"])
def test_common_plain_heads(head: bytes) -> None:
    assert detect(metadata={"content-type": "text/csv"}, head=head) is EncryptionFormat.NONE


def test_plain_object_is_refused_where_the_caller_needs_it_encrypted(detector: Decryptor) -> None:
    with pytest.raises(PermanentError) as caught:
        list(detector.open(source="s3://b/k", metadata={}, chunks=iter([b"a,b\n", b"1,2\n"])).chunks)
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION


def no_instruction_file() -> bool:
    return False


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), size=st.integers(1, 700))
def test_plain_object_passes_through_a_decrypt_route_byte_identical(
    detector: Decryptor, data: bytes, size: int
) -> None:
    decrypted = detector.open(
        source="s3://b/plain.csv",
        metadata={"owner": "team"},
        chunks=rechunk(iter([data]), size=size),
        instruction_file_exists=no_instruction_file,
    )
    assert decrypted.format is EncryptionFormat.NONE and decrypted.format.value == "none"
    assert b"".join(decrypted.chunks) == data


def test_the_instruction_file_is_asked_for_only_when_nothing_else_marks_the_object() -> None:
    asked: list[bool] = []

    def exists() -> bool:
        asked.append(True)
        return False

    for metadata in (ENVELOPE_META, {"x-amz-key-v2": "a", "x-amz-cek-alg": "AES/GCM/NoPadding"}):
        fmt = classify(source="s3://b/k", metadata=metadata, head=b"", instruction_file_exists=exists)
        assert fmt is not EncryptionFormat.NONE
    assert asked == []
    assert (
        classify(source="s3://b/k", metadata={}, head=b"id\n", instruction_file_exists=exists)
        is EncryptionFormat.NONE
    )
    assert asked == [True]


def test_an_object_whose_metadata_is_in_an_instruction_file_is_unknown_encryption(
    detector: Decryptor,
) -> None:
    with pytest.raises(PermanentError) as caught:
        detector.open(
            source="s3://b/data.bin",
            metadata={},
            chunks=iter([b"\x8a\x11 ciphertext"]),
            instruction_file_exists=lambda: True,
        )
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION
    assert "s3://b/data.bin.instruction" in caught.value.detail


def test_an_instruction_file_itself_is_unknown_encryption_and_other_json_passes() -> None:
    body = json.dumps({"x-amz-key-v2": "AQID", "x-amz-iv": "BAU=", "x-amz-cek-alg": "AES/GCM/NoPadding"})
    with pytest.raises(PermanentError) as caught:
        classify(
            source="s3://b/data.bin.instruction",
            metadata={},
            head=body.encode(),
            instruction_file_exists=no_instruction_file,
        )
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION and "instruction file" in caught.value.detail
    for source, head in (("s3://b/notes.instruction", b'{"step": 1}'), ("s3://b/data.json", body.encode())):
        fmt = classify(source=source, metadata={}, head=head, instruction_file_exists=no_instruction_file)
        assert fmt is EncryptionFormat.NONE, source


@pytest.mark.parametrize(
    "metadata",
    [
        {"x-amz-key-v3": "a"},
        {"x-amz-iv": "b"},
        {"x-amz-unencrypted-content-length": "10"},
        {"X-Amz-Key": "a"},
    ],
)
def test_any_s3_encryption_client_marker_is_refused_on_a_decrypt_route(metadata: dict[str, str]) -> None:
    assert detect(metadata=metadata, head=b"plain") is EncryptionFormat.S3EC


def test_envelope_data_key_needs_envelope_metadata(detector: Decryptor) -> None:
    with pytest.raises(PermanentError) as caught:
        detector.envelope_data_key(source="s3://b/k", metadata={"iv": "aXY="})
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION
    assert "datakeyencryptionkeyid, ciphertext missing" in caught.value.detail


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.one_of(st.integers(0, 40), st.integers(0, 300_000)),
    in_chunk=st.integers(1, 70_000),
    out_chunk=st.integers(1, 100_000),
)
def test_envelope_round_trip_any_size_and_chunking(
    aws: AwsClients, key_arn: str, size: int, in_chunk: int, out_chunk: int
) -> None:
    data = os.urandom(size)
    metadata, body = envelope_encrypt(aws.kms, key_id=key_arn, chunks=rechunk(iter([data]), size=in_chunk))
    ciphertext = b"".join(body)
    assert len(ciphertext) == size and (size < 16 or ciphertext != data)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    chunks = list(
        decryptor.open(
            source="s3://b/k", metadata=metadata, chunks=rechunk(iter([ciphertext]), size=out_chunk)
        ).chunks
    )
    assert b"".join(chunks) == data
    assert all(isinstance(chunk, bytes) for chunk in chunks)
