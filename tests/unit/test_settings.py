"""Settings: environment over YAML, validation that names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.aws import AwsConfig, build_clients, emulator_session
from egress.settings import (
    OPERATOR_VARIABLES,
    AwsSettings,
    SettingsError,
    WorkerSettings,
    environment_variables,
    load_settings,
)


def test_defaults_and_environment() -> None:
    settings = load_settings(
        environ={
            "EGRESS_QUEUE_URL": "http://q",
            "EGRESS_KMS_KEY_ARNS": "arn:aws:kms:eu-west-2:111122223333:key/a, arn:aws:kms:eu-west-2:111122223333:key/b",
            "EGRESS_CONCURRENCY": "3",
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        }
    )
    assert settings.routes_table == "data-egress"
    assert settings.ledger_table == "data-egress-ledger"
    assert settings.sft_root == Path("/data-egress")
    assert settings.flag_name == "pipeline_success.flag"
    assert settings.metrics_port == 9090
    assert settings.shutdown_grace_seconds == 25
    assert settings.part_size == 16 * 1024 * 1024
    assert settings.concurrency == 3
    assert len(settings.kms_key_arns) == 2
    assert settings.aws.region == "eu-west-1"
    assert settings.aws.endpoint_url == "http://127.0.0.1:4566"


def test_environment_wins_over_yaml(tmp_path: Path) -> None:
    config = tmp_path / "egress.yaml"
    config.write_text("queue_url: http://from-yaml\nconcurrency: 2\naws: {region: us-east-1}\n")
    settings = load_settings(environ={"EGRESS_CONCURRENCY": "5"}, config_file=config)
    assert settings.queue_url == "http://from-yaml"
    assert settings.concurrency == 5
    assert settings.aws.region == "us-east-1"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "EGRESS_QUEUE_URL is required"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_CONCURRENCY": "0"}, "EGRESS_CONCURRENCY"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_CONCURRENCY": "many"}, "EGRESS_CONCURRENCY='many'"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_PART_SIZE_MB": "1"}, "EGRESS_PART_SIZE_MB"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_LOG_FORMAT": "xml"}, "EGRESS_LOG_FORMAT"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_KMS_KEY_ARNS": "alias/x"}, "EGRESS_KMS_KEY_ARNS"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_FLAG_NAME": "a/b"}, "EGRESS_FLAG_NAME"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_SHUTDOWN_GRACE_SECONDS": "0"}, "EGRESS_SHUTDOWN_GRACE_SECONDS"),
        ({"EGRESS_QUEUE_URL": "q", "EGRESS_LEDGER_LEASE_SECONDS": "40"}, "EGRESS_LEDGER_LEASE_SECONDS"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(environ=environ)


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "egress.yaml"
    config.write_text("queue_url: q\nconcurrancy: 2\n")
    with pytest.raises(SettingsError, match=r"concurrancy: unknown key \(did you mean 'concurrency'\?\)"):
        load_settings(environ={}, config_file=config)


def test_unknown_nested_yaml_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "egress.yaml"
    config.write_text("queue_url: q\naws: {regoin: eu-west-1}\n")
    with pytest.raises(SettingsError, match=r"aws\.regoin: unknown key \(did you mean 'region'\?\)"):
        load_settings(environ={}, config_file=config)


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("concurrency: many\n", "concurrency: must be a whole number, got 'many'"),
        ("concurrency: '4'\n", "concurrency: must be a whole number, got '4'"),
        ("heartbeat_seconds: soon\n", "heartbeat_seconds: must be a number, got 'soon'"),
        ("aws: {max_pool_connections: lots}\n", "aws.max_pool_connections: must be a whole number"),
        ("kms_key_arns: [alias/x]\n", r"kms_key_arns\[0\]: 'alias/x' is not a KMS key ARN"),
    ],
)
def test_a_yaml_value_of_the_wrong_type_names_its_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    """YAML is typed: a string where a number belongs is refused by name, not a TypeError later."""
    config = tmp_path / "egress.yaml"
    config.write_text("queue_url: q\n" + yaml_text)
    with pytest.raises(SettingsError, match=fragment):
        load_settings(environ={}, config_file=config)


def test_every_declared_field_has_an_environment_variable() -> None:
    variables = environment_variables()
    paths = set(variables.values())
    for name in WorkerSettings.model_fields:
        if name == "aws":
            assert {("aws", key) for key in AwsSettings.model_fields} <= paths
        else:
            assert (name,) in paths, f"{name} has no environment variable"
    assert set(AwsSettings.model_fields) == set(AwsConfig.__dataclass_fields__)
    assert all(name == "EGRESS_" + "_".join(map(str, path)).upper() for name, path in variables.items())
    standard = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}
    assert set(OPERATOR_VARIABLES) - standard <= set(variables), "a variable operators set is no longer read"


SAMPLE_ENVIRONMENT = {
    "EGRESS_QUEUE_URL": "http://q", "EGRESS_DLQ_URL": "http://dlq", "EGRESS_ROUTES_TABLE": "routes",
    "EGRESS_LEDGER_TABLE": "ledger", "EGRESS_SFT_ROOT": "/srv/sft", "EGRESS_FLAG_NAME": "_SUCCESS",
    "EGRESS_CONCURRENCY": "2", "EGRESS_OBJECT_CONCURRENCY": "3", "EGRESS_MEMORY_BUDGET_MB": "64",
    "EGRESS_PART_SIZE_MB": "8", "EGRESS_PARTS_IN_FLIGHT": "2", "EGRESS_CHUNK_SIZE_KB": "256",
    "EGRESS_METRICS_PORT": "9999", "EGRESS_METRICS_HOST": "127.0.0.1", "EGRESS_SHUTDOWN_GRACE_SECONDS": "10.5",
    "EGRESS_KMS_KEY_ARNS": "arn:aws:kms:eu-west-2:111122223333:key/a", "EGRESS_LOG_FORMAT": "console",
    "EGRESS_LOG_LEVEL": "DEBUG", "EGRESS_WAIT_TIME_SECONDS": "1", "EGRESS_VISIBILITY_TIMEOUT_SECONDS": "60",
    "EGRESS_HEARTBEAT_SECONDS": "5", "EGRESS_ROUTE_CACHE_SECONDS": "1", "EGRESS_LEDGER_TTL_DAYS": "7",
    "EGRESS_LEDGER_LEASE_SECONDS": "30", "EGRESS_RETRY_ATTEMPTS": "2", "EGRESS_BACKOFF_BASE_SECONDS": "1",
    "EGRESS_BACKOFF_MAX_SECONDS": "2", "EGRESS_FREE_SPACE_MARGIN_MB": "1", "EGRESS_COPY_THRESHOLD_MB": "100",
    "EGRESS_KEY_CACHE_SECONDS": "60", "EGRESS_AWS_REGION": "us-east-2", "EGRESS_AWS_ENDPOINT_URL": "http://e",
    "EGRESS_AWS_MAX_POOL_CONNECTIONS": "12", "EGRESS_AWS_CONNECT_TIMEOUT": "2.5",
    "EGRESS_AWS_READ_TIMEOUT": "30", "EGRESS_AWS_MAX_ATTEMPTS": "7",
    "EGRESS_AWS_S3_ENDPOINT_URL": "http://s3", "EGRESS_GET_STRATEGY": "single", "EGRESS_RANGE_SIZE_MB": "4",
    "EGRESS_RANGES_IN_FLIGHT": "3",
}  # fmt: skip


def test_each_variable_sets_its_field() -> None:
    """Every variable's text parses into its field's type (paths, tuples, floats, literals)."""
    variables = environment_variables()
    assert set(SAMPLE_ENVIRONMENT) <= set(variables)
    settings = load_settings(environ=SAMPLE_ENVIRONMENT)
    for name, text in SAMPLE_ENVIRONMENT.items():
        node: object = settings
        for key in variables[name]:
            node = getattr(node, str(key))
        if isinstance(node, tuple):
            assert ",".join(node) == text, name
        elif isinstance(node, float):
            assert node == float(text), name
        else:
            assert str(node).lower() == text.lower(), name


def test_the_variables_without_one_before_now_work() -> None:
    settings = load_settings(
        environ={
            "EGRESS_QUEUE_URL": "q",
            "EGRESS_CHUNK_SIZE_KB": "256",
            "EGRESS_KEY_CACHE_SECONDS": "60",
            "EGRESS_AWS_MAX_ATTEMPTS": "7",
            "EGRESS_AWS_CONNECT_TIMEOUT": "2.5",
        }
    )
    assert settings.chunk_size == 256 * 1024 and settings.key_cache_seconds == 60.0
    assert (settings.aws.max_attempts, settings.aws.connect_timeout) == (7, 2.5)
    assert isinstance(settings.aws, AwsConfig)


def test_aws_default_region_applies_only_where_nothing_else_names_the_region(tmp_path: Path) -> None:
    assert load_settings(environ={"EGRESS_QUEUE_URL": "q", "AWS_DEFAULT_REGION": "us-east-2"}).aws.region == (
        "us-east-2"
    )
    config = tmp_path / "egress.yaml"
    config.write_text("queue_url: q\naws: {region: eu-west-3}\n")
    assert (
        load_settings(environ={"AWS_DEFAULT_REGION": "us-east-2"}, config_file=config).aws.region
        == "eu-west-3"
    )
    settings = load_settings(
        environ={"AWS_DEFAULT_REGION": "us-east-2", "AWS_REGION": "eu-west-1"}, config_file=config
    )
    assert settings.aws.region == "eu-west-1"


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            environ={"EGRESS_QUEUE_URL": "q", "EGRESS_CONCURRENCY": "0", "EGRESS_LOG_FORMAT": "xml"}
        )
    assert len(caught.value.problems) == 2
    assert all("\n" not in line for line in caught.value.problems)


def test_the_settings_are_frozen() -> None:
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q"})
    with pytest.raises(ValueError, match="frozen"):
        settings.concurrency = 5  # type: ignore[misc]


def test_memory_budget_is_stated() -> None:
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q", "EGRESS_MEMORY_BUDGET_MB": "128"})
    assert settings.memory_budget() == 128 * 1024 * 1024


def test_the_lease_follows_the_visibility_timeout_unless_set() -> None:
    """A dead worker's claim must lapse about when its message reappears (DESIGN §12)."""
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q", "EGRESS_VISIBILITY_TIMEOUT_SECONDS": "45"})
    assert settings.ledger_lease == 45
    settings = load_settings(
        environ={
            "EGRESS_QUEUE_URL": "q",
            "EGRESS_LEDGER_LEASE_SECONDS": "90",
            "EGRESS_HEARTBEAT_SECONDS": "10",
        }
    )
    assert settings.ledger_lease == 90


