"""The agent's settings: one frozen object, built once from YAML and the environment.

Every problem found while building it is collected and reported together, each one
prefixed with the key it is about (``routes[0].actions[1].http.url: …``), so an
operator fixes a config in one pass. Environment variables (``SFT_AGENT_*``) win over
the file. Nothing reads ``os.environ`` after start-up: secrets named by the config
(a key passphrase, a header value) are read here, once, into :class:`Secret` values
whose ``repr`` never shows them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

T = TypeVar("T")

CONFIG_ENV = "SFT_AGENT_CONFIG"
LEDGER_TABLE_ENV = "SFT_AGENT_LEDGER_TABLE"
DEFAULT_METRICS_PORT = 9091
MIB = 1024 * 1024

# Date placeholders a rename replacement may hold (the same names as the routes table's).
DATE_PLACEHOLDERS = {
    "$TODAYS_YYYYMMDD_HHMMSS_FORMATTED_DATE": "%Y%m%d_%H%M%S",
    "$TODAYS_YYYYMMDD_FORMATTED_DATE": "%Y%m%d",
    "$TODAYS_DATE": "%Y-%m-%d",
}
# Headers the agent owns: a config may not set them.
RESERVED_HEADERS = frozenset(
    {"content-length", "repr-digest", "content-digest", "host", "transfer-encoding", "connection", "expect"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|(\d{1,2}))")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


class SettingsError(ValueError):
    """The config is invalid. ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid sft-agent config:\n  - " + "\n  - ".join(problems))
        self.problems = tuple(problems)


class Secret:
    """A value read from a file or the environment that must never reach a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(value: object) -> float:
    """Seconds from ``2s``, ``500ms``, ``10m``, ``1h``, ``1h30m``, ``1d`` or a bare number of seconds.

    Raises ``ValueError`` for anything else, including negative values.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().lower().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0:
            raise ValueError(f"{value!r} is negative")
        return number
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 2s, 10m, 1h)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff between attempts at one file.

    The delay before attempt ``n + 1`` is ``min(initial_delay × multiplier^(n-1), max_delay)``,
    spread by ``± jitter`` (a fraction). After ``max_attempts`` failed attempts the file
    goes to the route's error folder.
    """

    max_attempts: int = 8
    initial_delay: float = 600.0
    max_delay: float = 3600.0
    multiplier: float = 2.0
    jitter: float = 0.1


@dataclass(frozen=True)
class TlsSettings:
    """Client side of mutual TLS: PEM certificate and key, trusted CAs, hostname checks."""

    client_cert: Path
    client_key: Path
    client_key_passphrase: Secret | None = None
    ca_bundle: Path | None = None
    verify_hostname: bool = True
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


@dataclass(frozen=True)
class HttpAction:
    """Stream the file to ``url`` (POST: as is; PUT: the file name appended, a collection)."""

    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    secret_headers: tuple[tuple[str, Secret], ...] = ()
    filename_header: str = "Filename"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    kind: Literal["http"] = "http"


@dataclass(frozen=True)
class CopyAction:
    """Copy the file into another folder (temp name, fsync, rename: never seen partial)."""

    destination: Path

    kind: Literal["copy"] = "copy"


@dataclass(frozen=True)
class RenameAction:
    """Change the name the following actions use: ``pattern.sub(replacement, name)``.

    The replacement may hold the date placeholders of :data:`DATE_PLACEHOLDERS`,
    resolved (UTC) from the time the file was first claimed, so retries keep the name.
    """

    pattern: re.Pattern[str]
    replacement: str

    kind: Literal["rename"] = "rename"


Action = HttpAction | CopyAction | RenameAction


@dataclass(frozen=True)
class RouteSettings:
    """One watched folder and what happens to each ready file in it."""

    name: str
    source: Path
    filename_regex: re.Pattern[str]
    actions: tuple[Action, ...]
    error_folder: Path
    delete_on_send: bool = True
    sent_folder: Path | None = None
    work_folder: Path = Path()
    recursive: bool = False
    threads: int = 3
    poll_interval: float = 2.0
    min_age: float = 5.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    tls: TlsSettings | None = None

    @property
    def http_actions(self) -> tuple[HttpAction, ...]:
        """The route's http actions, in order."""
        return tuple(a for a in self.actions if isinstance(a, HttpAction))


