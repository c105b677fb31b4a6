"""Settings: environment over YAML, validation that names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.settings import SettingsError, load_settings


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
    with pytest.raises(SettingsError, match="unknown setting 'concurrancy'"):
        load_settings(environ={}, config_file=config)


def test_memory_budget_is_stated() -> None:
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q", "EGRESS_MEMORY_BUDGET_MB": "128"})
    assert settings.memory_budget() == 128 * 1024 * 1024


def test_the_lease_follows_the_visibility_timeout_unless_set() -> None:
    """A dead worker's claim must lapse about when its message reappears (DESIGN §12)."""
    settings = load_settings(environ={"EGRESS_QUEUE_URL": "q", "EGRESS_VISIBILITY_TIMEOUT_SECONDS": "45"})
    assert settings.ledger_lease == 45
    settings = load_settings(
        environ={"EGRESS_QUEUE_URL": "q", "EGRESS_LEDGER_LEASE_SECONDS": "90", "EGRESS_HEARTBEAT_SECONDS": "10"}
    )
    assert settings.ledger_lease == 90
