"""The ranged reader against an in-memory S3: order, memory bound, failures, cancellation.

:class:`FakeS3` answers ``get_object`` for one object as S3 does (``Range``,
``Content-Range``, ``If-Match``, 412, 416) and lets a test hold a range's body back or
break it, so the interleavings that matter are forced rather than waited for. The same
reader against the moto server is in ``tests/integration/test_ranged_get.py``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.errors import PermanentError, Reason, RetryableError
from egress.ranged import SINGLE_GET, GetConfig, RangedReader, open_ranged

KIB = 1024
ETAG = '"v1"'


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


class FakeBody:
    """A response body: ``read(amt)`` hands out the range's bytes; ``close`` is recorded."""

    def __init__(self, s3: FakeS3, start: int, data: bytes) -> None:
        self.s3 = s3
        self.start = start
        self.data = data
        self.offset = 0
        self.reads = 0
        self.closed = False

    def read(self, amt: int | None = None) -> bytes:
        self.reads += 1
        self.s3.before_read(self)
        amt = len(self.data) - self.offset if amt is None else amt
        piece = self.data[self.offset : self.offset + amt]
        self.offset += len(piece)
        if self.offset == len(self.data):
            self.s3.completed(self)
        return piece

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.s3.closed(self)


class FakeS3:
    """One object (``src/key``) behind enough of ``get_object`` for the reader.

    Hooks, keyed by a range's first byte: ``hold[start]`` makes that body's reads wait
    for an event; ``break_read[start]`` makes its reads raise; ``refuse[start]`` makes its
    GET raise; ``whole`` ignores ``Range`` (a server that sends the whole object).
    """

    def __init__(self, data: bytes, *, etag: str = ETAG, whole: bool = False) -> None:
        self.data = data
        self.etag = etag
        self.whole = whole
        self.lock = threading.Lock()
        self.requested: list[int] = []  # each GET's first byte, in the order asked
        self.completion: list[int] = []  # each body's first byte, in the order fully read
        self.bodies: list[FakeBody] = []
        self.hold: dict[int, threading.Event] = {}
        self.break_read: dict[int, Exception] = {}
        self.refuse: dict[int, Exception] = {}
        self.on_complete: Callable[[FakeBody], None] = lambda body: None
        self.on_close: Callable[[FakeBody], None] = lambda body: None

    def get_object(
        self, *, Bucket: str, Key: str, Range: str | None = None, IfMatch: str | None = None
    ) -> Any:  # noqa: N803 - boto3's names
        assert (Bucket, Key) == ("src", "key")
        start, end = 0, len(self.data) - 1
        if Range is not None and not self.whole:
            first, _, last = Range.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), len(self.data) - 1)
            if start >= len(self.data):
                raise client_error("InvalidRange", 416)
        with self.lock:
            self.requested.append(start)
        if start in self.refuse:
            raise self.refuse[start]
        if IfMatch is not None and IfMatch != self.etag:
            raise client_error("PreconditionFailed", 412)
        body = FakeBody(self, start, self.data[start : end + 1])
        with self.lock:
            self.bodies.append(body)
        answer: dict[str, Any] = {
            "Body": body,
            "ContentLength": end + 1 - start,
            "ETag": self.etag,
            "Metadata": {"Marker": "m"},
            "ContentType": "application/octet-stream",
        }
        if Range is not None and not self.whole:
            answer["ContentRange"] = f"bytes {start}-{end}/{len(self.data)}"
        return answer

    def before_read(self, body: FakeBody) -> None:
        if body.start in self.break_read:
            raise self.break_read[body.start]
        if body.start in self.hold:
            self.hold[body.start].wait()

    def completed(self, body: FakeBody) -> None:
        with self.lock:
            self.completion.append(body.start)
        self.on_complete(body)

    def closed(self, body: FakeBody) -> None:
        self.on_close(body)


def reader_for(
    s3: FakeS3, *, range_size: int = 64 * KIB, in_flight: int = 4, chunk_size: int = 16 * KIB
) -> RangedReader:
    config = GetConfig(range_size=range_size, ranges_in_flight=in_flight)
    return open_ranged(s3, bucket="src", key="key", config=config, chunk_size=chunk_size)  # type: ignore[arg-type]


def ranged_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("ranged-get")]


