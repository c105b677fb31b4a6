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
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from itertools import chain
from typing import TYPE_CHECKING, Any

import aws_encryption_sdk
import boto3
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError, DecryptKeyError, SerializationError
from aws_encryption_sdk.identifiers import (
    AlgorithmSuite,
    CommitmentPolicy,
    ContentAADString,
    ContentType,
    SequenceIdentifier,
)
from aws_encryption_sdk.internal.defaults import MAX_NON_FRAMED_SIZE
from aws_encryption_sdk.internal.formatting.deserialize import deserialize_footer, unpack_values
from aws_encryption_sdk.internal.formatting.encryption_context import assemble_content_aad
from aws_encryption_sdk.key_providers.kms import KMSMasterKey, StrictAwsKmsMasterKeyProvider
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
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    KEY_NOT_ALLOWED,
    KMS_UNAVAILABLE,
    UNKNOWN_ENCRYPTION,
    EgressError,
    PermanentError,
    RetryableError,
    error_code,
    translate_client_error,
)
from egress.streams import ChunkReader, rechunk

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
_ESDK_V1_SUITES = {s.algorithm_id: s for s in AlgorithmSuite if s.message_format_version == 1}
_ESDK_V2_SUITES = {s.algorithm_id: s for s in AlgorithmSuite if s.message_format_version == 2}
# How many leading bytes detection looks at: enough for any ESDK header we accept
# (at most 5 encrypted data keys of a few hundred bytes each).
_HEAD_BYTES = 128 * 1024
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


class _Short(Exception):  # noqa: N818 - internal control flow
    """The head ended before the header did."""


class _HeaderReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise _Short
        piece = self._data[self._pos : self._pos + size]
        self._pos += size
        return piece

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")


def _valid_aad(aad: bytes) -> bool:
    """The serialized encryption context: a pair count, then length-prefixed keys and values."""
    if not aad:
        return True
    reader = _HeaderReader(aad)
    try:
        count = reader.u16()
        if count == 0:
            return False
        for _ in range(2 * count):
            reader.take(reader.u16())
    except _Short:
        return False
    return reader._pos == len(aad)


def looks_like_esdk(head: bytes) -> bool:
    """Whether ``head`` starts an AWS Encryption SDK message (format v1 or v2).

    Checks the header structure, not just the first bytes: version and type, a known
    algorithm suite, a well-formed encryption context, 1..n encrypted data keys with
    non-empty provider ids, a known content type and (v1) the reserved zeros and IV
    length. The whole header must lie within ``head`` (:meth:`Decryptor.decrypt` looks
    at the first 128 KiB): random bytes that merely start like a header are not taken
    for a message.
    """
    reader = _HeaderReader(head)
    try:
        version = reader.u8()
        if version == 1:
            if reader.u8() != 0x80:
                return False
            suite = _ESDK_V1_SUITES.get(reader.u16())
            message_id_length = 16
        elif version == 2:
            suite = _ESDK_V2_SUITES.get(reader.u16())
            message_id_length = 32
        else:
            return False
        if suite is None:
            return False
        reader.take(message_id_length)
        aad_length = reader.u16()
        if not _valid_aad(reader.take(aad_length)):
            return False
        key_count = reader.u16()
        if key_count == 0:
            return False
        for _ in range(key_count):
            if not reader.take(reader.u16()):  # key provider id
                return False
            reader.take(reader.u16())  # key provider info
            if not reader.take(reader.u16()):  # the encrypted data key
                return False
        if reader.u8() not in (1, 2):  # content type: non-framed, framed
            return False
        # v1: four reserved zero bytes and the suite's IV length
        if version == 1 and (reader.take(4) != b"\x00\x00\x00\x00" or reader.u8() != suite.iv_len):
            return False
    except _Short:
        return False
    return True


# Errors KMS returned inside the Encryption SDK, which normalises every ``ClientError``
# into a ``DecryptKeyError`` ("unable to decrypt any data key") and so would turn a
# throttled or unreachable KMS into a permanent "key not allowed". Recorded per thread:
# the ESDK calls KMS on the thread that iterates the plaintext.
_kms_failures = threading.local()


