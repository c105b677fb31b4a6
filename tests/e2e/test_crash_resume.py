"""A worker SIGKILLed mid-way through a 200 MiB transfer; a fresh worker resumes it and moves only what is left.

DESIGN.md §12 "Exactly once" and docs/exactly-once.md ("Takeover"): progress is recorded
per object, so the worker that takes over a lapsed claim moves only the objects not
done, and aborts the multipart uploads of the claim it takes over. One folder: five small
envelope-encrypted objects and one of 200 MiB, routed to S3 and to SFT, both decrypting
(so S3 streams through a multipart upload, never a server-side copy). The worker is
killed once the small objects are delivered and the 200 MiB transfer is under way: in
the S3 upload (an open multipart upload with parts), or in the SFT file (a ``.part``
temp file growing under the SFT root). The worker's routes of one message run one after
the other (``p`` before ``p#sft``), so each case is its own run. The SFT side is
checked on the volume itself (no agent here: ``test_chaos`` has it).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from egress.aws import AwsClients
from tests.e2e.chaos_harness import (
    MIB,
    REDRIVE_MAX_RECEIVE_COUNT,
    VISIBILITY_SECONDS,
    Checks,
    Daemon,
    Expected,
    dlq_report,
    enable_versioning,
    ledger_rows,
    object_rows,
    open_uploads,
    queue_counts,
    queue_drained,
    reasons_summary,
    sha256_file,
    sha256_s3,
    shorten,
    stop_all,
    tails,
    temp_files,
    upload_envelope,
    upload_exists,
    versions_per_key,
    wait_until,
    worker_daemon,
    worker_started,
)
from tests.e2e.conftest import FLAG, Stack, make_stack

BIG = 200 * MIB
SMALL_SIZES = (64 * 1024, 300_001, MIB, 2 * MIB + 17, 5)
PREFIX = "resume/"
S3_PREFIX = "out/"  # the S3 route's destination_prefix
SFT_FOLDER = "out"  # the SFT route's folder under the SFT root
SETTLE_SECONDS = 2 * VISIBILITY_SECONDS + 60
# One part in flight: the 200 MiB upload takes seconds, so the kill finds it mid-way even
# after waiting for the small objects' progress to be recorded.
SLOW_UPLOADS = {"EGRESS_PARTS_IN_FLIGHT": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _publish(stack: Stack, spool: Path) -> tuple[list[Expected], Expected]:
    small = [
        upload_envelope(stack, f"{PREFIX}part-{n}.csv.enc", seed=f"resume-small-{n}", size=size, spool=spool)
        for n, size in enumerate(SMALL_SIZES)
    ]
    big = upload_envelope(stack, f"{PREFIX}big.bin.enc", seed="resume-big", size=BIG, spool=spool)
    return small, big


def _s3_state(stack: Stack, key: str) -> tuple[str, str, str]:
    """(LastModified, ETag, VersionId) of a destination object: any rewrite changes the version."""
    head = stack.aws.s3.head_object(Bucket=stack.destination_bucket, Key=key)
    return head["LastModified"].isoformat(), head["ETag"], str(head.get("VersionId"))


def _sft_state(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns): a rewrite is a new temp file renamed over the name, so a new inode."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def _big_upload(stack: Stack) -> dict[str, Any] | None:
    """The open multipart upload of the big object and how many parts it has, if one is open."""
    for upload in open_uploads(stack):
        if upload["Key"] == S3_PREFIX + "big.bin":
            parts = stack.aws.s3.list_parts(
                Bucket=stack.destination_bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            ).get("Parts", [])
            return {
                "UploadId": upload["UploadId"],
                "parts": len(parts),
                "bytes": sum(p["Size"] for p in parts),
            }
    return None


def _big_temp(stack: Stack) -> tuple[Path, int] | None:
    folder = stack.sft_root / SFT_FOLDER
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".big.bin.") and entry.name.endswith(".part"):
                    return Path(entry.path), entry.stat().st_size
    except FileNotFoundError:
        return None
    return None


def _ledger_mpu_ids(stack: Stack) -> dict[str, str]:
    """``mpu_id`` of every object row still ``uploading`` (docs/exactly-once.md); none before that work."""
    return {
        str(row.get("name", row.get("record"))): str(row["mpu_id"])
        for row in object_rows(stack)
        if row.get("mpu_id") and row.get("status") == "uploading"
    }


def _skip_evidence(worker: Daemon, small: list[Expected], *, destination: str) -> list[str]:
    """Log lines of ``worker`` saying the small objects were skipped (per object, or counted).

    The exact event name is the implementer's: accepted are lines whose event speaks of
    skipping, resuming or "already" and which name the object (destination name or source
    key), or which count the small objects.
    """
    found = []
    for line in worker.events():
        event = str(line.get("event") or "").lower()
        if not any(word in event for word in ("skip", "resum", "already", "done before")):
            continue
        values = " ".join(str(v) for k, v in line.items() if k not in {"event", "body_hint"})
        named = [e.name for e in small if f"{destination}{e.name}" in values or e.source_key in values]
        counted = any(isinstance(v, int) and v == len(small) for v in line.values())
        if named or counted:
            found.append(f"{line.get('event')} {named or ''}".strip())
    return found


@pytest.mark.parametrize("interrupted", ["S3", "SFT"])
def test_worker_killed_mid_200mib_transfer_is_resumed_by_a_fresh_worker_moving_only_what_is_left(
    aws: AwsClients, moto_endpoint: str, tmp_path: Path, unique: str, interrupted: str
) -> None:
    began = time.monotonic()
    stack = make_stack(
        aws, moto_endpoint, tmp_path, unique,
        visibility=VISIBILITY_SECONDS, max_receive_count=REDRIVE_MAX_RECEIVE_COUNT,
    )  # fmt: skip
    enable_versioning(stack)
    stack.put_route(
        source_prefix=PREFIX, pipeline_name="p", transfer_type="S3",
        destination_bucket=stack.destination_bucket, destination_prefix=S3_PREFIX, decrypt=True,
    )  # fmt: skip
    stack.put_route(
        source_prefix=PREFIX, pipeline_name="p#sft", transfer_type="SFT", destination_prefix=SFT_FOLDER,
        decrypt=True,
    )  # fmt: skip
    small, big = _publish(stack, tmp_path / "spool")
    print(
        f"\nresume[{interrupted}]: published {len(small)} small objects and 200 MiB in "
        f"{time.monotonic() - began:.1f}s; logs in {tmp_path}",
        flush=True,
    )
    sft_folder = stack.sft_root / SFT_FOLDER
    workers: list[Daemon] = []
    try:
        first = worker_daemon(
            stack, tmp_path / "worker-first.log", name="first-worker", **SLOW_UPLOADS
        ).start()
        workers.append(first)
        wait_until(partial(worker_started, first), timeout=30, what="the first worker")
        stack.upload(PREFIX + FLAG)
        flagged = time.monotonic()

        # -- wait for the moment: small objects delivered, the 200 MiB transfer under way ----
        small_keys = {S3_PREFIX + e.name for e in small}
        small_seen: list[float] = []
        waited_for: list[str] = []  # why the small objects count as recorded (S3 case)

        def s3_small_recorded() -> bool:
            """The small objects are at S3 and their progress is recorded.

            docs/exactly-once.md lets the worker batch ``done`` rows (flushed every second):
            an object finished in the last second before a crash may be moved again. So
            the kill waits for their rows to say ``done``, or for 1.5 s after the objects
            appeared when there are no object rows at all (a worker from before that
            work), or for 3 s if the rows never name them as expected.
            """
            if not small_keys <= set(stack.destination_keys()):
                return False
            small_seen[:1] = small_seen[:1] or [time.monotonic()]
            waited = time.monotonic() - small_seen[0]
            rows = object_rows(stack)
            done = {str(row.get("name")) for row in rows if row.get("status") == "done"}
            if rows and all(key in done or key.removeprefix(S3_PREFIX) in done for key in small_keys):
                waited_for[:] = ["their ledger rows say done"]
            elif not rows and waited >= 1.5:
                waited_for[:] = ["1.5 s passed (no object rows in the ledger)"]
            elif waited >= 3:
                waited_for[:] = ["3 s passed (object rows exist, but none says they are done)"]
            return bool(waited_for)

        def s3_mid_way() -> dict[str, Any] | None:
            if not s3_small_recorded():
                return None
            upload = _big_upload(stack)
            return upload if upload and 2 <= upload["parts"] <= 32 else None

        def sft_mid_way() -> tuple[Path, int] | None:
            if not all((sft_folder / e.name).is_file() for e in small):
                return None
            temp = _big_temp(stack)
            return temp if temp and 16 * MIB <= temp[1] <= BIG - 32 * MIB else None

        def tails_now() -> str:
            return tails(workers)

        if interrupted == "S3":
            moment = wait_until(
                s3_mid_way,
                timeout=120,
                what="the moment to kill (small objects recorded, 2–32 of the 40 parts uploaded): the test "
                "missed it, so it could not interrupt the upload (a timing miss of the test, not a verdict)",
                interval=0.05,
                also=tails_now,
            )
            progress = (
                f"{moment['parts']} parts ({moment['bytes'] / MIB:.0f} MiB) uploaded; small objects at S3, "
                + waited_for[0]
            )
        else:
            # The SFT file streams at hundreds of MB/s: poll tightly, kill at once.
            moment = wait_until(
                sft_mid_way,
                timeout=120,
                what="the moment to kill (small files renamed, the .part file between 16 and 168 MiB): the "
                "test missed it, so it could not interrupt the write (a timing miss of the test, not a verdict)",
                interval=0.005,
                also=tails_now,
            )
            progress = f"{moment[1] / MIB:.0f} MiB written to {moment[0].name}"
        s3_before = {e.name: _s3_state(stack, S3_PREFIX + e.name) for e in small}
        sft_before = {
            e.name: _sft_state(sft_folder / e.name) for e in small if (sft_folder / e.name).is_file()
        }
        ledger_mpus = _ledger_mpu_ids(stack)
        first.kill()
        killed = time.monotonic()
        uploads_at_kill = {u["UploadId"]: u["Key"] for u in open_uploads(stack)}
        temps_at_kill = temp_files(stack.sft_root)
        print(
            f"resume[{interrupted}]: SIGKILL {killed - flagged:.1f}s after the flag, {progress}; open uploads "
            f"{len(uploads_at_kill)}, temp files {len(temps_at_kill)}, mpu_id in the ledger: "
            f"{shorten(ledger_mpus.items()) or 'none'}",
            flush=True,
        )

        # -- a fresh worker takes over -------------------------------------------------
        second = worker_daemon(
            stack, tmp_path / "worker-second.log", name="second-worker", **SLOW_UPLOADS
        ).start()
        workers.append(second)
        done_at: float | None = None
        idle_since: float | None = None
        while time.monotonic() < killed + SETTLE_SECONDS:
            s3_done = S3_PREFIX + big.name in set(stack.destination_keys())
            sft_done = (sft_folder / big.name).is_file()
            drained = queue_drained(stack)
            if s3_done and sft_done and drained:
                done_at = time.monotonic()
                break
            idle_since = (idle_since or time.monotonic()) if drained else None
            if idle_since is not None and time.monotonic() - idle_since > 5:
                break  # the message is gone (DLQ) and nothing is delivering: it cannot finish
            if not second.alive():
                break
            time.sleep(0.25)
        settled = (done_at or time.monotonic()) - killed

        # -- verdicts ------------------------------------------------------------------
        checks = Checks()
        checks.check(
            done_at is not None,
            f"the fresh worker completed both routes within {SETTLE_SECONDS}s of the kill",
            f"not done after {settled:.0f}s; queue {queue_counts(stack)}",
        )
        dlq = dlq_report(stack)
        checks.check(not dlq, "the DLQ is empty", "; ".join(dlq))
        wrong = []
        for expected in [*small, big]:
            got = sha256_s3(stack, stack.destination_bucket, S3_PREFIX + expected.name)
            if got != (expected.size, expected.sha256):
                wrong.append(f"s3 {expected.name} ({'missing' if got is None else 'different bytes'})")
            path = sft_folder / expected.name
            if not path.is_file():
                wrong.append(f"sft {expected.name} (missing)")
            elif (path.stat().st_size, sha256_file(path)) != (expected.size, expected.sha256):
                wrong.append(f"sft {expected.name} (different bytes)")
        checks.check(
            not wrong,
            "all six objects at S3 and in the SFT folder, SHA-256 equal to the plaintext",
            shorten(wrong),
        )

        s3_rewritten = [
            name for name, state in s3_before.items()
            if not (S3_PREFIX + name in set(stack.destination_keys())
                    and _s3_state(stack, S3_PREFIX + name) == state)
        ]  # fmt: skip
        versions = versions_per_key(stack)
        s3_rewritten += [f"{key} ({n} versions)" for key, n in sorted(versions.items()) if n > 1]
        checks.check(
            not s3_rewritten,
            "S3: the small objects were not written again (LastModified, ETag, "
            "VersionId unchanged; one version of every key)",
            shorten(s3_rewritten),
        )
        if sft_before:
            sft_rewritten = [
                name for name, state in sft_before.items()
                if not (sft_folder / name).is_file() or _sft_state(sft_folder / name) != state
            ]  # fmt: skip
            checks.check(
                not sft_rewritten,
                "SFT: the small files were not written again (inode, mtime unchanged)",
                shorten(sft_rewritten),
            )
        destination = S3_PREFIX if interrupted == "S3" else f"{SFT_FOLDER}/"
        evidence = _skip_evidence(second, small, destination=destination)
        checks.check(
            bool(evidence),
            f"the fresh worker's log says the {interrupted} route's small objects were skipped",
            "no such line in " + second.log_path.name,
        )

        leftover = open_uploads(stack)
        checks.check(
            not leftover,
            "no incomplete multipart upload left in the destination bucket",
            shorten(f"{u['Key']} {u['UploadId'][:16]}…" for u in leftover),
        )
        dead_ids = set(uploads_at_kill) | set(ledger_mpus.values())
        still_there = [
            i for i in dead_ids if upload_exists(stack, uploads_at_kill.get(i, S3_PREFIX + big.name), i)
        ]
        checks.check(
            not still_there,
            "the dead claim's multipart upload was aborted (its id is gone)",
            shorten(u[:16] + "…" for u in still_there),
        )
        temps = temp_files(stack.sft_root)
        checks.check(
            not temps,
            "no temp file (.*.part) left under the SFT root",
            shorten(p.relative_to(stack.sft_root) for p in temps),
        )
        routes = [row for row in ledger_rows(stack) if row.get("record", "route") == "route"]
        not_delivered = [
            f"{row.get('pipeline_name')}={row.get('status')}"
            for row in routes
            if row.get("status") != "delivered"
        ]
        checks.check(
            len(routes) == 2 and not not_delivered,
            "both ledger route rows are delivered",
            f"{len(routes)} route rows; {', '.join(not_delivered)}",
        )

        figures = [
            f"killed {killed - flagged:.1f}s after the flag with {progress}",
            f"resumed and done {settled:.1f}s after the kill (limit {SETTLE_SECONDS}s)"
            + ("" if done_at else " — NOT done"),
            f"total run time {time.monotonic() - began:.1f}s",
            "SFT small files compared by inode/mtime: "
            + (f"{len(sft_before)}" if sft_before else "none (the SFT route had not started at the kill)"),
            f"skip lines in the fresh worker's log: {shorten(evidence) or 'none'}",
            f"worker retry/failure reasons: {reasons_summary(workers)}",
        ]
        print(f"resume[{interrupted}] figures:\n  " + "\n  ".join(figures), flush=True)
        checks.conclude(
            lambda: (
                "figures:\n  "
                + "\n  ".join(figures)
                + "\nDLQ:\n  "
                + ("\n  ".join(dlq) or "(empty)")
                + "\n"
                + tails(workers, lines=30)
            )
        )
    finally:
        stop_all(workers)
