"""How the local commands find a running ``egress local up`` (its ``stack.json``), and the banner's
commands written for a fresh shell, against a real moto server."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from egress.aws import AwsClients
from egress.cli import main
from egress.devstack.bootstrap import LocalResources
from egress.devstack.commands import banner_commands
from egress.devstack.stackfile import STACK_FILE, find_running_stack, remove_stack_file, write_stack_file
from tests.conftest import REGION


def stack_facts(endpoint: str, *, pid: int | None = None) -> dict[str, object]:
    return {"endpoint_url": endpoint, "region": REGION, "pid": os.getpid() if pid is None else pid}


def test_publish_without_an_endpoint_finds_the_running_stack(
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"found-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_bytes(b"a\n")
    write_stack_file(tmp_path / ".local-stack", stack_facts(moto_endpoint))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    code = main(["local", "publish", str(data), f"s3://{bucket}/in/"])

    assert code == 0, capsys.readouterr().err
    assert f"publishing to the local stack at {moto_endpoint}" in capsys.readouterr().err
    keys = {item["Key"] for item in aws.s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"in/a.csv", "in/pipeline_success.flag"}


def test_a_stack_file_whose_up_is_gone_or_silent_is_ignored(moto_endpoint: str, tmp_path: Path) -> None:
    state = tmp_path / ".local-stack"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    write_stack_file(state, stack_facts(moto_endpoint, pid=int(gone.stdout)))
    assert find_running_stack([state]) is None  # killed with SIGKILL: its file stayed

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        silent = f"http://127.0.0.1:{closed.getsockname()[1]}"
    write_stack_file(state, stack_facts(silent))
    assert find_running_stack([state]) is None  # alive pid, but nothing answers there

    write_stack_file(state, stack_facts(moto_endpoint))
    found = find_running_stack([tmp_path / "elsewhere", state])
    assert found is not None and (found.endpoint_url, found.region) == (moto_endpoint, REGION)

    (state / STACK_FILE).write_text("{not json")
    assert find_running_stack([state]) is None
    remove_stack_file(state)
    assert not (state / STACK_FILE).exists()


def resources(*, region: str = "eu-west-2", ledger_table: str = "data-egress-ledger") -> LocalResources:
    return LocalResources(
        region=region,
        endpoint_url="http://127.0.0.1:4566",
        source_bucket="egress-source",
        destination_bucket="egress-destination",
        queue_url="q",
        queue_arn="qa",
        dlq_url="d",
        dlq_arn="da",
        routes_table="data-egress",
        ledger_table=ledger_table,
        kms_alias="alias/k",
        kms_key_arn="arn",
        flag_name="pipeline_success.flag",
    )


def test_banner_commands_carry_what_a_fresh_shell_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "my checkout"
    (checkout / "config" / "sample data").mkdir(parents=True)
    monkeypatch.chdir(checkout)
    info = {
        "endpoint_url": "http://127.0.0.1:4566",
        "sample_dir": str(checkout / "config" / "sample data"),
        "publish_prefix": "exports/opsmi/",
        "received_dir": str(checkout / ".local-stack" / "received"),
        "agent_config": str(checkout / ".local-stack" / "sft-agent.yaml"),
    }

    lines = banner_commands(resources(region="us-east-1", ledger_table="my-ledger"), info)

    assert lines[0] == f" In another terminal, in {checkout} (the paths below are relative to it):"
    commands = {line.strip().split("  (")[0] for line in lines if line.startswith("   ")}
    publish = next(shlex.split(c) for c in commands if " publish " in c)
    assert publish[-4:] == [
        "--region",
        "us-east-1",
        "config/sample data",
        "s3://egress-source/exports/opsmi/",
    ]
    history = next(shlex.split(c) for c in commands if c.endswith(" history"))
    assert history[1:] == [
        "--endpoint-url",
        "http://127.0.0.1:4566",
        "--region",
        "us-east-1",
        "--ledger-table",
        "my-ledger",
        "history",
    ]
    check = next(shlex.split(c) for c in commands if " check " in c)
    assert check[-3:] == ["check", "--config", ".local-stack/sft-agent.yaml"]
    # This test's interpreter is a venv's: its scripts are named by path, never left to PATH.
    if sys.prefix != sys.base_prefix:
        assert Path(history[0]).is_absolute() and history[0].endswith("/egress"), history[0]

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside the checkout: every path absolute
    elsewhere = banner_commands(resources(), info)
    assert elsewhere[0] == " In another terminal:"
    history = next(shlex.split(line.strip().split("  (")[0]) for line in elsewhere if "history" in line)
    assert history[1:] == ["--endpoint-url", "http://127.0.0.1:4566", "history"]
