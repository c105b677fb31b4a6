"""Route filters and approvals: which objects a row lets through, and when it may deliver at all."""

from __future__ import annotations

from dataclasses import replace

import pytest

from egress.route_edits import stamped, without_records
from egress.route_policy import ObjectFilter, approval_digest, approval_state
from egress.routing import Route

ROW = {
    "source_prefix": "exports/opsmi/",
    "pipeline_name": "OpsMI",
    "recipient_name": "opsmi",
    "transfer_type": "S3",
    "source_bucket": "source-bucket",
    "destination_bucket": "dest-bucket",
    "destination_prefix": "in/",
}
ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"


@pytest.mark.parametrize(
    ("include", "exclude", "path", "kept"),
    [
        ((), ("*.DS_Store", "_SUCCESS"), "part-0.csv", True),
        ((), ("*.DS_Store", "_SUCCESS"), ".DS_Store", False),
        ((), ("*.DS_Store", "_SUCCESS"), "orders/.DS_Store", False),  # no '/': any depth
        ((), ("*.DS_Store", "_SUCCESS"), "orders/_SUCCESS", False),
        ((), ("*.DS_Store", "_SUCCESS"), "_SUCCESS.csv", True),
        ((), ("tmp/",), "tmp/a.csv", False),  # trailing '/': everything below the folder
        ((), ("tmp/",), "a/tmp/b.csv", False),
        ((), ("tmp/",), "tmp.csv", True),
        ((), ("/top.csv",), "top.csv", False),  # leading '/': anchored at the folder
        ((), ("/top.csv",), "sub/top.csv", True),
        (("*.csv",), (), "a/b/c.csv", True),
        (("*.csv",), (), "a/b/c.json", False),
        (("data/**",), (), "data/x/y.bin", True),
        (("data/**",), (), "other/data.bin", False),
        (("*.csv",), ("rejects/",), "rejects/r.csv", False),  # exclude wins over include
    ],
)
def test_filter_semantics_are_gitignore_patterns(
    include: tuple[str, ...], exclude: tuple[str, ...], path: str, kept: bool
) -> None:
    assert ObjectFilter(include=include, exclude=exclude).keeps(path) is kept


def test_verdict_names_the_deciding_pattern() -> None:
    patterns = ObjectFilter(include=("*.csv",), exclude=("_SUCCESS", "*.tmp.csv"))
    assert patterns.verdict("a.tmp.csv").describe() == "excluded ('*.tmp.csv')"
    assert patterns.verdict("a.csv").describe() == "kept (include '*.csv')"
    assert patterns.verdict("a.json").describe() == "not included (matches no include pattern)"
    assert ObjectFilter().verdict("anything").describe() == "kept"
    assert not ObjectFilter().active


def test_filter_columns_load_from_list_string_set_or_one_string() -> None:
    assert Route.from_plain({**ROW, "exclude": ["b", "a"]}).exclude == ("b", "a")
    assert Route.from_plain({**ROW, "exclude": {"b", "a"}}).exclude == ("a", "b")  # SS: sorted
    assert Route.from_plain({**ROW, "include": "*.csv"}).include == ("*.csv",)
    route = Route.from_plain({**ROW, "include": ["*.csv"], "exclude": ["_SUCCESS"]})
    assert route.problems() == []
    assert route.to_plain()["include"] == ["*.csv"]
    assert Route.from_item(route.to_item()) == route
    assert "include" not in Route.from_plain(ROW).to_plain()  # empty lists are not written


def test_approval_states() -> None:
    plain = Route.from_plain(ROW)
    assert approval_state(plain).state == "not_required" and approval_state(plain).delivers
    guarded = replace(Route.from_plain({**ROW, "approval_required": True}), updated_by=ALICE)
    pending = approval_state(guarded)
    assert pending.state == "pending" and not pending.delivers
    assert "egress routes approve exports/opsmi/ OpsMI" in pending.detail and ALICE in pending.detail

    approved = replace(guarded, approved_by=BOB, approved_at="t", approved_digest=approval_digest(guarded))
    assert approval_state(approved).state == "approved"
    assert approval_state(replace(approved, approved_by=ALICE.upper())).state == "self_approved"
    # A change behind the CLI's back (the console) leaves the digest behind: stale.
    edited = replace(approved, destination_bucket="elsewhere")
    assert approval_state(edited).state == "stale"
    # Switching the row off and on, or the records themselves, are not part of what was approved.
    assert approval_state(replace(approved, enabled=False, updated_at="later")).state == "approved"


def test_an_edit_drops_the_approval_and_a_switch_keeps_it() -> None:
    guarded = Route.from_plain({**ROW, "approval_required": True})
    written = stamped(guarded, current=None, editor=ALICE, at="t1")
    assert (written.updated_by, written.updated_at) == (ALICE, "t1")
    approved = replace(written, approved_by=BOB, approved_at="t2", approved_digest=approval_digest(written))

    same = stamped(without_records(guarded), current=approved, editor=BOB, at="t3")
    assert (same.approved_by, same.updated_by) == (BOB, ALICE)  # nothing changed: nothing recorded
    assert approval_state(same).delivers

    switched = stamped(replace(guarded, enabled=False), current=approved, editor=BOB, at="t3")
    assert (switched.approved_by, switched.updated_by, switched.enabled_changed_by) == (BOB, ALICE, BOB)

    moved = stamped(replace(guarded, destination_prefix="other/"), current=approved, editor=BOB, at="t4")
    assert (moved.approved_by, moved.updated_by, moved.updated_at) == ("", BOB, "t4")
    assert approval_state(moved).state == "pending"

    # A row offered with an approval of its own (a file, a put) never brings it in.
    forged = replace(guarded, approved_by=BOB, approved_digest=approval_digest(guarded))
    assert stamped(forged, current=None, editor=ALICE, at="t5").approved_by == ""
