"""Faults on the receiving side: down, 500, connection dropped mid-body, corrupted bytes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from sft_faults import FaultyReceiver
from sft_helpers import (
    AgentProc,
    Pki,
    ReceiverProc,
    claimed_files,
    drop,
    files_outside_work_folder,
    files_under,
    route,
    wait_for,
)

from tests.support.ports import free_port


def faulty(
    pki: Pki, *, upstream: ReceiverProc | None, plan: list[str], default: str = "forward"
) -> FaultyReceiver:
    return FaultyReceiver(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        upstream_port=upstream.port if upstream else None,
        plan=plan,
        default=default,
    )


def test_receiver_down_for_a_while_then_up_every_file_delivered_once(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    port = free_port()
    source = tmp_path / "in"
    agent = start_agent(
        [
            route(
                "down",
                source,
                [{"http": {"url": f"https://127.0.0.1:{port}/x"}}],
                error_folder=tmp_path / "err",
            )
        ],
        retry={"max_attempts": 50, "initial_delay": "200ms", "max_delay": "600ms", "multiplier": 2},
    )
    bodies = {f"f{i:02d}.dat": os.urandom(10_000 + i) for i in range(12)}
    for name, body in bodies.items():
        drop(source, name, body)
    wait_for(
        lambda: len({e["file"] for e in agent.events("attempt_failed", reason="connect")}) == len(bodies),
        timeout=15,
        what="a failed attempt for every file while the receiver is down",
    )
    receiver = start_receiver(port=port)
    wait_for(
        lambda: files_under(receiver.out) == {f"x/{n}": b for n, b in bodies.items()},
        timeout=20,
        what="every file after the receiver came up",
    )
    wait_for(lambda: len(agent.events("file_sent")) == len(bodies), timeout=5, what="every file_sent")
    assert files_outside_work_folder(source) == {}, "source not empty"
    assert claimed_files(source / ".sft-agent") == []
    for name in bodies:
        assert len(receiver.received(name)) == 1, f"{name} received more than once"
    assert files_under(tmp_path / "err") == {}
    assert agent.metric("sft_agent_retries_total", route="down") >= len(bodies)
    assert agent.metric("sft_agent_files_total", route="down", outcome="sent") == len(bodies)


def test_500_and_a_connection_dropped_mid_body_are_retried(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver()
    body = os.urandom(2_000_000)
    with faulty(pki, upstream=receiver, plan=["500", "close_mid_body"]) as proxy:
        source = tmp_path / "in"
        agent = start_agent(
            [route("flaky", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=tmp_path / "err")]
        )
        drop(source, "payload.bin", body)
        wait_for(lambda: receiver.received("payload.bin"), timeout=20, what="delivery after two failures")
        assert proxy.modes_seen() == ["500", "close_mid_body", "forward"]
    assert (receiver.out / "DA" / "payload.bin").read_bytes() == body
    wait_for(lambda: agent.events("file_sent"), timeout=5, what="file_sent")
    reasons = [e["reason"] for e in agent.events("attempt_failed")]
    assert reasons == ["http_5xx", "disconnected"], reasons
    assert agent.events("file_sent", file="payload.bin")[0]["attempts"] == 3
    assert agent.metric("sft_agent_failures_total", route="flaky", reason="http_5xx") == 1
    assert agent.metric("sft_agent_failures_total", route="flaky", reason="disconnected") == 1
    wait_for(lambda: not (source / "payload.bin").exists(), timeout=5, what="the source file deleted")


def test_a_digest_mismatch_is_retried_then_parked_with_the_reason(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver()
    body = os.urandom(300_000)
    with faulty(pki, upstream=receiver, plan=[], default="flip_byte") as proxy:
        source, errors = tmp_path / "in", tmp_path / "err"
        agent = start_agent(
            [route("corrupt", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=errors)],
            retry={"max_attempts": 3, "initial_delay": "200ms", "max_delay": "400ms"},
        )
        drop(source, "data.bin", body)
        report_path = errors / "data.bin.error.json"
        wait_for(report_path.exists, timeout=20, what="the error report")
        assert proxy.modes_seen() == ["flip_byte"] * 3
    wait_for(lambda: (errors / "data.bin").exists(), timeout=5, what="the file beside its report")
    report = json.loads(report_path.read_text())
    assert report["reason"] == "digest_mismatch"
    assert report["attempts"] == 3 and report["http_status"] == 400 and report["file"] == "data.bin"
    assert (errors / "data.bin").read_bytes() == body, "the file is parked unchanged, never deleted"
    # The receiver kept nothing: no final file, no temp file.
    assert files_under(receiver.out) == {}
    assert [e["error"] for e in receiver.events("request_refused")] == ["digest_mismatch"] * 3
    assert agent.metric("sft_agent_files_total", route="corrupt", outcome="error") == 1
    assert not (source / "data.bin").exists()


def test_attempts_are_remembered_across_a_restart(
    tmp_path: Path, pki: Pki, start_agent: Callable[..., AgentProc]
) -> None:
    with faulty(pki, upstream=None, plan=[], default="500") as proxy:
        source, errors = tmp_path / "in", tmp_path / "err"
        routes = [route("restart", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=errors)]
        retry = {"max_attempts": 3, "initial_delay": "300ms", "max_delay": "300ms"}
        first = start_agent(routes, retry=retry)
        drop(source, "again.csv", b"a,b\n")
        wait_for(lambda: len(first.events("attempt_failed")) == 2, timeout=15, what="two failed attempts")
        first.signal(signal.SIGTERM)
        assert first.wait(15) == 0
        assert (source / "again.csv").exists(), "the file waits in the source folder for its next attempt"
        second = start_agent(routes, retry=retry)
        wait_for((errors / "again.csv.error.json").exists, timeout=15, what="the third and last attempt")
        report = json.loads((errors / "again.csv.error.json").read_text())
        assert report["attempts"] == 3 and report["reason"] == "http_5xx"
        assert proxy.modes_seen() == ["500"] * 3, "three attempts in all, not 2 + 3"
        assert [e["attempt"] for e in second.events("attempt_failed")] == [3]
