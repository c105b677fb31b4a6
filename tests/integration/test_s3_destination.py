"""The S3 destination against a real moto server: uploads, copies, clean-up, memory, roles.

Requests are observed (and, for the fault tests, failed) through botocore's own event
hooks on a real client talking to the moto server — no client is replaced by a fake.
Content is compared by our own SHA-256 of a GET: a server-side copy of a multipart
object keeps moto's composite CRC32, which default checksum validation trips over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from egress.aws import AwsClients, AwsConfig, build_clients
from egress.destinations import Delivered
from egress.destinations.routes import S3RouteDestination
from egress.destinations.s3 import (
    MIB,
    ROLE_CACHE_MAX_ENTRIES,
    AssumedRole,
    RoleClients,
    S3Destination,
    S3Target,
    TransferConfig,
)
from egress.errors import PermanentError, Reason, RetryableError, StopRequested, translate_client_error
from egress.ledger_table import DONE, UPLOADING, ObjectRecord
from egress.routing import Route
from egress.sources import OpenedObject, SourceObject

REGION = "eu-west-2"
SMALL = TransferConfig(part_size=5 * MIB, max_parts_in_flight=2)
ENVELOPE = {
    "datakeyencryptionkeyid": "arn:aws:kms:eu-west-2:123456789012:key/11111111-2222-3333-4444-555555555555",
    "ciphertext": "QUJDREVGR0g=",
    "iv": "AAAAAAAAAAAAAAAAAAAAAA==",
}


# -- helpers ------------------------------------------------------------------------------
def make_bucket(aws: AwsClients, name: str) -> str:
    aws.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


@pytest.fixture()
def bucket(aws: AwsClients, unique: str) -> str:
    return make_bucket(aws, f"dst-{unique}")


def generated(total: int, *, chunk: int = MIB, seed: int = 1) -> Iterator[bytes]:
    """A deterministic stream of ``total`` bytes in ``chunk`` pieces, different in every piece."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * (chunk // 32 + 1)
    sent = 0
    counter = 0
    while sent < total:
        size = min(chunk, total - sent)
        counter += 1
        yield (counter.to_bytes(8, "big") + block)[:size]
        sent += size


def sha_and_size(chunks: Iterator[bytes]) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), size


def sha_of(aws: AwsClients, bucket: str, key: str) -> tuple[str, int]:
    """Our own SHA-256 and size of a GET of the object."""
    body = aws.s3.get_object(Bucket=bucket, Key=key)["Body"]
    return sha_and_size(body.iter_chunks(MIB))


def assert_no_leftovers(aws: AwsClients, bucket: str, key: str) -> None:
    assert aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert aws.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0


class Calls:
    """Counts the S3 operations a client makes (botocore's ``before-call`` event)."""

    def __init__(self, s3: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        s3.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def inject_errors(s3: Any, operation: str, *, code: str, status: int, when: Any) -> list[str]:
    """Answer ``operation`` with an S3 error instead of sending it, whenever ``when(url)`` is true.

    A ``before-send`` handler that returns a response makes botocore use it rather than
    send the request: a transport-level fault, the rest of the client is real.
    """
    failed: list[str] = []

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        if not when(request.url):
            return None
        failed.append(request.url)
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    s3.meta.events.register(f"before-send.s3.{operation}", answer)
    return failed


@pytest.fixture()
def single_try_aws(moto_endpoint: str) -> AwsClients:
    """Clients without botocore's retries: every request is made once.

    (botocore's ``retries.max_attempts`` counts retries, not calls: 0 means one call.)
    """
    return build_clients(AwsConfig(region=REGION, endpoint_url=moto_endpoint, max_attempts=0))


@pytest.fixture()
def three_tries_aws(moto_endpoint: str) -> AwsClients:
    """Clients whose botocore retries (the only retry layer around one request) make three calls at most."""
    return build_clients(AwsConfig(region=REGION, endpoint_url=moto_endpoint, max_attempts=2))


# -- streamed uploads: content, checksums ---------------------------------------------------
def test_small_stream_is_one_put_object_with_its_sha256(aws: AwsClients, bucket: str) -> None:
    data = "id,name\n1,alpha\n2,été\n".encode()
    calls = Calls(aws.s3)
    target = S3Target(bucket, "out/small.csv", metadata={"source": "unit"}, content_type="text/csv")

    delivered = S3Destination(aws.s3, config=SMALL).upload(target, iter([data[:5], data[5:]]))

    assert delivered == Delivered("out/small.csv", len(data), hashlib.sha256(data).hexdigest())
    assert sha_of(aws, bucket, "out/small.csv") == (delivered.sha256, len(data))
    assert calls.counts["PutObject"] == 1 and calls.counts["CreateMultipartUpload"] == 0
    head = aws.s3.head_object(Bucket=bucket, Key="out/small.csv", ChecksumMode="ENABLED")
    assert head["Metadata"] == {"source": "unit"}
    assert head["ContentType"] == "text/csv"
    # The SHA-256 computed while streaming is what S3 was given to verify.
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_moto_stores_checksums_it_is_sent_but_does_not_verify_them(aws: AwsClients, bucket: str) -> None:
    """A record of the emulator (moto 5.2.5): a wrong ChecksumSHA256 is stored as is; real S3 refuses it.

    So on moto the checksum path is exercised but not proven: content is checked by our
    own SHA-256 of a GET in every test.
    """
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    aws.s3.put_object(Bucket=bucket, Key="k", Body=b"data", ChecksumAlgorithm="SHA256", ChecksumSHA256=wrong)
    assert aws.s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")["ChecksumSHA256"] == wrong
    upload_id = aws.s3.create_multipart_upload(Bucket=bucket, Key="m", ChecksumAlgorithm="SHA256")["UploadId"]
    part = aws.s3.upload_part(
        Bucket=bucket,
        Key="m",
        UploadId=upload_id,
        PartNumber=1,
        Body=b"x",
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=wrong,
    )
    aws.s3.complete_multipart_upload(
        Bucket=bucket,
        Key="m",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": wrong}]},
    )
    assert sha_of(aws, bucket, "m") == (hashlib.sha256(b"x").hexdigest(), 1)


def test_empty_stream_makes_an_empty_object(aws: AwsClients, bucket: str) -> None:
    delivered = S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "empty"), iter([]))
    assert delivered == Delivered("empty", 0, hashlib.sha256(b"").hexdigest())
    assert aws.s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0


