"""Decryption against a real KMS API (the moto server): every format, tampering, keys, caching.

No KMS call is mocked: keys are created on the moto server and every wrap and unwrap
goes over HTTP to it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing
from aws_encryption_sdk.internal.formatting.deserialize import deserialize_header

from egress.aws import AwsClients, AwsConfig, build_clients
from egress.devstack.encrypt import envelope_encrypt, esdk_encrypt_stream, s3ec_encrypt
from egress.errors import PermanentError, Reason, RetryableError
from egress.streams import rechunk
from egress.transforms.decrypt import Decryptor
from egress.transforms.formats import EncryptionFormat, detect
from tests.conftest import REGION
from tests.support.ports import free_port

# Odd length, several ESDK frames (4 KiB default frame) and many CTR blocks.
PLAIN = os.urandom(1024 * 1024 + 4096 * 3 + 17)
CHUNK = 256 * 1024


def new_key(aws: AwsClients) -> str:
    return aws.kms.create_key(Description="egress test key")["KeyMetadata"]["Arn"]


def esdk_message(aws: AwsClients, key_arn: str, data: bytes = PLAIN) -> bytes:
    out = io.BytesIO()
    esdk_encrypt_stream(aws.kms, key_arn=key_arn, source=io.BytesIO(data), dest=out)
    return out.getvalue()


def envelope_object(aws: AwsClients, key_arn: str, data: bytes = PLAIN) -> tuple[dict[str, str], bytes]:
    metadata, body = envelope_encrypt(aws.kms, key_id=key_arn, chunks=iter([data]))
    return metadata, b"".join(body)


def pieces(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    return rechunk(iter([data]), size=size)


def decrypt_all(decryptor: Decryptor, body: bytes, metadata: dict[str, str] | None = None) -> bytes:
    return b"".join(
        decryptor.open(source="s3://src/obj", metadata=metadata or {}, chunks=pieces(body)).chunks
    )


def count_kms_decrypts(aws: AwsClients) -> list[str]:
    calls: list[str] = []

    def record(**kwargs: Any) -> None:
        calls.append(kwargs.get("model").name if kwargs.get("model") is not None else "Decrypt")

    aws.kms.meta.events.register("before-call.kms.Decrypt", record)
    return calls


@pytest.fixture()
def key_arn(aws: AwsClients) -> str:
    return new_key(aws)


def test_envelope_round_trip_byte_identical(aws: AwsClients, key_arn: str) -> None:
    metadata, body = envelope_object(aws, key_arn)
    assert body != PLAIN and len(body) == len(PLAIN)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    assert detect(metadata=metadata, head=body[:64]) is EncryptionFormat.ENVELOPE
    assert decrypt_all(decryptor, body, metadata) == PLAIN


def test_envelope_allowed_by_key_id_and_refused_by_empty_list(aws: AwsClients, key_arn: str) -> None:
    metadata, body = envelope_object(aws, key_arn)
    key_id = key_arn.rsplit("/", 1)[-1]
    assert decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_id]), body, metadata) == PLAIN
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[]), body, metadata)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED
    assert "EGRESS_KMS_KEY_ARNS is empty" in caught.value.detail


def test_esdk_multi_frame_round_trip_byte_identical(aws: AwsClients, key_arn: str) -> None:
    message = esdk_message(aws, key_arn)
    assert message[:1] == b"\x02" and PLAIN not in message
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=64 * 1024)
    assert detect(metadata={}, head=message[:4096]) is EncryptionFormat.ESDK
    chunks = list(decryptor.open(source="s3://src/obj", metadata={}, chunks=pieces(message)).chunks)
    assert b"".join(chunks) == PLAIN
    assert len(chunks) > 1  # streamed, not one object in memory


def test_esdk_plaintext_comes_in_pieces_of_the_chunk_size(aws: AwsClients, key_arn: str) -> None:
    """The ESDK is read in small steps (its read(n) is quadratic in n / frame length) and
    the plaintext joined again, so the destinations see chunk-sized pieces, not 64 KiB ones."""
    chunk_size = 256 * 1024
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=chunk_size)
    message = esdk_message(aws, key_arn)
    chunks = list(decryptor.open(source="s3://src/obj", metadata={}, chunks=pieces(message)).chunks)
    assert b"".join(chunks) == PLAIN
    assert len(chunks) == -(-len(PLAIN) // chunk_size)
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1]), [len(c) for c in chunks]


def test_esdk_empty_message(aws: AwsClients, key_arn: str) -> None:
    message = esdk_message(aws, key_arn, b"")
    assert decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), message) == b""


@pytest.mark.parametrize("where", ["frame", "last_byte"])
def test_tampered_esdk_message_fails_authentication(aws: AwsClients, key_arn: str, where: str) -> None:
    message = bytearray(esdk_message(aws, key_arn))
    position = len(message) // 2 if where == "frame" else len(message) - 1
    message[position] ^= 0x01
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    with pytest.raises(PermanentError) as caught:
        decrypt_all(decryptor, bytes(message))
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_esdk_message_fails_authentication(aws: AwsClients, key_arn: str, cut: int) -> None:
    message = esdk_message(aws, key_arn)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    with pytest.raises(PermanentError) as caught:
        decrypt_all(decryptor, message[:-cut])
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED


def test_esdk_under_a_key_not_allowed(aws: AwsClients, key_arn: str) -> None:
    other = new_key(aws)
    message = esdk_message(aws, other)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    with pytest.raises(PermanentError) as caught:
        decrypt_all(decryptor, message)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED
    assert "EGRESS_KMS_KEY_ARNS" in caught.value.detail


def test_esdk_without_configured_keys(aws: AwsClients, key_arn: str) -> None:
    message = esdk_message(aws, key_arn)
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[]), message)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED
    assert "no EGRESS_KMS_KEY_ARNS configured" in caught.value.detail


def test_esdk_kms_refusal_is_not_reported_as_key_not_allowed(aws: AwsClients, key_arn: str) -> None:
    """KMS refuses a corrupted data key; the ESDK hides why, the decryptor must not."""
    message = bytearray(esdk_message(aws, key_arn))
    header = deserialize_header(io.BytesIO(bytes(message)))[0]
    (edk,) = header.encrypted_data_keys
    at = bytes(message).index(edk.encrypted_data_key) + len(edk.encrypted_data_key) // 2
    message[at] ^= 0x01
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), bytes(message))
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED
    assert "KMS refused the data key (InvalidCiphertextException)" in caught.value.detail


@pytest.fixture()
def dead_kms(aws: AwsClients) -> AwsClients:
    """Clients whose endpoint nothing listens on: a real connection failure, no mock."""
    return build_clients(
        AwsConfig(
            region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=1
        )
    )


def test_unreachable_kms_is_retryable_for_both_formats(
    aws: AwsClients, dead_kms: AwsClients, key_arn: str
) -> None:
    metadata, body = envelope_object(aws, key_arn)
    message = esdk_message(aws, key_arn)
    decryptor = Decryptor(dead_kms.kms, allowed_key_arns=[key_arn])
    for payload, meta in ((body, metadata), (message, {})):
        with pytest.raises(RetryableError) as caught:
            decrypt_all(decryptor, payload, meta)
        assert caught.value.reason == Reason.KMS_UNAVAILABLE


def test_envelope_under_a_key_not_allowed(aws: AwsClients, key_arn: str) -> None:
    metadata, body = envelope_object(aws, new_key(aws))
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), body, metadata)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"ciphertext": "not base64!!"}, "not valid base64"),
        ({"iv": "not base64!!"}, "not valid base64"),
        ({"iv": base64.b64encode(b"short").decode()}, "iv is 5 bytes, not 16"),
        ({"ciphertext": base64.b64encode(os.urandom(180)).decode()}, "KMS refused the data key"),
    ],
)
def test_garbled_envelope_metadata_is_a_specific_permanent_error(
    aws: AwsClients, key_arn: str, change: dict[str, str], detail: str
) -> None:
    metadata, body = envelope_object(aws, key_arn)
    metadata.update(change)
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), body, metadata)
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED
    assert detail in caught.value.detail


def test_envelope_data_key_not_32_bytes(aws: AwsClients, key_arn: str) -> None:
    blob = aws.kms.encrypt(KeyId=key_arn, Plaintext=os.urandom(16))["CiphertextBlob"]
    metadata = {
        "datakeyencryptionkeyid": key_arn,
        "ciphertext": base64.b64encode(blob).decode(),
        "iv": base64.b64encode(os.urandom(16)).decode(),
    }
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), b"x" * 100, metadata)
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED
    assert "data key is 16 bytes, not 32" in caught.value.detail


def s3ec_object(
    aws: AwsClients, key_arn: str, version: str, context: dict[str, str] | None = None, data: bytes = PLAIN
) -> tuple[bytes, dict[str, str]]:
    return s3ec_encrypt(aws.kms, key_arn=key_arn, data=data, version=version, encryption_context=context)


def s3ec_decrypt(decryptor: Decryptor, body: bytes, metadata: dict[str, str]) -> list[bytes]:
    return list(
        decryptor.open(source="s3://src/obj", metadata=metadata, chunks=pieces(body), size=len(body)).chunks
    )


@pytest.mark.parametrize("context", [None, {"team": "warehouse", "run": "42"}])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_s3ec_round_trip_byte_identical(
    aws: AwsClients, key_arn: str, version: str, context: dict[str, str] | None
) -> None:
    body, metadata = s3ec_object(aws, key_arn, version, context)
    assert len(body) == len(PLAIN) + 16 and PLAIN[:64] not in body
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=64 * 1024)
    assert detect(metadata=metadata, head=body[:4096]) is EncryptionFormat.S3EC
    chunks = s3ec_decrypt(decryptor, body, metadata)
    assert b"".join(chunks) == PLAIN
    assert len(chunks) > 1  # streamed


def test_s3ec_object_uploaded_by_the_encryption_client_itself(
    aws: AwsClients, moto_endpoint: str, key_arn: str, unique: str
) -> None:
    """Interop through S3: the S3 Encryption Client's own put_object, read back raw."""
    import boto3
    from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
    from s3_encryption.materials.kms_keyring import KmsKeyring

    bucket = f"s3ec-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    # The client hooks the boto3 client it wraps: give it one of its own.
    producer_s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    producer_kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    # Small: on this moto server the client's put_object of bodies above ~100 KB reads back
    # with a failing GCM tag even through the client's own get_object.
    data = os.urandom(64 * 1024 + 5)
    producer = S3EncryptionClient(
        producer_s3, S3EncryptionClientConfig(keyring=KmsKeyring(producer_kms, key_arn))
    )
    producer.put_object(Bucket=bucket, Key="obj", Body=data, EncryptionContext={"team": "warehouse"})
    stored = aws.s3.get_object(Bucket=bucket, Key="obj")
    body, metadata = stored["Body"].read(), {k.lower(): v for k, v in stored["Metadata"].items()}
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    assert b"".join(s3ec_decrypt(decryptor, body, metadata)) == data


