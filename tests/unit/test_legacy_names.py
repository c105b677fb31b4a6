"""The replaced system's rows: every column loads, and names come out as that system formed them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from egress.errors import PermanentError
from egress.plan import (
    control_file_body,
    control_file_name,
    destination_name,
    manifest_name,
    timestamped_name,
)
from egress.route_columns import ssm_parameter_problem
from egress.routing import Route, RouteMatch, match_route
from tests.support import legacy_rows

WHEN = datetime(2024, 1, 31, 23, 59, 58, tzinfo=UTC)
STAMP = "20240131"


def matched(row: dict[str, Any], flag_prefix: str, *, sft_root: Path = Path("/data-egress")) -> RouteMatch:
    match = match_route(Route.from_plain(row), flag_prefix=flag_prefix, when=WHEN, sft_root=sft_root)
    assert match is not None, (row["source_prefix"], flag_prefix)
    return match


# -- timestamp_files (DESIGN §12) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x.json.gz.enc", f"x.json.{STAMP}.gz.enc"),
        ("db.core.claimant.json.gz.enc", f"db.core.claimant.json.{STAMP}.gz.enc"),
        ("data.csv", f"data.{STAMP}.csv"),
        ("data.csv.gz", f"data.{STAMP}.csv.gz"),
        ("filename1.filename2.ex1.ex2", f"filename1.filename2.{STAMP}.ex1.ex2"),
        # no extension of 1-3 characters at the end: the date is appended
        ("report", f"report.{STAMP}"),
        ("data.json", f"data.json.{STAMP}"),
        ("archive.tar.zstd", f"archive.tar.zstd.{STAMP}"),
        ("a.b.c", f"a.{STAMP}.b.c"),
        # an extension of 1-3 characters is anything but a dot
        ("v.1-2", f"v.{STAMP}.1-2"),
        # folders are left alone, dots in them too
        ("dir.d/sub.x/file", f"dir.d/sub.x/file.{STAMP}"),
        ("run-1/a/part-0.csv", f"run-1/a/part-0.{STAMP}.csv"),
        # a hidden name's leading dot is not an extension
        (".gz", f".gz.{STAMP}"),
        (".hidden.gz", f".hidden.{STAMP}.gz"),
        ("f/.env", f"f/.env.{STAMP}"),
        ("name.", f"name..{STAMP}"),
    ],
)
def test_timestamped_names(name: str, expected: str) -> None:
    assert timestamped_name(name, WHEN) == expected


@pytest.mark.parametrize(
    ("key", "changes", "expected"),
    [
        ("db.core.claimant.json.gz.enc", {"decrypt": True}, f"db.core.claimant.json.{STAMP}.gz"),
        ("db.core.claimant.json.gz.enc", {"decrypt": False}, f"db.core.claimant.json.{STAMP}.gz.enc"),
        ("x.csv.enc", {"decrypt": True}, f"x.{STAMP}.csv"),
        ("x.json.enc", {"decrypt": True}, f"x.json.{STAMP}"),
        ("x.enc", {"decrypt": True}, f"x.{STAMP}"),
        ("x.json", {"compress": True}, f"x.json.{STAMP}.gz"),
        ("x.csv.enc", {"decrypt": True, "compress": True, "compress_fmt": "zstd"}, f"x.{STAMP}.csv.zst"),
    ],
)
def test_timestamped_destination_names(key: str, changes: dict[str, Any], expected: str) -> None:
    row = {**legacy_rows.opsmi(), "timestamp_files": True, **changes}
    assert destination_name(matched(row, "opsmi/"), f"opsmi/{key}", event_time=WHEN) == expected


# -- destinations as the replaced system wrote them ---------------------------------------------


def test_opsmi_slash_is_the_bucket_root() -> None:
    match = matched(legacy_rows.opsmi(), "opsmi/")
    assert match.problems == () and match.destination_prefix == ""
    assert destination_name(match, "opsmi/report.csv.enc", event_time=WHEN) == "report.csv"
    assert destination_name(match, "opsmi/sub/report.csv", event_time=WHEN) == "sub/report.csv"


@pytest.mark.parametrize(
    ("prefix", "resolved"),
    [("/", ""), ("/x/", "x/"), ("x/", "x/"), ("//x/", "x/"), ("/out/$TODAYS_DATE/", "out/2024-01-31/")],
)
def test_s3_prefixes_drop_their_leading_slash(prefix: str, resolved: str) -> None:
    match = matched({**legacy_rows.opsmi(), "destination_prefix": prefix}, "opsmi/")
    assert match.problems == () and match.destination_prefix == resolved


def test_cbol_dated_prefix_resolves_from_the_event_time() -> None:
    match = matched(legacy_rows.cbol(), "dataegress/cbol-report/2024-01-31/")
    assert match.problems == () and match.destination_prefix == "cbol/2024-01-31/"
    name = destination_name(match, "dataegress/cbol-report/2024-01-31/cbol.csv.enc", event_time=WHEN)
    assert name == "cbol/2024-01-31/cbol.csv"
    # a flag from another day is another day's folder, whatever the clock says
    assert (
        match_route(
            Route.from_plain(legacy_rows.cbol()), flag_prefix="dataegress/cbol-report/2024-01-30/", when=WHEN
        )
        is None
    )


@pytest.mark.parametrize(
    ("folder", "root", "resolved"),
    [
        ("/data-egress/RIS", "/data-egress", "RIS/"),
        ("/data-egress/RIS/", "/data-egress", "RIS/"),
        ("/data-egress/sas/", "/data-egress/", "sas/"),
        ("/data-egress/a/$TODAYS_DATE", "/data-egress", "a/2024-01-31/"),
        ("/mnt/egress/RIS", "/mnt/egress", "RIS/"),
        ("RIS", "/data-egress", "RIS"),
    ],
)
def test_absolute_sft_folders_under_the_root_name_the_folder_below_it(
    folder: str, root: str, resolved: str
) -> None:
    match = matched(
        {**legacy_rows.ris_site(), "destination_prefix": folder},
        "common-model-inputs/data/site/",
        sft_root=Path(root),
    )
    assert match.problems == ()
    assert match.destination_prefix == resolved


def test_the_ris_row_lands_in_ris_under_the_root() -> None:
    match = matched(
        legacy_rows.ris_incremental(), "businessdata/mongo/ucdata/2024-01-31/incremental/db.core.claimant-1/"
    )
    assert match.problems == ()
    key = "businessdata/mongo/ucdata/2024-01-31/incremental/db.core.claimant-1/db.core.claimant.json.gz.enc"
    assert destination_name(match, key, event_time=WHEN) == f"RIS/1/db.core.claimant.json.{STAMP}.gz"


@pytest.mark.parametrize("root", ["/srv/egress", "/data-egress-2", "/data"])
def test_absolute_sft_folders_elsewhere_stay_refused_naming_the_root(root: str) -> None:
    match = matched(legacy_rows.ris_site(), "common-model-inputs/data/site/", sft_root=Path(root))
    assert any(f"not under the SFT root {root}" in problem for problem in match.problems), match.problems


# -- the replaced system's columns ------------------------------------------------------------


@pytest.mark.parametrize("row", legacy_rows.all_rows(), ids=lambda row: row["pipeline_name"])
def test_every_legacy_row_loads_without_problems(row: dict[str, Any]) -> None:
    route = Route.from_plain(row)
    assert route.problems() == []
    assert route.warnings() == []
    assert Route.from_item(legacy_rows.as_item(row)) == route


def test_legacy_columns_round_trip_through_the_table_format() -> None:
    route = Route.from_plain(legacy_rows.rtg_pdm())
    assert route.rewrap_datakey is True and route.encrypting_key_ssm_parm_name == "/rtg/pdm/public_key"
    assert Route.from_item(route.to_item()) == route
    ris = Route.from_plain(legacy_rows.ris_incremental())
    assert ris.control_file_prefix == "db.core.claimant-$TODAYS_DATE.control"


def test_unknown_columns_are_warnings_and_the_row_still_delivers() -> None:
    route = Route.from_plain({**legacy_rows.opsmi(), "colour": "blue", "owner": "ops"})
    assert route.problems() == []
    assert route.warnings() == ["unknown column(s) ignored: colour, owner"]
    match = match_route(route, flag_prefix="opsmi/", when=WHEN)
    assert match is not None and match.problems == () and match.warnings == tuple(route.warnings())


def test_unused_ssm_parameter_name_is_a_warning() -> None:
    route = Route.from_plain({**legacy_rows.opsmi(), "encrypting_key_ssm_parm_name": "/rtg/key"})
    assert route.problems() == []
    assert any("is unused: rewrap_datakey is not true" in warning for warning in route.warnings())


def test_manifest_encryption_without_a_manifest_is_a_warning() -> None:
    route = Route.from_plain({**legacy_rows.opsmi(), "manifest_file_encryption": "none"})
    assert route.problems() == [] and "no manifest_file_name" in route.warnings()[0]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"decrypt": True}, "cannot be combined with decrypt = true"),
        ({"encrypting_key_ssm_parm_name": ""}, "rewrap_datakey needs encrypting_key_ssm_parm_name"),
        ({"encrypting_key_ssm_parm_name": "/rtg/bad key"}, "must be a parameter name"),
        ({"encrypting_key_ssm_parm_name": "/rtg//key"}, "must be a parameter name"),
        ({"encrypting_key_ssm_parm_name": "rtg/key/"}, "must be a parameter name"),
        ({"compress": True}, "compress cannot be true"),
        (
            {"transfer_type": "SFT", "destination_bucket": "", "role_arn": "", "destination_prefix": "rtg"},
            "applies to transfer_type S3 only",
        ),
    ],
)
def test_rewrap_rows_are_checked(changes: dict[str, Any], fragment: str) -> None:
    problems = Route.from_plain({**legacy_rows.rtg_pdm(), **changes}).problems()
    assert any(fragment in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("name", None),
        ("/a/b", None),
        ("/a/b-c_d.e", None),
        ("a" * 2048, None),
        ("a" * 2049, "longer than 2048"),
        ("/" + "/".join("l" * 15), None),
        ("/" + "/".join("l" * 16), "more than 15 levels"),
        ("a b", "must be a parameter name"),
        ("a:b", "must be a parameter name"),
        ("", "must be a parameter name"),
    ],
)
def test_ssm_parameter_names(name: str, problem: str | None) -> None:
    found = ssm_parameter_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", None),
        ("none", None),
        ("FALSE", None),
        ("encrypted", "writes manifests in plaintext only"),
        ("Re-Wrapped", "writes manifests in plaintext only"),
        ("rewrapped", "writes manifests in plaintext only"),
        ("true", "writes manifests in plaintext only"),
        ("aes", 'must be "" (plaintext)'),
    ],
)
def test_manifest_file_encryption(value: str, fragment: str | None) -> None:
    row = {**legacy_rows.rtg_incremental_manifest(), "manifest_file_encryption": value}
    problems = Route.from_plain(row).problems()
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("control_file_prefix", "a/b.control", "plain, visible file name"),
        ("control_file_prefix", ".hidden.control", "plain, visible file name"),
        ("control_file_prefix", "x.control.part", "temporary file"),
        ("control_file_prefix", "c-$YESTERDAY.control", "unknown placeholder $YESTERDAY"),
        ("control_file_prefix", "n" * 256, "longer than 255 bytes"),
        ("manifest_file_name", "m-$TOMORROW.json", "unknown placeholder $TOMORROW"),
        ("manifest_file_name", "x\ny.json", "plain, visible file name"),
    ],
)
def test_file_name_columns_are_checked(column: str, value: str, fragment: str) -> None:
    problems = Route.from_plain({**legacy_rows.ris_site(), column: value}).problems()
    assert any(fragment in problem for problem in problems), problems


# -- control files and manifests ----------------------------------------------------------------


def test_control_file_names_use_yyyymmdd_for_todays_date() -> None:
    ris = matched(legacy_rows.ris_site(), "common-model-inputs/data/site/")
    assert control_file_name(ris, event_time=WHEN) == f"RIS/initial-organisation-files-{STAMP}.control"
    incremental = matched(
        legacy_rows.ris_incremental(), "businessdata/mongo/ucdata/2024-01-31/incremental/db.core.claimant-7/"
    )
    # a '*' row's control file sits in the flag's own folder, beside the files it lists
    assert control_file_name(incremental, event_time=WHEN) == f"RIS/7/db.core.claimant-{STAMP}.control"
    assert control_file_name(matched(legacy_rows.opsmi(), "opsmi/"), event_time=WHEN) is None


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("c-$TODAYS_DATE.control", f"c-{STAMP}.control"),
        ("c-$TODAYS_YYYYMMDD_FORMATTED_DATE.control", f"c-{STAMP}.control"),
        ("c-$TODAYS_YYYYMMDD_HHMMSS_FORMATTED_DATE.ctl", f"c-{STAMP}_235958.ctl"),
        ("plain.control", "plain.control"),
    ],
)
def test_control_file_placeholders(template: str, expected: str) -> None:
    row = {**legacy_rows.opsmi(), "control_file_prefix": template}
    assert control_file_name(matched(row, "opsmi/"), event_time=WHEN) == expected


def test_control_file_body_lists_base_names_one_per_line() -> None:
    body = control_file_body(["RIS/a.json.20240131.gz", "RIS/1/b.json", "c"])
    assert body == b"a.json.20240131.gz\nb.json\nc\n"
    assert control_file_body([]) == b""
    assert control_file_body(["x/r\u00e9sum\u00e9.csv"]) == "r\u00e9sum\u00e9.csv\n".encode()
    with pytest.raises(PermanentError, match="line break") as raised:
        control_file_body(["ok", "two\nlines"])
    assert raised.value.reason == "unsafe_key"


def test_manifest_names_resolve_placeholders_from_the_event_time() -> None:
    match = matched(
        legacy_rows.rtg_incremental_manifest(),
        "businessdata/mongo/ucdata/2024-01-31/incremental/db.core.contract-2/",
    )
    assert match.problems == ()
    assert manifest_name(match) == f"incremental/2024-01-31/2/manifest-{STAMP}.json"
