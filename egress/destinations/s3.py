"""The S3 destination: server-side copies, and streamed uploads with bounded memory.

Streamed uploads collect one part at a time from the chunk iterator and upload at most
``max_parts_in_flight`` parts at once; the producer waits for a free slot, so the
upload never holds more than ``part_size × (max_parts_in_flight + 1)`` bytes. A stream
shorter than one part becomes a single PutObject. Nothing is visible before the stream
ended cleanly (CompleteMultipartUpload / PutObject come last); any failure aborts the
multipart upload, so none is left behind. Each request carries the SHA-256 that S3
verifies.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from egress.destinations import Delivered
from egress.errors import RetryableError, StopRequested, translate_client_error
from egress.sources import SourceObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from egress.aws import AwsClients

log = structlog.get_logger("egress.destinations.s3")
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class TransferConfig:
    """How uploads and copies are cut. Validated when built.

    Worst-case memory of one streamed upload: ``part_size × (max_parts_in_flight + 1)``
    (the parts being sent plus the one being filled).
    """

    part_size: int = 16 * MIB
    max_parts_in_flight: int = 4
    copy_threshold: int = 5 * GIB
    copy_part_size: int = 512 * MIB
    send_checksums: bool = True
    attempts: int = 4

    def __post_init__(self) -> None:
        if not 5 * MIB <= self.part_size <= 5 * GIB:
            raise ValueError(f"part_size must be 5 MiB..5 GiB (S3 limits), got {self.part_size}")
        if not 1 <= self.max_parts_in_flight <= 64:
            raise ValueError(f"max_parts_in_flight must be 1..64, got {self.max_parts_in_flight}")
        if not 0 < self.copy_threshold <= 5 * GIB:
            raise ValueError(
                f"copy_threshold must be at most 5 GiB (CopyObject's limit), got {self.copy_threshold}"
            )
        if not 5 * MIB <= self.copy_part_size <= 5 * GIB:
            raise ValueError(f"copy_part_size must be 5 MiB..5 GiB, got {self.copy_part_size}")

    @property
    def max_memory(self) -> int:
        return self.part_size * (self.max_parts_in_flight + 1)


@dataclass(frozen=True)
class S3Target:
    """Where and how one object is written."""

    bucket: str
    key: str
    kms_key_id: str | None = None
    bucket_owner_full_control: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def put_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.kms_key_id:
            arguments.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        if self.bucket_owner_full_control:
            arguments["ACL"] = "bucket-owner-full-control"
        return arguments


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class S3Destination:
    """Uploads and copies into S3 with one client."""

    def __init__(self, s3: S3Client, *, config: TransferConfig | None = None) -> None:
        self._s3 = s3
        self.config = config or TransferConfig()

    def _call(self, doing: str, operation: Any, **arguments: Any) -> Any:
        """One AWS call, translated, retried on retryable errors with jittered backoff."""
        for attempt in Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            reraise=True,
        ):
            with attempt:
                try:
                    return operation(**arguments)
                except (ClientError, BotoCoreError) as exc:
                    raise translate_client_error(exc, doing=doing) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- streamed uploads --------------------------------------------------------------
    def upload(
        self, target: S3Target, chunks: Iterable[bytes], *, cancel: threading.Event | None = None
    ) -> Delivered:
        """Upload a chunk stream; visible only after the stream ended without error."""
        part_size = self.config.part_size
        whole = hashlib.sha256()
        size = 0
        buffer = bytearray()
        iterator = iter(chunks)
        upload: _MultipartUpload | None = None
        try:
            for chunk in iterator:
                if cancel is not None and cancel.is_set():
                    raise StopRequested
                whole.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= part_size:
                    if upload is None:
                        upload = _MultipartUpload(self, target)
                    upload.send(bytes(buffer[:part_size]), cancel=cancel)
                    del buffer[:part_size]
            if cancel is not None and cancel.is_set():
                raise StopRequested
            if upload is None:
                self._put(target, bytes(buffer), whole.digest())
            else:
                if buffer:
                    upload.send(bytes(buffer), cancel=cancel)
                buffer.clear()
                upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        return Delivered(name=target.key, size=size, sha256=whole.hexdigest())

    def _put(self, target: S3Target, data: bytes, digest: bytes) -> None:
        arguments = target.put_arguments()
        arguments.update(Body=data, Metadata=dict(target.metadata))
        if target.content_type:
            arguments["ContentType"] = target.content_type
        if self.config.send_checksums:
            arguments.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest))
        self._call(f"writing s3://{target.bucket}/{target.key}", self._s3.put_object, **arguments)

    # -- server-side copies ------------------------------------------------------------
    def copy(
        self, source: SourceObject, target: S3Target, *, cancel: threading.Event | None = None
    ) -> Delivered:
        """Copy inside S3 (no bytes through the worker); multipart above the threshold."""
        if cancel is not None and cancel.is_set():
            raise StopRequested
        doing = f"copying {source.uri} to s3://{target.bucket}/{target.key}"
        if source.size <= self.config.copy_threshold:
            arguments = target.put_arguments()
            arguments.update(
                CopySource={"Bucket": source.bucket, "Key": source.key}, MetadataDirective="COPY"
            )
            if self.config.send_checksums:
                arguments["ChecksumAlgorithm"] = "SHA256"
            response = self._call(doing, self._s3.copy_object, **arguments)
            checksum = response.get("CopyObjectResult", {}).get("ChecksumSHA256")
            sha = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
            return Delivered(name=target.key, size=source.size, sha256=sha)
        return self._multipart_copy(source, target, doing=doing, cancel=cancel)

    def _multipart_copy(
        self, source: SourceObject, target: S3Target, *, doing: str, cancel: threading.Event | None
    ) -> Delivered:
        head = self._call(f"reading {source.uri}", self._s3.head_object, Bucket=source.bucket, Key=source.key)
        create = target.put_arguments()
        create["Metadata"] = head.get("Metadata", {})
        if head.get("ContentType"):
            create["ContentType"] = head["ContentType"]
        upload_id = self._call(doing, self._s3.create_multipart_upload, **create)["UploadId"]
        part_size = self.config.copy_part_size
        ranges = [
            (start, min(start + part_size, source.size) - 1) for start in range(0, source.size, part_size)
        ]
        parts: list[dict[str, Any]] = [{} for _ in ranges]

        def copy_part(index: int) -> None:
            if cancel is not None and cancel.is_set():
                raise StopRequested
            first, last = ranges[index]
            response = self._call(
                doing,
                self._s3.upload_part_copy,
                Bucket=target.bucket,
                Key=target.key,
                UploadId=upload_id,
                PartNumber=index + 1,
                CopySource={"Bucket": source.bucket, "Key": source.key},
                CopySourceRange=f"bytes={first}-{last}",
            )
            parts[index] = {"PartNumber": index + 1, "ETag": response["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(self.config.max_parts_in_flight, thread_name_prefix="copy-part") as pool:
                for future in [pool.submit(copy_part, index) for index in range(len(ranges))]:
                    future.result()
            self._call(
                doing,
                self._s3.complete_multipart_upload,
                Bucket=target.bucket,
                Key=target.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            _abort(self._s3, target, upload_id)
            raise
        return Delivered(name=target.key, size=source.size, sha256=None)


class _MultipartUpload:
    """One multipart upload being fed part by part, with bounded parts in flight."""

    def __init__(self, destination: S3Destination, target: S3Target) -> None:
        self._destination = destination
        self._s3 = destination._s3  # noqa: SLF001 - a helper of S3Destination
        self._target = target
        self._doing = f"uploading s3://{target.bucket}/{target.key}"
        config = destination.config
        arguments = target.put_arguments()
        arguments["Metadata"] = dict(target.metadata)
        if target.content_type:
            arguments["ContentType"] = target.content_type
        if config.send_checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
        response = destination._call(self._doing, self._s3.create_multipart_upload, **arguments)  # noqa: SLF001
        self.upload_id: str = response["UploadId"]
        self._pool = ThreadPoolExecutor(config.max_parts_in_flight, thread_name_prefix="part")
        self._slots = threading.Semaphore(config.max_parts_in_flight)
        self._futures: list[Future[dict[str, Any]]] = []
        self._number = 0

    def send(self, data: bytes, *, cancel: threading.Event | None) -> None:
        """Queue one part; blocks while ``max_parts_in_flight`` parts are outstanding."""
        while not self._slots.acquire(timeout=0.5):
            if cancel is not None and cancel.is_set():
                raise StopRequested
            self._raise_failed()
        self._raise_failed()
        self._number += 1
        future = self._pool.submit(self._upload_part, self._number, data)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _raise_failed(self) -> None:
        for future in self._futures:
            if future.done() and future.exception() is not None:
                future.result()

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "Bucket": self._target.bucket,
            "Key": self._target.key,
            "UploadId": self.upload_id,
            "PartNumber": number,
            "Body": data,
        }
        part: dict[str, Any] = {"PartNumber": number}
        if self._destination.config.send_checksums:
            checksum = _b64(hashlib.sha256(data).digest())
            arguments.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
            part["ChecksumSHA256"] = checksum
        response = self._destination._call(self._doing, self._s3.upload_part, **arguments)  # noqa: SLF001
        part["ETag"] = response["ETag"]
        return part

    def complete(self) -> None:
        try:
            parts = [future.result() for future in self._futures]
        finally:
            self._pool.shutdown(wait=True)
        self._destination._call(  # noqa: SLF001
            self._doing,
            self._s3.complete_multipart_upload,
            Bucket=self._target.bucket,
            Key=self._target.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        _abort(self._s3, self._target, self.upload_id)


def _abort(s3: S3Client, target: S3Target, upload_id: str) -> None:
    """Abort a multipart upload; a failure to abort is logged, never raised over the cause."""
    for attempt in range(3):
        try:
            s3.abort_multipart_upload(Bucket=target.bucket, Key=target.key, UploadId=upload_id)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return
            error = exc
        except BotoCoreError as exc:
            error = exc  # type: ignore[assignment]
        time.sleep(0.2 * (attempt + 1))
    log.error("could not abort multipart upload", bucket=target.bucket, upload_id=upload_id, error=str(error))


def assume_role_s3(aws: AwsClients, *, role_arn: str, session_name: str, cache: dict[str, Any]) -> S3Client:
    """An S3 client acting as ``role_arn``; credentials cached until 5 minutes before expiry."""
    entry = cache.get(role_arn)
    if entry is not None and entry["expires"] - time.time() > 300:
        return entry["client"]
    try:
        response = aws.sts.assume_role(
            RoleArn=role_arn, RoleSessionName=session_name[:64], DurationSeconds=3600
        )
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=f"assuming role {role_arn}") from exc
    credentials = response["Credentials"]
    client = aws.s3_for_role(dict(credentials))
    cache[role_arn] = {"client": client, "expires": credentials["Expiration"].timestamp()}
    return client