def test_s3ec_key_is_found_among_the_allowed_ones(aws: AwsClients, key_arn: str) -> None:
    body, metadata = s3ec_object(aws, key_arn, "v3")
    other = new_key(aws)
    assert (
        b"".join(s3ec_decrypt(Decryptor(aws.kms, allowed_key_arns=[other, key_arn]), body, metadata)) == PLAIN
    )
    with pytest.raises(PermanentError) as caught:
        s3ec_decrypt(Decryptor(aws.kms, allowed_key_arns=[other]), body, metadata)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED and "EGRESS_KMS_KEY_ARNS" in caught.value.detail
    with pytest.raises(PermanentError) as caught:
        s3ec_decrypt(Decryptor(aws.kms, allowed_key_arns=[]), body, metadata)
    assert caught.value.reason == Reason.KEY_NOT_ALLOWED


@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("where", ["body", "tag", "context", "truncated"])
def test_tampered_s3ec_object_fails_authentication(
    aws: AwsClients, key_arn: str, version: str, where: str
) -> None:
    body, metadata = s3ec_object(aws, key_arn, version, {"team": "warehouse"})
    tampered = bytearray(body)
    if where == "body":
        tampered[len(body) // 2] ^= 0x01
    elif where == "tag":
        tampered[-1] ^= 0x01
    elif where == "truncated":
        del tampered[-100:]
    else:
        name = "x-amz-t" if version == "v3" else "x-amz-matdesc"
        context = json.loads(metadata[name])
        context["team"] = "someone else"
        metadata = {**metadata, name: json.dumps(context)}
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    with pytest.raises(PermanentError) as caught:
        s3ec_decrypt(decryptor, bytes(tampered), metadata)
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED, caught.value.detail


def test_s3ec_legacy_unauthenticated_v1_is_refused_before_kms(aws: AwsClients, key_arn: str) -> None:
    metadata = {
        "x-amz-key": base64.b64encode(os.urandom(184)).decode(),
        "x-amz-iv": base64.b64encode(os.urandom(16)).decode(),
        "x-amz-wrap-alg": "kms",
        "x-amz-matdesc": json.dumps({"kms_cmk_id": key_arn}),
    }
    calls = count_kms_decrypts(aws)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    with pytest.raises(PermanentError) as caught:
        s3ec_decrypt(decryptor, os.urandom(1024), metadata)
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION and "legacy" in caught.value.detail
    assert calls == []


@pytest.mark.parametrize("body", [b"id,name\n1,alice\n", b"", b"\x02\x05\x78" + os.urandom(500)])
def test_plain_object_is_unknown_encryption(aws: AwsClients, key_arn: str, body: bytes) -> None:
    with pytest.raises(PermanentError) as caught:
        decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), body, {"owner": "team"})
    assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION
    assert "no envelope metadata and not an Encryption SDK message" in caught.value.detail


