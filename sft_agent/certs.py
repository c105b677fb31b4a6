"""``sft-agent dev-certs``: a throwaway CA with a server and a client certificate (EC P-256).

For local runs and tests only. Keys are written mode 0600, certificates 0644, each file
atomically. File names (``ca.pem``, ``ca-key.pem``, ``server.pem``, ``server-key.pem``,
``client.pem``, ``client-key.pem``) are what the local stack and compose expect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egress.kernel.fsutil import write_atomically

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client-key.pem"


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, *, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "data-egress dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(*, common_name: str = "data-egress dev CA", days: int = 365) -> Issued:
    """A self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    ca: Issued, *, common_name: str, hosts: list[str] | None = None, client: bool, days: int = 90
) -> Issued:
    """A leaf certificate signed by ``ca``: server (with ``hosts`` as SANs) or client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_pair(issued: Issued, *, cert_path: Path, key_path: Path, passphrase: bytes | None = None) -> None:
    """Write a certificate (0644) and its key (0600), each atomically."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(key_path, issued.key_pem(passphrase=passphrase), mode=0o600)
    key_path.chmod(0o600)
    write_atomically(cert_path, issued.cert_pem(), mode=0o644)


def dev_certs(
    out: Path, *, hosts: list[str], client_name: str = "sft-agent", days: int = 90
) -> dict[str, Path]:
    """Write a fresh CA, a server certificate for ``hosts`` and a client certificate under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days=days + 1)
    server = issue(ca, common_name=hosts[0] if hosts else "localhost", hosts=hosts, client=False, days=days)
    client = issue(ca, common_name=client_name, client=True, days=days)
    paths = {name: out / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY)}
    write_pair(ca, cert_path=paths[CA_CERT], key_path=paths[CA_KEY])
    write_pair(server, cert_path=paths[SERVER_CERT], key_path=paths[SERVER_KEY])
    write_pair(client, cert_path=paths[CLIENT_CERT], key_path=paths[CLIENT_KEY])
    return paths
