"""Nothing is stranded in a working folder: a full disk, a file left claimed, an error report that
cannot be written. Every file ends back in the watched folder, in the error folder, or delivered.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sft_helpers import (
    AgentProc,
    ReceiverProc,
    claimed_files,
    drop,
    files_outside_work_folder,
    route,
    wait_for,
)

from tests.support.ports import free_port


@pytest.fixture()
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a volume that can be filled in a test. Needs root (CI runs the tests as root)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield volume
    finally:
        if subprocess.run(["umount", str(volume)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(volume)], capture_output=True, check=False)


def fill(volume: Path) -> Path:
    """Write a file until the volume is full; returns it (delete it to free the space)."""
    filler = volume / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_strands_nothing_and_files_are_delivered_once_space_returns(
    small_volume: Path,
    tmp_path: Path,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    port = free_port()  # the receiver comes up later: every attempt fails until then
    kept, parked, errors = small_volume / "kept", small_volume / "parked", small_volume / "error"
    agent = start_agent(
        [
            route(
                "kept",
                kept,
                [{"http": {"url": f"https://127.0.0.1:{port}/kept"}}],
                error_folder=errors / "kept",
                retry={"max_attempts": 1000, "initial_delay": "200ms", "max_delay": "400ms"},
            ),
            route(
                "parked",
                parked,
                [{"http": {"url": f"https://127.0.0.1:{port}/parked"}}],
                error_folder=errors / "parked",
                retry={"max_attempts": 2, "initial_delay": "200ms", "max_delay": "200ms"},
            ),
        ]
    )
    staging = small_volume / ".staging"
    bodies = {f"f{i}.dat": os.urandom(20_000 + i) for i in range(5)}
    for name, body in bodies.items():
        drop(staging / "kept", name, body)
        drop(staging / "parked", name, body)
    filler = fill(small_volume)
    with pytest.raises(OSError):
        (small_volume / "probe").write_bytes(b"x" * 8192)
    # Renames need no space: the files arrive in the watched folders of a full volume.
    for name in bodies:
        os.rename(staging / "kept" / name, kept / name)
        os.rename(staging / "parked" / name, parked / name)

    def attempts(route_name: str, name: str) -> int:
        return len(agent.events("attempt_failed", route=route_name, file=name))

    # Stranded files would never be attempted again: every file keeps coming back.
    wait_for(
        lambda: all(attempts("kept", n) >= 3 for n in bodies),
        timeout=30,
        what="three failed attempts at every file of the full volume",
    )
    wait_for(
        lambda: all((errors / "parked" / n).exists() for n in bodies),
        timeout=15,
        what="the parked route's files in its error folder",
    )
    assert agent.events("state_save_failed"), "precondition: state saves failed for want of space"
    assert len(agent.events("error_report_failed")) == len(bodies), "precondition: no room for reports"
    assert not agent.events("unexpected_error") and not agent.events("release_failed")
    assert not any((errors / "parked" / f"{n}.error.json").exists() for n in bodies)
    for name in bodies:  # nothing lost: each file is waiting, claimed for an attempt right now, or parked
        in_work = [c for c in claimed_files(kept / ".sft-agent") if c.endswith(f"/claimed/{name}")]
        assert (kept / name).exists() or in_work, name
        assert (errors / "parked" / name).read_bytes() == bodies[name]

    filler.unlink()
    receiver = start_receiver(port=port)
    wait_for(
        lambda: all(agent.events("file_sent", route="kept", file=n) for n in bodies),
        timeout=20,
        what="the kept route's files delivered once space returned",
    )
    wait_for(
        lambda: all((errors / "parked" / f"{n}.error.json").exists() for n in bodies),
        timeout=15,
        what="the error reports written once space returned",
    )
    for name, body in bodies.items():
        assert len(receiver.received(name)) == 1, name
        assert (receiver.out / "kept" / name).read_bytes() == body
        report = json.loads((errors / "parked" / f"{name}.error.json").read_text())
        assert report["reason"] == "connect" and report["attempts"] == 2 and report["file"] == name
    assert files_outside_work_folder(kept) == {} and files_outside_work_folder(parked) == {}
    assert claimed_files(kept / ".sft-agent") == [] and claimed_files(parked / ".sft-agent") == []
    assert not receiver.received() or all(e["stored"].startswith("kept/") for e in receiver.received())


def test_a_file_left_in_the_agents_own_claimed_folder_is_put_back_by_the_sweep(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    receiver = start_receiver()
    source = tmp_path / "in"
    agent = start_agent(
        [route("sweep", source, [{"http": {"url": f"{receiver.url}/DA"}}], error_folder=tmp_path / "err")]
    )
    (own,) = [p for p in (source / ".sft-agent").iterdir() if p.name != "state"]
    assert own.name == agent.events("agent_started")[0]["agent_id"]
    # As if a thread had died between the claim and the put back.
    (tmp_path / "orphan.csv").write_bytes(b"left behind\n")
    os.rename(tmp_path / "orphan.csv", own / "claimed" / "orphan.csv")
    wait_for(lambda: agent.events("file_sent", file="orphan.csv"), timeout=15, what="the orphan delivered")
    assert len(receiver.received("orphan.csv")) == 1
    assert agent.events("put_back", file="orphan.csv", why="swept")
    assert claimed_files(source / ".sft-agent") == []
