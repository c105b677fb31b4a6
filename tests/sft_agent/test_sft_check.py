"""``sft-agent check`` against real receivers: TLS with certificates made here, real processes.

Each test writes an agent config, runs ``sft-agent check`` as a process and reads its
report: one line per URL (``ok`` / ``WARN`` / ``FAIL``, the route, the URL, what was found),
then a summary; exit 0 when every URL is ok (warnings allowed), 1 when one failed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sft_helpers import Pki, ReceiverProc, agent_config, child_env, files_under, route, wait_for

from sft_agent.certs import Issued, issue, write_pair
from tests.support.ports import free_port


def load_ca(pki: Pki) -> Issued:
    key = serialization.load_pem_private_key((pki.folder / "ca-key.pem").read_bytes(), password=None)
    return Issued(x509.load_pem_x509_certificate(pki.ca.read_bytes()), key)  # type: ignore[arg-type]


def server_pair(
    pki: Pki, folder: Path, name: str, *, not_before: datetime, not_after: datetime
) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1/localhost from the test CA with the given validity."""
    ca = load_ca(pki)
    template = issue(ca, common_name=name, hosts=["localhost", "127.0.0.1"], client=False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(template.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            template.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
    )
    issued = Issued(builder.sign(ca.key, hashes.SHA256()), template.key)
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    write_pair(issued, cert_path=cert, key_path=key)
    return cert, key


def run_check(
    tmp_path: Path, pki: Pki, routes: list[dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(agent_config(pki, routes, metrics_port=free_port()), sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "sft_agent.cli", "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )


def http_route(tmp_path: Path, name: str, url: str, **extra: Any) -> dict[str, Any]:
    return route(
        name, tmp_path / name, [{"http": {"url": url}}], error_folder=tmp_path / "errors" / name, **extra
    )


def report_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Route name → its report line (every route here has one URL)."""
    lines = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in {"ok", "WARN", "FAIL"}:
            lines[parts[1]] = line
    return lines


def test_a_running_receiver_passes_with_what_was_negotiated(
    tmp_path: Path, pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver()
    routes = [
        http_route(tmp_path, "post", f"{receiver.url}/DA"),
        route(
            "put",
            tmp_path / "put",
            [
                {
                    "http": {
                        "url": f"https://localhost:{receiver.port}/collection/?token=s3cret",
                        "method": "PUT",
                    }
                }
            ],
            error_folder=tmp_path / "errors" / "put",
        ),
        route(
            "local-copy",
            tmp_path / "copy",
            [{"copy": {"destination": str(tmp_path / "copied")}}],
            error_folder=tmp_path / "e",
        ),
    ]
    # The fixture's wait for the port (a bare TCP connection) is one failed handshake already.
    handshakes_failed = len(wait_for(lambda: receiver.events("tls_handshake_failed"), timeout=10, what="it"))

    result = run_check(tmp_path, pki, routes)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = report_lines(result)
    assert set(lines) == {"post", "put"}, result.stdout
    post = lines["post"]
    assert post.startswith(f"ok    post  {receiver.url}/DA  TLSv1."), post
    assert "server certificate CN=localhost" in post and "expires" in post
    assert "client certificate expires" in post and "(90 days)" in post
    assert "OPTIONS 204" in post
    # The query string may hold a token: never shown.
    assert (
        f"https://localhost:{receiver.port}/collection/  " in lines["put"] and "s3cret" not in result.stdout
    )
    assert (
        result.stdout.splitlines()[-1]
        == "2 URLs checked: 2 ok, 0 warnings, 0 failed; 1 route without an http action"
    )
    # The probe wrote nothing, and both probes arrived with our certificate.
    assert files_under(receiver.out) == {}
    probes = receiver.events("probe_answered")
    assert {(p["method"], p["client"]) for p in probes} == {("OPTIONS", "sft-agent-test")}, probes
    assert {p["path"] for p in probes} == {"/DA", "/collection/"}
    assert len(receiver.events("tls_handshake_failed")) == handshakes_failed

    head = run_check(tmp_path, pki, routes[:1], "--method", "HEAD")
    assert head.returncode == 0, head.stdout + head.stderr
    assert "HEAD 200" in report_lines(head)["post"]


def test_a_receiver_that_is_down_fails_with_a_clear_line(tmp_path: Path, pki: Pki) -> None:
    port = free_port()

    result = run_check(tmp_path, pki, [http_route(tmp_path, "down", f"https://127.0.0.1:{port}/DA")])

    assert result.returncode == 1
    line = report_lines(result)["down"]
    assert line.startswith(f"FAIL  down  https://127.0.0.1:{port}/DA"), line
    assert "connect: connection refused" in line
    assert "client certificate expires" in line  # what can be said without the server still is
    assert result.stdout.splitlines()[-1] == "1 URL checked: 0 ok, 0 warnings, 1 failed"


def test_a_silent_server_is_given_up_on_after_the_timeout(tmp_path: Path, pki: Pki) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never speaks TLS
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()

        result = run_check(
            tmp_path, pki, [http_route(tmp_path, "mute", f"https://127.0.0.1:{port}/")], "--timeout", "1"
        )

    assert result.returncode == 1
    assert "TLS: no handshake within 1s" in report_lines(result)["mute"]
    assert time.monotonic() - started < 8


def test_a_client_certificate_the_receiver_does_not_trust_fails(
    tmp_path: Path, pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver()
    rogue = {"client_cert": str(pki.rogue_client_cert), "client_key": str(pki.rogue_client_key)}

    result = run_check(tmp_path, pki, [http_route(tmp_path, "rogue", f"{receiver.url}/DA", tls=rogue)])

    assert result.returncode == 1, result.stdout
    line = report_lines(result)["rogue"]
    assert line.startswith("FAIL  rogue"), line
    assert (
        "does not accept our client certificate" in line or "did it refuse our client certificate" in line
    ), line
    assert not receiver.events("probe_answered")


def test_certificates_expired_or_close_to_it_fail_or_warn(
    tmp_path: Path, pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    now = datetime.now(UTC)
    expired = server_pair(
        pki, tmp_path, "expired", not_before=now - timedelta(days=30), not_after=now - timedelta(days=2)
    )
    soon = server_pair(
        pki, tmp_path, "soon", not_before=now - timedelta(days=30), not_after=now + timedelta(days=5, hours=1)
    )
    old = start_receiver(cert=expired[0], key=expired[1], name="old")
    ending = start_receiver(cert=soon[0], key=soon[1], name="ending")

    result = run_check(
        tmp_path,
        pki,
        [http_route(tmp_path, "old", f"{old.url}/DA"), http_route(tmp_path, "ending", f"{ending.url}/DA")],
    )

    assert result.returncode == 1, result.stdout
    lines = report_lines(result)
    assert lines["old"].startswith("FAIL  old"), lines["old"]
    assert "certificate has expired" in lines["old"]
    assert "server certificate CN=expired expired" in lines["old"] and "(2 days ago)" in lines["old"]
    assert lines["ending"].startswith("WARN  ending"), lines["ending"]
    assert "OPTIONS 204" in lines["ending"]
    assert "the server certificate CN=soon expires in 5 days (under --warn-days 14)" in lines["ending"]
    assert result.stdout.splitlines()[-1] == "2 URLs checked: 0 ok, 1 warning, 1 failed"

    # A warning alone exits 0; a shorter horizon makes it ok.
    alone = run_check(tmp_path, pki, [http_route(tmp_path, "ending", f"{ending.url}/DA")])
    assert alone.returncode == 0 and report_lines(alone)["ending"].startswith("WARN")
    relaxed = run_check(
        tmp_path, pki, [http_route(tmp_path, "ending", f"{ending.url}/DA")], "--warn-days", "2"
    )
    assert relaxed.returncode == 0 and report_lines(relaxed)["ending"].startswith("ok")


def test_a_certificate_for_another_host_fails_unless_hostname_checks_are_off(
    tmp_path: Path, pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver(cert=pki.other_host_cert, key=pki.other_host_key)
    url = f"{receiver.url}/DA"

    result = run_check(
        tmp_path,
        pki,
        [
            http_route(tmp_path, "strict", url),
            http_route(tmp_path, "lenient", url, tls={"verify_hostname": False}),
        ],
    )

    assert result.returncode == 1, result.stdout
    lines = report_lines(result)
    assert lines["strict"].startswith("FAIL  strict"), lines["strict"]
    assert "the server's certificate is not accepted" in lines["strict"] and "127.0.0.1" in lines["strict"]
    assert "server certificate CN=other.example" in lines["strict"]  # which certificate it was
    assert lines["lenient"].startswith("ok    lenient"), lines["lenient"]


def test_an_unreadable_client_key_is_a_config_problem(tmp_path: Path, pki: Pki) -> None:
    broken = {"client_key": str(tmp_path / "absent-key.pem")}

    result = run_check(tmp_path, pki, [http_route(tmp_path, "broken", "https://127.0.0.1:1/", tls=broken)])

    assert result.returncode == 2
    assert "routes[0](broken).tls.client_key: cannot read" in report_lines(result)["broken"]
