"""Re-wrapping envelope data keys for a recipient's RSA key (``rewrap_datakey`` routes).

The object's body is delivered byte-identical, still encrypted; only its envelope
metadata changes (DESIGN §12): the data key, unwrapped with KMS under the same rules as
decrypting (EGRESS_KMS_KEY_ARNS), is encrypted with RSA-OAEP (SHA-256, MGF1 with
SHA-256, no label — what the replaced system's BouncyCastle
``RSA/ECB/OAEPWITHSHA-256ANDMGF1PADDING`` does) under the recipient's public key, read
from the SSM parameter the route names (through its ``role_arn`` when set): a JSON
string ``{"KeyId": "…", "PublicKey": "<base64 DER SubjectPublicKeyInfo>"}``.

An object without envelope metadata carries no key to re-wrap: with no marker of any
encrypted format at all it passes through as it is, as on a decrypt route; an object
of another encrypted format (S3 Encryption Client, Encryption SDK, instruction file) is
``unknown_encryption``, since its key is wrapped by one of our KMS keys, which the
recipient cannot use, and delivering it would hand them bytes they can never read.

The plaintext data key lives only inside :meth:`Rewrapper.rewrap` (and the decryptor's
bounded key cache); no key, wrapped key or parameter value reaches a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from egress.errors import PermanentError, Reason, error_code, translate_client_error
from egress.transforms.decrypt import Decryptor
from egress.transforms.formats import EncryptionFormat, classify, detect, strip_meta

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

__all__ = [
    "KEPT_METADATA",
    "MIN_RSA_BITS",
    "RecipientKey",
    "RecipientKeys",
    "Rewrapped",
    "Rewrapper",
    "SourceProbe",
    "parse_recipient_key",
]

log = structlog.get_logger("egress.rewrap")

MIN_RSA_BITS = 2048
# Envelope metadata the re-wrapped object keeps as it was (the replaced system's choice).
KEPT_METADATA = ("iv", "data_product", "data_product_type")
# SSM's answers for a parameter that is not there, or a name it cannot be.
_MISSING_CODES = frozenset({"ParameterNotFound", "ParameterVersionNotFound", "ValidationException"})
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _unavailable(parameter: str, why: str) -> PermanentError:
    return PermanentError(Reason.REWRAP_KEY_UNAVAILABLE, f"re-wrap key parameter {parameter!r}: {why}")


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's RSA public key and the ``KeyId`` that names it in the delivered metadata."""

    key_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)

    def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` encrypted with RSA-OAEP (SHA-256, MGF1 SHA-256, no label)."""
        return self.public_key.encrypt(data_key, _OAEP)


def parse_recipient_key(parameter: str, value: str) -> RecipientKey:
    """The key in an SSM parameter's value; ``PermanentError(rewrap_key_unavailable)`` if it holds none.

    The detail names the parameter and what is wrong with it, never the value.
    """
    try:
        document = json.loads(value)
    except ValueError:
        raise _unavailable(parameter, 'not JSON (expected {"KeyId": …, "PublicKey": …})') from None
    if not isinstance(document, dict):
        raise _unavailable(
            parameter, f"a JSON {type(document).__name__}, not an object with KeyId and PublicKey"
        )
    key_id = document.get("KeyId")
    encoded = document.get("PublicKey")
    if not isinstance(key_id, str) or not key_id.strip():
        raise _unavailable(parameter, "no KeyId string")
    if not isinstance(encoded, str) or not encoded.strip():
        raise _unavailable(parameter, "no PublicKey string")
    try:
        public_key = serialization.load_der_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise _unavailable(parameter, "PublicKey is not a base64 DER SubjectPublicKeyInfo") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise _unavailable(parameter, f"PublicKey is a {type(public_key).__name__}, not an RSA key")
    if public_key.key_size < MIN_RSA_BITS:
        raise _unavailable(
            parameter, f"PublicKey is an RSA key of {public_key.key_size} bits, under {MIN_RSA_BITS}"
        )
    return RecipientKey(key_id=key_id, public_key=public_key)


@dataclass(eq=False)
class RecipientKeys:
    """Recipients' keys by (role, parameter), read from SSM and cached briefly (bounded in size and age).

    ``ssm_for(role_arn)`` gives the SSM client to read with: the worker's own for ``""``,
    one acting as the role otherwise. A failed read is not cached, so a parameter fixed
    by an operator is seen by the next delivery.
    """

    ssm_for: Callable[[str], SSMClient]
    _: KW_ONLY
    max_age: float = 60.0
    size: int = 64
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[float, RecipientKey]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, parameter: str, *, role_arn: str = "") -> RecipientKey:
        """The key in ``parameter`` (read through ``role_arn`` when given)."""
        name = (role_arn, parameter)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and self.clock() - entry[0] <= self.max_age:
                return entry[1]
        key = parse_recipient_key(parameter, self._read(parameter, role_arn=role_arn))
        with self._lock:
            self._entries[name] = (self.clock(), key)
            self._entries.move_to_end(name)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return key

    def _read(self, parameter: str, *, role_arn: str) -> str:
        if not parameter:
            raise _unavailable(parameter, "the route sets rewrap_datakey but no encrypting_key_ssm_parm_name")
        doing = f"reading SSM parameter {parameter!r}" + (f" as {role_arn}" if role_arn else "")
        try:
            # WithDecryption: a SecureString parameter works too (a String one ignores it).
            response = self.ssm_for(role_arn).get_parameter(Name=parameter, WithDecryption=True)
        except ParamValidationError:
            raise _unavailable(parameter, "not a valid parameter name") from None
        except ClientError as exc:
            code = error_code(exc)
            if code in _MISSING_CODES:
                raise _unavailable(parameter, f"not found ({code})") from exc
            raise translate_client_error(exc, doing=doing) from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=doing) from exc
        return str(response.get("Parameter", {}).get("Value", ""))


class SourceProbe(Protocol):
    """What re-wrapping may ask of an object with no envelope metadata, to tell plain from encrypted."""

    def head(self) -> bytes:
        """The object's first bytes (an Encryption SDK header is recognised there)."""
        ...

    def instruction_file_exists(self) -> bool:
        """Whether ``<key>.instruction`` (S3 Encryption Client metadata kept beside it) exists."""
        ...


@dataclass(frozen=True)
class Rewrapped:
    """What a re-wrap route delivers an object with.

    ``metadata`` is the delivered object's user metadata in place of the source's, or
    ``None`` for an object passed through as it is (``encryption`` ``NONE``).
    """

    metadata: dict[str, str] | None
    encryption: EncryptionFormat


@dataclass(frozen=True)
class Rewrapper:
    """Envelope metadata re-wrapped for a route's recipient; one per worker, shared by threads."""

    decryptor: Decryptor
    keys: RecipientKeys

    def rewrap(
        self,
        *,
        source: str,
        metadata: Mapping[str, str],
        parameter: str,
        role_arn: str = "",
        probe: SourceProbe,
    ) -> Rewrapped:
        """The metadata ``source`` is delivered with on a re-wrap route (see the module's rules).

        ``metadata`` is the source object's user metadata as S3 returns it. Raises
        ``rewrap_key_unavailable`` for the recipient's parameter, the decryptor's reasons
        for the data key (``key_not_allowed``, ``authentication_failed``,
        ``kms_unavailable``), ``unknown_encryption`` for another encrypted format.
        """
        meta = strip_meta(metadata)
        fmt = detect(metadata=meta, head=b"")
        if fmt is EncryptionFormat.NONE:
            # Only objects without envelope or S3EC metadata cost the two probes.
            fmt = classify(
                source=source,
                metadata=meta,
                head=probe.head(),
                instruction_file_exists=probe.instruction_file_exists,
            )
        if fmt is EncryptionFormat.NONE:
            return Rewrapped(metadata=None, encryption=fmt)
        if fmt is not EncryptionFormat.ENVELOPE:
            raise PermanentError(
                Reason.UNKNOWN_ENCRYPTION,
                f"{source}: a {fmt.value} object on a re-wrap route: only envelope data keys are re-wrapped, "
                "and its own key is wrapped by a KMS key the recipient cannot use",
            )
        # The recipient's key first: a missing parameter fails before any KMS call.
        recipient = self.keys.get(parameter, role_arn=role_arn)
        wrapped = recipient.wrap(self.decryptor.envelope_data_key(source=source, metadata=meta))
        rewrapped = {name: meta[name] for name in KEPT_METADATA if name in meta}
        rewrapped["datakeyencryptionkeyid"] = recipient.key_id
        rewrapped["ciphertext"] = base64.b64encode(wrapped).decode("ascii")
        log.debug("data_key_rewrapped", source=source, recipient_key_id=recipient.key_id)
        return Rewrapped(metadata=rewrapped, encryption=fmt)