@dataclass(frozen=True)
class LedgerSettings:
    """Where the agent records each file's fate: the worker's ledger table (docs/exactly-once.md).

    ``sft_root`` is the volume root the worker writes under: a file's ledger key is its
    path relative to it. Files ``written`` longer than ``unsent_after`` ago and not yet
    sent are counted every ``unsent_check_interval``. AWS region, endpoint and
    credentials come from the standard environment (``AWS_REGION``, ``AWS_ENDPOINT_URL``, …).
    """

    table: str
    sft_root: Path = Path("/data-egress")
    unsent_after: float = 3600.0
    unsent_check_interval: float = 60.0
    region: str | None = None  # AWS_REGION or AWS_DEFAULT_REGION, read at start


@dataclass(frozen=True)
class AgentSettings:
    """Everything ``sft-agent run`` needs. Built by :func:`load_settings`, validated there.

    Memory: each sending thread holds one ``chunk_size`` buffer (1 MiB) and at most 64 KiB
    of a response, so the data path needs about ``Σ threads × 1.1 MiB`` whatever the
    file sizes.
    """

    routes: tuple[RouteSettings, ...]
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus and ECS health checks scrape it
    metrics_port: int = DEFAULT_METRICS_PORT
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    shutdown_grace: float = 25.0
    chunk_size: int = MIB
    config_path: Path | None = None
    ledger: LedgerSettings | None = None


