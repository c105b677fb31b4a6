"""The agent's settings: one frozen object, built once from YAML and the environment.

The models below declare the YAML file key by key (types, ranges, what is required; field
types in :mod:`sft_agent.settings_fields`, actions in :mod:`sft_agent.settings_actions`).
Every problem found while building the settings is reported together, one line each,
prefixed with the key it is about (``routes[0](warehouse).actions[1].http.url: …``), so an
operator fixes a config in one pass. A few environment variables (``SFT_AGENT_*``) win
over the file. Nothing reads ``os.environ`` after start-up: secrets named by the config
(a key passphrase, a header value) are read here, once, into :class:`Secret` values whose
``repr`` never shows them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from egress.settings_schema import (
    DURATION,
    AbsolutePath,
    HostName,
    Loc,
    LogFormat,
    LogLevel,
    Port,
    Problem,
    Problems,
    Regex,
    Secret,
    SettingsError,
    SettingsModel,
    TableName,
    TopicArn,
    absolute_path,
    apply_environment,
    as_tuple,
    copy_document,
    key_path,
    problems_of,
)
from sft_agent.settings_actions import Action, ActionEntry, CopyAction, HttpAction, RenameAction
from sft_agent.settings_fields import (
    ROUTE_NAME,
    ConfigPath,
    ConnectTimeout,
    MinAge,
    PollInterval,
    ReadTimeout,
    RetryDelay,
    RouteName,
    Threads,
    ValidationContext,
    context_of,
    read_passphrase,
    secret_from_environment,
)

__all__ = [
    "CONFIG_ENV", "Action", "AgentSettings", "CopyAction", "HttpAction", "LedgerSettings", "RenameAction",
    "RetrySettings", "RouteSettings", "Secret", "SettingsError", "TlsSettings", "build_settings",
    "load_settings",
]  # fmt: skip

CONFIG_ENV: Final = "SFT_AGENT_CONFIG"
LEDGER_TABLE_ENV: Final = "SFT_AGENT_LEDGER_TABLE"
DEFAULT_METRICS_PORT: Final = 9091
MIB = 1024 * 1024
HEADING: Final = "invalid sft-agent config"
# The variables that win over the file, and the keys they set.
ENVIRONMENT: Final[tuple[tuple[str, Loc], ...]] = (
    ("SFT_AGENT_METRICS_HOST", ("metrics", "host")),
    ("SFT_AGENT_METRICS_PORT", ("metrics", "port")),
    ("SFT_AGENT_LOG_FORMAT", ("logging", "format")),
    ("SFT_AGENT_LOG_LEVEL", ("logging", "level")),
    (LEDGER_TABLE_ENV, ("ledger", "table")),  # alone, it turns the ledger on with the defaults
    ("SFT_AGENT_EVENTS_TOPIC_ARN", ("ledger", "events_topic_arn")),  # needs the ledger too
)


class RetrySettings(SettingsModel):
    """Exponential backoff between attempts at one file.

    The delay before attempt ``n + 1`` is ``min(initial_delay × multiplier^(n-1), max_delay)``,
    spread by ``± jitter`` (a fraction). After ``max_attempts`` failed attempts the file
    goes to the route's error folder.
    """

    max_attempts: int = Field(default=8, ge=1, le=1000)
    initial_delay: RetryDelay = 600.0
    max_delay: RetryDelay = 3600.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_delays(self) -> RetrySettings:
        if self.max_delay < self.initial_delay:
            problems = Problems()
            problems.add("max_delay", message="must not be shorter than initial_delay")
            problems.raise_any()
        return self


class TlsSection(SettingsModel):
    """The ``tls:`` keys: the shared section, which routes inherit, may leave any out."""

    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    client_key_passphrase_env: str | None = Field(default=None, min_length=1)
    client_key_passphrase_file: ConfigPath | None = None
    # Filled from the file or the variable above (validated first, hence the order).
    client_key_passphrase: Secret | None = Field(default=None, validate_default=True)
    ca_bundle: ConfigPath | None = None
    verify_hostname: bool = True
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @field_validator("client_key_passphrase_env")
    @classmethod
    def _variable_is_set(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None:
            secret_from_environment(name, info)
        return name

    @field_validator("client_key_passphrase_file")
    @classmethod
    def _file_is_readable(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None:
            if info.data.get("client_key_passphrase_env") is not None:
                raise ValueError(
                    "give either client_key_passphrase_file or client_key_passphrase_env, not both"
                )
            read_passphrase(path)
        return path

    @field_validator("client_key_passphrase", mode="before")
    @classmethod
    def _read_secret(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, Secret):
            raise ValueError(
                "a passphrase may not be written in the config; name a file (client_key_passphrase_file) "
                "or an environment variable (client_key_passphrase_env)"
            )
        if value is None and info.data.get("client_key_passphrase_file") is not None:
            return read_passphrase(info.data["client_key_passphrase_file"])
        if value is None and info.data.get("client_key_passphrase_env") is not None:
            return secret_from_environment(info.data["client_key_passphrase_env"], info)
        return value


class TlsSettings(TlsSection):
    """Client side of mutual TLS: PEM certificate and key, trusted CAs, hostname checks."""

    client_cert: ConfigPath = Field(description="every http action uses mutual TLS")
    client_key: ConfigPath = Field(description="every http action uses mutual TLS")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class RouteSettings(SettingsModel):
    """One watched folder and what happens to each ready file in it."""

    name: RouteName = Field(description="letters, digits, '.', '_' or '-' (it is a metric label)")
    source: AbsolutePath = Field(description="the folder to watch")
    filename_regex: Regex = re.compile(".*")
    actions: Annotated[tuple[ActionEntry, ...], BeforeValidator(as_tuple)] = Field(
        min_length=1, description="a non-empty list of http, copy or rename actions"
    )
    error_folder: AbsolutePath = Field(description="where files go after the last failed attempt")
    delete_on_send: bool = False
    sent_folder: AbsolutePath | None = None
    work_folder: AbsolutePath = Path()  # default: <source>/.sft-agent
    recursive: bool = False
    threads: Threads = 3
    poll_interval: PollInterval = 2.0
    min_age: MinAge = 5.0
    retry: RetrySettings = RetrySettings()
    tls: TlsSettings | None = None

    @property
    def http_actions(self) -> tuple[HttpAction, ...]:
        """The route's http actions, in order."""
        return tuple(a for a in self.actions if isinstance(a, HttpAction))

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any, info: ValidationInfo) -> Any:
        """What a route leaves out comes from ``defaults:``; its TLS is the shared section
        with the route's own ``tls:`` keys laid over it; the work folder is in the source."""
        if not isinstance(data, Mapping):
            return data
        context = context_of(info)
        defaults = context.defaults
        route = {str(key): value for key, value in data.items()}
        for key in ("threads", "poll_interval", "min_age", "retry"):
            if route.get(key) is None and key in defaults:
                route[key] = defaults[key]
        if isinstance(data.get("retry"), Mapping):  # key by key over the default retry
            route["retry"] = {**defaults.get("retry", {}), **data["retry"]}
        actions = route.get("actions")
        sends = isinstance(actions, list | tuple) and any(
            isinstance(a, Mapping) and "http" in a for a in actions
        )
        if (sends or "tls" in route) and isinstance(route.get("tls") or {}, Mapping):
            route["tls"] = {**context.tls, **(route.get("tls") or {})}
        if "work_folder" not in route:
            with contextlib.suppress(ValueError):  # the source's own problem is reported
                route["work_folder"] = absolute_path(route.get("source")) / ".sft-agent"
        return route

    @model_validator(mode="after")
    def _check_route(self) -> RouteSettings:
        problems = Problems()
        if all(isinstance(a, RenameAction) for a in self.actions):
            problems.add("actions", message="only renames: nothing would be delivered")
        if self.delete_on_send and self.sent_folder is not None:
            problems.add("sent_folder", message="give either delete_on_send: true or a sent_folder, not both")
        if not self.delete_on_send and self.sent_folder is None:
            message = "set delete_on_send: true or a sent_folder, otherwise every file would be sent again"
            problems.add("delete_on_send", message=message)
        for key, folder in (("error_folder", self.error_folder), ("sent_folder", self.sent_folder)):
            if folder is not None and (
                folder == self.source or (self.recursive and _inside(folder, self.source))
            ):
                problems.add(key, message="must not be the source folder (files would be sent again)")
        if self.recursive and _inside(self.work_folder, self.source):
            below = self.work_folder.relative_to(self.source).parts
            if not below or not any(part.startswith(".") for part in below):
                problems.add(
                    "work_folder", message="inside a recursive source it must be a hidden folder (.name)"
                )
        for position, action in enumerate(self.actions):
            if isinstance(action, CopyAction) and action.destination == self.source:
                problems.add(
                    "actions",
                    position,
                    "copy",
                    "destination",
                    message="is the route's own source: files would loop",
                )
        problems.raise_any()
        return self