@pytest.mark.parametrize("send_checksums", [True, False])
def test_multipart_stream_is_byte_identical(aws: AwsClients, bucket: str, send_checksums: bool) -> None:
    # 17 MiB in chunks of odd sizes, one bigger than a part: pieces cross part borders.
    chunks = [*generated(6 * MIB, chunk=777_777), *generated(11 * MIB + 123, chunk=11 * MIB, seed=2)]
    total = sum(len(chunk) for chunk in chunks)
    config = TransferConfig(part_size=5 * MIB, max_parts_in_flight=2, send_checksums=send_checksums)
    sent_headers: list[dict[str, str]] = []
    aws.s3.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **_: sent_headers.append({k.lower(): str(v) for k, v in request.headers.items()}),
    )
    target = S3Target(bucket, "out/big.bin", metadata={"k": "v"}, content_type="application/x-test")

    delivered = S3Destination(aws.s3, config=config).upload(target, iter(chunks))

    assert (delivered.sha256, delivered.size) == sha_and_size(iter(chunks))
    assert sha_of(aws, bucket, "out/big.bin") == (delivered.sha256, total)
    head = aws.s3.head_object(Bucket=bucket, Key="out/big.bin")
    assert head["ETag"].strip('"').endswith("-4")
    assert head["Metadata"] == {"k": "v"}
    assert head["ContentType"] == "application/x-test"
    assert len(sent_headers) == 4
    assert all(("x-amz-checksum-sha256" in headers) is send_checksums for headers in sent_headers)
    assert aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_nothing_is_visible_before_the_stream_ends(aws: AwsClients, bucket: str) -> None:
    seen: list[int] = []

    def watched(total: int, key: str) -> Iterator[bytes]:
        for chunk in generated(total):
            seen.append(aws.s3.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"])
            yield chunk

    destination = S3Destination(aws.s3, config=SMALL)
    destination.upload(S3Target(bucket, "small"), watched(3 * MIB, "small"))
    destination.upload(S3Target(bucket, "big"), watched(16 * MIB, "big"))
    assert len(seen) == 19 and set(seen) == {0}
    assert aws.s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 2


# -- bounded memory ---------------------------------------------------------------------------
def test_parts_in_flight_are_bounded_and_the_producer_waits(aws: AwsClients, bucket: str) -> None:
    """Structural bound: never more than max_parts_in_flight parts on the wire, nor read ahead."""
    part, limit, chunk = 5 * MIB, 2, 512 * 1024
    state = {"on_wire": 0, "most_on_wire": 0, "parts_done": 0, "ahead": 0}
    lock = threading.Lock()

    def started(**_: Any) -> None:
        time.sleep(0.05)  # slow parts down, so a producer that did not wait would run ahead
        with lock:
            state["on_wire"] += 1
            state["most_on_wire"] = max(state["most_on_wire"], state["on_wire"])

    def finished(**_: Any) -> None:
        with lock:
            state["on_wire"] -= 1
            state["parts_done"] += 1

    aws.s3.meta.events.register("before-call.s3.UploadPart", started)
    aws.s3.meta.events.register("after-call.s3.UploadPart", finished)

    def producer(total: int) -> Iterator[bytes]:
        pulled = 0
        for piece in generated(total, chunk=chunk):
            pulled += len(piece)
            with lock:
                state["ahead"] = max(state["ahead"], pulled - state["parts_done"] * part)
            yield piece

    config = TransferConfig(part_size=part, max_parts_in_flight=limit)
    delivered = S3Destination(aws.s3, config=config).upload(S3Target(bucket, "bounded"), producer(60 * MIB))

    assert delivered.size == 60 * MIB
    assert state["most_on_wire"] <= limit
    # Bytes pulled but not yet acknowledged: parts on the wire + the one being filled + a chunk.
    assert state["ahead"] <= (limit + 1) * part + chunk, state


MEMORY_PROBE = r"""
import gc, hashlib, json, sys, threading, tracemalloc
import psutil
from egress.aws import AwsConfig, build_clients
from egress.destinations.s3 import MIB, S3Destination, S3Target, TransferConfig

endpoint, bucket, total, part, limit = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
chunk = MIB
aws = build_clients(AwsConfig(region="eu-west-2", endpoint_url=endpoint))
destination = S3Destination(aws.s3, config=TransferConfig(part_size=part, max_parts_in_flight=limit))
# Warm up with small requests (botocore loads operation models lazily), then measure.
destination.upload(S3Target(bucket, "warm-up"), iter([b"x"]))
upload_id = aws.s3.create_multipart_upload(Bucket=bucket, Key="warm-up")["UploadId"]
aws.s3.abort_multipart_upload(Bucket=bucket, Key="warm-up", UploadId=upload_id)
gc.collect()

produced = hashlib.sha256()
def stream():
    sent = 0
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    while sent < total:
        data = (sent.to_bytes(8, "big") + block)[: min(chunk, total - sent)]
        produced.update(data)
        sent += len(data)
        yield data

process = psutil.Process()
rss_before = process.memory_info().rss
rss_peak = rss_before
done = threading.Event()
def sample():
    global rss_peak
    while not done.wait(0.002):
        rss_peak = max(rss_peak, process.memory_info().rss)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
tracemalloc.start()
delivered = destination.upload(S3Target(bucket, "huge.bin"), stream())
_, traced_peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
done.set()
sampler.join()
print(json.dumps({"size": delivered.size, "sha256": delivered.sha256, "produced": produced.hexdigest(),
                  "traced_peak": traced_peak, "rss_before": rss_before, "rss_peak": rss_peak}))
"""


def test_memory_of_a_200_mib_stream_stays_bounded(aws: AwsClients, bucket: str) -> None:
    """A 200 MiB stream in 8 MiB parts, 4 in flight, holds a few parts, never the object.

    Measured in a process of its own: the moto server runs inside the test process and
    holds the whole object, and ``ru_maxrss`` of a child starts at its parent's (Linux
    keeps it across fork and exec), so the child's RSS is sampled every 2 ms instead.
    Two figures: tracemalloc's peak (every Python allocation, so every part buffer,
    exactly) and the RSS growth over the upload (everything, C allocations included;
    sampling can only miss the top of a spike shorter than 2 ms).
    """
    total, part, limit = 200 * MIB, 8 * MIB, 4
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_PROBE,
            aws.config.endpoint_url or "",
            bucket,
            str(total),
            str(part),
            str(limit),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth = figures["rss_peak"] - figures["rss_before"]
    print(
        f"\n200 MiB stream, 8 MiB parts, 4 in flight: tracemalloc peak {figures['traced_peak'] / MIB:.1f} MiB, "
        f"RSS {figures['rss_before'] / MIB:.0f} MiB before, +{growth / MIB:.1f} MiB at peak "
        f"(formula part x (in flight + 1) = {part * (limit + 1) / MIB:.0f} MiB)"
    )
    assert figures["size"] == total
    assert figures["sha256"] == figures["produced"]
    bound = (limit + 2) * part  # parts on the wire + one being filled + one being joined
    assert figures["traced_peak"] <= bound + 4 * MIB
    assert growth <= bound + 16 * MIB  # allocator slack and lazily loaded code
    assert growth < total / 3
    assert sha_of(aws, bucket, "huge.bin") == (figures["sha256"], total)


# -- failures and stops leave nothing behind ---------------------------------------------------
def test_stream_failing_mid_way_leaves_no_upload_and_no_object(aws: AwsClients, bucket: str) -> None:
    calls = Calls(aws.s3)
    closed = threading.Event()

    def failing() -> Iterator[bytes]:
        try:
            yield from generated(12 * MIB)  # two parts are on S3 by now
            raise ValueError("authentication tag mismatch")
        finally:
            closed.set()

    with pytest.raises(ValueError, match="tag mismatch"):
        S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "bad.bin"), failing())
    assert_no_leftovers(aws, bucket, "bad.bin")
    assert calls.counts["UploadPart"] == 2 and calls.counts["AbortMultipartUpload"] == 1
    assert calls.counts["CompleteMultipartUpload"] == 0
    assert closed.is_set()


