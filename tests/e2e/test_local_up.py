"""``make run`` as a newcomer meets it: ``egress local up`` as a process, a publish, Ctrl-C.

The stack runs on its own free ports and state folder, so it never meets a ``make run``
of the same machine. The sample data goes in through the banner's own ``egress local
publish`` command, run exactly as printed in a second shell that has no ``AWS_*`` or
``EGRESS_*`` variables and no venv on its PATH, and must come out byte for byte in the
destination bucket and at the receiver, by the routes of ``config/routes.local.yaml``.
Then an SFT row added with ``egress routes put`` to a folder nobody wrote to before is
delivered by the running agent, and the banner's ``sft-agent check`` passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from egress.aws import AwsClients, AwsConfig, build_clients
from tests.conftest import REGION, free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "config" / "sample-data"
ROUTES_FILE = REPO / "config" / "routes.local.yaml"
DAEMONS = ("receiver", "worker", "sft-agent")

READY_TIMEOUT = 90.0
DELIVERY_TIMEOUT = 60.0
# The worker finishes its long poll (5 s in the local stack) before it exits.
STOP_TIMEOUT = 20.0


def egress_command() -> list[str]:
    """The console script ``make run`` uses, beside this interpreter; else the module."""
    script = Path(sys.executable).with_name("egress")
    return [str(script)] if script.exists() else [sys.executable, "-m", "egress.cli"]


def newcomer_env() -> dict[str, str]:
    """A fresh shell: no AWS, egress or agent settings, no activated venv (``make run`` has none)."""
    dropped = ("AWS_", "EGRESS_", "SFT_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.pop("VIRTUAL_ENV", None)
    venv_bins = {Path(sys.executable).parent.absolute(), Path(sys.prefix, "bin").absolute()}
    path = [
        entry
        for entry in env.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).absolute() not in venv_bins
    ]
    env["PATH"] = os.pathsep.join(path) or os.defpath
    return env


def run_as_printed(line: str, *, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """A banner's command line run as a person pastes it into a fresh shell."""
    return subprocess.run(
        shlex.split(line), cwd=cwd, env=newcomer_env(), capture_output=True, timeout=timeout, check=False
    )


def banner_command(up: LocalUp, what: str) -> str:
    """The command line of the banner that does ``what`` (without its trailing remark)."""
    banner = up.stdout_path.read_text(encoding="utf-8")
    (line,) = [line for line in banner.splitlines() if line.startswith("   ") and what in line]
    return line.split("  (")[0].strip()


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "    (no file)"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (empty)"


