"""Where the time of decrypt → SFT goes: the worker's stages added one at a time (on demand).

One envelope-encrypted object on a local moto server, read in-process through the worker's
own parts (``open_object``, ``Decryptor``), each line adding one stage to the one before:

    GET                       the streaming GET alone (chunks read and dropped)
    + decrypt                 AES-256-CTR through the worker's decryptor
    + sha256                  the digest the SFT writer records for the agent
    + write + fsync           to a file on the local disk, synced at the end
    + write, flushed as it goes  the same, flushed in the background every 16 MiB (what the
                              SFT writer does: ``WritebackSyncer``), then synced

beside the issue's peer in the same round: a plain boto3 GET of the same object written to
disk with fsync (one stream, no decrypt, no digest). Three rounds (``--rounds``), median
and spread. MB = 10^6 bytes. Usage: ``python bench/bench_sft_stages.py [--size-mib 512]
[--chunk-kib 1024] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_worker  # noqa: E402 - beside this script

from egress.aws import AwsClients, AwsConfig, build_clients  # noqa: E402
from egress.destinations.sft import WRITEBACK_EVERY  # noqa: E402
from egress.kernel.fsutil import WritebackSyncer  # noqa: E402
from egress.sources import SourceObject, open_object  # noqa: E402
from egress.transforms.decrypt import Decryptor  # noqa: E402

KEY = "big/data.bin.enc"


def stage_runner(
    clients: AwsClients, decryptor: Decryptor, source: SourceObject, out: Path, *, chunk: int
) -> Callable[[int], int]:
    """``run(depth)``: the first ``depth`` stages (1 GET … 4 write + fsync, 5 the same flushed as it
    goes); returns the bytes seen."""

    def run(depth: int) -> int:
        opened = open_object(clients.s3, source, chunk_size=chunk)
        chunks = opened.chunks
        if depth >= 2:
            chunks = decryptor.open(
                source=source.uri,
                metadata=opened.metadata,
                chunks=chunks,
                size=opened.size,
                instruction_file_exists=lambda: False,
            ).chunks
        digest = hashlib.sha256()
        seen = 0
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if depth >= 4 else None
        syncer = WritebackSyncer(fd, every=WRITEBACK_EVERY) if fd is not None and depth >= 5 else None
        try:
            for piece in chunks:
                seen += len(piece)
                if depth >= 3:
                    digest.update(piece)
                if fd is not None:
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view) :]
                if syncer is not None:
                    syncer.wrote(len(piece))
            if syncer is not None:
                syncer.close()
            if fd is not None:
                os.fsync(fd)
        finally:
            if syncer is not None:
                syncer.stop()
            if fd is not None:
                os.close(fd)
        return seen

    return run


def peer_get_to_disk(clients: AwsClients, out: Path, *, chunk: int) -> int:
    """The issue's peer: one boto3 GET stream written to disk, then fsync."""
    body = clients.s3.get_object(Bucket="src", Key=KEY)["Body"]
    seen = 0
    with out.open("wb") as file:
        for piece in body.iter_chunks(chunk):
            file.write(piece)
            seen += len(piece)
        file.flush()
        os.fsync(file.fileno())
    return seen


def timed(job: Callable[[], int]) -> float:
    started = time.perf_counter()
    size = job()
    return size / (time.perf_counter() - started) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="the worker's EGRESS_CHUNK_SIZE_KB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    chunk = args.chunk_kib * 1024
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        bench = bench_worker.Bench(Path(tmp))
        try:
            bench_worker.upload_encrypted(bench, args.size_mib * 1024 * 1024, "envelope", KEY)
            clients = build_clients(AwsConfig(region=bench_worker.REGION, endpoint_url=bench.endpoint))
            size = int(clients.s3.head_object(Bucket="src", Key=KEY)["ContentLength"])
            source = SourceObject(bucket="src", key=KEY, size=size)
            decryptor = Decryptor(
                clients.kms, allowed_key_arns=(bench.key_arn,), key_cache_seconds=300, chunk_size=chunk
            )
            run = stage_runner(clients, decryptor, source, Path(tmp) / "out", chunk=chunk)
            labels = ["GET", "+ decrypt", "+ sha256", "+ write + fsync", "+ write, flushed as it goes"]
            figures: dict[str, list[float]] = {label: [] for label in ["peer: GET to disk + fsync", *labels]}
            for _ in range(args.rounds):
                figures["peer: GET to disk + fsync"].append(
                    timed(lambda: peer_get_to_disk(clients, Path(tmp) / "peer", chunk=chunk))
                )
                for depth, label in enumerate(labels, start=1):
                    figures[label].append(timed(lambda depth=depth: run(depth)))
            print(
                f"decrypt → SFT stages, {args.size_mib} MiB envelope object, {args.chunk_kib} KiB chunks, "
                f"{args.rounds} rounds, moto server {bench.endpoint}, CPU count {os.cpu_count()}"
            )
            peer = statistics.median(figures["peer: GET to disk + fsync"])
            print(f"   {'stages':<30} {'MB/s median':>12} {'(min–max)':>14} {'× peer':>8}")
            for label, values in figures.items():
                median = statistics.median(values)
                print(
                    f"   {label:<30} {median:12.0f} {f'({min(values):.0f}–{max(values):.0f})':>14} "
                    f"{median / peer:8.2f}"
                )
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
