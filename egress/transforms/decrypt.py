"""Decryption on the way: the envelope-metadata format and AWS Encryption SDK messages.

Contract with the destinations: the plaintext iterator raises at the point where
authentication fails — for Encryption SDK messages possibly only at the very end (the
signature of a signed suite is checked last) — and a destination commits nothing
(no completed upload, no renamed file) before the iterator is exhausted. So nothing
unauthenticated ever becomes visible.

Unwrapped data keys live only in a small cache bounded in size and age; no key, IV,
ciphertext blob or plaintext is ever put in a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from itertools import chain
from typing import TYPE_CHECKING, Any

import aws_encryption_sdk
import boto3
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError, DecryptKeyError
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from egress.errors import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    KEY_NOT_ALLOWED,
    KMS_UNAVAILABLE,
    UNKNOWN_ENCRYPTION,
    PermanentError,
    RetryableError,
    error_code,
    translate_client_error,
)
from egress.streams import ChunkReader

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient


class EncryptionFormat(Enum):
    """What an object's metadata and first bytes say it is."""

    ENVELOPE = "envelope"
    ESDK = "esdk"
    S3EC = "s3ec"
    NONE = "none"


_ENVELOPE_KEYS = ("datakeyencryptionkeyid", "ciphertext", "iv")
# S3 Encryption Client metadata: v1/v2 and the key-committing v3 (compressed names).
_S3EC_KEYS = frozenset(
    {
        "x-amz-key",
        "x-amz-key-v2",
        "x-amz-cek-alg",
        "x-amz-wrap-alg",
        "x-amz-matdesc",
        "x-amz-tag-len",
        "x-amz-3",
        "x-amz-c",
        "x-amz-w",
        "x-amz-d",
        "x-amz-i",
        "x-amz-m",
        "x-amz-t",
    }
)
_ESDK_V1_SUITES = frozenset(s.algorithm_id for s in AlgorithmSuite if s.message_format_version == 1)
_ESDK_V2_SUITES = frozenset(s.algorithm_id for s in AlgorithmSuite if s.message_format_version == 2)
_KMS_AUTH_CODES = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)
_KMS_RETRY_CODES = frozenset(
    {"KMSInternalException", "DependencyTimeoutException", "KMSInvalidStateException"}
)


def decrypted_name(key: str) -> str:
    """The name of an object once decrypted: a trailing ``.enc`` dropped."""
    return key[:-4] if key.endswith(".enc") and len(key.rsplit("/", 1)[-1]) > 4 else key


def _strip_meta(metadata: Mapping[str, str]) -> dict[str, str]:
    prefix = "x-amz-meta-"
    return {
        (name.lower()[len(prefix) :] if name.lower().startswith(prefix) else name.lower()): value
        for name, value in metadata.items()
    }


def _key_id_matches(key_id: str, allowed: Sequence[str]) -> bool:
    return any(key_id == arn or key_id == arn.rsplit("/", 1)[-1] for arn in allowed)


