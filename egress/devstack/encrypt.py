"""The producers' side of the encrypted formats (envelope, Encryption SDK, S3 Encryption Client),
for ``egress local publish --encrypt``, tests and benchmarks. The worker only ever decrypts."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import CommitmentPolicy
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from egress.transforms.esdk import esdk_provider

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient


def envelope_encrypt(
    kms: KMSClient, *, key_id: str, chunks: Iterator[bytes]
) -> tuple[dict[str, str], Iterator[bytes]]:
    """Encrypt a chunk stream in the envelope format; returns the S3 user metadata and ciphertext.

    A fresh 256-bit data key from KMS ``GenerateDataKey`` encrypts the body with
    AES-256-CTR; the metadata carries the KMS-wrapped key, the IV and the key id.
    """
    response = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(bytes(response["Plaintext"])), modes.CTR(iv)).encryptor()
    metadata = {
        "datakeyencryptionkeyid": response["KeyId"],
        "ciphertext": base64.b64encode(response["CiphertextBlob"]).decode("ascii"),
        "iv": base64.b64encode(iv).decode("ascii"),
    }

    def body() -> Iterator[bytes]:
        for chunk in chunks:
            yield encryptor.update(chunk)
        tail = encryptor.finalize()
        if tail:
            yield tail

    return metadata, body()


def esdk_encrypt_stream(kms: KMSClient, *, key_arn: str, source: BinaryIO, dest: BinaryIO) -> None:
    """Write an AWS Encryption SDK message of ``source`` to ``dest`` (default, signed suite)."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    with client.stream(mode="e", source=source, key_provider=esdk_provider(kms, [key_arn])) as encryptor:
        for piece in encryptor:
            dest.write(piece)


def s3ec_encrypt(
    kms: KMSClient,
    *,
    key_arn: str,
    data: bytes,
    version: str = "v3",
    encryption_context: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An S3 Encryption Client object of ``data``: its body and the S3 user metadata.

    Encrypted by the S3 Encryption Client library itself (its put pipeline, in memory):
    ``v3`` is the key-committing format current clients write by default, ``v2`` the
    AES-GCM one most archives hold.
    """
    from s3_encryption.materials.crypto_materials_manager import DefaultCryptoMaterialsManager
    from s3_encryption.materials.kms_keyring import KmsKeyring
    from s3_encryption.materials.materials import AlgorithmSuite
    from s3_encryption.pipelines import PutEncryptedObjectPipeline

    suites = {
        "v3": AlgorithmSuite.ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
        "v2": AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
    }
    if version not in suites:
        raise ValueError(f"unknown S3 Encryption Client version {version!r}; known: v2, v3")
    pipeline = PutEncryptedObjectPipeline(
        DefaultCryptoMaterialsManager(KmsKeyring(kms, key_arn)), suites[version]
    )
    body, metadata = pipeline.encrypt(data, encryption_context)
    return bytes(body), dict(metadata)
