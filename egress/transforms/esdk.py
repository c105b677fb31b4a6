"""AWS Encryption SDK messages: recognised by their header, read with bounded memory.

The library parses the header, unwraps the data key through our KMS client (failures
recorded per thread, so a throttled KMS stays retryable), checks key commitment, the
header tag and a signed suite's verifier; the body is decrypted with ``cryptography``'s
AES-GCM (:func:`esdk_plaintext`), a frame in one call, because the library's own
streaming reader spends tens of µs of Python a frame and holds a whole non-framed body
before its first byte. ``tests/unit/test_esdk_differential.py`` compares both readers
over every suite, frame length and region of a message.
"""

from __future__ import annotations

import io
import itertools
import struct
import sys
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
from aws_encryption_sdk.internal.formatting.encryption_context import assemble_content_aad
from aws_encryption_sdk.key_providers.kms import KMSMasterKey, StrictAwsKmsMasterKeyProvider
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from egress.kernel.hashing import StreamHasher
from egress.streams import ChunkReader

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
    signed suite. The body is read by :class:`_EsdkBody`, straight from ``chunks``, and
    the library's verifier checks the footer's signature over all of it.

    A frame (or a non-framed body) that fits in ``chunk_size`` is decrypted in one call
    that checks its GCM tag before any of its plaintext exists: no frame is handed on
    before it is authenticated. A larger one (frames up to 2^31 - 1 bytes, a non-framed
    body up to 64 GiB) streams through AES-GCM, its plaintext handed on before its tag
    is checked; and a signed message's signature comes after all of its frames. So this
    relies on the destinations' contract: nothing is committed before the iterator ends
    without error. A bad tag (``InvalidTag``), a bad signature (``InvalidSignature``),
    frames out of order, a message cut short and bytes after the message
    (:class:`EsdkBodyError`) all raise before the iterator ends; the last piece of
    plaintext is held back until the message has been read to its end.
    """
    source = iter(chunks)
    header_chunks: list[bytes] = []
    reader = ChunkReader(_recorded(source, header_chunks))
    stream = client.stream(mode="d", source=reader, materials_manager=materials)
    digest: StreamHasher | None = None
    try:
        stream.header  # noqa: B018 - reads the header: data key, commitment, header auth, verifier
        # ``reader`` reads from one chunk at a time and the library exactly as far as the
        # header (no read-ahead): the rest of the reader's chunk, then ``source``, is the body.
        rest = reader.read(sys.maxsize)
        if stream.verifier is not None:
            digest = _digest_beside(stream.verifier, _header_bytes(header_chunks, len(rest)))
        header_chunks.clear()
        body = itertools.chain((rest,), source)
        yield from _EsdkBody(stream, body, chunk_size=chunk_size).plaintext()
    finally:
        if digest is not None:
            digest.stop()
        # The library's close() refuses a stream whose footer it did not read (and says so
        # from the garbage collector): a failed or abandoned message is closed here.
        io.IOBase.close(stream)


def _recorded(chunks: Iterator[bytes], into: list[bytes]) -> Iterator[bytes]:
    """``chunks`` as they are, each also kept in ``into`` (the ones the header is read from)."""
    for chunk in chunks:
        into.append(chunk)
        yield chunk


def _header_bytes(chunks: list[bytes], unread: int) -> list[memoryview]:
    """What the library read of ``chunks``: all of them but the last ``unread`` bytes."""
    views = [memoryview(chunk) for chunk in chunks]
    if unread:
        views[-1] = views[-1][: len(views[-1]) - unread]
    return views


class _HashOnThread:
    """Stands in for the verifier's ``cryptography`` hash: the same digest from hashlib, on a thread.

    ``cryptography`` 48 holds the GIL while it hashes (and ``amazon-s3-encryption-client``
    pins it below 49): a signed suite's SHA-384 over the whole message then runs on the
    thread that decrypts. hashlib lets it run beside.
    """

    def __init__(self, hasher: StreamHasher) -> None:
        self._hasher = hasher

    def update(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def finalize(self) -> bytes:
        return self._hasher.digest()


def _digest_beside(verifier: Any, header: list[memoryview]) -> StreamHasher | None:
    """Move a signed message's digest to a thread, if the library's hash so far is what we think it is.

    The library has fed its verifier every byte it read (the header, its tag, a
    non-framed body's IV and length). The same bytes through hashlib must give the same
    digest, or the verifier is left as the library built it (a library that feeds it
    differently costs speed, never a check).
    """
    algorithm = verifier.algorithm.signing_hash_type()
    # depth 2: two chunks queued and one being hashed, beyond those the reader holds.
    hasher = StreamHasher(threshold=_DIGEST_THREAD_FROM, depth=2, algorithm=algorithm.name)
    for piece in header:
        hasher.update(piece)
    library = verifier._hasher.copy().finalize()  # noqa: SLF001 - checked just below
    if hasher.digest() != library:
        return None
    verifier._hasher = _HashOnThread(hasher)  # noqa: SLF001 - the library's verify() reads it
    return hasher


_DIGEST_THREAD_FROM = 8 * 1024 * 1024  # a signed message's digest moves to a thread beyond this
_U32 = struct.Struct(">I")
_FINAL_FRAME_MARK = SequenceIdentifier.SEQUENCE_NUMBER_END.value
_TAG_LENGTH = 16
# Plaintext pieces held before they are joined: bounds memory when frames are tiny.
_MAX_PIECES = 4096


class _EsdkBody:
    """The body and footer of a message whose header the library's ``StreamDecryptor`` has read.

    Follows the message format (and the library's own body reader): frames numbered from
    1 in order, the last one marked and no longer than the frame length; each frame's or
    the block's AAD binds the message id, its kind, its number and its length. Every byte
    after the header up to the footer goes to the library's verifier, in order (in a few
    large updates, not four a frame); the verifier checks the footer's signature, and no
    byte may follow it.

    Speed: the regular frames whole in the current chunk go through
    :meth:`_whole_frames`, a tight loop of ``struct`` and one ``AESGCM.decrypt`` a frame
    (a few µs a 4 KiB frame; a signed suite's SHA-384 over the message then costs more
    than all the rest). The rest — a frame across two chunks, the final frame, frames
    larger than a chunk, a non-framed body — are read a field at a time. Source chunks
    are not copied (the bytes of a frame across two are). Memory: the current source
    chunk and the next, and under two chunks of plaintext, joined once as they go out: a
    few ``chunk_size``.

    What it takes from the ``StreamDecryptor`` once the header is read (aws-encryption-sdk
    4.x): ``verifier``, ``_derived_data_key`` and, for a non-framed message,
    ``body_length`` and ``_unframed_body_iv``. The tests decrypt every layout and suite,
    so a library that moved them fails there, not in production.
    """

    def __init__(self, stream: Any, chunks: Iterator[bytes], *, chunk_size: int) -> None:
        self._stream = stream
        self._header = stream.header
        self._algorithm = self._header.algorithm
        if self._algorithm.encryption_mode is not modes.GCM or self._algorithm.auth_len != _TAG_LENGTH:
            raise EsdkBodyError(f"algorithm suite {self._algorithm.name} is not AES-GCM with 16-byte tags")
        self._chunks = chunks
        self._verifier = stream.verifier
        self._key = stream._derived_data_key  # derived, committed to and checked by the library
        self._aead = AESGCM(self._key)
        self._chunk_size = chunk_size
        # The message's bytes not parsed yet: ``_buffer`` from ``_at`` on (a source chunk, or
        # a frame's bytes across two), then the rest of a chunk in ``_pending``, then ``_chunks``.
        # Those before ``_at`` have gone to the verifier.
        self._buffer = b""
        self._at = 0
        self._pending: tuple[bytes, int] | None = None
        # Plaintext not handed on yet, in pieces: under a chunk, plus the last frame or piece.
        self._out: list[bytes] = []
        self._out_length = 0

    def plaintext(self) -> Iterator[bytes]:
        """The body's plaintext in pieces of exactly ``chunk_size`` (the last may be shorter)."""
        if self._header.content_type is ContentType.NO_FRAMING:
            # The library read the block's IV and length (a few bytes) with the header.
            length = self._stream.body_length
            if length > MAX_NON_FRAMED_SIZE:
                raise EsdkBodyError(f"non-framed body of {length} bytes is over the AES-GCM limit")
            iv = self._stream._unframed_body_iv
            yield from self._block(iv, 1, length, ContentAADString.NON_FRAMED_STRING_ID)
        else:
            yield from self._frames()
        self._footer()
        if self._out_length:
            yield b"".join(self._out)  # the last piece: only once the message is all read

    def _frames(self) -> Iterator[bytes]:
        frame_length = self._header.frame_length
        in_one_call = frame_length + _TAG_LENGTH <= self._chunk_size
        expected = 1
        while True:
            if in_one_call:
                decrypted = self._whole_frames(expected)
                if decrypted:
                    expected += decrypted
                    yield from self._ready()
                    continue
            # One frame a field at a time: across two chunks, the final one, or larger than a chunk.
            number = self._u32()
            final = number == _FINAL_FRAME_MARK
            if final:
                number = self._u32()
            if number != expected:
                raise EsdkBodyError(f"frame {number} where frame {expected} was due")
            iv = self._exact(self._algorithm.iv_len)
            if not final:
                yield from self._block(iv, number, frame_length, ContentAADString.FRAME_STRING_ID)
                expected += 1
                continue
            length = self._u32()
            if length > frame_length:
                raise EsdkBodyError("final frame longer than the frame length")
            yield from self._block(iv, number, length, ContentAADString.FINAL_FRAME_STRING_ID)
            return

    def _whole_frames(self, expected: int) -> int:
        """Decrypt regular frames whole in the buffer, from frame ``expected`` on; how many.

        Stops at a frame not whole in the buffer, at one not numbered ``expected`` (the
        final frame's mark, or frames out of order: the caller reads that one a field at a
        time and tells which), once a chunk of plaintext is ready or at ``_MAX_PIECES``.
        The frames' bytes go to the verifier in one update.
        """
        buffer, start = self._buffer, self._at
        iv_len, frame_length = self._algorithm.iv_len, self._header.frame_length
        frame_size = 4 + iv_len + frame_length + _TAG_LENGTH
        count = min((len(buffer) - start) // frame_size, _MAX_PIECES - len(self._out))
        if frame_length:  # no more than it takes to fill the chunk
            count = min(count, -(-(self._chunk_size - self._out_length) // frame_length))
        if count <= 0:
            return 0
        aad = bytearray(
            assemble_content_aad(
                message_id=self._header.message_id,
                aad_content_string=ContentAADString.FRAME_STRING_ID,
                seq_num=0,
                length=frame_length,
            )
        )
        number_at = len(aad) - 12  # the frame number, then the 8-byte length
        decrypt, unpack_from, pack_into = self._aead.decrypt, _U32.unpack_from, _U32.pack_into
        append = self._out.append
        view = memoryview(buffer)
        at = start
        for number in range(expected, expected + count):
            if unpack_from(buffer, at)[0] != number:
                break
            pack_into(aad, number_at, number)
            body = at + 4 + iv_len
            at += frame_size
            # One call: InvalidTag before any of the frame's plaintext exists.
            append(decrypt(buffer[body - iv_len : body], view[body:at], aad))
        decrypted = (at - start) // frame_size
        if decrypted and self._verifier is not None:
            self._verifier.update(view[start:at])
        self._at = at
        self._out_length += decrypted * frame_length
        return decrypted

    def _block(self, iv: bytes, number: int, length: int, kind: ContentAADString) -> Iterator[bytes]:
        """One frame or the non-framed block, then its tag: in one call if it fits in a chunk."""
        aad = assemble_content_aad(
            message_id=self._header.message_id, aad_content_string=kind, seq_num=number, length=length
        )
        if length + _TAG_LENGTH <= self._chunk_size:
            # InvalidTag before any of its plaintext exists.
            self._add(self._aead.decrypt(iv, self._exact(length + _TAG_LENGTH), aad))
            yield from self._ready()
            return
        decryptor = Cipher(self._algorithm.encryption_algorithm(self._key), modes.GCM(iv)).decryptor()
        decryptor.authenticate_additional_data(aad)
        remaining = length
        while remaining:
            piece = self._some(min(remaining, self._chunk_size))
            remaining -= len(piece)
            self._add(decryptor.update(piece))
            yield from self._ready()
        self._add(decryptor.finalize_with_tag(self._exact(_TAG_LENGTH)))  # InvalidTag: not authentic
        yield from self._ready()

    def _footer(self) -> None:
        """Signed suites: the signature over everything before it (``InvalidSignature``); then the end."""
        if self._verifier is not None:
            length = int.from_bytes(self._exact(2, signed=False), "big")
            self._verifier.verify(self._exact(length, signed=False))
        if self._at < len(self._buffer) or self._pending is not None or any(self._chunks):
            raise EsdkBodyError("bytes after the end of the message")

    # -- the message's bytes: every one read goes to the verifier, in order ------------------

    def _next_chunk(self) -> tuple[bytes, int]:
        """The next source chunk with bytes in it, and where they start in it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        for chunk in self._chunks:
            if chunk:
                return bytes(chunk), 0  # bytes as they are, not copied
        raise EsdkBodyError("the message is cut short")

    def _fill(self, size: int) -> None:
        """At least ``size`` bytes in the buffer from ``_at``: the next chunk as it is, or
        (across chunks) a copy of just those bytes, the rest of the chunk pending."""
        have = len(self._buffer) - self._at
        if have >= size:
            return
        parts = [self._buffer[self._at :]] if have else []
        while have < size:
            chunk, start = self._next_chunk()
            if not parts and len(chunk) - start >= size:
                self._buffer, self._at = chunk, start
                return
            end = min(len(chunk), start + size - have)
            parts.append(chunk[start:end])
            have += end - start
            if end < len(chunk):
                self._pending = (chunk, end)
        self._buffer, self._at = b"".join(parts), 0

    def _exact(self, size: int, *, signed: bool = True) -> bytes:
        """The next ``size`` bytes of the message (``signed``: they go to the verifier)."""
        self._fill(size)
        piece = self._buffer[self._at : self._at + size]
        self._at += size
        if signed and self._verifier is not None:
            self._verifier.update(piece)
        return piece

    def _some(self, size: int) -> memoryview:
        """The next 1 to ``size`` bytes of the message (a short read); they go to the verifier."""
        if self._at == len(self._buffer):
            self._buffer, self._at = self._next_chunk()
        piece = memoryview(self._buffer)[self._at : self._at + size]
        self._at += len(piece)
        if self._verifier is not None:
            self._verifier.update(piece)
        return piece

    def _u32(self) -> int:
        value: int = _U32.unpack(self._exact(4))[0]
        return value

    # -- plaintext out, in pieces of exactly ``chunk_size`` -----------------------------------

    def _add(self, plain: bytes) -> None:
        if plain:
            self._out.append(plain)
            self._out_length += len(plain)

    def _ready(self) -> Iterator[bytes]:
        """The whole chunks of plaintext ready to hand on; the rest waits (in one piece if many)."""
        size = self._chunk_size
        if self._out_length < size:
            if len(self._out) >= _MAX_PIECES:
                self._out = [b"".join(self._out)]
            return
        joined = b"".join(self._out)  # a single piece is not copied
        ready = len(joined) - len(joined) % size
        # What waits is kept apart first: the pieces are not held while the chunks are out.
        self._out = [joined[ready:]] if ready < len(joined) else []
        self._out_length = len(joined) - ready
        if len(joined) == size:
            yield joined
            return
        for at in range(0, ready, size):
            yield joined[at : at + size]
