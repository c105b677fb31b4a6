"""Config validation: every error names the key it is about; durations; secrets stay secret."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from egress.kernel.durations import parse_duration
from sft_agent.settings import (
    CopyAction,
    HttpAction,
    RenameAction,
    Secret,
    SettingsError,
    build_settings,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]


def valid() -> dict[str, Any]:
    return {
        "tls": {
            "client_cert": "/certs/client.pem",
            "client_key": "/certs/client-key.pem",
            "ca_bundle": "/certs/ca.pem",
        },
        "defaults": {"poll_interval": "2s", "min_age": "5s", "threads": 3, "retry": {"max_attempts": 8}},
        "routes": [
            {
                "name": "warehouse",
                "source": "/data-egress/warehouse/",
                "filename_regex": ".*",
                "actions": [
                    {"http": {"url": "https://receiver:8091/DA", "method": "POST"}},
                    {"copy": {"destination": "/data-egress/archive/"}},
                ],
                "delete_on_send": True,
                "error_folder": "/data-egress/error/warehouse",
            }
        ],
    }


def problems_of(document: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        build_settings(document, environ=environ or {})
    return list(caught.value.problems)


def test_the_design_example_is_valid_with_the_replaced_agents_retry_defaults() -> None:
    settings = build_settings(valid(), environ={})
    (route,) = settings.routes
    assert route.name == "warehouse"
    assert route.source == Path("/data-egress/warehouse")
    assert route.work_folder == Path("/data-egress/warehouse/.sft-agent")
    assert isinstance(route.actions[0], HttpAction) and route.actions[0].filename_header == "Filename"
    assert isinstance(route.actions[1], CopyAction)
    assert (route.retry.initial_delay, route.retry.max_delay, route.retry.multiplier) == (600.0, 3600.0, 2.0)
    assert route.retry.max_attempts == 8
    assert route.tls is not None and route.tls.verify_hostname is True
    assert (route.poll_interval, route.min_age, route.threads) == (2.0, 5.0, 3)


def test_the_example_config_in_the_repository_loads() -> None:
    settings = load_settings(config_file=REPO / "config" / "sft-agent.yaml", environ={})
    assert settings.routes
    assert all(r.tls is not None for r in settings.routes if r.http_actions)


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with value ``...`` delete) a dotted path; ``routes.0.x`` indexes lists."""
    result = copy.deepcopy(document)
    node: Any = result
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


