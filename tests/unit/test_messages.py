"""Parsing SQS bodies into flag events: every accepted shape, every way to be wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.messages import FlagEvent, Ignored, MalformedMessage, parse_body

FLAG = "pipeline_success.flag"


def s3_body(key: str, *, bucket: str = "src", encoded: bool = True, name: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventTime": "2026-11-22T10:11:12.345Z",
                    "eventName": name,
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {
                            "key": quote_plus(key, safe="/") if encoded else key,
                            "size": 0,
                            "sequencer": "0055AED6DCD90281E5",
                        },
                    },
                }
            ]
        }
    )


def test_s3_notification_gives_the_flag_event() -> None:
    events = parse_body(s3_body(f"exports/opsmi/{FLAG}"), flag_name=FLAG)
    assert events == [
        FlagEvent(
            bucket="src",
            key=f"exports/opsmi/{FLAG}",
            event_time=datetime(2026, 11, 22, 10, 11, 12, 345000, tzinfo=UTC),
            sequencer="0055AED6DCD90281E5",
            size=0,
        )
    ]
    assert events[0].prefix == "exports/opsmi/"


def test_plus_is_a_space_and_percent_escapes_decode() -> None:
    body = s3_body("x", encoded=False).replace('"x"', '"a+b/r%C3%A9sum%C3%A9%2F' + FLAG + '"')
    (event,) = parse_body(body, flag_name=FLAG)  # type: ignore[misc]
    assert event.key == f"a b/résumé/{FLAG}"


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
            min_size=1,
            max_size=12,
        ),
        min_size=0,
        max_size=4,
    )
)
def test_any_folder_names_round_trip_through_url_encoding(folders: list[str]) -> None:
    key = "/".join([*folders, FLAG])
    result = parse_body(s3_body(key), flag_name=FLAG)
    assert isinstance(result, list)
    assert result[0].key == key
    assert result[0].prefix == "".join(f"{folder}/" for folder in folders)


def test_moto_style_encoded_slashes_decode() -> None:
    body = s3_body("x", encoded=False).replace('"x"', f'"a%2Fb%2F{FLAG}"')
    (event,) = parse_body(body, flag_name=FLAG)  # type: ignore[misc]
    assert event.key == f"a/b/{FLAG}"


def test_sns_envelope_is_unwrapped() -> None:
    envelope = json.dumps({"Type": "Notification", "MessageId": "m", "Message": s3_body(f"p/{FLAG}")})
    (event,) = parse_body(envelope, flag_name=FLAG)  # type: ignore[misc]
    assert event.key == f"p/{FLAG}"


def test_eventbridge_object_created_keys_are_not_decoded() -> None:
    body = json.dumps(
        {
            "version": "0",
            "source": "aws.s3",
            "detail-type": "Object Created",
            "time": "2026-11-22T00:00:01Z",
            "detail": {
                "bucket": {"name": "src"},
                "object": {"key": f"a+b/%41/{FLAG}", "size": 0, "sequencer": "abc", "version-id": "v1"},
            },
        }
    )
    (event,) = parse_body(body, flag_name=FLAG)  # type: ignore[misc]
    assert event.key == f"a+b/%41/{FLAG}"
    assert event.sequencer == "abc" and event.version_id == "v1"


def test_test_event_and_non_flag_keys_are_ignored() -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "src"})
    assert isinstance(parse_body(test_event, flag_name=FLAG), Ignored)
    ignored = parse_body(s3_body("exports/opsmi/data.csv"), flag_name=FLAG)
    assert isinstance(ignored, Ignored) and "data.csv" in ignored.why
    # a key that merely ends with the flag name is not the flag
    assert isinstance(parse_body(s3_body(f"exports/x{FLAG}"), flag_name=FLAG), Ignored)


def test_configurable_flag_name() -> None:
    assert isinstance(parse_body(s3_body(f"p/{FLAG}"), flag_name="_SUCCESS"), Ignored)
    assert isinstance(parse_body(s3_body("p/_SUCCESS"), flag_name="_SUCCESS"), list)


def test_delete_events_are_ignored() -> None:
    assert isinstance(parse_body(s3_body(f"p/{FLAG}", name="ObjectRemoved:Delete"), flag_name=FLAG), Ignored)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("", "not JSON"),
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "neither"),
        ('{"Records": []}', "Records is empty"),
        ('{"Records": "x"}', "Records is empty or not a list"),
        ('{"Records": [42]}', "Records[0] is not an object"),
        ('{"Records": [{"s3": {}}]}', "bucket/object missing"),
        ('{"Records": [{"s3": {"bucket": {}, "object": {"key": "k"}}}]}', "bucket.name"),
        (
            '{"Records": [{"eventTime": "2026-01-01T00:00:00Z", "s3": {"bucket": {"name": "b"}, "object": {}}}]}',
            "object.key",
        ),
        (
            '{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "p/pipeline_success.flag"}}}]}',
            "event time missing",
        ),
        (
            '{"Records": [{"eventTime": "yesterday", "s3": {"bucket": {"name": "b"}, '
            '"object": {"key": "p/pipeline_success.flag"}}}]}',
            "not ISO 8601",
        ),
        ('{"Type": "Notification", "Message": {"a": 1}}', "Message is not a string"),
        ('{"Type": "Notification", "Message": "nope"}', "not JSON"),
        ('{"source": "aws.s3", "detail": "x"}', "without detail"),
        ('{"source": "aws.s3", "detail": {"bucket": {"name": "b"}}}', "bucket/object missing"),
    ],
)
def test_malformed_bodies_name_the_problem(body: str, fragment: str) -> None:
    with pytest.raises(MalformedMessage, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_body(body, flag_name=FLAG)


# -- hostile bodies: refused as malformed, never another exception ------------------------


def test_a_body_of_100000_open_brackets_is_malformed_not_a_recursion_error() -> None:
    with pytest.raises(MalformedMessage, match="nests JSON deeper than 32 levels"):
        parse_body("[" * 100_000, flag_name=FLAG)
    with pytest.raises(MalformedMessage, match="nests JSON deeper than 32 levels"):
        parse_body('{"Records": ' + "[" * 100_000, flag_name=FLAG)


def test_valid_json_nested_below_the_recursion_limit_but_too_deep_is_malformed() -> None:
    body = '{"Records": [' + '{"a": ' * 500 + "1" + "}" * 500 + "]}"
    with pytest.raises(MalformedMessage, match="nests JSON deeper than 32 levels"):
        parse_body(body, flag_name=FLAG)


def test_a_body_over_the_sqs_limit_is_malformed_with_its_size() -> None:
    event = json.loads(s3_body(f"p/{FLAG}"))
    event["padding"] = "x" * (300 * 1024)
    body = json.dumps(event)
    with pytest.raises(MalformedMessage, match=rf"body is {len(body)} bytes, over the 262144-byte limit"):
        parse_body(body, flag_name=FLAG)
    # Counted in UTF-8 bytes, not characters: 100,000 '€' are 300,000 bytes.
    with pytest.raises(MalformedMessage, match="body is 300000 bytes"):
        parse_body("€" * 100_000, flag_name=FLAG)


def test_deep_nesting_inside_an_sns_envelope_is_malformed() -> None:
    for inner in ("[" * 100_000, '{"Records": [' + "[" * 40 + "]" * 40 + "]}"):
        envelope = json.dumps({"Type": "Notification", "MessageId": "m", "Message": inner})
        with pytest.raises(MalformedMessage, match="SNS envelope Message nests JSON deeper than 32 levels"):
            parse_body(envelope, flag_name=FLAG)
    twice = json.dumps(
        {"Type": "Notification", "Message": json.dumps({"Type": "Notification", "Message": "{}"})}
    )
    with pytest.raises(MalformedMessage, match="itself an SNS envelope"):
        parse_body(twice, flag_name=FLAG)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"Records": "\xff"}', "not valid UTF-8"),
        ('{"Records": []}\ud800', "lone surrogate"),
        (
            '{"Records": [{"eventTime": "2026-01-01T00:00:00Z", "s3": {"bucket": {"name": "b\\ud800"}, '
            '"object": {"key": "p/pipeline_success.flag"}}}]}',
            "bucket.name is not valid Unicode",
        ),
        (
            '{"Records": [{"eventTime": "2026-01-01T00:00:00Z", "s3": {"bucket": {"name": "b"}, '
            '"object": {"key": "p%FF/pipeline_success.flag"}}}]}',
            "not UTF-8",
        ),
        (
            '{"Records": [{"eventTime": "0001-01-01T00:00:00+01:00", "s3": {"bucket": {"name": "b"}, '
            '"object": {"key": "p/pipeline_success.flag"}}}]}',
            "not ISO 8601",
        ),
        (
            '{"Records": [{"eventTime": 7, "s3": {"bucket": {"name": "b"}, '
            '"object": {"key": "p/pipeline_success.flag"}}}]}',
            "event time missing",
        ),
        ('{"Records": [{"s3": {"bucket": {"name": ["b"]}, "object": {"key": "k"}}}]}', "bucket.name"),
        ('{"Records": [{"s3": {"bucket": "b", "object": "k"}}]}', "bucket/object missing"),
        ('{"Records": {"0": {}}}', "Records is empty or not a list"),
        ("1" * 5000, "not JSON"),
        ('"just a string"', "not a JSON object"),
        ("null", "not a JSON object"),
    ],
)
def test_undecodable_and_mistyped_bodies_are_malformed(body: str | bytes, fragment: str) -> None:
    with pytest.raises(MalformedMessage, match=fragment):
        parse_body(body, flag_name=FLAG)


def test_wrong_types_in_optional_fields_are_ignored_not_trusted() -> None:
    event = json.loads(s3_body(f"p/{FLAG}"))
    event["Records"][0]["s3"]["object"].update(size=True, sequencer=5, versionId=["v"])
    (parsed,) = parse_body(json.dumps(event), flag_name=FLAG)  # type: ignore[misc]
    assert parsed.size is None and parsed.sequencer is None and parsed.version_id is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=40,
)
_shapes = st.fixed_dictionaries(
    {},
    optional={
        "Records": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "eventName": _json_values,
                    "eventTime": _json_values | st.just("2026-01-01T00:00:00Z"),
                    "s3": st.fixed_dictionaries({}, optional={"bucket": _json_values, "object": _json_values})
                    | _json_values,
                },
            )
            | _json_values,
            max_size=3,
        )
        | _json_values,
        "Type": st.just("Notification") | _json_values,
        "Message": st.text(max_size=50) | _json_values,
        "source": st.just("aws.s3") | _json_values,
        "detail": _json_values,
        "Event": _json_values,
    },
)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), _shapes.map(json.dumps)))
def test_no_body_raises_anything_but_malformed_message(body: str | bytes) -> None:
    try:
        result = parse_body(body, flag_name=FLAG)
    except MalformedMessage:
        return
    assert isinstance(result, Ignored | list)


def test_a_replay_for_one_pipeline_carries_it_on_every_flag_event() -> None:
    body = json.loads(s3_body(f"exports/opsmi/{FLAG}"))
    body["egress"] = {"pipeline_name": "OpsMI#sft"}
    (event,) = parse_body(json.dumps(body), flag_name=FLAG)  # type: ignore[misc]
    assert event.only_pipeline == "OpsMI#sft" and event.key == f"exports/opsmi/{FLAG}"
    (plain,) = parse_body(s3_body(f"exports/opsmi/{FLAG}"), flag_name=FLAG)  # type: ignore[misc]
    assert plain.only_pipeline is None


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ("OpsMI", "egress is not an object"),
        ({}, "egress.pipeline_name missing"),
        ({"pipeline_name": 3}, "egress.pipeline_name missing"),
        ({"pipeline_name": "OpsMI", "pipelines": ["x"]}, "unknown keys: pipelines"),
    ],
)
def test_a_mistaken_egress_key_is_malformed_never_delivered_to_every_route(
    options: object, fragment: str
) -> None:
    body = json.loads(s3_body(f"exports/opsmi/{FLAG}"))
    body["egress"] = options
    with pytest.raises(MalformedMessage, match=fragment):
        parse_body(json.dumps(body), flag_name=FLAG)
