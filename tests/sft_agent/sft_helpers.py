"""Helpers for the SFT agent's tests: polling, files, processes with JSON logs, configs.

A module of its own (not ``conftest``): several ``conftest.py`` live in this tree, and
``import conftest`` would get whichever was loaded last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Put a file into a watched folder the way the worker does: hidden temp name, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.x1y2.part"
    tmp.write_bytes(data)
    final = folder / name
    os.replace(tmp, final)
    return final


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative POSIX path → content), hidden ones included."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def files_outside_work_folder(folder: Path, work: str = ".sft-agent") -> dict[str, bytes]:
    """Like :func:`files_under`, without the agents' working folder (locks, claims, state)."""
    return {name: data for name, data in files_under(folder).items() if not name.startswith(work + "/")}


def claimed_files(work_folder: Path) -> list[str]:
    """Every file claimed by any agent on ``work_folder`` (``<agent-id>/claimed/<name>``, old layout too)."""
    found = []
    for path in sorted(work_folder.glob("*/claimed/**/*")) + sorted(work_folder.glob("claimed/**/*")):
        if path.is_file():
            found.append(path.relative_to(work_folder).as_posix())
    return found


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process (other lines ignored)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without agent settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFT_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Pki:
    """Certificates for the tests, all PEM files in one folder."""

    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_host_cert: Path
    other_host_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path


@dataclass
class Proc:
    """A child process with its log file."""

    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def start(self) -> Proc:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        found = read_events(self.log_path)
        if event is not None:
            found = [e for e in found if e.get("event") == event]
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[3]} did not exit within {timeout}s; log:\n{self.log_text()[-3000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class ReceiverProc(Proc):
    """``sft-agent receiver`` as a process."""

    port: int = 0
    out: Path = Path()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def received(self, name: str | None = None) -> list[dict[str, Any]]:
        events = self.events("file_received")
        return [e for e in events if name is None or e.get("stored", "").rsplit("/", 1)[-1] == name]


@dataclass
class AgentProc(Proc):
    """``sft-agent run`` as a process."""

    metrics_port: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series (0 if absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
            if got == wanted:
                return float(value)
        return 0.0


def agent_config(
    pki: Pki,
    routes: list[dict[str, Any]],
    *,
    metrics_port: int,
    retry: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """An agent config for tests: fast polling, small retry delays."""
    return {
        "tls": {
            "client_cert": str(pki.client_cert),
            "client_key": str(pki.client_key),
            "ca_bundle": str(pki.ca),
        },
        "defaults": {
            "poll_interval": "100ms",
            "min_age": "300ms",
            "threads": 2,
            "connect_timeout": "2s",
            "read_timeout": "5s",
            "retry": retry
            or {"max_attempts": 5, "initial_delay": "300ms", "max_delay": "1s", "multiplier": 2},
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "routes": routes,
        **top,
    }


def route(
    name: str,
    source: Path,
    actions: list[dict[str, Any]],
    *,
    error_folder: Path,
    **extra: Any,
) -> dict[str, Any]:
    """One route of a test config (delete_on_send unless a sent_folder is given)."""
    body: dict[str, Any] = {
        "name": name,
        "source": str(source),
        "actions": actions,
        "error_folder": str(error_folder),
    }
    if "sent_folder" not in extra:
        body["delete_on_send"] = True
    body.update(extra)
    return body