def test_stream_failing_before_one_part_writes_nothing(aws: AwsClients, bucket: str) -> None:
    calls = Calls(aws.s3)

    def failing() -> Iterator[bytes]:
        yield b"partial"
        raise ValueError("boom")

    with pytest.raises(ValueError):
        S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "bad-small"), failing())
    assert sum(calls.counts.values()) == 0  # nothing was sent before the stream ended
    assert_no_leftovers(aws, bucket, "bad-small")


def test_cancel_raises_stop_requested_and_aborts(aws: AwsClients, bucket: str) -> None:
    cancel = threading.Event()

    def stream() -> Iterator[bytes]:
        for index, chunk in enumerate(generated(30 * MIB)):
            if index == 12:
                cancel.set()  # the worker's grace period ended
            yield chunk

    with pytest.raises(StopRequested):
        S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "cancelled"), stream(), cancel=cancel)
    assert_no_leftovers(aws, bucket, "cancelled")


@pytest.mark.parametrize("raised", [StopRequested, KeyboardInterrupt])
def test_base_exceptions_in_the_stream_abort(
    aws: AwsClients, bucket: str, raised: type[BaseException]
) -> None:
    def stream() -> Iterator[bytes]:
        yield from generated(11 * MIB)
        raise raised

    with pytest.raises(raised):
        S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "interrupted"), stream())
    assert_no_leftovers(aws, bucket, "interrupted")