def test_s3_alone_can_have_its_own_endpoint() -> None:
    """AWS_ENDPOINT_URL_S3, as botocore reads it: another S3 server beside the emulator of the rest."""
    settings = load_settings(
        environ={
            "EGRESS_QUEUE_URL": "q",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4568",
        }
    )
    clients = build_clients(settings.aws, session=emulator_session(settings.aws.region))
    assert clients.s3.meta.endpoint_url == "http://127.0.0.1:4568"
    assert clients.sqs.meta.endpoint_url == "http://127.0.0.1:5000"
    assert clients.dynamodb.meta.endpoint_url == "http://127.0.0.1:5000"
    role_s3 = clients.s3_for_role({"AccessKeyId": "a", "SecretAccessKey": "b", "SessionToken": "c"})
    assert role_s3.meta.endpoint_url == "http://127.0.0.1:4568"


@pytest.mark.parametrize(
    ("environ", "pool"),
    [
        ({}, 64),  # 32 objects in flight by default
        ({"EGRESS_CONCURRENCY": "12"}, 96),
        ({"EGRESS_OBJECT_CONCURRENCY": "100"}, 200),
        ({"EGRESS_OBJECT_CONCURRENCY": "100", "EGRESS_AWS_MAX_POOL_CONNECTIONS": "20"}, 20),
    ],
)
def test_the_connection_pool_follows_what_is_in_flight(environ: dict[str, str], pool: int) -> None:
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q", **environ})
    assert settings.aws.max_pool_connections == pool
