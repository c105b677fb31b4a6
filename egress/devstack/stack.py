"""``egress local up``: the moto server in-process, bootstrap, then the receiver, the worker and
the SFT agent as child processes, a banner saying how to use them, and teardown on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from egress.aws import AwsConfig, build_clients, emulator_session
from egress.devstack.bootstrap import (
    DEFAULT_LEDGER_TABLE,
    DEFAULT_ROUTES_TABLE,
    LocalResources,
    bootstrap,
    route_rows,
)
from egress.devstack.commands import banner_commands
from egress.devstack.errors import LocalSetupError
from egress.devstack.processes import (
    STATE_DIR_MARKER,
    Child,
    child_env,
    client_host,
    forget_pids,
    http_ok,
    log_tail,
    pick_port,
    port_is_free,
    record_pids,
    stop_children,
    stop_leftovers,
    tls_handshake_ok,
    wait_until_ready,
)
from egress.devstack.stackfile import CHECKOUT, DEFAULT_STATE_DIR, remove_stack_file, write_stack_file
from egress.kernel.fsutil import write_atomically
from sft_agent.certs import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY

DEFAULT_SAMPLE_DIR = Path("config/sample-data")
DEFAULT_PUBLISH_PREFIX = "exports/opsmi/"
DEFAULT_PORT = 4566
AGENT_ROUTE = "sft-root"


def agent_config(
    *,
    sft_root: Path,
    error_folder: Path,
    receiver_url: str,
    certs: Path,
    metrics_port: int,
    metrics_host: str = "127.0.0.1",
    ledger_table: str | None = None,
    events_topic_arn: str | None = None,
) -> dict[str, Any]:
    """The SFT agent's YAML for the local stack: one recursive route over the whole SFT root.

    Each file is POSTed to the receiver's root with its path below the SFT root as its name
    (``warehouse/orders/part-0.csv``), which the receiver keeps, so every folder an SFT row
    writes to — one added by ``egress routes put`` while the stack runs included — is sent
    without a restart. ``error_folder`` must be outside ``sft_root`` (a recursive route would
    send parked files again); the agent's work folder is the hidden ``.sft-agent`` in the
    root, which the scan skips. With ``ledger_table`` the agent records each file's fate
    there (sent, parked), so ``egress history --files`` shows it; with ``events_topic_arn``
    too it publishes ``received`` once every file of a delivery was sent.
    """
    ledger: dict[str, Any] = {}
    if ledger_table:
        section = {"table": ledger_table, "sft_root": str(sft_root), "unsent_check_interval": "10s"}
        if events_topic_arn:
            section["events_topic_arn"] = events_topic_arn
        ledger = {"ledger": section}
    return ledger | {
        "tls": {
            "client_cert": str(certs / CLIENT_CERT),
            "client_key": str(certs / CLIENT_KEY),
            "ca_bundle": str(certs / CA_CERT),
            "verify_hostname": True,
            "min_version": "TLSv1.2",
        },
        "defaults": {
            "poll_interval": "1s",
            "min_age": "2s",
            "threads": 3,
            "retry": {"max_attempts": 5, "initial_delay": "2s", "max_delay": "30s", "multiplier": 2},
        },
        "metrics": {"host": metrics_host, "port": metrics_port},
        "logging": {"format": "console", "level": "info"},
        "shutdown_grace": "10s",
        "routes": [
            {
                "name": AGENT_ROUTE,
                "source": f"{sft_root}/",
                "recursive": True,
                "filename_regex": ".*",
                "actions": [{"http": {"url": f"{receiver_url}/", "method": "POST"}}],
                "delete_on_send": True,
                "error_folder": str(error_folder),
            }
        ],
    }


def publish_prefix(rows: Sequence[Mapping[str, Any]], *, source_bucket: str) -> str:
    """A prefix the sample routes deliver from, for the banner's publish command."""
    for row in rows:
        prefix = str(row.get("source_prefix", ""))
        if row.get("source_bucket") in (None, source_bucket) and prefix and not re.search(r"[$*]", prefix):
            return prefix if prefix.endswith("/") else prefix + "/"
    return DEFAULT_PUBLISH_PREFIX


def find_repo_path(relative: Path) -> Path | None:
    """``relative`` from the current folder, else from the source checkout this module is in."""
    if relative.exists():
        return relative
    candidate = CHECKOUT / relative
    return candidate if candidate.exists() else None