def test_failed_part_fails_the_upload_permanently_and_aborts(single_try_aws: AwsClients, bucket: str) -> None:
    s3 = single_try_aws.s3
    calls = Calls(s3)
    inject_errors(s3, "UploadPart", code="AccessDenied", status=403, when=lambda url: "partNumber=2" in url)

    with pytest.raises(PermanentError) as caught:
        S3Destination(s3, config=SMALL).upload(S3Target(bucket, "denied"), generated(40 * MIB))
    assert caught.value.reason == Reason.ACCESS_DENIED
    assert "part 2" in caught.value.detail
    assert_no_leftovers(single_try_aws, bucket, "denied")
    assert calls.counts["UploadPart"] <= 5  # the producer stopped soon; it did not push all 8 parts


def test_part_is_retried_with_backoff_then_succeeds(aws: AwsClients, bucket: str) -> None:
    """botocore's standard retries (the clients' one config) retry the part; the upload succeeds."""
    s3 = aws.s3
    failures = 0

    def twice(url: str) -> bool:
        nonlocal failures
        if "partNumber=2" in url and failures < 2:
            failures += 1
            return True
        return False

    failed = inject_errors(s3, "UploadPart", code="SlowDown", status=503, when=twice)
    delivered = S3Destination(s3, config=SMALL).upload(S3Target(bucket, "flaky"), generated(12 * MIB))
    assert len(failed) == 2
    assert sha_of(aws, bucket, "flaky") == (delivered.sha256, 12 * MIB)


def test_part_retries_are_bounded_then_retryable_and_aborted(
    three_tries_aws: AwsClients, bucket: str
) -> None:
    s3 = three_tries_aws.s3
    failed = inject_errors(s3, "UploadPart", code="InternalError", status=500, when=lambda url: True)
    config = TransferConfig(part_size=5 * MIB, max_parts_in_flight=1)
    with pytest.raises(RetryableError) as caught:
        S3Destination(s3, config=config).upload(S3Target(bucket, "broken"), generated(11 * MIB))
    assert caught.value.reason == Reason.AWS_UNAVAILABLE
    assert len(failed) == 3  # one part, three attempts (botocore's), no more: no second layer multiplies them
    assert_no_leftovers(three_tries_aws, bucket, "broken")


def test_failing_abort_is_logged_and_does_not_mask_the_cause(
    three_tries_aws: AwsClients, aws: AwsClients, bucket: str
) -> None:
    s3 = three_tries_aws.s3
    aborts = inject_errors(
        s3, "AbortMultipartUpload", code="InternalError", status=500, when=lambda url: True
    )

    def failing() -> Iterator[bytes]:
        yield from generated(6 * MIB)
        raise ValueError("the cause")

    with pytest.raises(ValueError, match="the cause"):
        S3Destination(s3, config=SMALL).upload(S3Target(bucket, "stuck"), failing())
    assert len(aborts) == 3  # tried (botocore's three attempts), then logged and swallowed
    uploads = aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == ["stuck"]  # left for the lifecycle rule
    for upload in uploads:  # tidy up with a client without the injected fault
        aws.s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


# -- destination errors --------------------------------------------------------------------------
def test_missing_destination_bucket_is_permanent(aws: AwsClients, unique: str) -> None:
    destination = S3Destination(aws.s3, config=SMALL)
    for stream in (iter([b"small"]), generated(12 * MIB)):
        with pytest.raises(PermanentError) as caught:
            destination.upload(S3Target(f"nowhere-{unique}", "k"), stream)
        assert caught.value.reason == Reason.DESTINATION_MISSING
    source = make_bucket(aws, f"src-{unique}")
    aws.s3.put_object(Bucket=source, Key="a", Body=b"abc")
    with pytest.raises(PermanentError) as caught:
        destination.copy(SourceObject(source, "a", 3), S3Target(f"nowhere-{unique}", "a"))
    assert caught.value.reason == Reason.DESTINATION_MISSING


