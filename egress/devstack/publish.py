"""``egress local publish``: upload a folder like a producer does, the data first and the flag last.

Uploads go through boto3's managed transfer (s3transfer), multipart from 16 MiB, with a
bounded window of files in flight; ``--encrypt`` envelope-encrypts each file on the way.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.futures import TransferFuture
from s3transfer.subscribers import BaseSubscriber

from egress.devstack.bootstrap import DEFAULT_FLAG_NAME
from egress.devstack.errors import LocalSetupError, describe
from egress.kernel.s3uri import S3Uri
from egress.streams import ChunkReader

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
PART_SIZE = 16 * MIB
PROGRESS_THRESHOLD = 8 * MIB
READ_CHUNK = 1 * MIB


@dataclass(frozen=True)
class LocalFile:
    """A file to publish and the key suffix it gets (its path relative to the folder)."""

    path: Path
    relative: str
    size: int


def files_to_publish(directory: Path, *, flag_name: str, warn: Callable[[str], None]) -> list[LocalFile]:
    """Every regular file under ``directory``, sorted; a flag file inside it is skipped."""
    if not directory.is_dir():
        raise LocalSetupError(f"{directory} is not a folder")
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = Path(root, name)
            relative = path.relative_to(directory).as_posix()
            if not path.is_file():
                warn(f"skipping {relative}: not a regular file")
            elif name == flag_name:
                warn(f"skipping {relative}: the flag is written last by publish itself")
            else:
                found.append(LocalFile(path=path, relative=relative, size=path.stat().st_size))
    if not found:
        raise LocalSetupError(f"{directory} holds no files to publish")
    return found


class Progress:
    """One aggregated progress line on a stream; thread-safe, throttled."""

    def __init__(
        self, *, total: int, files: int, stream: TextIO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.files = files
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._files_done = 0
        self._started = clock()
        self._last = 0.0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else 5.0

    def add(self, nbytes: int) -> None:
        """Count bytes sent (a transfer callback)."""
        with self._lock:
            self._done += nbytes
            now = self._clock()
            if now - self._last >= self._interval:
                self._last = now
                self._show(final=False)

    def file_done(self) -> None:
        """Count one finished file."""
        with self._lock:
            self._files_done += 1

    def finish(self) -> None:
        """Print the last line."""
        with self._lock:
            self._show(final=True)

    def _show(self, *, final: bool) -> None:
        elapsed = max(self._clock() - self._started, 1e-6)
        percent = 100.0 * self._done / self.total if self.total else 100.0
        line = (
            f"uploaded {self._done / MIB:,.1f}/{self.total / MIB:,.1f} MiB ({percent:5.1f}%) "
            f"{self._files_done}/{self.files} files {self._done / MIB / elapsed:,.1f} MiB/s"
        )
        if self._tty:
            self._stream.write("\r" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


class _ProgressSubscriber(BaseSubscriber):
    """Feeds s3transfer's progress and completion events into :class:`Progress`."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.add(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.file_done()


class _EncryptedFile(ChunkReader):
    """Ciphertext chunks as a non-seekable file object; closing it closes the plaintext file."""

    def __init__(self, chunks: Iterator[bytes], *, source: IO[bytes]) -> None:
        super().__init__(chunks)
        self._source = source

    def close(self) -> None:
        self._source.close()
        super().close()


@dataclass(frozen=True)
class PublishResult:
    """What publish uploaded: data keys in order, then the flag key."""

    keys: tuple[str, ...]
    bytes: int
    flag_key: str
    seconds: float


def _read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def publish(
    s3: S3Client,
    directory: Path,
    *,
    target: S3Uri,
    flag_name: str = DEFAULT_FLAG_NAME,
    kms: KMSClient | None = None,
    kms_key_id: str | None = None,
    jobs: int = 4,
    progress_stream: TextIO | None = None,
    warn: Callable[[str], None] = lambda _line: None,
) -> PublishResult:
    """Upload every file under ``directory`` below ``target``, then — last — the empty flag.

    ``target`` is a folder: its key is empty or ends in ``/`` (``parse_s3_uri(uri,
    want="prefix")`` makes one).

    With ``kms_key_id`` each file is envelope-encrypted while streaming and stored as
    ``<key>.enc`` with the envelope metadata. Uploads use boto3's managed transfer
    (multipart from 16 MiB); memory is ``jobs`` × part size at most. Nothing of the flag
    is written if any file failed.
    """
    files = files_to_publish(directory, flag_name=flag_name, warn=warn)
    total = sum(f.size for f in files)
    progress = (
        Progress(total=total, files=len(files), stream=progress_stream)
        if progress_stream is not None and total >= PROGRESS_THRESHOLD
        else None
    )
    if kms_key_id is not None:
        if kms is None:
            raise LocalSetupError("encryption needs a KMS client")
        # Here, not at the top: only --encrypt needs the encryption module's imports.
        from egress.devstack.encrypt import envelope_encrypt
    jobs = max(1, jobs)
    config = TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=jobs,
        use_threads=True,
    )
    # Parts of a non-seekable (encrypted) stream are read into memory: bound them.
    config.max_in_memory_upload_chunks = jobs
    started = time.monotonic()
    keys: list[str] = []
    window: deque[tuple[str, TransferFuture, io.BufferedReader | None]] = deque()

    def wait_oldest() -> None:
        name, future, opened = window.popleft()
        try:
            future.result()
        except (ClientError, BotoCoreError, OSError, ValueError) as exc:
            raise LocalSetupError(
                f"uploading {name} failed: {describe(exc)}; the flag was NOT written"
            ) from exc
        finally:
            if opened is not None:
                opened.close()

    subscriber = _ProgressSubscriber(progress)
    try:
        with create_transfer_manager(s3, config) as manager:
            for item in files:
                key = target.key + item.relative
                source: Any = str(item.path)  # s3transfer opens (and closes) it when it gets to it
                opened: io.BufferedReader | None = None
                extra: dict[str, Any] = {}
                if kms is not None and kms_key_id is not None:
                    key += ".enc"
                    handle = item.path.open("rb")
                    try:
                        metadata, ciphertext = envelope_encrypt(
                            kms, key_id=kms_key_id, chunks=_read_chunks(handle)
                        )
                    except BaseException:
                        handle.close()
                        raise
                    # Buffered: s3transfer reads a part with one read(), which must not come back short.
                    source = opened = io.BufferedReader(_EncryptedFile(ciphertext, source=handle), READ_CHUNK)
                    extra["Metadata"] = metadata
                # A bounded window of open files and uploads in flight, whatever the folder holds.
                if len(window) >= jobs:
                    wait_oldest()
                window.append(
                    (item.relative, manager.upload(source, target.bucket, key, extra, [subscriber]), opened)
                )
                keys.append(key)
            while window:
                wait_oldest()
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(
            f"publishing to {target} failed: {describe(exc)}; the flag was NOT written"
        ) from exc
    finally:
        for _name, _future, opened_file in window:
            if opened_file is not None:
                opened_file.close()
    if progress is not None:
        progress.finish()
    flag_key = target.key + flag_name
    try:
        s3.put_object(Bucket=target.bucket, Key=flag_key, Body=b"")
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(f"writing the flag s3://{target.bucket}/{flag_key}: {describe(exc)}") from exc
    return PublishResult(keys=tuple(keys), bytes=total, flag_key=flag_key, seconds=time.monotonic() - started)
