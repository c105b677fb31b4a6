"""Worker benchmarks on a local moto server (run on demand, not in the test suite).

Each comparison runs the peer and the worker in the same run, ``--rounds`` times (3 by
default, alternating which goes first; many objects: each tool copies into an
emptied bucket, since moto slows as it holds more objects), and prints every round, the
median and the spread.

1. A 1 GiB encrypted object (envelope format, an Encryption SDK message with 4 KiB
   frames, an S3 Encryption Client v3 object), decrypt → SFT beside a boto3 GET of the
   same object to disk with fsync, and decrypt → S3 beside the GET streamed into boto3's
   managed multipart upload; the worker's peak RSS (VmHWM of the worker process alone).
2. 1,000 × 64 KiB objects under one flag, S3 → S3 (server-side copies), beside
   ``s5cmd cp`` copying the same objects on the same server. With ``--latency-ms 40``
   both go through ``bench/relay.py``, which adds 40 ms to each S3 request as the cloud
   does (and ``--service-latency-ms``, 10 by default, to the worker's SQS and DynamoDB).

MB = 10^6 bytes. Usage: ``python bench/bench_worker.py [--size-mib 1024] [--objects 1000]
[--only decrypt|many] [--formats envelope,esdk,s3ec] [--transfers SFT,S3] [--rounds 3]
[--latency-ms 40]``. ``BENCH_PYSPY=DIR`` samples the worker and the moto server with py-spy
during each delivery (raw stacks in DIR; ``BENCH_PYSPY_GIL=1``: only the thread
holding the GIL).
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


def client_config() -> Config:
    """The botocore config of every bench client: path-style S3, checksums only where required."""
    return Config(
        region_name=REGION,
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )


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


def profile_arguments(tag: int) -> list[str]:
    """With BENCH_PROFILE=DIR, the worker runs under cProfile, its profile written to DIR."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        return []
    return ["-m", "cProfile", "-o", str(Path(folder) / f"worker-{tag}.prof")]


