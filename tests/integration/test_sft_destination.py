"""The SFT destination on a real file system: atomic writes, confinement, free space, sweeping."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.destinations import Delivered
from egress.destinations import sft as sft_module
from egress.destinations.routes import SftRouteDestination
from egress.destinations.sft import AGENT_SKIPPED_SUFFIXES, OwnerRegistry, SftDestination
from egress.errors import PermanentError, Reason, RetryableError, StopRequested
from egress.ledger_table import SENDING, SENT, UNSENT_KEY, WRITTEN, ObjectRecord
from egress.sources import OpenedObject, SourceObject


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data-egress"
    path.mkdir()
    return path


def files_under(top: Path) -> list[str]:
    """Every file and symlink below ``top`` (hidden ones included), relative to it."""
    return sorted(
        str(path.relative_to(top)) for path in top.rglob("*") if path.is_file() or path.is_symlink()
    )


# -- atomic writes ----------------------------------------------------------------------------
def test_nothing_is_visible_until_the_stream_ended(root: Path) -> None:
    seen: list[list[str]] = []
    folder = root / "warehouse" / "2026-11-22"
    lines = [f"line {index}\n".encode() for index in range(4)]

    def stream() -> Iterator[bytes]:
        for line in lines:
            yield line
            seen.append(sorted(os.listdir(folder)))  # what the agent could see right now

    delivered = SftDestination(root).write("warehouse/2026-11-22/data.csv", stream())

    data = b"".join(lines)
    assert delivered == Delivered(
        "warehouse/2026-11-22/data.csv", len(data), hashlib.sha256(data).hexdigest()
    )
    assert (folder / "data.csv").read_bytes() == data
    assert os.listdir(folder) == ["data.csv"]
    assert len(seen) == 4
    for listing in seen:  # only the hidden temporary name, never the final one
        assert len(listing) == 1
        assert listing[0].startswith(".data.csv.") and listing[0].endswith(".part")
    # 0o640 files, 0o750 folders (less if the umask takes more away)
    assert stat.S_IMODE((folder / "data.csv").stat().st_mode) & ~0o640 == 0
    assert stat.S_IMODE(folder.stat().st_mode) & ~0o750 == 0
    assert stat.S_IMODE((root / "warehouse").stat().st_mode) & ~0o750 == 0


def test_file_is_fsynced_before_the_rename_and_the_folder_after(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    SftDestination(root).write("w/a.csv", iter([b"a", b"b"]))
    assert events == ["fsync file", "rename", "fsync folder"]
    events.clear()
    SftDestination(root, fsync=False).write("w/b.csv", iter([b"a"]))
    assert events == ["rename"]


def test_overwrite_replaces_the_old_file(root: Path) -> None:
    destination = SftDestination(root)
    destination.write("a.txt", iter([b"old"]))
    destination.write("a.txt", iter([b"new contents"]))
    assert (root / "a.txt").read_bytes() == b"new contents"
    assert files_under(root) == ["a.txt"]


def test_large_stream_is_byte_identical(root: Path) -> None:
    chunks = [os.urandom(1 << 20) for _ in range(8)] + [b"", os.urandom(12345)]
    delivered = SftDestination(root).write("big/blob.bin", iter(chunks), expected_size=9 << 20)
    data = b"".join(chunks)
    assert delivered == Delivered("big/blob.bin", len(data), hashlib.sha256(data).hexdigest())
    assert hashlib.sha256((root / "big" / "blob.bin").read_bytes()).hexdigest() == delivered.sha256


def test_empty_stream_makes_an_empty_file(root: Path) -> None:
    delivered = SftDestination(root).write("w/empty", iter([]))
    assert delivered == Delivered("w/empty", 0, hashlib.sha256(b"").hexdigest())
    assert (root / "w" / "empty").read_bytes() == b""


def test_write_bytes_is_atomic_too(root: Path) -> None:
    delivered = SftDestination(root).write_bytes("w/manifest.json", b"{}")
    assert delivered == Delivered("w/manifest.json", 2, hashlib.sha256(b"{}").hexdigest())
    assert files_under(root) == ["w/manifest.json"]


@pytest.mark.parametrize(
    "name",
    [
        "with space.csv",
        "a+b=c.csv",
        "données/été.csv",
        "日本語/ファイル.txt",
        "emoji 🚀.bin",
        "x:y.csv",
        "a,b@c;d.txt",
    ],
)
def test_names_with_spaces_plus_and_non_ascii(root: Path, name: str) -> None:
    delivered = SftDestination(root).write(name, iter([b"ok"]))
    assert delivered.name == name
    assert (root / name).read_bytes() == b"ok"
    assert files_under(root) == [name]


def test_a_name_of_255_bytes_still_gets_a_temp_name(root: Path) -> None:
    name = "é" * 125 + ".csv"  # 254 bytes: the temp name is shortened to fit in 255
    seen: list[str] = []

    def stream() -> Iterator[bytes]:
        yield b"ok"
        seen.extend(os.listdir(root))

    SftDestination(root).write(name, stream())
    assert (root / name).read_bytes() == b"ok"
    assert len(seen) == 1 and len(seen[0].encode()) <= 255 and seen[0].endswith(".part")


# -- failures leave nothing behind ------------------------------------------------------------
def test_failure_in_the_stream_removes_the_temp_file(root: Path) -> None:
    closed = threading.Event()

    def failing() -> Iterator[bytes]:
        try:
            yield b"plaintext before the tag was checked"
            raise ValueError("authentication tag mismatch")
        finally:
            closed.set()

    with pytest.raises(ValueError, match="tag mismatch"):
        SftDestination(root).write("w/out.bin", failing())
    assert files_under(root) == []
    assert closed.is_set()


def test_cancel_raises_stop_requested_and_removes_the_temp_file(root: Path) -> None:
    cancel = threading.Event()

    def stream() -> Iterator[bytes]:
        yield b"first"
        cancel.set()  # the worker's grace period ended
        yield b"second"

    with pytest.raises(StopRequested):
        SftDestination(root).write("w/out.bin", stream(), cancel=cancel)
    assert files_under(root) == []


@pytest.mark.parametrize("raised", [StopRequested, KeyboardInterrupt])
def test_base_exceptions_in_the_stream_remove_the_temp_file(root: Path, raised: type[BaseException]) -> None:
    def stream() -> Iterator[bytes]:
        yield b"x"
        raise raised

    with pytest.raises(raised):
        SftDestination(root).write("out.bin", stream())
    assert files_under(root) == []


def test_no_space_while_writing_is_retryable_and_cleaned_up(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sft_module, "_write_all", full)
    with pytest.raises(RetryableError) as caught:
        SftDestination(root).write("w/out.bin", iter([b"x"]))
    assert caught.value.reason == Reason.DISK_SHORT
    assert files_under(root) == []


def test_a_folder_in_the_way_is_a_name_collision(root: Path) -> None:
    (root / "w" / "taken.csv").mkdir(parents=True)
    (root / "file").write_bytes(b"x")
    destination = SftDestination(root)
    with pytest.raises(PermanentError) as caught:
        destination.write("w/taken.csv", iter([b"x"]))
    assert caught.value.reason == Reason.NAME_COLLISION
    with pytest.raises(PermanentError) as caught:
        destination.write("file/below.csv", iter([b"x"]))
    assert caught.value.reason == Reason.NAME_COLLISION
    assert files_under(root) == ["file"]


# -- free space -------------------------------------------------------------------------------
def test_disk_short_is_retryable_with_figures(root: Path) -> None:
    destination = SftDestination(root, free_space_margin_bytes=1 << 62)
    with pytest.raises(RetryableError) as caught:
        destination.write("w/file.csv", iter([b"x"]), expected_size=10)
    assert caught.value.reason == Reason.DISK_SHORT
    assert "free" in caught.value.detail and str((1 << 62) + 10) in caught.value.detail
    assert files_under(root) == []
    # A folder that does not exist yet is measured on its nearest existing parent.
    with pytest.raises(RetryableError):
        destination.ensure_space(1, path=root / "not" / "yet" / "there.csv")
    SftDestination(root).ensure_space(1024, path=root / "not" / "yet" / "there.csv")


# -- confinement ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("", "empty path"),
        ("../escape.csv", "'..'"),
        ("a/../../escape.csv", "'..'"),
        ("a/./b.csv", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a//b.csv", "empty path segment"),
        ("a/b/", "empty path segment"),
        ("a\x00b.csv", "NUL"),
        ("a\nb.csv", "control character"),
        ("a\x1bb.csv", "control character"),
        ("a\x7fb.csv", "control character"),
        ("a\x85b.csv", "control character"),
        ("a\\b.csv", "backslash"),
        ("..\\escape", "backslash"),
        (".hidden.csv", "hidden"),
        ("folder/.hidden.csv", "hidden"),
        (".folder/file.csv", "hidden"),
        ("file.csv.part", ".part"),
        ("file.csv.tmp", "unfinished"),
        ("report~", "unfinished"),
        ("x" * 256, "longer than 255"),
        ("bad\udcffsurrogate", "Unicode"),
    ],
)
def test_refused_paths(root: Path, relative: str, why: str) -> None:
    destination = SftDestination(root)
    with pytest.raises(PermanentError) as caught:
        destination.resolve(relative)
    assert caught.value.reason == Reason.UNSAFE_KEY
    assert why in caught.value.detail
    with pytest.raises(PermanentError):
        destination.write(relative, iter([b"x"]))
    assert files_under(root.parent) == []


def test_refused_suffixes_are_the_ones_the_agent_skips() -> None:
    from egress.kernel.tempnames import TEMP_SUFFIXES
    from sft_agent import scanner

    assert tuple(AGENT_SKIPPED_SUFFIXES) == tuple(TEMP_SUFFIXES)
    # The agent's scanner skips through that same list.
    assert all(scanner.is_hidden_or_temp(f"data{suffix}") for suffix in AGENT_SKIPPED_SUFFIXES)


def test_symlinked_folder_leading_out_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    destination = SftDestination(root)
    with pytest.raises(PermanentError) as caught:
        destination.write("link/deeper/stolen.csv", iter([b"x"]))
    assert caught.value.reason == Reason.UNSAFE_KEY
    assert "outside the SFT root" in caught.value.detail
    assert list(outside.iterdir()) == []


def test_symlinked_file_leading_out_is_refused(root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    (root / "file.csv").symlink_to(victim)
    with pytest.raises(PermanentError) as caught:
        SftDestination(root).write("file.csv", iter([b"x"]))
    assert caught.value.reason == Reason.UNSAFE_KEY
    assert victim.read_bytes() == b"keep"


def test_symlink_to_the_root_itself_is_refused(root: Path) -> None:
    (root / "self").symlink_to(root, target_is_directory=True)
    with pytest.raises(PermanentError):
        SftDestination(root).resolve("self")


def test_symlink_staying_inside_the_root_is_allowed(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    SftDestination(root).write("alias/f.csv", iter([b"ok"]))
    assert (root / "real" / "f.csv").read_bytes() == b"ok"


def test_a_root_reached_through_a_symlink_works(tmp_path: Path, root: Path) -> None:
    (tmp_path / "mount").symlink_to(root, target_is_directory=True)
    SftDestination(tmp_path / "mount").write("w/f.csv", iter([b"ok"]))
    assert (root / "w" / "f.csv").read_bytes() == b"ok"


_segments = st.sampled_from(["..", ".", "", "out", "in", "a.part", ".hidden", "x~", "ok.csv"]) | st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(["/", ".", "\\", "\x00", "\n", " ", "+"]),
    max_size=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(relative=st.lists(_segments, min_size=1, max_size=5).map("/".join) | st.text(max_size=40))
def test_any_relative_path_is_refused_or_strictly_inside_the_root(
    root: Path, tmp_path: Path, relative: str
) -> None:
    outside = tmp_path / "outside"
    if not (root / "out").is_symlink():
        outside.mkdir(exist_ok=True)
        (root / "out").symlink_to(outside, target_is_directory=True)  # a link leading out
        (root / "in").mkdir()
    try:
        path = SftDestination(root).resolve(relative)
    except PermanentError as exc:
        assert exc.reason == Reason.UNSAFE_KEY
        return
    real_root = os.path.realpath(root)
    assert os.path.realpath(path).startswith(real_root + os.sep)
    segments = relative.split("/")
    assert not any(segment.startswith(".") or segment == "" for segment in segments)
    assert not relative.endswith(AGENT_SKIPPED_SUFFIXES)


# -- sweeping leftovers -----------------------------------------------------------------------
def test_sweep_removes_leftover_temp_files_without_an_owner_by_age(root: Path) -> None:
    (root / "w" / "deep").mkdir(parents=True)
    old = root / "w" / ".a.csv.0123456789ab.part"
    new = root / "w" / "deep" / ".b.csv.0123456789ab.part"
    kept = [root / "w" / "a.csv", root / "w" / "c.part.csv", root / "w" / ".hidden", root / "w" / "d.part"]
    for path in [old, new, *kept]:
        path.write_bytes(b"x")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    destination = SftDestination(root)
    assert destination.sweep_temp_files(legacy_older_than=600) == 1
    assert not old.exists() and new.exists()
    assert destination.sweep_temp_files(legacy_older_than=0) == 1
    assert not new.exists()
    assert all(path.exists() for path in kept)


def test_sweep_removes_temp_files_of_dead_writers_only(root: Path) -> None:
    """Several tasks share the volume (EFS): a live writer's temp file is never swept, however old."""
    alive = OwnerRegistry(root, owner="a1a1a1a1")
    dead = OwnerRegistry(root, owner="d0d0d0d0")
    alive.hold()
    dead.hold()
    writing = SftDestination(root, owners=alive)
    live_temp = root / "w" / ".x.csv.a1a1a1a1-0123456789ab.part"
    dead_temp = root / "w" / ".y.csv.d0d0d0d0-0123456789ab.part"
    orphan_temp = root / "w" / ".z.csv.e0e0e0e0-0123456789ab.part"  # no lock file at all
    live_temp.parent.mkdir(parents=True)
    for path in (live_temp, dead_temp, orphan_temp):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 86400, time.time() - 86400))
    sweeper = SftDestination(root, owners=OwnerRegistry(root, owner="b2b2b2b2"))
    assert sweeper.sweep_temp_files() == 1  # only the writer without a lock file is gone
    assert live_temp.exists() and dead_temp.exists() and not orphan_temp.exists()
    assert dead._fd is not None
    os.close(dead._fd)  # the process dies: its flock goes with it, the lock file stays
    dead._fd = None
    assert sweeper.sweep_temp_files() == 1
    assert live_temp.exists() and not dead_temp.exists()
    assert not (root / ".egress" / "owners" / "d0d0d0d0.lock").exists()
    assert writing.owners.is_gone("a1a1a1a1") is False
    alive.release()
    assert sweeper.sweep_temp_files() == 1
    assert not live_temp.exists()


