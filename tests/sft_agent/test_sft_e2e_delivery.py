"""The agent as a process delivering to real mTLS receivers: ours, and nginx with WebDAV."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
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

from tests.support.nginx import NginxWebdav, find_nginx


def test_two_routes_and_a_copy_fan_out_deliver_byte_identical_files_and_delete_them(
    tmp_path: Path,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver()
    warehouse, opsmi = tmp_path / "in" / "warehouse", tmp_path / "in" / "opsmi"
    archive, fan_out = tmp_path / "archive", tmp_path / "fan-out"
    agent = start_agent(
        [
            route(
                "warehouse",
                warehouse,
                [
                    {"http": {"url": f"{receiver.url}/DA", "method": "POST"}},
                    {"copy": {"destination": str(archive)}},
                    {"copy": {"destination": str(fan_out)}},
                ],
                error_folder=tmp_path / "error" / "warehouse",
            ),
            route(
                "opsmi",
                opsmi,
                [{"http": {"url": f"{receiver.url}/dav/opsmi", "method": "PUT"}}],
                error_folder=tmp_path / "error" / "opsmi",
            ),
        ]
    )
    sent = {
        "warehouse": {f"w-{i}.csv": os.urandom(1000 * i + 1) for i in range(5)}
        | {"big.bin": os.urandom(3_000_000)},
        "opsmi": {f"o {i}.json": os.urandom(777 * i + 3) for i in range(4)} | {"empty": b""},
    }
    for name, body in sent["warehouse"].items():
        drop(warehouse, name, body)
    for name, body in sent["opsmi"].items():
        drop(opsmi, name, body)

    expected = {f"DA/{n}": b for n, b in sent["warehouse"].items()} | {
        f"dav/opsmi/{n}": b for n, b in sent["opsmi"].items()
    }
    wait_for(lambda: files_under(receiver.out) == expected, timeout=30, what="every file at the receiver")
    # The copies follow the http action; while in progress they are hidden temp names.
    wait_for(lambda: files_under(archive) == sent["warehouse"], timeout=10, what="the archive copies")
    wait_for(lambda: files_under(fan_out) == sent["warehouse"], timeout=10, what="the fan-out copies")
    # Deleted from the source once every action succeeded (the working folder is empty too).
    wait_for(
        lambda: (
            files_outside_work_folder(warehouse) == {}
            and files_outside_work_folder(opsmi) == {}
            and claimed_files(warehouse / ".sft-agent") == []
            and claimed_files(opsmi / ".sft-agent") == []
        ),
        timeout=10,
        what="the sources to empty",
    )
    for name in expected:
        assert len(receiver.received(name.rsplit("/", 1)[-1])) == 1, name
    assert agent.metric("sft_agent_files_total", route="warehouse", outcome="sent") == 6
    assert agent.metric("sft_agent_files_total", route="opsmi", outcome="sent") == 5
    assert agent.metric("sft_agent_bytes_sent_total", route="warehouse") == sum(
        map(len, sent["warehouse"].values())
    )
    assert agent.metric("sft_agent_client_certificate_expiry_days", route="opsmi") > 80
    events = agent.events("file_sent")
    assert {(e["route"], e["file"]) for e in events} == {
        (r, n) for r, files in sent.items() for n in files
    }, "one file_sent line per file, with route and file name"


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)")
def test_push_to_nginx_webdav_with_client_certificates(
    tmp_path: Path, pki: Pki, start_agent: Callable[..., AgentProc]
) -> None:
    nginx = NginxWebdav(tmp_path / "nginx", cert=pki.server_cert, key=pki.server_key, ca=pki.ca)
    nginx.start()
    try:
        source = tmp_path / "in"
        start_agent(
            [
                route(
                    "nginx",
                    source,
                    [
                        {"rename": {"regex": r"^(.*)\.csv$", "replacement": r"\1.$TODAYS_DATE.csv"}},
                        {"http": {"url": f"{nginx.url}/incoming/team/", "method": "PUT"}},
                    ],
                    error_folder=tmp_path / "error",
                    sent_folder=str(tmp_path / "sent"),
                    recursive=True,
                )
            ]
        )
        today = time.strftime("%Y-%m-%d", time.gmtime())
        bodies = {"a.csv": os.urandom(2_500_000), "b c%.csv": b"1,2,3\n", "sub/part-0": b"nested"}
        for name, body in bodies.items():
            drop(source / os.path.dirname(name), os.path.basename(name), body)
        expected = {
            f"incoming/team/a.{today}.csv": bodies["a.csv"],
            f"incoming/team/b c%.{today}.csv": bodies["b c%.csv"],
            "incoming/team/sub/part-0": bodies["sub/part-0"],
        }
        wait_for(lambda: files_under(nginx.www) == expected, timeout=30, what="the files in nginx's root")
        # Kept in the sent folder under their original names, gone from the source.
        wait_for(lambda: files_under(tmp_path / "sent") == bodies, timeout=10, what="the sent folder")
        assert not (source / "a.csv").exists()
        assert " 201 " in nginx.access_log.read_text() or " 204 " in nginx.access_log.read_text()
    finally:
        nginx.stop()


def test_growing_files_and_temp_names_are_never_sent_early(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProc], start_agent: Callable[..., AgentProc]
) -> None:
    receiver = start_receiver()
    source = tmp_path / "in"
    source.mkdir()
    temp_names = {".data.csv.a1b2.part": b"tmp", ".hidden": b"h", "report.part": b"p", "x.tmp": b"t"}
    for name, body in temp_names.items():
        (source / name).write_bytes(body)
    agent = start_agent(
        [
            route(
                "grow",
                source,
                [{"http": {"url": f"{receiver.url}/in"}}],
                error_folder=tmp_path / "error",
                min_age="700ms",
            )
        ]
    )
    growing = source / "growing.bin"
    written = bytearray()
    stop = threading.Event()

    def writer() -> None:
        with growing.open("ab") as handle:
            for _ in range(25):  # 2.5 s of appends, far longer than min_age in total
                chunk = os.urandom(4096)
                handle.write(chunk)
                handle.flush()
                written.extend(chunk)
                if stop.wait(0.1):
                    return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while thread.is_alive():
            assert receiver.received("growing.bin") == [], "sent while still being written"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    wait_for(lambda: receiver.received("growing.bin"), timeout=10, what="the finished file")
    assert (receiver.out / "in" / "growing.bin").read_bytes() == bytes(written)
    time.sleep(1.0)  # several scans past min_age: the temp names must still be untouched
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == temp_names
    assert [e["stored"] for e in receiver.received()] == ["in/growing.bin"]
    assert agent.alive()


def test_a_server_certificate_for_another_host_sends_nothing_unless_the_route_turns_checks_off(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    receiver = start_receiver(cert=pki.other_host_cert, key=pki.other_host_key)
    strict, lax = tmp_path / "strict", tmp_path / "lax"
    agent = start_agent(
        [
            route(
                "strict",
                strict,
                [{"http": {"url": f"{receiver.url}/s"}}],
                error_folder=tmp_path / "err-strict",
            ),
            route(
                "lax",
                lax,
                [{"http": {"url": f"{receiver.url}/l"}}],
                error_folder=tmp_path / "err-lax",
                tls={"verify_hostname": False},
            ),
        ],
        retry={"max_attempts": 2, "initial_delay": "200ms", "max_delay": "200ms"},
    )
    drop(strict, "secret.csv", b"must not leave")
    drop(lax, "ok.csv", b"fine")
    report_path = tmp_path / "err-strict" / "secret.csv.error.json"
    wait_for(report_path.exists, timeout=20, what="the file in the error folder")
    report = json.loads(report_path.read_text())
    assert report["reason"] == "tls_verify" and report["attempts"] == 2
    assert "mismatch" in report["detail"] and "127.0.0.1" in report["detail"], report["detail"]
    assert (tmp_path / "err-strict" / "secret.csv").read_bytes() == b"must not leave"
    failures = agent.events("attempt_failed", route="strict")
    assert failures and all(e["reason"] == "tls_verify" and e["file"] == "secret.csv" for e in failures)
    # The other route's receiver got its file (the chain is still verified, only the name is not).
    wait_for(lambda: receiver.received("ok.csv"), timeout=10, what="the lax route's file")
    assert [e["stored"] for e in receiver.received()] == ["l/ok.csv"]
    assert agent.metric("sft_agent_failures_total", route="strict", reason="tls_verify") == 2
    assert agent.metric("sft_agent_error_folder_files", route="strict") == 1
