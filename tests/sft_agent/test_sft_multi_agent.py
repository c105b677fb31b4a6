"""Several agents on one shared folder (ECS tasks on one EFS volume): each file sent exactly once,
and the claims of an agent killed with SIGKILL put back and sent by the other.
"""

from __future__ import annotations

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


def test_two_agents_on_one_folder_send_every_file_exactly_once(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    receiver = start_receiver()
    source = tmp_path / "shared"
    routes = [
        route("shared", source, [{"http": {"url": f"{receiver.url}/DA"}}], error_folder=tmp_path / "err")
    ]
    agents = [start_agent(routes), start_agent(routes)]
    ids = [a.events("agent_started")[0]["agent_id"] for a in agents]
    assert ids[0] != ids[1]
    assert sorted(p.name for p in (source / ".sft-agent").iterdir()) == sorted([*ids, "state"])
    bodies = {f"f{i:03d}.csv": os.urandom(2_000 + i) for i in range(60)}
    for name, body in bodies.items():
        drop(source, name, body)
    wait_for(
        lambda: sum(len(a.events("file_sent")) for a in agents) >= len(bodies),
        timeout=40,
        what="every file sent by one agent or the other",
    )
    # Count receipts: the receiver logs one file_received per stored file.
    receipts = [e["stored"].rsplit("/", 1)[-1] for e in receiver.received()]
    assert sorted(receipts) == sorted(bodies), "each file received exactly once"
    assert files_under(receiver.out) == {f"DA/{n}": b for n, b in bodies.items()}
    sent_by = [{e["file"] for e in a.events("file_sent")} for a in agents]
    assert not sent_by[0] & sent_by[1] and sent_by[0] | sent_by[1] == set(bodies)
    assert files_outside_work_folder(source) == {}
    assert claimed_files(source / ".sft-agent") == []


def test_the_claims_of_an_agent_killed_with_sigkill_are_put_back_and_sent_by_the_other(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver()
    source, errors = tmp_path / "shared", tmp_path / "err"
    stall = FaultyReceiver(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        upstream_port=None,
        plan=[],
        default="stall",
    )
    with stall:
        # The first agent's receiver holds every request: its two threads keep their files claimed.
        doomed = start_agent(
            [route("shared", source, [{"http": {"url": f"{stall.url}/DA"}}], error_folder=errors)]
        )
        doomed_id = doomed.events("agent_started")[0]["agent_id"]
        bodies = {"a.bin": os.urandom(3_000_000), "b.bin": os.urandom(3_000_000)}
        for name, body in bodies.items():
            drop(source, name, body)
        wait_for(
            lambda: len(stall.modes_seen()) == 2,
            timeout=15,
            what="both files in flight to a stalled receiver",
        )
        assert sorted(claimed_files(source / ".sft-agent")) == [
            f"{doomed_id}/claimed/a.bin",
            f"{doomed_id}/claimed/b.bin",
        ]
        survivor = start_agent(
            [route("shared", source, [{"http": {"url": f"{receiver.url}/DA"}}], error_folder=errors)]
        )
        assert not survivor.events("put_back_at_start"), "a live agent's claims are not taken over"
        os.kill(doomed.pid, signal.SIGKILL)
        assert doomed.wait(10) == -signal.SIGKILL
        wait_for(
            lambda: len(survivor.events("file_sent")) == 2, timeout=30, what="the survivor to send both files"
        )
    for name, body in bodies.items():
        assert len(receiver.received(name)) == 1, name
        assert (receiver.out / "DA" / name).read_bytes() == body
        (put_back,) = survivor.events("put_back_from_gone_agent", file=name)
        assert put_back["from_agent"] == doomed_id
    (taken,) = survivor.events("agent_folder_taken_over")
    assert taken["from_agent"] == doomed_id and taken["files"] == 2 and taken["removed"]
    assert not (source / ".sft-agent" / doomed_id).exists()
    assert files_outside_work_folder(source) == {} and files_under(errors) == {}