def test_temp_names_carry_the_writers_owner_and_the_record_runs_before_the_rename(root: Path) -> None:
    owners = OwnerRegistry(root, owner="c3c3c3c3")
    seen: list[tuple[str, int, str, bool]] = []

    def before_commit(temp_name: str, size: int, sha256: str) -> None:
        seen.append((temp_name, size, sha256, (root / "w" / "a.csv").exists()))

    delivered = SftDestination(root, owners=owners).write(
        "w/a.csv", iter([b"abc"]), before_commit=before_commit
    )
    [(temp_name, size, sha256, visible)] = seen
    assert temp_name.startswith(".a.csv.c3c3c3c3-") and temp_name.endswith(".part")
    assert (size, sha256, visible) == (3, delivered.sha256, False)
    assert (root / "w" / "a.csv").read_bytes() == b"abc"


def test_a_failed_record_before_the_rename_leaves_nothing_visible(root: Path) -> None:
    def refuse(temp_name: str, size: int, sha256: str) -> None:
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError):
        SftDestination(root).write("w/a.csv", iter([b"abc"]), before_commit=refuse)
    assert files_under(root) == []


def test_commit_temp_finishes_a_recorded_write(root: Path) -> None:
    destination = SftDestination(root)
    (root / "w").mkdir()
    (root / "w" / ".a.csv.c3c3c3c3-0123456789ab.part").write_bytes(b"done")
    assert destination.commit_temp("w/a.csv", ".a.csv.c3c3c3c3-0123456789ab.part") is True
    assert (root / "w" / "a.csv").read_bytes() == b"done"
    assert destination.commit_temp("w/a.csv", ".a.csv.c3c3c3c3-0123456789ab.part") is False
    assert destination.commit_temp("w/b.csv", "../../etc/passwd") is False


