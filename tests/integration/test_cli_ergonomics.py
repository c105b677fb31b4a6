"""The CLI fits the hand: global options anywhere, ``dlq delete`` that asks, ``replay`` that keeps dates."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from egress.aws import AwsClients
from egress.cli import build_parser, main
from egress.ledger import DeliveryKey, Ledger
from egress.ledger_table import create_ledger_table
from egress.messages import parse_body
from egress.routing import create_routes_table
from tests.conftest import REGION

FLAG = "pipeline_success.flag"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def put_row(aws: AwsClients, table: str, **columns: str) -> None:
    aws.dynamodb.put_item(TableName=table, Item={name: {"S": value} for name, value in columns.items()})


def visible_bodies(aws: AwsClients, queue_url: str) -> list[str]:
    messages = aws.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    for message in messages:
        aws.sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return [message["Body"] for message in messages]


# -- global options before or after the subcommand ------------------------------------------


def test_global_options_after_the_subcommand_win_and_need_no_environment(
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("EGRESS_ROUTES_TABLE", raising=False)
    table = f"routes-{unique}"
    create_routes_table(aws.dynamodb, table)
    put_row(aws, table, source_prefix="after/", pipeline_name="After", transfer_type="SFT")

    code, out, err = run(
        capsys, "routes", "list", "--endpoint-url", moto_endpoint, "--region", REGION, "--routes-table", table
    )
    assert code == 0, err
    assert "After" in out and f"1 route(s) in {table}" in out
    # At both places: the one after the subcommand wins (the one before names nothing that answers).
    code, out, err = run(
        capsys,
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--routes-table",
        "no-such-table",
        "routes",
        "list",
        "--endpoint-url",
        moto_endpoint,
        "--routes-table",
        table,
        "--output",
        "json",
    )
    assert code == 0, err
    assert [row["pipeline_name"] for row in json.loads(out)] == ["After"]

    monkeypatch.setenv("EGRESS_LEDGER_TABLE", "from-env")
    parser = build_parser()
    args = parser.parse_args(["--region", "before-1", "dlq", "redrive", "--all", "--region", "after-1"])
    assert args.region == "after-1" and args.ledger_table == "from-env"  # neither given: the environment
    args = parser.parse_args(["dlq", "--ledger-table", "middle", "redrive", "--all"])
    assert args.ledger_table == "middle"
    assert parser.parse_args(["--region", "before-1", "history"]).region == "before-1"


def test_a_subcommands_help_lists_the_global_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "redrive", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--endpoint-url", "--region", "--routes-table", "--ledger-table"))


# -- dlq delete -------------------------------------------------------------------------------


def test_dlq_delete_asks_and_only_yes_deletes(
    aws: AwsClients,
    moto_endpoint: str,
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue_url, dlq_url = queues
    ids = [
        aws.sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=json.dumps({"n": index}),
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": "no_route"},
                "detail": {"DataType": "String", "StringValue": f"no route for message {index}"},
            },
        )["MessageId"]
        for index in range(3)
    ]
    common = ("--endpoint-url", moto_endpoint, "--queue-url", queue_url)

    def delete(message_id: str, answer: str, *extra: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        return run(capsys, "dlq", "delete", "--id", message_id, *common, *extra)

    for answer in ("n\n", "", "sure\n"):  # no, end of input (CI), anything but y/yes
        code, out, _ = delete(ids[0], answer)
        assert code == 1 and "delete this message? [y/N]" in out and "nothing deleted" in out
        assert f"id      {ids[0]}" in out and "no_route" in out and "no route for message 0" in out
    assert len(visible_bodies(aws, dlq_url)) == 3  # refused and looked-at messages were released

    code, out, _ = delete(ids[0], "y\n")
    assert code == 0 and f"deleted {ids[0]}" in out
    code, out, _ = delete(ids[1], "", "--yes")  # no question asked: end of input does not matter
    assert code == 0 and "[y/N]" not in out and f"deleted {ids[1]}" in out
    code, _, err = delete("no-such-id", "y\n")
    assert code == 1 and "no message no-such-id" in err
    assert visible_bodies(aws, dlq_url) == ['{"n": 2}']


# -- replay -----------------------------------------------------------------------------------


@pytest.fixture()
def dated_flag(aws: AwsClients, unique: str) -> dict[str, Any]:
    """A flag in yesterday's folder, two rows dated by placeholders, one delivery in the ledger."""
    yesterday = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    day = yesterday.date().isoformat()
    bucket, routes, ledger_table = f"src-{unique}", f"routes-{unique}", f"ledger-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    aws.s3.put_object(Bucket=bucket, Key=f"daily/{day}/part-0.csv", Body=b"a,b\n")
    aws.s3.put_object(Bucket=bucket, Key=f"daily/{day}/{FLAG}", Body=b"")
    create_routes_table(aws.dynamodb, routes)
    create_ledger_table(aws.dynamodb, ledger_table)
    for pipeline, folder in (("Daily", "daily"), ("Daily#copy", "copy")):
        put_row(
            aws,
            routes,
            source_prefix="daily/$TODAYS_DATE/",
            pipeline_name=pipeline,
            recipient_name="team",
            transfer_type="S3",
            source_bucket=bucket,
            destination_bucket="dst-bucket",
            destination_prefix=f"{folder}/$TODAYS_DATE/",
        )
    key = DeliveryKey(bucket, f"daily/{day}/{FLAG}", "seq:1", "daily/$TODAYS_DATE/", "Daily")
    Ledger(aws.dynamodb, ledger_table, owner="test").begin(
        key, recipient="team", transfer_type="S3", event_time=yesterday
    )
    return {
        "uri": f"s3://{bucket}/daily/{day}/{FLAG}",
        "day": day,
        "when": yesterday,
        "tables": ("--routes-table", routes, "--ledger-table", ledger_table),
    }