@dataclass
class UpOptions:
    """The knobs of ``egress local up``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = DEFAULT_STATE_DIR
    routes_file: Path | None = None
    routes_table: str = DEFAULT_ROUTES_TABLE
    ledger_table: str = DEFAULT_LEDGER_TABLE
    region: str = "eu-west-2"
    worker: bool = True
    agent: bool = True
    ready_file: Path | None = None
    timeout: float = 60.0
    stop_grace: float = 15.0
    # None: the usual port (8091, 9090, 9091) if free, else any free one.
    receiver_port: int | None = None
    worker_port: int | None = None
    agent_port: int | None = None


class _Stop(Exception):  # noqa: N818 - a request, not a failure
    """Raised in the main thread when a signal asks ``up`` to stop."""


class LocalStack:
    """``egress local up``: moto in-process, bootstrap, then the three daemons."""

    def __init__(self, options: UpOptions, *, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.state_dir = options.state_dir.resolve()
        self.children: list[Child] = []
        self._server: Any = None
        self._request_log: logging.Handler | None = None
        self._signals = 0
        self._stop = threading.Event()
        self._stack_file = False

    def say(self, line: str) -> None:
        """A progress line on stderr (stdout holds only the banner)."""
        print(f"[local] {line}", file=self.err, flush=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()
        if self._signals > 1:
            # A second Ctrl-C: no more patience.
            for child in self.children:
                child.signal(signal.SIGKILL)

    def run(self) -> int:
        """Bring the stack up, print the banner, wait for a signal, tear everything down."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                resources, info = self._up()
            except LocalSetupError as exc:
                print(f"egress local up: {exc}", file=self.err, flush=True)
                return 1
            except _Stop:
                self.say("stopped while starting")
                return 0
            self._banner(resources, info)
            return self._watch()
        finally:
            self._down()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Ask a running :meth:`run` to tear down (what SIGTERM does)."""
        self._stop.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stop

    def _up(self) -> tuple[LocalResources, dict[str, Any]]:
        options = self.options
        state = self.state_dir
        if not port_is_free(options.host, options.port):
            raise LocalSetupError(
                f"port {options.host}:{options.port} is taken (LocalStack or another `egress local up`?). "
                "Stop it, or pass --port to use another."
            )
        state.mkdir(parents=True, exist_ok=True)
        stop_leftovers(state, report=self.say)
        remove_stack_file(state)  # one a killed `up` left behind
        # Before anything starts, so a port asked for and taken fails fast.
        receiver_port, worker_port, agent_port = self._child_ports()
        if options.ready_file is not None:
            with contextlib.suppress(OSError):
                options.ready_file.unlink()
        logs = state / "logs"
        sft_root = state / "data-egress"
        # Outside the SFT root: the agent's one route scans all of it (see agent_config).
        sft_errors = state / "sft-errors"
        received = state / "received"
        certs = state / "certs"
        for path in (logs, sft_root, sft_errors, received):
            path.mkdir(parents=True, exist_ok=True)

        endpoint = self._start_moto(logs / "moto.log")
        clients = build_clients(
            AwsConfig(region=options.region, endpoint_url=endpoint),
            session=emulator_session(options.region),
        )
        self.say(f"bootstrapping {endpoint}")
        routes_file = options.routes_file
        rows = route_rows(routes_file) if routes_file is not None else []
        resources = bootstrap(
            clients,
            routes_table=options.routes_table,
            ledger_table=options.ledger_table,
            routes_file=routes_file,
            report=self.say,
        )
        self._check_stop()

        self.say("generating throwaway certificates")
        self._dev_certs(certs, logs / "dev-certs.log")

        python = sys.executable
        near = client_host(options.host)
        receiver_url = f"https://localhost:{receiver_port}"
        base = dict(os.environ) | {STATE_DIR_MARKER: str(state)}
        self.children.append(
            Child(
                name="receiver",
                argv=[
                    python,
                    "-m",
                    "sft_agent.cli",
                    "receiver",
                    "--listen",
                    f"{options.host}:{receiver_port}",
                    "--cert",
                    str(certs / SERVER_CERT),
                    "--key",
                    str(certs / SERVER_KEY),
                    "--ca",
                    str(certs / CA_CERT),
                    "--out",
                    str(received),
                ],
                log_path=logs / "receiver.log",
                ready=lambda: tls_handshake_ok(
                    near,
                    receiver_port,
                    server_name="localhost",
                    ca=certs / CA_CERT,
                    cert=certs / CLIENT_CERT,
                    key=certs / CLIENT_KEY,
                ),
                where=f"{near}:{receiver_port} (TLS)",
                env=child_env({}, base=base),
            )
        )
        if options.worker:
            worker_env = resources.worker_env() | {
                "AWS_ENDPOINT_URL": endpoint,
                "EGRESS_SFT_ROOT": str(sft_root),
                "EGRESS_METRICS_HOST": options.host,
                "EGRESS_METRICS_PORT": str(worker_port),
                "EGRESS_LOG_FORMAT": "console",
                "EGRESS_SHUTDOWN_GRACE_SECONDS": str(max(1.0, options.stop_grace - 5)),
                "EGRESS_WAIT_TIME_SECONDS": "5",
                # moto reads the whole object for every ranged GET: one GET per object.
                "EGRESS_GET_STRATEGY": "single",
            }
            self.children.append(
                Child(
                    name="worker",
                    argv=[python, "-m", "egress.cli", "run"],
                    log_path=logs / "worker.log",
                    ready=lambda: http_ok(f"http://{near}:{worker_port}/healthz"),
                    where=f"http://{near}:{worker_port}/healthz",
                    env=child_env(worker_env, base=base),
                )
            )
        agent_config_path = state / "sft-agent.yaml"
        if options.agent:
            config = agent_config(
                sft_root=sft_root,
                error_folder=sft_errors,
                receiver_url=receiver_url,
                certs=certs,
                metrics_port=agent_port,
                metrics_host=options.host,
                ledger_table=resources.ledger_table,
                events_topic_arn=resources.events_topic_arn or None,
            )
            write_atomically(agent_config_path, yaml.safe_dump(config, sort_keys=False))
            self.children.append(
                Child(
                    name="sft-agent",
                    argv=[python, "-m", "sft_agent.cli", "run", "--config", str(agent_config_path)],
                    log_path=logs / "sft-agent.log",
                    ready=lambda: http_ok(f"http://{near}:{agent_port}/healthz"),
                    where=f"http://{near}:{agent_port}/healthz",
                    env=child_env(
                        {
                            "SFT_AGENT_CONFIG": str(agent_config_path),
                            "AWS_ENDPOINT_URL": endpoint,
                            "AWS_REGION": resources.region,
                        },
                        base=base,
                    ),
                )
            )
        for child in self.children:
            self._check_stop()
            self.say(f"starting {child.name} (log {child.log_path})")
            child.start()
        record_pids(state, self.children)
        if not wait_until_ready(self.children, deadline=time.monotonic() + options.timeout, stop=self._stop):
            raise _Stop
        sample_dir = find_repo_path(DEFAULT_SAMPLE_DIR)
        info = {
            "endpoint_url": endpoint,
            "region": options.region,
            "state_dir": str(state),
            "sft_root": str(sft_root),
            "sft_error_dir": str(sft_errors),
            "received_dir": str(received),
            "receiver_url": receiver_url,
            "worker_url": f"http://{near}:{worker_port}" if options.worker else None,
            "agent_url": f"http://{near}:{agent_port}" if options.agent else None,
            "agent_config": str(agent_config_path) if options.agent else None,
            "certs_dir": str(certs),
            "logs": {child.name: str(child.log_path) for child in self.children},
            "publish_prefix": publish_prefix(rows, source_bucket=resources.source_bucket),
            "sample_dir": str(sample_dir) if sample_dir is not None else None,
            "pid": os.getpid(),
        }
        return resources, info

    def _child_ports(self) -> tuple[int, int, int]:
        """The receiver's, worker's and agent's ports: as asked (refused if taken), else picked."""
        options = self.options
        chosen: list[int] = [options.port]
        for flag, asked, usual in (
            ("--receiver-port", options.receiver_port, 8091),
            ("--worker-port", options.worker_port, 9090),
            ("--agent-port", options.agent_port, 9091),
        ):
            if asked is None:
                chosen.append(pick_port(options.host, usual, avoid=chosen))
            elif not 0 < asked < 65536:
                raise LocalSetupError(f"{flag} {asked} is not a TCP port (1-65535)")
            elif asked in chosen or not port_is_free(options.host, asked):
                raise LocalSetupError(f"port {options.host}:{asked} ({flag}) is taken; pass another")
            else:
                chosen.append(asked)
        _moto, receiver, worker, agent = chosen
        return receiver, worker, agent

    def _start_moto(self, log_path: Path) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise LocalSetupError(
                "the embedded AWS needs moto's server: pip install 'data-egress[local]'"
            ) from exc

        options = self.options
        self.say(f"starting the moto server on {options.host}:{options.port} (requests logged to {log_path})")
        # werkzeug logs every request to stderr unless its logger has a handler: give it a file.
        requests = logging.getLogger("werkzeug")
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        requests.addHandler(handler)
        requests.setLevel(logging.INFO)
        requests.propagate = False
        self._request_log = handler
        from egress.emulator import prepare_embedded_moto

        prepare_embedded_moto()
        server = ThreadedMotoServer(ip_address=options.host, port=options.port, verbose=False)
        # start() waits forever if the server thread dies on bind: run it with a deadline.
        starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
        starter.start()
        starter.join(timeout=15)
        if starter.is_alive():
            raise LocalSetupError(f"the moto server did not start on {options.host}:{options.port}")
        self._server = server
        endpoint = f"http://{client_host(options.host)}:{options.port}"
        deadline = time.monotonic() + 10
        while not http_ok(f"{endpoint}/moto-api/data.json"):
            if time.monotonic() > deadline:
                raise LocalSetupError(f"the moto server on {endpoint} does not answer")
            time.sleep(0.1)
        return endpoint

    def _dev_certs(self, certs: Path, log_path: Path) -> None:
        hosts = ["localhost", "127.0.0.1"]
        if self.options.host not in hosts:
            hosts.append(self.options.host)
        argv = [sys.executable, "-m", "sft_agent.cli", "dev-certs", "--out", str(certs), "--hosts", *hosts]
        with log_path.open("wb") as log:
            try:
                code = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=60,
                    check=False,
                    env=child_env({}, base=os.environ),
                ).returncode
            except subprocess.TimeoutExpired as exc:
                raise LocalSetupError("sft-agent dev-certs did not finish within 60 s") from exc
        missing = [
            n for n in (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY) if not (certs / n).exists()
        ]
        if code != 0 or missing:
            raise LocalSetupError(
                f"sft-agent dev-certs failed (exit {code}; missing {', '.join(missing) or 'nothing'}).\n"
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )

    def _banner(self, resources: LocalResources, info: dict[str, Any]) -> None:
        endpoint = info["endpoint_url"]
        logs = info["logs"]
        rows = [
            ("AWS endpoint", f"{endpoint}  (moto server, region {resources.region}, any credentials)"),
            ("source bucket", f"s3://{resources.source_bucket}  (flag: {resources.flag_name})"),
            ("destination", f"s3://{resources.destination_bucket}"),
            ("queue", f"{resources.queue_url}  (DLQ {resources.dlq_url})"),
            ("tables", f"{resources.routes_table} (routes), {resources.ledger_table} (ledger)"),
            ("KMS key", f"{resources.kms_alias}  {resources.kms_key_arn}"),
            ("events", f"{resources.events_topic_arn or 'none'} → {resources.events_queue_url or '-'}"),
            ("SFT root", info["sft_root"]),
            ("receiver", f"{info['receiver_url']} → {info['received_dir']}"),
            (
                "worker",
                f"{info['worker_url']}/metrics" if info["worker_url"] else "not started (--no-worker)",
            ),
            (
                "sft-agent",
                f"{info['agent_url']}/metrics" if info["agent_url"] else "not started (--no-agent)",
            ),
        ]
        rows += [(f"log {name}", path) for name, path in logs.items()]
        rule = "─" * 78
        commands = banner_commands(resources, info)
        lines = [rule, " data-egress local stack is up", rule]
        lines += [f"  {label:<15} {value}" for label, value in rows]
        lines += [rule, *commands, " Ctrl-C stops everything.", rule]
        print("\n".join(lines), file=self.out, flush=True)
        facts = {**resources.as_dict(), **info}
        write_stack_file(self.state_dir, facts)
        self._stack_file = True
        if self.options.ready_file is not None:
            self.options.ready_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.options.ready_file, json.dumps(facts, indent=2))

    def _watch(self) -> int:
        while not self._stop.wait(0.5):
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    print(
                        f"egress local up: {child.name} exited with code {code}; stopping the stack.\n"
                        f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}",
                        file=self.err,
                        flush=True,
                    )
                    return 1
        self.say("stopping")
        return 0

    def _down(self) -> None:
        if self._stack_file:  # never another `up`'s, found while refusing to start
            remove_stack_file(self.state_dir)
        stop_children(self.children, grace=self.options.stop_grace, report=self.say)
        if self.children:
            forget_pids(self.state_dir)
        if self.options.ready_file is not None:
            with contextlib.suppress(OSError):
                self.options.ready_file.unlink()
        if self._server is not None:
            stopper = threading.Thread(target=self._server.stop, name="moto-stop", daemon=True)
            stopper.start()
            stopper.join(timeout=5)
            self._server = None
        if self._request_log is not None:
            logging.getLogger("werkzeug").removeHandler(self._request_log)
            self._request_log.close()
            self._request_log = None
