"""A 2xx that arrives before the whole body was sent is not a delivery."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sft_faults import EarlyAnswerServer
from sft_helpers import AgentProc, Pki, drop, files_under, route, wait_for


@pytest.mark.parametrize("mode", ["hold", "drain"])
def test_a_200_before_the_whole_body_keeps_the_file_retries_then_parks_it(
    tmp_path: Path, pki: Pki, start_agent: Callable[..., AgentProc], mode: str
) -> None:
    body = os.urandom(24 * 1024 * 1024)  # more than loopback socket buffers hold
    source, errors = tmp_path / "in", tmp_path / "err"
    with EarlyAnswerServer(cert=pki.server_cert, key=pki.server_key, ca=pki.ca, mode=mode) as server:
        agent = start_agent(
            [
                route(
                    "early",
                    source,
                    [{"http": {"url": f"{server.url}/DA", "read_timeout": "2s"}}],
                    error_folder=errors,
                )
            ],
            retry={"max_attempts": 2, "initial_delay": "200ms", "max_delay": "200ms"},
        )
        drop(source, "big.bin", body)
        report_path = errors / "big.bin.error.json"
        wait_for(report_path.exists, timeout=30, what="the error report")
        wait_for(lambda: (errors / "big.bin").exists(), timeout=5, what="the parked file")
        assert server.requests == 2, "one request per attempt"
    report = json.loads(report_path.read_text())
    assert report["reason"] == "early_response", report
    assert report["http_status"] == 200 and report["attempts"] == 2
    assert "200" in report["detail"] and "of 25165824" in report["detail"], report["detail"]
    assert (errors / "big.bin").read_bytes() == body, "parked unchanged, never deleted"
    assert not (source / "big.bin").exists()
    assert not agent.events("file_sent") and not agent.events("http_sent")
    failures = agent.events("attempt_failed")
    assert [e["reason"] for e in failures] == ["early_response", "early_response"]
    assert [e["next"] for e in failures] == ["retry", "error_folder"]
    assert agent.metric("sft_agent_failures_total", route="early", reason="early_response") == 2
    assert not [n for n in files_under(source) if "claimed/" in n], "nothing left claimed"
