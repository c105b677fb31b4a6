"""Large non-framed Encryption SDK messages and the fail-closed allow-list, through ``egress run``.

A non-framed message (``aws-encryption-cli --frame-length 0``: one body, one tag) larger
than the worker's memory budget is delivered decrypt → SFT byte-identical with the
worker's peak RSS (VmHWM of the worker process alone; the moto server runs in the test
process) under 256 MiB. The library alone read the whole body first: a 48 MiB message
peaked at 97 MiB, so this one would peak above a GiB. A tampered one is dead-lettered as
``authentication_failed`` and no file ever shows in the SFT folder under a name the
agent would pick up, not even for a moment. ``EGRESS_E2E_ESDK_MIB`` sets the size
(bench/bench_esdk_nonframed.py measures 300 MiB with timings).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import CommitmentPolicy

from egress.devstack.encrypt import envelope_encrypt
from egress.transforms.esdk import esdk_provider
from tests.e2e.conftest import FLAG, Stack, WorkerProcess

MIB = 1024 * 1024
SIZE = int(os.environ.get("EGRESS_E2E_ESDK_MIB", "300")) * MIB  # over the default 160 MiB budget
RSS_LIMIT_MIB = 256


def write_plaintext(path: Path, size: int) -> str:
    """``size`` random bytes into ``path``, 8 MiB at a time; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = os.urandom(min(8 * MIB, size - written))
            digest.update(piece)
            out.write(piece)
            written += len(piece)
    return digest.hexdigest()


