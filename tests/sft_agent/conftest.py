"""Fixtures for the SFT agent's tests: a test PKI, the receiver and the agent as real processes.

Processes are started with ``[sys.executable, "-m", "sft_agent.cli", …]``, their JSON log
lines written to files and read back as events. Waiting is polling with deadlines.
Helpers live in ``sft_helpers`` (importable by the test modules).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sft_helpers import AgentProc, Pki, ReceiverProc, agent_config, child_env, wait_for

from sft_agent.certs import issue, make_ca, write_pair
from tests.support.ports import free_port, port_open


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1, one for another host, client certificates."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    rogue_ca = make_ca(common_name="someone else's CA")
    write_pair(ca, cert_path=folder / "ca.pem", key_path=folder / "ca-key.pem")
    pairs = {
        "server": issue(ca, common_name="localhost", hosts=["localhost", "127.0.0.1"], client=False),
        "other": issue(ca, common_name="other.example", hosts=["other.example"], client=False),
        "client": issue(ca, common_name="sft-agent-test", client=True),
        "rogue": issue(rogue_ca, common_name="intruder", client=True),
    }
    for name, issued in pairs.items():
        write_pair(issued, cert_path=folder / f"{name}.pem", key_path=folder / f"{name}-key.pem")
    return Pki(
        folder=folder,
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
        other_host_cert=folder / "other.pem",
        other_host_key=folder / "other-key.pem",
        rogue_client_cert=folder / "rogue.pem",
        rogue_client_key=folder / "rogue-key.pem",
    )


@pytest.fixture()
def start_receiver(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., ReceiverProc]]:
    """Start ``sft-agent receiver`` processes; all stopped at teardown."""
    started: list[ReceiverProc] = []

    def start(
        *,
        port: int | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        out: Path | None = None,
        extra: list[str] | None = None,
        wait: bool = True,
        name: str = "receiver",
    ) -> ReceiverProc:
        port = port or free_port()
        out = out or tmp_path / f"{name}-out"
        argv = [
            sys.executable, "-m", "sft_agent.cli", "receiver",
            "--listen", f"127.0.0.1:{port}",
            "--cert", str(cert or pki.server_cert),
            "--key", str(key or pki.server_key),
            "--ca", str(pki.ca),
            "--out", str(out),
            *(extra or []),
        ]  # fmt: skip
        proc = ReceiverProc(argv=argv, log_path=tmp_path / f"{name}-{len(started)}.log", env=child_env())
        proc.port, proc.out = port, out
        proc.start()
        started.append(proc)
        if wait:
            wait_for(
                lambda: port_open("127.0.0.1", port) or not proc.alive(), timeout=15, what="the receiver"
            )
            assert proc.alive(), proc.log_text()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture()
def start_agent(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., AgentProc]]:
    """Write a config and start ``sft-agent run``; every agent stopped at teardown."""
    started: list[AgentProc] = []

    def start(
        routes: list[dict[str, Any]],
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        metrics_port: int | None = None,
        **options: Any,
    ) -> AgentProc:
        port = metrics_port or free_port()
        document = config or agent_config(pki, routes, metrics_port=port, **options)
        path = tmp_path / f"agent-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        argv = [sys.executable, "-m", "sft_agent.cli", "run", "--config", str(path)]
        proc = AgentProc(argv=argv, log_path=tmp_path / f"agent-{len(started)}.log", env=child_env(env))
        proc.metrics_port, proc.config = port, document
        proc.start()
        started.append(proc)
        if wait:
            # /healthz answers as soon as the runners are up, a moment before the agent_started
            # line is written: tests read that line (its agent_id), so wait for both.
            wait_for(
                lambda: (proc.healthy() and bool(proc.events("agent_started"))) or not proc.alive(),
                timeout=15,
                what="the agent's /healthz and its agent_started line",
            )
            assert proc.alive(), proc.log_text()
        return proc

    yield start
    for proc in started:
        proc.stop()