class _Problems:
    """Collects problems, each prefixed with the key path it is about."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.lines.append(f"{key}: {problem}")


class _Section:
    """A mapping read key by key; unread keys are reported as unknown when closed."""

    def __init__(self, raw: object, path: str, problems: _Problems) -> None:
        self.path = path
        self.problems = problems
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.add(path or "(top level)", f"must be a mapping, got {type(raw).__name__}")
            raw = {}
        self.raw: dict[str, Any] = {str(k): v for k, v in raw.items()}
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self.raw.get(name, default)

    def typed(self, name: str, parse: Callable[[Any], T], default: T) -> T:
        """The value under ``name`` parsed, or ``default`` (after a problem is recorded)."""
        self.read.add(name)
        if name not in self.raw:
            return default
        try:
            return parse(self.raw[name])
        except (ValueError, TypeError) as exc:
            self.problems.add(self.key(name), str(exc))
            return default

    def close(self, *, also_known: tuple[str, ...] = ()) -> None:
        known = self.read | set(also_known)
        for name in self.raw:
            if name not in known:
                hint = difflib.get_close_matches(name, sorted(known), n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problems.add(self.key(name), f"unknown key{suggestion}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, got {value!r}")


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _number_in(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return float(value)

    return parse


def _duration_in(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"must be between {low:g}s and {high:g}s, got {value!r}")
        return seconds

    return parse


def _absolute_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {value!r}")
    if ".." in path.parts:
        raise ValueError(f"must not contain '..', got {value!r}")
    return Path(os.path.normpath(path))


def _path(value: Any, *, base: Path | None) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path, got {value!r}")
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _regex(value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ValueError(f"must be a regular expression string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc


def _check_group_refs(pattern: re.Pattern[str], replacement: str) -> None:
    for match in _GROUP_REF.finditer(replacement):
        named, numbered = match.groups()
        ref = named if named is not None else numbered
        if ref.isdigit():
            if int(ref) > pattern.groups:
                raise ValueError(f"replacement refers to group {ref}, the pattern has {pattern.groups}")
        elif ref not in pattern.groupindex:
            raise ValueError(f"replacement refers to group {ref!r}, which the pattern does not define")


def _passphrase(section: _Section, environ: Mapping[str, str], base: Path | None) -> Secret | None:
    if section.has("client_key_passphrase"):
        section.get("client_key_passphrase")
        section.problems.add(
            section.key("client_key_passphrase"),
            "a passphrase may not be written in the config; name a file (client_key_passphrase_file) "
            "or an environment variable (client_key_passphrase_env)",
        )
        return None
    file_value = section.get("client_key_passphrase_file")
    env_value = section.get("client_key_passphrase_env")
    if file_value is not None and env_value is not None:
        section.problems.add(
            section.key("client_key_passphrase_file"),
            "give either client_key_passphrase_file or client_key_passphrase_env, not both",
        )
        return None
    if file_value is not None:
        try:
            path = _path(file_value, base=base)
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else str(exc)
            section.problems.add(section.key("client_key_passphrase_file"), f"cannot read: {problem}")
            return None
        # One trailing newline is what editors and `echo` add; it is not part of the passphrase.
        value = text[:-1] if text.endswith("\n") else text
        if not value:
            section.problems.add(section.key("client_key_passphrase_file"), f"{path} is empty")
            return None
        return Secret(value)
    if env_value is not None:
        if not isinstance(env_value, str) or not env_value:
            section.problems.add(
                section.key("client_key_passphrase_env"), "must name an environment variable"
            )
            return None
        if not environ.get(env_value):
            section.problems.add(
                section.key("client_key_passphrase_env"), f"environment variable {env_value} is not set"
            )
            return None
        return Secret(environ[env_value])
    return None


_TLS_KEYS = (
    "client_cert",
    "client_key",
    "client_key_passphrase",
    "client_key_passphrase_file",
    "client_key_passphrase_env",
    "ca_bundle",
    "verify_hostname",
    "min_version",
)


def _tls(
    raw: object,
    path: str,
    problems: _Problems,
    *,
    base: Mapping[str, Any],
    environ: Mapping[str, str],
    config_dir: Path | None,
) -> TlsSettings | None:
    """TLS settings from ``raw`` laid over ``base`` (the global section, for a route override)."""
    override = _Section(raw, path, problems)
    for name in _TLS_KEYS:
        override.get(name)
    override.close()
    whole = _Section({**base, **override.raw}, path, problems)
    passphrase = _passphrase(whole, environ, config_dir)
    verify = whole.typed("verify_hostname", _bool, True)
    min_version = whole.get("min_version", "TLSv1.2")
    if min_version not in ("TLSv1.2", "TLSv1.3"):
        problems.add(whole.key("min_version"), f"must be TLSv1.2 or TLSv1.3, got {min_version!r}")
        min_version = "TLSv1.2"
    paths: dict[str, Path | None] = {}
    for name, required in (("client_cert", True), ("client_key", True), ("ca_bundle", False)):
        value = whole.get(name)
        paths[name] = None
        if value is None:
            if required:
                problems.add(whole.key(name), "required (every http action uses mutual TLS)")
            continue
        try:
            paths[name] = _path(value, base=config_dir)
        except ValueError as exc:
            problems.add(whole.key(name), str(exc))
    cert, key = paths["client_cert"], paths["client_key"]
    if cert is None or key is None:
        return None
    return TlsSettings(
        client_cert=cert,
        client_key=key,
        client_key_passphrase=passphrase,
        ca_bundle=paths["ca_bundle"],
        verify_hostname=verify,
        min_version=min_version,
    )


def _retry(raw: object, path: str, problems: _Problems, *, base: RetrySettings) -> RetrySettings:
    section = _Section(raw, path, problems)
    retry = RetrySettings(
        max_attempts=section.typed("max_attempts", _int_in(1, 1000), base.max_attempts),
        initial_delay=section.typed("initial_delay", _duration_in(0.01, 7 * 86400), base.initial_delay),
        max_delay=section.typed("max_delay", _duration_in(0.01, 7 * 86400), base.max_delay),
        multiplier=section.typed("multiplier", _number_in(1.0, 10.0), base.multiplier),
        jitter=section.typed("jitter", _number_in(0.0, 1.0), base.jitter),
    )
    section.close()
    if retry.max_delay < retry.initial_delay:
        problems.add(section.key("max_delay"), "must not be shorter than initial_delay")
    return retry


def _headers(raw: object, key: str, problems: _Problems) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(key, "must be a mapping of header name to value")
        return {}
    headers: dict[str, str] = {}
    for name, value in raw.items():
        name = str(name)
        if not _TOKEN.match(name):
            problems.add(f"{key}.{name}", "is not a valid header name")
        elif name.lower() in RESERVED_HEADERS:
            problems.add(f"{key}.{name}", "is set by the agent and may not be configured")
        elif not isinstance(value, str | int) or isinstance(value, bool):
            problems.add(f"{key}.{name}", f"must be a string, got {value!r}")
        elif any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
            problems.add(f"{key}.{name}", "must not contain control characters")
        else:
            headers[name] = str(value)
    return headers


def _http_action(
    raw: object, path: str, problems: _Problems, *, defaults: Mapping[str, float], environ: Mapping[str, str]
) -> HttpAction | None:
    section = _Section(raw, path, problems)
    url = section.get("url")
    ok = True
    if not isinstance(url, str) or not url:
        problems.add(section.key("url"), "required: the https:// URL to send to")
        ok = False
    else:
        parts = urlsplit(url)
        if parts.scheme != "https":
            problems.add(section.key("url"), f"must be an https:// URL (mutual TLS), got {url!r}")
            ok = False
        elif not parts.hostname:
            problems.add(section.key("url"), f"has no host: {url!r}")
            ok = False
        elif parts.fragment or parts.username or parts.password:
            problems.add(section.key("url"), "must not hold credentials or a fragment")
            ok = False
        else:
            try:
                _ = parts.port
            except ValueError:
                problems.add(section.key("url"), f"has an invalid port: {url!r}")
                ok = False
    method = str(section.get("method", "POST")).upper()
    if method not in ("POST", "PUT"):
        problems.add(section.key("method"), f"must be POST or PUT, got {section.raw.get('method')!r}")
        ok = False
    headers = _headers(section.get("headers"), section.key("headers"), problems)
    secret_headers: list[tuple[str, Secret]] = []
    raw_secret = section.get("secret_headers")
    if raw_secret is not None:
        checked = _headers(raw_secret, section.key("secret_headers"), problems)
        for name, variable in checked.items():
            if not environ.get(variable):
                problems.add(
                    f"{section.key('secret_headers')}.{name}", f"environment variable {variable} is not set"
                )
            else:
                secret_headers.append((name, Secret(environ[variable])))
    filename_header = section.get("filename_header", "Filename")
    if not isinstance(filename_header, str) or not _TOKEN.match(filename_header):
        problems.add(section.key("filename_header"), f"is not a valid header name: {filename_header!r}")
        ok = False
    elif filename_header.lower() in RESERVED_HEADERS:
        problems.add(section.key("filename_header"), "is a header the agent sets itself")
        ok = False
    connect = section.typed("connect_timeout", _duration_in(0.1, 600), defaults["connect_timeout"])
    read = section.typed("read_timeout", _duration_in(0.1, 3600), defaults["read_timeout"])
    section.close()
    if not ok:
        return None
    return HttpAction(
        url=str(url),
        method="PUT" if method == "PUT" else "POST",
        headers=tuple(headers.items()),
        secret_headers=tuple(secret_headers),
        filename_header=str(filename_header),
        connect_timeout=connect,
        read_timeout=read,
    )


def _action(
    raw: object, path: str, problems: _Problems, *, defaults: Mapping[str, float], environ: Mapping[str, str]
) -> Action | None:
    kinds = ("http", "copy", "rename")
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in kinds:
        problems.add(path, f"must be a mapping with exactly one of {', '.join(kinds)}, got {raw!r}")
        return None
    kind, body = next(iter(raw.items()))
    key = f"{path}.{kind}"
    if kind == "http":
        return _http_action(body, key, problems, defaults=defaults, environ=environ)
    section = _Section(body, key, problems)
    if kind == "copy":
        destination = section.typed("destination", _absolute_path, None)
        if not section.has("destination"):
            problems.add(section.key("destination"), "required: the folder to copy into")
        section.close()
        return CopyAction(destination=destination) if destination is not None else None
    pattern = section.typed("regex", _regex, None)
    replacement = section.get("replacement")
    if not section.has("regex"):
        problems.add(section.key("regex"), "required: the pattern to replace in the file name")
    if not isinstance(replacement, str):
        problems.add(section.key("replacement"), f"required: a string, got {replacement!r}")
        replacement = None
    section.close()
    if pattern is None or replacement is None:
        return None
    try:
        _check_group_refs(pattern, replacement)
    except ValueError as exc:
        problems.add(section.key("replacement"), str(exc))
        return None
    return RenameAction(pattern=pattern, replacement=replacement)


@dataclass(frozen=True)
class _Defaults:
    poll_interval: float = 2.0
    min_age: float = 5.0
    threads: int = 3
    retry: RetrySettings = RetrySettings()
    timeouts: Mapping[str, float] = field(
        default_factory=lambda: {"connect_timeout": 10.0, "read_timeout": 60.0}
    )


def _defaults(raw: object, problems: _Problems) -> _Defaults:
    section = _Section(raw, "defaults", problems)
    result = _Defaults(
        poll_interval=section.typed("poll_interval", _duration_in(0.05, 3600), 2.0),
        min_age=section.typed("min_age", _duration_in(0.0, 86400), 5.0),
        threads=section.typed("threads", _int_in(1, 64), 3),
        retry=_retry(section.get("retry"), "defaults.retry", problems, base=RetrySettings()),
        timeouts={
            "connect_timeout": section.typed("connect_timeout", _duration_in(0.1, 600), 10.0),
            "read_timeout": section.typed("read_timeout", _duration_in(0.1, 3600), 60.0),
        },
    )
    section.close()
    return result


def _route(
    raw: object,
    index: int,
    problems: _Problems,
    *,
    defaults: _Defaults,
    tls_raw: Mapping[str, Any],
    environ: Mapping[str, str],
    config_dir: Path | None,
) -> RouteSettings | None:
    path = f"routes[{index}]"
    section = _Section(raw, path, problems)
    before = len(problems.lines)
    name = section.get("name")
    if not isinstance(name, str) or not _ROUTE_NAME.match(name):
        problems.add(
            section.key("name"),
            f"required: letters, digits, '.', '_' or '-' (it is a metric label), got {name!r}",
        )
        name = None
    else:
        path = f"routes[{index}]({name})"
        section.path = path
    source = section.typed("source", _absolute_path, None)
    if not section.has("source"):
        problems.add(section.key("source"), "required: the folder to watch")
    regex = section.typed("filename_regex", _regex, re.compile(".*"))
    raw_actions = section.get("actions")
    actions: list[Action] = []
    if not isinstance(raw_actions, list) or not raw_actions:
        problems.add(section.key("actions"), "required: a non-empty list of http, copy or rename actions")
    else:
        for position, raw_action in enumerate(raw_actions):
            action = _action(
                raw_action,
                f"{section.key('actions')}[{position}]",
                problems,
                defaults=defaults.timeouts,
                environ=environ,
            )
            if action is not None:
                actions.append(action)
        if actions and all(isinstance(a, RenameAction) for a in actions):
            problems.add(section.key("actions"), "only renames: nothing would be delivered")
    delete_on_send = section.typed("delete_on_send", _bool, False)
    sent_folder = section.typed("sent_folder", _absolute_path, None)
    if delete_on_send and sent_folder is not None:
        problems.add(
            section.key("sent_folder"), "give either delete_on_send: true or a sent_folder, not both"
        )
    if not delete_on_send and sent_folder is None and not section.has("sent_folder"):
        problems.add(
            section.key("delete_on_send"),
            "set delete_on_send: true or a sent_folder, otherwise every file would be sent again",
        )
    error_folder = section.typed("error_folder", _absolute_path, None)
    if not section.has("error_folder"):
        problems.add(section.key("error_folder"), "required: where files go after the last failed attempt")
    work_folder = section.typed("work_folder", _absolute_path, None)
    recursive = section.typed("recursive", _bool, False)
    threads = section.typed("threads", _int_in(1, 64), defaults.threads)
    poll = section.typed("poll_interval", _duration_in(0.05, 3600), defaults.poll_interval)
    min_age = section.typed("min_age", _duration_in(0.0, 86400), defaults.min_age)
    retry = defaults.retry
    if section.has("retry"):
        retry = _retry(section.get("retry"), section.key("retry"), problems, base=defaults.retry)
    tls: TlsSettings | None = None
    if any(isinstance(a, HttpAction) for a in actions) or section.has("tls"):
        tls = _tls(
            section.get("tls"),
            section.key("tls") if section.has("tls") else "tls",
            problems,
            base=tls_raw,
            environ=environ,
            config_dir=config_dir,
        )
    section.close()
    if len(problems.lines) != before or name is None or source is None or error_folder is None:
        return None
    return RouteSettings(
        name=name,
        source=source,
        filename_regex=regex,
        actions=tuple(actions),
        error_folder=error_folder,
        delete_on_send=delete_on_send,
        sent_folder=sent_folder,
        work_folder=work_folder or source / ".sft-agent",
        recursive=recursive,
        threads=threads,
        poll_interval=poll,
        min_age=min_age,
        retry=retry,
        tls=tls,
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_folders(routes: list[RouteSettings], problems: _Problems) -> None:
    """Folders that would make files loop, or two routes fight over one folder."""
    sources: dict[Path, str] = {}
    for index, route in enumerate(routes):
        key = f"routes[{index}]({route.name})"
        if route.source in sources:
            problems.add(
                f"{key}.source",
                f"already the source of route {sources[route.source]!r} (one route per folder; "
                "fan out with actions)",
            )
        sources.setdefault(route.source, route.name)
        own = [("error_folder", route.error_folder)]
        if route.sent_folder is not None:
            own.append(("sent_folder", route.sent_folder))
        for name, folder in own:
            if folder == route.source or (route.recursive and _inside(folder, route.source)):
                problems.add(f"{key}.{name}", "must not be the source folder (files would be sent again)")
        if route.recursive and _inside(route.work_folder, route.source):
            below = route.work_folder.relative_to(route.source).parts
            if not below or not any(part.startswith(".") for part in below):
                problems.add(
                    f"{key}.work_folder", "inside a recursive source it must be a hidden folder (.name)"
                )
        for position, action in enumerate(route.actions):
            if isinstance(action, CopyAction) and action.destination == route.source:
                problems.add(
                    f"{key}.actions[{position}].copy.destination",
                    "is the route's own source: files would loop",
                )
    for index, route in enumerate(routes):
        for other in routes:
            if other is not route and other.source in (route.error_folder, route.sent_folder):
                problems.add(
                    f"routes[{index}]({route.name}).error_folder",
                    f"is the source of route {other.name!r}: failed files would be sent again",
                )
    work_folders: dict[Path, str] = {}
    for index, route in enumerate(routes):
        if route.work_folder in work_folders:
            problems.add(
                f"routes[{index}]({route.name}).work_folder",
                f"already the work_folder of route {work_folders[route.work_folder]!r} (one per route)",
            )
        work_folders.setdefault(route.work_folder, route.name)
    names = [r.name for r in routes]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add("routes", f"route name {name!r} is used more than once")


def _ledger(raw: object, problems: _Problems, *, environ: Mapping[str, str]) -> LedgerSettings | None:
    """The ``ledger:`` section; ``SFT_AGENT_LEDGER_TABLE`` alone enables it with the defaults."""
    env_table = environ.get(LEDGER_TABLE_ENV)
    if raw is None and not env_table:
        return None
    section = _Section(raw, "ledger", problems)
    table = env_table or section.get("table")
    section.read.add("table")
    sft_root = section.typed("sft_root", _absolute_path, Path("/data-egress"))
    unsent_after = section.typed("unsent_after", _duration_in(0.0, 90 * 86400), 3600.0)
    interval = section.typed("unsent_check_interval", _duration_in(1.0, 86400), 60.0)
    section.close()
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        problems.add(
            "ledger.table",
            f"required: the ledger table's name (or set {LEDGER_TABLE_ENV}), got {table!r}",
        )
        return None
    return LedgerSettings(
        table=table,
        sft_root=sft_root,
        unsent_after=unsent_after,
        unsent_check_interval=interval,
        region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
    )


def build_settings(
    raw: object,
    *,
    environ: Mapping[str, str],
    config_dir: Path | None = None,
    config_path: Path | None = None,
) -> AgentSettings:
    """Settings from an already parsed YAML document and the environment (which wins)."""
    problems = _Problems()
    top = _Section(raw, "", problems)
    defaults = _defaults(top.get("defaults"), problems)
    tls_raw = top.get("tls")
    if tls_raw is not None and not isinstance(tls_raw, Mapping):
        problems.add("tls", "must be a mapping")
        tls_raw = {}
    tls_raw = dict(tls_raw or {})
    tls_check = _Section(tls_raw, "tls", problems)
    for known in _TLS_KEYS:
        tls_check.get(known)
    tls_check.close()
    routes: list[RouteSettings] = []
    raw_routes = top.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        problems.add("routes", "required: a non-empty list of routes")
    else:
        for index, raw_route in enumerate(raw_routes):
            route = _route(
                raw_route,
                index,
                problems,
                defaults=defaults,
                tls_raw=tls_raw,
                environ=environ,
                config_dir=config_dir,
            )
            if route is not None:
                routes.append(route)
        _check_folders(routes, problems)
    metrics = _Section(top.get("metrics"), "metrics", problems)
    metrics_host = metrics.get("host", "0.0.0.0")  # noqa: S104 - scraped from outside the task
    metrics_port = metrics.typed("port", _int_in(0, 65535), DEFAULT_METRICS_PORT)
    metrics.close()
    logging_section = _Section(top.get("logging"), "logging", problems)
    log_format = logging_section.get("format", "json")
    log_level = logging_section.get("level", "info")
    logging_section.close()
    shutdown_grace = top.typed("shutdown_grace", _duration_in(0.0, 3600), 25.0)
    ledger = _ledger(top.get("ledger"), problems, environ=environ)
    top.close()

    if environ.get("SFT_AGENT_METRICS_PORT"):
        try:
            metrics_port = _int_in(0, 65535)(int(environ["SFT_AGENT_METRICS_PORT"]))
        except ValueError as exc:
            problems.add("SFT_AGENT_METRICS_PORT", str(exc))
    metrics_host = environ.get("SFT_AGENT_METRICS_HOST") or metrics_host
    log_format = environ.get("SFT_AGENT_LOG_FORMAT") or log_format
    log_level = environ.get("SFT_AGENT_LOG_LEVEL") or log_level
    if log_format not in ("json", "console"):
        problems.add("logging.format", f"must be json or console, got {log_format!r}")
        log_format = "json"
    if str(log_level).lower() not in ("debug", "info", "warning", "error"):
        problems.add("logging.level", f"must be debug, info, warning or error, got {log_level!r}")
    if not isinstance(metrics_host, str) or not metrics_host:
        problems.add("metrics.host", f"must be a host name or address, got {metrics_host!r}")
    if problems.lines:
        raise SettingsError(list(dict.fromkeys(problems.lines)))
    return AgentSettings(
        routes=tuple(routes),
        metrics_host=str(metrics_host),
        metrics_port=metrics_port,
        log_format="console" if log_format == "console" else "json",
        log_level=str(log_level).lower(),
        shutdown_grace=shutdown_grace,
        config_path=config_path,
        ledger=ledger,
    )


def load_settings(
    *, config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    """Read the YAML config (``config_file``, else ``$SFT_AGENT_CONFIG``) and build the settings.

    Relative paths of TLS files are taken relative to the config file's folder.
    """
    env = dict(os.environ if environ is None else environ)
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is None:
        raise SettingsError([f"config: no config file (pass --config or set {CONFIG_ENV})"])
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"config: cannot read {path}: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError([f"config: {path} is not valid YAML: {exc}"]) from exc
    return build_settings(raw, environ=env, config_dir=path.parent.resolve(), config_path=path)
