"""The ledger's claims and per-object progress against the moto server."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from egress.aws import AwsClients
from egress.errors import Reason, RetryableError
from egress.ledger import Claim, DeliveryKey, LeaseHeld, Ledger, ProgressLog
from egress.ledger_table import DONE, UPLOADING, WRITTEN, LedgerSchemaError, create_ledger_table

KEY = DeliveryKey("src", "exports/x/pipeline_success.flag", "seq:1", "exports/x/", "X")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def table(aws: AwsClients, unique: str) -> str:
    name = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, name)
    return name


def test_a_dead_workers_claim_lapses_with_its_lease_and_is_taken_over(aws: AwsClients, table: str) -> None:
    clock = Clock()
    first = Ledger(aws.dynamodb, table, owner="a", lease_seconds=30, clock=clock)
    second = Ledger(aws.dynamodb, table, owner="b", lease_seconds=30, clock=clock)
    lease = first.begin(KEY, recipient="team", transfer_type="S3")
    assert lease.claim is Claim.ACQUIRED and not lease.resumed and lease.taken_over is None
    first.record(KEY, [first.object_item(KEY, name="out/a", status=DONE, source_key="exports/x/a", size=1)])
    clock.now += 20
    with pytest.raises(LeaseHeld) as held:
        second.begin(KEY, recipient="team", transfer_type="S3")
    assert 9 <= held.value.retry_after <= 10  # the holder's lease runs 10 s more
    first.renew(KEY)  # the heartbeat: 30 s from now
    clock.now += 29
    with pytest.raises(LeaseHeld):
        second.begin(KEY, recipient="team", transfer_type="S3")
    clock.now += 2  # no renewal came: the first worker is dead
    lease = second.begin(KEY, recipient="team", transfer_type="S3")
    assert lease.claim is Claim.ACQUIRED and lease.resumed
    assert lease.taken_over is not None and lease.taken_over.startswith("a/")
    assert set(second.objects(KEY)) == {"out/a"}
    # The dead claim can no longer renew or record anything: it learns it lost the lease.
    for attempt in (
        lambda: first.renew(KEY),
        lambda: first.record(KEY, [first.object_item(KEY, name="out/b", status=DONE, source_key="b")]),
    ):
        with pytest.raises(RetryableError) as lost:
            attempt()
        assert lost.value.reason == Reason.LEASE_LOST
    assert set(second.objects(KEY)) == {"out/a"}
    second.finish(KEY, objects=1, size=1)
    assert first.begin(KEY, recipient="team", transfer_type="S3").claim is Claim.ALREADY_DELIVERED


def test_a_released_claim_is_resumed_but_not_taken_over(aws: AwsClients, table: str) -> None:
    ledger = Ledger(aws.dynamodb, table, owner="a", lease_seconds=30)
    ledger.begin(KEY, recipient="team", transfer_type="SFT")
    ledger.fail(KEY, reason="transient")
    lease = ledger.begin(KEY, recipient="team", transfer_type="SFT")
    assert lease.resumed and lease.taken_over is None


def test_two_claims_at_once_one_wins(aws: AwsClients, table: str) -> None:
    """The conditional claim is atomic (the emulator is made to keep DynamoDB's promise)."""
    outcomes: list[str] = []
    keys = [DeliveryKey("src", f"k{i}/pipeline_success.flag", "seq:1", f"k{i}/", "X") for i in range(20)]

    def claim(owner: str, key: DeliveryKey) -> None:
        try:
            Ledger(aws.dynamodb, table, owner=owner).begin(key, recipient="t", transfer_type="S3")
            outcomes.append(f"{key.flag_key}:won")
        except LeaseHeld:
            outcomes.append(f"{key.flag_key}:held")

    for key in keys:
        threads = [threading.Thread(target=claim, args=(owner, key)) for owner in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for key in keys:
        assert sorted(o.split(":")[1] for o in outcomes if o.startswith(key.flag_key + ":")) == [
            "held",
            "won",
        ]


def test_progress_is_checkpointed_in_batches_and_on_a_timer(aws: AwsClients, table: str) -> None:
    ledger = Ledger(aws.dynamodb, table, owner="a")
    ledger.begin(KEY, recipient="team", transfer_type="S3")
    log = ProgressLog(ledger, KEY, batch=25, interval=0.3)
    for n in range(60):
        log.add(ledger.object_item(KEY, name=f"out/{n:03d}", status=DONE, source_key=f"in/{n:03d}", size=n))
    assert len(ledger.objects(KEY)) == 50  # two full batches written, ten waiting
    threading.Event().wait(0.8)  # the timer's checkpoint
    assert len(ledger.objects(KEY)) == 60
    log.record_now(
        [
            ledger.object_item(
                KEY, name="out/big", status=UPLOADING, source_key="in/big", mpu_id="u-1", bucket="d"
            )
        ]
    )
    records = ledger.objects(KEY)
    assert records["out/big"].mpu_id == "u-1" and records["out/007"].size == 7
    log.close()


class CountingLedger(Ledger):
    """The real ledger on the moto server, noting the size of every BatchWriteItem it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self._batches_lock = threading.Lock()

    def _write_batch(self, items: list[dict[str, Any]]) -> None:
        with self._batches_lock:
            self.batches.append(len(items))
        super()._write_batch(items)


def test_objects_finishing_together_write_full_batches_not_a_cascade_of_small_ones(
    aws: AwsClients, table: str
) -> None:
    # 32 copy threads finish at once: a thread that finds the batch full while another is
    # writing must not write the few rows that arrived meanwhile as a request of their own.
    ledger = CountingLedger(aws.dynamodb, table, owner="a")
    ledger.begin(KEY, recipient="team", transfer_type="S3")
    log = ProgressLog(ledger, KEY, batch=25, interval=60)
    start = threading.Barrier(32)

    def finish(thread: int) -> None:
        start.wait()
        for n in range(25):
            name = f"out/{thread:02d}-{n:02d}"
            log.add(ledger.object_item(KEY, name=name, status=DONE, source_key=name, size=n))

    threads = [threading.Thread(target=finish, args=(t,)) for t in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.batches == [25] * 32  # 800 rows: 32 requests, every one full
    log.flush()
    assert len(ledger.objects(KEY)) == 800
    log.close()


def test_sft_rows_are_found_by_path_and_digest(aws: AwsClients, table: str) -> None:
    ledger = Ledger(aws.dynamodb, table, owner="a")
    ledger.begin(KEY, recipient="team", transfer_type="SFT")
    ledger.record(
        KEY,
        [
            ledger.object_item(
                KEY,
                name="team/a.csv",
                status=WRITTEN,
                source_key="exports/x/a.csv",
                size=3,
                sha256="ab" * 32,
                sft_path="team/a.csv",
                unsent="sft",
                temp_name=".a.csv.x.part",
            )
        ],
    )
    found = aws.dynamodb.query(
        TableName=table,
        IndexName="by_sft_path",
        KeyConditionExpression="sft_path = :p AND sha256 = :d",
        ExpressionAttributeValues={":p": {"S": "team/a.csv"}, ":d": {"S": "ab" * 32}},
    )["Items"]
    assert [item["record"]["S"] for item in found] == ["obj#team/a.csv"]


def test_a_table_with_the_old_key_schema_is_refused_with_what_to_do(aws: AwsClients, unique: str) -> None:
    name = f"old-ledger-{unique}"
    aws.dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "delivery_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "delivery_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(LedgerSchemaError, match="sort key record"):
        create_ledger_table(aws.dynamodb, name)
