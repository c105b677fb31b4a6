"""The worker's settings: one frozen object, built once from YAML and the environment.

Every field is declared once, with its type and range, on :class:`WorkerSettings`; every
field can be set from the environment as ``EGRESS_<FIELD>`` (``EGRESS_AWS_<KEY>`` for the
``aws:`` mapping, where the standard ``AWS_REGION``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL`` work too), derived from the declarations so none is forgotten.
Environment variables win over the YAML file. Nothing reads ``os.environ`` after
start-up: the settings object is passed explicitly.

Worst-case memory of the data path is :meth:`WorkerSettings.memory_budget`: every
streamed object takes ``min(size + chunk_size, 8 × chunk_size)`` from it before it starts,
plus ``part_size × (parts_in_flight + 1)`` when it is uploaded to S3.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, get_type_hints

import yaml
from pydantic import BeforeValidator, Field, ValidationError, create_model, model_validator

from egress.aws import AwsConfig
from egress.settings_schema import (
    GetStrategy,
    HostName,
    Loc,
    LogFormat,
    LogLevel,
    PathValue,
    Port,
    Problem,
    Problems,
    SettingsError,
    SettingsModel,
    TableName,
    TopicArn,
    ValidatedAs,
    apply_environment,
    as_tuple,
    copy_document,
    key_path,
    problems_of,
)

__all__ = ["CONFIG_ENV", "OPERATOR_VARIABLES", "SettingsError", "WorkerSettings", "environment_variables"]

MIB = 1024 * 1024
ENV_PREFIX: Final = "EGRESS_"
CONFIG_ENV: Final = "EGRESS_CONFIG"

# The variables operators and the infrastructure already set: a contract. The mapping is
# derived from the fields; this list only guards it (a renamed field must not drop one).
OPERATOR_VARIABLES: Final = (
    "EGRESS_QUEUE_URL", "EGRESS_DLQ_URL", "EGRESS_ROUTES_TABLE", "EGRESS_LEDGER_TABLE",
    "EGRESS_SFT_ROOT", "EGRESS_FLAG_NAME", "EGRESS_CONCURRENCY", "EGRESS_OBJECT_CONCURRENCY",
    "EGRESS_MEMORY_BUDGET_MB", "EGRESS_PART_SIZE_MB", "EGRESS_PARTS_IN_FLIGHT", "EGRESS_CHUNK_SIZE_KB",
    "EGRESS_METRICS_PORT", "EGRESS_METRICS_HOST", "EGRESS_SHUTDOWN_GRACE_SECONDS", "EGRESS_KMS_KEY_ARNS",
    "EGRESS_LOG_FORMAT", "EGRESS_LOG_LEVEL", "EGRESS_WAIT_TIME_SECONDS", "EGRESS_VISIBILITY_TIMEOUT_SECONDS",
    "EGRESS_HEARTBEAT_SECONDS", "EGRESS_ROUTE_CACHE_SECONDS", "EGRESS_LEDGER_TTL_DAYS",
    "EGRESS_LEDGER_LEASE_SECONDS", "EGRESS_RETRY_ATTEMPTS", "EGRESS_BACKOFF_BASE_SECONDS",
    "EGRESS_BACKOFF_MAX_SECONDS", "EGRESS_FREE_SPACE_MARGIN_MB", "EGRESS_COPY_THRESHOLD_MB",
    "EGRESS_KEY_CACHE_SECONDS", "EGRESS_EVENTS_TOPIC_ARN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)  # fmt: skip
# The standard AWS variables, in rising precedence; EGRESS_AWS_* win over them.
_AWS_STANDARD: Final[tuple[tuple[str, Loc], ...]] = (
    ("AWS_REGION", ("aws", "region")),
    ("AWS_ENDPOINT_URL", ("aws", "endpoint_url")),
    ("AWS_ENDPOINT_URL_S3", ("aws", "s3_endpoint_url")),
)

# Ranges of the AWS client settings (the fields themselves are AwsConfig's, whatever it grows).
_AWS_LIMITS: Final[dict[str, Any]] = {
    "region": Field(min_length=1),
    "max_pool_connections": Field(ge=1, le=1024),
    "connect_timeout": Field(gt=0, le=300),
    "read_timeout": Field(gt=0, le=3600),
    "max_attempts": Field(ge=0, le=20),  # botocore's retries config: 0 sends each call once
}


def _aws_settings_model() -> type[SettingsModel]:
    """The ``aws:`` mapping declared from :class:`AwsConfig`'s own fields, with the ranges above."""
    hints = get_type_hints(AwsConfig)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(AwsConfig):
        annotation = hints[field.name]
        if field.name in _AWS_LIMITS:
            annotation = Annotated[annotation, _AWS_LIMITS[field.name]]
        if field.default_factory is not dataclasses.MISSING:
            fields[field.name] = (annotation, Field(default_factory=field.default_factory))
        elif field.default is not dataclasses.MISSING:
            fields[field.name] = (annotation, field.default)
        else:
            fields[field.name] = (annotation, ...)  # required
    return create_model(
        "AwsSettings", __base__=SettingsModel, __doc__="The worker's AWS client settings.", **fields
    )