def test_bucket_policy_denial_is_permanent_access_denied(aws: AwsClients, bucket: str) -> None:
    """moto enforces a bucket policy's Deny on PutObject (not on CreateMultipartUpload)."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    aws.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    with pytest.raises(PermanentError) as caught:
        S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "denied"), iter([b"x"]))
    assert caught.value.reason == Reason.ACCESS_DENIED
    assert f"s3://{bucket}/denied" in caught.value.detail


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


@pytest.mark.parametrize(
    ("code", "status", "family", "reason"),
    [
        ("AccessDenied", 403, PermanentError, Reason.ACCESS_DENIED),
        ("403", 403, PermanentError, Reason.ACCESS_DENIED),
        ("NoSuchBucket", 404, PermanentError, Reason.DESTINATION_MISSING),
        ("SlowDown", 503, RetryableError, Reason.THROTTLED),
        ("InternalError", 500, RetryableError, Reason.AWS_UNAVAILABLE),
        ("ServiceUnavailable", 503, RetryableError, Reason.AWS_UNAVAILABLE),
    ],
)
def test_translate_client_error(code: str, status: int, family: type, reason: str) -> None:
    translated = translate_client_error(client_error(code, status), doing="writing s3://b/k")
    assert isinstance(translated, family)
    assert translated.reason == reason
    assert "writing s3://b/k" in translated.detail


def test_empty_bucket_in_a_target_is_an_invalid_route() -> None:
    with pytest.raises(PermanentError) as caught:
        S3Target("", "k")
    assert caught.value.reason == Reason.INVALID_ROUTE


# -- SSE-KMS, ACL, roles -------------------------------------------------------------------------
def test_sse_kms_applies_to_put_multipart_and_copies(aws: AwsClients, bucket: str) -> None:
    key_arn = aws.kms.create_key(Description="destination key")["KeyMetadata"]["Arn"]
    destination = S3Destination(aws.s3, config=TransferConfig(part_size=5 * MIB, copy_threshold=5 * MIB))
    destination.upload(S3Target(bucket, "kms-small", kms_key_id=key_arn), iter([b"secret"]))
    destination.upload(S3Target(bucket, "kms-big", kms_key_id=key_arn), generated(11 * MIB))
    destination.copy(SourceObject(bucket, "kms-small", 6), S3Target(bucket, "kms-copy", kms_key_id=key_arn))
    destination.copy(
        SourceObject(bucket, "kms-big", 11 * MIB), S3Target(bucket, "kms-mcopy", kms_key_id=key_arn)
    )
    for key in ("kms-small", "kms-big", "kms-copy", "kms-mcopy"):
        head = aws.s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"] == key_arn, key
    assert sha_of(aws, bucket, "kms-copy") == (hashlib.sha256(b"secret").hexdigest(), 6)


def test_cross_account_upload_through_an_assumed_role_with_acl(aws: AwsClients, bucket: str) -> None:
    role_arn = "arn:aws:iam::210987654321:role/egress-writer"
    client = RoleClients(aws, session_name="data egress/test").client_for(role_arn)
    tokens: list[bool] = []
    acls: list[str | None] = []

    def seen(request: Any, **_: Any) -> None:
        tokens.append("X-Amz-Security-Token" in request.headers)  # temporary credentials are used
        acl = request.headers.get("x-amz-acl")
        acls.append(acl.decode() if isinstance(acl, bytes) else acl)

    client.meta.events.register("before-send.s3", seen)
    destination = S3Destination(client, config=SMALL)
    destination.upload(S3Target(bucket, "x-small", bucket_owner_full_control=True), iter([b"cross"]))
    destination.upload(S3Target(bucket, "x-big", bucket_owner_full_control=True), generated(11 * MIB))

    assert tokens and all(tokens)
    assert acls.count("bucket-owner-full-control") == 2  # PutObject and CreateMultipartUpload
    owner = aws.s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    for key in ("x-small", "x-big"):
        grants = aws.s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        assert {"Grantee": {"ID": owner, "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"} in grants
    assert sha_of(aws, bucket, "x-small") == (hashlib.sha256(b"cross").hexdigest(), 5)
    assert sha_of(aws, bucket, "x-big") == sha_and_size(generated(11 * MIB))


def test_role_credentials_are_cached_refreshed_before_expiry_and_bounded(aws: AwsClients) -> None:
    assumed: list[str] = []
    aws.sts.meta.events.register(
        "before-parameter-build.sts.AssumeRole", lambda params, **_: assumed.append(params["RoleArn"])
    )
    role_arn = "arn:aws:iam::210987654321:role/egress-writer"
    now = time.time()
    clock = [now]
    roles = RoleClients(aws, session_name="s", clock=lambda: clock[0])

    first = roles.client_for(role_arn)
    clock[0] = now + 60
    again = roles.client_for(role_arn)
    assert again is first and len(assumed) == 1
    entry = roles.cached(role_arn)
    assert isinstance(entry, AssumedRole) and entry.expires_at > now + 3000
    # Within five minutes of expiry the credentials are renewed.
    clock[0] = entry.expires_at - 299
    renewed = roles.client_for(role_arn)
    assert renewed is not first and len(assumed) == 2

    clock[0] = time.time()
    for index in range(ROLE_CACHE_MAX_ENTRIES + 8):
        roles.client_for(f"arn:aws:iam::210987654321:role/r{index}")
    assert len(roles) <= ROLE_CACHE_MAX_ENTRIES


def test_assume_role_access_denied_is_permanent() -> None:
    translated = translate_client_error(
        client_error("AccessDenied", 403, "AssumeRole"), doing="assuming role r"
    )
    assert isinstance(translated, PermanentError) and translated.reason == Reason.ACCESS_DENIED


# -- server-side copies ----------------------------------------------------------------------------
def test_copy_object_keeps_envelope_metadata_and_content(aws: AwsClients, unique: str) -> None:
    source = make_bucket(aws, f"src-{unique}")
    target_bucket = make_bucket(aws, f"dst-{unique}")
    data = b"".join(generated(300_000, chunk=100_000))
    aws.s3.put_object(
        Bucket=source, Key="in/a.bin.enc", Body=data, Metadata=ENVELOPE, ContentType="application/x-enc"
    )
    listed = aws.s3.list_objects_v2(Bucket=source)["Contents"][0]
    calls = Calls(aws.s3)

    delivered = S3Destination(aws.s3, config=SMALL).copy(
        SourceObject(source, "in/a.bin.enc", len(data), etag=listed["ETag"].strip('"')),
        S3Target(target_bucket, "out/a.bin.enc"),
    )

    own = hashlib.sha256(data).hexdigest()
    assert delivered == Delivered("out/a.bin.enc", len(data), own)  # moto returns a full-object SHA-256
    assert dict(calls.counts) == {"CopyObject": 1}  # no GET: no byte passed through the worker
    head = aws.s3.head_object(Bucket=target_bucket, Key="out/a.bin.enc")
    assert head["Metadata"] == ENVELOPE
    assert head["ContentType"] == "application/x-enc"
    assert sha_of(aws, target_bucket, "out/a.bin.enc") == (own, len(data))


def test_copy_of_a_multipart_source_is_identical(aws: AwsClients, bucket: str) -> None:
    destination = S3Destination(aws.s3, config=SMALL)
    uploaded = destination.upload(S3Target(bucket, "multi", metadata=ENVELOPE), generated(12 * MIB))
    copied = destination.copy(SourceObject(bucket, "multi", uploaded.size), S3Target(bucket, "multi-copy"))
    assert copied.sha256 == uploaded.sha256  # moto computes a full-object SHA-256 on CopyObject
    assert sha_of(aws, bucket, "multi-copy") == (uploaded.sha256, uploaded.size)
    assert aws.s3.head_object(Bucket=bucket, Key="multi-copy")["Metadata"] == ENVELOPE


def test_multipart_copy_above_the_threshold(aws: AwsClients, unique: str) -> None:
    source = make_bucket(aws, f"src-{unique}")
    target_bucket = make_bucket(aws, f"dst-{unique}")
    total = 12 * MIB + 5
    S3Destination(aws.s3, config=SMALL).upload(
        S3Target(source, "big", metadata=ENVELOPE, content_type="application/x-enc"), generated(total)
    )
    config = TransferConfig(copy_threshold=MIB, copy_part_size=5 * MIB, max_parts_in_flight=2)
    calls = Calls(aws.s3)

    delivered = S3Destination(aws.s3, config=config).copy(
        SourceObject(source, "big", total),
        S3Target(target_bucket, "big-copy", bucket_owner_full_control=True),
    )

    assert delivered == Delivered("big-copy", total, None)
    assert calls.counts["UploadPartCopy"] == 3 and calls.counts["GetObject"] == 0
    assert calls.counts["CompleteMultipartUpload"] == 1
    head = aws.s3.head_object(Bucket=target_bucket, Key="big-copy")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"] == ENVELOPE  # taken from a HeadObject of the source
    assert head["ContentType"] == "application/x-enc"
    assert sha_of(aws, target_bucket, "big-copy") == sha_and_size(generated(total))
    assert aws.s3.list_multipart_uploads(Bucket=target_bucket).get("Uploads", []) == []


@pytest.mark.parametrize("multipart", [False, True])
def test_copy_with_metadata_of_its_own_replaces_the_source_metadata(
    aws: AwsClients, unique: str, multipart: bool
) -> None:
    source = make_bucket(aws, f"src-{unique}")
    target_bucket = make_bucket(aws, f"dst-{unique}")
    total = 12 * MIB + 5 if multipart else 300_000
    S3Destination(aws.s3, config=SMALL).upload(
        S3Target(source, "in/a.enc", metadata=ENVELOPE, content_type="application/x-enc"), generated(total)
    )
    listed = aws.s3.list_objects_v2(Bucket=source)["Contents"][0]
    config = TransferConfig(copy_threshold=MIB if multipart else 5 * MIB, copy_part_size=5 * MIB)
    calls = Calls(aws.s3)
    created: list[dict[str, Any]] = []
    aws.s3.meta.events.register(
        "before-parameter-build.s3.CreateMultipartUpload", lambda params, **_: created.append(dict(params))
    )
    seen: list[dict[str, str]] = []

    def rewrapped(metadata: Any) -> dict[str, str]:
        seen.append(dict(metadata))
        return {"iv": metadata["iv"], "datakeyencryptionkeyid": "recipient", "ciphertext": "bmV3"}

    S3Destination(aws.s3, config=config).copy(
        SourceObject(source, "in/a.enc", total, etag=listed["ETag"].strip('"')),
        S3Target(target_bucket, "out/a.enc"),
        metadata_for=rewrapped,
    )

    counts = dict(calls.counts)
    assert counts.get("GetObject", 0) == 0 and counts["HeadObject"] == 1  # no byte through the worker
    assert seen == [ENVELOPE]  # asked once, with the source's metadata
    expected = {"iv": ENVELOPE["iv"], "datakeyencryptionkeyid": "recipient", "ciphertext": "bmV3"}
    head = aws.s3.head_object(Bucket=target_bucket, Key="out/a.enc")
    assert head["Metadata"] == expected
    assert head["ContentType"] == "application/x-enc"  # REPLACE drops it unless it is set again
    assert sha_of(aws, target_bucket, "out/a.enc") == sha_and_size(generated(total))
    if multipart:
        assert [call["Metadata"] for call in created] == [expected]
    else:
        assert counts["CopyObject"] == 1 and created == []


def test_copy_keeps_the_source_metadata_when_metadata_for_says_none(aws: AwsClients, bucket: str) -> None:
    aws.s3.put_object(Bucket=bucket, Key="plain.csv", Body=b"a,b\n", Metadata={"owner": "team"})
    S3Destination(aws.s3, config=SMALL).copy(
        SourceObject(bucket, "plain.csv", 4), S3Target(bucket, "copy.csv"), metadata_for=lambda metadata: None
    )
    assert aws.s3.head_object(Bucket=bucket, Key="copy.csv")["Metadata"] == {"owner": "team"}


def test_s3_route_write_gives_the_upload_the_metadata_of_metadata_for(aws: AwsClients, bucket: str) -> None:
    destination = s3_route(aws, bucket)
    opened = OpenedObject(size=3, metadata=ENVELOPE, content_type="application/x-enc", chunks=iter([b"abc"]))
    destination.write(
        "out/r",
        opened.chunks,
        opened=opened,
        cancel=threading.Event(),
        journal=RecordingJournal(),
        metadata_for=lambda metadata: {"iv": metadata["iv"], "ciphertext": "bmV3"},
    )
    head = aws.s3.head_object(Bucket=bucket, Key="out/r")
    assert head["Metadata"] == {"iv": ENVELOPE["iv"], "ciphertext": "bmV3"}


def test_role_ssm_client_reads_as_the_role_and_follows_the_assumed_session(
    aws: AwsClients, unique: str
) -> None:
    name = f"/egress-test/{unique}"
    aws.ssm.put_parameter(Name=name, Value="v", Type="String")
    role_arn = "arn:aws:iam::123456789012:role/egress-reader"
    now = time.time()
    clock = [now]
    roles = RoleClients(aws, session_name="s", clock=lambda: clock[0])

    client = roles.ssm_client_for(role_arn)
    assert client.get_parameter(Name=name)["Parameter"]["Value"] == "v"
    assert roles.ssm_client_for(role_arn) is client  # made once per assumed role
    assert client.meta.region_name == REGION
    entry = roles.cached(role_arn)
    assert entry is not None
    clock[0] = entry.expires_at - 299  # the role is assumed again: a client of the new session
    assert roles.ssm_client_for(role_arn) is not client


def test_failed_part_copy_aborts_the_multipart_copy(single_try_aws: AwsClients, bucket: str) -> None:
    s3 = single_try_aws.s3
    S3Destination(s3, config=SMALL).upload(S3Target(bucket, "src"), generated(16 * MIB))
    inject_errors(
        s3, "UploadPartCopy", code="AccessDenied", status=403, when=lambda url: "partNumber=3" in url
    )
    config = TransferConfig(copy_threshold=MIB, copy_part_size=5 * MIB, max_parts_in_flight=2)
    with pytest.raises(PermanentError) as caught:
        S3Destination(s3, config=config).copy(SourceObject(bucket, "src", 16 * MIB), S3Target(bucket, "dst"))
    assert caught.value.reason == Reason.ACCESS_DENIED
    assert_no_leftovers(single_try_aws, bucket, "dst")


def test_cancelled_multipart_copy_is_aborted(aws: AwsClients, bucket: str) -> None:
    S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "src"), generated(16 * MIB))
    cancel = threading.Event()
    aws.s3.meta.events.register("after-call.s3.UploadPartCopy", lambda **_: cancel.set())
    config = TransferConfig(copy_threshold=MIB, copy_part_size=5 * MIB, max_parts_in_flight=1)
    with pytest.raises(StopRequested):
        S3Destination(aws.s3, config=config).copy(
            SourceObject(bucket, "src", 16 * MIB), S3Target(bucket, "dst"), cancel=cancel
        )
    assert_no_leftovers(aws, bucket, "dst")


@pytest.mark.parametrize("operation", ["upload", "copy"])
def test_an_upload_id_that_cannot_be_recorded_aborts_the_upload(
    aws: AwsClients, bucket: str, operation: str
) -> None:
    """The id goes to the ledger the moment the upload exists; if that fails, nothing is left open."""
    S3Destination(aws.s3, config=SMALL).upload(S3Target(bucket, "src"), generated(11 * MIB))
    seen: list[str] = []

    def refuse(upload_id: str) -> None:
        seen.append(upload_id)
        raise RuntimeError("ledger down")

    config = TransferConfig(part_size=5 * MIB, copy_threshold=MIB, copy_part_size=5 * MIB)
    destination = S3Destination(aws.s3, config=config)
    with pytest.raises(RuntimeError, match="ledger down"):
        if operation == "upload":
            destination.upload(S3Target(bucket, "dst"), generated(12 * MIB), on_upload_started=refuse)
        else:
            destination.copy(
                SourceObject(bucket, "src", 11 * MIB), S3Target(bucket, "dst"), on_upload_started=refuse
            )
    assert len(seen) == 1
    assert_no_leftovers(aws, bucket, "dst")


def test_copy_with_cancel_already_set_does_nothing(aws: AwsClients, bucket: str) -> None:
    calls = Calls(aws.s3)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(StopRequested):
        S3Destination(aws.s3, config=SMALL).copy(
            SourceObject(bucket, "x", 1), S3Target(bucket, "y"), cancel=cancel
        )
    assert sum(calls.counts.values()) == 0


# -- the config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arguments",
    [
        {"part_size": 5 * MIB - 1},
        {"part_size": 5 * 1024 * MIB + 1},
        {"part_size": 8.0 * MIB},
        {"max_parts_in_flight": 0},
        {"copy_threshold": -1},
        {"copy_threshold": 5 * 1024 * MIB + 1},
        {"copy_part_size": MIB},
        {"send_checksums": "yes"},
    ],
)
def test_transfer_config_is_validated(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TransferConfig(**arguments)


def test_transfer_config_states_its_worst_case_memory() -> None:
    config = TransferConfig(part_size=16 * MIB, max_parts_in_flight=4)
    assert config.upload_memory_bytes == 80 * MIB
    assert config.worst_case_memory(chunk_size=MIB, concurrent_uploads=8) == 8 * 81 * MIB
    assert config.max_stream_size == 16 * MIB * 10_000
    assert "part_size × (max_parts_in_flight + 1)" in (TransferConfig.__doc__ or "")


# -- the route's destination (what delivery asks of S3) -------------------------------------------
class RecordingJournal:
    """The delivery's side of :class:`ObjectJournal`, keeping the rows instead of writing them."""

    def __init__(self) -> None:
        self.now: list[tuple[str, Delivered | None, dict[str, Any]]] = []
        self.later: list[tuple[str, Delivered, dict[str, Any]]] = []

    def record_now(self, status: str, delivered: Delivered | None = None, **extra: Any) -> None:
        self.now.append((status, delivered, extra))

    def record_later(self, status: str, delivered: Delivered, **extra: Any) -> None:
        self.later.append((status, delivered, extra))


