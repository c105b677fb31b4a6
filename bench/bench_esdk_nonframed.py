"""A large non-framed Encryption SDK message through the worker: peak RSS and time.

``aws-encryption-cli --frame-length 0`` (the library's ``frame_length=0``) writes one body
under one tag. The aws-encryption-sdk library reads such a body whole before its first
byte comes out (a 48 MiB message peaked at 97 MiB; reading it out 64 KiB at a time is
then quadratic). The worker reads the header with the library and streams the body
with AES-GCM, the tag and the signature checked before the stream ends.

On a moto server in its own process (so the worker's figure is the worker alone), this:

1. writes ``--size-mib`` random bytes and encrypts them as a non-framed message under a
   KMS key of the server (default, signed suite), timing the library's encryption;
2. times a plain boto3 GET of the message (the peer);
3. ``--rounds`` times: a decrypt → SFT route, a fresh ``egress run``, the flag; prints
   the route's seconds, flag-to-delivered seconds and the worker's VmHWM, and checks the
   delivered file's SHA-256;
4. once with the tag flipped: the time to the dead-letter, the reason and the VmHWM, and
   that no file shows in the SFT folder.

MB = 10^6 bytes. Usage: ``python bench/bench_esdk_nonframed.py [--size-mib 300] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_worker import FLAG, Bench, peak_rss_mib  # noqa: E402

MIB = 1024 * 1024


def write_plaintext(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = os.urandom(min(8 * MIB, size - written))
            digest.update(piece)
            out.write(piece)
            written += len(piece)
    return digest.hexdigest()


def encrypt_non_framed(bench: Bench, plain: Path, message: Path) -> None:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import CommitmentPolicy

    from egress.transforms.esdk import esdk_provider

    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = esdk_provider(bench.kms, [bench.key_arn])
    with (
        plain.open("rb") as source,
        message.open("wb") as out,
        client.stream(mode="e", source=source, key_provider=provider, frame_length=0) as encryptor,
    ):
        while piece := encryptor.read(8 * MIB):
            out.write(piece)
    assert encryptor.header.frame_length == 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def visible_files(root: Path) -> list[str]:
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for one delivery")
    args = parser.parse_args()
    size = args.size_mib * MIB
    mb = size / 1e6
    with tempfile.TemporaryDirectory(prefix="egress-bench-nonframed-") as tmp:
        workdir = Path(tmp)
        bench = Bench(workdir)
        try:
            print(f"moto server {bench.endpoint} (own process); CPU count {os.cpu_count()}")
            plain, message = workdir / "plain.bin", workdir / "message.esdk"
            expected = write_plaintext(plain, size)
            started = time.monotonic()
            encrypt_non_framed(bench, plain, message)
            encrypt_seconds = time.monotonic() - started
            plain.unlink()
            bench.s3.upload_file(str(message), "src", "big/export.csv.enc")

            started = time.monotonic()
            body = bench.s3.get_object(Bucket="src", Key="big/export.csv.enc")["Body"]
            for _ in body.iter_chunks(8 * MIB):
                pass
            get_seconds = time.monotonic() - started

            rows: list[tuple[float, float, float]] = []
            for number in range(1, args.rounds + 1):
                prefix = f"round{number}/"
                bench.s3.copy_object(
                    Bucket="src",
                    Key=prefix + "export.csv.enc",
                    CopySource={"Bucket": "src", "Key": "big/export.csv.enc"},
                )
                bench.route(
                    source_prefix=prefix,
                    pipeline_name=f"nonframed-{number}",
                    transfer_type="SFT",
                    decrypt=True,
                    destination_prefix=f"round{number}",
                )
                worker, log, _ = bench.start_worker()
                started = time.monotonic()
                bench.s3.put_object(Bucket="src", Key=prefix + FLAG, Body=b"")
                try:
                    (line,) = bench.wait_line(log, "route_delivered", 1, timeout=args.timeout)
                except TimeoutError:
                    # (a worker that reads the body whole: say how far it got, then stop)
                    rss = peak_rss_mib(worker.pid)
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(60)
                    print(
                        f"round {number}: not delivered after {args.timeout:.0f} s; worker VmHWM {rss:.0f} MiB"
                    )
                    return 1
                wall = time.monotonic() - started
                rss = peak_rss_mib(worker.pid)
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)
                delivered = bench.sft_root / f"round{number}" / "export.csv"
                assert sha256_of(delivered) == expected, "delivered bytes differ"
                delivered.unlink()
                bench.s3.delete_object(Bucket="src", Key=prefix + "export.csv.enc")
                rows.append((float(line["seconds"]), wall, rss))

            # The tag flipped: the body streams into the temp file, the tag fails at its end.
            length = message.stat().st_size
            with message.open("rb") as handle:
                for signature_length in range(110, 60, -1):
                    handle.seek(length - signature_length - 2)
                    if int.from_bytes(handle.read(2), "big") == signature_length:
                        break
            with message.open("r+b") as handle:
                at = length - signature_length - 2 - 1
                handle.seek(at)
                byte = handle.read(1)
                handle.seek(at)
                handle.write(bytes([byte[0] ^ 1]))
            bench.s3.upload_file(str(message), "src", "tampered/export.csv.enc")
            message.unlink()
            bench.route(
                source_prefix="tampered/",
                pipeline_name="nonframed-tampered",
                transfer_type="SFT",
                decrypt=True,
                destination_prefix="tampered",
            )
            worker, log, _ = bench.start_worker()
            started = time.monotonic()
            bench.s3.put_object(Bucket="src", Key="tampered/" + FLAG, Body=b"")
            try:
                bench.wait_line(log, "message_done", 1, timeout=args.timeout)
                raise AssertionError("the tampered message was delivered")
            except RuntimeError as failed:
                tampered_text = str(failed)
            tampered_wall = time.monotonic() - started
            tampered_rss = peak_rss_mib(worker.pid)
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            left = visible_files(bench.sft_root)
        finally:
            bench.close()

    print(f"\nnon-framed Encryption SDK message of {args.size_mib} MiB, decrypt -> SFT (MB = 10^6 bytes)")
    print(
        f"   library encryption (frame_length=0)  {encrypt_seconds:8.2f} s {mb / encrypt_seconds:7.0f} MB/s"
    )
    print(f"   plain boto3 GET (peer)               {get_seconds:8.2f} s {mb / get_seconds:7.0f} MB/s")
    print(f"   {'round':<8}{'route s':>9}{'MB/s':>8}{'flag->done s':>14}{'worker VmHWM MiB':>19}")
    for number, (seconds, wall, rss) in enumerate(rows, start=1):
        print(f"   {number:<8}{seconds:>9.2f}{mb / seconds:>8.0f}{wall:>14.2f}{rss:>19.0f}")
    print(
        f"   median route {statistics.median(r[0] for r in rows):.2f} s, "
        f"peak RSS max {max(r[2] for r in rows):.0f} MiB; delivered byte-identical (SHA-256) every round"
    )
    print(
        f"   tag flipped: refused after {tampered_wall:.2f} s, worker VmHWM {tampered_rss:.0f} MiB, "
        f"visible files left: {left or 'none'}"
    )
    print(f"     {tampered_text[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
