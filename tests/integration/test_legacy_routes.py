"""The replaced system's rows, put as its Terraform puts them, checked and explained on the moto server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from egress.aws import AwsClients
from egress.cli import main
from egress.messages import FlagEvent
from egress.routing import RouteTable, create_routes_table
from tests.conftest import REGION
from tests.support import legacy_rows

WHEN = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)


@pytest.fixture()
def table(aws: AwsClients, unique: str) -> str:
    name = f"legacy-{unique}"
    create_routes_table(aws.dynamodb, name)
    for row in legacy_rows.all_rows():
        aws.dynamodb.put_item(TableName=name, Item=legacy_rows.as_item(row))
    return name


def run(capsys: pytest.CaptureFixture[str], endpoint: str, table: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--endpoint-url", endpoint, "--region", REGION, "--routes-table", table, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_accepts_every_legacy_row(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EGRESS_SFT_ROOT", raising=False)
    count = len(legacy_rows.all_rows())
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate")
    assert code == 0, out
    assert f"{count} valid (0 with warnings), 0 invalid" in out
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate", "-o", "json")
    assert code == 0 and json.loads(out) == []


def test_the_legacy_items_are_stored_with_their_own_types(aws: AwsClients, table: str) -> None:
    item = aws.dynamodb.get_item(
        TableName=table, Key={"source_prefix": {"S": "opsmi/"}, "pipeline_name": {"S": "OpsMI"}}
    )["Item"]
    assert item["rewrap_datakey"] == {"BOOL": False}
    assert item["encrypting_key_ssm_parm_name"] == {"S": ""}
    assert item["destination_prefix"] == {"S": "/"}


def test_absolute_sft_folders_depend_on_the_sft_root(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate", "--sft-root", "/srv/egress")
    assert code == 1
    assert "not under the SFT root /srv/egress" in out and "4 invalid" in out  # the four SFT rows
    monkeypatch.setenv("EGRESS_SFT_ROOT", "/srv/egress")
    assert run(capsys, moto_endpoint, table, "routes", "validate")[0] == 1
    monkeypatch.setenv("EGRESS_SFT_ROOT", "/data-egress")
    assert run(capsys, moto_endpoint, table, "routes", "validate")[0] == 0


def test_unknown_columns_are_warnings_not_refusals(
    aws: AwsClients, moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {**legacy_rows.opsmi(), "pipeline_name": "OpsMI#old", "legacy_owner": "dataworks"}
    aws.dynamodb.put_item(TableName=table, Item=legacy_rows.as_item(row))
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate")
    assert code == 0
    assert "opsmi/ / OpsMI#old:" in out and "warning: unknown column(s) ignored: legacy_owner" in out
    assert "(1 with warnings), 0 invalid" in out
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate", "-o", "json")
    assert code == 0 and json.loads(out) == [
        {
            "source_prefix": "opsmi/",
            "pipeline_name": "OpsMI#old",
            "problems": [],
            "warnings": ["unknown column(s) ignored: legacy_owner"],
        }
    ]
    # the worker finds and delivers it: no invalid_route for a stray column
    matches = RouteTable(aws.dynamodb, table, cache_seconds=0).find(
        FlagEvent(bucket=legacy_rows.PUBLISHED_BUCKET, key="opsmi/pipeline_success.flag", event_time=WHEN)
    )
    assert {m.route.pipeline_name: m.problems for m in matches} == {"OpsMI": (), "OpsMI#old": ()}


def test_a_bad_rewrap_row_is_still_refused(
    aws: AwsClients, moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {**legacy_rows.rtg_pdm(), "pipeline_name": "PDM_RTG#bad", "encrypting_key_ssm_parm_name": ""}
    aws.dynamodb.put_item(TableName=table, Item=legacy_rows.as_item(row))
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate")
    assert code == 1 and "rewrap_datakey needs encrypting_key_ssm_parm_name" in out and "1 invalid" in out


@pytest.mark.parametrize(
    ("flag", "sft_root", "pipelines"),
    [
        ("opsmi/pipeline_success.flag", "/data-egress", {"OpsMI": ""}),
        (
            "dataegress/cbol-report/2024-01-31/pipeline_success.flag",
            "/data-egress",
            {"CBOL": "cbol/2024-01-31/"},
        ),
        ("common-model-inputs/data/site/pipeline_success.flag", "/data-egress", {"RIS_SFT": "RIS/"}),
        (
            "dataegress/sas/ucs_housing/export/2024-01-31/pipeline_success.flag",
            "/data-egress",
            {"DWX-SAS-SFT01": "sas/"},
        ),
        ("dataegress/dwh/run/pipeline_success.flag", "/data-egress", {"DWH-Transform-Json": "warehouse/"}),
        ("data/uc/pdm/2024-01-31/pipeline_success.flag", "/data-egress", {"PDM_RTG": "pdm/2024-01-31/"}),
    ],
)
def test_the_worker_finds_each_legacy_row_with_its_destination(
    aws: AwsClients, table: str, flag: str, sft_root: str, pipelines: dict[str, str]
) -> None:
    routes = RouteTable(aws.dynamodb, table, cache_seconds=0, sft_root=Path(sft_root))
    matches = routes.find(FlagEvent(bucket=legacy_rows.PUBLISHED_BUCKET, key=flag, event_time=WHEN))
    assert {m.route.pipeline_name: m.destination_prefix for m in matches} == pipelines
    assert all(m.problems == () for m in matches)


def test_explain_names_legacy_destinations(
    aws: AwsClients, moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = legacy_rows.PUBLISHED_BUCKET
    if bucket not in {b["Name"] for b in aws.s3.list_buckets()["Buckets"]}:
        aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    folder = f"common-model-inputs/data/site/{table}/"
    for key in ("org.json.gz.enc", "sub/site.csv.enc", "pipeline_success.flag"):
        aws.s3.put_object(Bucket=bucket, Key=folder + key, Body=b"x")
    code, out, _ = run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "explain",
        f"s3://{bucket}/{folder}pipeline_success.flag",
        "--date",
        "2024-01-31",
        "--sft-root",
        "/data-egress",
    )
    assert code == 0, out
    assert f"{folder}org.json.gz.enc  ->  RIS/{table}/org.json.20240131.gz" in out
    assert f"{folder}sub/site.csv.enc  ->  RIS/{table}/sub/site.20240131.csv" in out
    assert f"(control file)  ->  RIS/{table}/initial-organisation-files-20240131.control" in out
    code, out, _ = run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "explain",
        f"s3://{bucket}/{folder}pipeline_success.flag",
        "--date",
        "2024-01-31",
        "-o",
        "json",
    )
    (entry,) = json.loads(out)
    assert entry["control_file"] == f"RIS/{table}/initial-organisation-files-20240131.control"
    assert entry["flags"] == "decrypt,timestamp_files,control-file"


def test_apply_takes_a_file_of_legacy_rows_and_shows_warnings(
    moto_endpoint: str, unique: str, aws: AwsClients, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = f"legacy-apply-{unique}"
    create_routes_table(aws.dynamodb, table)
    rows = [*legacy_rows.all_rows(), {**legacy_rows.cbol(), "pipeline_name": "CBOL#2", "legacy_note": "x"}]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": rows}))
    code, out, err = run(capsys, moto_endpoint, table, "routes", "apply", str(path), "--yes")
    assert code == 0, err
    assert f"{len(rows)} to add" in out
    assert (
        "warning: dataegress/cbol-report/$TODAYS_DATE/* / CBOL#2: unknown column(s) ignored: legacy_note"
        in err
    )
    assert run(capsys, moto_endpoint, table, "routes", "validate")[0] == 0
    # applying the same file again changes nothing
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(path), "--yes")
    assert code == 0 and "no changes" in out


def test_put_takes_the_legacy_columns(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "put",
        "--source-prefix",
        "rtg/full/",
        "--pipeline-name",
        "RTG_Full",
        "--recipient-name",
        "RTG",
        "--transfer-type",
        "S3",
        "--source-bucket",
        "published-bucket",
        "--destination-bucket",
        "rtg-bucket",
        "--destination-prefix",
        "/full/",
        "--rewrap-datakey",
        "--no-decrypt",
        "--encrypting-key-ssm-parm-name",
        "/rtg/full/public_key",
        "--manifest-file-name",
        "manifest.json",
        "--manifest-file-encryption",
        "encrypted",
    )
    assert code == 1 and "writes manifests in plaintext only" in err
    code, out, err = run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "put",
        "--source-prefix",
        "rtg/full/",
        "--pipeline-name",
        "RTG_Full",
        "--recipient-name",
        "RTG",
        "--transfer-type",
        "S3",
        "--source-bucket",
        "published-bucket",
        "--destination-bucket",
        "rtg-bucket",
        "--destination-prefix",
        "/full/",
        "--rewrap-datakey",
        "--no-decrypt",
        "--encrypting-key-ssm-parm-name",
        "/rtg/full/public_key",
        "--control-file-prefix",
        "full-$TODAYS_DATE.control",
    )
    assert code == 0, err
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "get", "rtg/full/", "RTG_Full", "-o", "json")
    (row,) = json.loads(out)
    assert row["rewrap_datakey"] is True and row["encrypting_key_ssm_parm_name"] == "/rtg/full/public_key"
    assert row["control_file_prefix"] == "full-$TODAYS_DATE.control"
