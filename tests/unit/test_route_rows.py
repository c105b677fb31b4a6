"""Route rows: validation, placeholders, candidate keys, matching and destination names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.errors import PermanentError
from egress.kernel.placeholders import resolve_placeholders
from egress.plan import destination_name, plan_route
from egress.routing import Route, candidate_keys, match_route, placeholder_variants
from egress.sources import SourceObject

WHEN = datetime(2026, 11, 22, 7, 8, 9, tzinfo=UTC)
GOOD_S3 = {
    "source_prefix": "exports/opsmi/",
    "pipeline_name": "OpsMI",
    "recipient_name": "warehouse",
    "transfer_type": "S3",
    "source_bucket": "src-bucket",
    "destination_bucket": "dst-bucket",
    "destination_prefix": "opsmi/",
}


def route(**changes: object) -> Route:
    return Route.from_plain({**GOOD_S3, **changes})


def test_a_good_row_has_no_problems() -> None:
    assert route().problems() == []
    assert (
        route(transfer_type="SFT", destination_bucket=None, destination_prefix="warehouse").problems() == []
    )


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"transfer_type": "FTP"}, "transfer_type must be S3 or SFT"),
        ({"destination_bucket": None}, "destination_bucket is required"),
        ({"destination_bucket": "Bad_Bucket"}, "destination_bucket 'Bad_Bucket'"),
        ({"source_bucket": None}, "source_bucket is required"),
        ({"recipient_name": None}, "recipient_name is required"),
        ({"source_prefix": "a/*/b/"}, "'*' may only be the last"),
        ({"destination_prefix": "$YESTERDAY/"}, "unknown placeholder $YESTERDAY"),
        ({"compress": True, "compress_fmt": "rar"}, "compress_fmt must be gz or zstd"),
        ({"compress_fmt": "gz"}, "compress is not true"),
        ({"role_arn": "arn:aws:iam::12:role/x"}, "role_arn"),
        ({"destination_kms_key_id": "my key"}, "destination_kms_key_id"),
        ({"manifest_file_name": "../m.json"}, "manifest_file_name"),
        ({"decrypt": "yes"}, "decrypt must be a boolean"),
        ({"include": ["!*.csv"]}, "negations and comments are not taken"),
        ({"exclude": [" x"]}, "surrounding spaces"),
        ({"exclude": ["a\\"]}, "not a valid glob"),
        ({"include": [3]}, "include must be a list of glob patterns"),
        ({"rewrap_datakey": "maybe"}, "rewrap_datakey must be a boolean"),
        ({"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": "../etc"}, "'..'"),
        (
            {"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": "/etc"},
            "not under the SFT root /data-egress",
        ),
        (
            {"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": "/data-egressX/a"},
            "not under the SFT root",
        ),
        (
            {"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": "/data-egress/"},
            "is the SFT root itself",
        ),
        (
            {"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": "/data-egress/a/../b"},
            "'..'",
        ),
        (
            {"transfer_type": "SFT", "destination_bucket": None, "destination_prefix": ""},
            "is required for SFT",
        ),
        ({"transfer_type": "SFT", "destination_prefix": "w"}, "destination_bucket does not apply"),
    ],
)
def test_each_problem_names_its_column(changes: dict[str, object], fragment: str) -> None:
    problems = route(**changes).problems()
    assert any(fragment in problem for problem in problems), problems


def test_string_booleans_from_the_old_system_are_accepted() -> None:
    assert route(decrypt="true", enabled="false").decrypt is True
    assert route(enabled="false").enabled is False
    assert route().enabled is True


def test_item_round_trip() -> None:
    row = route(decrypt=True, compress=True, compress_fmt="zstd", manifest_file_name="m.json")
    assert Route.from_item(row.to_item()) == row


def test_placeholders_resolve_from_the_event_time() -> None:
    assert resolve_placeholders("a/$TODAYS_DATE/", WHEN) == "a/2026-11-22/"
    assert resolve_placeholders("$TODAYS_YYYYMMDD_FORMATTED_DATE", WHEN) == "20261122"
    assert resolve_placeholders("x_$TODAYS_YYYYMMDD_HHMMSS_FORMATTED_DATE", WHEN) == "x_20261122_070809"


def test_placeholder_variants() -> None:
    variants = placeholder_variants("d/2026-11-22/20261122/", WHEN)
    assert "d/$TODAYS_DATE/$TODAYS_YYYYMMDD_FORMATTED_DATE/" in variants
    assert "d/2026-11-22/20261122/" in variants


@given(
    folders=st.lists(st.text(alphabet="ab-_.2026112 ", min_size=1, max_size=6), min_size=1, max_size=4),
    cut=st.integers(min_value=0, max_value=40),
    dated=st.booleans(),
)
def test_a_matching_rows_key_is_always_among_the_candidates(
    folders: list[str], cut: int, dated: bool
) -> None:
    if dated:
        folders = [*folders[:1], WHEN.strftime("%Y-%m-%d"), *folders[1:]]
    flag_prefix = "".join(f"{folder}/" for folder in folders)
    candidates = set(candidate_keys(flag_prefix, WHEN))
    # an exact row, a wildcard row cut anywhere, and the same written with a placeholder
    rows = [flag_prefix, flag_prefix[: min(cut, len(flag_prefix))] + "*"]
    if dated:
        rows += [row.replace("2026-11-22", "$TODAYS_DATE") for row in rows]
    for key in rows:
        assert match_route(route(source_prefix=key), flag_prefix=flag_prefix, when=WHEN) is not None
        assert key in candidates


def test_matching_rules() -> None:
    assert match_route(route(source_prefix="a/b/"), flag_prefix="a/b/", when=WHEN)
    assert match_route(route(source_prefix="a/b/"), flag_prefix="a/b/c/", when=WHEN) is None
    assert match_route(route(source_prefix="a/*"), flag_prefix="a/b/c/", when=WHEN)
    assert match_route(route(source_prefix="a/b*"), flag_prefix="a/bc/", when=WHEN)
    assert match_route(route(source_prefix="a/b*"), flag_prefix="a/x/", when=WHEN) is None
    dated = match_route(route(source_prefix="a/$TODAYS_DATE/"), flag_prefix="a/2026-11-22/", when=WHEN)
    assert dated is not None and dated.resolved_source_prefix == "a/2026-11-22/"
    assert match_route(route(source_prefix="a/$TODAYS_DATE/"), flag_prefix="a/2026-11-21/", when=WHEN) is None


def name(row: Route, key: str, flag_prefix: str) -> str:
    match = match_route(row, flag_prefix=flag_prefix, when=WHEN)
    assert match is not None
    return destination_name(match, key, event_time=WHEN)


def test_destination_names_keep_relative_paths() -> None:
    assert name(route(), "exports/opsmi/a/b/part-0", "exports/opsmi/") == "opsmi/a/b/part-0"
    wildcard = route(source_prefix="exports/*")
    assert name(wildcard, "exports/run-1/x/part-0", "exports/run-1/") == "opsmi/run-1/x/part-0"
    assert name(wildcard, "exports/run-1/y/part-0", "exports/run-1/") == "opsmi/run-1/y/part-0"
    sft = route(transfer_type="SFT", destination_bucket=None, destination_prefix="/warehouse/")
    assert name(sft, "exports/opsmi/a b/ré+sumé.csv", "exports/opsmi/") == "warehouse/a b/ré+sumé.csv"


def test_destination_name_transforms() -> None:
    assert name(route(decrypt=True), "exports/opsmi/d.csv.enc", "exports/opsmi/") == "opsmi/d.csv"
    assert name(route(decrypt=False), "exports/opsmi/d.csv.enc", "exports/opsmi/") == "opsmi/d.csv.enc"
    assert name(route(compress=True), "exports/opsmi/d.csv", "exports/opsmi/") == "opsmi/d.csv.gz"
    assert (
        name(
            route(compress=True, compress_fmt="zstd", decrypt=True),
            "exports/opsmi/d.csv.enc",
            "exports/opsmi/",
        )
        == "opsmi/d.csv.zst"
    )
    assert (
        name(route(timestamp_files=True), "exports/opsmi/s/d.csv", "exports/opsmi/")
        == "opsmi/s/d.20261122.csv"
    )
    dated = route(destination_prefix="out/$TODAYS_YYYYMMDD_FORMATTED_DATE/")
    assert name(dated, "exports/opsmi/d.csv", "exports/opsmi/") == "out/20261122/d.csv"


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "a/../../b", "a\\b", "a/.hidden", "x\x01y", "a/b.part", "a//b"]
)
def test_sft_names_that_would_escape_or_hide_are_refused(key: str) -> None:
    sft = route(transfer_type="SFT", destination_bucket=None, destination_prefix="w")
    with pytest.raises(PermanentError) as raised:
        name(sft, "exports/opsmi/" + key, "exports/opsmi/")
    assert raised.value.reason == "unsafe_key"


def test_two_objects_on_one_name_are_refused_before_anything_moves() -> None:
    match = match_route(route(decrypt=True), flag_prefix="exports/opsmi/", when=WHEN)
    assert match is not None
    objects = [
        SourceObject("src-bucket", "exports/opsmi/a.csv", 1),
        SourceObject("src-bucket", "exports/opsmi/a.csv.enc", 1),
    ]
    with pytest.raises(PermanentError) as raised:
        list(plan_route(match, objects, event_time=WHEN))
    assert raised.value.reason == "name_collision"


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("exports/opsmi/x.tmp", "treats it as unfinished"),
        ("exports/opsmi/x~", "treats it as unfinished"),
        ("exports/opsmi/" + "n" * 300, "longer than 255 bytes"),
        ("exports/opsmi/bad\udcff.csv", "not valid Unicode"),
        ("exports/opsmi/tab\there", "control character"),
    ],
)
def test_the_plan_refuses_what_the_sft_writer_would_refuse_before_any_byte_moves(
    key: str, fragment: str
) -> None:
    """One check: a route is never half delivered because one name fails at write time."""
    sft = route(transfer_type="SFT", destination_bucket=None, destination_prefix="warehouse")
    match = match_route(sft, flag_prefix="exports/opsmi/", when=WHEN)
    assert match is not None
    objects = [SourceObject("src-bucket", "exports/opsmi/fine.csv", 1), SourceObject("src-bucket", key, 1)]
    with pytest.raises(PermanentError, match=fragment):
        list(plan_route(match, objects, event_time=WHEN))


def test_every_name_the_plan_accepts_the_sft_writer_accepts(tmp_path: Path) -> None:
    from egress.destinations.sft import SftDestination

    sft = route(transfer_type="SFT", destination_bucket=None, destination_prefix="warehouse")
    match = match_route(sft, flag_prefix="exports/opsmi/", when=WHEN)
    assert match is not None
    writer = SftDestination(tmp_path, fsync=False)
    for leaf in ("a.csv", "ü €.txt", "x.tmp.csv", "n" * 255, "deep/er/file"):
        name = destination_name(match, "exports/opsmi/" + leaf, event_time=WHEN)
        writer.write(name, iter([b"x"]))


def test_an_s3_key_over_1024_bytes_is_refused_by_the_plan() -> None:
    match = match_route(route(), flag_prefix="exports/opsmi/", when=WHEN)
    assert match is not None
    with pytest.raises(PermanentError, match="longer than 1024 bytes"):
        destination_name(match, "exports/opsmi/" + "k/" * 520, event_time=WHEN)


def test_manifests_of_wildcard_rows_go_to_the_flags_own_folder() -> None:
    from egress.plan import manifest_name

    row = route(source_prefix="landing/*", destination_prefix="out/", manifest_file_name="manifest.json")
    first = match_route(row, flag_prefix="landing/run-1/", when=WHEN)
    second = match_route(row, flag_prefix="landing/run-2/deeper/", when=WHEN)
    assert first is not None and second is not None
    assert manifest_name(first) == "out/run-1/manifest.json"
    assert manifest_name(second) == "out/run-2/deeper/manifest.json"
    sft = route(
        source_prefix="landing/*",
        transfer_type="SFT",
        destination_bucket=None,
        destination_prefix="team",
        manifest_file_name="manifest.json",
    )
    match = match_route(sft, flag_prefix="landing/run-1/", when=WHEN)
    assert match is not None and manifest_name(match) == "team/run-1/manifest.json"


def test_names_of_a_large_folder_are_checked_keeping_only_digests() -> None:
    from egress.plan import check_names, name_items

    match = match_route(route(decrypt=True), flag_prefix="exports/opsmi/", when=WHEN)
    assert match is not None
    objects = [
        SourceObject("src-bucket", f"exports/opsmi/d{i // 100}/part-{i:05d}.csv", 1) for i in range(2500)
    ]
    assert check_names(match, objects, event_time=WHEN) == 2500
    assert [item.destination_name for item in name_items(match, objects[:2], event_time=WHEN)] == [
        "opsmi/d0/part-00000.csv",
        "opsmi/d0/part-00001.csv",
    ]
    # 'x.csv' and 'x.csv.enc' both become 'x.csv' when decrypted: refused before any byte moves.
    clash = [*objects, SourceObject("src-bucket", "exports/opsmi/d3/part-00300.csv.enc", 1)]
    with pytest.raises(PermanentError, match="the name of another object"):
        check_names(match, clash, event_time=WHEN)
    with pytest.raises(PermanentError, match="treats it as unfinished"):
        sft = route(transfer_type="SFT", destination_bucket=None, destination_prefix="w")
        sft_match = match_route(sft, flag_prefix="exports/opsmi/", when=WHEN)
        assert sft_match is not None
        check_names(
            sft_match, [*objects, SourceObject("src-bucket", "exports/opsmi/late.tmp", 1)], event_time=WHEN
        )
