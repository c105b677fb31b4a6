"""Which objects a route delivers, and the destination name of each.

The name keeps the object's path relative to the row's resolved source prefix (so a
``*`` row keeps the sub-folders below it; nothing is flattened), inserts the event date
when ``timestamp_files`` is set (as the replaced system did, DESIGN §12:
``x.json.gz.enc`` → ``x.json.20261122.gz.enc``), drops ``.enc`` from objects delivered
decrypted, adds ``.gz``/``.zst`` when compressing, and is prefixed by the resolved
destination prefix: as is for S3 (a key prefix), as a folder for SFT. The manifest and
the control file go to the flag's own folder at the destination, beside the files they
describe.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from egress.errors import PermanentError, Reason
from egress.kernel.placeholders import resolve_placeholders
from egress.names import s3_key_problem, sft_path_problem
from egress.route_columns import file_name_problems, folder_problems
from egress.routing import RouteMatch
from egress.sources import SourceObject

_SUFFIXES = {"gz": ".gz", "zstd": ".zst"}


@dataclass(frozen=True)
class DeliveryItem:
    """One object of a route's delivery and the name it gets at the destination."""

    source: SourceObject
    destination_name: str


# The trailing run of extensions of 1-3 characters each (".json" is not one): the replaced
# system's ((\.[^.]{1,3})+)$, kept to the file's own name.
_EXTENSIONS = re.compile(r"(?:\.[^./]{1,3})+$")


def timestamped_name(name: str, when: datetime) -> str:
    """``name`` with the date of ``when`` (``.YYYYMMDD``) inserted as the replaced system did.

    The date goes before the trailing run of extensions of 1-3 characters each
    (``x.json.gz.enc`` → ``x.json.20240131.gz.enc``); a name without one gets it appended
    (``report`` → ``report.20240131``, ``data.json`` → ``data.json.20240131``). Folders in
    ``name`` are left alone, and the leading dot of a hidden name is not an extension.
    """
    folder, slash, leaf = name.rpartition("/")
    body = leaf.lstrip(".")
    hidden = leaf[: len(leaf) - len(body)]
    stamp = when.strftime(".%Y%m%d")
    extensions = _EXTENSIONS.search(body)
    if extensions is not None and extensions.start() > 0:
        body = body[: extensions.start()] + stamp + body[extensions.start() :]
    else:
        body += stamp
    return f"{folder}{slash}{hidden}{body}"


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
    # Timestamp first, then drop .enc: the order DESIGN §12 states (the result is the same
    # either way, since ".enc" is always part of the run the date goes before).
    if route.timestamp_files:
        name = timestamped_name(name, event_time)
    if route.decrypt:
        name = decrypted_name(name)
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
    """Where the route's manifest goes: the flag's own folder at the destination (``*`` rows too).

    Its name is ``manifest_file_name`` with the placeholders resolved from the event time
    (the replaced system's rows write ``manifest-$TODAYS_YYYYMMDD_FORMATTED_DATE.json``).
    """
    manifest = match.manifest_file_name or match.route.manifest_file_name
    if not manifest:
        return None
    return _in_flag_folder(match, manifest)


def control_file_name(match: RouteMatch, *, event_time: datetime) -> str | None:
    """Where the route's control file goes (S3 key or path under the SFT root), or None.

    ``control_file_prefix`` with ``$TODAYS_DATE`` as ``YYYYMMDD`` (the replaced system's
    format for this name alone) and the other placeholders as usual, in the flag's own
    folder at the destination, beside the files it lists (for an exact row, and a ``*``
    row whose flag sits at the row's prefix, that is the destination folder itself).
    Raises ``PermanentError(invalid_route)`` for a name that is not a plain file name.
    """
    template = match.route.control_file_prefix
    if not template:
        return None
    # "$TODAYS_DATE" is no part of the longer placeholder names, so it can go first.
    name = resolve_placeholders(template.replace("$TODAYS_DATE", event_time.strftime("%Y%m%d")), event_time)
    problems = file_name_problems(name, column="control_file_prefix")
    if problems:
        raise PermanentError(Reason.INVALID_ROUTE, "; ".join(problems))
    return _in_flag_folder(match, name)


def control_file_body(names: Iterable[str]) -> bytes:
    """The control file's body: each delivered file's base name on a line of its own, ``\n``-terminated.

    Raises ``PermanentError(unsafe_key)`` for a name holding a line break, which would
    read as two names.
    """
    lines = []
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if "\n" in base or "\r" in base:
            raise PermanentError(
                Reason.UNSAFE_KEY, f"{base!r} holds a line break: it cannot be listed in a control file"
            )
        lines.append(base + "\n")
    return "".join(lines).encode("utf-8")


def _in_flag_folder(match: RouteMatch, name: str) -> str:
    flag_folder = match.delivery_prefix[len(match.resolved_source_prefix) :]
    return _under_destination(match, flag_folder + name, source_key=match.delivery_prefix + name)


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
