"""``egress routes approve|enable|disable`` and the edit records of ``put``/``apply``, as two IAM users."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from egress.aws import AwsClients
from egress.cli import main
from egress.routing import create_routes_table, get_route
from tests.conftest import REGION

PREFIX, PIPELINE = "exports/secret/", "Secret"
ROW = [
    "--source-prefix",
    PREFIX,
    "--pipeline-name",
    PIPELINE,
    "--recipient-name",
    "vault",
    "--transfer-type",
    "S3",
    "--source-bucket",
    "src-bucket",
    "--destination-bucket",
    "dst-bucket",
    "--destination-prefix",
    "secret/",
    "--approval-required",
    "--exclude",
    "*.tmp",
]

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture()
def as_user(
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[[str], Run]:
    """``as_user(name)`` → a function running the CLI with that IAM user's own access key."""
    table = f"routes-{unique}"
    create_routes_table(aws.dynamodb, table)
    keys: dict[str, tuple[str, str]] = {}

    def for_user(name: str) -> Run:
        user = f"{name}-{unique}"
        if user not in keys:
            aws.session.client("iam", endpoint_url=moto_endpoint).create_user(UserName=user)
            key = aws.session.client("iam", endpoint_url=moto_endpoint).create_access_key(UserName=user)
            keys[user] = (key["AccessKey"]["AccessKeyId"], key["AccessKey"]["SecretAccessKey"])

        def run(*argv: str) -> tuple[int, str, str]:
            with monkeypatch.context() as patched:
                patched.setenv("AWS_ACCESS_KEY_ID", keys[user][0])
                patched.setenv("AWS_SECRET_ACCESS_KEY", keys[user][1])
                code = main(
                    ["--endpoint-url", moto_endpoint, "--region", REGION, "--routes-table", table, *argv]
                )
            captured = capsys.readouterr()
            return code, captured.out, captured.err

        return run

    return for_user


def _row_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(PREFIX))


def test_approval_by_someone_other_than_the_editor(
    as_user: Callable[[str], Run], aws: AwsClients, unique: str, tmp_path: Path
) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    code, out, _ = alice("routes", "put", *ROW)
    assert code == 0 and "delivers nothing until someone other than its editor" in out
    row = get_route(aws.dynamodb, f"routes-{unique}", source_prefix=PREFIX, pipeline_name=PIPELINE)
    assert row is not None and row.updated_by.endswith(f":user/alice-{unique}") and row.exclude == ("*.tmp",)
    assert _row_line(alice("routes", "list")[1]).split()[-1] == "PENDING"

    code, _, err = alice("routes", "approve", PREFIX, PIPELINE)
    assert code == 1 and "someone else must approve it" in err
    code, out, _ = bob("routes", "approve", PREFIX, PIPELINE)
    assert code == 0 and f"user/bob-{unique}" in out
    listed = _row_line(alice("routes", "list")[1])
    assert listed.split()[-1] == "approved" and "filters" in listed

    # Switching off and on is not an edit of what is delivered: the approval stays.
    assert bob("routes", "disable", PREFIX, PIPELINE)[0] == 0
    assert "DISABLED" in _row_line(alice("routes", "list")[1])
    assert bob("routes", "enable", PREFIX, PIPELINE)[0] == 0
    assert _row_line(alice("routes", "list")[1]).split()[-1] == "approved"
    # Writing the same row again changes nothing, whoever writes it.
    assert bob("routes", "put", *ROW)[0] == 0
    assert _row_line(alice("routes", "list")[1]).split()[-1] == "approved"

    # An edit of a delivering column drops the approval, and records the editor.
    code, out, _ = alice("routes", "put", *ROW[:-1], "*.partial")
    assert code == 0 and "approval by" in out and "dropped" in out
    assert _row_line(alice("routes", "list")[1]).split()[-1] == "PENDING"

    # apply records its caller too; the approval columns of a file never approve anything.
    exported = yaml.safe_load(alice("routes", "export")[1])
    wanted = exported["routes"][0] | {"destination_prefix": "secret-v2/", "approved_by": "arn:forged"}
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump({"routes": [wanted]}))
    assert bob("routes", "apply", str(routes_file), "--yes")[0] == 0
    row = get_route(aws.dynamodb, f"routes-{unique}", source_prefix=PREFIX, pipeline_name=PIPELINE)
    assert row is not None and row.updated_by.endswith(f"bob-{unique}") and row.approved_by == ""
    assert bob("routes", "approve", PREFIX, PIPELINE)[0] == 1
    assert alice("routes", "approve", PREFIX, PIPELINE)[0] == 0
    code, _, err = alice("routes", "get", PREFIX, PIPELINE)
    assert (
        code == 0 and f"approval: approved: approved by arn:aws:iam::123456789012:user/alice-{unique}" in err
    )


def test_approve_and_switch_refusals(as_user: Callable[[str], Run]) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    code, _, err = bob("routes", "approve", "nowhere/", "Nothing")
    assert code == 1 and "no row" in err
    assert alice("routes", "put", *ROW[: ROW.index("--approval-required")])[0] == 0
    code, _, err = bob("routes", "approve", PREFIX, PIPELINE)
    assert code == 1 and "does not require approval" in err
    code, _, err = bob("routes", "disable", "nowhere/", "Nothing")
    assert code == 1 and "no row" in err
    code, out, _ = bob("routes", "enable", PREFIX, PIPELINE)
    assert code == 0 and "already was" in out
