"""How rows and their matches are shown to operators: one-line summaries, and what a flag
would deliver (``routes explain``, ``replay --dry-run``): each object's destination name or the
pattern that keeps it back, the manifest and control file, the row's approval.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from egress.errors import PermanentError
from egress.messages import FlagEvent
from egress.plan import control_file_name, destination_name, manifest_name
from egress.route_policy import FILTER_COLUMNS, ObjectFilter, approval_state
from egress.routes_apply import route_destination
from egress.routing import Route, RouteMatch
from egress.sources import list_objects

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# How `routes list` shows approval states (egress.route_policy.ApprovalState.state).
APPROVAL_SHOWN = {
    "not_required": "-",
    "approved": "approved",
    "pending": "PENDING",
    "self_approved": "SELF-APPROVED",
    "stale": "STALE",
}


def route_summary(route: Route) -> dict[str, str]:
    flags = [name for name in ("decrypt", "compress", "timestamp_files") if getattr(route, name)]
    if route.rewrap_datakey:
        flags.append("rewrap")
    if route.manifest_file_name:
        flags.append("manifest")
    if route.control_file_prefix:
        flags.append("control-file")
    if route.role_arn:
        flags.append("cross-account")
    if route.include or route.exclude:
        flags.append("filters")
    if not route.enabled:
        flags.append("DISABLED")
    return {
        "source_prefix": route.source_prefix,
        "pipeline_name": route.pipeline_name,
        "transfer_type": route.transfer_type,
        "recipient_name": route.recipient_name,
        "destination": route_destination(route),
        "flags": ",".join(flags) or "-",
        "approval": APPROVAL_SHOWN[approval_state(route).state],
    }


def explain_entries(
    s3: S3Client, event: FlagEvent, matches: Sequence[RouteMatch], *, flag_name: str, limit: int
) -> list[dict[str, Any]]:
    """What each matching row would deliver for ``event``: the row's summary, its problems and
    warnings, each object's destination name (at most ``limit``), the manifest and control file.

    ``delivers_to`` is the destination with the placeholders resolved for the event's time.
    """
    when = event.event_time
    report: list[dict[str, Any]] = []
    for match in matches:
        entry: dict[str, Any] = {
            **route_summary(match.route),
            "delivers_to": resolved_destination(match),
            "problems": list(match.problems),
            "warnings": list(match.warnings),
            "objects": [],
        }
        approval = approval_state(match.route)
        if not approval.delivers:
            entry["not_approved"] = approval.detail
        patterns = ObjectFilter.for_route(match.route)
        # What each pattern keeps back or lets through, over the whole folder (not only `limit`).
        tally = {
            f"{column} {pattern!r}": 0 for column in FILTER_COLUMNS for pattern in getattr(patterns, column)
        }
        if not match.problems:
            entry.update(extra_files(match, when))
            listing = list_objects(s3, bucket=event.bucket, prefix=match.delivery_prefix, flag_name=flag_name)
            for obj in listing:
                verdict = patterns.verdict(obj.key[len(match.delivery_prefix) :])
                if verdict.pattern is not None:
                    tally[f"{verdict.column} {verdict.pattern!r}"] += 1
                if len(entry["objects"]) >= limit:
                    entry["truncated"] = True
                    continue
                if not verdict.kept:
                    name = verdict.describe()
                else:
                    try:
                        name = destination_name(match, obj.key, event_time=when)
                    except PermanentError as exc:
                        name = f"REFUSED ({exc.reason}: {exc.detail})"
                entry["objects"].append({"source_key": obj.key, "size": obj.size, "destination": name})
        if patterns.active:
            entry["patterns"] = tally
        report.append(entry)
    return report


def print_entry_details(entry: dict[str, Any], *, out: TextIO) -> None:
    """An :func:`explain_entries` entry's problems, warnings, objects and extra files, indented."""
    for problem in entry["problems"]:
        print(f"  INVALID: {problem}", file=out)
    for warning in entry["warnings"]:
        print(f"  WARNING: {warning}", file=out)
    if entry.get("not_approved"):
        print(f"  NOT APPROVED (the flag would go to the DLQ): {entry['not_approved']}", file=out)
    for pattern, count in entry.get("patterns", {}).items():
        verb = "keeps" if pattern.startswith("include") else "skips"
        print(f"  {pattern} {verb} {count} object(s)", file=out)
    for obj in entry["objects"]:
        print(f"  {obj['source_key']}  ->  {obj['destination']}", file=out)
    if entry.get("truncated"):
        print("  … (more objects not listed)", file=out)
    if not entry["problems"] and not entry["objects"]:
        print("  (no objects under the flag's folder yet)", file=out)
    for label in ("manifest", "control_file"):
        if entry.get(label):
            print(f"  ({label.replace('_', ' ')})  ->  {entry[label]}", file=out)


def resolved_destination(match: RouteMatch) -> str:
    """Where a match delivers, placeholders resolved: ``s3://bucket/prefix`` or ``sft:folder``."""
    if match.route.transfer_type == "S3":
        return f"s3://{match.route.destination_bucket}/{match.destination_prefix}"
    return f"sft:{match.destination_prefix}"


def extra_files(match: RouteMatch, when: datetime) -> dict[str, str]:
    """The names of the manifest and the control file a delivery would write, if any."""
    extra: dict[str, str] = {}
    try:
        manifest = manifest_name(match)
        control = control_file_name(match, event_time=when)
    except PermanentError as exc:
        return {"manifest": f"REFUSED ({exc.reason}: {exc.detail})"}
    if manifest:
        extra["manifest"] = manifest
    if control:
        extra["control_file"] = control
    return extra


def any_undeliverable(entries: Sequence[dict[str, Any]]) -> bool:
    """Whether a flag would be dead-lettered: a matching row is invalid or not approved."""
    return any(entry["problems"] or entry.get("not_approved") for entry in entries)
