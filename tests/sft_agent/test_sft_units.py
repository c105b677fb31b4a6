"""Pure logic of the agent: ready detection, the retry schedule, renames, claims and state."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from egress.kernel.tempnames import is_hidden_or_temp
from sft_agent.actions import apply_rename, is_safe_name
from sft_agent.claims import ClaimFolder
from sft_agent.errors import DeliveryError
from sft_agent.push import filename_header_value, put_target
from sft_agent.retry import gives_up, retry_delay
from sft_agent.scanner import ReadyScanner
from sft_agent.settings import RenameAction, RetrySettings
from sft_agent.state import FileState, StateStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scanner(
    folder: Path, clock: FakeClock, *, regex: str = ".*", min_age: float = 5.0, recursive: bool = False
):
    return ReadyScanner(
        folder, filename_regex=re.compile(regex), min_age=min_age, recursive=recursive, clock=clock
    )


# -- ready detection ---------------------------------------------------------------------


def test_a_file_is_ready_only_after_size_and_mtime_held_still_for_min_age(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock)
    (tmp_path / "a.csv").write_bytes(b"1")
    assert scan.scan().ready == ()
    clock.now += 4.9
    assert scan.scan().ready == ()
    clock.now += 0.2
    (ready,) = scan.scan().ready
    assert (ready.name, ready.size) == ("a.csv", 1)


def test_a_growing_file_is_never_ready(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock)
    path = tmp_path / "growing.bin"
    for step in range(10):
        with path.open("ab") as handle:
            handle.write(b"x" * 10)
        result = scan.scan()
        assert result.ready == (), step
        assert result.waiting == 1
        clock.now += 3.0
    clock.now += 5.0
    assert [c.name for c in scan.scan().ready] == ["growing.bin"]


def test_a_rewrite_with_the_same_size_but_a_new_mtime_restarts_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock)
    path = tmp_path / "same-size"
    path.write_bytes(b"aaaa")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    scan.scan()
    clock.now += 4.0
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    clock.now += 2.0
    assert scan.scan().ready == ()
    clock.now += 5.0
    assert len(scan.scan().ready) == 1


@pytest.mark.parametrize(
    "name",
    [
        ".hidden",
        ".data.csv.a1b2.part",
        "data.csv.part",
        "x.tmp",
        "x.partial",
        "x.filepart",
        "x~",
        "y.crdownload",
    ],
)
def test_hidden_and_temp_names_are_never_ready(tmp_path: Path, name: str) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock, min_age=0)
    (tmp_path / name).write_bytes(b"partial")
    assert is_hidden_or_temp(name)
    clock.now += 100
    result = scan.scan()
    assert result.ready == () and result.waiting == 0


def test_the_regex_must_match_the_whole_name_and_folders_and_links_are_skipped(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock, regex=r"data\.csv", min_age=0)
    (tmp_path / "data.csv").write_bytes(b"1")
    (tmp_path / "data.csv.bak").write_bytes(b"1")
    (tmp_path / "old-data.csv").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_bytes(b"1")
    (tmp_path / "link.csv").symlink_to(tmp_path / "data.csv")
    result = scan.scan()
    assert [c.name for c in result.ready] == ["data.csv"]
    assert result.skipped_folders == ("sub",)


def test_recursive_routes_see_sub_folders_but_not_hidden_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock, min_age=0, recursive=True)
    for relative in ("a/part-0", "b/part-0", "top", ".sft-agent/claimed/x", ".hidden/y"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"1")
    assert sorted(c.name for c in scan.scan().ready) == ["a/part-0", "b/part-0", "top"]


def test_oldest_first_and_the_oldest_mtime_is_reported(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock, min_age=0)
    for index, name in enumerate(["c", "a", "b"]):
        (tmp_path / name).write_bytes(b"1")
        os.utime(tmp_path / name, (100 + index, 100 + index))
    result = scan.scan()
    assert [c.name for c in result.ready] == ["c", "a", "b"]
    assert result.oldest_mtime == 100


# -- retry schedule ----------------------------------------------------------------------


def test_the_default_schedule_is_the_replaced_agents_10m_doubling_capped_at_1h() -> None:
    settings = RetrySettings()
    delays = [retry_delay(settings, n, spread=0.5) for n in range(1, 8)]
    assert delays == [600, 1200, 2400, 3600, 3600, 3600, 3600]
    assert not gives_up(settings, 7) and gives_up(settings, 8)


def test_jitter_stays_within_bounds_and_never_passes_the_cap() -> None:
    settings = RetrySettings(initial_delay=2.0, max_delay=10.0, multiplier=3.0, jitter=0.2)
    assert retry_delay(settings, 1, spread=0.0) == pytest.approx(1.6)
    assert retry_delay(settings, 1, spread=1.0) == pytest.approx(2.4)
    assert retry_delay(settings, 2, spread=0.5) == pytest.approx(6.0)
    assert retry_delay(settings, 3, spread=1.0) == pytest.approx(10.0)
    assert retry_delay(settings, 1000, spread=1.0) == 10.0
    with pytest.raises(ValueError):
        retry_delay(settings, 0)


def test_seconds_level_schedules_for_tests() -> None:
    settings = RetrySettings(initial_delay=0.3, max_delay=1.0, multiplier=2.0, jitter=0.0)
    assert [retry_delay(settings, n) for n in (1, 2, 3, 4)] == pytest.approx([0.3, 0.6, 1.0, 1.0])


# -- rename ------------------------------------------------------------------------------

WHEN = datetime(2024, 1, 31, 23, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    ("regex", "replacement", "name", "expected"),
    [
        (r"^(.*)\.csv$", r"\1_$TODAYS_YYYYMMDD_FORMATTED_DATE.csv", "data.csv", "data_20240131.csv"),
        (r"^", "$TODAYS_DATE-", "data.csv", "2024-01-31-data.csv"),
        (r"\.txt$", ".dat", "a.txt.txt", "a.txt.dat"),
        (
            r"(?P<stem>.*)\.gz",
            r"\g<stem>.$TODAYS_YYYYMMDD_HHMMSS_FORMATTED_DATE.gz",
            "x.gz",
            "x.20240131_235958.gz",
        ),
        (r"nomatch", "zzz", "data.csv", "data.csv"),
        (r"^(.*)$", r"prefix_\1", "sub/part-0", "sub/prefix_part-0"),
    ],
)
def test_rename(regex: str, replacement: str, name: str, expected: str) -> None:
    action = RenameAction(pattern=re.compile(regex), replacement=replacement)
    assert apply_rename(action, name, when=WHEN) == expected


@pytest.mark.parametrize("replacement", ["", "../up", ".hidden", "a/b", "nul\x00"])
def test_a_rename_that_gives_an_unusable_name_is_a_permanent_failure(replacement: str) -> None:
    action = RenameAction(pattern=re.compile(r"^.*$"), replacement=replacement)
    with pytest.raises(DeliveryError) as caught:
        apply_rename(action, "data.csv", when=WHEN)
    assert caught.value.reason == "invalid_name" and caught.value.permanent


def test_safe_names() -> None:
    assert is_safe_name("data-2024.csv") and is_safe_name("é ü.txt")
    assert not any(is_safe_name(n) for n in ["", ".", "..", ".x", "a/b", "a\\b", "a\x01", "x" * 256])


# -- names on the wire -------------------------------------------------------------------


def test_put_appends_the_percent_encoded_name_to_the_collection() -> None:
    assert put_target("/incoming", "a b%.csv") == "/incoming/a%20b%25.csv"
    assert put_target("/incoming/", "sub/é.csv") == "/incoming/sub/%C3%A9.csv"
    assert put_target("/", "x?#") == "/x%3F%23"


def test_the_file_name_header_is_plain_ascii_with_percent_escapes_only_where_needed() -> None:
    assert filename_header_value("data 2024 (1).csv") == "data 2024 (1).csv"
    assert filename_header_value("100%.csv") == "100%25.csv"
    assert filename_header_value("é\r\n.csv") == "%C3%A9%0D%0A.csv"


# -- claims and state --------------------------------------------------------------------


def test_claim_put_back_and_a_newer_file_is_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "in"
    claims = ClaimFolder(source=source, work_folder=source / ".sft-agent", agent_id="host-1-aaaaaa")
    claims.open()
    try:
        (source / "a").write_bytes(b"old")
        claimed = claims.claim("a")
        assert claimed is not None and claimed.size == 3
        assert not (source / "a").exists() and claimed.path.read_bytes() == b"old"
        assert claims.claim("a") is None  # already taken
        assert claims.put_back(claimed)
        assert (source / "a").read_bytes() == b"old" and not claimed.path.exists()
        claimed = claims.claim("a")
        assert claimed is not None
        (source / "a").write_bytes(b"new")  # the producer wrote a new version meanwhile
        assert not claims.put_back(claimed)
        assert (source / "a").read_bytes() == b"new" and claimed.path.read_bytes() == b"old"
        assert [name for name, _ in claims.in_flight()] == ["a"]
    finally:
        claims.close()


def test_several_agents_share_a_working_folder_and_a_race_for_a_file_has_one_winner(tmp_path: Path) -> None:
    source, work = tmp_path / "in", tmp_path / "in" / ".w"
    first = ClaimFolder(source=source, work_folder=work, agent_id="a-1-000001")
    second = ClaimFolder(source=source, work_folder=work, agent_id="b-2-000002")
    first.open()
    second.open()
    try:
        assert sorted(p.name for p in work.iterdir()) == ["a-1-000001", "b-2-000002", "state"]
        (source / "x").write_bytes(b"x")
        won = [c for c in (first.claim("x"), second.claim("x")) if c is not None]
        assert len(won) == 1 and won[0].path == work / "a-1-000001" / "claimed" / "x"
        # Both agents are alive: neither folder may be taken over.
        assert list(second.gone_agents(min_age=0.0)) == []
        assert first.claimed_anywhere("x") and second.claimed_anywhere("x")
        assert first.put_back(won[0])
    finally:
        first.close()
        second.close()
    assert sorted(p.name for p in work.iterdir()) == ["state"], "a clean close removes the agent's folder"


def test_the_claims_of_an_agent_that_is_gone_are_taken_over_old_layout_included(tmp_path: Path) -> None:
    source, work = tmp_path / "in", tmp_path / "in" / ".w"
    dead = ClaimFolder(source=source, work_folder=work, agent_id="dead-1-000001")
    live = ClaimFolder(source=source, work_folder=work, agent_id="live-2-000002")
    dead.open()
    live.open()
    try:
        (source / "sub").mkdir()
        (source / "sub" / "a").write_bytes(b"a")
        assert dead.claim("sub/a") is not None
        # A single-agent (earlier version) leftover, its lock free.
        (work / "claimed").mkdir()
        (work / "claimed" / "old").write_bytes(b"old")
        (work / "lock").touch()
        listed = list(live.gone_agents(min_age=0.0))
        assert [g.agent_id for g in listed] == ["(single-agent layout)"], "`dead` still holds its lock"
        for g in listed:
            g.release()
        assert (work / "dead-1-000001").is_dir()
        os.close(dead._lock_fd)  # the process dies: its lock goes with it
        dead._lock_fd = None
        gone = list(live.gone_agents(min_age=3600.0))
        assert [g.agent_id for g in gone] == ["(single-agent layout)"], "too young to take over"
        for g in gone:
            g.release()
        taken = 0
        for g in live.gone_agents(min_age=0.0):
            for name, path in list(g.files()):
                assert live.put_back_path(name, path)
                taken += 1
            assert g.remove()
        assert taken == 2
        assert (source / "sub" / "a").read_bytes() == b"a" and (source / "old").read_bytes() == b"old"
        assert sorted(p.name for p in work.iterdir()) == ["live-2-000002", "lock", "state"]
    finally:
        live.close()


def test_state_survives_a_new_store_and_is_tied_to_one_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.load()
    state = FileState(
        name="sub/a.csv", size=3, mtime_ns=7, first_claimed_at=1.5, attempts=2, done_actions=[0]
    )
    store.save(state)
    (tmp_path / "state" / "garbage.json").write_text("{")
    again = StateStore(tmp_path / "state")
    bad = again.load()
    loaded = again.get("sub/a.csv")
    assert loaded == state and len(bad) == 1
    assert (
        loaded is not None and loaded.matches(size=3, mtime_ns=7) and not loaded.matches(size=3, mtime_ns=8)
    )
    again.drop("sub/a.csv")
    fresh = StateStore(tmp_path / "state")
    fresh.load()
    assert fresh.get("sub/a.csv") is None
    assert [p.name for p in (tmp_path / "state").iterdir() if not p.name.startswith(".")] == ["garbage.json"]


# -- digests computed during the stability wait ------------------------------------------


def test_settling_files_are_reported_before_they_are_ready(tmp_path: Path) -> None:
    clock = FakeClock()
    scan = scanner(tmp_path, clock, min_age=5.0)
    (tmp_path / "big").write_bytes(b"x")
    assert scan.scan().settling == ()  # seen once: could still be growing
    clock.now += 1
    result = scan.scan()
    assert [c.name for c in result.settling] == ["big"] and result.ready == ()
    clock.now += 5
    result = scan.scan()
    assert result.settling == () and [c.name for c in result.ready] == ["big"]


def test_a_precomputed_digest_is_used_only_for_the_exact_version_it_was_computed_for(tmp_path: Path) -> None:
    import base64
    import hashlib
    import time as real_time

    from sft_agent.digests import PREHASH_MIN_BYTES, Prehasher, version_of

    path = tmp_path / "big.bin"
    body = os.urandom(PREHASH_MIN_BYTES + 123)
    path.write_bytes(body)
    hasher = Prehasher(tmp_path, chunk_size=1 << 20, should_stop=lambda: False, name="t")
    hasher.start()
    try:
        hasher.offer("big.bin", size=len(body))
        hasher.offer("small", size=10)  # ignored: hashing it at claim time is cheap
        version = version_of(path)
        assert version is not None
        deadline = real_time.monotonic() + 10
        while real_time.monotonic() < deadline:
            with hasher._lock:
                if "big.bin" in hasher._done:
                    break
            real_time.sleep(0.01)
        assert hasher.take("big.bin", (version[0], version[1] + 1, version[2])) is None  # another version
        hasher.offer("big.bin", size=len(body))
        deadline = real_time.monotonic() + 10
        digest = None
        while digest is None and real_time.monotonic() < deadline:
            digest = hasher.take("big.bin", version)
            real_time.sleep(0.01)
        assert digest == base64.b64encode(hashlib.sha256(body).digest()).decode()
    finally:
        hasher.stop()