def _recorded_failures() -> list[ClientError]:
    failures: list[ClientError] | None = getattr(_kms_failures, "errors", None)
    if failures is None:
        failures = _kms_failures.errors = []
    return failures


class _RecordingKmsMasterKey(KMSMasterKey):
    """A KMS master key that remembers why KMS refused, before the ESDK hides it."""

    def _decrypt_data_key(self, encrypted_data_key: Any, algorithm: Any, encryption_context: Any = None) -> Any:
        try:
            return super()._decrypt_data_key(encrypted_data_key, algorithm, encryption_context)
        except DecryptKeyError as exc:
            if isinstance(exc.__cause__, ClientError):
                _recorded_failures().append(exc.__cause__)
            raise


def esdk_provider(kms: KMSClient, key_ids: Sequence[str]) -> StrictAwsKmsMasterKeyProvider:
    """A strict KMS master key provider that calls KMS through OUR client.

    The ESDK would otherwise build its own clients from a default boto3 session: no
    custom endpoint (the local stack, VPC endpoints) and not our botocore config. We
    override ``add_regional_client`` (called for the configured region and for the
    region of each key ARN): our client serves its own region as it is — deliberately
    not passed through ``_register_client``, which would monkey-patch every method of a
    client the rest of the worker shares; botocore's retries already handle transient
    faults — and a key in another region gets a client with our endpoint and config.
    """
    endpoint = kms.meta.endpoint_url
    config = kms.meta.config
    own_region = kms.meta.region_name
    # A regional AWS endpoint names its region and must not serve another; a custom
    # endpoint (moto, LocalStack) serves every region.
    cross_region_endpoint = None if own_region in endpoint else endpoint

    class _Provider(StrictAwsKmsMasterKeyProvider):
        master_key_class = _RecordingKmsMasterKey

        def add_regional_client(self, region_name: str) -> None:
            if region_name in self._regional_clients:
                return
            if region_name == own_region:
                self._regional_clients[region_name] = kms
                return
            session = boto3.session.Session()
            self._regional_clients[region_name] = session.client(
                "kms", region_name=region_name, endpoint_url=cross_region_endpoint, config=config
            )

    # region_names: the default region is our client's, not the default botocore session's.
    return _Provider(key_ids=list(key_ids), region_names=[own_region])


class EsdkBodyError(SerializationError):
    """An Encryption SDK message body that is cut short, out of order or followed by other bytes."""


def esdk_plaintext(
    client: aws_encryption_sdk.EncryptionSDKClient,
    *,
    materials: Any,
    chunks: Iterable[bytes],
    chunk_size: int,
) -> Iterator[bytes]:
    """The plaintext of one AWS Encryption SDK message, in ``chunk_size`` pieces, with bounded memory.

    The library reads the header: its structure, the data key (unwrapped through
    ``materials``), key commitment, the header's authentication tag and the verifier of a
    signed suite. The body is read by :class:`_EsdkBody`, at most ``chunk_size`` bytes at
    a time, with streaming AES-GCM: the library would read a whole frame, or a whole
    non-framed body (``--frame-length 0``: one block of any size under one tag), before
    the first byte comes out.

    Plaintext of a frame or block is handed on before its tag is checked (a GCM tag comes
    after the ciphertext it covers), so this relies on the destinations' contract: nothing
    is committed before the iterator ends without error. A bad tag (``InvalidTag``), a
    bad signature (``InvalidSignature``), frames out of order, a message cut short and
    bytes after the message (:class:`EsdkBodyError`) all raise before the iterator ends.
    Memory is a few ``chunk_size`` buffers whatever the frame or body length (the source
    chunk, ciphertext, plaintext and the piece being joined to ``chunk_size``).
    """
    reader = ChunkReader(chunks)
    stream = client.stream(mode="d", source=reader, materials_manager=materials)
    try:
        stream.header  # noqa: B018 - reads the header: data key, commitment, header auth, verifier
        yield from rechunk(_EsdkBody(stream, reader, chunk_size=chunk_size).plaintext(), size=chunk_size)
    finally:
        # The library's close() refuses a stream whose footer it did not read (and says so
        # from the garbage collector): a failed or abandoned message is closed here.
        io.IOBase.close(stream)


