"""The daemons ``egress local up`` runs as child processes: start, probe, stop, clean up.

Each child runs in its own session with an explicit environment and logs to a file; a
readiness probe says when it answers; a pids file lets the next ``up`` stop what a
killed one left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from egress.aws import EMULATOR_CREDENTIALS
from egress.devstack.errors import LocalSetupError
from egress.kernel.fsutil import write_atomically

PIDS_FILE = "pids.json"
# Every child carries this variable; a recorded pid is only ours if its environment has it.
STATE_DIR_MARKER = "EGRESS_LOCAL_STATE_DIR"


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (same socket options as werkzeug)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host  # noqa: S104 - compared, not bound


def pick_port(host: str, preferred: int, *, avoid: Sequence[int] = ()) -> int:
    """``preferred`` if free, else any free port; never one in ``avoid`` (already handed out)."""
    if preferred not in avoid and port_is_free(host, preferred):
        return preferred
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def log_tail(path: Path, *, lines: int = 20) -> str:
    """The last lines of a log file, indented, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "    (no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (log is empty)"


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own loopback URLs
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tls_handshake_ok(
    host: str, port: int, *, server_name: str, ca: Path, cert: Path, key: Path, timeout: float = 1.0
) -> bool:
    """Whether ``host:port`` completes a mutual-TLS handshake with these certificates.

    A bare TCP probe would do for "is it listening", but the receiver logs each one as a
    failed handshake; this one also proves the certificates fit.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name),
        ):
            return True
    except OSError:  # ssl.SSLError included
        return False


@dataclass
class Child:
    """A daemon ``up`` runs: how to start it, how to tell it answers, where it logs."""

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], bool]
    where: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process in its own session (Ctrl-C reaches ``up`` only), logging to a file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        """None while running (or not started)."""
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        """Signal the child's whole process group, if it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


def wait_until_ready(
    children: Sequence[Child],
    *,
    deadline: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait until every child answers (True) or ``stop`` is set (False).

    Raises :class:`LocalSetupError` naming the first child that exited or did not answer.
    """
    pending = list(children)
    while pending:
        if stop is not None and stop.is_set():
            return False
        for child in list(pending):
            code = child.exit_code()
            if code is not None:
                raise LocalSetupError(
                    f"{child.name} exited with code {code} before it answered ({child.where}).\n"
                    f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                )
            if child.ready():
                pending.remove(child)
        if not pending:
            return True
        if clock() > deadline:
            child = pending[0]
            raise LocalSetupError(
                f"{child.name} did not answer on {child.where} in time.\n"
                f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
            )
        time.sleep(0.2)
    return True


def stop_children(children: Sequence[Child], *, grace: float, report: Callable[[str], None]) -> None:
    """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL what is left."""
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            report(f"{child.name} did not stop within {grace:.0f}s: killing it")
            child.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)


def stop_leftovers(state_dir: Path, *, report: Callable[[str], None]) -> None:
    """Stop children a previous ``up`` (killed with SIGKILL) left running for this state dir.

    A recorded pid counts only if its environment still names this state dir, so a
    reused pid of an unrelated process is never touched.
    """
    path = state_dir / PIDS_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    marker = f"{STATE_DIR_MARKER}={state_dir}".encode()
    for name, pid in dict(recorded).items():
        try:
            environ = Path(f"/proc/{int(pid)}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker in environ:
            report(f"stopping {name} (pid {pid}) left over from an earlier run")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGTERM)
    with contextlib.suppress(OSError):
        path.unlink()


def child_env(extra: Mapping[str, str], *, base: Mapping[str, str]) -> dict[str, str]:
    """An explicit environment: the caller's, minus any AWS/egress/agent settings, plus ``extra``.

    Dropping the caller's ``AWS_*`` keeps real credentials away from the local stack.
    """
    dropped = ("AWS_", "EGRESS_", "SFT_AGENT_", "SFT_CLIENT_", "SFT_CA_")
    env = {k: v for k, v in base.items() if k == STATE_DIR_MARKER or not k.startswith(dropped)}
    env.update(
        AWS_ACCESS_KEY_ID=EMULATOR_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=EMULATOR_CREDENTIALS["aws_secret_access_key"],
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def record_pids(state_dir: Path, children: Sequence[Child]) -> None:
    """Write the started children's pids for :func:`stop_leftovers` of a later run."""
    pids = {c.name: c.process.pid for c in children if c.process is not None}
    write_atomically(state_dir / PIDS_FILE, json.dumps(pids))


def forget_pids(state_dir: Path) -> None:
    """Remove the pids file once the children are stopped."""
    with contextlib.suppress(OSError):
        (state_dir / PIDS_FILE).unlink()
