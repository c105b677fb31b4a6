"""Decryption on the way: the envelope-metadata format, AWS Encryption SDK messages and
S3 Encryption Client objects (v2 and the key-committing v3).

Contract with the destinations: the plaintext iterator raises at the point where
authentication fails — at the end of a GCM-protected frame or block, for an Encryption
SDK message possibly only at the very end (the signature of a signed suite is checked
last) — and a destination commits nothing (no completed upload, no renamed file) before
the iterator is exhausted. So nothing unauthenticated ever becomes visible, and no
format needs more than a few chunks in memory, whatever its frame or block size.

Every format fails closed: with no key in EGRESS_KMS_KEY_ARNS nothing is decrypted.

Unwrapped data keys live only in a small cache bounded in size and age; no key, IV,
ciphertext blob or plaintext is ever put in a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import aws_encryption_sdk
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError, DecryptKeyError
from aws_encryption_sdk.identifiers import (
    CommitmentPolicy,
)
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from s3_encryption.exceptions import S3EncryptionClientError, S3EncryptionClientSecurityError
from s3_encryption.instruction_file_config import InstructionFileConfig
from s3_encryption.materials.crypto_materials_manager import DefaultCryptoMaterialsManager
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import CommitmentPolicy as S3ecCommitmentPolicy
from s3_encryption.pipelines import GetEncryptedObjectPipeline

from egress.errors import (
    EgressError,
    PermanentError,
    Reason,
    RetryableError,
    error_code,
    translate_client_error,
)
from egress.streams import ChunkReader
from egress.transforms.esdk import (
    EsdkBodyError,
    esdk_plaintext,
    esdk_provider,
    recorded_kms_failures,
)
from egress.transforms.formats import (
    ENVELOPE_KEYS,
    HEAD_BYTES,
    EncryptionFormat,
    classify,
    detect,
    strip_meta,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient


@dataclass(frozen=True)
class Decrypted:
    """An object's format and its plaintext chunks (its own bytes when it is ``NONE``)."""

    format: EncryptionFormat
    chunks: Iterator[bytes]


# KMS refusing a ciphertext because it was wrapped by another key than the one named.
_S3EC_OTHER_KEY_CODES = frozenset({"IncorrectKeyException", "AccessDeniedException"})
# Keys the S3 Encryption Client puts in the encryption context itself.
_S3EC_RESERVED_CONTEXT = frozenset({"aws:x-amz-cek-alg", "kms_cmk_id"})
_KMS_AUTH_CODES = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)
_KMS_RETRY_CODES = frozenset(
    {"KMSInternalException", "DependencyTimeoutException", "KMSInvalidStateException"}
)


