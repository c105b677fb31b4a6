"""What a row lets through: its object filters (``include``/``exclude``) and its approval.

Filters are gitignore-style patterns (through ``pathspec``, the library git's own rules
are implemented in for Python) matched against each object's path relative to the
delivered folder: a pattern without a ``/`` matches a name at any depth (``_SUCCESS``,
``*.DS_Store``), ``**`` spans folders, a trailing ``/`` means everything below a folder.
An object is delivered when it matches an ``include`` pattern (or there are none) and
no ``exclude`` pattern.

An approval is a second person's word on the row as it was: ``approved_by`` (someone
other than ``updated_by``, the row's last editor), ``approved_at`` and ``approved_digest``,
a SHA-256 of every column that decides what is delivered where. Any edit of such a
column — through the CLI, which clears the approval, or behind its back in the console,
which changes the digest — leaves the row unapproved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pathspec
from pathspec.patterns.gitignore import GitIgnorePatternError

if TYPE_CHECKING:
    from egress.routing import Route

FILTER_COLUMNS = ("include", "exclude")
# Written by the CLI, never taken from a routes file or a put: who edited and who approved.
APPROVAL_COLUMNS = ("approved_by", "approved_at", "approved_digest")
EDIT_COLUMNS = ("updated_by", "updated_at")
ENABLE_COLUMNS = ("enabled_changed_by", "enabled_changed_at")
RECORD_COLUMNS = (*APPROVAL_COLUMNS, *EDIT_COLUMNS, *ENABLE_COLUMNS)
# Columns whose change does not change what is delivered where: switching a row off and on
# again keeps its approval.
NOT_DELIVERING = ("enabled", *RECORD_COLUMNS)


def pattern_problems(column: str, patterns: Sequence[str]) -> list[str]:
    """Why ``patterns`` cannot be the ``column`` filter (empty list if they can)."""
    problems = []
    for pattern in patterns:
        if not pattern or pattern != pattern.strip():
            problems.append(f"{column}: pattern {pattern!r} is empty or has surrounding spaces")
        elif pattern.startswith(("!", "#")):
            problems.append(
                f"{column}: pattern {pattern!r} starts with {pattern[0]!r}; negations and comments are not "
                "taken (list what to keep in include and what to skip in exclude)"
            )
        else:
            try:
                pathspec.PathSpec.from_lines("gitignore", [pattern])
            except (GitIgnorePatternError, ValueError) as exc:
                problems.append(f"{column}: pattern {pattern!r} is not a valid glob: {exc}")
    return problems


@dataclass(frozen=True)
class FilterVerdict:
    """Whether one object is delivered, and the pattern that decided it (None: no filter said so)."""

    kept: bool
    column: str | None = None
    pattern: str | None = None

    def describe(self) -> str:
        """``kept``, ``kept (include 'x')``, ``excluded ('*.tmp')``, ``not included``."""
        if self.kept:
            return f"kept (include {self.pattern!r})" if self.pattern else "kept"
        if self.column == "exclude":
            return f"excluded ({self.pattern!r})"
        return "not included (matches no include pattern)"


@dataclass(frozen=True)
class ObjectFilter:
    """A row's ``include`` and ``exclude`` patterns, compiled once per delivery."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _compiled: dict[str, list[tuple[str, pathspec.PathSpec]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for column in FILTER_COLUMNS:
            self._compiled[column] = [
                (pattern, pathspec.PathSpec.from_lines("gitignore", [pattern]))
                for pattern in getattr(self, column)
            ]

    @classmethod
    def for_route(cls, route: Route) -> ObjectFilter:
        return cls(include=route.include, exclude=route.exclude)

    @property
    def active(self) -> bool:
        """Whether any pattern is set (no filter keeps every object)."""
        return bool(self.include or self.exclude)

    def verdict(self, relative_path: str) -> FilterVerdict:
        """The fate of the object at ``relative_path`` (relative to the delivered folder)."""
        for pattern, spec in self._compiled["exclude"]:
            if spec.match_file(relative_path):
                return FilterVerdict(kept=False, column="exclude", pattern=pattern)
        if not self.include:
            return FilterVerdict(kept=True)
        for pattern, spec in self._compiled["include"]:
            if spec.match_file(relative_path):
                return FilterVerdict(kept=True, column="include", pattern=pattern)
        return FilterVerdict(kept=False, column="include")

    def keeps(self, relative_path: str) -> bool:
        return self.verdict(relative_path).kept


def as_patterns(value: Any, *, column: str, problems: list[str]) -> tuple[str, ...]:
    """A filter column as a tuple of patterns: a list (L), a string set (SS) or one string."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (set, frozenset)):
        value = sorted(value)  # a DynamoDB string set has no order: make it stable
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(value)
    problems.append(f"{column} must be a list of glob patterns (strings), got {value!r}")
    return ()


# -- approval ---------------------------------------------------------------------------------


def delivering_values(route: Route) -> dict[str, Any]:
    """The columns that decide what a row delivers where (everything but on/off and the records)."""
    return {column: value for column, value in route.to_plain().items() if column not in NOT_DELIVERING}


def approval_digest(route: Route) -> str:
    """``sha256:<hex>`` of the delivering columns: what an approval is an approval of."""
    canonical = json.dumps(delivering_values(route), sort_keys=True, default=list, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def same_identity(first: str, second: str) -> bool:
    """Whether two caller identities (ARNs) are one; case-insensitive, as IAM names are."""
    return bool(first) and first.casefold() == second.casefold()


@dataclass(frozen=True)
class ApprovalState:
    """Where a row stands: ``not_required``, ``approved``, ``pending``, ``self_approved`` or ``stale``."""

    state: str
    detail: str

    @property
    def delivers(self) -> bool:
        return self.state in {"not_required", "approved"}


def approval_state(route: Route) -> ApprovalState:
    """Whether the row may deliver as far as approval goes, and why not."""
    key = f"({route.source_prefix!r}, {route.pipeline_name!r})"
    how = f"egress routes approve {route.source_prefix} {route.pipeline_name}"
    if not route.approval_required:
        return ApprovalState("not_required", "approval not required")
    editor = route.updated_by or "unknown"
    if not route.approved_by:
        return ApprovalState(
            "pending",
            f"route {key} requires approval and has none; last edited by {editor}: "
            f"someone else approves it with `{how}`",
        )
    if same_identity(route.approved_by, route.updated_by):
        return ApprovalState(
            "self_approved",
            f"route {key} was approved by its own last editor {editor}; someone else must approve it",
        )
    if route.approved_digest != approval_digest(route):
        return ApprovalState(
            "stale",
            f"route {key} changed after {route.approved_by} approved it at {route.approved_at or '?'}; "
            f"it needs a new approval (`{how}`)",
        )
    return ApprovalState("approved", f"approved by {route.approved_by} at {route.approved_at}")
