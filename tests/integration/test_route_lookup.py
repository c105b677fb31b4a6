"""Finding a flag's routes on the moto server: right rows, few requests, whatever the table size."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from egress.aws import AwsClients
from egress.errors import PermanentError
from egress.messages import FlagEvent
from egress.routing import Route, RouteTable, create_routes_table

WHEN = datetime(2026, 11, 22, 7, 8, 9, tzinfo=UTC)
BUCKET = "src-bucket"


def row(prefix: str, pipeline: str, **extra: Any) -> Route:
    return Route.from_plain(
        {
            "source_prefix": prefix,
            "pipeline_name": pipeline,
            "recipient_name": "team",
            "transfer_type": "S3",
            "source_bucket": BUCKET,
            "destination_bucket": "dst-bucket",
            "destination_prefix": "out/",
            **extra,
        }
    )


ROUTED = [
    row("exports/opsmi/", "OpsMI"),
    row("exports/opsmi/", "OpsMI#sft", transfer_type="SFT", destination_bucket="", destination_prefix="w"),
    row("landing/*", "Landing"),
    row("feeds/fin*", "Fin"),
    row("daily/$TODAYS_DATE/", "Daily"),
    row("compact/$TODAYS_YYYYMMDD_FORMATTED_DATE/*", "Compact"),
    row("other/", "Other", source_bucket="another-bucket"),
    row("off/", "Off", enabled=False),
]
FLAGS: dict[str, set[str]] = {
    "exports/opsmi/": {"OpsMI", "OpsMI#sft"},
    "landing/run-1/a/": {"Landing"},
    "landing/": {"Landing"},
    "feeds/finance/2026/": {"Fin"},
    "feeds/fin/": {"Fin"},
    "daily/2026-11-22/": {"Daily"},
    "compact/20261122/x/": {"Compact"},
    "daily/2026-11-21/": set(),
    "exports/": set(),
    "exports/opsmi/sub/": set(),
    "other/": set(),
    "off/": set(),
    "nothing/here/at/all/with/a/rather/long/path/to/make/many/candidates/": set(),
}


def fill(aws: AwsClients, table: str, filler: int) -> None:
    create_routes_table(aws.dynamodb, table)
    rows = ROUTED + [row(f"noise/{i:05d}/", f"P{i % 7}") for i in range(filler)]
    for start in range(0, len(rows), 25):
        aws.dynamodb.batch_write_item(
            RequestItems={table: [{"PutRequest": {"Item": r.to_item()}} for r in rows[start : start + 25]]}
        )


def lookups(aws: AwsClients, table: str, flags: list[str]) -> tuple[dict[str, set[str]], int]:
    calls: list[str] = []
    aws.dynamodb.meta.events.register("before-send.dynamodb", lambda request, **_: calls.append(request.url))
    routes = RouteTable(aws.dynamodb, table, cache_seconds=30)
    found: dict[str, set[str]] = {}
    for prefix in flags:
        event = FlagEvent(bucket=BUCKET, key=prefix + "pipeline_success.flag", event_time=WHEN)
        try:
            found[prefix] = {match.route.pipeline_name for match in routes.find(event)}
        except PermanentError as exc:
            assert exc.reason == "no_route"
            found[prefix] = set()
    return found, len(calls)


# A keyed lookup makes as many requests at 2,000 rows as at 50 (moto converts every
# item of the table for each statement, so a bigger table only makes the test slower).
@pytest.mark.parametrize("filler", [42, 1992])
def test_routes_found_with_few_requests_whatever_the_table_size(
    aws: AwsClients, unique: str, filler: int
) -> None:
    table = f"routes-{unique}"
    fill(aws, table, filler)
    assert aws.dynamodb.describe_table(TableName=table)["Table"]["ItemCount"] in (0, filler + len(ROUTED))
    # 50 flags: each prefix above, repeated as producers would, in a stable order
    flags = [prefix for _ in range(4) for prefix in FLAGS][:50]
    found, requests = lookups(aws, table, flags)
    assert found == {prefix: FLAGS[prefix] for prefix in set(flags)}
    per_flag = requests / len(flags)
    print(
        f"\n{filler + len(ROUTED)} rows: {requests} DynamoDB requests for {len(flags)} flags = {per_flag:.2f} per flag"
    )
    assert per_flag <= 3
    # with no cache help at all (every flag distinct, fresh cache): bounded by key length, not table size
    _, cold = lookups(aws, table, list(FLAGS))
    print(
        f"{filler + len(ROUTED)} rows, cold cache: {cold} requests for {len(FLAGS)} distinct flags = {cold / len(FLAGS):.2f} per flag"
    )
    assert cold / len(FLAGS) <= 3
    _, one = lookups(aws, table, ["exports/opsmi/"])
    assert one == 1


def test_no_route_detail_names_the_other_bucket(aws: AwsClients, unique: str) -> None:
    table = f"routes-{unique}"
    fill(aws, table, 0)
    routes = RouteTable(aws.dynamodb, table)
    with pytest.raises(PermanentError) as raised:
        routes.find(FlagEvent(bucket=BUCKET, key="other/pipeline_success.flag", event_time=WHEN))
    assert "another-bucket" in raised.value.detail


def test_an_edited_row_applies_after_the_cache_period(aws: AwsClients, unique: str) -> None:
    table = f"routes-{unique}"
    fill(aws, table, 0)
    now = [1000.0]
    routes = RouteTable(aws.dynamodb, table, cache_seconds=30, clock=lambda: now[0])
    event = FlagEvent(bucket=BUCKET, key="exports/opsmi/pipeline_success.flag", event_time=WHEN)
    assert {m.route.destination_prefix for m in routes.find(event)} == {"out/", "w"}
    aws.dynamodb.put_item(
        TableName=table, Item=row("exports/opsmi/", "OpsMI", destination_prefix="new/").to_item()
    )
    now[0] += 10
    assert "new/" not in {m.route.destination_prefix for m in routes.find(event)}
    now[0] += 25
    assert "new/" in {m.route.destination_prefix for m in routes.find(event)}


def test_invalid_rows_come_back_with_their_problems(aws: AwsClients, unique: str) -> None:
    table = f"routes-{unique}"
    create_routes_table(aws.dynamodb, table)
    aws.dynamodb.put_item(TableName=table, Item=row("bad/", "Broken", destination_bucket="").to_item())
    (match,) = RouteTable(aws.dynamodb, table).find(
        FlagEvent(bucket=BUCKET, key="bad/pipeline_success.flag", event_time=WHEN)
    )
    assert any("destination_bucket is required" in problem for problem in match.problems)
