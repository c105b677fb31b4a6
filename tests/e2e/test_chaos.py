"""Chaos: two workers SIGKILLed at random while flagged folders flow to S3 and, through the agent, to an mTLS receiver.

The promise under test (DESIGN.md §12 "Exactly once", docs/exactly-once.md): a flagged
folder reaches its recipient exactly once, through crashes. Two ``egress run`` workers
share one queue, one ledger table and one SFT root; one ``sft-agent run`` pushes that
root over mutual TLS to ``sft-agent receiver``. N folders of six envelope-encrypted files
(one of 8–24 MiB, so kills land mid-stream) are each routed to S3 and to SFT, both
decrypting. A seeded loop SIGKILLs one worker every 3–8 s (drawn at random, weighted
towards the one holding messages) and restarts it at once; each flag goes up shortly
before a kill, so most kills interrupt a delivery.

Knobs (environment): ``CHAOS_KILLS`` (default 10; ``make chaos`` runs 20; 0 is the
happy path), ``CHAOS_FOLDERS`` (default 12, or one a kill if that is more; at least
10), ``CHAOS_SEED`` (default: a fresh one, printed), ``CHAOS_AGENT_LEDGER`` (1, the
default, 0 or auto: whether the agent gets its ``ledger:`` section; auto asks ``sft-agent check``
whether it accepts one, so the test runs before and after that work).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from egress.aws import AwsClients
from tests.e2e.chaos_harness import (
    HEARTBEAT_SECONDS,
    MIB,
    REDRIVE_MAX_RECEIVE_COUNT,
    VISIBILITY_SECONDS,
    Agent,
    Checks,
    Daemon,
    Expected,
    Receiver,
    dlq_report,
    enable_versioning,
    events_summary,
    ledger_rows,
    make_pki,
    open_uploads,
    queue_counts,
    queue_drained,
    reasons_summary,
    sha256_file,
    sha256_s3,
    shorten,
    start_agent,
    start_receiver,
    stop_all,
    tails,
    temp_files,
    upload_envelope,
    versions_per_key,
    visible_files,
    wait_until,
    worker_daemon,
    worker_started,
)
from tests.e2e.conftest import FLAG, Stack, make_stack

KILLS = int(os.environ.get("CHAOS_KILLS", "10"))
# At least one folder a kill, so that every kill can find a delivery under way.
FOLDERS = max(10, int(os.environ.get("CHAOS_FOLDERS") or max(12, KILLS)))
SMALL_FILES = 5  # plus one large file: six a folder
GAP_SECONDS = (3.0, 8.0)  # between two kills
LEAD_SECONDS = (0.2, 0.9)  # a flag goes up this long before "its" kill
SETTLE_SECONDS = 2 * VISIBILITY_SECONDS + 60  # everything done this long after the last kill

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(int(120 + KILLS * GAP_SECONDS[1] + SETTLE_SECONDS + 120)),
]


@dataclass
class Kill:
    """One SIGKILL: when (seconds after the chaos began), whom, and what was under way then.

    ``held`` is the victim's messages (id → receive count, from its log); open uploads and
    temp files are counted over the whole destination (both workers, and earlier kills).
    """

    at: float
    victim: Daemon
    held: dict[str, int]
    open_uploads: int
    temp_files: int

    @property
    def messages_in_flight(self) -> int:
        return len(self.held)


class WorkerSlot:
    """One of the two workers: every incarnation of it, the current one last."""

    def __init__(self, stack: Stack, folder: Path, label: str) -> None:
        self.stack = stack
        self.folder = folder
        self.label = label
        self.runs: list[Daemon] = []

    @property
    def current(self) -> Daemon:
        return self.runs[-1]

    def start(self) -> Daemon:
        run = len(self.runs)
        daemon = worker_daemon(
            self.stack, self.folder / f"worker-{self.label}-{run:02d}.log", name=f"worker-{self.label}#{run}"
        )
        self.runs.append(daemon.start())
        return daemon

    def held(self) -> dict[str, int]:
        """Messages the current incarnation received and has not settled: id → receive count (its log)."""
        holding: dict[str, int] = {}
        for line in self.current.events():
            message_id, event = line.get("message_id"), str(line.get("event", ""))
            if not message_id:
                continue
            if event == "message_received":
                holding[str(message_id)] = int(line.get("receive_count") or 1)
            elif event in _SETTLED:
                holding.pop(str(message_id), None)
        return holding


# The worker's events that end its hold on a message.
_SETTLED = frozenset(
    {
        "message_done",
        "message_ignored",
        "message_dead_lettered",
        "message_released",
        "message_receipt_invalid",
        "message_retry_scheduled",
        "message_requeued",
    }
)


def _schedule(rng: random.Random) -> tuple[list[float], list[float]]:
    """Kill moments (3–8 s apart) and flag moments (seconds after the chaos began).

    A folder is delivered in about a second (both routes), far less than the gap between
    kills: flags spread evenly would mostly let the kills find idle workers. So the
    folders are shared out over the kills and each flag goes up 0.2–0.9 s before its
    kill, while the delivery it starts is likely mid-stream. Without kills every flag
    goes up at once.
    """
    kills: list[float] = []
    moment = 0.0
    for _ in range(KILLS):
        moment += rng.uniform(*GAP_SECONDS)
        kills.append(moment)
    if not kills:
        return [], [0.0] * FOLDERS
    flags = [
        max(0.0, kills[index * KILLS // FOLDERS] - rng.uniform(*LEAD_SECONDS)) for index in range(FOLDERS)
    ]
    return kills, flags


def _victim(rng: random.Random, slots: list[WorkerSlot]) -> tuple[WorkerSlot, dict[str, int]]:
    """The worker to kill and the messages it holds.

    Drawn at random, 3:1 towards the one holding a first delivery if only one does. A
    worker holding a message on its (maxReceiveCount − 1)th receive or later is spared
    while the other is not: killing it would make the queue's redrive policy dead-letter
    that message by design, which says nothing about exactly-once.
    """
    held = {slot.label: slot.held() for slot in slots}
    limit = REDRIVE_MAX_RECEIVE_COUNT - 1
    pool = [slot for slot in slots if all(count < limit for count in held[slot.label].values())] or slots
    fresh = [slot for slot in pool if 1 in held[slot.label].values()]
    slot = fresh[0] if len(fresh) == 1 and len(pool) > 1 and rng.random() < 0.75 else rng.choice(pool)
    return slot, held[slot.label]


def _kills_per_flag(kills: list[Kill], workers: list[Daemon]) -> dict[str, int]:
    """How many kills interrupted a delivery of each flag (message ids mapped to flag keys by the logs)."""
    flag_of = {
        str(line["message_id"]): str(line["flag_key"])
        for worker in workers
        for line in worker.events()
        if line.get("message_id") and line.get("flag_key")
    }
    counts: dict[str, int] = {}
    for kill in kills:
        for message_id in kill.held:
            flag = flag_of.get(message_id, f"message {message_id[:8]}")
            counts[flag] = counts.get(flag, 0) + 1
    return counts


def _publish_data(stack: Stack, rng: random.Random, spool: Path) -> dict[int, list[Expected]]:
    """Each folder: five small files (1 KiB–1 MiB) and one of 8–24 MiB, envelope-encrypted."""
    folders: dict[int, list[Expected]] = {}
    for index in range(FOLDERS):
        sizes = [rng.randint(1024, MIB) for _ in range(SMALL_FILES)] + [rng.randint(8 * MIB, 24 * MIB)]
        names = [f"part-{n}.csv.enc" for n in range(SMALL_FILES)] + ["big.bin.enc"]
        folders[index] = [
            upload_envelope(
                stack,
                f"chaos/f{index:02d}/{name}",
                seed=f"{rng.random()}/{index}/{name}",
                size=size,
                spool=spool,
            )
            for name, size in zip(names, sizes, strict=True)
        ]
    return folders


def _route_folders(stack: Stack) -> None:
    """Two rows a folder: ``p`` to S3 and ``p#sft`` to the SFT root, both decrypting."""
    for index in range(FOLDERS):
        prefix = f"chaos/f{index:02d}/"
        stack.put_route(
            source_prefix=prefix,
            pipeline_name="p",
            transfer_type="S3",
            destination_bucket=stack.destination_bucket,
            destination_prefix=f"f{index:02d}/",
            decrypt=True,
        )
        stack.put_route(
            source_prefix=prefix,
            pipeline_name="p#sft",
            transfer_type="SFT",
            destination_prefix=f"f{index:02d}",
            decrypt=True,
        )


