"""Re-wrapping envelope data keys against a real moto server: KMS unwraps, SSM holds the recipient's key.

The recipient's RSA key pair is made here; its private half proves what was delivered:
it recovers the data key from the new metadata, and that key decrypts the untouched body.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog.testing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from egress.aws import AwsClients
from egress.devstack.encrypt import envelope_encrypt, esdk_encrypt_stream, s3ec_encrypt
from egress.errors import PermanentError, Reason
from egress.sources import SourceObject
from egress.stream_source import SourceProbe
from egress.transforms.decrypt import Decryptor
from egress.transforms.formats import HEAD_BYTES, EncryptionFormat
from egress.transforms.rewrap import RecipientKeys, Rewrapper, parse_recipient_key

PLAIN = os.urandom(100_003)
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass
class Probe:
    """A source probe answering from memory, counting what it is asked."""

    first_bytes: bytes = b""
    instruction_file: bool = False
    asked: list[str] = field(default_factory=list)

    def head(self) -> bytes:
        self.asked.append("head")
        return self.first_bytes

    def instruction_file_exists(self) -> bool:
        self.asked.append("instruction")
        return self.instruction_file


def public_key_value(key: Any, key_id: str = "rtg-key-1") -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return json.dumps({"KeyId": key_id, "PublicKey": base64.b64encode(der).decode()})


@pytest.fixture(scope="module")
def recipient() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def key_arn(aws: AwsClients) -> str:
    return aws.kms.create_key(Description="envelope key")["KeyMetadata"]["Arn"]


@pytest.fixture()
def parameter(aws: AwsClients, unique: str, recipient: rsa.RSAPrivateKey) -> str:
    name = f"/rtg/{unique}/public_key"
    aws.ssm.put_parameter(Name=name, Value=public_key_value(recipient), Type="String")
    return name


def rewrapper(aws: AwsClients, allowed: list[str], **keys: Any) -> Rewrapper:
    return Rewrapper(
        Decryptor(aws.kms, allowed_key_arns=allowed), RecipientKeys(lambda role_arn: aws.ssm, **keys)
    )


def envelope(aws: AwsClients, key_arn: str, **extra: str) -> tuple[dict[str, str], bytes]:
    metadata, body = envelope_encrypt(aws.kms, key_id=key_arn, chunks=iter([PLAIN]))
    return {**metadata, **extra}, b"".join(body)


def test_the_recipient_recovers_the_data_key_and_reads_the_untouched_body(
    aws: AwsClients, key_arn: str, parameter: str, recipient: rsa.RSAPrivateKey
) -> None:
    metadata, body = envelope(aws, key_arn, data_product="pdm", data_product_type="full", owner="x")

    result = rewrapper(aws, [key_arn]).rewrap(
        source="s3://src/a.enc", metadata=metadata, parameter=parameter, probe=Probe()
    )

    assert result.encryption is EncryptionFormat.ENVELOPE and result.metadata is not None
    delivered = result.metadata
    assert set(delivered) == {
        "iv",
        "data_product",
        "data_product_type",
        "datakeyencryptionkeyid",
        "ciphertext",
    }
    assert delivered["iv"] == metadata["iv"]
    assert (delivered["data_product"], delivered["data_product_type"]) == ("pdm", "full")
    assert delivered["datakeyencryptionkeyid"] == "rtg-key-1"
    data_key = recipient.decrypt(base64.b64decode(delivered["ciphertext"]), OAEP)
    assert data_key == aws.kms.decrypt(CiphertextBlob=base64.b64decode(metadata["ciphertext"]))["Plaintext"]
    decryptor = Cipher(algorithms.AES(data_key), modes.CTR(base64.b64decode(delivered["iv"]))).decryptor()
    assert decryptor.update(body) + decryptor.finalize() == PLAIN


def test_metadata_without_the_optional_columns_gets_just_the_envelope(
    aws: AwsClients, key_arn: str, parameter: str
) -> None:
    metadata, _ = envelope(aws, key_arn)
    result = rewrapper(aws, [key_arn]).rewrap(
        source="s3://src/a", metadata=metadata, parameter=parameter, probe=Probe()
    )
    assert result.metadata is not None
    assert set(result.metadata) == {"iv", "datakeyencryptionkeyid", "ciphertext"}


def test_a_key_not_allowed_is_refused_before_the_data_key_is_unwrapped(
    aws: AwsClients, key_arn: str, parameter: str
) -> None:
    metadata, _ = envelope(aws, key_arn)
    other = aws.kms.create_key(Description="another")["KeyMetadata"]["Arn"]
    for allowed in ([other], []):
        with pytest.raises(PermanentError) as caught:
            rewrapper(aws, allowed).rewrap(
                source="s3://src/a", metadata=metadata, parameter=parameter, probe=Probe()
            )
        assert caught.value.reason == Reason.KEY_NOT_ALLOWED, allowed


def test_a_data_key_that_is_not_32_bytes_is_refused(aws: AwsClients, key_arn: str, parameter: str) -> None:
    short = aws.kms.encrypt(KeyId=key_arn, Plaintext=os.urandom(16))["CiphertextBlob"]
    metadata = {
        "datakeyencryptionkeyid": key_arn,
        "ciphertext": base64.b64encode(short).decode(),
        "iv": base64.b64encode(os.urandom(16)).decode(),
    }
    with pytest.raises(PermanentError) as caught:
        rewrapper(aws, [key_arn]).rewrap(
            source="s3://src/a", metadata=metadata, parameter=parameter, probe=Probe()
        )
    assert caught.value.reason == Reason.AUTHENTICATION_FAILED and "16 bytes, not 32" in caught.value.detail


def der_of(key: Any) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


BAD_VALUES: dict[str, tuple[Callable[[], str], str]] = {
    "not json": (lambda: "-----BEGIN PUBLIC KEY-----", "not JSON"),
    "a list": (lambda: "[1, 2]", "a JSON list"),
    "no key id": (lambda: json.dumps({"PublicKey": "AAAA"}), "no KeyId"),
    "no public key": (lambda: json.dumps({"KeyId": "k"}), "no PublicKey"),
    "not base64": (lambda: json.dumps({"KeyId": "k", "PublicKey": "!!not base64!!"}), "not a base64 DER"),
    "not der": (lambda: json.dumps({"KeyId": "k", "PublicKey": "AAAA"}), "not a base64 DER"),
    "an ec key": (
        lambda: json.dumps({"KeyId": "k", "PublicKey": der_of(ec.generate_private_key(ec.SECP256R1()))}),
        "not an RSA key",
    ),
    "rsa 1024": (
        lambda: json.dumps(
            {
                "KeyId": "k",
                "PublicKey": der_of(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            }
        ),
        "1024 bits, under 2048",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_malformed_parameter_is_rewrap_key_unavailable_naming_it(case: str) -> None:
    make, expected = BAD_VALUES[case]
    value = make()
    with pytest.raises(PermanentError) as caught:
        parse_recipient_key("/rtg/key", value)
    assert caught.value.reason == Reason.REWRAP_KEY_UNAVAILABLE
    assert "'/rtg/key'" in caught.value.detail and expected in caught.value.detail
    assert value not in caught.value.detail or len(value) < 8


@pytest.mark.parametrize("name", ["/rtg/missing/public_key", "", "not a valid name//"])
def test_a_missing_parameter_is_rewrap_key_unavailable_before_any_kms_call(
    aws: AwsClients, key_arn: str, name: str
) -> None:
    metadata, _ = envelope(aws, key_arn)
    calls: list[str] = []
    aws.kms.meta.events.register("before-call.kms.Decrypt", lambda **_: calls.append("Decrypt"))
    with pytest.raises(PermanentError) as caught:
        rewrapper(aws, [key_arn]).rewrap(
            source="s3://src/a", metadata=metadata, parameter=name, probe=Probe()
        )
    assert caught.value.reason == Reason.REWRAP_KEY_UNAVAILABLE
    assert repr(name) in caught.value.detail
    assert calls == []


def test_the_parameter_is_cached_briefly_and_a_failure_is_not(
    aws: AwsClients, key_arn: str, unique: str, recipient: rsa.RSAPrivateKey
) -> None:
    name = f"/rtg/{unique}/later"
    reads: list[str] = []
    aws.ssm.meta.events.register("before-call.ssm.GetParameter", lambda **_: reads.append("GetParameter"))
    now = [100.0]
    keys = RecipientKeys(lambda role_arn: aws.ssm, max_age=60, size=2, clock=lambda: now[0])
    with pytest.raises(PermanentError):
        keys.get(name)
    aws.ssm.put_parameter(Name=name, Value=public_key_value(recipient, "k1"), Type="String")
    assert keys.get(name).key_id == "k1"  # the failure was not remembered
    assert keys.get(name).key_id == "k1"
    assert len(reads) == 2
    aws.ssm.put_parameter(Name=name, Value=public_key_value(recipient, "k2"), Type="String", Overwrite=True)
    now[0] += 61
    assert keys.get(name).key_id == "k2"  # expired: read again
    for index in range(3):
        aws.ssm.put_parameter(Name=f"{name}-{index}", Value=public_key_value(recipient), Type="String")
        keys.get(f"{name}-{index}")
    assert len(keys._entries) == 2  # bounded


def test_a_plain_object_passes_through_and_other_formats_are_unknown_encryption(
    aws: AwsClients, key_arn: str, parameter: str
) -> None:
    wrapper = rewrapper(aws, [key_arn])
    probe = Probe(first_bytes=b"id,name\n1,alice\n")
    plain = wrapper.rewrap(source="s3://src/p.csv", metadata={"owner": "x"}, parameter=parameter, probe=probe)
    assert plain.metadata is None and plain.encryption is EncryptionFormat.NONE
    assert probe.asked == ["head", "instruction"]

    _, s3ec_metadata = s3ec_encrypt(aws.kms, key_arn=key_arn, data=b"x")
    esdk_probe = Probe(first_bytes=esdk_head(aws, key_arn))
    cases = [
        ("s3ec", s3ec_metadata, Probe()),
        ("esdk", {}, esdk_probe),
        ("instruction file", {}, Probe(first_bytes=b"\x8a\x11", instruction_file=True)),
    ]
    for label, metadata, case_probe in cases:
        with pytest.raises(PermanentError) as caught:
            wrapper.rewrap(source="s3://src/x", metadata=metadata, parameter=parameter, probe=case_probe)
        assert caught.value.reason == Reason.UNKNOWN_ENCRYPTION, label
    # an object with envelope or S3EC metadata costs no probe
    assert cases[0][2].asked == []


def esdk_head(aws: AwsClients, key_arn: str) -> bytes:
    out = io.BytesIO()
    esdk_encrypt_stream(aws.kms, key_arn=key_arn, source=io.BytesIO(b"secret"), dest=out)
    return out.getvalue()


def test_the_parameter_is_read_through_the_routes_role(aws: AwsClients, key_arn: str, parameter: str) -> None:
    asked: list[str] = []

    def ssm_for(role_arn: str) -> Any:
        asked.append(role_arn)
        return aws.ssm

    wrapper = Rewrapper(Decryptor(aws.kms, allowed_key_arns=[key_arn]), RecipientKeys(ssm_for))
    metadata, _ = envelope(aws, key_arn)
    role = "arn:aws:iam::123456789012:role/rtg-egress"
    wrapper.rewrap(source="s3://src/a", metadata=metadata, parameter=parameter, role_arn=role, probe=Probe())
    assert asked == [role]


def test_no_key_material_in_logs_or_errors(
    aws: AwsClients, key_arn: str, parameter: str, unique: str, recipient: rsa.RSAPrivateKey
) -> None:
    metadata, _ = envelope(aws, key_arn)
    data_key = aws.kms.decrypt(CiphertextBlob=base64.b64decode(metadata["ciphertext"]))["Plaintext"]
    value = aws.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    errors: list[str] = []
    with structlog.testing.capture_logs() as events:
        result = rewrapper(aws, [key_arn]).rewrap(
            source="s3://src/a", metadata=metadata, parameter=parameter, probe=Probe()
        )
        broken = f"/rtg/{unique}/broken"
        aws.ssm.put_parameter(Name=broken, Value=value[:-40], Type="String")
        for name in (broken, f"/rtg/{unique}/absent"):
            with pytest.raises(PermanentError) as caught:
                rewrapper(aws, [key_arn]).rewrap(
                    source="s3://src/a", metadata=metadata, parameter=name, probe=Probe()
                )
            errors.append(str(caught.value) + repr(caught.value.__cause__))
    assert result.metadata is not None
    assert [event["event"] for event in events][:1] == ["data_key_rewrapped"]  # the check is not vacuous
    text = "\n".join(errors) + "\n".join(repr(event) for event in events)
    private = recipient.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secrets = [
        data_key.hex(),
        base64.b64encode(data_key).decode(),
        repr(data_key),
        metadata["ciphertext"],
        result.metadata["ciphertext"],
        json.loads(value)["PublicKey"][:40],
        base64.b64encode(private).decode()[:40],
    ]
    for secret in secrets:
        assert secret not in text


def test_the_source_probe_reads_a_few_bytes_and_looks_for_the_instruction_file(
    aws: AwsClients, unique: str
) -> None:
    bucket = f"probe-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    big = os.urandom(HEAD_BYTES + 10)
    for key, body in (("empty", b""), ("short", b"abc"), ("big", big), ("big.instruction", b"{}")):
        aws.s3.put_object(Bucket=bucket, Key=key, Body=body)
    probes = {
        key: SourceProbe(aws.s3, SourceObject(bucket, key, size))
        for key, size in (("empty", 0), ("short", 3), ("big", len(big)))
    }
    assert probes["empty"].head() == b""
    assert probes["short"].head() == b"abc"
    assert probes["big"].head() == big[:HEAD_BYTES]
    assert probes["big"].instruction_file_exists() is True
    assert probes["short"].instruction_file_exists() is False