CASES = [
    ("routes", ..., "routes: required"),
    ("routes.0.name", "has space", "routes[0].name:"),
    ("routes.0.source", ..., "routes[0](warehouse).source: required"),
    ("routes.0.source", "relative/folder", "routes[0](warehouse).source: must be an absolute path"),
    ("routes.0.filename_regex", "([", "routes[0](warehouse).filename_regex: invalid regular expression"),
    ("routes.0.actions", [], "routes[0](warehouse).actions: required"),
    ("routes.0.actions.0", {"ftp": {}}, "routes[0](warehouse).actions[0]: must be a mapping with exactly one of"),
    ("routes.0.actions.0", {"http": {"url": "http://x/y"}}, "routes[0](warehouse).actions[0].http.url: must be an https"),
    ("routes.0.actions.0", {"http": {"url": "https://x/y", "method": "GET"}}, "actions[0].http.method: must be POST or PUT"),
    ("routes.0.actions.0", {"http": {"url": "https://x", "headers": {"Content-Length": "1"}}}, "http.headers.Content-Length"),
    ("routes.0.actions.0", {"http": {"url": "https://x", "filename_header": "bad header"}}, "http.filename_header"),
    ("routes.0.actions.0", {"http": {"url": "https://x", "read_timeout": "soon"}}, "http.read_timeout: 'soon' is not a duration"),
    ("routes.0.actions.1", {"copy": {}}, "routes[0](warehouse).actions[1].copy.destination: required"),
    ("routes.0.actions.1", {"rename": {"regex": "a", "replacement": r"\1"}}, "actions[1].rename.replacement: replacement refers to group 1"),
    ("routes.0.actions.1", {"rename": {"regex": "(?P<x>a)", "replacement": r"\g<y>"}}, "rename.replacement: replacement refers to group 'y'"),
    ("routes.0.delete_on_send", ..., "routes[0](warehouse).delete_on_send: set delete_on_send: true or a sent_folder"),
    ("routes.0.sent_folder", "/data-egress/sent", "routes[0](warehouse).sent_folder: give either delete_on_send"),
    ("routes.0.error_folder", ..., "routes[0](warehouse).error_folder: required"),
    ("routes.0.error_folder", "/data-egress/warehouse", "routes[0](warehouse).error_folder: must not be the source"),
    ("routes.0.threads", 0, "routes[0](warehouse).threads: must be between 1 and 64"),
    ("routes.0.min_age", "-1s", "routes[0](warehouse).min_age:"),
    ("routes.0.retry", {"initial_delay": "1h", "max_delay": "1m"}, "routes[0](warehouse).retry.max_delay: must not be shorter"),
    ("routes.0", {**valid()["routes"][0], "recursive": True, "work_folder": "/data-egress/warehouse/work"},
     "routes[0](warehouse).work_folder: inside a recursive source it must be a hidden folder"),
    ("routes.0.filname_regex", ".*", "routes[0](warehouse).filname_regex: unknown key (did you mean 'filename_regex'?)"),
    ("routes.0.actions.0", {"http": {"url": "https://x/", "methd": "PUT"}}, "actions[0].http.methd: unknown key (did you mean 'method'?)"),
    ("routes.0.threads", "3", "routes[0](warehouse).threads: must be a whole number, got '3'"),
    ("routes.0.delete_on_send", "yes", "routes[0](warehouse).delete_on_send: must be true or false"),
    ("defaults.retry.max_attempts", 0, "defaults.retry.max_attempts: must be between 1 and 1000"),
    ("defaults.retry.multiplier", "x", "defaults.retry.multiplier: must be a number"),
    ("defaults.poll_interval", "2 parsecs", "defaults.poll_interval:"),
    ("defaults.threds", 3, "defaults.threds: unknown key"),
    ("tls.client_cert", ..., "tls.client_cert: required"),
    ("tls.min_version", "TLSv1.0", "tls.min_version: must be TLSv1.2 or TLSv1.3"),
    ("tls.verify_hostname", "no", "tls.verify_hostname: must be true or false"),
    ("tls.client_key_passphrase", "hunter2", "tls.client_key_passphrase: a passphrase may not be written in the config"),
    ("tls.client_key_passphrase_env", "SFT_TEST_MISSING", "tls.client_key_passphrase_env: environment variable SFT_TEST_MISSING is not set"),
    ("tls.client_key_passphrase_file", "/nonexistent/pass", "tls.client_key_passphrase_file: cannot read"),
    ("metrics.port", 70000, "metrics.port: must be between 0 and 65535"),
    ("logging.format", "xml", "logging.format: must be json or console"),
    ("shutdown_grace", "forever", "shutdown_grace:"),
    ("surprise", 1, "surprise: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[c[2][:60] for c in CASES])
def test_each_error_names_its_key(path: str, value: Any, expected: str) -> None:
    problems = problems_of(_set(valid(), path, value))
    assert any(expected in p for p in problems), problems


def test_all_problems_are_reported_at_once() -> None:
    document = _set(_set(valid(), "routes.0.threads", 0), "defaults.min_age", "x")
    problems = problems_of(document)
    assert len(problems) >= 2
    assert any("threads" in p for p in problems) and any("defaults.min_age" in p for p in problems)


def test_two_routes_on_one_folder_and_a_route_name_twice_are_refused() -> None:
    document = valid()
    document["routes"].append(copy.deepcopy(document["routes"][0]))
    problems = problems_of(document)
    assert any("routes[1](warehouse).source: already the source of route 'warehouse'" in p for p in problems)
    assert any("route name 'warehouse' is used more than once" in p for p in problems)


def test_an_error_folder_that_is_another_routes_source_is_refused() -> None:
    document = valid()
    second = copy.deepcopy(document["routes"][0])
    second.update(
        name="other", source="/data-egress/error/warehouse", error_folder="/data-egress/error/other"
    )
    document["routes"].append(second)
    assert any("is the source of route 'other'" in p for p in problems_of(document))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("10m", 600.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1d", 86400.0), (3, 3.0),
     ("0.25", 0.25), ("1.5s", 1.5)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "2 sec", "-1s", "1w", True, None, "1h-5m"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_passphrase_from_a_file_or_the_environment_never_shows_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("correct horse\n")
    from_file = build_settings(_set(valid(), "tls.client_key_passphrase_file", str(secret_file)), environ={})
    tls = from_file.routes[0].tls
    assert tls is not None and tls.client_key_passphrase is not None
    assert tls.client_key_passphrase.reveal() == "correct horse"
    assert "correct horse" not in repr(from_file) and "correct horse" not in str(from_file)
    assert "**********" in repr(from_file)
    from_env = build_settings(
        _set(valid(), "tls.client_key_passphrase_env", "KEY_PASS"), environ={"KEY_PASS": "battery staple"}
    )
    assert "battery staple" not in repr(from_env) and "battery staple" not in str(from_env)
    tls = from_env.routes[0].tls
    assert tls is not None and tls.client_key_passphrase is not None
    assert tls.client_key_passphrase.reveal() == "battery staple"


def test_secret_headers_come_from_the_environment() -> None:
    document = _set(
        valid(),
        "routes.0.actions.0",
        {"http": {"url": "https://x/", "secret_headers": {"Authorization": "TOKEN"}}},
    )
    assert any(
        "secret_headers.Authorization: environment variable TOKEN is not set" in p
        for p in problems_of(document)
    )
    settings = build_settings(document, environ={"TOKEN": "Bearer abc"})
    action = settings.routes[0].actions[0]
    assert isinstance(action, HttpAction)
    assert action.secret_headers[0][1].reveal() == "Bearer abc"
    assert "Bearer abc" not in repr(settings) and "Bearer abc" not in str(settings)


def test_a_secret_shows_only_a_mask() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('**********')" and str(secret) == "**********"
    assert f"{secret}" == "**********" and secret.reveal() == "hunter2"


def test_environment_wins_over_the_file() -> None:
    settings = build_settings(
        valid(), environ={"SFT_AGENT_METRICS_PORT": "9999", "SFT_AGENT_LOG_FORMAT": "console"}
    )
    assert settings.metrics_port == 9999 and settings.log_format == "console"
    assert any("SFT_AGENT_METRICS_PORT" in p for p in problems_of(valid(), {"SFT_AGENT_METRICS_PORT": "x"}))


def test_a_route_can_turn_hostname_verification_off_and_keep_the_rest() -> None:
    document = _set(valid(), "routes.0.tls", {"verify_hostname": False})
    tls = build_settings(document, environ={}).routes[0].tls
    assert tls is not None
    assert tls.verify_hostname is False and tls.client_cert == Path("/certs/client.pem")


def test_relative_tls_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "tls: {client_cert: certs/c.pem, client_key: certs/k.pem}\n"
        "routes:\n"
        "  - {name: r, source: /in, error_folder: /err, delete_on_send: true,"
        " actions: [{http: {url: 'https://h/'}}, {rename: {regex: x, replacement: y}}]}\n"
    )
    settings = load_settings(config_file=config, environ={})
    tls = settings.routes[0].tls
    assert tls is not None and tls.client_cert == tmp_path / "certs" / "c.pem"
    assert isinstance(settings.routes[0].actions[1], RenameAction)


def test_missing_or_unparseable_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no config file"):
        load_settings(environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(config_file=bad, environ={})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(environ={"SFT_AGENT_CONFIG": str(tmp_path / "absent.yaml")})


# -- the ledger section ------------------------------------------------------------------


def test_the_ledger_is_off_by_default_and_the_environment_alone_enables_it_with_defaults() -> None:
    assert build_settings(valid(), environ={}).ledger is None
    ledger = build_settings(
        valid(), environ={"SFT_AGENT_LEDGER_TABLE": "data-egress-ledger", "AWS_REGION": "eu-west-2"}
    ).ledger
    assert ledger is not None
    assert (ledger.table, ledger.sft_root, ledger.region) == (
        "data-egress-ledger",
        Path("/data-egress"),
        "eu-west-2",
    )
    assert (ledger.unsent_after, ledger.unsent_check_interval) == (3600.0, 60.0)


def test_the_ledger_section_is_validated_key_by_key() -> None:
    document = valid() | {
        "ledger": {
            "table": "ledger",
            "sft_root": "/srv/sft",
            "unsent_after": "2h",
            "unsent_check_interval": "30s",
        }
    }
    ledger = build_settings(document, environ={}).ledger
    assert ledger is not None and ledger.sft_root == Path("/srv/sft") and ledger.unsent_after == 7200.0
    bad = valid() | {"ledger": {"sft_root": "relative", "unsent_check_interval": "0s", "tabel": "x"}}
    problems = problems_of(bad)
    assert any(p.startswith("ledger.table: required") for p in problems), problems
    assert any(p.startswith("ledger.sft_root: must be an absolute path") for p in problems), problems
    assert any(p.startswith("ledger.unsent_check_interval: must be between") for p in problems), problems
    assert any(p.startswith("ledger.tabel: unknown key (did you mean 'table'?)") for p in problems), problems


def test_two_routes_may_not_share_a_work_folder() -> None:
    document = valid()
    second = copy.deepcopy(document["routes"][0]) | {
        "name": "other",
        "source": "/data-egress/other/",
        "work_folder": "/data-egress/warehouse/.sft-agent",
    }
    document["routes"].append(second)
    assert any("already the work_folder of route 'warehouse'" in p for p in problems_of(document))
