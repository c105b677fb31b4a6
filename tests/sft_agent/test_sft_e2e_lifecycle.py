"""The agent's life as a process: kill -9 mid-send, SIGTERM with sends in flight, a second signal."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sft_faults import FaultyReceiver
from sft_helpers import AgentProc, Pki, ReceiverProc, claimed_files, drop, files_under, route, wait_for


def faulty(pki: Pki, *, upstream: ReceiverProc | None, default: str) -> FaultyReceiver:
    return FaultyReceiver(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        upstream_port=upstream.port if upstream else None,
        plan=[],
        default=default,
    )


def test_kill_9_mid_send_then_restart_delivers_exactly_one_copy(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    receiver = start_receiver()
    source = tmp_path / "in"
    routes = [route("kill", source, [{"http": {"url": f"{receiver.url}/DA"}}], error_folder=tmp_path / "err")]
    first = start_agent(routes)
    block = os.urandom(1 << 20)
    body = block * 160  # 160 MiB: the send takes long enough to be caught in the middle
    drop(source, "big.bin", body)

    def upload_in_progress() -> bool:
        return (
            any(
                p.name.startswith(".big.bin.") and p.stat().st_size > 0
                for p in (receiver.out / "DA").glob(".*")
            )
            if (receiver.out / "DA").exists()
            else False
        )

    wait_for(upload_in_progress, timeout=20, what="the receiver to be writing the upload", interval=0.005)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert not receiver.received("big.bin"), "precondition: the kill came before the upload finished"
    (claimed,) = claimed_files(source / ".sft-agent")
    assert claimed.endswith("/claimed/big.bin"), "the file was claimed when killed"
    wait_for(lambda: receiver.events("upload_incomplete"), timeout=10, what="the receiver to drop the upload")

    second = start_agent(routes)
    wait_for(
        lambda: second.events("put_back_at_start", file="big.bin"), timeout=10, what="the claim put back"
    )
    wait_for(
        lambda: second.events("file_sent", file="big.bin"),
        timeout=60,
        what="the file delivered after restart",
    )
    assert len(receiver.received("big.bin")) == 1
    delivered = files_under(receiver.out)
    assert list(delivered) == ["DA/big.bin"], "exactly one copy and no temp file left"
    assert delivered["DA/big.bin"] == body
    assert not (source / "big.bin").exists()


def test_sigterm_lets_a_send_in_flight_finish_then_exits_0(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver()
    body = os.urandom(1_200_000)  # read by the proxy at ~1.3 MB/s: about a second in flight
    with faulty(pki, upstream=receiver, default="slow_forward") as proxy:
        source = tmp_path / "in"
        agent = start_agent(
            [
                route(
                    "graceful", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=tmp_path / "err"
                )
            ],
            shutdown_grace="20s",
        )
        drop(source, "slow.bin", body)
        assert proxy.request_started.wait(10), "the send did not start"
        drop(source, "later.bin", b"arrives after the stop request")
        agent.signal(signal.SIGTERM)
        assert agent.wait(20) == 0
    assert (receiver.out / "DA" / "slow.bin").read_bytes() == body
    assert not (source / "slow.bin").exists()
    events = [e["event"] for e in agent.events()]
    assert events.index("stop_requested") < events.index("file_sent") < events.index("agent_stopped")
    # Nothing new was claimed after the stop request.
    assert (source / "later.bin").exists() and not receiver.received("later.bin")


def test_grace_period_over_aborts_the_send_and_puts_the_file_back(
    tmp_path: Path, pki: Pki, start_agent: Callable[..., AgentProc]
) -> None:
    with faulty(pki, upstream=None, default="stall") as proxy:
        source = tmp_path / "in"
        agent = start_agent(
            [route("stuck", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=tmp_path / "err")],
            shutdown_grace="1s",
        )
        drop(source, "stuck.bin", os.urandom(4_000_000))
        assert proxy.request_started.wait(10), "the send did not start"
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        assert time.monotonic() - started < 8
    assert (source / "stuck.bin").exists(), "put back untouched"
    assert claimed_files(source / ".sft-agent") == []
    assert not (source / ".sft-agent").exists() or [p.name for p in (source / ".sft-agent").iterdir()] == [
        "state"
    ], "a clean stop removes the agent's own folder"
    assert files_under(tmp_path / "err") == {}
    assert agent.events("grace_period_over") and agent.events("send_aborted", file="stuck.bin")
    assert not agent.events("attempt_failed"), "an abort is not a failed attempt"


def test_a_second_signal_aborts_at_once(
    tmp_path: Path, pki: Pki, start_agent: Callable[..., AgentProc]
) -> None:
    with faulty(pki, upstream=None, default="stall") as proxy:
        source = tmp_path / "in"
        agent = start_agent(
            [route("twice", source, [{"http": {"url": f"{proxy.url}/DA"}}], error_folder=tmp_path / "err")],
            shutdown_grace="60s",
        )
        drop(source, "stuck.bin", os.urandom(4_000_000))
        assert proxy.request_started.wait(10), "the send did not start"
        agent.signal(signal.SIGTERM)
        wait_for(lambda: agent.events("stop_requested"), timeout=5, what="the first signal handled")
        time.sleep(0.3)
        assert agent.alive(), "the first signal waits for the send in flight"
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        assert time.monotonic() - started < 5
    assert (source / "stuck.bin").exists()
    assert agent.events("abort_requested") and agent.events("send_aborted", file="stuck.bin")
