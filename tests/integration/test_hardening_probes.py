"""The metrics and probe endpoints (worker and agent) under idle and slow clients.

Real servers on free ports and real sockets: idle connections must hold no thread,
``/healthz`` must keep answering while hundreds are open, and the server must close
them after its timeouts.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from egress.kernel.probes import ServingLimits
from egress.metrics import WorkerProbeServer
from sft_agent.metrics import AgentMetrics, MetricsServer

WORKERS = 4
IDLE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 2.0


class Serving(Protocol):
    @property
    def port(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Started:
    server: Serving
    threads_before: int

    @property
    def thread_cap(self) -> int:
        """Threads the server may add, whatever its clients do: its workers and its loop."""
        return self.threads_before + WORKERS + 1


@pytest.fixture(params=["worker", "agent"])
def probes(request: pytest.FixtureRequest) -> Iterator[Started]:
    limits = ServingLimits(
        workers=WORKERS, idle_timeout=IDLE_TIMEOUT, io_timeout=1.0, request_timeout=REQUEST_TIMEOUT
    )
    server: Serving
    if request.param == "worker":
        server = WorkerProbeServer(
            host="127.0.0.1", port=0, healthy=lambda: True, ready=lambda: False, limits=limits
        )
    else:
        server = MetricsServer(AgentMetrics(), host="127.0.0.1", port=0, healthy=lambda: True, limits=limits)
    before = threading.active_count()
    server.start()
    try:
        yield Started(server, before)
    finally:
        server.stop()


def get(port: int, path: str, *, timeout: float = 2.0) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket, *, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_healthz_answers_while_200_idle_connections_are_open_and_threads_stay_bounded(
    probes: Started,
) -> None:
    port = probes.server.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        started = time.monotonic()
        status, _, body = get(port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert time.monotonic() - started < 2.0
        assert threading.active_count() <= probes.thread_cap

        # The server closes them once they stayed idle for its timeout.
        deadline = time.monotonic() + IDLE_TIMEOUT + 3.0
        assert all(closed_by_server(sock, within=max(0.1, deadline - time.monotonic())) for sock in idle)
        assert threading.active_count() <= probes.thread_cap
        assert get(port, "/healthz")[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_clients_trickling_a_request_are_cut_off_and_do_not_starve_the_probes(probes: Started) -> None:
    port = probes.server.port
    # More slow clients than workers, each sending a byte of its request line more often
    # than the per-read timeout: only the whole-request timeout cuts them off.
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(WORKERS + 2)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.3):
            for sock in slow:
                with contextlib.suppress(OSError):  # already cut off
                    sock.sendall(b"G")

    for sock in slow:
        sock.sendall(b"GET /heal")
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(0.2)  # every worker is now busy with a slow client, two more wait
        started = time.monotonic()
        status, _, _ = get(port, "/healthz", timeout=REQUEST_TIMEOUT * 3)
        assert status == 200
        assert time.monotonic() - started < REQUEST_TIMEOUT + 1.5
        assert threading.active_count() <= probes.thread_cap + 1  # + the trickler
        stop.set()
        trickler.join()
        deadline = time.monotonic() + REQUEST_TIMEOUT * 2 + 2.0
        assert all(closed_by_server(sock, within=max(0.1, deadline - time.monotonic())) for sock in slow)
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_probe_paths_and_content_types_are_kept(probes: Started) -> None:
    port = probes.server.port
    status, kind, body = get(port, "/metrics")
    assert status == 200 and kind == CONTENT_TYPE_LATEST and b"# HELP" in body
    status, kind, body = get(port, "/healthz?verbose=1")
    assert (status, kind, body) == (200, "text/plain", b"ok\n")
    assert get(port, "/nowhere")[0] == 404
    if isinstance(probes.server, WorkerProbeServer):
        assert get(port, "/readyz")[:3] == (503, "text/plain", b"not ready\n")


def test_a_failing_healthz_answers_503_with_each_programs_body() -> None:
    worker = WorkerProbeServer(host="127.0.0.1", port=0, healthy=lambda: False, ready=lambda: True)
    agent = MetricsServer(AgentMetrics(), host="127.0.0.1", port=0, healthy=lambda: False)
    for server in (worker, agent):
        server.start()
    try:
        assert get(worker.port, "/healthz") == (503, "text/plain", b"loop stalled\n")
        assert get(worker.port, "/readyz") == (200, "text/plain", b"ready\n")
        assert get(agent.port, "/healthz") == (503, "text/plain", b"stalled\n")
        assert get(agent.port, "/readyz")[0] == 404  # the agent has no readiness probe
    finally:
        for server in (worker, agent):
            server.stop()


def test_stop_returns_promptly_with_idle_connections_open() -> None:
    before = threading.active_count()
    server = WorkerProbeServer(host="127.0.0.1", port=0, healthy=lambda: True, ready=lambda: True)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
    try:
        assert get(server.port, "/healthz")[0] == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 2.0
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before
    finally:
        for sock in idle:
            sock.close()
