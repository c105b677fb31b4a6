"""Why the worker reads the Encryption SDK's decrypting stream 64 KiB at a time.

Encrypts ``--size-mib`` of random bytes as an Encryption SDK message (default suite,
4 KiB frames, as ``aws-encryption-cli`` writes) under a key of an in-process moto server,
then decrypts it twice in this process and prints the throughput of each:

1. the ESDK stream read in chunk-size (8 MiB) steps, as the worker did before: the
   library's ``read(n)`` joins frames with ``bytes +=``, quadratic in n / frame length;
2. the worker's :class:`~egress.transforms.decrypt.Decryptor` (64 KiB steps, joined to
   the chunk size).

MB = 10^6 bytes. Usage: ``python bench/bench_esdk_read.py [--size-mib 256]``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import sys
import time

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import CommitmentPolicy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from egress.aws import AwsConfig, build_clients, emulator_session
    from egress.devstack.encrypt import esdk_encrypt_stream
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
        plain = os.urandom(size)
        out = io.BytesIO()
        esdk_encrypt_stream(aws.kms, key_arn=key_arn, source=io.BytesIO(plain), dest=out)
        message = out.getvalue()
        chunk = 8 * 1024 * 1024

        def chunks() -> io.RawIOBase:
            return ChunkReader(message[i : i + chunk] for i in range(0, len(message), chunk))

        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT
        )
        started = time.perf_counter()
        got = 0
        with client.stream(
            mode="d", source=chunks(), key_provider=esdk_provider(aws.kms, [key_arn])
        ) as stream:
            while piece := stream.read(chunk):
                got += len(piece)
        naive = time.perf_counter() - started
        assert got == size

        decryptor = Decryptor(aws.kms, allowed_key_arns=[key_arn], chunk_size=chunk)
        pieces = (message[i : i + chunk] for i in range(0, len(message), chunk))
        started = time.perf_counter()
        got = sum(len(p) for p in decryptor.open(source="bench", metadata={}, chunks=pieces).chunks)
        worker = time.perf_counter() - started
        assert got == size

        mb = size / 1e6
        print(f"ESDK message of {args.size_mib} MiB (4 KiB frames), decrypted in this process")
        print(f"  stream.read(8 MiB) (the library used directly)  {naive:7.2f} s {mb / naive:7.0f} MB/s")
        print(f"  Decryptor (64 KiB reads, joined to 8 MiB)       {worker:7.2f} s {mb / worker:7.0f} MB/s")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
