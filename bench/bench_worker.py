"""Worker benchmarks on a local moto server (run on demand, not in the test suite).

1. A 1 GiB encrypted object (envelope format, an Encryption SDK message, an S3 Encryption
   Client v3 object), decrypt → SFT and decrypt → S3: throughput and the worker's peak RSS
   (VmHWM of the worker process alone), beside a plain boto3 GET of the same object in the
   same run.
2. 1,000 × 64 KiB objects under one flag, S3 → S3 (server-side copies): time beside
   ``s5cmd cp`` copying the same objects on the same server in the same run.

MB = 10^6 bytes. Usage: ``python bench/bench_worker.py [--size-mib 1024] [--objects 1000]
[--only decrypt|many] [--formats envelope,esdk,s3ec]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

REGION = "eu-west-2"
FLAG = "pipeline_success.flag"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()  # noqa: S310 - loopback only
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(self.endpoint + "/moto-api/")
        config = Config(
            region_name=REGION,
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=self.endpoint, config=config)
        self.sqs = session.client("sqs", endpoint_url=self.endpoint, config=config)
        self.ddb = session.client("dynamodb", endpoint_url=self.endpoint, config=config)
        self.kms = session.client("kms", endpoint_url=self.endpoint, config=config)
        from egress.ledger_table import create_ledger_table
        from egress.routing import create_routes_table

        for bucket in ("src", "dst"):
            self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        dlq = self.sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.queue = self.sqs.create_queue(
            QueueName="flags",
            Attributes={
                "VisibilityTimeout": "120",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
            },
        )["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.s3.put_bucket_notification_configuration(
            Bucket="src",
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": FLAG}]}},
                    }
                ]
            },
        )
        create_routes_table(self.ddb, "data-egress")
        create_ledger_table(self.ddb, "data-egress-ledger")
        self.key_arn = self.kms.create_key()["KeyMetadata"]["Arn"]
        self.sft_root = workdir / "sft"
        self.sft_root.mkdir()
        self.env = {
            **os.environ,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
        }

    def route(self, **columns: Any) -> None:
        item = {k: ({"BOOL": v} if isinstance(v, bool) else {"S": str(v)}) for k, v in columns.items()}
        item.setdefault("source_bucket", {"S": "src"})
        item.setdefault("recipient_name", {"S": "bench"})
        self.ddb.put_item(TableName="data-egress", Item=item)

    def start_worker(self) -> tuple[subprocess.Popen[bytes], Path, int]:
        metrics_port = free_port()
        log = self.workdir / f"worker-{metrics_port}.log"
        env = {
            **self.env,
            "EGRESS_QUEUE_URL": self.queue,
            "EGRESS_SFT_ROOT": str(self.sft_root),
            "EGRESS_KMS_KEY_ARNS": self.key_arn,
            "EGRESS_METRICS_PORT": str(metrics_port),
            "EGRESS_METRICS_HOST": "127.0.0.1",
            "EGRESS_WAIT_TIME_SECONDS": "1",
            "EGRESS_OBJECT_CONCURRENCY": "16",
            "EGRESS_FREE_SPACE_MARGIN_MB": "16",
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "egress.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_http(f"http://127.0.0.1:{metrics_port}/healthz")
        return process, log, metrics_port

    @staticmethod
    def wait_line(log: Path, event: str, count: int, timeout: float = 1800) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            for raw in log.read_text(errors="replace").splitlines():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
            found = [line for line in lines if line.get("event") == event]
            if len(found) >= count:
                return found
            failed = [
                line
                for line in lines
                if line.get("event") in {"message_dead_lettered", "message_retry_scheduled"}
            ]
            if failed:
                raise RuntimeError(f"delivery failed: {failed[-1]}")
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            time.sleep(0.1)

    def close(self) -> None:
        self.moto.terminate()
        try:
            self.moto.wait(10)
        except subprocess.TimeoutExpired:  # a server holding tens of thousands of objects
            self.moto.kill()
            self.moto.wait(10)


def encrypted_chunks(size: int) -> Iterator[bytes]:
    block = os.urandom(8 * 1024 * 1024)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


class IterFile:
    """A read()-able file over chunks, so boto3 can multipart-upload a stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def upload_encrypted(bench: Bench, size: int, fmt: str, key: str) -> None:
    """A ``size``-byte object of random bytes, encrypted in ``fmt``, at ``src/key``."""
    transfer = TransferConfig(multipart_chunksize=64 * 1024 * 1024, max_concurrency=4)
    if fmt == "envelope":
        from egress.devstack.encrypt import envelope_encrypt

        metadata, ciphertext = envelope_encrypt(
            bench.kms, key_id=bench.key_arn, chunks=encrypted_chunks(size)
        )
        bench.s3.upload_fileobj(
            IterFile(ciphertext), "src", key, ExtraArgs={"Metadata": metadata}, Config=transfer
        )
        return
    if fmt == "s3ec":
        from egress.devstack.encrypt import s3ec_encrypt

        # The S3 Encryption Client's own (in-memory) encryption, v3 as current clients write.
        body, metadata = s3ec_encrypt(bench.kms, key_arn=bench.key_arn, data=b"".join(encrypted_chunks(size)))
        bench.s3.upload_fileobj(
            io.BytesIO(body), "src", key, ExtraArgs={"Metadata": metadata}, Config=transfer
        )
        return
    from egress.devstack.encrypt import esdk_encrypt_stream

    # What aws-encryption-cli writes (default suite, 4 KiB frames), through a file on disk.
    message = bench.workdir / "message.esdk"
    with message.open("wb") as out:
        esdk_encrypt_stream(
            bench.kms, key_arn=bench.key_arn, source=IterFile(encrypted_chunks(size)), dest=out
        )
    bench.s3.upload_file(str(message), "src", key, Config=transfer)
    message.unlink()