class LedgerSettings(SettingsModel):
    """Where the agent records each file's fate: the worker's ledger table (docs/exactly-once.md).

    ``sft_root`` is the volume root the worker writes under: a file's ledger key is its
    path relative to it. Files ``written`` longer than ``unsent_after`` ago and not yet
    sent are counted every ``unsent_check_interval``. With ``events_topic_arn`` the agent
    publishes the ``received`` completion event of an SFT delivery whose files were all
    sent (docs/events.md). AWS region, endpoint and credentials come from the standard
    environment (``AWS_REGION``, ``AWS_ENDPOINT_URL``, …).
    """

    table: TableName = Field(description=f"the ledger table's name (or set {LEDGER_TABLE_ENV})")
    sft_root: AbsolutePath = Path("/data-egress")
    unsent_after: Annotated[float, DURATION, Field(ge=0, le=90 * 86400)] = 3600.0
    unsent_check_interval: Annotated[float, DURATION, Field(ge=1, le=86400)] = 60.0
    events_topic_arn: TopicArn | None = None
    _region: str | None = PrivateAttr(None)

    @property
    def region(self) -> str | None:
        """``AWS_REGION`` or ``AWS_DEFAULT_REGION``, read at start (not a key of the file)."""
        return self._region

    @model_validator(mode="after")
    def _region_from_environment(self, info: ValidationInfo) -> LedgerSettings:
        environ = context_of(info).environ
        self._region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
        return self


