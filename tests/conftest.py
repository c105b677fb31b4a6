"""Fixtures shared by every tier: a real moto server and clients that talk to it."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from egress.aws import AwsClients, AwsConfig, build_clients
from tests.support.ports import free_port

REGION = "eu-west-2"

# The moto server runs in this process and keeps every test's tables and objects: with the
# default thresholds the collector rescans that ever-growing heap again and again (a
# 5,000-row routes test took 212 s late in the suite, 64 s alone, 46 s with these).
gc.set_threshold(200_000, 50, 100)


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> Iterator[None]:
    """Fake credentials so no test can ever reach a real account."""
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S105 - moto's fake credentials
        AWS_DEFAULT_REGION=REGION,
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server (HTTP) on a free loopback port, for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    from egress.emulator import prepare_embedded_moto

    prepare_embedded_moto()  # as the local stack runs it
    # werkzeug logs every request; the tests' output should show failures, not traffic
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_endpoint: str) -> AwsClients:
    """Clients pointed at the moto server."""
    return build_clients(AwsConfig(region=REGION, endpoint_url=moto_endpoint))


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for resource names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def _moto_dynamodb(moto_endpoint: str) -> Any:
    """One DynamoDB client of the session's moto server, for the fixtures' own housekeeping."""
    return build_clients(AwsConfig(region=REGION, endpoint_url=moto_endpoint)).dynamodb


@pytest.fixture(autouse=True)
def _drop_the_tables_a_test_made(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete the DynamoDB tables a test created on the shared moto server, after it.

    Their items stay in this process's heap otherwise, for the collector to scan again and
    again (and plain moto converts every item of every table for each ExecuteStatement).
    Tests use tables of their own (``unique``); none reads another's.
    """
    if "moto_endpoint" not in request.fixturenames:
        yield
        return
    dynamodb = request.getfixturevalue("_moto_dynamodb")

    def tables() -> set[str]:
        pages = dynamodb.get_paginator("list_tables").paginate()
        return {name for page in pages for name in page.get("TableNames", [])}

    before = tables()
    yield
    for name in sorted(tables() - before):
        dynamodb.delete_table(TableName=name)
