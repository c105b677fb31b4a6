"""The embedded moto answers a routes lookup from the routes table alone, as DynamoDB does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends

from egress.aws import AwsClients
from egress.emulator import _ONE_TABLE
from egress.messages import FlagEvent
from egress.routing import Route, RouteTable, create_routes_table
from tests.conftest import REGION

WHEN = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


@pytest.fixture()
def poisoned_table(aws: AwsClients, unique: str) -> Iterator[str]:
    """Another table on the server whose items cannot be read: any statement converting them fails."""
    name = f"ledger-{unique}"
    create_routes_table(aws.dynamodb, name)
    aws.dynamodb.put_item(
        TableName=name, Item={"source_prefix": {"S": "elsewhere/"}, "pipeline_name": {"S": "p"}}
    )
    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].tables[name]

    def unreadable(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{name} was read for a statement on another table")

    table.all_items = unreadable
    yield name


def test_a_routes_lookup_reads_the_routes_table_only(
    aws: AwsClients, unique: str, poisoned_table: str
) -> None:
    table = f"routes-{unique}"
    create_routes_table(aws.dynamodb, table)
    for prefix, pipeline in (("exports/a/", "A"), ("exports/a/", "A2"), ("exports/b/", "B")):
        route = Route.from_plain(
            {
                "source_prefix": prefix,
                "pipeline_name": pipeline,
                "recipient_name": "team",
                "transfer_type": "S3",
                "source_bucket": "src",
                "destination_bucket": "dst",
                "destination_prefix": "out/",
            }
        )
        aws.dynamodb.put_item(TableName=table, Item=route.to_item())
    routes = RouteTable(aws.dynamodb, table, cache_seconds=0)
    found = routes.find(FlagEvent(bucket="src", key="exports/a/pipeline_success.flag", event_time=WHEN))
    assert sorted(match.route.pipeline_name for match in found) == ["A", "A2"]


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ('SELECT * FROM "routes" WHERE source_prefix = ? OR source_prefix = ?', "routes"),
        ('select * from "routes"', "routes"),
        ('SELECT a, b FROM "routes"."by_pipeline" WHERE pipeline_name = ?', "routes"),
        # anything else is left to moto as it is
        ('SELECT * FROM "routes" WHERE source_prefix = \'x"y\'', None),
        ("INSERT INTO \"routes\" VALUE {'source_prefix': ?}", None),
        ('UPDATE "routes" SET a = ? WHERE source_prefix = ?', None),
        ('SELECT * FROM "a" WHERE x IN (SELECT y FROM "b")', None),
    ],
)
def test_only_a_one_table_select_is_narrowed(statement: str, table: str | None) -> None:
    match = _ONE_TABLE.fullmatch(statement)
    assert (match.group(1) if match else None) == table