@dataclass
class LocalUp:
    """A running ``egress local up``: its process, its files and, once up, its children."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    ready_file: Path
    stdout_path: Path
    stderr_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    children: list[psutil.Process] = field(default_factory=list)

    def logs(self) -> str:
        """``up``'s own output and each daemon's log tail, for failure messages."""
        parts = [f"egress local up stderr:\n{tail(self.stderr_path)}"]
        parts += [f"{name}.log:\n{tail(self.log(name))}" for name in DAEMONS]
        return "\n".join(parts)

    def log(self, daemon: str) -> Path:
        return self.state_dir / "logs" / f"{daemon}.log"

    def wait_until_up(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ready = json.loads(self.ready_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            else:
                break
            if self.process.poll() is not None:
                raise AssertionError(
                    f"egress local up exited with {self.process.returncode} before it was up\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"egress local up was not up within {timeout:.0f}s\n{self.logs()}")
            time.sleep(0.2)
        # The ready file is written right after the banner; the banner is what a person reads.
        banner = self.stdout_path.read_text(encoding="utf-8")
        assert "data-egress local stack is up" in banner, banner
        assert f"s3://{self.ready['source_bucket']}/{self.ready['publish_prefix']}" in banner, banner
        recorded = json.loads((self.state_dir / "pids.json").read_text(encoding="utf-8"))
        assert set(recorded) == set(DAEMONS), recorded
        self.children = psutil.Process(self.process.pid).children(recursive=True)
        assert set(recorded.values()) <= {child.pid for child in self.children}, (recorded, self.children)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)


def still_running(processes: list[psutil.Process]) -> list[str]:
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return running


@pytest.fixture()
def local_up(tmp_path: Path) -> Iterator[LocalUp]:
    """``egress local up`` on free ports with its state under ``tmp_path``, in its own process group."""
    # Named like the default, so a publish with no endpoint run in tmp_path finds the stack.
    state_dir = tmp_path / ".local-stack"
    ready_file = tmp_path / "ready.json"
    stdout_path = tmp_path / "up.out"
    stderr_path = tmp_path / "up.err"
    argv = [
        *egress_command(),
        "local",
        "up",
        "--port",
        str(free_port()),
        "--receiver-port",
        str(free_port()),
        "--worker-port",
        str(free_port()),
        "--agent-port",
        str(free_port()),
        "--state-dir",
        str(state_dir),
        "--ready-file",
        str(ready_file),
    ]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            argv,
            cwd=REPO,  # where `make run` runs it
            env=newcomer_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    up = LocalUp(process, state_dir, ready_file, stdout_path, stderr_path)
    try:
        yield up
    finally:
        if process.poll() is None:
            # The daemons run in sessions of their own: find them before their parent goes.
            with contextlib.suppress(psutil.NoSuchProcess):
                up.children += psutil.Process(process.pid).children(recursive=True)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for child in up.children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue


def opsmi_routes(prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The S3 and the SFT route of ``prefix`` in the local routes file."""
    rows = yaml.safe_load(ROUTES_FILE.read_text(encoding="utf-8"))["routes"]
    mine = {row["transfer_type"].upper(): row for row in rows if row["source_prefix"] == prefix}
    assert {"S3", "SFT"} <= set(mine), f"{ROUTES_FILE} should send {prefix} both ways: {mine}"
    return mine["S3"], mine["SFT"]


def sample_files() -> dict[str, bytes]:
    files = {
        path.relative_to(SAMPLE_DIR).as_posix(): path.read_bytes()
        for path in sorted(SAMPLE_DIR.rglob("*"))
        if path.is_file()
    }
    assert any("/" in name for name in files), "the sample data should have a sub-folder"
    return files


