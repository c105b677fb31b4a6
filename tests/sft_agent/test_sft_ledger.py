"""The agent records each file's fate in the ledger table (a real moto server, a real mTLS push).

The table is created here with the schema of docs/exactly-once.md, and object rows are
written as the worker writes them (status ``written``, before the file appears).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from sft_helpers import AgentProc, ReceiverProc, drop, route, wait_for

from egress.aws import AwsClients
from egress.ledger_table import create_ledger_table
from tests.support.ports import free_port

_serialize = TypeSerializer().serialize
_deserialize = TypeDeserializer().deserialize


def write_object_row(
    aws: AwsClients,
    table: str,
    *,
    sft_path: str,
    body: bytes,
    age: float = 0.0,
    delivery_id: str | None = None,
) -> str:
    """An SFT object row as the worker writes it (of a new delivery unless given); returns its delivery_id."""
    delivery_id = delivery_id or uuid.uuid4().hex
    written = time.time() - age
    row: dict[str, Any] = {
        "delivery_id": delivery_id,
        "record": f"obj#{sft_path}",
        "name": sft_path,
        "status": "written",
        "source_key": f"pipeline/{sft_path}",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "sft_path": sft_path,
        "unsent": "sft",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(written)),
        "written_epoch": int(written),
        "claim": "worker-token",
    }
    aws.dynamodb.put_item(TableName=table, Item={k: _serialize(v) for k, v in row.items()})
    return delivery_id


def read_row(aws: AwsClients, table: str, delivery_id: str, sft_path: str) -> dict[str, Any]:
    item = aws.dynamodb.get_item(
        TableName=table,
        Key={"delivery_id": {"S": delivery_id}, "record": {"S": f"obj#{sft_path}"}},
        ConsistentRead=True,
    )["Item"]
    return {k: _deserialize(v) for k, v in item.items()}


def test_each_files_fate_is_recorded_and_old_unsent_files_are_counted(
    tmp_path: Path,
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    receiver = start_receiver()
    sft_root = tmp_path / "data-egress"
    warehouse, doomed = sft_root / "warehouse", sft_root / "doomed"
    body, doomed_body = b"id,name\n1,a\n" * 1000, b"never delivered\n"
    sent_id = write_object_row(aws, table, sft_path="warehouse/orders/a.csv", body=body)
    parked_id = write_object_row(aws, table, sft_path="doomed/b.csv", body=doomed_body)
    old_id = write_object_row(aws, table, sft_path="warehouse/old.csv", body=b"old", age=7200)
    # A row for the same path with other content: not this file's row, left alone.
    other_id = write_object_row(aws, table, sft_path="warehouse/orders/a.csv", body=b"another version")
    agent = start_agent(
        [
            route(
                "warehouse",
                warehouse,
                [{"http": {"url": f"{receiver.url}/DA"}}],
                error_folder=sft_root / "error" / "warehouse",
                recursive=True,
            ),
            route(
                "doomed",
                doomed,
                [{"http": {"url": f"https://127.0.0.1:{free_port()}/x"}}],
                error_folder=sft_root / "error" / "doomed",
                retry={"max_attempts": 2, "initial_delay": "200ms", "max_delay": "200ms"},
            ),
        ],
        env={"AWS_ENDPOINT_URL": moto_endpoint, "AWS_REGION": "eu-west-2"},
        ledger={"table": table, "sft_root": str(sft_root), "unsent_check_interval": "1s"},
    )
    # /healthz answers before the agent logs agent_started (it starts its ledger and routes first).
    agent_id = wait_for(lambda: agent.events("agent_started"), timeout=20, what="agent_started")[0][
        "agent_id"
    ]
    drop(warehouse / "orders", "a.csv", body)
    drop(doomed, "b.csv", doomed_body)
    drop(warehouse, "no-row.csv", b"not written by the worker\n")

    wait_for(
        lambda: read_row(aws, table, sent_id, "warehouse/orders/a.csv")["status"] == "sent",
        timeout=20,
        what="the sent file's row to say sent",
    )
    sent = read_row(aws, table, sent_id, "warehouse/orders/a.csv")
    assert sent["http_status"] == 201 and sent["bytes_sent"] == len(body)
    assert sent["sent_sha256"] == hashlib.sha256(body).hexdigest() == sent["sha256"]
    assert sent["agent"] == agent_id and sent["attempts"] == 1
    assert sent["sent_at"].startswith("20") and sent["sending_at"] <= sent["sent_at"]
    assert "unsent" not in sent, "a sent file leaves the unsent index"
    assert len(receiver.received("a.csv")) == 1
    assert read_row(aws, table, other_id, "warehouse/orders/a.csv")["status"] == "written"

    wait_for(
        lambda: read_row(aws, table, parked_id, "doomed/b.csv")["status"] == "parked",
        timeout=20,
        what="the parked file's row to say parked",
    )
    parked = read_row(aws, table, parked_id, "doomed/b.csv")
    assert parked["parked_reason"] == "connect" and parked["attempts"] == 2
    assert parked["last_reason"] == "connect", "the failed first attempt was recorded as retry"
    assert parked["parked_at"].startswith("20") and "unsent" not in parked
    assert (sft_root / "error" / "doomed" / "b.csv").read_bytes() == doomed_body

    # A file with no row is sent all the same; the missing row is logged.
    wait_for(lambda: agent.events("file_sent", file="no-row.csv"), timeout=10, what="the row-less file sent")
    wait_for(
        lambda: agent.events("ledger_row_not_found", sft_path="warehouse/no-row.csv"),
        timeout=10,
        what="ledger_row_not_found",
    )

    # Only the row written two hours ago and never sent counts as unsent (and the other
    # version of a.csv is too young).
    def unsent_logged() -> list[dict[str, Any]]:
        return [e for e in agent.events("unsent_files") if e["count"] == 1]

    (first, *_) = wait_for(unsent_logged, timeout=10, what="an unsent_files line counting the old row")
    assert 7190 <= first["oldest_seconds"] <= 7300
    assert agent.metric("sft_agent_unsent_files") == 1
    assert 7190 <= agent.metric("sft_agent_oldest_unsent_seconds") <= 7300
    assert read_row(aws, table, old_id, "warehouse/old.csv")["status"] == "written"
    assert agent.metric("sft_agent_ledger_updates_total", status="sent") == 1
    assert agent.metric("sft_agent_ledger_updates_total", status="parked") == 1
    assert agent.metric("sft_agent_ledger_updates_total", status="retry") == 1
    assert agent.metric("sft_agent_ledger_rows_not_found_total") == 1
    assert agent.metric("sft_agent_ledger_errors_total", operation="update") == 0

    statuses = {e["route"]: e for e in agent.events("route_status")}
    assert set(statuses) == {"warehouse", "doomed"}
    assert statuses["warehouse"]["cert_expiry_days"] > 80
    assert {"backlog", "oldest_file_age_seconds", "error_files"} <= statuses["doomed"].keys()


def test_an_unreachable_ledger_never_holds_a_send_up(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    receiver = start_receiver()
    sft_root = tmp_path / "data-egress"
    agent = start_agent(
        [route("warehouse", sft_root / "warehouse", [{"http": {"url": f"{receiver.url}/DA"}}], error_folder=tmp_path / "err")],
        env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_REGION": "eu-west-2",
             "SFT_AGENT_LEDGER_TABLE": "data-egress-ledger"},
        ledger={"sft_root": str(sft_root), "unsent_check_interval": "1s"},
    )  # fmt: skip
    for i in range(3):
        drop(sft_root / "warehouse", f"f{i}.csv", b"x" * (i + 1))
    wait_for(lambda: len(agent.events("file_sent")) == 3, timeout=15, what="every file sent")
    assert len(receiver.received()) == 3
    wait_for(
        lambda: agent.metric("sft_agent_ledger_errors_total", operation="lookup") >= 1,
        timeout=30,
        what="the ledger errors counted",
    )
    assert agent.events("ledger_error")