class _DataKeyCache:
    """Unwrapped data keys by hash of (key id, blob): bounded in size and age."""

    def __init__(self, *, max_age: float, size: int, clock: Callable[[], float]) -> None:
        self._max_age = max_age
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: bytes) -> bytes | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or self._clock() - entry[0] > self._max_age:
                self._entries.pop(name, None)
                return None
            return entry[1]

    def put(self, name: bytes, key: bytes) -> None:
        with self._lock:
            self._entries[name] = (self._clock(), key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def _esdk_provider(kms: KMSClient, key_ids: Sequence[str]) -> StrictAwsKmsMasterKeyProvider:
    """A strict KMS master key provider whose clients use our endpoint and botocore config."""
    endpoint = kms.meta.endpoint_url
    config = kms.meta.config

    class _Provider(StrictAwsKmsMasterKeyProvider):
        def add_regional_client(self, region_name: str) -> None:
            # The ESDK would build a default client (no custom endpoint): build ours instead.
            if region_name not in self._regional_clients:
                client = boto3.session.Session().client(
                    "kms", region_name=region_name, endpoint_url=endpoint, config=config
                )
                self._register_client(client, region_name)
                self._regional_clients[region_name] = client

    return _Provider(key_ids=list(key_ids))


class Decryptor:
    """Recognises the encrypted formats and streams plaintext out of them."""

    def __init__(
        self,
        kms: KMSClient,
        *,
        allowed_key_arns: Sequence[str],
        key_cache_seconds: float = 300.0,
        key_cache_size: int = 256,
        chunk_size: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kms = kms
        self._allowed = tuple(allowed_key_arns)
        self._chunk_size = chunk_size
        self._keys = _DataKeyCache(max_age=key_cache_seconds, size=key_cache_size, clock=clock)
        self._esdk_client = aws_encryption_sdk.EncryptionSDKClient(
            # Committing suites are what current producers write; older messages without
            # commitment still decrypt, so existing archives stay readable.
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT,
            max_encrypted_data_keys=5,
        )
        self._esdk_materials: Any = None
        self._esdk_lock = threading.Lock()
        self._key_cache_seconds = key_cache_seconds
        self._key_cache_size = key_cache_size

    # -- detection ---------------------------------------------------------------------
    def detect(self, *, metadata: Mapping[str, str], head: bytes) -> EncryptionFormat:
        """Which format an object is in, from its user metadata and first bytes."""
        meta = _strip_meta(metadata)
        if all(name in meta for name in _ENVELOPE_KEYS):
            return EncryptionFormat.ENVELOPE
        if _S3EC_KEYS & set(meta):
            return EncryptionFormat.S3EC
        if len(head) >= 4 and head[:2] == b"\x01\x80" and int.from_bytes(head[2:4], "big") in _ESDK_V1_SUITES:
            return EncryptionFormat.ESDK
        if len(head) >= 3 and head[0] == 0x02 and int.from_bytes(head[1:3], "big") in _ESDK_V2_SUITES:
            return EncryptionFormat.ESDK
        return EncryptionFormat.NONE

    # -- decryption --------------------------------------------------------------------
    def decrypt(
        self, *, source: str, metadata: Mapping[str, str], chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        """Plaintext chunks of ``chunks``; raises the reason if the object cannot be trusted."""
        iterator = iter(chunks)
        head = b""
        for first in iterator:
            head = first
            if len(head) >= 4:
                break
            # A tiny first chunk: gather a few more bytes so detection sees a full header.
            head += b"".join(next(iterator, b"") for _ in range(3))
            break
        stream = chain([head], iterator) if head else iterator
        fmt = self.detect(metadata=metadata, head=head)
        if fmt is EncryptionFormat.ENVELOPE:
            return self._envelope(source, _strip_meta(metadata), stream)
        if fmt is EncryptionFormat.ESDK:
            return self._esdk(source, stream)
        if fmt is EncryptionFormat.S3EC:
            found = sorted(_S3EC_KEYS & set(_strip_meta(metadata)))
            version = (
                "v2"
                if "x-amz-key-v2" in found
                else ("v3" if "x-amz-3" in found or "x-amz-c" in found else "v1")
            )
            raise PermanentError(
                UNKNOWN_ENCRYPTION,
                f"{source}: S3 Encryption Client {version} object ({', '.join(found)}) is not supported; "
                "not delivered",
            )
        raise PermanentError(
            UNKNOWN_ENCRYPTION,
            f"{source}: no envelope metadata and not an Encryption SDK message; a decrypt route never "
            "delivers it as is",
        )

    def _envelope(self, source: str, meta: Mapping[str, str], chunks: Iterator[bytes]) -> Iterator[bytes]:
        key_id = meta["datakeyencryptionkeyid"]
        if self._allowed and not _key_id_matches(key_id, self._allowed):
            raise PermanentError(
                KEY_NOT_ALLOWED, f"{source}: data key wrapped by {key_id}, not in EGRESS_KMS_KEY_ARNS"
            )
        try:
            blob = base64.b64decode(meta["ciphertext"], validate=True)
            iv = base64.b64decode(meta["iv"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: envelope metadata is not valid base64"
            ) from exc
        if len(iv) != 16:
            raise PermanentError(AUTHENTICATION_FAILED, f"{source}: envelope iv is {len(iv)} bytes, not 16")
        data_key = self._unwrap(source, key_id, blob)
        decryptor = Cipher(algorithms.AES(data_key), modes.CTR(iv)).decryptor()
        return self._ctr_stream(decryptor, chunks)

    @staticmethod
    def _ctr_stream(decryptor: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
        buffer = bytearray()
        for chunk in chunks:
            # update_into a reused buffer: the fastest path (MEASURED.md), one copy out.
            if len(buffer) < len(chunk) + 15:
                buffer = bytearray(len(chunk) + 15)
            written = decryptor.update_into(chunk, buffer)
            yield bytes(buffer[:written])
        tail = decryptor.finalize()
        if tail:
            yield tail

    def _unwrap(self, source: str, key_id: str, blob: bytes) -> bytes:
        name = hashlib.sha256(key_id.encode() + b"\x00" + blob).digest()
        cached = self._keys.get(name)
        if cached is not None:
            return cached
        try:
            response = self._kms.decrypt(CiphertextBlob=blob, KeyId=key_id)
        except ClientError as exc:
            code = error_code(exc)
            if code in _KMS_AUTH_CODES:
                raise PermanentError(
                    AUTHENTICATION_FAILED, f"{source}: KMS refused the data key ({code})"
                ) from exc
            if code in _KMS_RETRY_CODES:
                raise RetryableError(KMS_UNAVAILABLE, f"{source}: KMS {code}") from exc
            error = translate_client_error(exc, doing=f"unwrapping the data key of {source}")
            if isinstance(error, RetryableError):
                raise RetryableError(KMS_UNAVAILABLE, error.detail) from exc
            raise error from exc
        except BotoCoreError as exc:
            raise RetryableError(
                KMS_UNAVAILABLE, f"{source}: KMS unreachable ({type(exc).__name__})"
            ) from exc
        data_key = bytes(response["Plaintext"])
        if len(data_key) != 32:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: data key is {len(data_key)} bytes, not 32"
            )
        self._keys.put(name, data_key)
        return data_key

    def _materials(self) -> Any:
        with self._esdk_lock:
            if self._esdk_materials is None:
                from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
                from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager

                self._esdk_materials = CachingCryptoMaterialsManager(
                    master_key_provider=_esdk_provider(self._kms, self._allowed),
                    cache=LocalCryptoMaterialsCache(capacity=self._key_cache_size),
                    max_age=float(self._key_cache_seconds),
                )
            return self._esdk_materials

    def _esdk(self, source: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        if not self._allowed:
            raise PermanentError(
                KEY_NOT_ALLOWED, f"{source}: Encryption SDK message but no EGRESS_KMS_KEY_ARNS configured"
            )
        materials = self._materials()
        try:
            with self._esdk_client.stream(
                mode="d", source=ChunkReader(chunks), materials_manager=materials
            ) as stream:
                while True:
                    piece = stream.read(self._chunk_size)
                    if not piece:
                        break
                    yield piece
        except DecryptKeyError as exc:
            raise PermanentError(
                KEY_NOT_ALLOWED, f"{source}: no data key of the message is wrapped by an allowed KMS key"
            ) from exc
        except (InvalidTag, InvalidSignature) as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: authentication failed ({type(exc).__name__})"
            ) from exc
        except ClientError as exc:
            code = error_code(exc)
            if code in _KMS_AUTH_CODES:
                raise PermanentError(
                    AUTHENTICATION_FAILED, f"{source}: KMS refused the data key ({code})"
                ) from exc
            error = translate_client_error(exc, doing=f"decrypting {source}")
            if isinstance(error, RetryableError):
                raise RetryableError(KMS_UNAVAILABLE, error.detail) from exc
            if error.reason == ACCESS_DENIED:
                raise error from exc
            raise PermanentError(AUTHENTICATION_FAILED, f"{source}: {error.detail}") from exc
        except BotoCoreError as exc:
            raise RetryableError(
                KMS_UNAVAILABLE, f"{source}: KMS unreachable ({type(exc).__name__})"
            ) from exc
        except AWSEncryptionSDKClientError as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: not a valid Encryption SDK message ({type(exc).__name__})"
            ) from exc
