"""Ranged GETs against the moto server: content at range boundaries, one version, the budget, decrypt → SFT.

Ranges are small here (64 KiB on objects of about 1 MiB): moto reads the whole object for
every ranged GET, so the sizes that exercise the reassembly must stay small. The
interleavings (out-of-order completion, a failed range, early close) are forced in
``tests/unit/test_ranged.py``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from egress.aws import AwsClients
from egress.destinations.routes import S3RouteDestination, SftRouteDestination
from egress.destinations.s3 import RoleClients, S3Destination, TransferConfig
from egress.destinations.sft import SftDestination
from egress.devstack.encrypt import envelope_encrypt
from egress.errors import RetryableError, StopRequested
from egress.ranged import GetConfig
from egress.routing import Route
from egress.sources import SourceObject, open_object
from egress.stream_source import ByteBudget, StreamSource
from egress.transforms.decrypt import Decryptor
from tests.conftest import REGION

KIB = 1024
MIB = 1024 * KIB
RANGE = 64 * KIB
GETS = GetConfig(range_size=RANGE, ranges_in_flight=4)


@pytest.fixture()
def bucket(aws: AwsClients, unique: str) -> str:
    name = f"ranged-{unique}"
    aws.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


@pytest.fixture()
def ranges_asked(aws: AwsClients) -> Iterator[list[str]]:
    """The ``Range`` of every GetObject the session's S3 client sends ("" for a whole-object GET)."""
    asked: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        asked.append(params.get("Range", ""))

    aws.s3.meta.events.register("provide-client-params.s3.GetObject", record)
    yield asked
    aws.s3.meta.events.unregister("provide-client-params.s3.GetObject", record)


def put(aws: AwsClients, bucket: str, key: str, data: bytes, **extra: Any) -> SourceObject:
    aws.s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    return SourceObject(bucket=bucket, key=key, size=len(data))


def ranged_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("ranged-get")]


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        RANGE - 1,
        RANGE,
        2 * RANGE - 1,
        2 * RANGE,
        2 * RANGE + 1,
        16 * RANGE - 1,
        16 * RANGE,
        16 * RANGE + 1,
    ],
)
def test_content_is_the_object_at_every_range_boundary(
    aws: AwsClients, bucket: str, ranges_asked: list[str], size: int
) -> None:
    data = os.urandom(size)
    source = put(aws, bucket, f"data-{size}.bin", data, Metadata={"Marker": "m"}, ContentType="text/csv")
    opened = open_object(aws.s3, source, chunk_size=16 * KIB, gets=GETS)
    try:
        digest = hashlib.sha256()
        for chunk in opened.chunks:
            assert 0 < len(chunk) <= 16 * KIB
            digest.update(chunk)
    finally:
        opened.close()
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert opened.size == size
    assert (opened.metadata, opened.content_type) == ({"marker": "m"}, "text/csv")
    if size >= 2 * RANGE:  # read in ranges, each asked once (from several threads: in any order)
        count = -(-size // RANGE)
        expected = [f"bytes={n * RANGE}-{min((n + 1) * RANGE, size) - 1}" for n in range(count)]
        assert sorted(ranges_asked) == sorted(expected)
    else:  # smaller than two ranges: one plain GET
        assert ranges_asked == [""]
    assert ranged_threads() == []


def test_the_single_strategy_reads_a_large_object_with_one_get(
    aws: AwsClients, bucket: str, ranges_asked: list[str]
) -> None:
    data = os.urandom(16 * RANGE + 3)
    source = put(aws, bucket, "single.bin", data)
    opened = open_object(
        aws.s3, source, chunk_size=16 * KIB, gets=GetConfig(strategy="single", range_size=RANGE)
    )
    assert b"".join(opened.chunks) == data
    assert ranges_asked == [""]


def test_an_object_overwritten_mid_read_fails_cleanly_and_names_the_object(
    aws: AwsClients, bucket: str
) -> None:
    first = os.urandom(16 * RANGE)
    source = put(aws, bucket, "moving.bin", first)
    gets = GetConfig(range_size=RANGE, ranges_in_flight=2)
    opened = open_object(aws.s3, source, chunk_size=RANGE, gets=gets)
    chunks = iter(opened.chunks)
    assert next(chunks) == first[:RANGE]  # range 0 handed on; ranges from 2 on are not asked yet
    aws.s3.put_object(Bucket=bucket, Key="moving.bin", Body=os.urandom(16 * RANGE))
    with pytest.raises(RetryableError) as caught:
        for _ in chunks:
            pass
    assert f"s3://{bucket}/moving.bin changed while it was read" in caught.value.detail
    opened.close()
    assert ranged_threads() == []


def test_the_stream_takes_its_range_buffers_from_the_budget_and_gives_them_back(
    aws: AwsClients, bucket: str
) -> None:
    data = os.urandom(16 * RANGE)
    source = put(aws, bucket, "budget.bin", data)
    budget = ByteBudget(8 * MIB)
    streams = StreamSource(
        s3=aws.s3,
        decryptor=Decryptor(aws.kms, allowed_key_arns=[]),
        budget=budget,
        chunk_size=16 * KIB,
        per_object_cost=512 * KIB,
        gets=GETS,
    )
    assert streams.cost(source) == 512 * KIB + 4 * RANGE  # the stages' share, then ranges_in_flight × range
    assert replace(streams, gets=GetConfig(strategy="single")).cost(source) == 512 * KIB
    stopped = threading.Event()
    stopped.set()  # acquire then fails at once instead of waiting for bytes that are taken
    route = Route(source_prefix="", pipeline_name="p", transfer_type="SFT")
    with streams.open(source, route, cancel=threading.Event()) as stream:
        next(stream.chunks)  # the ranges are in flight
        rest = budget.acquire(8 * MIB - streams.cost(source), cancel=stopped)
        with pytest.raises(StopRequested):
            budget.acquire(1, cancel=stopped)
        budget.release(rest)
    # Left early: the outstanding ranges were cancelled and the budget given back whole.
    assert ranged_threads() == []
    budget.release(budget.acquire(8 * MIB, cancel=stopped))


def test_a_decrypt_route_to_sft_delivers_the_plaintext_read_in_ranges(
    aws: AwsClients, bucket: str, tmp_path: Path, ranges_asked: list[str]
) -> None:
    key_arn = aws.kms.create_key(Description="ranged test key")["KeyMetadata"]["Arn"]
    plain = os.urandom(MIB + 4096 * 3 + 17)
    metadata, body = envelope_encrypt(aws.kms, key_id=key_arn, chunks=iter([plain]))
    source = put(aws, bucket, "exports/data.csv.enc", b"".join(body), Metadata=metadata)
    streams = StreamSource(
        s3=aws.s3,
        decryptor=Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=16 * KIB),
        budget=ByteBudget(64 * MIB),
        chunk_size=16 * KIB,
        per_object_cost=MIB,
        gets=GETS,
    )
    route = Route(source_prefix="exports/", pipeline_name="p", transfer_type="SFT", decrypt=True)
    with streams.open(source, route, cancel=threading.Event()) as stream:
        delivered = SftDestination(tmp_path).write("team/data.csv", stream.chunks, expected_size=len(plain))
    assert stream.encryption == "envelope"
    assert delivered.sha256 == hashlib.sha256(plain).hexdigest()
    assert (tmp_path / "team" / "data.csv").read_bytes() == plain
    assert len(ranges_asked) == -(-source.size // RANGE) and all(
        asked.startswith("bytes=") for asked in ranges_asked
    )


