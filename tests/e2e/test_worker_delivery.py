"""The worker as a real process against the moto server: S3 notifications to deliveries."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import FLAG, Stack, WorkerProcess

DATA = {
    "nested/deeper/part-0.csv": b"a,b\n1,2\n" * 100,
    "nested/other/part-0.csv": b"x,y\n3,4\n" * 50,
    "with space/file one.txt": b"spaces survive\n",
    "plus+sign/a+b.txt": b"plus survives\n",
    "unicodé/résumé ✓.txt": b"non-ASCII survives\n",
    "top.json": b'{"ok": true}\n',
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def delivered_messages(worker: WorkerProcess, count: int = 1, timeout: float = 90) -> None:
    worker.wait_for(lambda line: line.get("event") == "message_done", count=count, timeout=timeout)


def test_one_prefix_two_rows_delivers_to_s3_and_sft(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    prefix = "exports/opsmi/2026-11-22/"
    stack.put_route(
        source_prefix=prefix,
        pipeline_name="OpsMI",
        transfer_type="S3",
        destination_bucket=stack.destination_bucket,
        destination_prefix="opsmi/",
    )
    stack.put_route(
        source_prefix=prefix, pipeline_name="OpsMI#sft", transfer_type="SFT", destination_prefix="warehouse"
    )
    worker = start_worker()
    for name, body in DATA.items():
        stack.upload(prefix + name, body)
    stack.upload(prefix + FLAG)  # last: the S3 notification reaches the queue
    delivered_messages(worker)

    for name, body in DATA.items():
        got = stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key="opsmi/" + name)["Body"].read()
        assert sha(got) == sha(body), name
        assert (stack.sft_root / "warehouse" / name).read_bytes() == body, name
    assert sorted(stack.destination_keys()) == sorted("opsmi/" + name for name in DATA)
    # nothing but the files: no flag, no temp names
    on_disk = sorted(
        str(p.relative_to(stack.sft_root / "warehouse"))
        for p in (stack.sft_root / "warehouse").rglob("*")
        if p.is_file()
    )
    assert on_disk == sorted(DATA)
    # the test event from the notification set-up was ignored, not dead-lettered
    assert any(line.get("why") == "s3:TestEvent" for line in worker.events())
    assert stack.dlq_messages() == []
    rows = stack.ledger_rows()
    assert len(rows) == 2 and {row["status"]["S"] for row in rows} == {"delivered"}
    assert {int(row["objects"]["N"]) for row in rows} == {len(DATA)}
    status, body = worker.get("/metrics")
    assert (
        status == 200
        and 'egress_objects_total{pipeline="OpsMI",recipient="team",transfer_type="S3"} 6.0' in body
    )
    assert worker.get("/healthz")[0] == 200 and worker.get("/readyz")[0] == 200
    assert worker.stop() == 0


def test_wildcard_row_keeps_subfolders_and_writes_manifest_last(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    stack.put_route(
        source_prefix="landing/*",
        pipeline_name="Any",
        transfer_type="S3",
        destination_bucket=stack.destination_bucket,
        destination_prefix="out/",
        manifest_file_name="manifest.json",
    )
    worker = start_worker()
    stack.upload("landing/run-1/a/part-0", b"one")
    stack.upload("landing/run-1/b/part-0", b"two")
    stack.upload("landing/run-1/" + FLAG)
    stack.upload("landing/run-2/part-0", b"three")
    stack.upload("landing/run-2/" + FLAG)
    delivered_messages(worker, count=2)
    keys = sorted(stack.destination_keys())
    # Each flag's manifest goes to that flag's own folder: two folders' manifests never collide.
    assert keys == [
        "out/run-1/a/part-0",
        "out/run-1/b/part-0",
        "out/run-1/manifest.json",
        "out/run-2/manifest.json",
        "out/run-2/part-0",
    ]
    manifest = json.loads(
        stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key="out/run-1/manifest.json")["Body"].read()
    )
    assert [(entry["name"], entry["size"], entry["source_key"]) for entry in manifest["objects"]] == [
        ("run-1/a/part-0", 3, "landing/run-1/a/part-0"),
        ("run-1/b/part-0", 3, "landing/run-1/b/part-0"),
    ]
    second = json.loads(
        stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key="out/run-2/manifest.json")["Body"].read()
    )
    assert [entry["name"] for entry in second["objects"]] == ["run-2/part-0"]
    assert worker.stop() == 0


def test_duplicate_notifications_and_redelivery_deliver_once(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    prefix = "dup/"
    stack.put_route(source_prefix=prefix, pipeline_name="Dup", transfer_type="SFT", destination_prefix="dup")
    stack.upload(prefix + "data.bin", b"payload")
    stack.upload(prefix + FLAG)
    # Take the real notification off the queue and put it back twice: a duplicate.
    body = None
    for _ in range(20):
        for message in stack.aws.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            if FLAG in message["Body"]:
                body = message["Body"]
            stack.aws.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
        if body:
            break
    assert body is not None, "the S3 notification never reached the queue"
    stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    worker = start_worker()
    delivered_messages(worker, count=2)
    target = stack.sft_root / "dup" / "data.bin"
    first_mtime = target.stat().st_mtime_ns
    # a redelivery after success
    stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    delivered_messages(worker, count=3)
    assert target.stat().st_mtime_ns == first_mtime
    delivered_lines = [line for line in worker.events() if line.get("event") == "route_delivered"]
    skipped_lines = [line for line in worker.events() if line.get("event") == "route_already_delivered"]
    assert len(delivered_lines) == 1 and len(skipped_lines) == 2
    (row,) = stack.ledger_rows()
    assert row["status"]["S"] == "delivered" and row["attempts"]["N"] == "1"
    # A producer re-running the pipeline into the same prefix is a new PUT: delivered again.
    time.sleep(0.01)
    stack.upload(prefix + "data.bin", b"payload v2")
    stack.upload(prefix + FLAG)
    worker.wait_for(lambda line: line.get("event") == "route_delivered", count=2, timeout=60)
    assert target.read_bytes() == b"payload v2"
    assert worker.stop() == 0


def test_many_objects_under_one_prefix(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> None:
    prefix = "bulk/"
    count = 2500
    stack.put_route(
        source_prefix=prefix,
        pipeline_name="Bulk",
        transfer_type="S3",
        destination_bucket=stack.destination_bucket,
        destination_prefix="bulk/",
    )
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: stack.upload(f"{prefix}d{i // 500}/obj-{i:05d}", b"%d" % i), range(count)))
    worker = start_worker(EGRESS_OBJECT_CONCURRENCY="16")
    stack.upload(prefix + FLAG)
    delivered_messages(worker, timeout=240)
    keys = stack.destination_keys()
    assert len(keys) == count
    assert sorted(keys) == sorted(f"bulk/d{i // 500}/obj-{i:05d}" for i in range(count))
    assert worker.stop() == 0


def test_sft_refuses_keys_that_would_escape(
    stack: Stack, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    prefix = "escape/"
    stack.put_route(source_prefix=prefix, pipeline_name="Esc", transfer_type="SFT", destination_prefix="esc")
    stack.upload(prefix + "../../outside.txt", b"must not escape")
    stack.upload(prefix + FLAG)
    worker = start_worker()
    (message,) = stack.dlq_messages(wait=60)
    assert message["MessageAttributes"]["reason"]["StringValue"] == "unsafe_key"
    assert not (tmp_path / "outside.txt").exists()
    assert not list((stack.sft_root).rglob("*outside*"))
    assert worker.stop() == 0