AwsSettings = _aws_settings_model()


def _kms_key_arn(value: Any) -> Any:
    if isinstance(value, str) and (not value.startswith("arn:aws") or ":kms:" not in value):
        raise ValueError(f"{value!r} is not a KMS key ARN")
    return value


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):  # the environment variable, or a YAML string
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return as_tuple(value)


def _file_name(value: Any) -> Any:
    if isinstance(value, str) and (not value or "/" in value):
        raise ValueError(f"must be a plain file name, got {value!r}")
    return value


KmsKeyArns = Annotated[
    tuple[Annotated[str, BeforeValidator(_kms_key_arn)], ...], BeforeValidator(_comma_separated)
]


class WorkerSettings(SettingsModel):
    """Everything ``egress run`` needs. Validated when built (:func:`load_settings`)."""

    queue_url: str = Field(min_length=1, description="the URL of the flag queue")
    dlq_url: str | None = None  # default: the queue's redrive policy
    routes_table: TableName = "data-egress"
    ledger_table: TableName = "data-egress-ledger"
    sft_root: PathValue = Path("/data-egress")
    flag_name: Annotated[str, BeforeValidator(_file_name)] = "pipeline_success.flag"
    concurrency: int = Field(default=4, ge=1, le=64)
    # Objects in flight across the worker: as many as this for small ones and server-side
    # copies (bound by round trips, not bytes); streams of large objects as few as the
    # memory budget holds (each takes its bytes from it before it starts).
    object_concurrency: int = Field(default=32, ge=1, le=128)
    memory_budget_mb: int = Field(default=160, ge=16)
    part_size_mb: int = Field(default=16, ge=5, le=5 * 1024)  # S3's part size limits
    parts_in_flight: int = Field(default=4, ge=1, le=32)
    chunk_size_kb: int = Field(default=1024, ge=1, le=64 * 1024)
    # How large objects are read: "ranged" (parallel ranged GETs, reassembled in order:
    # S3 serves each stream at ~90 MB/s) or "single" (one streaming GET: an emulator that
    # reads the whole object on every ranged GET, such as moto).
    get_strategy: GetStrategy = "ranged"
    range_size_mb: int = Field(default=8, ge=1, le=1024)
    ranges_in_flight: int = Field(default=8, ge=1, le=64)
    metrics_port: Port = 9090
    metrics_host: HostName = "0.0.0.0"  # noqa: S104 - ECS health checks and Prometheus scrape it
    # Under 2 minutes: ECS stops a task 30 s after SIGTERM unless told to wait longer.
    shutdown_grace_seconds: float = Field(default=25.0, gt=0, lt=120)
    kms_key_arns: KmsKeyArns = ()
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    wait_time_seconds: int = Field(default=20, ge=0, le=20)  # SQS's long-poll limit
    visibility_timeout_seconds: int = Field(default=120, ge=1, le=43200)  # SQS's visibility limit
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    route_cache_seconds: float = Field(default=30.0, ge=0)
    ledger_ttl_days: int = Field(default=90, ge=1)
    ledger_lease_seconds: int | None = Field(default=None, ge=1)  # default: the visibility timeout
    retry_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base_seconds: int = Field(default=30, ge=0, le=36000)
    # At most 10 h: the delay gets up to 20 % jitter and SQS's visibility limit is 12 h.
    backoff_max_seconds: int = Field(default=900, ge=0, le=36000)
    free_space_margin_mb: int = Field(default=64, ge=0)
    # At most 5 GiB: the most one CopyObject copies; multipart copies above.
    copy_threshold_mb: int = Field(default=5 * 1024, ge=0, le=5 * 1024)
    key_cache_seconds: float = Field(default=300.0, ge=0)
    events_topic_arn: TopicArn | None = None  # completion events (docs/events.md); none: not published
    aws: Annotated[AwsConfig, ValidatedAs(AwsSettings)] = Field(default_factory=AwsConfig)

    @model_validator(mode="before")
    @classmethod
    def _pool_follows_concurrency(cls, data: Any) -> Any:
        """Unless set, the connection pool grows with the messages worked on at once."""
        if not isinstance(data, Mapping) or not isinstance(data.get("aws") or {}, Mapping):
            return data
        aws = dict(data.get("aws") or {})
        concurrency, objects = data.get("concurrency", 4), data.get("object_concurrency", 32)
        if "max_pool_connections" not in aws and type(concurrency) is int and type(objects) is int:
            # Each object in flight holds a connection, a streamed one a few more (its parts).
            aws["max_pool_connections"] = max(10, concurrency * 8, objects * 2)
        return {**data, "aws": aws}

    @model_validator(mode="after")
    def _check_timing(self) -> WorkerSettings:
        problems = Problems()
        if self.heartbeat_seconds >= self.visibility_timeout_seconds:
            problems.add(
                "heartbeat_seconds",
                message=f"must be shorter than the visibility timeout ({self.visibility_timeout_seconds} s)",
            )
        if self.ledger_lease_seconds is not None and self.ledger_lease_seconds < 2 * self.heartbeat_seconds:
            problems.add(
                "ledger_lease_seconds",
                message=f"must be at least twice the heartbeat ({self.heartbeat_seconds:g} s): "
                "the heartbeat renews it",
            )
        problems.raise_any()
        return self

    @property
    def ledger_lease(self) -> int:
        """How long a claim lasts unless renewed: about one visibility timeout (DESIGN §12).

        A dead worker's claim then lapses about when its message reappears, so the next
        receive resumes the delivery instead of finding it held.
        """
        return self.ledger_lease_seconds or self.visibility_timeout_seconds

    @property
    def part_size(self) -> int:
        """Multipart part size in bytes."""
        return self.part_size_mb * MIB

    @property
    def range_size(self) -> int:
        """Ranged GET size in bytes."""
        return self.range_size_mb * MIB

    @property
    def chunk_size(self) -> int:
        """Bytes read from a stream at a time."""
        return self.chunk_size_kb * 1024

    def memory_budget(self) -> int:
        """Bytes all streams of the worker may hold at once (a budget they acquire from).

        One streamed object holds at most ``8 × chunk`` (its stages' chunks, and those
        queued for the digests computed on threads), plus ``part_size × (parts_in_flight
        + 1)`` when it is uploaded to S3 (nothing more for an SFT file), plus
        ``ranges_in_flight × range_size`` when it is read in ranges;
        objects wait for the budget, so the total stays below ``memory_budget_mb`` whatever
        the object sizes and the concurrency. Server-side copies hold no object bytes.
        """
        return self.memory_budget_mb * MIB