def test_replay_dry_run_shows_the_original_dates_and_sends_nothing(
    aws: AwsClients,
    moto_endpoint: str,
    queues: tuple[str, str],
    dated_flag: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue_url, _ = queues
    day = dated_flag["day"]
    code, out, err = run(
        capsys,
        "replay",
        dated_flag["uri"],
        "--dry-run",
        "--queue-url",
        queue_url,
        "--endpoint-url",
        moto_endpoint,
        *dated_flag["tables"],
    )
    assert code == 0, err
    assert f"flag        {dated_flag['uri']}" in out
    assert "from the ledger" in out and day in out.splitlines()[1]
    assert f"Daily  recipient team  S3  ->  s3://dst-bucket/daily/{day}/" in out
    assert f"Daily#copy  recipient team  S3  ->  s3://dst-bucket/copy/{day}/" in out
    assert f"daily/{day}/part-0.csv  ->  copy/{day}/part-0.csv" in out
    # --event-time wins over the ledger; --pipeline narrows what is shown
    code, out, err = run(
        capsys,
        "replay",
        dated_flag["uri"],
        "--dry-run",
        "--event-time",
        f"{day}T01:02:03Z",
        "--pipeline",
        "Daily#copy",
        "--endpoint-url",
        moto_endpoint,
        *dated_flag["tables"],
    )
    assert code == 0, err
    assert f"event time  {day}T01:02:03.000Z (from --event-time)" in out
    assert "Daily#copy" in out and "\nDaily  " not in out
    assert visible_bodies(aws, queue_url) == []


def test_replay_refuses_a_pipeline_that_is_not_a_route_of_the_flag(
    aws: AwsClients,
    moto_endpoint: str,
    queues: tuple[str, str],
    dated_flag: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue_url, _ = queues
    code, _, err = run(
        capsys,
        "replay",
        dated_flag["uri"],
        "--pipeline",
        "Weekly",
        "--queue-url",
        queue_url,
        "--endpoint-url",
        moto_endpoint,
        *dated_flag["tables"],
    )
    assert code == 2
    assert "'Weekly' is not among the routes" in err and "'Daily'" in err and "'Daily#copy'" in err
    assert visible_bodies(aws, queue_url) == []


def test_the_replayed_body_carries_the_pipeline_and_the_original_event_time(
    aws: AwsClients,
    moto_endpoint: str,
    queues: tuple[str, str],
    dated_flag: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue_url, _ = queues
    code, out, err = run(
        capsys,
        "replay",
        dated_flag["uri"],
        "--pipeline",
        "Daily",
        "--queue-url",
        queue_url,
        "--endpoint-url",
        moto_endpoint,
        *dated_flag["tables"],
    )
    assert code == 0, err
    assert "pipeline Daily only" in out and "from the ledger" in out
    (body,) = visible_bodies(aws, queue_url)
    assert json.loads(body)["egress"] == {"pipeline_name": "Daily"}
    (event,) = parse_body(body, flag_name=FLAG)  # type: ignore[misc]
    assert event.only_pipeline == "Daily"
    assert event.event_time == dated_flag["when"]
    assert event.sequencer is not None and event.sequencer.startswith("replay-")
