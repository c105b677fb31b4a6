"""Encryption SDK decrypt throughput in this process: the library's own reader against ours.

Encrypts ``--size-mib`` of random bytes as an Encryption SDK message (default suite,
``--frame-length`` 4 KiB frames, as ``aws-encryption-cli`` writes) under a key of an
in-process moto server, then decrypts it ``--rounds`` times each way, alternating, and
prints every round, the median and the spread:

1. ``library``: the library's streaming decryptor (``client.stream(mode="d")``) read in
   64 KiB steps;
2. ``worker``: the worker's :class:`~egress.transforms.decrypt.Decryptor` (the library
   reads the header, :func:`~egress.transforms.esdk.esdk_plaintext` the body), source and
   plaintext in chunks of ``--chunk-kib`` (the worker's default chunk size, 1 MiB);
3. ``sha384``: only hashing the message with SHA-384 in 1 MiB updates, as a signed
   suite's verifier must: the most a signed message can be read at on one thread here,
   whoever decrypts it (``cryptography`` 48 holds the GIL while it hashes).

``--unsigned`` writes the message with the default suite's unsigned twin
(``AES_256_GCM_HKDF_SHA512_COMMIT_KEY``) instead.

``--profile`` runs the worker's reader once more under cProfile and prints the top lines
by own time. MB = 10^6 bytes of plaintext; the machine's other load shows in the spread. Usage:
``python bench/bench_esdk_read.py [--size-mib 256] [--rounds 3] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy
from cryptography.hazmat.primitives import hashes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summary(name: str, size: int, seconds: list[float]) -> str:
    rates = sorted(size / 1e6 / s for s in seconds)
    rounds = " ".join(f"{rate:5.0f}" for rate in rates)
    return (
        f"  {name:8} median {statistics.median(rates):5.0f} MB/s"
        f"  (min {rates[0]:.0f}, max {rates[-1]:.0f}; rounds {rounds})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--frame-length", type=int, default=4096)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unsigned", action="store_true", help="the unsigned committing suite")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker's reader once")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from egress.aws import AwsConfig, build_clients, emulator_session
    from egress.streams import ChunkReader
    from egress.transforms.decrypt import Decryptor
    from egress.transforms.esdk import esdk_provider

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        aws = build_clients(
            AwsConfig(endpoint_url=f"http://127.0.0.1:{port}"), session=emulator_session("eu-west-2")
        )
        key_arn = aws.kms.create_key()["KeyMetadata"]["Arn"]
        size = args.size_mib * 1024 * 1024
        writer = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        started = time.perf_counter()
        suite = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY if args.unsigned else None
        message, header = writer.encrypt(
            source=os.urandom(size),
            key_provider=esdk_provider(aws.kms, [key_arn]),
            frame_length=args.frame_length,
            **({"algorithm": suite} if suite else {}),
        )
        print(f"encrypted {args.size_mib} MiB in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        chunk = args.chunk_kib * 1024
        # The source's chunks, as the S3 download hands them on (not copied again per round).
        pieces = [message[i : i + chunk] for i in range(0, len(message), chunk)]
        del message

        def source() -> Iterator[bytes]:
            return iter(pieces)

        reader = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT
        )
        provider = esdk_provider(aws.kms, [key_arn])

        def library() -> int:
            got = 0
            with reader.stream(mode="d", source=ChunkReader(source()), key_provider=provider) as stream:
                while piece := stream.read(64 * 1024):
                    got += len(piece)
            return got

        decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=chunk)

        def worker() -> int:
            opened = decryptor.open(source="bench", metadata={}, chunks=source())
            return sum(len(piece) for piece in opened.chunks)

        def sha384() -> int:
            digest = hashes.Hash(hashes.SHA384())
            for piece in pieces:
                digest.update(piece)
            digest.finalize()
            return size

        ways: dict[str, Callable[[], int]] = {"library": library, "worker": worker, "sha384": sha384}
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                assert way() == size
                seconds[name].append(time.perf_counter() - started)

        print(
            f"ESDK message of {args.size_mib} MiB, {args.frame_length}-byte frames, {header.algorithm.name},"
            f" {args.chunk_kib} KiB chunks, decrypted in this process ({args.rounds} rounds)"
        )
        for name in ways:
            print(summary(name, size, seconds[name]))

        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(worker)
            print("\nworker under cProfile, top 15 by own time:")
            stats = pstats.Stats(profile, stream=sys.stdout)
            stats.sort_stats(pstats.SortKey.TIME).print_stats(15)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