def sample_process(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=DIR, py-spy samples every thread of process ``pid`` (raw stacks to DIR/name.txt)."""
    folder = os.environ.get("BENCH_PYSPY")
    if not folder:
        return None
    py_spy = shutil.which("py-spy") or "py-spy"
    out = Path(folder) / f"{name}.txt"
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--output", str(out)]
    if os.environ.get("BENCH_PYSPY_GIL"):
        command.append("--gil")  # only the thread holding the GIL: where the process's Python time goes
    return subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_sampler(sampler: subprocess.Popen[bytes] | None) -> None:
    if sampler is not None:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        config = client_config()
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

    def start_worker(
        self, extra_env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path, int]:
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
            "EGRESS_FREE_SPACE_MARGIN_MB": "16",
            # moto reads a whole object on every ranged GET: one streaming GET is its fast path.
            "EGRESS_GET_STRATEGY": "single",
            **(extra_env or {}),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *profile_arguments(metrics_port), "-m", "egress.cli", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
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


def empty_bucket(bench: Bench, bucket: str) -> None:
    """Delete every object of ``bucket`` (1,000 a request)."""
    for page in bench.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            bench.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.0f} ({ordered[0]:.0f}-{ordered[-1]:.0f})"


def _peer_to_disk(bench: Bench, key: str) -> float:
    """The peer of an SFT delivery: a boto3 GET of ``key`` written to the local disk, then fsync; seconds."""
    started = time.monotonic()
    body = bench.s3.get_object(Bucket="src", Key=key)["Body"]
    with (bench.workdir / "peer.bin").open("wb") as file:
        for piece in body.iter_chunks(8 * 1024 * 1024):
            file.write(piece)
        file.flush()
        os.fsync(file.fileno())
    seconds = time.monotonic() - started
    (bench.workdir / "peer.bin").unlink()
    return seconds


def _peer_to_s3(bench: Bench, key: str) -> float:
    """The peer of an S3 delivery: the GET streamed into boto3's managed multipart upload (16 MiB parts, 4 threads)."""
    started = time.monotonic()
    body = bench.s3.get_object(Bucket="src", Key=key)["Body"]
    transfer = TransferConfig(multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
    bench.s3.upload_fileobj(body, "dst", "peer.bin", Config=transfer)
    seconds = time.monotonic() - started
    bench.s3.delete_object(Bucket="dst", Key="peer.bin")
    return seconds


def _worker_decrypt(bench: Bench, fmt: str, transfer: str, round_number: int) -> tuple[float, float, float]:
    """One decrypt route delivering ``big/data.bin.enc``: the route's seconds, flag-to-done seconds, peak RSS."""
    prefix = f"big-{fmt}-{transfer.lower()}-{round_number}/"
    bench.s3.copy_object(
        Bucket="src",
        Key=prefix + "data.bin.enc",
        CopySource={"Bucket": "src", "Key": "big/data.bin.enc"},
        MetadataDirective="COPY",
    )
    folder = f"dec-{fmt}-{round_number}"
    columns: dict[str, Any] = {
        "source_prefix": prefix,
        "pipeline_name": f"dec-{fmt}-{transfer}",
        "transfer_type": transfer,
        "decrypt": True,
    }
    if transfer == "S3":
        columns.update(destination_bucket="dst", destination_prefix=f"{folder}/")
    else:
        columns.update(destination_prefix=folder)
    bench.route(**columns)
    worker, log, _ = bench.start_worker()
    moto_cpu, worker_cpu = cpu_seconds(bench.moto.pid), cpu_seconds(worker.pid)
    samplers = [
        sample_process(worker.pid, f"decrypt-{fmt}-{transfer}-{round_number}"),
        sample_process(bench.moto.pid, f"moto-decrypt-{fmt}-{transfer}-{round_number}"),
    ]
    started = time.monotonic()
    bench.s3.put_object(Bucket="src", Key=prefix + FLAG, Body=b"")
    (line,) = bench.wait_line(log, "route_delivered", 1)
    wall = time.monotonic() - started
    rss = peak_rss_mib(worker.pid)
    print(
        f"     CPU s during the worker's delivery: worker {cpu_seconds(worker.pid) - worker_cpu:.2f}, "
        f"moto {cpu_seconds(bench.moto.pid) - moto_cpu:.2f} (wall {wall:.2f})"
    )
    for sampler in samplers:
        stop_sampler(sampler)
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    if transfer == "SFT":
        (bench.sft_root / folder / "data.bin").unlink()
    else:
        bench.s3.delete_object(Bucket="dst", Key=f"{folder}/data.bin")
    bench.s3.delete_object(Bucket="src", Key=prefix + "data.bin.enc")
    return float(line["seconds"]), wall, rss


def bench_decrypt(
    bench: Bench, size: int, fmt: str, *, rounds: int = 3, transfers: tuple[str, ...] = ("SFT", "S3")
) -> None:
    """Decrypt one ``size``-byte object to each transfer beside its peer, ``rounds`` times (peer and worker alternating)."""
    upload_encrypted(bench, size, fmt, "big/data.bin.enc")
    mb = size / 1e6
    peers = {"SFT": _peer_to_disk, "S3": _peer_to_s3}
    peer_names = {"SFT": "boto3 GET to disk + fsync", "S3": "boto3 GET into managed multipart upload"}
    figures: dict[str, dict[str, list[float]]] = {
        t: {"peer": [], "worker": [], "wall": [], "rss": [], "ratio": []} for t in transfers
    }
    for round_number in range(1, rounds + 1):
        for transfer in transfers:
            order = ("peer", "worker") if round_number % 2 else ("worker", "peer")
            for who in order:
                if who == "peer":
                    peer_seconds = peers[transfer](bench, "big/data.bin.enc")
                    figures[transfer]["peer"].append(mb / peer_seconds)
                else:
                    seconds, wall, rss = _worker_decrypt(bench, fmt, transfer, round_number)
                    figures[transfer]["worker"].append(mb / seconds)
                    figures[transfer]["wall"].append(mb / wall)
                    figures[transfer]["rss"].append(rss)
            figures[transfer]["ratio"].append(figures[transfer]["worker"][-1] / figures[transfer]["peer"][-1])
    bench.s3.delete_object(Bucket="src", Key="big/data.bin.enc")
    label = {
        "envelope": "envelope-encrypted object",
        "esdk": "Encryption SDK message (4 KiB frames)",
        "s3ec": "S3 Encryption Client v3 object",
    }[fmt]
    print(
        f"\n1. decrypt {size / 2**20:.0f} MiB {label}, {rounds} rounds (MB/s, MB = 10^6 bytes; median (min-max))"
    )
    for transfer in transfers:
        row = figures[transfer]
        print(f"   decrypt -> {transfer}")
        print(f"     peer: {peer_names[transfer]:<40}{_spread(row['peer']):>20}")
        print(f"     worker (route's own time){'':<27}{_spread(row['worker']):>20}")
        print(f"     worker (flag upload to delivered){'':<19}{_spread(row['wall']):>20}")
        ratios = sorted(row["ratio"])
        print(
            f"     worker / peer per round: {', '.join(f'{r:.2f}' for r in row['ratio'])}; "
            f"median {statistics.median(ratios):.2f}"
        )
        print(f"     worker peak RSS MiB: {', '.join(f'{r:.0f}' for r in row['rss'])}")


def bench_many(
    bench: Bench, count: int, *, rounds: int = 3, latency_ms: float = 0, service_latency_ms: float = 0
) -> None:
    """``count`` × 64 KiB S3 → S3 beside ``s5cmd cp``; with ``latency_ms``, both through a relay adding it to each S3 request.

    The worker's other requests (SQS, DynamoDB) then go through a second relay adding
    ``service_latency_ms`` (in-region DynamoDB answers in single-digit milliseconds).
    """
    payload = os.urandom(64 * 1024)
    from concurrent.futures import ThreadPoolExecutor

    from relay import start_relay

    prefix = f"many-{count}-{int(latency_ms)}/"
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: bench.s3.put_object(Bucket="src", Key=f"{prefix}obj-{i:05d}", Body=payload),
                range(count),
            )
        )
    bench.route(
        source_prefix=prefix,
        pipeline_name="many",
        transfer_type="S3",
        destination_bucket="dst",
        destination_prefix=f"{prefix}worker/",
    )
    relays: list[subprocess.Popen[bytes]] = []
    s3_endpoint, worker_env = bench.endpoint, {}
    if latency_ms:
        process, s3_endpoint = start_relay(bench.endpoint, latency_ms=latency_ms)
        relays.append(process)
        process, services = start_relay(bench.endpoint, latency_ms=service_latency_ms)
        relays.append(process)
        worker_env = {"AWS_ENDPOINT_URL": services, "AWS_ENDPOINT_URL_S3": s3_endpoint}
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))
    env = {**bench.env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}

    def run_s5cmd(round_number: int) -> float:
        moto_cpu = cpu_seconds(bench.moto.pid)
        moto_sampler = sample_process(bench.moto.pid, f"moto-s5cmd-{round_number}")
        started = time.monotonic()
        subprocess.run(
            [s5cmd, "--endpoint-url", s3_endpoint, "cp", f"s3://src/{prefix}*", f"s3://dst/{prefix}s5cmd/"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        stop_sampler(moto_sampler)
        print(
            f"   round {round_number}: s5cmd {seconds:.2f} s, moto CPU {cpu_seconds(bench.moto.pid) - moto_cpu:.2f} s"
        )
        return seconds

    def run_worker(round_number: int) -> tuple[float, float, float, float]:
        worker, log, _ = bench.start_worker(worker_env)
        moto_cpu = cpu_seconds(bench.moto.pid)
        sampler = sample_process(worker.pid, f"many-{round_number}")
        moto_sampler = sample_process(bench.moto.pid, f"moto-worker-{round_number}")
        started = time.monotonic()
        # Each round is a new upload of the flag: a new delivery, recorded object by object.
        bench.s3.put_object(Bucket="src", Key=prefix + FLAG, Body=b"")
        (line,) = bench.wait_line(log, "route_delivered", 1)
        wall = time.monotonic() - started
        rss = peak_rss_mib(worker.pid)
        cpu = cpu_seconds(worker.pid)
        print(
            f"   round {round_number}: worker {line['seconds']:.2f} s, "
            f"moto CPU {cpu_seconds(bench.moto.pid) - moto_cpu:.2f} s (delivery and worker start)"
        )
        stop_sampler(sampler)
        stop_sampler(moto_sampler)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        assert line["objects"] == count, line
        return float(line["seconds"]), wall, rss, cpu

    rows: list[tuple[float, float, float, float, float]] = []
    try:
        for round_number in range(1, rounds + 1):
            # Each tool copies into a bucket emptied after it: moto slows as it holds more
            # objects (8.4 -> 10 CPU-s for the same 1,000 copies after 7,000 more), so the
            # one that ran second would pay for the other's objects. The order alternates.
            results: dict[str, Any] = {}
            for tool in ("s5cmd", "worker") if round_number % 2 else ("worker", "s5cmd"):
                results[tool] = run_s5cmd(round_number) if tool == "s5cmd" else run_worker(round_number)
                empty_bucket(bench, "dst")
            seconds, wall, rss, cpu = results["worker"]
            rows.append((results["s5cmd"], seconds, wall, rss, cpu))
    finally:
        for process in relays:
            process.kill()
            process.wait()
    where = (
        f"through a relay adding {latency_ms:g} ms to each S3 request ({service_latency_ms:g} ms to SQS and DynamoDB)"
        if latency_ms
        else "on the same moto server"
    )
    print(f"\n2. {count} x 64 KiB objects, S3 -> S3 {where}, {rounds} rounds")
    print(
        f"   {'round':<8}{'s5cmd s':>10}{'worker s':>10}{'ratio':>8}{'flag->done s':>14}{'peak RSS MiB':>14}"
        f"{'worker CPU s':>14}"
    )
    for number, (s5_seconds, seconds, wall, rss, cpu) in enumerate(rows, start=1):
        print(
            f"   {number:<8}{s5_seconds:>10.2f}{seconds:>10.2f}{seconds / s5_seconds:>8.2f}{wall:>14.2f}{rss:>14.0f}"
            f"{cpu:>14.2f}"
        )
    ratios = sorted(row[1] / row[0] for row in rows)
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each comparison")
    parser.add_argument("--transfers", default="SFT,S3", help="decrypt to these transfer types (SFT, S3)")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="many objects through a relay adding this to each S3 request",
    )
    parser.add_argument(
        "--service-latency-ms",
        type=float,
        default=10,
        help="with --latency-ms: added to SQS and DynamoDB requests",
    )
    parser.add_argument(
        "--formats", default="envelope,esdk,s3ec", help="encrypted formats to decrypt (envelope, esdk, s3ec)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            print(f"moto server {bench.endpoint}; CPU count {os.cpu_count()}")
            if args.only in (None, "decrypt"):
                transfers = tuple(t.strip().upper() for t in args.transfers.split(","))
                for fmt in args.formats.split(","):
                    bench_decrypt(
                        bench,
                        args.size_mib * 1024 * 1024,
                        fmt.strip(),
                        rounds=args.rounds,
                        transfers=transfers,
                    )
            if args.only in (None, "many"):
                bench_many(
                    bench,
                    args.objects,
                    rounds=args.rounds,
                    latency_ms=args.latency_ms,
                    service_latency_ms=args.service_latency_ms,
                )
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
