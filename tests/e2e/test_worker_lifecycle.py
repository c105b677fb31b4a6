"""Long deliveries and shutdown: heartbeats, SIGTERM mid-object, a restart that completes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from egress.aws import AwsClients
from tests.e2e.conftest import FLAG, Stack, WorkerProcess, make_stack

BIG = 120 * 1024 * 1024


def big_payload() -> bytes:
    # Hex text: gzip level 6 runs at ~35 MB/s a core on it (slower than on random bytes,
    # which it gives up on), so the delivery takes seconds on purpose.
    return os.urandom(BIG // 2).hex().encode()


def test_delivery_longer_than_visibility_timeout_is_not_worked_twice(
    aws: AwsClients,
    moto_endpoint: str,
    tmp_path: Path,
    unique: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    (tmp_path / "long").mkdir()
    stack = make_stack(aws, moto_endpoint, tmp_path / "long", unique + "l", visibility=2)
    # the start_worker fixture's stack is another one; point the workers at this one
    overrides = {
        "EGRESS_QUEUE_URL": stack.queue_url,
        "EGRESS_ROUTES_TABLE": stack.routes_table,
        "EGRESS_LEDGER_TABLE": stack.ledger_table,
        "EGRESS_SFT_ROOT": str(stack.sft_root),
        "EGRESS_VISIBILITY_TIMEOUT_SECONDS": "2",
        "EGRESS_HEARTBEAT_SECONDS": "0.5",
    }
    stack.put_route(
        source_prefix="long/",
        pipeline_name="Long",
        transfer_type="SFT",
        destination_prefix="long",
        compress=True,
        compress_fmt="gz",
    )
    payload = big_payload()
    stack.upload("long/big.bin", payload)
    first = start_worker(**overrides)
    second = start_worker(**overrides)
    stack.upload("long/" + FLAG)
    workers = [first, second]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [w for w in workers if any(line.get("event") == "message_done" for line in w.events())]
        if done:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("no worker finished the delivery")
    (done_line,) = [line for w in workers for line in w.events() if line.get("event") == "message_done"]
    flag_receipts = [
        line
        for w in workers
        for line in w.events()
        if line.get("event") == "message_received" and line.get("message_id") == done_line["message_id"]
    ]
    assert len(flag_receipts) == 1, flag_receipts
    elapsed = [line for w in workers for line in w.events() if line.get("event") == "route_delivered"]
    assert len(elapsed) == 1 and elapsed[0]["seconds"] > 2, "the delivery must outlast the visibility timeout"
    assert not [
        line
        for w in workers
        for line in w.events()
        if line.get("event") in {"route_already_delivered", "route_failed_retrying", "route_held_elsewhere"}
    ]
    assert sum(1 for line in first.events() + second.events() if line.get("event") == "message_done") == 1
    (row,) = stack.ledger_rows()
    assert row["attempts"]["N"] == "1"
    assert (stack.sft_root / "long" / "big.bin.gz").exists()
    assert first.stop() == 0 and second.stop() == 0


@pytest.mark.parametrize("transfer_type", ["S3", "SFT"])
def test_sigterm_mid_object_releases_everything_and_restart_completes(
    stack: Stack, start_worker: Callable[..., WorkerProcess], transfer_type: str
) -> None:
    route = (
        {"transfer_type": "S3", "destination_bucket": stack.destination_bucket, "destination_prefix": "big/"}
        if transfer_type == "S3"
        else {"transfer_type": "SFT", "destination_prefix": "big"}
    )
    stack.put_route(source_prefix="big/", pipeline_name="Big", compress=True, compress_fmt="gz", **route)
    payload = big_payload()
    stack.upload("big/big.bin", payload)
    worker = start_worker(EGRESS_SHUTDOWN_GRACE_SECONDS="1")
    stack.upload("big/" + FLAG)

    def mid_way() -> bool:
        if transfer_type == "S3":
            uploads = stack.aws.s3.list_multipart_uploads(Bucket=stack.destination_bucket).get("Uploads", [])
            return bool(uploads)
        return any(p.name.endswith(".part") for p in stack.sft_root.rglob("*"))

    deadline = time.monotonic() + 60
    while not mid_way():
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.05)
    sent = time.monotonic()
    code = worker.stop(signal.SIGTERM, timeout=20)
    took = time.monotonic() - sent
    assert code == 0, worker.tail()
    assert took < 1 + 5, f"exit took {took:.1f}s with a 1 s grace period"
    assert [line for line in worker.events() if line.get("event") == "message_released"]
    # nothing left behind
    assert stack.aws.s3.list_multipart_uploads(Bucket=stack.destination_bucket).get("Uploads", []) == []
    assert [p for p in stack.sft_root.rglob("*") if p.is_file()] == []
    assert stack.destination_keys() == []
    # the message is visible again at once, not after the visibility timeout
    deadline = time.monotonic() + 10
    while stack.queue_counts()[0] != 1:
        assert time.monotonic() < deadline, stack.queue_counts()
        time.sleep(0.2)
    # a restarted worker completes the delivery
    restarted = start_worker()
    restarted.wait_for(lambda line: line.get("event") == "message_done", timeout=120)
    import gzip

    if transfer_type == "S3":
        body = stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key="big/big.bin.gz")["Body"].read()
    else:
        body = (stack.sft_root / "big" / "big.bin.gz").read_bytes()
    assert gzip.decompress(body) == payload
    assert restarted.stop() == 0


def test_duplicates_arriving_while_a_live_worker_delivers_never_reach_the_dlq(
    aws: AwsClients,
    moto_endpoint: str,
    tmp_path: Path,
    unique: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A duplicate is put back as a new message while the delivery's claim is held: its receive
    count never walks into the redrive policy (here 2 receives), however long the delivery takes."""
    (tmp_path / "dup").mkdir()
    stack = make_stack(aws, moto_endpoint, tmp_path / "dup", unique + "d", visibility=2, max_receive_count=2)
    overrides = {
        "EGRESS_QUEUE_URL": stack.queue_url,
        "EGRESS_ROUTES_TABLE": stack.routes_table,
        "EGRESS_LEDGER_TABLE": stack.ledger_table,
        "EGRESS_SFT_ROOT": str(stack.sft_root),
        "EGRESS_VISIBILITY_TIMEOUT_SECONDS": "2",
        "EGRESS_HEARTBEAT_SECONDS": "0.5",
        "EGRESS_BACKOFF_BASE_SECONDS": "1",
    }
    stack.put_route(
        source_prefix="dup/", pipeline_name="Dup", transfer_type="SFT", destination_prefix="dup",
        compress=True, compress_fmt="gz",
    )  # fmt: skip
    stack.upload("dup/big.bin", big_payload())
    stack.upload("dup/" + FLAG)
    # Take the real notification off the queue, to send it again as S3's at-least-once delivery may.
    body = None
    deadline = time.monotonic() + 30
    while body is None and time.monotonic() < deadline:
        for message in stack.aws.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            if FLAG in message["Body"]:
                body = message["Body"]
            stack.aws.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
    assert body is not None, "the S3 notification never reached the queue"
    stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    worker = start_worker(**overrides)
    worker.wait_for(lambda line: line.get("event") == "message_received")
    time.sleep(0.5)  # the delivery is under way (gzip of 120 MB of hex takes seconds)
    for _ in range(3):
        stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    worker.wait_for(lambda line: line.get("event") == "route_delivered", timeout=120)
    worker.wait_for(lambda line: line.get("event") == "route_already_delivered", count=3, timeout=60)
    events = [line.get("event") for line in worker.events()]
    assert events.count("route_delivered") == 1
    assert events.count("message_requeued") >= 3
    assert "message_dead_lettered" not in events
    assert stack.dlq_messages(wait=2) == []
    assert worker.stop() == 0