def _sft_pending(stack: Stack) -> list[str]:
    """Files the agent has still to send: visible ones, and those it claimed and is sending.

    Claimed files sit in a ``claimed`` folder of the agent's working folder: directly
    (one agent per folder) or below an agent folder (several agents on one volume).
    """
    work = stack.sft_root / ".sft-agent"
    pending = visible_files(stack.sft_root)
    for claimed in sorted(work.glob("claimed")) + sorted(work.glob("*/claimed")):
        pending += [f"{claimed.relative_to(stack.sft_root)}/{name}" for name in visible_files(claimed)]
    return pending


def test_chaos_flagged_folders_reach_s3_and_the_receiver_exactly_once_through_sigkills(
    aws: AwsClients, moto_endpoint: str, tmp_path: Path, unique: str
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(
        f"\nchaos: seed={seed} kills={KILLS} folders={FOLDERS} visibility={VISIBILITY_SECONDS}s "
        f"heartbeat={HEARTBEAT_SECONDS}s maxReceiveCount={REDRIVE_MAX_RECEIVE_COUNT} logs={tmp_path}",
        flush=True,
    )
    # One generator each for the data, the timetable and the victims: the data and the
    # moments are the seed's alone; victims depend on who holds messages, hence on timing.
    data_rng, time_rng, victim_rng = (random.Random(f"{seed}/{use}") for use in ("data", "time", "victim"))
    began = time.monotonic()
    stack = make_stack(
        aws, moto_endpoint, tmp_path, unique,
        visibility=VISIBILITY_SECONDS, max_receive_count=REDRIVE_MAX_RECEIVE_COUNT,
    )  # fmt: skip
    enable_versioning(stack)
    _route_folders(stack)
    folders = _publish_data(stack, data_rng, tmp_path / "spool")
    data_bytes = sum(e.size for files in folders.values() for e in files)
    print(
        f"chaos: {FOLDERS} folders, {data_bytes / MIB:.0f} MiB of plaintext published in "
        f"{time.monotonic() - began:.1f}s",
        flush=True,
    )

    tls = make_pki(tmp_path)
    receiver: Receiver | None = None
    agent: Agent | None = None
    slots = [WorkerSlot(stack, tmp_path, label) for label in ("A", "B")]
    kills: list[Kill] = []
    try:
        receiver = start_receiver(stack, tmp_path, tls)
        agent = start_agent(stack, tmp_path, tls, receiver)
        print(
            f"chaos: agent ledger section: {'on' if agent.ledger else 'off'} ({agent.ledger_note})",
            flush=True,
        )
        for slot in slots:
            slot.start()
        for slot in slots:
            wait_until(partial(worker_started, slot.current), timeout=30, what=f"worker {slot.label}")

        # -- the chaos: flags published and workers killed on one seeded timetable ------
        kill_moments, flag_moments = _schedule(time_rng)
        timetable = sorted(
            [(t, "flag", i) for i, t in enumerate(flag_moments)]
            + [(t, "kill", i) for i, t in enumerate(kill_moments)]
        )
        chaos_began = time.monotonic()
        for moment, kind, index in timetable:
            time.sleep(max(0.0, chaos_began + moment - time.monotonic()))
            if kind == "flag":
                stack.upload(f"chaos/f{index:02d}/{FLAG}")
                continue
            slot, held = _victim(victim_rng, slots)
            kill = Kill(
                at=time.monotonic() - chaos_began,
                victim=slot.current,
                held=held,
                open_uploads=len(open_uploads(stack)),
                temp_files=len(temp_files(stack.sft_root)),
            )
            slot.current.kill()
            slot.start()
            kills.append(kill)
            print(
                f"chaos: kill {len(kills):2d} at {kill.at:6.1f}s {kill.victim.name:<12} messages in flight "
                f"{kill.messages_in_flight}, open uploads {kill.open_uploads}, temp files {kill.temp_files}",
                flush=True,
            )
            assert agent.daemon.alive() and receiver.daemon.alive(), tails([agent.daemon, receiver.daemon])
        last_kill = chaos_began + (kills[-1].at if kills else 0.0)

        # -- settle: everything delivered, or the deadline, or nothing can move any more --
        expected_keys = {f"f{i:02d}/{e.name}" for i, files in folders.items() for e in files}
        expected_stored = {f"in/f{i:02d}/{e.name}" for i, files in folders.items() for e in files}
        deadline = last_kill + SETTLE_SECONDS
        done_at: float | None = None
        idle_since: float | None = None
        while time.monotonic() < deadline:
            arrived = expected_keys <= set(stack.destination_keys())
            received = expected_stored <= set(receiver.received())
            drained = queue_drained(stack)
            pending = _sft_pending(stack)
            if arrived and received and drained and not pending:
                done_at = time.monotonic()
                break
            # Queue empty and the agent has nothing left: no process can move anything.
            idle_since = (idle_since or time.monotonic()) if drained and not pending else None
            if idle_since is not None and time.monotonic() - idle_since > 5:
                break
            time.sleep(0.5)
        settled_at = time.monotonic()

        # -- verdicts ------------------------------------------------------------------
        checks = Checks()
        after_last_kill = (done_at or settled_at) - last_kill
        checks.check(
            done_at is not None and after_last_kill <= SETTLE_SECONDS,
            f"everything delivered within 2 visibility timeouts + 60 s = {SETTLE_SECONDS}s of the last kill",
            f"not done {after_last_kill:.0f}s after it; queue {queue_counts(stack)}, "
            f"agent still has {shorten(_sft_pending(stack)) or 'nothing'} to send",
        )
        leftover_temp = temp_files(stack.sft_root, receiver.out)
        checks.check(
            not leftover_temp,
            "no temp file (.*.part) under the SFT root or the receiver's folder",
            shorten(p.relative_to(tmp_path) for p in leftover_temp),
        )
        uploads = open_uploads(stack)
        checks.check(
            not uploads,
            "no incomplete multipart upload in the destination bucket",
            shorten(f"{u['Key']} ({u['UploadId'][:12]}…)" for u in uploads),
        )
        workers = [run for slot in slots for run in slot.runs]
        kills_per_flag = _kills_per_flag(kills, workers)
        dlq = dlq_report(
            stack, notes={flag: f"its deliveries were killed {n}×" for flag, n in kills_per_flag.items()}
        )
        checks.check(not dlq, "the DLQ is empty", "; ".join(dlq))

        wrong_s3: list[str] = []
        for index, files in folders.items():
            for expected in files:
                key = f"f{index:02d}/{expected.name}"
                got = sha256_s3(stack, stack.destination_bucket, key)
                if got != (expected.size, expected.sha256):
                    wrong_s3.append(f"{key} ({'missing' if got is None else 'different bytes'})")
        checks.check(
            not wrong_s3,
            f"all {len(expected_keys)} files at S3, byte-identical to the plaintext",
            shorten(wrong_s3),
        )

        counts = receiver.received()
        wrong_sft: list[str] = []
        for index, files in folders.items():
            for expected in files:
                stored = f"in/f{index:02d}/{expected.name}"
                path = receiver.out / stored
                if not path.is_file():
                    wrong_sft.append(f"{stored} (missing)")
                elif (path.stat().st_size, sha256_file(path)) != (expected.size, expected.sha256):
                    wrong_sft.append(f"{stored} (different bytes)")
        checks.check(
            not wrong_sft,
            f"all {len(expected_stored)} files at the receiver, byte-identical",
            shorten(wrong_sft),
        )
        repeated = {name: n for name, n in counts.items() if n > 1}
        checks.check(
            not repeated,
            "each file received exactly once (file_received lines per stored name)",
            shorten(f"{name} ×{n}" for name, n in sorted(repeated.items())),
        )
        strangers = sorted(set(counts) - expected_stored)
        checks.check(not strangers, "nothing received that was not published", shorten(strangers))
        parked = visible_files(agent.error_folder) if agent.error_folder.exists() else []
        checks.check(not parked, "nothing parked in the agent's error folder", shorten(parked))
        rows = ledger_rows(stack)
        routes = [row for row in rows if row.get("record", "route") == "route"]
        undelivered = sorted(
            f"{row.get('flag_key')} {row.get('pipeline_name')}={row.get('status')}"
            for row in routes if row.get("status") != "delivered"
        )  # fmt: skip
        checks.check(
            len(routes) == 2 * FOLDERS and not undelivered,
            f"the ledger holds {2 * FOLDERS} route rows, all delivered",
            f"{len(routes)} route rows; {shorten(undelivered)}",
        )
        if agent.ledger:
            # docs/exactly-once.md: the agent records each file's fate on the worker's object row.
            sft_rows = [row for row in rows if row.get("sft_path")]
            unsent = sorted(
                f"{row['sft_path']}={row.get('status')}" for row in sft_rows if row.get("status") != "sent"
            )
            checks.check(
                len(sft_rows) == len(expected_stored) and not unsent,
                f"the ledger holds {len(expected_stored)} SFT object rows, all sent (the agent's receipts)",
                f"{len(sft_rows)} rows; {shorten(unsent)}",
            )

        # -- figures -------------------------------------------------------------------
        rewritten = sorted((key, n) for key, n in versions_per_key(stack).items() if n > 1)
        receives = [
            int(line.get("receive_count", 0)) for w in workers for line in w.events("message_received")
        ]
        by_flag = sorted(kills_per_flag.items(), key=lambda item: -item[1])
        counted = ["message_received", "message_done", "route_delivered", "route_already_delivered"]
        figures = [
            f"seed {seed}; {len(kills)} kills, {sum(1 for k in kills if k.messages_in_flight)} of them "
            f"of a worker with messages in flight ({sum(k.messages_in_flight for k in kills)} messages)",
            f"done {after_last_kill:.1f}s after the last kill (limit {SETTLE_SECONDS}s)"
            + ("" if done_at else " — NOT done"),
            f"total run time {time.monotonic() - began:.1f}s; chaos phase {last_kill - chaos_began:.1f}s",
            f"S3 keys written more than once (versions): {len(rewritten)} "
            + shorten((f"{key} ×{n}" for key, n in rewritten), 4),
            f"highest ApproximateReceiveCount seen by a worker: {max(receives, default=0)}",
            "deliveries killed, by flag: " + (shorten(f"{flag} ×{n}" for flag, n in by_flag) or "none"),
            f"worker events: {events_summary(workers, counted)}",
            f"worker retry/failure reasons: {reasons_summary(workers)}",
        ]
        print("\nchaos figures:\n  " + "\n  ".join(figures), flush=True)

        def context() -> str:
            # The runs that held messages when killed, and the ones running now.
            hit = [k.victim for k in kills if k.messages_in_flight][-4:]
            recent = [*hit, *(slot.current for slot in slots)]
            return (
                "figures:\n  "
                + "\n  ".join(figures)
                + "\nDLQ:\n  "
                + ("\n  ".join(dlq) or "(empty)")
                + f"\nlogs of every run are in {tmp_path}\n"
                + tails([*recent, agent.daemon, receiver.daemon])
            )

        checks.conclude(context)
    finally:
        stop_all([run for slot in slots for run in slot.runs])
        stop_all([d.daemon for d in (agent, receiver) if d is not None])