def test_open_names_each_format_and_passes_a_plain_object_through(aws: AwsClients, key_arn: str) -> None:
    """What a decrypt route records: the format found, and for a plain object its own bytes."""
    envelope_metadata, envelope_body = envelope_object(aws, key_arn)
    s3ec_body, s3ec_metadata = s3ec_object(aws, key_arn, "v3")
    asked: list[str] = []

    def no_instruction_file() -> bool:
        asked.append("instruction")
        return False

    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    cases = [
        (envelope_body, envelope_metadata, EncryptionFormat.ENVELOPE, PLAIN),
        (esdk_message(aws, key_arn), {}, EncryptionFormat.ESDK, PLAIN),
        (s3ec_body, s3ec_metadata, EncryptionFormat.S3EC, PLAIN),
        (PLAIN, {"owner": "team"}, EncryptionFormat.NONE, PLAIN),
    ]
    for body, metadata, fmt, expected in cases:
        opened = decryptor.open(
            source="s3://src/obj",
            metadata=metadata,
            chunks=pieces(body),
            size=len(body),
            instruction_file_exists=no_instruction_file,
        )
        assert opened.format is fmt
        assert b"".join(opened.chunks) == expected, fmt
    assert asked == ["instruction"]  # only the object with no marker at all


def test_envelope_data_key_cache_hits_and_expiry(aws: AwsClients, key_arn: str) -> None:
    metadata, body = envelope_object(aws, key_arn)
    now = [1000.0]
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], key_cache_seconds=60, clock=lambda: now[0])
    calls = count_kms_decrypts(aws)
    for _ in range(3):
        assert decrypt_all(decryptor, body, metadata) == PLAIN
    assert len(calls) == 1  # unwrapped once, then served from the cache
    now[0] += 61
    assert decrypt_all(decryptor, body, metadata) == PLAIN
    assert len(calls) == 2  # expired: unwrapped again
    other_metadata, other_body = envelope_object(aws, key_arn, b"other")
    assert decrypt_all(decryptor, other_body, other_metadata) == b"other"
    assert len(calls) == 3  # a different blob is a different entry


