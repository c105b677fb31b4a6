"""Which destination names can be delivered: one check, made by the plan before any byte moves.

The SFT writer refuses exactly what :func:`sft_path_problem` refuses, and the plan asks
the same question of every object of a route first, so a route is never left half
delivered because one name turned out to be unwritable.
"""

from __future__ import annotations

import unicodedata

from egress.kernel.tempnames import NAME_MAX, TEMP_SUFFIXES

PATH_MAX = 4096
S3_KEY_MAX = 1024  # bytes of a key, UTF-8
# Suffixes the SFT agent treats as unfinished files and never sends: a delivered file
# with one of them would sit on the volume forever, so such names are refused up front.
AGENT_SKIPPED_SUFFIXES = TEMP_SUFFIXES
# Room a temp name needs around the final name: ".<name>.<owner>-<token>.part".
TEMP_NAME_OVERHEAD = len("..") + 8 + 1 + 12 + len(".part")


def sft_path_problem(relative: str) -> str | None:
    """Why ``relative`` (a path under the SFT root) may not be written, or ``None``.

    Refused: empty or absolute paths, empty, ``.`` or ``..`` segments, backslashes,
    NUL and other control characters, text that is not valid Unicode, segments longer
    than 255 bytes, hidden names (a leading ``.``: the agent skips them), and names the
    agent treats as temporary (``.part``, ``.tmp``, ``~`` and the like).
    """
    if not relative:
        return "empty path"
    if relative.startswith("/"):
        return "absolute path"
    if "\\" in relative:
        return "backslash in path"
    if "\x00" in relative:
        return "NUL character in path"
    if any(unicodedata.category(char) == "Cc" for char in relative):
        return "control character in path"
    try:
        encoded = relative.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode (an undecodable byte)"
    if len(encoded) > PATH_MAX - 256:
        return "path too long"
    segments = relative.split("/")
    if any(segment == "" for segment in segments):
        return "empty path segment ('//' or a trailing '/')"
    if any(segment in {".", ".."} for segment in segments):
        return "'.' or '..' segment"
    if any(segment.startswith(".") for segment in segments):
        return "hidden name (the SFT agent skips names starting with '.')"
    if any(segment.endswith(AGENT_SKIPPED_SUFFIXES) for segment in segments):
        return (
            f"name ends in one of {' '.join(AGENT_SKIPPED_SUFFIXES)} (the SFT agent treats it as unfinished)"
        )
    if any(len(segment.encode("utf-8")) > NAME_MAX for segment in segments):
        return f"a path segment longer than {NAME_MAX} bytes"
    return None


def s3_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an S3 object key, or ``None``."""
    if not key:
        return "empty key"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode (an undecodable byte)"
    if len(encoded) > S3_KEY_MAX:
        return f"key longer than {S3_KEY_MAX} bytes"
    return None
