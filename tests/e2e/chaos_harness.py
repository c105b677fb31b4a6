"""Shared machinery of the crash tests: deterministic encrypted data, the daemons as processes, checks.

``test_chaos`` and ``test_crash_resume`` prove DESIGN.md §12 "Exactly once" with real
processes (``egress run``, ``sft-agent run``, ``sft-agent receiver``), the session's moto
server, mutual TLS with certificates generated here, and SIGKILL. Everything the two
tests share lives here: the data (a seeded AES-CTR keystream, so a file of any size is
reproduced without being kept, and only its SHA-256 is remembered), the processes with
their JSON logs, ledger and queue inspection, and :class:`Checks`, which evaluates every
promise and reports all the broken ones together with the logs behind them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import yaml
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from egress.devstack.bootstrap import MAX_RECEIVE_COUNT
from egress.devstack.encrypt import envelope_encrypt
from sft_agent.certs import issue, make_ca, write_pair
from tests.conftest import REGION, free_port
from tests.e2e.conftest import Stack

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# The worker's and the queue's visibility timeout in both tests, and the heartbeat that
# extends it: short, so a dead worker's message (and claim) comes back within seconds.
VISIBILITY_SECONDS = 10
HEARTBEAT_SECONDS = 2
# The project's own redrive setting (egress local bootstrap, Terraform): a message is
# moved to the DLQ on its sixth receive.
REDRIVE_MAX_RECEIVE_COUNT = MAX_RECEIVE_COUNT

_IN_MEMORY_LIMIT = 32 * MIB  # larger ciphertexts are spooled to disk before the PUT


# -- data ------------------------------------------------------------------------------


def keystream(seed: str, size: int, *, chunk: int = MIB) -> Iterator[bytes]:
    """``size`` pseudo-random bytes determined by ``seed`` (AES-256-CTR of zeros, GB/s)."""
    key = hashlib.sha256(seed.encode("utf-8")).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(chunk)
    left = size
    while left > 0:
        step = min(chunk, left)
        yield encryptor.update(zeros if step == chunk else zeros[:step])
        left -= step


@dataclass(frozen=True)
class Expected:
    """One source object and what its delivered plaintext must be."""

    source_key: str
    name: str  # delivered name relative to the route's destination folder (``.enc`` dropped)
    size: int
    sha256: str


def upload_envelope(stack: Stack, key: str, *, seed: str, size: int, spool: Path) -> Expected:
    """Put an envelope-encrypted object (what producers write) whose plaintext is ``keystream(seed)``.

    The plaintext is never held whole: it is hashed while it is encrypted, and a large
    ciphertext goes through a file in ``spool`` (then deleted) rather than memory.
    """
    digest = hashlib.sha256()

    def plain() -> Iterator[bytes]:
        for chunk in keystream(seed, size):
            digest.update(chunk)
            yield chunk

    metadata, body = envelope_encrypt(stack.aws.kms, key_id=stack.kms_key_arn, chunks=plain())
    if size <= _IN_MEMORY_LIMIT:
        stack.aws.s3.put_object(Bucket=stack.source_bucket, Key=key, Body=b"".join(body), Metadata=metadata)
    else:
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / hashlib.sha256(key.encode()).hexdigest()[:16]
        with path.open("wb") as out:
            for piece in body:
                out.write(piece)
        try:
            # One PUT, not a multipart upload: the source carries no composite checksum.
            with path.open("rb") as handle:
                stack.aws.s3.put_object(Bucket=stack.source_bucket, Key=key, Body=handle, Metadata=metadata)
        finally:
            path.unlink()
    name = key.rsplit("/", 1)[-1].removesuffix(".enc")
    return Expected(source_key=key, name=name, size=size, sha256=digest.hexdigest())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_s3(stack: Stack, bucket: str, key: str) -> tuple[int, str] | None:
    """(size, SHA-256) of an object, computed here (never botocore's checksum validation)."""
    try:
        body = stack.aws.s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    digest = hashlib.sha256()
    size = 0
    for chunk in body.iter_chunks(4 * MIB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# -- AWS-side inspection ---------------------------------------------------------------


def enable_versioning(stack: Stack) -> None:
    """Versioning on the destination bucket: every completed write of a key leaves a version."""
    stack.aws.s3.put_bucket_versioning(
        Bucket=stack.destination_bucket, VersioningConfiguration={"Status": "Enabled"}
    )


def versions_per_key(stack: Stack) -> dict[str, int]:
    counts: dict[str, int] = {}
    paginator = stack.aws.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=stack.destination_bucket):
        for version in page.get("Versions", []):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def open_uploads(stack: Stack) -> list[dict[str, Any]]:
    """Incomplete multipart uploads in the destination bucket."""
    answer = stack.aws.s3.list_multipart_uploads(Bucket=stack.destination_bucket)
    return [dict(upload) for upload in answer.get("Uploads", [])]


def upload_exists(stack: Stack, key: str, upload_id: str) -> bool:
    try:
        stack.aws.s3.list_parts(Bucket=stack.destination_bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return False
        raise
    return True


def queue_counts(stack: Stack) -> dict[str, int]:
    """Visible, in flight and delayed messages of the flag queue."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    answer = stack.aws.sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=names)  # type: ignore[arg-type]
    attributes = answer["Attributes"]
    return {
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def queue_drained(stack: Stack) -> bool:
    return not any(queue_counts(stack).values())


def dlq_report(stack: Stack, *, notes: Mapping[str, str] | None = None) -> list[str]:
    """One line per message in the DLQ: its flag key, the worker's reason/detail or the
    redrive's mark (no reason attribute), and ``notes[flag key]`` if given."""
    lines = []
    for message in stack.dlq_messages():
        attributes = message.get("MessageAttributes", {})
        reason = attributes.get("reason", {}).get("StringValue")
        detail = attributes.get("detail", {}).get("StringValue")
        flag = flag_key_of(message.get("Body", ""))
        if reason:
            line = f"{flag}: reason={reason} detail={detail}"
        else:
            line = (
                f"{flag}: no reason attribute (moved by the queue's redrive policy, "
                f"maxReceiveCount {REDRIVE_MAX_RECEIVE_COUNT})"
            )
        note = (notes or {}).get(flag)
        lines.append(f"{line}{' — ' + note if note else ''}")
    return sorted(lines)


def flag_key_of(body: str) -> str:
    """The flag key of an S3 notification body (moto encodes ``/`` as ``%2F``)."""
    try:
        records = json.loads(body).get("Records", [])
        return unquote_plus(str(records[0]["s3"]["object"]["key"]))
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        return body[:120]


def ledger_rows(stack: Stack) -> list[dict[str, Any]]:
    """Every ledger row as plain Python values (whatever the table's key schema)."""
    deserializer = TypeDeserializer()
    rows = []
    paginator = stack.aws.dynamodb.get_paginator("scan")
    for page in paginator.paginate(TableName=stack.ledger_table, ConsistentRead=True):
        for item in page.get("Items", []):
            row = {name: deserializer.deserialize(value) for name, value in item.items()}
            rows.append({k: int(v) if isinstance(v, Decimal) and v == int(v) else v for k, v in row.items()})
    return rows


def object_rows(stack: Stack) -> list[dict[str, Any]]:
    """The per-object rows (``record = obj#<name>``) of docs/exactly-once.md; none on older code."""
    return [row for row in ledger_rows(stack) if str(row.get("record", "")).startswith("obj#")]


# -- files -----------------------------------------------------------------------------


def temp_files(*folders: Path) -> list[Path]:
    """Temporary names (``.*.part``) anywhere below ``folders``, hidden folders included."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [p for p in folder.rglob(".*.part") if p.is_file()]
    return sorted(found)


def visible_files(folder: Path) -> list[str]:
    """Regular files below ``folder`` that are not hidden and not below a hidden folder."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [
            Path(root, name).relative_to(folder).as_posix() for name in files if not name.startswith(".")
        ]
    return sorted(found)


# -- processes -------------------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    """A process's JSON log lines; other lines (tracebacks, prints) become ``{"raw": line}``."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        events.append(value if isinstance(value, dict) else {"event": None, "raw": line})
    return events


_QUIET_KEYS = frozenset({"event", "timestamp", "level", "body_hint", "bucket", "recipient", "queue"})


def compact(line: dict[str, Any]) -> str:
    """One log line for a human: time, event, then the other fields (message ids shortened)."""
    if "raw" in line:
        return str(line["raw"])
    fields = []
    for key, value in line.items():
        if key in _QUIET_KEYS:
            continue
        if key == "message_id":
            value = str(value)[:8]
        fields.append(f"{key}={value}")
    return f"{str(line.get('timestamp', ''))[11:23]} {line.get('event')} " + " ".join(fields)


@dataclass
class Daemon:
    """One run of a program as a child process, its output in ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    killed: bool = False

    def start(self) -> Daemon:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it: nothing of it runs any more when this returns."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.killed = True
        self.process.wait(timeout=10)
        self.ended_at = time.monotonic()

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM (the ECS stop), then SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.ended_at = self.ended_at or time.monotonic()
        return self.process.returncode

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        found = read_events(self.log_path)
        return found if event is None else [line for line in found if line.get("event") == event]

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` log lines, JSON ones in a compact ``time event key=value`` form."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(compact(line) for line in read_events(self.log_path)[-lines:])


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    also: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test (with ``also()``'s text) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{also() if also else ''}")
        time.sleep(interval)


def aws_env(stack: Stack) -> dict[str, str]:
    """The environment a child needs to reach the moto server (and nothing of the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGRESS_", "SFT_AGENT_", "AWS_"))}
    env.update(
        AWS_ENDPOINT_URL=stack.endpoint,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S105 - moto's fake credentials
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_daemon(stack: Stack, log_path: Path, *, name: str, **overrides: str) -> Daemon:
    """``egress run`` on the stack's queue, visibility ``VISIBILITY_SECONDS``, not started yet."""
    env = aws_env(stack)
    env.update(
        EGRESS_QUEUE_URL=stack.queue_url,
        EGRESS_ROUTES_TABLE=stack.routes_table,
        EGRESS_LEDGER_TABLE=stack.ledger_table,
        EGRESS_SFT_ROOT=str(stack.sft_root),
        EGRESS_KMS_KEY_ARNS=stack.kms_key_arn,
        EGRESS_METRICS_PORT=str(free_port()),
        EGRESS_METRICS_HOST="127.0.0.1",
        EGRESS_LOG_FORMAT="json",
        EGRESS_WAIT_TIME_SECONDS="1",
        EGRESS_GET_STRATEGY="single",  # moto reads a whole object on every ranged GET
        EGRESS_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_SECONDS),
        EGRESS_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        EGRESS_BACKOFF_BASE_SECONDS="1",
        EGRESS_BACKOFF_MAX_SECONDS="2",
        EGRESS_RETRY_ATTEMPTS="2",
        EGRESS_ROUTE_CACHE_SECONDS="1",
        EGRESS_PART_SIZE_MB="5",
        EGRESS_FREE_SPACE_MARGIN_MB="1",
        EGRESS_SHUTDOWN_GRACE_SECONDS="5",
    )
    env.update(overrides)
    return Daemon(name=name, argv=[sys.executable, "-m", "egress.cli", "run"], env=env, log_path=log_path)


def worker_started(daemon: Daemon) -> bool:
    if not daemon.alive():
        raise AssertionError(
            f"{daemon.name} exited with {daemon.process and daemon.process.returncode}:\n{daemon.tail()}"
        )
    return bool(daemon.events("worker_started"))


# -- mutual TLS ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, the receiver's certificate (127.0.0.1) and the agent's client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> TlsFiles:
    ca = make_ca(common_name="chaos test CA", days=2)
    server = issue(ca, common_name="localhost", hosts=["localhost", "127.0.0.1"], client=False, days=1)
    client = issue(ca, common_name="sft-agent-chaos", client=True, days=1)
    files = TlsFiles(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
    )
    write_pair(ca, cert_path=files.ca, key_path=folder / "ca-key.pem")
    write_pair(server, cert_path=files.server_cert, key_path=files.server_key)
    write_pair(client, cert_path=files.client_cert, key_path=files.client_key)
    return files


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Receiver:
    """``sft-agent receiver``: mTLS, writes what it receives under ``out``, logs ``file_received``."""

    daemon: Daemon
    port: int
    out: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def received(self) -> dict[str, int]:
        """How many times each stored name (relative to ``out``) was received."""
        counts: dict[str, int] = {}
        for line in self.daemon.events("file_received"):
            stored = str(line.get("stored", ""))
            counts[stored] = counts.get(stored, 0) + 1
        return counts


def start_receiver(stack: Stack, folder: Path, tls: TlsFiles) -> Receiver:
    port = free_port()
    out = folder / "received"
    argv = [
        sys.executable, "-m", "sft_agent.cli", "receiver",
        "--listen", f"127.0.0.1:{port}",
        "--cert", str(tls.server_cert), "--key", str(tls.server_key), "--ca", str(tls.ca),
        "--out", str(out),
    ]  # fmt: skip
    daemon = Daemon(name="receiver", argv=argv, env=aws_env(stack), log_path=folder / "receiver.log").start()
    wait_until(lambda: _port_open(port) or not daemon.alive(), timeout=20, what="the receiver's port")
    assert daemon.alive(), daemon.tail()
    return Receiver(daemon=daemon, port=port, out=out)


@dataclass
class Agent:
    """``sft-agent run`` pushing the whole SFT root (recursively) to the receiver."""

    daemon: Daemon
    metrics_port: int
    config_path: Path
    error_folder: Path
    ledger: bool
    ledger_note: str


def agent_document(
    stack: Stack, tls: TlsFiles, receiver: Receiver, *, error_folder: Path, metrics_port: int, ledger: bool
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "tls": {
            "client_cert": str(tls.client_cert),
            "client_key": str(tls.client_key),
            "ca_bundle": str(tls.ca),
        },
        "defaults": {
            "poll_interval": "100ms",
            "min_age": "300ms",
            "threads": 3,
            "connect_timeout": "2s",
            "read_timeout": "30s",
            "retry": {"max_attempts": 8, "initial_delay": "300ms", "max_delay": "2s", "multiplier": 2},
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "routes": [
            {
                "name": "chaos",
                "source": str(stack.sft_root),
                "recursive": True,
                "actions": [{"http": {"url": f"{receiver.url}/in", "method": "PUT"}}],
                "delete_on_send": True,
                "error_folder": str(error_folder),
            }
        ],
    }
    if ledger:
        # docs/exactly-once.md: the agent records each file's fate in the ledger.
        document["ledger"] = {"table": stack.ledger_table, "sft_root": str(stack.sft_root)}
    return document


def agent_ledger_wanted(probe: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """Whether to give the agent a ``ledger:`` section: ``CHAOS_AGENT_LEDGER`` = 1 (default), 0 or auto.

    On by default: the agent's receipts are part of the promise (every SFT row ``sent``).
    ``auto`` asks ``sft-agent check`` whether it accepts the section, to run the test
    against an agent from before the exactly-once work.
    """
    wanted = os.environ.get("CHAOS_AGENT_LEDGER", "1").strip().lower()
    if wanted in {"1", "true", "yes", "on"}:
        return True, "ledger section forced on (CHAOS_AGENT_LEDGER)"
    if wanted in {"0", "false", "no", "off"}:
        return False, "ledger section forced off (CHAOS_AGENT_LEDGER)"
    return probe()


def start_agent(stack: Stack, folder: Path, tls: TlsFiles, receiver: Receiver) -> Agent:
    error_folder = folder / "agent-error"
    port = free_port()
    config_path = folder / "agent.yaml"
    env = aws_env(stack)

    def write(ledger: bool) -> None:
        document = agent_document(
            stack, tls, receiver, error_folder=error_folder, metrics_port=port, ledger=ledger
        )
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    def probe() -> tuple[bool, str]:
        write(True)
        answer = subprocess.run(
            [sys.executable, "-m", "sft_agent.cli", "check", "--offline", "--config", str(config_path)],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        if answer.returncode == 0:
            return True, "the agent accepts a ledger section (sft-agent check passed)"
        problem = " ".join(line.strip() for line in answer.stderr.splitlines() if "ledger" in line)
        return (
            False,
            f"the agent refuses a ledger section, running without it: {problem or answer.stderr[-300:]}",
        )

    ledger, note = agent_ledger_wanted(probe)
    write(ledger)
    argv = [sys.executable, "-m", "sft_agent.cli", "run", "--config", str(config_path)]
    daemon = Daemon(name="agent", argv=argv, env=env, log_path=folder / "agent.log").start()

    def healthy() -> bool:
        if not daemon.alive():
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    wait_until(healthy, timeout=30, what="the agent's /healthz")
    assert daemon.alive(), daemon.tail()
    return Agent(
        daemon=daemon,
        metrics_port=port,
        config_path=config_path,
        error_folder=error_folder,
        ledger=ledger,
        ledger_note=note,
    )


def stop_all(daemons: Iterable[Daemon]) -> None:
    for daemon in daemons:
        if daemon.alive():
            daemon.stop(timeout=15)


# -- verdicts --------------------------------------------------------------------------


@dataclass
class Checks:
    """Every promise checked, the broken ones reported together (one failure hides no other)."""

    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed.append(what)
        else:
            self.failures.append(f"{what}{': ' + detail if detail else ''}")
        return ok

    def report(self) -> str:
        lines = [f"  ok    {what}" for what in self.passed]
        lines += [f"  FAIL  {what}" for what in self.failures]
        return "\n".join(lines)

    def conclude(self, context: Callable[[], str]) -> None:
        """Print the verdicts; fail with them and ``context()`` (logs, DLQ) if any promise broke."""
        print("\n" + self.report(), flush=True)
        if self.failures:
            pytest.fail(
                f"{len(self.failures)} exactly-once promise(s) broken:\n"
                + "\n".join(f"  - {line}" for line in self.failures)
                + "\n\n"
                + context(),
                pytrace=False,
            )


def shorten(items: Iterable[Any], limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def events_summary(daemons: Iterable[Daemon], names: Iterable[str]) -> dict[str, int]:
    """How many log lines of each event name the daemons wrote together."""
    wanted = set(names)
    counts = dict.fromkeys(sorted(wanted), 0)
    for daemon in daemons:
        for line in daemon.events():
            if line.get("event") in wanted:
                counts[str(line["event"])] += 1
    return counts


def reasons_summary(daemons: Iterable[Daemon]) -> dict[str, int]:
    """Reasons of the worker's retry and failure lines (e.g. ``in_progress_elsewhere``)."""
    counts: dict[str, int] = {}
    for daemon in daemons:
        for line in daemon.events():
            if line.get("event") == "route_held_elsewhere":
                key = "route held by another worker (requeued)"
                counts[key] = counts.get(key, 0) + 1
                continue
            reason = line.get("reason")
            if reason and line.get("event") in {
                "route_failed_retrying", "route_failed_permanently", "message_retry_scheduled",
                "message_dead_lettered",
            }:  # fmt: skip
                key = f"{line['event']}: {reason}"
                counts[key] = counts.get(key, 0) + 1
    return counts


def tails(daemons: Iterable[Daemon], *, lines: int = 25) -> str:
    parts = []
    for daemon in daemons:
        state = "killed" if daemon.killed else ("running" if daemon.alive() else "exited")
        parts.append(f"----- {daemon.name} ({state}, {daemon.log_path}) -----\n{daemon.tail(lines)}")
    return "\n".join(parts)