# -- the config ----------------------------------------------------------------------------
def test_config_reads_in_ranges_from_two_ranges_on_and_states_its_memory() -> None:
    config = GetConfig(range_size=8 * KIB, ranges_in_flight=4)
    assert not config.uses_ranges(16 * KIB - 1)
    assert config.uses_ranges(16 * KIB)
    assert config.buffer_bytes(16 * KIB - 1) == 0
    assert config.buffer_bytes(20 * KIB) == 20 * KIB  # a small object holds at most itself
    assert config.buffer_bytes(10**9) == 32 * KIB  # ranges_in_flight × range_size
    assert not SINGLE_GET.uses_ranges(10**9) and SINGLE_GET.buffer_bytes(10**9) == 0


@pytest.mark.parametrize(
    "arguments",
    [{"strategy": "parallel"}, {"range_size": 0}, {"ranges_in_flight": 0}],
    ids=["strategy", "range_size", "ranges_in_flight"],
)
def test_config_refuses_what_cannot_work(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(arguments))):
        GetConfig(**arguments)


# -- content -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=40 * KIB),
    range_size=st.integers(min_value=1, max_value=9 * KIB),
    in_flight=st.integers(min_value=1, max_value=6),
    chunk_size=st.integers(min_value=1, max_value=12 * KIB),
)
def test_the_body_comes_out_whole_in_order_in_chunks_of_at_most_chunk_size(
    size: int, range_size: int, in_flight: int, chunk_size: int
) -> None:
    data = os.urandom(size)
    s3 = FakeS3(data)
    reader = reader_for(s3, range_size=range_size, in_flight=in_flight, chunk_size=chunk_size)
    chunks = list(reader.chunks())
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert reader.size == size
    assert len(s3.requested) == reader.range_count == max(1, -(-size // range_size))
    assert all(body.closed for body in s3.bodies)
    assert ranged_threads() == []


def test_ranges_completed_out_of_order_are_handed_on_in_order() -> None:
    data = os.urandom(4 * 64 * KIB + 5)
    s3 = FakeS3(data)
    first_held = s3.hold[0] = threading.Event()
    # The first range's body is released only once every other range of the window is complete.
    s3.on_complete = lambda body: first_held.set() if len(s3.completion) == 3 else None
    chunks = list(reader_for(s3, in_flight=4).chunks())
    assert s3.completion[:4] != sorted(s3.completion[:4]) and s3.completion[3] == 0
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()


def test_at_most_ranges_in_flight_ranges_are_held_at_once() -> None:
    range_size, in_flight = 16 * KIB, 3
    data = os.urandom(20 * range_size + 7)
    s3 = FakeS3(data)
    reader = reader_for(s3, range_size=range_size, in_flight=in_flight, chunk_size=4 * KIB)
    received = 0
    for chunk in reader.chunks():
        holding = received // range_size  # the range this chunk belongs to is still held
        with s3.lock:
            assert max(s3.requested) // range_size <= holding + in_flight - 1
        received += len(chunk)
    assert received == len(data)


def test_metadata_size_and_etag_come_from_the_first_answer() -> None:
    s3 = FakeS3(os.urandom(300 * KIB))
    reader = reader_for(s3)
    assert reader.size == 300 * KIB and reader.range_count == 5
    assert reader.first["Metadata"] == {"Marker": "m"} and reader.first["ETag"] == ETAG
    assert s3.requested == [0]  # the other ranges wait for the body to be read
    reader.close()
    assert all(body.closed for body in s3.bodies)


def test_a_server_that_ignores_range_is_streamed_as_one_get() -> None:
    data = os.urandom(300 * KIB + 1)
    s3 = FakeS3(data, whole=True)
    reader = reader_for(s3, chunk_size=10 * KIB)
    assert reader.range_count == 1
    assert b"".join(reader.chunks()) == data
    assert s3.requested == [0] and ranged_threads() == []


def test_an_object_emptied_since_listing_is_read_with_a_plain_get() -> None:
    s3 = FakeS3(b"")
    reader = reader_for(s3)
    assert reader.size == 0 and list(reader.chunks()) == []


# -- one version ----------------------------------------------------------------------------
def test_every_range_after_the_first_is_pinned_to_the_first_etag() -> None:
    data = os.urandom(5 * 64 * KIB)
    s3 = FakeS3(data)
    reader = reader_for(s3, in_flight=2, chunk_size=64 * KIB)
    chunks = reader.chunks()
    assert next(chunks) == data[: 64 * KIB]
    s3.etag = '"v2"'  # overwritten: ranges asked from now on meet another version
    with pytest.raises(RetryableError) as caught:
        list(chunks)
    assert "s3://src/key changed while it was read" in caught.value.detail
    assert '"v1"' in caught.value.detail
    assert isinstance(caught.value.__cause__, ClientError)
    assert ranged_threads() == [] and all(body.closed for body in s3.bodies)


# -- failures --------------------------------------------------------------------------------
def test_a_failed_range_stops_the_others_and_its_error_is_raised() -> None:
    range_size = 64 * KIB
    s3 = FakeS3(os.urandom(8 * range_size))
    first_held = s3.hold[0] = threading.Event()
    s3.break_read[2 * range_size] = ReadTimeoutError(endpoint_url="http://s3")
    # The broken body is closed after the reader recorded the failure: then the head goes on.
    s3.on_close = lambda body: first_held.set() if body.start == 2 * range_size else None
    with pytest.raises(RetryableError) as caught:
        list(reader_for(s3, in_flight=4, chunk_size=4 * KIB).chunks())
    assert caught.value.reason == Reason.AWS_UNAVAILABLE
    assert "s3://src/key bytes 131072-196607" in caught.value.detail
    head = next(body for body in s3.bodies if body.start == 0)
    assert head.reads == 1  # the held read, then the stop was seen: the rest of the range never read
    # Nothing beyond the window was asked (a range not yet asked when the failure came never is).
    assert set(s3.requested) <= {0, range_size, 2 * range_size, 3 * range_size}
    assert all(body.closed for body in s3.bodies) and ranged_threads() == []


def test_a_refused_range_is_translated_like_any_aws_error() -> None:
    s3 = FakeS3(os.urandom(4 * 64 * KIB))
    s3.refuse[3 * 64 * KIB] = client_error("AccessDenied", 403)
    with pytest.raises(PermanentError) as caught:
        list(reader_for(s3).chunks())
    assert caught.value.reason == Reason.ACCESS_DENIED


def test_a_short_range_raises() -> None:
    data = os.urandom(4 * 64 * KIB)
    s3 = FakeS3(data)
    original = s3.get_object

    def short_third(**kwargs: Any) -> Any:
        answer = original(**kwargs)
        if answer["Body"].start == 2 * 64 * KIB:
            answer["Body"].data = answer["Body"].data[:-1]  # the connection ended a byte early
        return answer

    s3.get_object = short_third  # type: ignore[method-assign]
    with pytest.raises(RetryableError, match="ended after 65535 of 65536 bytes"):
        list(reader_for(s3).chunks())


def test_an_answer_for_another_range_raises() -> None:
    s3 = FakeS3(os.urandom(4 * 64 * KIB))
    original = s3.get_object

    def grown(**kwargs: Any) -> Any:
        answer = original(**kwargs)
        if "ContentRange" in answer and not answer["ContentRange"].startswith("bytes 0-"):
            answer["ContentRange"] = answer["ContentRange"].replace("/262144", "/262145")
        return answer

    s3.get_object = grown  # type: ignore[method-assign]
    with pytest.raises(RetryableError, match=r"holds bytes \d+-\d+/262145, not bytes \d+-\d+/262144"):
        list(reader_for(s3).chunks())


# -- cancellation -----------------------------------------------------------------------------
def test_closing_early_cancels_the_outstanding_ranges_and_closes_their_bodies() -> None:
    range_size = 64 * KIB
    s3 = FakeS3(os.urandom(16 * range_size))
    reader = reader_for(s3, in_flight=4, chunk_size=4 * KIB)
    chunks = reader.chunks()
    next(chunks)
    chunks.close()  # the consumer stopped (a destination that failed closes its stream)
    assert ranged_threads() == []
    assert all(body.closed for body in s3.bodies)
    assert set(s3.requested) <= {0, range_size, 2 * range_size, 3 * range_size}  # the window, nothing after
    reader.close()  # idempotent


def test_closing_a_reader_never_read_releases_the_first_answer() -> None:
    s3 = FakeS3(os.urandom(4 * 64 * KIB))
    reader = reader_for(s3)
    reader.close()
    assert [body.closed for body in s3.bodies] == [True]
    with pytest.raises(RuntimeError, match="closed"):
        list(reader.chunks())
    assert s3.requested == [0]


def test_the_body_is_read_once() -> None:
    reader = reader_for(FakeS3(os.urandom(4 * 64 * KIB)))
    list(reader.chunks())
    with pytest.raises(RuntimeError, match="read once"):
        list(reader.chunks())
