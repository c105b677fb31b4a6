"""The worker's settings: one frozen object, built once from YAML and the environment.

Environment variables win over the YAML file. Nothing reads ``os.environ`` after
start-up: the settings object is passed explicitly.

Worst-case memory of the data path is :meth:`WorkerSettings.memory_budget`: every
streamed object takes ``min(size, part_size × (parts_in_flight + 1) + 4 × chunk_size)``
from it before it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from egress.aws import AwsConfig

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything ``egress run`` needs. Validated when built."""

    queue_url: str
    dlq_url: str | None = None
    routes_table: str = "data-egress"
    ledger_table: str = "data-egress-ledger"
    sft_root: Path = Path("/data-egress")
    flag_name: str = "pipeline_success.flag"
    concurrency: int = 4
    object_concurrency: int = 8
    memory_budget_mb: int = 160
    part_size_mb: int = 16
    parts_in_flight: int = 4
    chunk_size_kb: int = 1024
    metrics_port: int = 9090
    metrics_host: str = "0.0.0.0"  # noqa: S104 - ECS health checks and Prometheus scrape it
    shutdown_grace_seconds: float = 25.0
    kms_key_arns: tuple[str, ...] = ()
    log_format: str = "json"
    log_level: str = "info"
    wait_time_seconds: int = 20
    visibility_timeout_seconds: int = 120
    heartbeat_seconds: float = 30.0
    route_cache_seconds: float = 30.0
    ledger_ttl_days: int = 90
    ledger_lease_seconds: int | None = None  # default: the visibility timeout
    retry_attempts: int = 3
    backoff_base_seconds: int = 30
    backoff_max_seconds: int = 900
    free_space_margin_mb: int = 64
    copy_threshold_mb: int = 5 * 1024
    key_cache_seconds: float = 300.0
    aws: AwsConfig = field(default_factory=AwsConfig)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.queue_url:
            problems.append("EGRESS_QUEUE_URL is required")
        if not 1 <= self.concurrency <= 64:
            problems.append(f"EGRESS_CONCURRENCY must be 1..64, got {self.concurrency}")
        if not 1 <= self.object_concurrency <= 64:
            problems.append(f"EGRESS_OBJECT_CONCURRENCY must be 1..64, got {self.object_concurrency}")
        if self.memory_budget_mb < 16:
            problems.append(f"EGRESS_MEMORY_BUDGET_MB must be at least 16, got {self.memory_budget_mb}")
        if not 5 <= self.part_size_mb <= 5 * 1024:
            problems.append(f"EGRESS_PART_SIZE_MB must be 5..5120 (S3 limits), got {self.part_size_mb}")
        if not 1 <= self.parts_in_flight <= 32:
            problems.append(f"parts_in_flight must be 1..32, got {self.parts_in_flight}")
        if not 0 < self.shutdown_grace_seconds < 120:
            problems.append(
                f"EGRESS_SHUTDOWN_GRACE_SECONDS must be in (0, 120), got {self.shutdown_grace_seconds}"
            )
        if self.log_format not in {"json", "console"}:
            problems.append(f"EGRESS_LOG_FORMAT must be json or console, got {self.log_format!r}")
        if not 0 <= self.wait_time_seconds <= 20:
            problems.append(f"wait_time_seconds must be 0..20, got {self.wait_time_seconds}")
        if self.heartbeat_seconds >= self.visibility_timeout_seconds:
            problems.append("heartbeat_seconds must be shorter than visibility_timeout_seconds")
        if self.ledger_lease_seconds is not None and self.ledger_lease_seconds < 2 * self.heartbeat_seconds:
            problems.append(
                f"EGRESS_LEDGER_LEASE_SECONDS ({self.ledger_lease_seconds}) must be at least twice "
                f"EGRESS_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}): the heartbeat renews it"
            )
        if not 0 <= self.metrics_port <= 65535:
            problems.append(f"EGRESS_METRICS_PORT must be a port number, got {self.metrics_port}")
        if "/" in self.flag_name or not self.flag_name:
            problems.append(f"EGRESS_FLAG_NAME must be a plain file name, got {self.flag_name!r}")
        for arn in self.kms_key_arns:
            if not arn.startswith("arn:aws") or ":kms:" not in arn:
                problems.append(f"EGRESS_KMS_KEY_ARNS: {arn!r} is not a KMS key ARN")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def ledger_lease(self) -> int:
        """How long a claim lasts unless renewed: about one visibility timeout (DESIGN §12).

        A dead worker's claim then lapses about when its message reappears, so the next
        receive resumes the delivery instead of finding it held.
        """
        return self.ledger_lease_seconds or self.visibility_timeout_seconds

    @property
    def part_size(self) -> int:
        return self.part_size_mb * MIB

    @property
    def chunk_size(self) -> int:
        return self.chunk_size_kb * 1024

    def memory_budget(self) -> int:
        """Bytes all streams of the worker may hold at once (a budget they acquire from).

        One streamed object holds at most ``part_size × (parts_in_flight + 1) + 4 × chunk``;
        objects wait for the budget, so the total stays below ``memory_budget_mb`` whatever
        the object sizes and the concurrency. Server-side copies hold no object bytes.
        """
        return self.memory_budget_mb * MIB


