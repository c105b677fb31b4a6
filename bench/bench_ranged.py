"""Ranged GETs: a large envelope-encrypted object, decrypt → SFT, beside ``aws s3 cp`` (run on demand).

moto reads the whole object for every ranged GET, so this comparison runs on s3rver (npm;
objects kept as files, ranged reads cheap), installed on first use into ``.bench-cache/``,
behind ``bench/relay.py`` capping each connection at ``--rate-mbps`` (S3 serves about
90 MB/s per stream). SQS, DynamoDB and KMS stay on a moto server; the worker reaches S3
through ``AWS_ENDPOINT_URL_S3`` (the relay). s3rver sends no notifications: the bench
queues the flag's S3 event itself.

Each round times, all through the same relay, in an order that alternates by round:

- ``aws s3 cp s3://src/KEY FILE`` (the peer: the aws CLI's parallel ranged download);
- a boto3 GET to disk with fsync (one stream: what a single GET can reach);
- the worker with ``EGRESS_GET_STRATEGY=single`` and ``=ranged``: from the flag's event
  sent to the queue until ``route_delivered`` (decrypt → SFT: write, fsync, rename), and
  its peak RSS (VmHWM of the worker process alone).

The downloads must be byte-identical, and so must the workers' deliveries (SHA-256, after
the timing).
MB = 10^6 bytes. Usage: ``python bench/bench_ranged.py [--size-mib 1024] [--rounds 3]
[--rate-mbps 90] [--latency-ms 0]``; needs Node.js with npm and the aws CLI
(in an environment of its own, as it pins botocore: ``pipx install awscli``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from bench_worker import (
    FLAG,
    REGION,
    ROOT,
    Bench,
    client_config,
    cpu_seconds,
    free_port,
    peak_rss_mib,
    upload_encrypted,
)
from relay import start_relay

from egress.kernel.s3uri import S3Uri
from egress.replay_cli import replay_body

S3RVER_VERSION = "3.7.1"
CACHE = ROOT / ".bench-cache"
S3RVER_KEYS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}  # s3rver's only account
PREFIX = "ranged/"
KEY = PREFIX + "data.bin.enc"
DELIVERED = "ranged/data.bin"  # under the SFT root
MIB = 1024 * 1024
Row = dict[str, float]  # seconds by what was timed


def need(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench_ranged needs `{tool}` on PATH: {how}")
    return path


def s3rver_script() -> Path:
    """s3rver's command-line script, installed into .bench-cache/ on first use."""
    script = CACHE / "node_modules" / "s3rver" / "bin" / "s3rver.js"
    if not script.exists():
        npm = need("npm", "install Node.js and npm (Debian: apt-get install nodejs npm)")
        print(f"installing s3rver {S3RVER_VERSION} into {CACHE} (once)", flush=True)
        subprocess.run(
            [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", f"s3rver@{S3RVER_VERSION}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return script


def start_s3rver(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """s3rver on a free loopback port, path-style only, storing objects under ``directory``."""
    node = need("node", "install Node.js (Debian: apt-get install nodejs)")
    port = free_port()
    process = subprocess.Popen(
        [node, str(s3rver_script()), "--directory", str(directory), "--address", "127.0.0.1"]
        + ["--port", str(port), "--silent", "--no-vhost-buckets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = []
    for _ in range(20):  # "S3rver listening on …" is printed even with --silent
        seen.append(process.stdout.readline().decode())
        if "listening on" in seen[-1]:
            return process, f"http://127.0.0.1:{port}"
        if not seen[-1]:
            break
    process.kill()
    raise RuntimeError(f"s3rver did not start: {''.join(seen)!r}")


def s3_client(endpoint: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=S3RVER_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3RVER_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    return session.client("s3", endpoint_url=endpoint, config=client_config())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


class Run:
    """One bench run: moto for the services, s3rver behind the relay for S3."""

    def __init__(self, bench: Bench, *, relay: str, s3: Any) -> None:
        self.bench = bench
        self.relay = relay
        self.s3 = s3  # through the relay
        # SHA-256 of every file written: the peers download the ciphertext, the workers deliver plaintext.
        self.digests: dict[str, set[str]] = {"ciphertext": set(), "plaintext": set()}
        self.rss: dict[str, list[float]] = {"single": [], "ranged": []}
        self.cpu: dict[str, list[float]] = {"single": [], "ranged": []}  # the worker's user + system seconds

    def aws_cli(self, round_number: int) -> tuple[float, float]:
        """``aws s3 cp`` to a file: its seconds, and with an fsync of the file added."""
        target = self.bench.workdir / f"peer-{round_number}.bin"
        env = {**self.bench.env, **S3RVER_KEYS, "AWS_DEFAULT_REGION": REGION}
        aws = need("aws", "the aws CLI, in an environment of its own (it pins botocore): pipx install awscli")
        started = time.monotonic()
        subprocess.run(
            [
                aws,
                "s3",
                "cp",
                "--only-show-errors",
                "--endpoint-url",
                self.relay,
                f"s3://src/{KEY}",
                str(target),
            ],
            env=env,
            check=True,
        )
        seconds = time.monotonic() - started
        descriptor = os.open(target, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        synced = time.monotonic() - started
        self.digests["ciphertext"].add(sha256_of(target))
        target.unlink()
        return seconds, synced

    def boto3_to_disk(self, round_number: int) -> float:
        """One streaming GET written to a file, then fsync."""
        target = self.bench.workdir / f"get-{round_number}.bin"
        started = time.monotonic()
        body = self.s3.get_object(Bucket="src", Key=KEY)["Body"]
        with target.open("wb") as file:
            for piece in body.iter_chunks(8 * MIB):
                file.write(piece)
            file.flush()
            os.fsync(file.fileno())
        seconds = time.monotonic() - started
        self.digests["ciphertext"].add(sha256_of(target))
        target.unlink()
        return seconds

    def worker(self, strategy: str) -> float:
        """The worker delivering the flag's folder (decrypt → SFT): seconds from the event sent to delivered."""
        process, log, _ = self.bench.start_worker(
            {**S3RVER_KEYS, "AWS_ENDPOINT_URL_S3": self.relay, "EGRESS_GET_STRATEGY": strategy}
        )
        try:
            body = replay_body(S3Uri("src", PREFIX + FLAG), event_time=datetime.now(UTC), pipeline=None)
            started = time.monotonic()
            self.bench.sqs.send_message(QueueUrl=self.bench.queue, MessageBody=json.dumps(body))
            (line,) = self.bench.wait_line(log, "route_delivered", 1)
            seconds = time.monotonic() - started
            self.rss[strategy].append(peak_rss_mib(process.pid))
            self.cpu[strategy].append(cpu_seconds(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        if line.get("objects") != 1:
            raise RuntimeError(f"the worker delivered {line.get('objects')} objects, not 1: {line}")
        delivered = self.bench.sft_root / DELIVERED
        self.digests["plaintext"].add(sha256_of(delivered))
        delivered.unlink()
        return seconds


def summary(label: str, values: list[float], size: int) -> str:
    ordered = sorted(values)
    median = statistics.median(ordered)
    return (
        f"   {label:<30}{median:>8.2f} s ({ordered[0]:.2f}-{ordered[-1]:.2f}){size / 1e6 / median:>8.0f} MB/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate-mbps", type=float, default=90.0, help="cap per connection (MB/s)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each S3 request by the relay")
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="s3rver processes over the same folder, connections spread over them (one is single-threaded)",
    )
    args = parser.parse_args()
    need("aws", "the aws CLI, in an environment of its own (it pins botocore): pipx install awscli")
    s3rver_script()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="egress-bench-ranged-") as tmp:
        workdir = Path(tmp)
        processes: list[subprocess.Popen[bytes]] = []
        bench = Bench(workdir)
        try:
            endpoints = []
            for _ in range(args.servers):
                s3rver, endpoint = start_s3rver(workdir / "s3rver")
                processes.append(s3rver)
                endpoints.append(endpoint)
            endpoint = endpoints[0]
            relay_process, relay = start_relay(
                ",".join(endpoints), latency_ms=args.latency_ms, rate_mbps=args.rate_mbps
            )
            processes.append(relay_process)
            direct = s3_client(endpoint)
            direct.create_bucket(Bucket="src")
            print(
                f"s3rver {S3RVER_VERSION} × {args.servers} at {', '.join(endpoints)} (one folder), behind a relay at {relay} capping each connection "
                f"at {args.rate_mbps:g} MB/s (+{args.latency_ms:g} ms a request); SQS, DynamoDB, KMS on moto "
                f"{bench.endpoint}; CPU count {os.cpu_count()}",
                flush=True,
            )
            started = time.monotonic()
            uploader = copy.copy(bench)
            uploader.s3 = direct  # the object goes to s3rver; its data key comes from moto's KMS
            upload_encrypted(uploader, size, "envelope", KEY)
            direct.put_object(Bucket="src", Key=PREFIX + FLAG, Body=b"")
            print(
                f"uploaded {args.size_mib} MiB envelope-encrypted object in {time.monotonic() - started:.1f} s"
            )
            bench.route(
                source_prefix=PREFIX,
                pipeline_name="ranged",
                transfer_type="SFT",
                decrypt=True,
                destination_prefix="ranged",
            )
            run = Run(bench, relay=relay, s3=s3_client(relay))
            rows = rounds(run, args.rounds)
        finally:
            for process in reversed(processes):
                process.kill()
                process.wait()
            bench.close()
    report(run, rows, size=size, args=args)
    return 0


def rounds(run: Run, count: int) -> list[Row]:
    """``count`` rounds, peer first in odd rounds and the workers first in even ones."""
    rows: list[Row] = []
    print(
        f"\n   {'round':<7}{'aws s3 cp':>11}{'+ fsync':>9}{'GET+fsync':>11}{'single':>9}{'ranged':>9}"
        f"{'ranged/peer':>13}   order"
    )
    for number in range(1, count + 1):
        row: Row = {}

        def peer(n: int, row: Row = row) -> None:
            row["aws s3 cp"], row["aws s3 cp + fsync"] = run.aws_cli(n)
            row["boto3 GET + fsync"] = run.boto3_to_disk(n)

        def workers(n: int, row: Row = row) -> None:
            row["worker single"] = run.worker("single")
            row["worker ranged"] = run.worker("ranged")

        steps: list[tuple[str, Callable[[int], None]]] = [("peer", peer), ("workers", workers)]
        if number % 2 == 0:
            steps.reverse()
        for _, step in steps:
            step(number)
        rows.append(row)
        print(
            f"   {number:<7}{row['aws s3 cp']:>11.2f}{row['aws s3 cp + fsync']:>9.2f}{row['boto3 GET + fsync']:>11.2f}"
            f"{row['worker single']:>9.2f}{row['worker ranged']:>9.2f}"
            f"{row['aws s3 cp'] / row['worker ranged']:>13.2f}   {' then '.join(name for name, _ in steps)}",
            flush=True,
        )
    return rows


def report(run: Run, rows: list[Row], *, size: int, args: argparse.Namespace) -> None:
    print(
        f"\n{args.size_mib} MiB envelope-encrypted object, decrypt -> SFT, through the relay "
        f"({args.rate_mbps:g} MB/s a connection), {len(rows)} round(s): median (min-max), MB = 10^6 bytes"
    )
    for label in ("aws s3 cp", "aws s3 cp + fsync", "boto3 GET + fsync", "worker single", "worker ranged"):
        print(
            summary(label + (" (peer)" if label == "aws s3 cp" else ""), [row[label] for row in rows], size)
        )
    ratios = sorted(row["aws s3 cp"] / row["worker ranged"] for row in rows)
    print(
        f"   worker ranged / aws s3 cp (throughput): {statistics.median(ratios):.2f} "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}); the issue asks >= 0.8"
    )
    for strategy, values in run.rss.items():
        each = ", ".join(
            f"{rss:.0f} MiB / {cpu:.1f} s" for rss, cpu in zip(values, run.cpu[strategy], strict=True)
        )
        print(f"   worker {strategy}: peak RSS {max(values):.0f} MiB; each run's peak RSS / CPU time: {each}")
    identical = all(len(digests) == 1 for digests in run.digests.values())
    print(
        f"   downloads identical, and deliveries (single, ranged) identical: {'yes' if identical else 'NO'}"
    )
    if not identical:
        raise SystemExit(f"outputs differ: {run.digests}")


if __name__ == "__main__":
    sys.exit(main())
