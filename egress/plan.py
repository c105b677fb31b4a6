"""Which objects a route delivers, and the destination name of each.

The name keeps the object's path relative to the row's resolved source prefix (so a
``*`` row keeps the sub-folders below it; nothing is flattened), drops ``.enc`` from
objects delivered decrypted, inserts the event date when ``timestamp_files`` is set
(``data.csv`` → ``data_20261122.csv``: before the first dot of the file name), adds
``.gz``/``.zst`` when compressing, and is prefixed by the resolved destination prefix:
as is for S3 (a key prefix), as a folder for SFT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from egress.errors import PermanentError, Reason
from egress.names import s3_key_problem, sft_path_problem
from egress.routing import RouteMatch, folder_problems
from egress.sources import SourceObject

_SUFFIXES = {"gz": ".gz", "zstd": ".zst"}


@dataclass(frozen=True)
class DeliveryItem:
    """One object of a route's delivery and the name it gets at the destination."""

    source: SourceObject
    destination_name: str


def _timestamped(name: str, when: datetime) -> str:
    folder, _, leaf = name.rpartition("/")
    hidden = "." if leaf.startswith(".") else ""
    stem, dot, extensions = leaf[len(hidden) :].partition(".")
    stamped = f"{hidden}{stem}_{when.strftime('%Y%m%d')}{dot}{extensions}"
    return f"{folder}/{stamped}" if folder else stamped


def decrypted_name(key: str) -> str:
    """The name of an object once decrypted: a trailing ``.enc`` dropped (never the whole name)."""
    return key[:-4] if key.endswith(".enc") and len(key.rsplit("/", 1)[-1]) > 4 else key


def relative_name(match: RouteMatch, key: str, *, event_time: datetime) -> str:
    """The object's name below the destination prefix."""
    if not key.startswith(match.resolved_source_prefix):
        raise PermanentError(
            Reason.UNSAFE_KEY, f"{key!r} is not under the route's prefix {match.resolved_source_prefix!r}"
        )
    route = match.route
    name = key[len(match.resolved_source_prefix) :]
    if route.decrypt:
        name = decrypted_name(name)
    if route.timestamp_files:
        name = _timestamped(name, event_time)
    if route.compress:
        name += _SUFFIXES.get(route.compress_fmt or "gz", "")
    return name


def destination_name(match: RouteMatch, key: str, *, event_time: datetime) -> str:
    """The full destination name: S3 key, or path under the SFT root.

    Raises ``PermanentError(unsafe_key)`` for a name the destination would refuse: the
    same check the SFT writer makes (:func:`egress.names.sft_path_problem`), made here for
    every object before any byte moves.
    """
    name = relative_name(match, key, event_time=event_time)
    if match.route.transfer_type == "SFT":
        check_relative_key(name)
    return _under_destination(match, name, source_key=key)


def manifest_name(match: RouteMatch) -> str | None:
    """Where the route's manifest goes: the flag's own folder at the destination (``*`` rows too)."""
    manifest = match.route.manifest_file_name
    if not manifest:
        return None
    flag_folder = match.delivery_prefix[len(match.resolved_source_prefix) :]
    return _under_destination(match, flag_folder + manifest, source_key=match.delivery_prefix + manifest)


def _under_destination(match: RouteMatch, name: str, *, source_key: str) -> str:
    prefix = match.destination_prefix
    if match.route.transfer_type == "SFT":
        folder = prefix.strip("/")
        full = f"{folder}/{name}" if folder else name
        problem = sft_path_problem(full)
    else:
        full = prefix + name
        problem = s3_key_problem(full)
    if problem is not None:
        raise PermanentError(Reason.UNSAFE_KEY, f"{source_key!r} would be delivered as {full!r}: {problem}")
    return full


def check_relative_key(relative: str) -> None:
    """Refuse a relative path that could escape its folder or that the agent would skip."""
    problems = folder_problems(relative, column="object key")
    if not relative or relative.endswith("/") or relative.startswith("/"):
        problems.append(f"object key {relative!r} is not a file path")
    if relative.endswith(".part"):
        problems.append(f"object key {relative!r} ends in .part, a name the agent treats as temporary")
    if problems:
        raise PermanentError(Reason.UNSAFE_KEY, "; ".join(dict.fromkeys(problems)))


def plan_route(
    match: RouteMatch, objects: Iterable[SourceObject], *, event_time: datetime
) -> Iterator[DeliveryItem]:
    """Map listed objects to destination names lazily; two objects on one name is an error."""
    seen: dict[str, str] = {}
    for obj in objects:
        name = destination_name(match, obj.key, event_time=event_time)
        if name in seen:
            raise PermanentError(
                Reason.NAME_COLLISION, f"{seen[name]!r} and {obj.key!r} would both be delivered as {name!r}"
            )
        seen[name] = obj.key
        yield DeliveryItem(source=obj, destination_name=name)


def name_items(
    match: RouteMatch, objects: Iterable[SourceObject], *, event_time: datetime
) -> Iterator[DeliveryItem]:
    """Map listed objects to destination names lazily, keeping nothing (names checked already)."""
    for obj in objects:
        yield DeliveryItem(
            source=obj, destination_name=destination_name(match, obj.key, event_time=event_time)
        )


def check_names(match: RouteMatch, objects: Iterable[SourceObject], *, event_time: datetime) -> int:
    """Check every object's destination name and that no two share one; returns how many objects.

    Made over a whole listing before any byte moves, page by page: it keeps 8 bytes of
    digest per name (a Python int in a set, about 60 bytes), not the names or the
    listing, so a folder of a million objects costs tens of megabytes, not the ~0.4 GiB
    the listing itself would. Two names with the same 64-bit digest (one chance in about
    10^7 for a million names) are reported as a collision: the route is refused, never
    half delivered.
    """
    seen: set[int] = set()
    count = 0
    for obj in objects:
        name = destination_name(match, obj.key, event_time=event_time)
        digest = int.from_bytes(
            hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
        )
        if digest in seen:
            raise PermanentError(
                Reason.NAME_COLLISION,
                f"{obj.key!r} would be delivered as {name!r}, the name of another object",
            )
        seen.add(digest)
        count += 1
    return count