def test_sweep_leaves_the_agents_hidden_folders_and_symlinks_alone(root: Path, tmp_path: Path) -> None:
    working = root / "w" / ".sft-agent" / "claimed"
    working.mkdir(parents=True)
    (working / ".x.part").write_bytes(b"agent's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".y.part").write_bytes(b"not ours")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / ".z.part").symlink_to(outside / ".y.part")
    assert SftDestination(root).sweep_temp_files() == 0
    assert (working / ".x.part").exists() and (outside / ".y.part").exists()


def test_sweep_after_a_crash_mid_write(root: Path) -> None:
    def crashing() -> Iterator[bytes]:
        yield b"x"
        raise SystemExit  # the cleanup runs; a real crash (SIGKILL) would leave the temp file

    with pytest.raises(SystemExit):
        SftDestination(root).write("w/a.csv", crashing())
    (root / "w" / ".a.csv.deadbeef-0123456789ab.part").write_bytes(b"left by a killed worker")
    assert SftDestination(root).sweep_temp_files() == 1
    assert files_under(root) == []


def test_sweep_of_a_missing_root(tmp_path: Path) -> None:
    assert SftDestination(tmp_path / "missing").sweep_temp_files() == 0


# -- the route's destination (what delivery asks of SFT) ------------------------------------------
class RecordingJournal:
    """The delivery's side of :class:`ObjectJournal`, keeping the rows instead of writing them."""

    def __init__(self, watched: Path | None = None) -> None:
        self.now: list[tuple[str, Delivered | None, dict[str, Any], bool]] = []
        self.later: list[tuple[str, Delivered, dict[str, Any]]] = []
        self._watched = watched

    def record_now(self, status: str, delivered: Delivered | None = None, **extra: Any) -> None:
        visible = self._watched is not None and self._watched.exists()
        self.now.append((status, delivered, extra, visible))

    def record_later(self, status: str, delivered: Delivered, **extra: Any) -> None:
        self.later.append((status, delivered, extra))


def sft_route(root: Path, *, taken_over: bool = False, grace: float = 0.2) -> SftRouteDestination:
    return SftRouteDestination(SftDestination(root), folder="w", taken_over=taken_over, receipt_grace=grace)


def test_sft_route_records_the_file_before_the_rename_and_nothing_after(root: Path) -> None:
    journal = RecordingJournal(watched=root / "w" / "a.csv")
    destination = sft_route(root)
    source = SourceObject("src", "in/a.csv", 3)
    assert destination.copies(source) is False
    opened = OpenedObject(size=3, metadata={}, content_type=None, chunks=iter([b"abc"]))

    delivered = destination.write(
        "w/a.csv", opened.chunks, opened=opened, cancel=threading.Event(), journal=journal
    )
    destination.record_delivered(delivered, journal=journal)

    [(status, recorded, extra, visible)] = journal.now
    assert (status, recorded, visible) == (WRITTEN, delivered, False)
    assert extra["sft_path"] == "w/a.csv" and extra["unsent"] == UNSENT_KEY
    assert extra["temp_name"].startswith(".a.csv.") and extra["temp_name"].endswith(".part")
    assert journal.later == []  # the row was written before the file became visible
    manifest = destination.write_bytes(
        "w/manifest.json", b"{}", content_type="application/json", journal=journal
    )
    assert journal.now[-1][0] == WRITTEN and journal.now[-1][1] == manifest
    assert (root / "w" / "manifest.json").read_bytes() == b"{}"


def test_sft_route_resume_finishes_renames_and_waits_for_receipts(root: Path) -> None:
    (root / "w").mkdir()
    (root / "w" / "on-volume.csv").write_bytes(b"1")
    (root / "w" / ".renamed.csv.c3c3c3c3-0123456789ab.part").write_bytes(b"2")
    records = {
        name: ObjectRecord(name=name, status=status, temp_name=temp)
        for name, status, temp in [
            ("w/on-volume.csv", WRITTEN, None),
            ("w/renamed.csv", WRITTEN, ".renamed.csv.c3c3c3c3-0123456789ab.part"),
            ("w/claimed.csv", WRITTEN, None),  # gone from the volume: the agent has it
            ("w/lost.csv", WRITTEN, None),  # gone, and no receipt
            ("w/sent.csv", SENT, None),
            ("w/other.csv", "uploading", None),  # not a state of an SFT file
        ]
    }
    receipts = {"w/claimed.csv": ObjectRecord(name="w/claimed.csv", status=SENDING)}
    started = time.monotonic()

    done = sft_route(root, grace=0.3).resume(records, reread=receipts.get, cancel=threading.Event())

    assert time.monotonic() - started >= 0.3  # the grace was waited for the two missing files
    assert sorted(done) == ["w/claimed.csv", "w/on-volume.csv", "w/renamed.csv", "w/sent.csv"]
    assert done["w/claimed.csv"].status == SENDING
    assert (root / "w" / "renamed.csv").read_bytes() == b"2"


def test_sft_route_takeover_sweeps_the_lapsed_claims_temp_files(root: Path) -> None:
    (root / "w").mkdir()
    leftover = root / "w" / ".x.csv.d0d0d0d0-0123456789ab.part"  # its owner holds no lock: gone
    leftover.write_bytes(b"x")
    assert sft_route(root).resume({}, reread=lambda name: None, cancel=threading.Event()) == {}
    assert leftover.exists()  # not a takeover: nothing is swept
    assert (
        sft_route(root, taken_over=True).resume({}, reread=lambda name: None, cancel=threading.Event()) == {}
    )
    assert not leftover.exists()


def test_sft_route_prepare_checks_free_space(root: Path) -> None:
    with pytest.raises(RetryableError) as caught:
        sft_route(root).prepare(SourceObject("src", "in/huge", 1 << 62), "w/huge")
    assert caught.value.reason == Reason.DISK_SHORT
