"""``egress routes …`` against the moto server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from egress.aws import AwsClients
from egress.cli import main
from egress.routing import create_routes_table
from tests.conftest import REGION

FLAG = "pipeline_success.flag"
ROW = [
    "--source-prefix",
    "exports/opsmi/",
    "--pipeline-name",
    "OpsMI",
    "--recipient-name",
    "warehouse",
    "--transfer-type",
    "S3",
    "--source-bucket",
    "src-bucket",
    "--destination-bucket",
    "dst-bucket",
    "--destination-prefix",
    "opsmi/",
]


@pytest.fixture()
def table(aws: AwsClients, unique: str) -> str:
    name = f"routes-{unique}"
    create_routes_table(aws.dynamodb, name)
    return name


def run(capsys: pytest.CaptureFixture[str], endpoint: str, table: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--endpoint-url", endpoint, "--region", REGION, "--routes-table", table, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_put_get_list_delete(moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, moto_endpoint, table, "routes", "put", *ROW)[0] == 0
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "get", "exports/opsmi/", "OpsMI", "-o", "json")
    assert code == 0 and json.loads(out)[0]["destination_bucket"] == "dst-bucket"
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "list")
    assert code == 0 and "s3://dst-bucket/opsmi/" in out and "1 route(s)" in out
    assert run(capsys, moto_endpoint, table, "routes", "delete", "exports/opsmi/", "OpsMI")[0] == 0
    code, _, err = run(capsys, moto_endpoint, table, "routes", "delete", "exports/opsmi/", "OpsMI")
    assert code == 1 and "no row" in err


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (["--transfer-type", "FTP"], "transfer_type must be S3 or SFT"),
        (["--destination-bucket", "Not_A_Bucket"], "destination_bucket"),
        (["--role-arn", "admin"], "role_arn"),
        (["--destination-prefix", "$NOPE/"], "unknown placeholder $NOPE"),
        (["--compress", "--compress-fmt", "rar"], "compress_fmt"),
    ],
)
def test_put_refuses_bad_rows(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str], change: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, moto_endpoint, table, "routes", "put", *ROW, *change)
    assert code == 1 and fragment in err and "not written" in err
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "list", "-o", "json")
    assert json.loads(out) == []


def test_sft_folder_escape_refused(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "put",
        "--source-prefix",
        "p/",
        "--pipeline-name",
        "x",
        "--recipient-name",
        "r",
        "--transfer-type",
        "SFT",
        "--source-bucket",
        "src-bucket",
        "--destination-prefix",
        "../../etc",
    )
    assert code == 1 and "'..'" in err


def test_validate_finds_rows_written_behind_the_cli(
    aws: AwsClients, moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, moto_endpoint, table, "routes", "put", *ROW)
    assert run(capsys, moto_endpoint, table, "routes", "validate")[0] == 0
    aws.dynamodb.put_item(
        TableName=table,
        Item={"source_prefix": {"S": "raw/"}, "pipeline_name": {"S": "Raw"}, "transfer_type": {"S": "S3"}},
    )
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "validate")
    assert (
        code == 1 and "raw/ / Raw" in out and "destination_bucket is required" in out and "1 invalid" in out
    )


def test_export_apply_round_trip_diff_and_prune(
    moto_endpoint: str,
    table: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(capsys, moto_endpoint, table, "routes", "put", *ROW)
    exported = tmp_path / "routes.yaml"
    assert run(capsys, moto_endpoint, table, "routes", "export", "--file", str(exported))[0] == 0
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(exported), "--yes")
    assert code == 0 and "no changes" in out
    rows = yaml.safe_load(exported.read_text())["routes"]
    rows[0]["destination_prefix"] = "opsmi-v2/"
    rows.append(
        {
            **rows[0],
            "pipeline_name": "OpsMI#sft",
            "transfer_type": "SFT",
            "destination_prefix": "warehouse",
            "destination_bucket": None,
        }
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({"routes": rows}))
    # without a terminal and without --yes: refused, nothing written
    code, out, err = run(capsys, moto_endpoint, table, "routes", "apply", str(changed))
    assert code == 1 and "pass --yes" in err
    assert "+ exports/opsmi/ / OpsMI#sft" in out
    assert "destination_prefix: 'opsmi/' -> 'opsmi-v2/'" in out
    # answered "n" at the prompt: nothing written
    monkeypatch.setattr("sys.stdin", _Tty("n\n"))
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(changed))
    assert code == 1 and "nothing applied" in out
    monkeypatch.setattr("sys.stdin", _Tty("y\n"))
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(changed))
    assert code == 0 and "applied" in out
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "list", "-o", "json")
    assert {(r["pipeline_name"], r["destination_prefix"]) for r in json.loads(out)} == {
        ("OpsMI", "opsmi-v2/"),
        ("OpsMI#sft", "warehouse"),
    }
    # --prune deletes rows not in the file
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(exported), "--yes", "--prune")
    assert code == 0 and "- exports/opsmi/ / OpsMI#sft" in out
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "list", "-o", "json")
    assert [r["pipeline_name"] for r in json.loads(out)] == ["OpsMI"]


def test_apply_refuses_a_file_with_a_bad_row(
    moto_endpoint: str, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"routes": [{"source_prefix": "a/", "pipeline_name": "A", "transfer_type": "S3"}]})
    )
    code, _, err = run(capsys, moto_endpoint, table, "routes", "apply", str(bad), "--yes")
    assert code == 1 and "destination_bucket is required" in err and "nothing applied" in err


def test_local_routes_file_applies(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "routes.local.yaml"
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "apply", str(path), "--yes")
    assert code == 0 and "4 to add" in out


def test_explain_lists_destination_names(
    aws: AwsClients, moto_endpoint: str, table: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = f"src-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key in ("land/run-1/a/part-0.enc", "land/run-1/b/part-0.enc", "land/run-1/pipeline_success.flag"):
        aws.s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    run(
        capsys,
        moto_endpoint,
        table,
        "routes",
        "put",
        "--source-prefix",
        "land/*",
        "--pipeline-name",
        "L",
        "--recipient-name",
        "r",
        "--transfer-type",
        "SFT",
        "--source-bucket",
        bucket,
        "--destination-prefix",
        "out",
        "--decrypt",
    )
    code, out, _ = run(
        capsys, moto_endpoint, table, "routes", "explain", f"s3://{bucket}/land/run-1/pipeline_success.flag"
    )
    assert code == 0
    assert "land/run-1/a/part-0.enc  ->  out/run-1/a/part-0" in out
    assert "land/run-1/b/part-0.enc  ->  out/run-1/b/part-0" in out
    code, out, _ = run(
        capsys, moto_endpoint, table, "routes", "explain", f"s3://{bucket}/elsewhere/pipeline_success.flag"
    )
    assert code == 1 and "no_route" in out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_put_takes_absolute_sft_folders_under_the_sft_root(
    moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sft = [
        "--source-prefix",
        "p/",
        "--pipeline-name",
        "x",
        "--recipient-name",
        "r",
        "--transfer-type",
        "SFT",
        "--source-bucket",
        "src-bucket",
        "--destination-prefix",
        "/data-egress/team",
    ]
    code, _, err = run(capsys, moto_endpoint, table, "routes", "put", *sft, "--sft-root", "/mnt/volume")
    assert code == 1 and "is absolute but not under the SFT root /mnt/volume" in err
    assert run(capsys, moto_endpoint, table, "routes", "put", *sft, "--sft-root", "/data-egress")[0] == 0


def test_get_and_put_show_warnings(
    aws: AwsClients, moto_endpoint: str, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, moto_endpoint, table, "routes", "put", *ROW, "--encrypting-key-ssm-parm-name", "/rtg/key"
    )
    assert code == 0 and "warning: encrypting_key_ssm_parm_name '/rtg/key' is unused" in err
    aws.dynamodb.update_item(
        TableName=table,
        Key={"source_prefix": {"S": "exports/opsmi/"}, "pipeline_name": {"S": "OpsMI"}},
        UpdateExpression="SET legacy = :v",
        ExpressionAttributeValues={":v": {"S": "x"}},
    )
    code, _, err = run(capsys, moto_endpoint, table, "routes", "get", "exports/opsmi/", "OpsMI")
    assert code == 0 and "WARNING: unknown column(s) ignored: legacy" in err


def test_explain_shows_what_each_pattern_keeps_and_the_approval(
    aws: AwsClients, moto_endpoint: str, table: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = f"src-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key in ("a.csv", "sub/b.csv", ".DS_Store", "sub/.DS_Store", "_SUCCESS", "notes.txt", FLAG):
        aws.s3.put_object(Bucket=bucket, Key=f"drop/{key}", Body=b"x")
    common = ["--pipeline-name", "D", "--recipient-name", "r", "--transfer-type", "S3"]
    put = [
        *common,
        "--source-bucket",
        bucket,
        "--destination-bucket",
        "dst-bucket",
        "--destination-prefix",
        "d/",
    ]
    filters = [
        "--include",
        "*.csv",
        "--include",
        "_SUCCESS",
        "--exclude",
        "*.DS_Store",
        "--exclude",
        "_SUCCESS",
    ]
    assert (
        run(capsys, moto_endpoint, table, "routes", "put", "--source-prefix", "drop/", *put, *filters)[0] == 0
    )
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "explain", f"s3://{bucket}/drop/{FLAG}")
    assert code == 0, out
    assert "  include '*.csv' keeps 2 object(s)" in out
    assert "  include '_SUCCESS' keeps 0 object(s)" in out  # excluded first: exclude wins
    assert "  exclude '*.DS_Store' skips 2 object(s)" in out
    assert "  exclude '_SUCCESS' skips 1 object(s)" in out
    assert "  drop/a.csv  ->  d/a.csv" in out and "  drop/sub/b.csv  ->  d/sub/b.csv" in out
    assert "  drop/sub/.DS_Store  ->  excluded ('*.DS_Store')" in out
    assert "  drop/notes.txt  ->  not included (matches no include pattern)" in out

    # A row that needs approval and has none: explain says the flag would be dead-lettered.
    assert (
        run(
            capsys,
            moto_endpoint,
            table,
            "routes",
            "put",
            "--source-prefix",
            "drop/",
            *put,
            "--approval-required",
        )[0]
        == 0
    )
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "explain", f"s3://{bucket}/drop/{FLAG}")
    assert code == 1 and "NOT APPROVED (the flag would go to the DLQ)" in out
    # Only disabled rows: nothing is delivered, and that is no error.
    assert run(capsys, moto_endpoint, table, "routes", "disable", "drop/", "D")[0] == 0
    code, out, _ = run(capsys, moto_endpoint, table, "routes", "explain", f"s3://{bucket}/drop/{FLAG}")
    assert code == 0 and "every matching row is disabled" in out