def _key_id_matches(key_id: str, allowed: Sequence[str]) -> bool:
    """Whether a key named by ARN or bare key id is one of ``allowed`` (ARNs or key ids).

    Two full ARNs must be equal; otherwise the key ids (the last path segment) are compared.
    """
    for entry in allowed:
        if key_id == entry:
            return True
        if key_id.startswith("arn:") and entry.startswith("arn:"):
            continue
        if key_id.rsplit("/", 1)[-1] == entry.rsplit("/", 1)[-1] and "alias/" not in key_id + entry:
            return True
    return False


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
        self._s3ec_pipelines: dict[str, GetEncryptedObjectPipeline] = {}
        self._s3ec_lock = threading.Lock()
        self._key_cache_seconds = key_cache_seconds
        self._key_cache_size = key_cache_size

    # -- decryption --------------------------------------------------------------------
    def open(
        self,
        *,
        source: str,
        metadata: Mapping[str, str],
        chunks: Iterator[bytes],
        size: int | None = None,
        instruction_file_exists: Callable[[], bool] | None = None,
    ) -> Decrypted:
        """The object's format and plaintext, for a decrypt route; raises the reason if it cannot be trusted.

        With ``instruction_file_exists`` (:func:`.formats.classify`) an object with no marker of any
        format passes through as it is (``NONE``), as the replaced system delivered it;
        without, it is ``unknown_encryption`` (for callers that require an encrypted object).
        ``size`` is the object's length: S3 Encryption Client objects need it to find their
        trailing tag.
        """
        iterator = iter(chunks)
        # Peek: gather the first few KiB (usually the first chunk alone) for detection,
        # then yield them again ahead of the rest.
        pieces: list[bytes] = []
        gathered = 0
        for piece in iterator:
            pieces.append(piece)
            gathered += len(piece)
            if gathered >= HEAD_BYTES:
                break
        head = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        stream = chain([head], iterator) if head else iterator
        if instruction_file_exists is None:
            fmt = detect(metadata=metadata, head=head)
        else:
            fmt = classify(
                source=source, metadata=metadata, head=head, instruction_file_exists=instruction_file_exists
            )
        if fmt is EncryptionFormat.ENVELOPE:
            return Decrypted(fmt, self._envelope(source, strip_meta(metadata), stream))
        if fmt is EncryptionFormat.ESDK:
            return Decrypted(fmt, self._esdk(source, stream))
        if fmt is EncryptionFormat.S3EC:
            return Decrypted(fmt, self._s3ec(source, strip_meta(metadata), stream, size=size))
        if instruction_file_exists is not None:
            return Decrypted(fmt, stream)
        raise PermanentError(
            Reason.UNKNOWN_ENCRYPTION,
            f"{source}: no envelope metadata and not an Encryption SDK message; it cannot be decrypted",
        )

    def _envelope(self, source: str, meta: Mapping[str, str], chunks: Iterator[bytes]) -> Iterator[bytes]:
        data_key, iv = self._envelope_key(source, meta)
        decryptor = Cipher(algorithms.AES(data_key), modes.CTR(iv)).decryptor()
        return self._ctr_stream(decryptor, chunks)

    def envelope_data_key(self, *, source: str, metadata: Mapping[str, str]) -> bytes:
        """The 32-byte data key of an envelope object, unwrapped by KMS (for re-wrapping).

        The checks of decrypting apply (``key_not_allowed``, ``authentication_failed``);
        the caller keeps the key no longer than it needs it, and never logs it.
        """
        meta = strip_meta(metadata)
        missing = [name for name in ENVELOPE_KEYS if name not in meta]
        if missing:
            raise PermanentError(
                Reason.UNKNOWN_ENCRYPTION, f"{source}: no envelope metadata ({', '.join(missing)} missing)"
            )
        return self._envelope_key(source, meta)[0]

    def _envelope_key(self, source: str, meta: Mapping[str, str]) -> tuple[bytes, bytes]:
        """(data key, iv) of an envelope object, every check made."""
        key_id = meta["datakeyencryptionkeyid"]
        # Fail closed, like the other formats: an empty allow-list allows no key (the
        # key id comes from object metadata, which whoever writes the object chooses).
        if not self._allowed:
            raise PermanentError(
                Reason.KEY_NOT_ALLOWED,
                f"{source}: envelope data key wrapped by {key_id}, but EGRESS_KMS_KEY_ARNS is empty: "
                "no key is allowed",
            )
        if not _key_id_matches(key_id, self._allowed):
            raise PermanentError(
                Reason.KEY_NOT_ALLOWED, f"{source}: data key wrapped by {key_id}, not in EGRESS_KMS_KEY_ARNS"
            )
        try:
            blob = base64.b64decode(meta["ciphertext"], validate=True)
            iv = base64.b64decode(meta["iv"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _not_authentic(f"{source}: envelope metadata is not valid base64") from exc
        if len(iv) != 16:
            raise PermanentError(
                Reason.AUTHENTICATION_FAILED, f"{source}: envelope iv is {len(iv)} bytes, not 16"
            )
        return self._unwrap(source, key_id, blob), iv

    @staticmethod
    def _ctr_stream(decryptor: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
        buffer = bytearray()
        view = memoryview(buffer)
        for chunk in chunks:
            # update_into a reused buffer: the fastest path (MEASURED.md), one copy out.
            if len(buffer) < len(chunk) + 15:
                view.release()
                buffer = bytearray(len(chunk) + 15)
                view = memoryview(buffer)
            written = decryptor.update_into(chunk, buffer)
            yield bytes(view[:written])
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
            raise _kms_error(source, exc) from exc
        except BotoCoreError as exc:
            raise _kms_unreachable(source, exc) from exc
        data_key = bytes(response["Plaintext"])
        if len(data_key) != 32:
            raise PermanentError(
                Reason.AUTHENTICATION_FAILED, f"{source}: data key is {len(data_key)} bytes, not 32"
            )
        self._keys.put(name, data_key)
        return data_key

    def _materials(self) -> Any:
        with self._esdk_lock:
            if self._esdk_materials is None:
                from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
                from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager

                self._esdk_materials = CachingCryptoMaterialsManager(
                    master_key_provider=esdk_provider(self._kms, self._allowed),
                    cache=LocalCryptoMaterialsCache(capacity=self._key_cache_size),
                    max_age=float(self._key_cache_seconds),
                )
            return self._esdk_materials

    def _esdk(self, source: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        if not self._allowed:
            raise PermanentError(
                Reason.KEY_NOT_ALLOWED,
                f"{source}: Encryption SDK message but no EGRESS_KMS_KEY_ARNS configured",
            )
        return self._esdk_stream(source, self._materials(), chunks)

    def _esdk_stream(self, source: str, materials: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
        failures = recorded_kms_failures()
        failures.clear()
        try:
            yield from esdk_plaintext(
                self._esdk_client, materials=materials, chunks=chunks, chunk_size=self._chunk_size
            )
        except DecryptKeyError as exc:
            raise self._no_data_key(source, list(failures)) from exc
        except (InvalidTag, InvalidSignature) as exc:
            raise _not_authentic(f"{source}: authentication failed ({type(exc).__name__})") from exc
        except ClientError as exc:
            raise _kms_error(source, exc) from exc
        except BotoCoreError as exc:
            raise _kms_unreachable(source, exc) from exc
        except EsdkBodyError as exc:
            raise _not_authentic(f"{source}: not a valid Encryption SDK message: {exc}") from exc
        except AWSEncryptionSDKClientError as exc:
            raise _not_authentic(
                f"{source}: not a valid Encryption SDK message ({type(exc).__name__})"
            ) from exc
        finally:
            failures.clear()

    # -- S3 Encryption Client --------------------------------------------------------------
    def _s3ec_pipeline(self, key_arn: str) -> GetEncryptedObjectPipeline:
        """The S3EC decryption pipeline for one allowed key (built once: each keyring
        appends to the shared KMS client's user agent)."""
        with self._s3ec_lock:
            pipeline = self._s3ec_pipelines.get(key_arn)
            if pipeline is None:
                pipeline = GetEncryptedObjectPipeline(
                    DefaultCryptoMaterialsManager(KmsKeyring(self._kms, key_arn)),
                    # v2 (not key-committing) objects are what most archives hold.
                    commitment_policy=S3ecCommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT,
                    # Instruction files would need another GET; their objects carry no
                    # S3EC metadata and are refused as unknown_encryption before this.
                    instruction_file_config=InstructionFileConfig(disable_get_object=True),
                )
                self._s3ec_pipelines[key_arn] = pipeline
            return pipeline

    def _s3ec(
        self, source: str, meta: Mapping[str, str], chunks: Iterator[bytes], *, size: int | None
    ) -> Iterator[bytes]:
        """An S3 Encryption Client object (v2 AES-GCM, v3 key-committing AES-GCM), streamed.

        Decrypted with the S3 Encryption Client library in its delayed-authentication
        mode: plaintext comes out before the GCM tag at the end is checked, which the
        destinations' contract makes safe (nothing is committed before the iterator ends
        without error). The data key is unwrapped by KMS under one of EGRESS_KMS_KEY_ARNS
        and the encryption context stored with the object (KMS checks it); the legacy
        unauthenticated v1 (AES-CBC) format is refused.
        """
        if not self._allowed:
            raise PermanentError(
                Reason.KEY_NOT_ALLOWED,
                f"{source}: S3 Encryption Client object but no EGRESS_KMS_KEY_ARNS configured",
            )
        if size is None:
            raise ValueError("the object's size is needed to decrypt an S3 Encryption Client object")
        context = _s3ec_stored_context(source, meta)
        reader = ChunkReader(chunks)
        response = {"Body": reader, "Metadata": dict(meta), "ContentLength": size}
        refused: list[str] = []
        for key_arn in self._allowed:
            try:
                body = self._s3ec_pipeline(key_arn).decrypt(
                    response,
                    instruction_suffix=None,
                    enable_delayed_authentication=True,
                    encryption_context=context,
                )
            except ClientError as exc:
                code = error_code(exc)
                # The format does not name its KMS key: each allowed key is tried in turn.
                # KMS answers IncorrectKeyException for another key's ciphertext (moto:
                # AccessDeniedException); the body has not been read yet.
                if code in _S3EC_OTHER_KEY_CODES:
                    refused.append(code)
                    continue
                raise _kms_error(source, exc) from exc
            except S3EncryptionClientSecurityError as exc:
                raise _not_authentic(f"{source}: S3 Encryption Client: {_one_line(exc)}") from exc
            except S3EncryptionClientError as exc:
                raise PermanentError(
                    Reason.UNKNOWN_ENCRYPTION, f"{source}: S3 Encryption Client: {_one_line(exc)}"
                ) from exc
            except BotoCoreError as exc:
                raise _kms_unreachable(source, exc) from exc
            except (binascii.Error, ValueError) as exc:
                raise _not_authentic(f"{source}: S3 Encryption Client metadata is malformed") from exc
            return self._s3ec_stream(source, body)
        raise PermanentError(
            Reason.KEY_NOT_ALLOWED,
            f"{source}: S3 Encryption Client data key not unwrapped by any of the {len(refused)} keys in "
            f"EGRESS_KMS_KEY_ARNS (KMS: {', '.join(sorted(set(refused)))})",
        )

    def _s3ec_stream(self, source: str, body: Any) -> Iterator[bytes]:
        try:
            while piece := body.read(self._chunk_size):
                yield piece
        except S3EncryptionClientSecurityError as exc:
            raise _not_authentic(f"{source}: authentication failed (GCM tag)") from exc
        except (S3EncryptionClientError, IncompleteReadError) as exc:
            raise _not_authentic(f"{source}: S3 Encryption Client object is truncated or malformed") from exc

    @staticmethod
    def _no_data_key(source: str, failures: list[ClientError]) -> EgressError:
        """Why no data key of a message could be unwrapped: the most actionable KMS error wins."""
        errors = [_kms_error(source, failure) for failure in failures]
        for error in errors:
            if isinstance(error, RetryableError):
                return error
        for wanted in (Reason.ACCESS_DENIED, Reason.AUTHENTICATION_FAILED):
            for error in errors:
                if error.reason == wanted:
                    return error
        if errors:
            return errors[0]
        return PermanentError(
            Reason.KEY_NOT_ALLOWED,
            f"{source}: no data key of the message is wrapped by a KMS key in EGRESS_KMS_KEY_ARNS",
        )


def _s3ec_stored_context(source: str, meta: Mapping[str, str]) -> dict[str, str]:
    """The encryption context an S3EC object was written with, less the client's own keys.

    The S3EC library compares it with the caller's; the worker has no expectation of its
    own, so it passes what the object says and KMS checks it when unwrapping the key.
    """
    raw = meta.get("x-amz-t") if "x-amz-3" in meta else meta.get("x-amz-matdesc")
    if not raw:
        return {}
    try:
        stored = json.loads(raw)
    except ValueError as exc:
        raise _not_authentic(f"{source}: S3 Encryption Client encryption context is not JSON") from exc
    if not isinstance(stored, dict):
        raise PermanentError(
            Reason.AUTHENTICATION_FAILED,
            f"{source}: S3 Encryption Client encryption context is not an object",
        )
    return {k: str(v) for k, v in stored.items() if k not in _S3EC_RESERVED_CONTEXT}


def _kms_unreachable(source: str, exc: BaseException) -> RetryableError:
    return RetryableError(Reason.KMS_UNAVAILABLE, f"{source}: KMS unreachable ({type(exc).__name__})")


def _not_authentic(detail: str) -> PermanentError:
    """The object is not what its format promises (tampered, truncated, malformed): never delivered."""
    return PermanentError(Reason.AUTHENTICATION_FAILED, detail)


def _kms_error(source: str, exc: ClientError) -> EgressError:
    """A KMS ``ClientError`` met while unwrapping a data key, as one of the two families."""
    code = error_code(exc)
    if code in _KMS_AUTH_CODES:
        return PermanentError(Reason.AUTHENTICATION_FAILED, f"{source}: KMS refused the data key ({code})")
    if code in _KMS_RETRY_CODES:
        return RetryableError(Reason.KMS_UNAVAILABLE, f"{source}: KMS {code}")
    error = translate_client_error(exc, doing=f"unwrapping the data key of {source}")
    if isinstance(error, RetryableError):
        return RetryableError(Reason.KMS_UNAVAILABLE, error.detail)
    return error


def _one_line(exc: BaseException) -> str:
    """A library's message on one line (some span several): a detail is one human line."""
    return " ".join(str(exc).split())[:300]
