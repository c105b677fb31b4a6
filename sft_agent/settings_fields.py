"""The agent's field types: durations with their ranges, paths relative to the config,
header names and values, and secrets read from the environment or a file.

Validators that need more than the value (the environment, the config file's folder,
what a route inherits) read it from the :class:`ValidationContext` that
:func:`sft_agent.settings.build_settings` passes; without one (a model built directly,
as tests do) they use an empty environment and paths as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

from egress.settings_schema import DURATION, Secret, ValidatedAs

# Headers the agent owns: a config may not set them.
RESERVED_HEADERS: Final = frozenset(
    {"content-length", "repr-digest", "content-digest", "host", "transfer-encoding", "connection", "expect"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ROUTE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class ValidationContext:
    """What validation needs beyond the document: the environment, the config file's
    folder (for relative TLS paths), and what routes inherit (``defaults:``, ``tls:``)."""

    environ: Mapping[str, str] = field(default_factory=dict)
    config_dir: Path | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tls: Mapping[str, Any] = field(default_factory=dict)


def context_of(info: ValidationInfo) -> ValidationContext:
    """The context of the validation in progress (an empty one if none was given)."""
    return info.context if isinstance(info.context, ValidationContext) else ValidationContext()


def secret_from_environment(name: str, info: ValidationInfo) -> Secret:
    """The value of the environment variable ``name``, which must be set and not empty."""
    value = context_of(info).environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} is not set")
    return Secret(value)


def read_passphrase(path: Path) -> Secret:
    """A key passphrase from a file (one trailing newline is not part of it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from exc
    # One trailing newline is what editors and `echo` add; it is not part of the passphrase.
    value = text[:-1] if text.endswith("\n") else text
    if not value:
        raise ValueError(f"{path} is empty")
    return Secret(value)


def _config_relative(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError(f"must be a path, got {value!r}")
    base = context_of(info).config_dir
    path = Path(value)
    return base / path if base is not None and not path.is_absolute() else path


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError("is not a valid header name")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError("is set by the agent and may not be configured")
    return name


def _filename_header(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"is not a valid header name: {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError("is a header the agent sets itself")
    return name


def _header_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def _pairs(mapping: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(mapping.items())  # in the order the config wrote them


def _https_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"must be an https:// URL (mutual TLS), got {url!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {url!r}")
    if parts.fragment or parts.username or parts.password:
        raise ValueError("must not hold credentials or a fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {url!r}") from None
    return url


def _route_name(name: str) -> str:
    if not ROUTE_NAME.match(name):
        raise ValueError(f"letters, digits, '.', '_' or '-' (it is a metric label), got {name!r}")
    return name


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderText = Annotated[str, BeforeValidator(_header_text)]
# A mapping in the config; the ordered pairs the sender uses.
Headers = Annotated[tuple[tuple[str, str], ...], ValidatedAs(dict[HeaderName, HeaderText], build=_pairs)]
# Header name → the environment variable holding its value.
SecretHeaders = Annotated[
    tuple[tuple[str, Secret], ...],
    ValidatedAs(
        dict[HeaderName, Annotated[HeaderText, AfterValidator(secret_from_environment)]], build=_pairs
    ),
]
FilenameHeader = Annotated[str, AfterValidator(_filename_header)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
Method = Annotated[Literal["POST", "PUT"], BeforeValidator(_upper)]
RouteName = Annotated[str, AfterValidator(_route_name)]
ConfigPath = Annotated[Path, BeforeValidator(_config_relative)]
Threads = Annotated[int, Field(ge=1, le=64)]
PollInterval = Annotated[float, DURATION, Field(ge=0.05, le=3600)]
MinAge = Annotated[float, DURATION, Field(ge=0, le=86400)]
ConnectTimeout = Annotated[float, DURATION, Field(ge=0.1, le=600)]
ReadTimeout = Annotated[float, DURATION, Field(ge=0.1, le=3600)]
RetryDelay = Annotated[float, DURATION, Field(ge=0.01, le=7 * 86400)]