class Defaults(SettingsModel):
    """The ``defaults:`` section: what routes and their http actions leave out."""

    poll_interval: PollInterval = 2.0
    min_age: MinAge = 5.0
    threads: Threads = 3
    retry: RetrySettings = RetrySettings()
    connect_timeout: ConnectTimeout = 10.0
    read_timeout: ReadTimeout = 60.0


class MetricsSettings(SettingsModel):
    """Where ``/metrics`` and ``/healthz`` are served."""

    host: HostName = "0.0.0.0"  # noqa: S104 - Prometheus and ECS health checks scrape it
    port: Port = DEFAULT_METRICS_PORT


class LoggingSettings(SettingsModel):
    """The log lines' shape and threshold."""

    format: LogFormat = "json"
    level: LogLevel = "info"


class AgentSettings(SettingsModel):
    """Everything ``sft-agent run`` needs: the YAML file, declared. Built by :func:`load_settings`.

    Memory: each sending thread holds one ``chunk_size`` buffer (1 MiB) and at most 64 KiB
    of a response, so the data path needs about ``Σ threads × 1.1 MiB`` whatever the
    file sizes.
    """

    tls: TlsSection | None = None
    defaults: Defaults = Defaults()
    routes: Annotated[tuple[RouteSettings, ...], BeforeValidator(as_tuple)] = Field(
        min_length=1, description="a non-empty list of routes"
    )
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown_grace: Annotated[float, DURATION, Field(ge=0, le=3600)] = 25.0
    ledger: LedgerSettings | None = None
    chunk_size: ClassVar[int] = MIB
    _config_path: Path | None = PrivateAttr(None)

    @property
    def metrics_host(self) -> str:
        """``metrics.host``."""
        return self.metrics.host

    @property
    def metrics_port(self) -> int:
        """``metrics.port``."""
        return self.metrics.port

    @property
    def log_format(self) -> Literal["json", "console"]:
        """``logging.format``."""
        return self.logging.format

    @property
    def log_level(self) -> str:
        """``logging.level``."""
        return self.logging.level

    @property
    def config_path(self) -> Path | None:
        """The file the settings were read from, if any."""
        return self._config_path

    @model_validator(mode="after")
    def _check_folders(self) -> AgentSettings:
        """Folders that would make two routes fight over one folder, or files loop between them."""
        problems = Problems()
        sources: dict[Path, str] = {}
        work_folders: dict[Path, str] = {}
        for index, route in enumerate(self.routes):
            if route.source in sources:
                message = f"already the source of route {sources[route.source]!r} (one route per folder; fan out with actions)"
                problems.add("routes", index, "source", message=message)
            sources.setdefault(route.source, route.name)
            if route.work_folder in work_folders:
                message = (
                    f"already the work_folder of route {work_folders[route.work_folder]!r} (one per route)"
                )
                problems.add("routes", index, "work_folder", message=message)
            work_folders.setdefault(route.work_folder, route.name)
        for index, route in enumerate(self.routes):
            for other in self.routes:
                if other is not route and other.source in (route.error_folder, route.sent_folder):
                    message = f"is the source of route {other.name!r}: failed files would be sent again"
                    problems.add("routes", index, "error_folder", message=message)
        names = [route.name for route in self.routes]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.add("routes", message=f"route name {name!r} is used more than once")
        problems.raise_any()
        return self