def encrypt_non_framed(stack: Stack, plain: Path, message: Path) -> None:
    """What ``aws-encryption-cli --frame-length 0`` writes (default signed, committing suite)."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = esdk_provider(stack.aws.kms, [stack.kms_key_arn])
    with (
        plain.open("rb") as source,
        message.open("wb") as out,
        client.stream(mode="e", source=source, key_provider=provider, frame_length=0) as encryptor,
    ):
        while piece := encryptor.read(8 * MIB):
            out.write(piece)
    assert encryptor.header.frame_length == 0


def flip_byte(path: Path, at: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))


def peak_rss_mib(pid: int) -> float:
    """The process's high-water RSS (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def watch_visible_files(root: Path) -> Iterator[dict[str, set[int]]]:
    """Every file the SFT agent could pick up (not hidden, not ``.part``) seen under ``root``
    while the block runs, polled every 20 ms, with each size it was seen at."""
    seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for current, folders, files in os.walk(root):
                folders[:] = [name for name in folders if not name.startswith(".")]
                for name in files:
                    if name.startswith(".") or name.endswith(".part"):
                        continue
                    try:
                        size = os.stat(os.path.join(current, name)).st_size
                    except FileNotFoundError:
                        continue
                    seen.setdefault(os.path.relpath(os.path.join(current, name), root), set()).add(size)
            stop.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def test_non_framed_message_over_the_memory_budget_is_delivered_with_bounded_rss(
    stack: Stack, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    plain, message = tmp_path / "plain.bin", tmp_path / "message.esdk"
    expected = write_plaintext(plain, SIZE)
    encrypt_non_framed(stack, plain, message)
    plain.unlink()
    stack.put_route(
        source_prefix="big/", pipeline_name="Big", transfer_type="SFT", decrypt=True, destination_prefix="big"
    )
    stack.aws.s3.upload_file(str(message), stack.source_bucket, "big/export.csv.enc")
    message.unlink()
    worker = start_worker()
    with watch_visible_files(stack.sft_root) as seen:
        stack.upload("big/" + FLAG)
        worker.wait_for(lambda line: line.get("event") == "message_done", timeout=240)
        rss = peak_rss_mib(worker.process.pid)
    delivered = stack.sft_root / "big" / "export.csv"
    assert delivered.stat().st_size == SIZE
    assert sha256_of(delivered) == expected
    # No name the agent picks up ever showed but this one, and only complete (renamed from
    # its hidden temp name once the tag and the signature had been checked).
    assert set(seen) <= {"big/export.csv"} and all(sizes == {SIZE} for sizes in seen.values()), seen
    print(f"\nnon-framed {SIZE // MIB} MiB message, decrypt -> SFT: worker peak RSS {rss:.0f} MiB")
    assert rss < RSS_LIMIT_MIB, f"worker peak RSS {rss:.0f} MiB for a {SIZE // MIB} MiB non-framed message"
    assert worker.stop() == 0


def test_tampered_non_framed_messages_are_dead_lettered_with_nothing_visible(
    stack: Stack, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The tag (after the whole body) and the signature (after everything) are checked only
    once the plaintext has streamed into the temp file: it is removed and never renamed."""
    size = 40 * MIB
    plain = tmp_path / "plain.bin"
    write_plaintext(plain, size)
    cases = ("tag/", "signature/")
    for prefix in cases:
        message = tmp_path / f"{prefix.strip('/')}.esdk"
        encrypt_non_framed(stack, plain, message)
        length = message.stat().st_size
        # The default suite is signed: the message ends with a 2-byte length and the signature.
        with message.open("rb") as handle:
            for signature_length in range(110, 60, -1):
                handle.seek(length - signature_length - 2)
                if int.from_bytes(handle.read(2), "big") == signature_length:
                    break
            else:
                raise AssertionError("no footer found")
        tag_end = length - signature_length - 2
        flip_byte(message, tag_end - 1 if prefix == "tag/" else length - 1)
        stack.put_route(
            source_prefix=prefix,
            pipeline_name="Bad",
            transfer_type="SFT",
            decrypt=True,
            destination_prefix=prefix.strip("/"),
        )
        stack.aws.s3.upload_file(str(message), stack.source_bucket, prefix + "export.csv.enc")
        message.unlink()
    worker = start_worker()
    with watch_visible_files(stack.sft_root) as seen:
        for prefix in cases:
            stack.upload(prefix + FLAG)
        lines = worker.wait_for(
            lambda line: line.get("event") == "message_dead_lettered", count=2, timeout=240
        )
    assert seen == {}
    assert {line["reason"] for line in lines} == {"authentication_failed"}
    details = " ".join(line["detail"] for line in lines)
    assert "InvalidTag" in details and "InvalidSignature" in details
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in stack.dlq_messages(wait=5))
    assert reasons == ["authentication_failed", "authentication_failed"]
    assert worker.stop() == 0
    # (after the stop: a running worker's lock file under .egress/owners says it is alive)
    assert [p for p in stack.sft_root.rglob("*") if p.is_file()] == []


def test_empty_key_allow_list_decrypts_no_envelope_object(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    """EGRESS_KMS_KEY_ARNS empty: envelope objects are refused like the other formats, not
    decrypted with whatever key their own metadata names."""
    prefix = "envelope/"
    stack.put_route(
        source_prefix=prefix,
        pipeline_name="Env",
        transfer_type="S3",
        decrypt=True,
        destination_bucket=stack.destination_bucket,
        destination_prefix="plain/",
    )
    stack.put_route(
        source_prefix=prefix,
        pipeline_name="Env#sft",
        transfer_type="SFT",
        decrypt=True,
        destination_prefix="plain",
    )
    metadata, body = envelope_encrypt(
        stack.aws.kms, key_id=stack.kms_key_arn, chunks=iter([b"id,secret\n1,x\n"])
    )
    stack.upload(prefix + "rows.csv.enc", b"".join(body), Metadata=metadata)
    worker = start_worker(EGRESS_KMS_KEY_ARNS="")
    stack.upload(prefix + FLAG)
    (line,) = worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", timeout=90)
    assert line["reason"] == "key_not_allowed"
    (dead,) = stack.dlq_messages(wait=5)
    attributes = dead["MessageAttributes"]
    assert attributes["reason"]["StringValue"] == "key_not_allowed"
    assert "EGRESS_KMS_KEY_ARNS is empty" in attributes["detail"]["StringValue"]
    assert stack.destination_keys() == []
    assert stack.aws.s3.list_multipart_uploads(Bucket=stack.destination_bucket).get("Uploads", []) == []
    assert worker.stop() == 0
    assert [p for p in stack.sft_root.rglob("*") if p.is_file()] == []