def environment_variables() -> dict[str, Loc]:
    """Every ``EGRESS_*`` variable and the key path it sets, derived from the declared fields."""
    names: dict[str, Loc] = {}
    for name in WorkerSettings.model_fields:
        if name == "aws":
            for key in AwsSettings.model_fields:
                names[f"{ENV_PREFIX}AWS_{key.upper()}"] = ("aws", key)
        else:
            names[f"{ENV_PREFIX}{name.upper()}"] = (name,)
    return names


def load_settings(
    *, environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> WorkerSettings:
    """Build the settings from an optional YAML file, then the environment (which wins).

    The YAML file holds the same names as the fields (``queue_url: …``) and an optional
    ``aws:`` mapping (``region``, ``endpoint_url``, …). ``AWS_DEFAULT_REGION`` applies
    only where neither the file nor another variable names the region.
    """
    env = os.environ if environ is None else environ
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    from_file = _read(path) if path is not None else {}
    document = copy_document(from_file)
    variables: list[tuple[str, Loc]] = []
    if not _in_file(from_file, ("aws", "region")):
        variables.append(("AWS_DEFAULT_REGION", ("aws", "region")))
    variables += [*_AWS_STANDARD, *environment_variables().items()]
    origins, problems = apply_environment(document, env, variables, root=WorkerSettings)
    try:
        settings = WorkerSettings.model_validate(document)
    except ValidationError as exc:
        problems += [_line(problem, origins, from_file) for problem in problems_of(exc, root=WorkerSettings)]
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings


def _read(path: Path) -> Mapping[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError([f"cannot read config file {path}: {exc}"]) from exc
    if not isinstance(loaded, dict):
        raise SettingsError([f"config file {path} must hold a mapping"])
    return loaded


def _line(problem: Problem, origins: Mapping[Loc, str], from_file: Mapping[str, Any]) -> str:
    """One problem, named as the operator set it: the variable, else the file's key path."""
    loc = problem.loc
    label = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
    if label is None and not _in_file(from_file, loc):
        variables = {path: name for name, path in environment_variables().items()}  # path → name
        label = next((variables[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in variables), None)
    label = label or key_path(loc)
    return f"{label} is {problem.message}" if problem.kind == "missing" else f"{label}: {problem.message}"


def _in_file(from_file: Mapping[str, Any], loc: Loc) -> bool:
    node: Any = from_file
    for part in loc:
        found = (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        )
        if not found:
            return False
        node = node[part]
    return True