class _EsdkBody:
    """The body and footer of a message whose header the library's ``StreamDecryptor`` has read.

    Follows the message format (and the library's own body reader): frames numbered from
    1 in order, the last one marked and no longer than the frame length; each frame's or
    the block's AAD binds the message id, its kind, its number and its length. The
    library's ``unpack_values`` reads the small fields and feeds the verifier, its
    ``deserialize_footer`` checks the signature.

    What it takes from the ``StreamDecryptor`` once the header is read (aws-encryption-sdk
    4.x): ``source_stream``, ``verifier``, ``_derived_data_key`` and, for a non-framed
    message, ``body_length`` and ``_unframed_body_iv``; the tests decrypt every layout and
    suite, so a library that moved them fails there, not in production.
    """

    def __init__(self, stream: Any, reader: ChunkReader, *, chunk_size: int) -> None:
        self._stream = stream
        self._header = stream.header
        self._algorithm = self._header.algorithm
        # The library's reader reads exactly what it is asked for (no read-ahead), so it
        # and ``reader`` stand at the same place: small fields go through it, ciphertext
        # through ``reader`` (short reads, no extra copy).
        self._fields = stream.source_stream
        self._reader = reader
        self._verifier = stream.verifier
        self._key = stream._derived_data_key  # derived, committed to and checked by the library
        self._chunk_size = chunk_size
        if self._algorithm.encryption_mode is not modes.GCM or self._algorithm.auth_len != 16:
            raise EsdkBodyError(f"algorithm suite {self._algorithm.name} is not AES-GCM with 16-byte tags")

    def _unpack(self, fmt: str) -> Any:
        (value,) = unpack_values(fmt, self._fields, self._verifier)
        return value

    def plaintext(self) -> Iterator[bytes]:
        if self._header.content_type is ContentType.NO_FRAMING:
            # The library read the block's IV and length (a few bytes) with the header.
            length = self._stream.body_length
            if length > MAX_NON_FRAMED_SIZE:
                raise EsdkBodyError(f"non-framed body of {length} bytes is over the AES-GCM limit")
            iv = self._stream._unframed_body_iv
            yield from self._block(iv, 1, length, ContentAADString.NON_FRAMED_STRING_ID)
        else:
            yield from self._frames()
        # Signed suites: the footer's signature covers everything before it (InvalidSignature).
        self._stream.footer = deserialize_footer(stream=self._fields, verifier=self._verifier)
        if self._fields.read(1):
            raise EsdkBodyError("bytes after the end of the message")

    def _frames(self) -> Iterator[bytes]:
        frame_length = self._header.frame_length
        expected = 1
        while True:
            number = self._unpack(">I")
            final = number == SequenceIdentifier.SEQUENCE_NUMBER_END.value
            if final:
                number = self._unpack(">I")
            if number != expected:
                raise EsdkBodyError(f"frame {number} where frame {expected} was due")
            iv = self._unpack(f">{self._algorithm.iv_len}s")
            if not final:
                yield from self._block(iv, number, frame_length, ContentAADString.FRAME_STRING_ID)
                expected += 1
                continue
            length = self._unpack(">I")
            if length > frame_length:
                raise EsdkBodyError("final frame longer than the frame length")
            yield from self._block(iv, number, length, ContentAADString.FINAL_FRAME_STRING_ID)
            return

    def _block(self, iv: bytes, number: int, length: int, kind: ContentAADString) -> Iterator[bytes]:
        """One frame's or the non-framed block's ciphertext, then its tag, ``chunk_size`` at a time."""
        decryptor = Cipher(self._algorithm.encryption_algorithm(self._key), modes.GCM(iv)).decryptor()
        decryptor.authenticate_additional_data(
            assemble_content_aad(
                message_id=self._header.message_id, aad_content_string=kind, seq_num=number, length=length
            )
        )
        remaining = length
        while remaining:
            piece = self._reader.read(min(remaining, self._chunk_size))
            if not piece:
                raise EsdkBodyError("the message is cut short inside its body")
            remaining -= len(piece)
            if self._verifier is not None:
                self._verifier.update(piece)
            yield decryptor.update(piece)
        tag = self._unpack(f">{self._algorithm.auth_len}s")
        tail = decryptor.finalize_with_tag(tag)  # InvalidTag: this frame or block is not authentic
        if tail:
            yield tail


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

    # -- detection ---------------------------------------------------------------------
    def detect(self, *, metadata: Mapping[str, str], head: bytes) -> EncryptionFormat:
        """Which format an object is in, from its user metadata and first bytes."""
        meta = _strip_meta(metadata)
        if all(name in meta for name in _ENVELOPE_KEYS):
            return EncryptionFormat.ENVELOPE
        if _S3EC_KEYS & set(meta):
            return EncryptionFormat.S3EC
        if looks_like_esdk(head):
            return EncryptionFormat.ESDK
        return EncryptionFormat.NONE

    # -- decryption --------------------------------------------------------------------
    def decrypt(
        self,
        *,
        source: str,
        metadata: Mapping[str, str],
        chunks: Iterator[bytes],
        size: int | None = None,
    ) -> Iterator[bytes]:
        """Plaintext chunks of ``chunks``; raises the reason if the object cannot be trusted.

        ``size`` is the object's length (the ciphertext's); S3 Encryption Client objects
        need it to find their trailing authentication tag.
        """
        iterator = iter(chunks)
        # Peek: gather the first few KiB (usually the first chunk alone) for detection,
        # then yield them again ahead of the rest.
        pieces: list[bytes] = []
        gathered = 0
        for piece in iterator:
            pieces.append(piece)
            gathered += len(piece)
            if gathered >= _HEAD_BYTES:
                break
        head = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        stream = chain([head], iterator) if head else iterator
        fmt = self.detect(metadata=metadata, head=head)
        if fmt is EncryptionFormat.ENVELOPE:
            return self._envelope(source, _strip_meta(metadata), stream)
        if fmt is EncryptionFormat.ESDK:
            return self._esdk(source, stream)
        if fmt is EncryptionFormat.S3EC:
            return self._s3ec(source, _strip_meta(metadata), stream, size=size)
        raise PermanentError(
            UNKNOWN_ENCRYPTION,
            f"{source}: no envelope metadata and not an Encryption SDK message; a decrypt route never "
            "delivers it as is",
        )

    def _envelope(self, source: str, meta: Mapping[str, str], chunks: Iterator[bytes]) -> Iterator[bytes]:
        key_id = meta["datakeyencryptionkeyid"]
        # Fail closed, like the other formats: an empty allow-list allows no key (the
        # key id comes from object metadata, which whoever writes the object chooses).
        if not self._allowed:
            raise PermanentError(
                KEY_NOT_ALLOWED,
                f"{source}: envelope data key wrapped by {key_id}, but EGRESS_KMS_KEY_ARNS is empty: "
                "no key is allowed",
            )
        if not _key_id_matches(key_id, self._allowed):
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
                    master_key_provider=esdk_provider(self._kms, self._allowed),
                    cache=LocalCryptoMaterialsCache(capacity=self._key_cache_size),
                    max_age=float(self._key_cache_seconds),
                )
            return self._esdk_materials

    def _esdk(self, source: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        if not self._allowed:
            raise PermanentError(
                KEY_NOT_ALLOWED, f"{source}: Encryption SDK message but no EGRESS_KMS_KEY_ARNS configured"
            )
        return self._esdk_stream(source, self._materials(), chunks)

    def _esdk_stream(self, source: str, materials: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
        failures = _recorded_failures()
        failures.clear()
        try:
            yield from esdk_plaintext(
                self._esdk_client, materials=materials, chunks=chunks, chunk_size=self._chunk_size
            )
        except DecryptKeyError as exc:
            raise self._no_data_key(source, list(failures)) from exc
        except (InvalidTag, InvalidSignature) as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: authentication failed ({type(exc).__name__})"
            ) from exc
        except ClientError as exc:
            raise _kms_error(source, exc) from exc
        except BotoCoreError as exc:
            raise RetryableError(
                KMS_UNAVAILABLE, f"{source}: KMS unreachable ({type(exc).__name__})"
            ) from exc
        except EsdkBodyError as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: not a valid Encryption SDK message: {exc}"
            ) from exc
        except AWSEncryptionSDKClientError as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: not a valid Encryption SDK message ({type(exc).__name__})"
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
                KEY_NOT_ALLOWED, f"{source}: S3 Encryption Client object but no EGRESS_KMS_KEY_ARNS configured"
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
                raise PermanentError(AUTHENTICATION_FAILED, f"{source}: S3 Encryption Client: {exc}") from exc
            except S3EncryptionClientError as exc:
                raise PermanentError(UNKNOWN_ENCRYPTION, f"{source}: S3 Encryption Client: {exc}") from exc
            except BotoCoreError as exc:
                raise RetryableError(
                    KMS_UNAVAILABLE, f"{source}: KMS unreachable ({type(exc).__name__})"
                ) from exc
            except (binascii.Error, ValueError) as exc:
                raise PermanentError(
                    AUTHENTICATION_FAILED, f"{source}: S3 Encryption Client metadata is malformed"
                ) from exc
            return self._s3ec_stream(source, body)
        raise PermanentError(
            KEY_NOT_ALLOWED,
            f"{source}: S3 Encryption Client data key not unwrapped by any of the {len(refused)} keys in "
            f"EGRESS_KMS_KEY_ARNS (KMS: {', '.join(sorted(set(refused)))})",
        )

    def _s3ec_stream(self, source: str, body: Any) -> Iterator[bytes]:
        try:
            while piece := body.read(self._chunk_size):
                yield piece
        except S3EncryptionClientSecurityError as exc:
            raise PermanentError(AUTHENTICATION_FAILED, f"{source}: authentication failed (GCM tag)") from exc
        except (S3EncryptionClientError, IncompleteReadError) as exc:
            raise PermanentError(
                AUTHENTICATION_FAILED, f"{source}: S3 Encryption Client object is truncated or malformed"
            ) from exc

    @staticmethod
    def _no_data_key(source: str, failures: list[ClientError]) -> EgressError:
        """Why no data key of a message could be unwrapped: the most actionable KMS error wins."""
        errors = [_kms_error(source, failure) for failure in failures]
        for error in errors:
            if isinstance(error, RetryableError):
                return error
        for wanted in (ACCESS_DENIED, AUTHENTICATION_FAILED):
            for error in errors:
                if error.reason == wanted:
                    return error
        if errors:
            return errors[0]
        return PermanentError(
            KEY_NOT_ALLOWED,
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
        raise PermanentError(
            AUTHENTICATION_FAILED, f"{source}: S3 Encryption Client encryption context is not JSON"
        ) from exc
    if not isinstance(stored, dict):
        raise PermanentError(
            AUTHENTICATION_FAILED, f"{source}: S3 Encryption Client encryption context is not an object"
        )
    return {k: str(v) for k, v in stored.items() if k not in _S3EC_RESERVED_CONTEXT}


def _kms_error(source: str, exc: ClientError) -> EgressError:
    """A KMS ``ClientError`` met while unwrapping a data key, as one of the two families."""
    code = error_code(exc)
    if code in _KMS_AUTH_CODES:
        return PermanentError(AUTHENTICATION_FAILED, f"{source}: KMS refused the data key ({code})")
    if code in _KMS_RETRY_CODES:
        return RetryableError(KMS_UNAVAILABLE, f"{source}: KMS {code}")
    error = translate_client_error(exc, doing=f"unwrapping the data key of {source}")
    if isinstance(error, RetryableError):
        return RetryableError(KMS_UNAVAILABLE, error.detail)
    return error