def destination_objects(aws: AwsClients, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            found[key[len(prefix) :]] = aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return found


def received_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def differences(expected: dict[str, bytes], found: dict[str, bytes]) -> list[str]:
    problems = [f"missing {name}" for name in expected if name not in found]
    problems += [
        f"{name}: {len(found[name])} bytes differ from the sample's {len(data)}"
        for name, data in expected.items()
        if name in found and found[name] != data
    ]
    return problems


def test_local_up_delivers_published_sample_data_and_stops_on_ctrl_c(local_up: LocalUp) -> None:
    started = time.monotonic()
    local_up.wait_until_up(timeout=READY_TIMEOUT)
    up_seconds = time.monotonic() - started
    ready = local_up.ready
    prefix = ready["publish_prefix"]
    s3_route, sft_route = opsmi_routes(prefix)
    expected = sample_files()

    target = f"s3://{ready['source_bucket']}/{prefix}"

    # While it runs, the local commands can find it.
    stack_file = json.loads((local_up.state_dir / "stack.json").read_text(encoding="utf-8"))
    assert stack_file["endpoint_url"] == ready["endpoint_url"] and stack_file["pid"] == local_up.process.pid

    # In a second shell, a newcomer runs what the banner says, as it says it.
    banner = local_up.stdout_path.read_text(encoding="utf-8")
    assert f" In another terminal, in {REPO} " in banner, banner  # the relative paths' folder, named
    publish_line = banner_command(local_up, "local publish")
    assert target in publish_line, publish_line
    publish = run_as_printed(publish_line)
    assert publish.returncode == 0, publish.stderr.decode(errors="replace")
    assert f"published {len(expected)} files" in publish.stdout.decode(), publish.stdout.decode()

    aws = build_clients(AwsConfig(region=REGION, endpoint_url=ready["endpoint_url"]))
    bucket = ready["destination_bucket"]
    assert s3_route["destination_bucket"] == bucket
    s3_prefix = s3_route["destination_prefix"]
    manifest_name = s3_route["manifest_file_name"]
    received_dir = Path(ready["received_dir"]) / sft_route["destination_prefix"]
    waiting_dir = Path(ready["sft_root"]) / sft_route["destination_prefix"]
    delivered = time.monotonic()
    deadline = delivered + DELIVERY_TIMEOUT
    while True:
        in_bucket = destination_objects(aws, bucket, s3_prefix)
        at_receiver = received_files(received_dir)
        problems = [f"s3://{bucket}/{s3_prefix}: {p}" for p in differences(expected, in_bucket)]
        if manifest_name not in in_bucket:
            problems.append(f"s3://{bucket}/{s3_prefix}: missing {manifest_name}")
        problems += [f"receiver {received_dir}: {p}" for p in differences(expected, at_receiver)]
        if not problems:
            break
        if local_up.process.poll() is not None:
            raise AssertionError(
                f"egress local up exited with {local_up.process.returncode}\n{local_up.logs()}"
            )
        gave_up = "message_dead_lettered" in local_up.log("worker").read_text(errors="replace")
        if gave_up or time.monotonic() > deadline:
            why = "the worker dead-lettered the flag" if gave_up else f"after {DELIVERY_TIMEOUT:.0f}s"
            raise AssertionError(
                f"published {len(expected)} files to {target}, but {why}:\n  "
                + "\n  ".join(problems)
                + f"\nstill in the SFT root: {sorted(received_files(waiting_dir))}\n{local_up.logs()}"
            )
        time.sleep(0.5)
    delivered = time.monotonic() - delivered

    # Exactly the data and the manifest; the manifest lists what was delivered.
    assert set(in_bucket) == {*expected, manifest_name}
    manifest = json.loads(in_bucket[manifest_name])
    assert sorted(entry["name"] for entry in manifest["objects"]) == sorted(expected)
    assert set(at_receiver) == set(expected)
    # The banner's ledger command, with no credentials in the shell, shows both deliveries.
    history = subprocess.run(
        [*shlex.split(banner_command(local_up, "history")), "--output", "json"],
        cwd=REPO,
        env=newcomer_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert history.returncode == 0, history.stderr.decode(errors="replace")
    assert {row["pipeline_name"] for row in json.loads(history.stdout)} == {
        s3_route["pipeline_name"],
        sft_route["pipeline_name"],
    }
    # Each SFT file's story, end to end: written by the worker, then sent by the agent with the
    # receiver's status; the route is "received" once every file was sent.
    history_files = [
        *shlex.split(banner_command(local_up, "history")),
        "--pipeline",
        sft_route["pipeline_name"],
    ]
    deadline = time.monotonic() + 30
    while True:
        shown = subprocess.run(
            [*history_files, "--files"],
            cwd=REPO,
            env=newcomer_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr.decode(errors="replace")
        table = shown.stdout.decode()
        file_lines = [line.strip() for line in table.splitlines() if line.startswith("    ")]
        sent = [
            line for line in file_lines if "written " in line and "→ sent " in line and "(HTTP 201" in line
        ]
        if len(sent) == len(expected) and " received " in table:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"egress history --files never showed every file sent:\n{table}")
        time.sleep(0.5)
    as_json = subprocess.run(
        [*history_files, "--files", "--output", "json"],
        cwd=REPO,
        env=newcomer_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    (sft_row,) = json.loads(as_json.stdout)
    assert sft_row["status"] == "received" and sft_row["files_sent"] == len(expected)
    assert {file["status"] for file in sft_row["files"]} == {"sent"}
    assert all(
        file["sent_sha256"] == file["sha256"] and file["http_status"] == 201 for file in sft_row["files"]
    )
    # The banner's events command, as printed: each route's completion event, as a subscriber
    # of the events topic gets it (the command takes what it prints off the tap queue).
    seen = ""
    deadline = time.monotonic() + 30
    while (
        not all(f" {outcome} " in seen for outcome in ("delivered", "received"))
        or seen.count(" delivered ") < 2
    ):
        shown_events = run_as_printed(banner_command(local_up, "local events"))
        assert shown_events.returncode == 0, shown_events.stderr.decode(errors="replace")
        seen += shown_events.stdout.decode()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the banner's events command never showed both routes delivered and received:\n{seen}"
            )
    lines = seen.splitlines()
    assert {line.split()[2] for line in lines if " delivered " in line} == {"OpsMI", "OpsMI#sft"}, seen
    assert [line.split()[2] for line in lines if " received " in line] == ["OpsMI#sft"], seen
    assert all(target in line for line in lines), seen

    # The banner's check of the agent's receiver, as printed: one URL, reached, probed.
    checked = run_as_printed(banner_command(local_up, "check --config"))
    report = checked.stdout.decode()
    assert checked.returncode == 0, report + checked.stderr.decode(errors="replace")
    assert report.splitlines()[-1] == "1 URL checked: 1 ok, 0 warnings, 0 failed", report
    assert report.startswith(f"ok    sft-root  {ready['receiver_url']}/  TLSv1."), report

    # A new SFT row to a folder nobody wrote to yet, added while everything runs (no restart),
    # then a publish with no endpoint at all: it finds the stack through .local-stack/stack.json.
    late_prefix, late_folder = "exports/late/", "latecomer/inbox"
    put = subprocess.run(
        [
            *egress_command(), "routes", "put", "--endpoint-url", ready["endpoint_url"],
            "--source-prefix", late_prefix, "--pipeline-name", "Late#sft", "--recipient-name", "latecomer",
            "--transfer-type", "SFT", "--source-bucket", ready["source_bucket"],
            "--destination-prefix", late_folder,
        ],
        cwd=REPO, env=newcomer_env(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert put.returncode == 0, put.stdout.decode() + put.stderr.decode(errors="replace")
    late_data = local_up.state_dir.parent / "late-data"
    (late_data / "part").mkdir(parents=True)
    late_files = {"late.csv": b"id\n1\n", "part/late-0.csv": b"id\n2\n"}
    for name, data in late_files.items():
        (late_data / name).write_bytes(data)
    late_publish = subprocess.run(
        [
            *egress_command(),
            "local",
            "publish",
            str(late_data),
            f"s3://{ready['source_bucket']}/{late_prefix}",
        ],
        cwd=local_up.state_dir.parent,
        env=newcomer_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert late_publish.returncode == 0, late_publish.stderr.decode(errors="replace")
    assert f"the local stack at {ready['endpoint_url']}" in late_publish.stderr.decode()
    late_received = Path(ready["received_dir"]) / late_folder
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while differences(late_files, received_files(late_received)):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the new SFT row's files never reached {late_received}: "
                f"{differences(late_files, received_files(late_received))}\n"
                f"still in the SFT root: {sorted(received_files(Path(ready['sft_root'])))}\n{local_up.logs()}"
            )
        time.sleep(0.5)

    # Neither up's readiness probe nor the agent may fail a handshake in a healthy stack.
    assert "tls_handshake_failed" not in local_up.log("receiver").read_text(), local_up.logs()

    stopping = time.monotonic()
    local_up.ctrl_c()
    try:
        code = local_up.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"egress local up did not stop within {STOP_TIMEOUT:.0f}s of Ctrl-C\n{local_up.logs()}"
        ) from None
    stop_seconds = time.monotonic() - stopping
    assert code == 0, local_up.logs()
    assert still_running(local_up.children) == [], local_up.logs()
    assert not (local_up.state_dir / "pids.json").exists()
    assert not (local_up.state_dir / "stack.json").exists()
    assert not local_up.ready_file.exists()
    print(f"up in {up_seconds:.1f}s, delivered in {delivered:.1f}s, stopped in {stop_seconds:.1f}s")
