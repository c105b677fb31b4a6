"""Names of files that are not finished yet, as writers make them and the agent skips them.

Every writer (the worker's SFT destination, the agent, the receiver) writes under a
hidden temporary sibling ``.<name>.<token>.part`` and renames it last; the agent never
picks up a hidden name or one that ends in a suffix that writers use for unfinished files.
"""

from __future__ import annotations

import secrets
from typing import Final

NAME_MAX: Final = 255  # bytes in one file name on Linux file systems (ext4, xfs, EFS)
# Names a writer uses while a file is incomplete; the agent never picks them up.
TEMP_SUFFIXES: Final = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", "~")


def is_hidden_or_temp(name: str) -> bool:
    """True for names that are hidden (``.x``) or that writers use for unfinished files."""
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def temp_name(name: str, *, token: str | None = None) -> str:
    """The hidden temporary name ``.<name>.<token>.part`` for ``name``, at most ``NAME_MAX`` bytes.

    ``token`` defaults to 12 random hex digits. The name is cut to fit by its UTF-8 bytes,
    at a character boundary: a name of 255 bytes of ``€`` is 85 characters, and cutting
    characters would leave a temp name too long to create. ("ignore" drops the bytes of a
    character the cut split in two and, in a name that came in with surrogate escapes,
    those bytes too: a temp name need not round-trip.)
    """
    token = token if token is not None else secrets.token_hex(6)
    room = NAME_MAX - len(f"..{token}.part".encode())
    stem = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{stem}.{token}.part"