def bench_decrypt(bench: Bench, size: int, fmt: str) -> None:
    upload_encrypted(bench, size, fmt, "big/data.bin.enc")
    mb = size / 1e6
    # The peer: a plain boto3 GET of the same object, read in 8 MiB chunks.
    started = time.monotonic()
    body = bench.s3.get_object(Bucket="src", Key="big/data.bin.enc")["Body"]
    for _ in body.iter_chunks(8 * 1024 * 1024):
        pass
    get_seconds = time.monotonic() - started
    # The peer of an SFT delivery: the same GET written to a file on the local disk, then fsync.
    started = time.monotonic()
    body = bench.s3.get_object(Bucket="src", Key="big/data.bin.enc")["Body"]
    with (bench.workdir / "peer.bin").open("wb") as file:
        for piece in body.iter_chunks(8 * 1024 * 1024):
            file.write(piece)
        file.flush()
        os.fsync(file.fileno())
    disk_seconds = time.monotonic() - started
    (bench.workdir / "peer.bin").unlink()

    results = []
    for transfer in ("SFT", "S3"):
        prefix = f"big-{fmt}-{transfer.lower()}/"
        bench.s3.copy_object(
            Bucket="src",
            Key=prefix + "data.bin.enc",
            CopySource={"Bucket": "src", "Key": "big/data.bin.enc"},
            MetadataDirective="COPY",
        )
        columns: dict[str, Any] = {
            "source_prefix": prefix,
            "pipeline_name": f"dec-{fmt}-{transfer}",
            "transfer_type": transfer,
            "decrypt": True,
        }
        if transfer == "S3":
            columns.update(destination_bucket="dst", destination_prefix=f"dec-{fmt}/")
        else:
            columns.update(destination_prefix=f"dec-{fmt}")
        bench.route(**columns)
        worker, log, _ = bench.start_worker()
        started = time.monotonic()
        bench.s3.put_object(Bucket="src", Key=prefix + FLAG, Body=b"")
        (line,) = bench.wait_line(log, "route_delivered", 1)
        wall = time.monotonic() - started
        rss = peak_rss_mib(worker.pid)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        results.append((transfer, line["seconds"], wall, rss))
        if transfer == "SFT":
            (bench.sft_root / f"dec-{fmt}" / "data.bin").unlink()
        else:
            bench.s3.delete_object(Bucket="dst", Key=f"dec-{fmt}/data.bin")
        bench.s3.delete_object(Bucket="src", Key=prefix + "data.bin.enc")
    bench.s3.delete_object(Bucket="src", Key="big/data.bin.enc")
    label = {
        "envelope": "envelope-encrypted object",
        "esdk": "Encryption SDK message (4 KiB frames)",
        "s3ec": "S3 Encryption Client v3 object",
    }[fmt]
    print(f"\n1. decrypt {size / 2**20:.0f} MiB {label} (MB = 10^6 bytes)")
    print(f"   {'path':<34}{'seconds':>9}{'MB/s':>9}{'worker peak RSS MiB':>22}")
    print(f"   {'plain boto3 GET (peer)':<34}{get_seconds:>9.2f}{mb / get_seconds:>9.0f}{'-':>22}")
    print(
        f"   {'boto3 GET to disk + fsync (peer)':<34}{disk_seconds:>9.2f}{mb / disk_seconds:>9.0f}{'-':>22}"
    )
    for transfer, seconds, wall, rss in results:
        label = f"worker decrypt -> {transfer}"
        print(f"   {label:<34}{seconds:>9.2f}{mb / seconds:>9.0f}{rss:>22.0f}")
        print(f"   {'  (flag upload to delivered)':<34}{wall:>9.2f}{mb / wall:>9.0f}")
        if transfer == "SFT":
            print(f"   {'  × GET to disk + fsync':<34}{'':>9}{disk_seconds / seconds:>9.2f}")