def s3_route(aws: AwsClients, bucket: str, *, taken_over: bool = False, **columns: Any) -> S3RouteDestination:
    route = Route(
        source_prefix="in/", pipeline_name="p", transfer_type="S3", destination_bucket=bucket, **columns
    )
    return S3RouteDestination(
        S3Destination(aws.s3, config=SMALL), RoleClients(aws), route=route, taken_over=taken_over
    )


def test_s3_route_copies_only_what_nothing_changes(aws: AwsClients, bucket: str) -> None:
    source = SourceObject(bucket, "in/a", 1)
    assert s3_route(aws, bucket).copies(source) is True
    for columns in ({"decrypt": True}, {"compress": True}, {"role_arn": "arn:aws:iam::210987654321:role/w"}):
        assert s3_route(aws, bucket, **columns).copies(source) is False, columns


def test_s3_route_records_the_upload_id_at_once_and_done_after(aws: AwsClients, bucket: str) -> None:
    journal = RecordingJournal()
    destination = s3_route(aws, bucket)
    opened = OpenedObject(
        size=11 * MIB, metadata=ENVELOPE, content_type="application/x-enc", chunks=generated(11 * MIB)
    )

    delivered = destination.write(
        "out/a", opened.chunks, opened=opened, cancel=threading.Event(), journal=journal
    )
    assert journal.later == []
    destination.record_delivered(delivered, journal=journal)

    [(status, recorded, extra)] = journal.now
    assert (status, recorded, extra["bucket"]) == (UPLOADING, None, bucket)
    assert extra["mpu_id"]
    assert journal.later == [(DONE, delivered, {})]
    head = aws.s3.head_object(Bucket=bucket, Key="out/a")
    assert head["Metadata"] == ENVELOPE  # undecrypted bytes keep their envelope
    assert head["ContentType"] == "application/x-enc"


def test_s3_route_resume_and_takeover_abort_the_lapsed_claims_uploads(aws: AwsClients, bucket: str) -> None:
    recorded = aws.s3.create_multipart_upload(Bucket=bucket, Key="out/recorded")["UploadId"]
    aws.s3.create_multipart_upload(Bucket=bucket, Key="out/unrecorded")  # the claim died before recording it
    records = {
        "out/done": ObjectRecord(name="out/done", status=DONE, size=3),
        "out/recorded": ObjectRecord(name="out/recorded", status=UPLOADING, mpu_id=recorded, bucket=bucket),
    }
    destination = s3_route(aws, bucket, taken_over=True, compress=True)

    done = destination.resume(records, reread=lambda name: None, cancel=threading.Event())

    assert list(done) == ["out/done"]
    uploads = aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == ["out/unrecorded"]
    destination.prepare(SourceObject(bucket, "in/unrecorded", 1), "out/unrecorded")
    assert aws.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
