"""Decrypting deliveries through the real worker: envelope format and Encryption SDK."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import pytest

from egress.devstack.encrypt import envelope_encrypt, esdk_encrypt_stream, s3ec_encrypt
from tests.e2e.conftest import FLAG, Stack, WorkerProcess

PLAIN = os.urandom(3 * 1024 * 1024 + 123)  # several ESDK frames and CTR blocks, odd length


def esdk_message(stack: Stack, key_arn: str, data: bytes = PLAIN) -> bytes:
    out = io.BytesIO()
    esdk_encrypt_stream(stack.aws.kms, key_arn=key_arn, source=io.BytesIO(data), dest=out)
    return out.getvalue()


def envelope_object(stack: Stack, data: bytes = PLAIN) -> tuple[bytes, dict[str, str]]:
    metadata, chunks = envelope_encrypt(stack.aws.kms, key_id=stack.kms_key_arn, chunks=iter([data]))
    return b"".join(chunks), metadata


@pytest.mark.parametrize("transfer_type", ["S3", "SFT"])
def test_envelope_esdk_and_s3ec_objects_are_delivered_decrypted(
    stack: Stack, start_worker: Callable[..., WorkerProcess], transfer_type: str
) -> None:
    prefix = "secret/"
    route = (
        {"destination_bucket": stack.destination_bucket, "destination_prefix": "plain/"}
        if transfer_type == "S3"
        else {"destination_prefix": "plain"}
    )
    stack.put_route(
        source_prefix=prefix, pipeline_name="Dec", transfer_type=transfer_type, decrypt=True, **route
    )
    envelope_body, metadata = envelope_object(stack)
    assert envelope_body != PLAIN
    stack.upload(prefix + "envelope.csv.enc", envelope_body, Metadata=metadata)
    stack.upload(prefix + "nested/esdk.csv", esdk_message(stack, stack.kms_key_arn))
    wrapped_keys = []
    for version in ("v2", "v3"):
        body, s3ec_metadata = s3ec_encrypt(
            stack.aws.kms,
            key_arn=stack.kms_key_arn,
            data=PLAIN,
            version=version,
            encryption_context={"team": "warehouse"},
        )
        wrapped_keys.append(s3ec_metadata["x-amz-3" if version == "v3" else "x-amz-key-v2"])
        stack.upload(prefix + f"s3ec/{version}.csv", body, Metadata=s3ec_metadata)
    worker = start_worker()
    stack.upload(prefix + FLAG)
    worker.wait_for(lambda line: line.get("event") == "message_done", timeout=90)
    names = ["envelope.csv", "nested/esdk.csv", "s3ec/v2.csv", "s3ec/v3.csv"]
    for name in names:
        if transfer_type == "S3":
            got = stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key="plain/" + name)
            assert got["Body"].read() == PLAIN, name
            # decrypted objects do not carry the envelope metadata on
            assert "ciphertext" not in got.get("Metadata", {})
        else:
            assert (stack.sft_root / "plain" / name).read_bytes() == PLAIN, name
    # no key material or ciphertext blob in any log line
    log_text = worker.log_path.read_text()
    assert metadata["ciphertext"] not in log_text and metadata["iv"] not in log_text
    assert not [blob for blob in wrapped_keys if blob in log_text]
    assert worker.stop() == 0


def test_tampered_wrong_key_and_unknown_format_end_in_dlq(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    other_key = stack.aws.kms.create_key(Description="not allowed")["KeyMetadata"]["Arn"]
    message = bytearray(esdk_message(stack, stack.kms_key_arn))
    message[len(message) // 2] ^= 0x01  # one flipped bit in the body
    s3ec_body, s3ec_metadata = s3ec_encrypt(stack.aws.kms, key_arn=stack.kms_key_arn, data=PLAIN)
    cases = {
        "tampered/": ("data.bin", bytes(message), {}, "authentication_failed"),
        "wrongkey/": ("data.bin", esdk_message(stack, other_key), {}, "key_not_allowed"),
        "unknown/": ("data.bin", b"PK\x03\x04 a zip file", {"x-amz-key": "djE="}, "unknown_encryption"),
        "s3ectag/": (
            "data.bin",
            s3ec_body[:-1] + bytes([s3ec_body[-1] ^ 1]),
            s3ec_metadata,
            "authentication_failed",
        ),
    }
    for prefix, (name, body, metadata, _) in cases.items():
        stack.put_route(
            source_prefix=prefix,
            pipeline_name="Dec",
            transfer_type="S3",
            decrypt=True,
            destination_bucket=stack.destination_bucket,
            destination_prefix=prefix,
        )
        stack.put_route(
            source_prefix=prefix,
            pipeline_name="Dec#sft",
            transfer_type="SFT",
            decrypt=True,
            destination_prefix=prefix.rstrip("/"),
        )
        stack.upload(prefix + name, body, Metadata=metadata)
    worker = start_worker()
    for prefix in cases:
        stack.upload(prefix + FLAG)
    worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", count=len(cases), timeout=90)
    reasons = {}
    for dlq_message in stack.dlq_messages(wait=5):
        body = dlq_message["Body"]
        prefix = next(p for p in cases if p.rstrip("/") in body)
        reasons[prefix] = dlq_message["MessageAttributes"]["reason"]["StringValue"]
    assert reasons == {prefix: expected for prefix, (_, _, _, expected) in cases.items()}
    # nothing delivered, nothing partial
    assert stack.destination_keys() == []
    assert stack.aws.s3.list_multipart_uploads(Bucket=stack.destination_bucket).get("Uploads", []) == []
    assert worker.stop() == 0
    # (after the stop: a running worker's lock file under .egress/owners says it is alive)
    assert [p for p in stack.sft_root.rglob("*") if p.is_file()] == []