def bench_many(bench: Bench, count: int, *, rounds: int = 3) -> None:
    payload = os.urandom(64 * 1024)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: bench.s3.put_object(Bucket="src", Key=f"many/obj-{i:05d}", Body=payload),
                range(count),
            )
        )
    bench.route(
        source_prefix="many/",
        pipeline_name="many",
        transfer_type="S3",
        destination_bucket="dst",
        destination_prefix="many-worker/",
    )
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))
    env = {**bench.env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    rows: list[tuple[float, float, float, float]] = []
    for round_number in range(1, rounds + 1):
        started = time.monotonic()
        subprocess.run(
            [
                s5cmd,
                "--endpoint-url",
                bench.endpoint,
                "cp",
                "s3://src/many/*",
                f"s3://dst/many-s5cmd-{round_number}/",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        s5_seconds = time.monotonic() - started
        worker, log, _ = bench.start_worker()
        started = time.monotonic()
        # Each round is a new upload of the flag: a new delivery, recorded object by object.
        bench.s3.put_object(Bucket="src", Key="many/" + FLAG, Body=b"")
        (line,) = bench.wait_line(log, "route_delivered", 1)
        wall = time.monotonic() - started
        rss = peak_rss_mib(worker.pid)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        assert line["objects"] == count, line
        rows.append((s5_seconds, float(line["seconds"]), wall, rss))
    print(f"\n2. {count} x 64 KiB objects, S3 -> S3 on the same moto server, {rounds} rounds")
    print(
        f"   {'round':<8}{'s5cmd s':>10}{'worker s':>10}{'ratio':>8}{'flag->done s':>14}{'peak RSS MiB':>14}"
    )
    for number, (s5_seconds, seconds, wall, rss) in enumerate(rows, start=1):
        print(
            f"   {number:<8}{s5_seconds:>10.2f}{seconds:>10.2f}{seconds / s5_seconds:>8.2f}{wall:>14.2f}{rss:>14.0f}"
        )
    ratios = sorted(seconds / s5_seconds for s5_seconds, seconds, _, _ in rows)
    s5_all = sorted(row[0] for row in rows)
    worker_all = sorted(row[1] for row in rows)
    print(
        f"   median  s5cmd {statistics.median(s5_all):.2f} s ({s5_all[0]:.2f}-{s5_all[-1]:.2f}), "
        f"worker {statistics.median(worker_all):.2f} s ({worker_all[0]:.2f}-{worker_all[-1]:.2f}), "
        f"ratio {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--only", choices=["decrypt", "many"], default=None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the many-objects comparison")
    parser.add_argument(
        "--formats", default="envelope,esdk,s3ec", help="encrypted formats to decrypt (envelope, esdk, s3ec)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            print(f"moto server {bench.endpoint}; CPU count {os.cpu_count()}")
            if args.only in (None, "decrypt"):
                for fmt in args.formats.split(","):
                    bench_decrypt(bench, args.size_mib * 1024 * 1024, fmt.strip())
            if args.only in (None, "many"):
                bench_many(bench, args.objects, rounds=args.rounds)
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