# -- building them -----------------------------------------------------------------------


def build_settings(
    raw: object,
    *,
    environ: Mapping[str, str],
    config_dir: Path | None = None,
    config_path: Path | None = None,
) -> AgentSettings:
    """Settings from an already parsed YAML document and the environment (which wins)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError([f"(top level): must be a mapping, got {type(raw).__name__}"], heading=HEADING)
    document = copy_document(raw)
    origins, problems = apply_environment(document, environ, ENVIRONMENT, root=AgentSettings)
    try:
        defaults = Defaults.model_validate(document.get("defaults") or {})
    except ValidationError:
        defaults = Defaults()  # its problems are reported below, with the rest
    shared_tls = document.get("tls")
    context = ValidationContext(
        environ=environ,
        config_dir=config_dir,
        defaults=defaults.model_dump(),
        tls=shared_tls if isinstance(shared_tls, Mapping) else {},
    )
    try:
        settings = AgentSettings.model_validate(document, context=context)
    except ValidationError as exc:
        problems += [_line(problem, origins, document) for problem in problems_of(exc, root=AgentSettings)]
        raise SettingsError(problems, heading=HEADING) from None
    if problems:
        raise SettingsError(problems, heading=HEADING)
    settings._config_path = config_path
    return settings


def _line(problem: Problem, origins: Mapping[Loc, str], document: Mapping[str, Any]) -> str:
    """One problem, prefixed with its key; a route is named by its name where it has a valid one,
    and problems of the TLS a route inherits are the shared ``tls:`` section's."""
    loc = problem.loc
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return f"{key_path(loc[n:], prefix=origins[loc[:n]])}: {problem.message}"
    routes = document.get("routes")
    if loc[:1] == ("routes",) and len(loc) > 1 and isinstance(loc[1], int) and isinstance(routes, list):
        route = routes[loc[1]] if loc[1] < len(routes) else None
        if isinstance(route, Mapping):
            if loc[2:3] == ("tls",) and "tls" not in route:
                return f"{key_path(loc[2:])}: {problem.message}"
            name = route.get("name")
            if isinstance(name, str) and ROUTE_NAME.match(name):
                return f"{key_path(loc[2:], prefix=f'routes[{loc[1]}]({name})')}: {problem.message}"
    return f"{key_path(loc)}: {problem.message}"


def load_settings(
    *, config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    """Read the YAML config (``config_file``, else ``$SFT_AGENT_CONFIG``) and build the settings.

    Relative paths of TLS files are taken relative to the config file's folder.
    """
    env = os.environ if environ is None else environ
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is None:
        raise SettingsError([f"config: no config file (pass --config or set {CONFIG_ENV})"], heading=HEADING)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"config: cannot read {path}: {exc.strerror}"], heading=HEADING) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError([f"config: {path} is not valid YAML: {exc}"], heading=HEADING) from exc
    return build_settings(raw, environ=env, config_dir=path.parent.resolve(), config_path=path)