def test_envelope_data_key_cache_is_bounded(aws: AwsClients, key_arn: str) -> None:
    objects = [envelope_object(aws, key_arn, b"n%d" % n) for n in range(3)]
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], key_cache_size=2)
    calls = count_kms_decrypts(aws)
    for metadata, body in objects:
        decrypt_all(decryptor, body, metadata)
    decrypt_all(decryptor, objects[0][1], objects[0][0])  # evicted by the third
    assert len(calls) == 4


def test_esdk_uses_our_kms_client(aws: AwsClients, key_arn: str) -> None:
    message = esdk_message(aws, key_arn)
    calls = count_kms_decrypts(aws)
    assert decrypt_all(Decryptor(aws.kms, allowed_key_arns=[key_arn]), message) == PLAIN
    assert len(calls) == 1


def test_no_key_material_in_logs_or_errors(
    aws: AwsClients, key_arn: str, caplog: pytest.LogCaptureFixture
) -> None:
    metadata, body = envelope_object(aws, key_arn)
    message = esdk_message(aws, key_arn)
    decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn])
    data_key = aws.kms.decrypt(CiphertextBlob=base64.b64decode(metadata["ciphertext"]))["Plaintext"]
    # Everything ours and the ESDK's at DEBUG. (botocore's own DEBUG wire log prints KMS
    # responses, Plaintext included: an operator never runs it at DEBUG in production.)
    # Our own events go through structlog (capture_logs sees every one, whatever the
    # configured level: decrypt logs none today, a future one must not leak either);
    # the libraries' go through stdlib logging (caplog).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="aws_encryption_sdk")
    errors: list[str] = []
    with structlog.testing.capture_logs() as events:
        assert decrypt_all(decryptor, body, metadata) == PLAIN
        assert decrypt_all(decryptor, message) == PLAIN
        tampered = bytearray(message)
        tampered[-1] ^= 1
        with pytest.raises(PermanentError) as caught:
            decrypt_all(decryptor, bytes(tampered))
        errors.append(str(caught.value))
        bad = dict(metadata, iv=base64.b64encode(b"12345").decode())
        with pytest.raises(PermanentError) as caught:
            decrypt_all(decryptor, body, bad)
        errors.append(str(caught.value))
    text = caplog.text + "\n".join(errors) + "\n".join(repr(event) for event in events)
    secrets = [
        metadata["ciphertext"],
        metadata["iv"],
        data_key.hex(),
        base64.b64encode(data_key).decode(),
        repr(data_key),
        PLAIN[:32].hex(),
    ]
    for secret in secrets:
        assert secret not in text
