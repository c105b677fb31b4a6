"""TLS contexts (encrypted keys, ciphers, protocol floor) and the command line (exit codes, dev-certs)."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from sft_helpers import AgentProc, Pki, ReceiverProc, child_env, drop, route, wait_for

from sft_agent.certs import issue, make_ca, write_pair
from sft_agent.settings import Secret, TlsSettings
from sft_agent.tls import TlsConfigError, client_context


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("enc")
    ca = make_ca()
    write_pair(ca, cert_path=folder / "ca.pem", key_path=folder / "ca-key.pem")
    client = issue(ca, common_name="enc", client=True)
    write_pair(client, cert_path=folder / "c.pem", key_path=folder / "k.pem", passphrase=b"s3cret-phrase")
    return folder / "c.pem", folder / "k.pem", folder / "ca.pem"


def test_an_encrypted_key_loads_with_its_passphrase_and_fails_clearly_without(
    encrypted: tuple[Path, Path, Path],
) -> None:
    cert, key, ca = encrypted
    assert b"ENCRYPTED" in key.read_bytes()
    good = TlsSettings(
        client_cert=cert, client_key=key, ca_bundle=ca, client_key_passphrase=Secret("s3cret-phrase")
    )
    assert isinstance(client_context(good), ssl.SSLContext)
    for passphrase in (None, Secret("wrong-guess")):
        bad = TlsSettings(client_cert=cert, client_key=key, ca_bundle=ca, client_key_passphrase=passphrase)
        with pytest.raises(TlsConfigError) as caught:
            client_context(bad, prefix="routes[0](x).tls")  # must not prompt on a terminal
        message = str(caught.value)
        assert message.startswith("routes[0](x).tls.client_key:") and "passphrase" in message
        assert "wrong-guess" not in message and "s3cret" not in message


def test_client_context_floor_and_forward_secret_ciphers_only(pki: Pki) -> None:
    settings = TlsSettings(client_cert=pki.client_cert, client_key=pki.client_key, ca_bundle=pki.ca)
    context = client_context(settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), [c["name"] for c in tls12]
    strict = client_context(
        TlsSettings(
            client_cert=pki.client_cert, client_key=pki.client_key, ca_bundle=pki.ca, min_version="TLSv1.3"
        )
    )
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_3


def test_missing_certificate_files_name_the_setting(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"^tls.client_cert: cannot read .*absent.pem"):
        client_context(
            TlsSettings(client_cert=tmp_path / "absent.pem", client_key=pki.client_key, ca_bundle=pki.ca)
        )
    with pytest.raises(TlsConfigError, match=r"^tls.client_key: cannot use"):
        client_context(TlsSettings(client_cert=pki.client_cert, client_key=pki.server_key, ca_bundle=pki.ca))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sft_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(env),
        check=False,
    )


def test_dev_certs_writes_keys_0600_and_server_names_from_the_hosts(tmp_path: Path) -> None:
    result = run_cli(
        "dev-certs", "--out", str(tmp_path / "certs"), "--hosts", "localhost,127.0.0.1", "receiver"
    )
    assert result.returncode == 0, result.stderr
    files = {p.name: p for p in (tmp_path / "certs").iterdir()}
    assert set(files) == {
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    }
    for name in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE(files[name].stat().st_mode) == 0o600, name
    server = x509.load_pem_x509_certificate(files["server.pem"].read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "receiver"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"routes": [{"name": "r", "source": "relative", "actions": []}]}))
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "routes[0](r).source: must be an absolute path" in result.stderr
    assert "routes[0](r).actions: required" in result.stderr
    env_result = run_cli("check", env={"SFT_AGENT_CONFIG": str(config)})
    assert env_result.returncode == 2 and "routes[0](r).source" in env_result.stderr


def test_unusable_certificates_stop_the_agent_at_start_with_exit_2(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tls": {"client_cert": str(pki.client_cert), "client_key": str(tmp_path / "nokey.pem")},
                "metrics": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    route(
                        "r",
                        tmp_path / "in",
                        [{"http": {"url": "https://127.0.0.1:1/"}}],
                        error_folder=tmp_path / "e",
                    )
                ],
            }
        )
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "routes[0](r).tls.client_key: cannot read" in result.stderr


def test_an_encrypted_key_with_its_passphrase_from_the_environment_delivers(
    tmp_path: Path,
    pki: Pki,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    ca = make_ca()  # a private CA of this test, trusted by this receiver only
    write_pair(ca, cert_path=tmp_path / "ca2.pem", key_path=tmp_path / "ca2-key.pem")
    client = issue(ca, common_name="enc-client", client=True)
    write_pair(client, cert_path=tmp_path / "c.pem", key_path=tmp_path / "k.pem", passphrase=b"from-env-123")
    server = issue(ca, common_name="localhost", hosts=["127.0.0.1"], client=False)
    write_pair(server, cert_path=tmp_path / "s.pem", key_path=tmp_path / "s-key.pem")
    receiver = start_receiver(cert=tmp_path / "s.pem", key=tmp_path / "s-key.pem")
    # The receiver trusts the session CA for clients: point it at this test's CA instead.
    receiver.stop()
    receiver.argv[receiver.argv.index("--ca") + 1] = str(tmp_path / "ca2.pem")
    receiver.start()
    wait_for(lambda: len(receiver.events("receiver_started")) == 2, timeout=10, what="the restarted receiver")
    source = tmp_path / "in"
    agent = start_agent(
        [
            route(
                "enc",
                source,
                [{"http": {"url": f"{receiver.url}/enc"}}],
                error_folder=tmp_path / "err",
                tls={
                    "client_cert": str(tmp_path / "c.pem"),
                    "client_key": str(tmp_path / "k.pem"),
                    "client_key_passphrase_env": "SFT_TEST_KEY_PASSPHRASE",
                    "ca_bundle": str(tmp_path / "ca2.pem"),
                },
            )
        ],
        env={"SFT_TEST_KEY_PASSPHRASE": "from-env-123"},
    )
    drop(source, "x.csv", b"1\n")
    wait_for(lambda: receiver.received("x.csv"), timeout=15, what="delivery with the encrypted key")
    assert "from-env-123" not in agent.log_text()
