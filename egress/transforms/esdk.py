"""AWS Encryption SDK messages: recognised by their header, read with bounded memory.

The library parses the header, unwraps the data key through our KMS client (failures
recorded per thread, so a throttled KMS stays retryable), checks key commitment, the
header tag and a signed suite's verifier; the body streams through AES-GCM from
``cryptography`` (:func:`esdk_plaintext`), because the library's own streaming reader
spends ~130 µs of Python per frame and holds a whole non-framed body before its first
byte. ``tests/unit/test_esdk_differential.py`` compares both readers over every suite.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import aws_encryption_sdk
import boto3
from aws_encryption_sdk.exceptions import DecryptKeyError, SerializationError
from aws_encryption_sdk.identifiers import (
    AlgorithmSuite,
    ContentAADString,
    ContentType,
    SequenceIdentifier,
)
from aws_encryption_sdk.internal.defaults import MAX_NON_FRAMED_SIZE
from aws_encryption_sdk.internal.formatting.deserialize import deserialize_footer, unpack_values
from aws_encryption_sdk.internal.formatting.encryption_context import assemble_content_aad
from aws_encryption_sdk.key_providers.kms import KMSMasterKey, StrictAwsKmsMasterKeyProvider
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from egress.streams import ChunkReader, rechunk

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient


_ESDK_V1_SUITES = {s.algorithm_id: s for s in AlgorithmSuite if s.message_format_version == 1}
_ESDK_V2_SUITES = {s.algorithm_id: s for s in AlgorithmSuite if s.message_format_version == 2}


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


def recorded_kms_failures() -> list[ClientError]:
    failures: list[ClientError] | None = getattr(_kms_failures, "errors", None)
    if failures is None:
        failures = _kms_failures.errors = []
    return failures


class _RecordingKmsMasterKey(KMSMasterKey):
    """A KMS master key that remembers why KMS refused, before the ESDK hides it."""

    def _decrypt_data_key(
        self, encrypted_data_key: Any, algorithm: Any, encryption_context: Any = None
    ) -> Any:
        try:
            return super()._decrypt_data_key(encrypted_data_key, algorithm, encryption_context)
        except DecryptKeyError as exc:
            if isinstance(exc.__cause__, ClientError):
                recorded_kms_failures().append(exc.__cause__)
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
