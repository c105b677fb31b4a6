"""Filters, approvals and disabled rows with the worker as a process (issue 12, items 2–4).

One worker sees three flags: a filtered folder (junk skipped, the rest delivered, no DLQ),
a row that needs approval (DLQ ``route_not_approved``; approved by a second IAM user and
redriven: delivered) and a folder whose only row is disabled (nothing delivered, no DLQ).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REGION
from tests.e2e.conftest import Stack, WorkerProcess

FLAG = "pipeline_success.flag"
CHECKOUT = Path(__file__).resolve().parents[2]


def _user_env(stack: Stack, name: str) -> dict[str, str]:
    """The environment of an operator signed in as IAM user ``name`` (created here with a key)."""
    iam = stack.aws.session.client("iam", endpoint_url=stack.endpoint)
    user = f"{name}-{stack.routes_table}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_REGION": REGION,
        "EGRESS_ROUTES_TABLE": stack.routes_table,
        "EGRESS_QUEUE_URL": stack.queue_url,
    }


def _egress(env: dict[str, str], stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress.cli", "--endpoint-url", stack.endpoint, *argv],
        env=env,
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(240)
def test_filters_approval_and_disabled_rows(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> None:
    dst = stack.destination_bucket
    s3_route = {"transfer_type": "S3", "destination_bucket": dst}

    # 1. A filtered folder: junk is skipped and counted, the rest delivered.
    stack.put_route(
        source_prefix="filtered/",
        pipeline_name="Filtered",
        destination_prefix="filtered/",
        exclude=["*.DS_Store", "_SUCCESS"],
        **s3_route,
    )
    for key in ("a.csv", "sub/b.csv", ".DS_Store", "sub/.DS_Store", "_SUCCESS"):
        stack.upload(f"filtered/{key}", b"data " + key.encode())

    # 2. A row that needs approval, written by alice through the CLI.
    alice, bob = _user_env(stack, "alice"), _user_env(stack, "bob")
    put = _egress(
        alice,
        stack,
        "routes",
        "put",
        "--source-prefix",
        "secret/",
        "--pipeline-name",
        "Secret",
        "--recipient-name",
        "vault",
        "--transfer-type",
        "S3",
        "--source-bucket",
        stack.source_bucket,
        "--destination-bucket",
        dst,
        "--destination-prefix",
        "secret/",
        "--approval-required",
    )
    assert put.returncode == 0, put.stderr
    stack.upload("secret/s.csv", b"secret")

    # 3. A folder whose only row is disabled.
    stack.put_route(
        source_prefix="paused/",
        pipeline_name="Paused",
        destination_prefix="paused/",
        enabled=False,
        **s3_route,
    )
    stack.upload("paused/p.csv", b"paused")

    worker = start_worker()
    for prefix in ("filtered/", "secret/", "paused/"):
        stack.upload(prefix + FLAG)

    worker.wait_for(lambda line: line.get("event") == "route_delivered", timeout=60)
    worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", timeout=60)
    worker.wait_for(lambda line: line.get("outcome") == "disabled", timeout=60)

    assert sorted(stack.destination_keys()) == ["filtered/a.csv", "filtered/sub/b.csv"]
    delivered = next(row for row in stack.ledger_rows() if row["pipeline_name"]["S"] == "Filtered")
    assert (delivered["objects"]["N"], delivered["objects_excluded"]["N"]) == ("2", "3")
    disabled = [line for line in worker.events() if line.get("event") == "flag_routes_disabled"]
    assert [line["flag_key"] for line in disabled] == ["paused/" + FLAG]
    _, metrics = worker.get("/metrics")
    assert 'egress_messages_total{outcome="disabled"} 1.0' in metrics
    assert (
        'egress_objects_excluded_total{pipeline="Filtered",recipient="team",transfer_type="S3"} 3.0'
        in metrics
    )

    dlq = stack.dlq_messages(wait=5)
    assert [m["MessageAttributes"]["reason"]["StringValue"] for m in dlq] == ["route_not_approved"]
    assert "egress routes approve secret/ Secret" in dlq[0]["MessageAttributes"]["detail"]["StringValue"]

    refused = _egress(alice, stack, "routes", "approve", "secret/", "Secret")
    assert refused.returncode == 1 and "someone else must approve it" in refused.stderr
    approved = _egress(bob, stack, "routes", "approve", "secret/", "Secret")
    assert approved.returncode == 0, approved.stderr
    redrive = _egress(bob, stack, "dlq", "redrive", "--all")
    assert redrive.returncode == 0 and "route_not_approved" in redrive.stdout, redrive.stderr

    worker.wait_for(lambda line: line.get("event") == "route_delivered", count=2, timeout=60)
    assert "secret/s.csv" in stack.destination_keys()
    assert not stack.dlq_messages(wait=1)
    assert not any(key.startswith("paused/") for key in stack.destination_keys())
