"""Throwaway credentials for a local emulator, and only for one on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.aws import EMULATOR_CREDENTIALS, AwsConfig, is_loopback_url, session_for


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:4566", True),
        ("http://127.1.2.3:4566", True),
        ("http://localhost:4566", True),
        ("http://LOCALHOST", True),
        ("http://[::1]:4566", True),
        ("http://10.0.0.5:4566", False),
        ("http://localstack:4566", False),
        ("https://s3.eu-west-2.amazonaws.com", False),
        ("http://localhost.example.com:4566", False),
        ("http://[::1", False),
        ("not a url", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.fixture()
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A shell with no credentials anywhere botocore looks (and no instance metadata to ask)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)


@pytest.mark.usefixtures("no_credentials")
def test_a_loopback_endpoint_without_credentials_gets_the_throwaway_ones() -> None:
    credentials = session_for(AwsConfig(endpoint_url="http://127.0.0.1:4566")).get_credentials()
    assert credentials is not None
    assert credentials.access_key == EMULATOR_CREDENTIALS["aws_access_key_id"]


@pytest.mark.usefixtures("no_credentials")
@pytest.mark.parametrize("endpoint", ["http://localstack:4566", "https://vpce.example.com", None])
def test_another_endpoint_without_credentials_stays_without(endpoint: str | None) -> None:
    assert session_for(AwsConfig(endpoint_url=endpoint)).get_credentials() is None


def test_credentials_in_the_shell_are_used_even_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mine-secret")
    credentials = session_for(AwsConfig(endpoint_url="http://localhost:4566")).get_credentials()
    assert credentials is not None and credentials.access_key == "mine"
