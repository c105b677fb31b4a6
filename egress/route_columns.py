"""Checks of single route columns: booleans as the replaced system wrote them, SFT folders, file names.

Kept apart from :mod:`egress.routing` (which builds and finds rows) so the planner and
the local stack check names and folders the way a row is checked, without the table code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from egress.kernel.tempnames import TEMP_SUFFIXES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# SSM parameter names: "name" or "/a/b", letters, digits and _.-/ only, at most 2048
# characters and 15 levels (AWS's rules for GetParameter's Name).
_SSM_PARAMETER = re.compile(r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
SSM_PARAMETER_MAX = 2048
SSM_PARAMETER_LEVELS = 15
FILE_NAME_MAX = 255  # bytes: the longest name a file system (and the SFT agent) takes


def as_bool(value: Any, *, column: str, problems: list[str], default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    # The replaced system's rows sometimes hold "true"/"false" strings: accept them.
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    problems.append(f"{column} must be a boolean, got {value!r}")
    return default


def folder_problems(folder: str, *, column: str) -> list[str]:
    """Why ``folder`` cannot be a relative folder under the SFT root (empty list if fine)."""
    problems = []
    if folder.startswith("/"):
        problems.append(f"{column} {folder!r} must be relative to the SFT root, not absolute")
    if "\\" in folder or _CONTROL.search(folder):
        problems.append(f"{column} {folder!r} holds a backslash or a control character")
    segments = [segment for segment in folder.strip("/").split("/")]
    if any(segment in {"..", "."} for segment in segments):
        problems.append(f"{column} {folder!r} must not contain '.' or '..' segments")
    if any(segment.startswith(".") and segment not in {".", ".."} for segment in segments):
        problems.append(f"{column} {folder!r} has a hidden segment the agent would skip")
    if "//" in folder.strip("/"):
        problems.append(f"{column} {folder!r} has an empty segment")
    return problems


def file_name_problems(name: str, *, column: str) -> list[str]:
    """Why ``name`` (placeholders resolved) cannot be a file's name in a destination folder."""
    problems = []
    if not name or "/" in name or "\\" in name or name.startswith(".") or _CONTROL.search(name):
        problems.append(f"{column} {name!r} must be a plain, visible file name (no '/', no leading '.')")
    elif name.endswith(TEMP_SUFFIXES):
        problems.append(f"{column} {name!r} ends like a temporary file the SFT agent never sends")
    if len(name.encode("utf-8", "surrogatepass")) > FILE_NAME_MAX:
        problems.append(f"{column} is longer than {FILE_NAME_MAX} bytes")
    return problems


def ssm_parameter_problem(name: str) -> str | None:
    """Why ``name`` is not an SSM parameter name (``name`` or ``/a/b``), or None."""
    if len(name) > SSM_PARAMETER_MAX:
        return f"is longer than {SSM_PARAMETER_MAX} characters"
    if not _SSM_PARAMETER.match(name):
        return "must be a parameter name like 'name' or '/a/b' (letters, digits, '_', '.', '-', '/')"
    if name.strip("/").count("/") + 1 > SSM_PARAMETER_LEVELS:
        return f"has more than {SSM_PARAMETER_LEVELS} levels"
    return None


def sft_relative_folder(folder: str, *, sft_root: Path) -> str | None:
    """``folder`` relative to ``sft_root`` if it is an absolute path under it, else None.

    The replaced system wrote SFT folders as absolute paths on its volume
    (``/data-egress/RIS``); below the root they name the same folder here (``RIS/``).
    """
    root = str(sft_root).rstrip("/")
    if not folder.startswith("/") or not (folder == root or folder.startswith(root + "/")):
        return None
    relative = folder[len(root) :].lstrip("/")
    return relative.rstrip("/") + "/" if relative else ""