# Environment variable → (field, parser). Names are part of the operator contract.
def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


_ENV: dict[str, tuple[str, Any]] = {
    "EGRESS_QUEUE_URL": ("queue_url", str),
    "EGRESS_DLQ_URL": ("dlq_url", str),
    "EGRESS_ROUTES_TABLE": ("routes_table", str),
    "EGRESS_LEDGER_TABLE": ("ledger_table", str),
    "EGRESS_SFT_ROOT": ("sft_root", Path),
    "EGRESS_FLAG_NAME": ("flag_name", str),
    "EGRESS_CONCURRENCY": ("concurrency", int),
    "EGRESS_OBJECT_CONCURRENCY": ("object_concurrency", int),
    "EGRESS_MEMORY_BUDGET_MB": ("memory_budget_mb", int),
    "EGRESS_PART_SIZE_MB": ("part_size_mb", int),
    "EGRESS_PARTS_IN_FLIGHT": ("parts_in_flight", int),
    "EGRESS_METRICS_PORT": ("metrics_port", int),
    "EGRESS_METRICS_HOST": ("metrics_host", str),
    "EGRESS_SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", float),
    "EGRESS_KMS_KEY_ARNS": ("kms_key_arns", _csv),
    "EGRESS_LOG_FORMAT": ("log_format", str),
    "EGRESS_LOG_LEVEL": ("log_level", str),
    "EGRESS_WAIT_TIME_SECONDS": ("wait_time_seconds", int),
    "EGRESS_VISIBILITY_TIMEOUT_SECONDS": ("visibility_timeout_seconds", int),
    "EGRESS_HEARTBEAT_SECONDS": ("heartbeat_seconds", float),
    "EGRESS_ROUTE_CACHE_SECONDS": ("route_cache_seconds", float),
    "EGRESS_LEDGER_TTL_DAYS": ("ledger_ttl_days", int),
    "EGRESS_LEDGER_LEASE_SECONDS": ("ledger_lease_seconds", int),
    "EGRESS_RETRY_ATTEMPTS": ("retry_attempts", int),
    "EGRESS_BACKOFF_BASE_SECONDS": ("backoff_base_seconds", int),
    "EGRESS_BACKOFF_MAX_SECONDS": ("backoff_max_seconds", int),
    "EGRESS_FREE_SPACE_MARGIN_MB": ("free_space_margin_mb", int),
    "EGRESS_COPY_THRESHOLD_MB": ("copy_threshold_mb", int),
}
_AWS_ENV: dict[str, tuple[str, Any]] = {
    "AWS_REGION": ("region", str),
    "AWS_ENDPOINT_URL": ("endpoint_url", str),
}


def load_settings(
    *, environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> WorkerSettings:
    """Build the settings from an optional YAML file, then the environment (which wins).

    The YAML file holds the same names as the fields (``queue_url: …``) and an optional
    ``aws:`` mapping (``region``, ``endpoint_url``).
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    aws_values: dict[str, Any] = {}
    path = config_file or (Path(env["EGRESS_CONFIG"]) if env.get("EGRESS_CONFIG") else None)
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {path} must hold a mapping")
        known = {f.name for f in fields(WorkerSettings)}
        for key, value in loaded.items():
            if key == "aws" and isinstance(value, dict):
                aws_values.update(value)
            elif key in known:
                values[key] = value
            else:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
    if env.get("AWS_DEFAULT_REGION") and "region" not in aws_values:
        aws_values["region"] = env["AWS_DEFAULT_REGION"]
    for name, (attr, parse) in _ENV.items():
        if env.get(name, "") != "":
            try:
                values[attr] = parse(env[name])
            except ValueError as exc:
                raise SettingsError(f"{name}={env[name]!r} is invalid: {exc}") from exc
    for name, (attr, parse) in _AWS_ENV.items():
        if env.get(name):
            aws_values[attr] = parse(env[name])
    if "sft_root" in values:
        values["sft_root"] = Path(values["sft_root"])
    if "kms_key_arns" in values and isinstance(values["kms_key_arns"], list | str):
        raw = values["kms_key_arns"]
        values["kms_key_arns"] = _csv(raw) if isinstance(raw, str) else tuple(raw)
    values.setdefault("queue_url", "")
    concurrency = int(values.get("concurrency", WorkerSettings.concurrency))
    aws_values.setdefault("max_pool_connections", max(10, concurrency * 8))
    try:
        return WorkerSettings(aws=AwsConfig(**aws_values), **values)
    except TypeError as exc:
        raise SettingsError(str(exc)) from exc
