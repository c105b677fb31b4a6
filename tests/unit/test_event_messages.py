"""Completion events, pure logic: the message's fields and attributes, and the topic settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from egress.delivery import RouteResult
from egress.errors import RetryableError
from egress.events import RouteEvent, delivered_event, failed_event, received_event
from egress.messages import FlagEvent
from egress.routing import Route, RouteMatch
from egress.settings import SettingsError, load_settings
from sft_agent.settings import build_settings

TOPIC = "arn:aws:sns:eu-west-2:123456789012:data-egress-events"
FLAG = FlagEvent(
    bucket="src", key="exports/x/pipeline_success.flag", event_time=datetime(2026, 1, 31, tzinfo=UTC)
)
FIELDS = [
    "type", "outcome", "flag", "source_prefix", "pipeline_name", "recipient_name", "transfer_type",
    "objects", "bytes", "manifest", "reason", "detail", "at",
]  # fmt: skip


def match(transfer_type: str) -> RouteMatch:
    route = Route(
        source_prefix="exports/*",
        pipeline_name="X#sft" if transfer_type == "SFT" else "X",
        recipient_name="team",
        transfer_type=transfer_type,
        destination_bucket="dst" if transfer_type == "S3" else "",
        destination_prefix="out/",
    )
    return RouteMatch(route, (), "exports/", "exports/x/", "out/x/")


def test_the_body_has_exactly_the_designs_fields_in_order() -> None:
    event = delivered_event(
        FLAG,
        RouteResult(match=match("S3"), objects=2, size=10, manifest_name="out/x/m.json", delivery_id="d"),
    )
    body = event.body()
    assert list(body) == FIELDS
    assert body["flag"] == "s3://src/exports/x/pipeline_success.flag"
    assert body["source_prefix"] == "exports/*", "the row's key, as written"
    assert (body["objects"], body["bytes"], body["manifest"]) == (2, 10, "s3://dst/out/x/m.json")
    assert body["detail"] == "2 objects delivered to s3://dst/out/x/"
    assert datetime.fromisoformat(body["at"]).utcoffset() is not None
    assert event.attributes() == {
        "outcome": {"DataType": "String", "StringValue": "delivered"},
        "pipeline_name": {"DataType": "String", "StringValue": "X"},
    }


def test_sft_manifest_is_a_path_under_the_root_and_failures_carry_reason_and_detail() -> None:
    sft = delivered_event(
        FLAG, RouteResult(match=match("SFT"), objects=1, size=1, manifest_name="out/x/m.json")
    )
    assert sft.body()["manifest"] == "out/x/m.json" and sft.body()["transfer_type"] == "SFT"
    failed = failed_event(FLAG, match("SFT"), RetryableError("disk_short", "x" * 5000)).body()
    assert failed["outcome"] == "failed" and failed["reason"] == "disk_short"
    assert failed["objects"] == 0 and failed["manifest"] is None and len(failed["detail"]) == 1000
    received = received_event(
        {
            "flag_bucket": "src",
            "flag_key": "k/f",
            "pipeline_name": "X#sft",
            "transfer_type": "SFT",
            "objects": 3,
        }
    ).body()
    assert received["flag"] == "s3://src/k/f" and received["objects"] == 3 and received["bytes"] == 0
    assert received["reason"] is None and received["manifest"] is None
    empty = RouteEvent(
        outcome="failed", flag="", source_prefix="", pipeline_name="", recipient_name="", transfer_type=""
    )
    assert empty.attributes()["pipeline_name"]["StringValue"], "SNS refuses empty attribute values"


def test_the_topic_settings_of_both_programs() -> None:
    base = {"EGRESS_QUEUE_URL": "https://sqs/q"}
    assert load_settings(environ=base).events_topic_arn is None
    assert load_settings(environ={**base, "EGRESS_EVENTS_TOPIC_ARN": TOPIC}).events_topic_arn == TOPIC
    with pytest.raises(SettingsError, match="EGRESS_EVENTS_TOPIC_ARN='data-egress-events': must be the ARN"):
        load_settings(environ={**base, "EGRESS_EVENTS_TOPIC_ARN": "data-egress-events"})
    document = {
        "routes": [
            {
                "name": "w",
                "source": "/data-egress/w/",
                "actions": [{"copy": {"destination": "/data-egress/archive/"}}],
                "error_folder": "/data-egress/error/w",
                "delete_on_send": True,
            }
        ]
    }
    agent = build_settings(
        document, environ={"SFT_AGENT_LEDGER_TABLE": "ledger", "SFT_AGENT_EVENTS_TOPIC_ARN": TOPIC}
    )
    assert agent.ledger is not None and agent.ledger.events_topic_arn == TOPIC
    with pytest.raises(SettingsError, match="ledger.table"):  # received events need the ledger
        build_settings(document, environ={"SFT_AGENT_EVENTS_TOPIC_ARN": TOPIC})
    with pytest.raises(SettingsError, match="events_topic_arn"):
        build_settings(
            {**document, "ledger": {"table": "ledger", "events_topic_arn": "arn:aws:sqs:x"}}, environ={}
        )