def test_a_file_takes_its_chunks_from_the_budget_and_an_s3_upload_its_parts_too(
    aws: AwsClients, tmp_path: Path
) -> None:
    # Large streams run as many at once as the budget holds: a file on the SFT volume holds
    # no parts, so twenty fit in 160 MiB where one S3 upload with four 16 MiB parts in
    # flight fills it.
    streams = StreamSource(
        s3=aws.s3,
        decryptor=Decryptor(aws.kms, allowed_key_arns=[]),
        budget=ByteBudget(160 * MIB),
        chunk_size=MIB,
        per_object_cost=8 * MIB,
    )
    upload = S3RouteDestination(
        S3Destination(aws.s3, config=TransferConfig(part_size=16 * MIB, max_parts_in_flight=4)),
        RoleClients(aws, session_name="test"),
        route=Route(source_prefix="x/", pipeline_name="p", transfer_type="S3", destination_bucket="b"),
        taken_over=False,
    )
    file = SftRouteDestination(SftDestination(tmp_path), folder="team", taken_over=False, receipt_grace=0)
    large = SourceObject(bucket="b", key="x/large.bin", size=1024 * MIB)
    small = SourceObject(bucket="b", key="x/small.bin", size=100 * KIB)
    assert upload.write_buffer_bytes == 80 * MIB and file.write_buffer_bytes == 0
    assert streams.cost(large, write_buffer=file.write_buffer_bytes) == 8 * MIB
    assert streams.cost(large, write_buffer=upload.write_buffer_bytes) == 88 * MIB
    for destination in (file, upload):  # a small object takes its size and a chunk, wherever it goes
        assert streams.cost(small, write_buffer=destination.write_buffer_bytes) == 100 * KIB + MIB
    stopped = threading.Event()
    stopped.set()
    taken = [streams.budget.acquire(streams.cost(large), cancel=stopped) for _ in range(20)]
    with pytest.raises(StopRequested):  # the 21st waits for one of them to finish
        streams.budget.acquire(streams.cost(large), cancel=stopped)
    for amount in taken:
        streams.budget.release(amount)
