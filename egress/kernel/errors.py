"""The error vocabulary of both programs: reason codes, the error base, and "stop now".

Every failure either program reports carries one :class:`Reason`: a short code that is
a Prometheus label (``egress_failures_total``, ``sft_agent_failures_total``), the
``reason`` attribute of a dead-lettered SQS message, the ``reason`` of the JSON left
beside a parked file, and a field of log lines and ledger rows. Operators alert and
search on these strings, so the values never change and a code is removed only when
no code path can emit it. ``Reason`` is a ``StrEnum``: a member *is* its string value
(``Reason.NO_ROUTE == "no_route"``, ``str()``, f-strings, ``json.dumps`` and boto3 all
see ``"no_route"``), so nothing converts on the way out.

The families built on :class:`EgressError` live with their program: the worker's
``RetryableError``/``PermanentError`` in :mod:`egress.errors` (with its AWS translation),
the agent's ``DeliveryError`` in :mod:`sft_agent.errors`.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why something failed: one fixed, low-cardinality set for both programs."""

    # -- the worker, permanent: the message goes to the DLQ at once --------------------------
    # The SQS body is not an S3 event notification the worker can read.
    MALFORMED_BODY = "malformed_body"
    # No enabled route matches the flag's bucket and prefix.
    NO_ROUTE = "no_route"
    # A matching route row is incomplete or contradictory (or its destination unusable).
    INVALID_ROUTE = "invalid_route"
    # A row with ``approval_required`` has no valid approval by someone other than its last
    # editor (or the row changed since): redrive once ``egress routes approve`` was run.
    ROUTE_NOT_APPROVED = "route_not_approved"
    # AWS refused the worker's credentials or rights (403 and friends).
    ACCESS_DENIED = "access_denied"
    # An object's encryption metadata names a scheme the worker cannot decrypt.
    UNKNOWN_ENCRYPTION = "unknown_encryption"
    # Decryption failed its authentication (tampered, truncated or wrongly keyed data).
    AUTHENTICATION_FAILED = "authentication_failed"
    # The data key is wrapped by a KMS key outside the allowed list (or none is configured).
    KEY_NOT_ALLOWED = "key_not_allowed"
    # A re-wrap route's recipient key cannot be had: its SSM parameter is missing, is not
    # the JSON ``{"KeyId", "PublicKey"}``, or holds no RSA public key of 2048 bits or more.
    REWRAP_KEY_UNAVAILABLE = "rewrap_key_unavailable"
    # An object would be delivered under a name the destination refuses (escapes, too long).
    UNSAFE_KEY = "unsafe_key"
    # The source object is gone (404, NoSuchKey).
    SOURCE_MISSING = "source_missing"
    # The destination bucket or table does not exist.
    DESTINATION_MISSING = "destination_missing"
    # AWS rejected the request for a reason no retry changes (any other 4xx).
    AWS_REJECTED = "aws_rejected"
    # The bytes S3 stored do not match the checksum the worker computed.
    INTEGRITY_MISMATCH = "integrity_mismatch"
    # Two objects (or an object and the manifest) would get the same destination name.
    NAME_COLLISION = "name_collision"
    # A stream longer than 10,000 parts of the configured part size (S3's multipart limit).
    OBJECT_TOO_LARGE = "object_too_large"
    # ``egress routes``: the routes file cannot be read.
    BAD_FILE = "bad_file"

    # -- the worker, retryable: the message becomes visible again after a backoff ------------
    # AWS throttled the call (or left batch items unprocessed).
    THROTTLED = "throttled"
    # AWS answered 5xx or could not be reached.
    AWS_UNAVAILABLE = "aws_unavailable"
    # KMS could not be reached or failed while unwrapping a data key.
    KMS_UNAVAILABLE = "kms_unavailable"
    # The SFT volume has less free space than the object plus the margin.
    DISK_SHORT = "disk_short"
    # Another live worker holds the delivery's lease (the message is requeued behind it).
    IN_PROGRESS_ELSEWHERE = "in_progress_elsewhere"
    # Another worker took this worker's lapsed lease over.
    LEASE_LOST = "lease_lost"
    # Any other botocore or OS error worth another try.
    TRANSIENT = "transient"
    # Temporary credentials lapsed mid-way; new ones make the same request pass.
    CREDENTIALS_EXPIRED = "credentials_expired"
    # The service gave up waiting for the request's bytes (a slow or stalled sender).
    REQUEST_TIMEOUT = "request_timeout"
    # An unexpected exception escaped a message's handling (a bug): retried, and logged.
    INTERNAL_ERROR = "internal_error"

    # -- the agent: every attempt is retried up to the route's max_attempts, except the
    #    ones marked permanent --------------------------------------------------------------
    # The receiver refused the connection, was unreachable, or the connect timed out.
    CONNECT = "connect"
    # The receiver's certificate was rejected (unknown CA, wrong host name, expired).
    TLS_VERIFY = "tls_verify"
    # The TLS handshake failed or an alert came (e.g. our client certificate refused).
    TLS = "tls"
    # No progress for the action's read_timeout.
    TIMEOUT = "timeout"
    # The connection dropped during the request.
    DISCONNECTED = "disconnected"
    # The receiver answered 4xx.
    HTTP_4XX = "http_4xx"
    # The receiver answered 5xx.
    HTTP_5XX = "http_5xx"
    # The receiver answered 1xx or 3xx.
    HTTP_OTHER = "http_other"
    # The receiver said the body's digest did not match (a 400 saying so in its JSON).
    DIGEST_MISMATCH = "digest_mismatch"
    # Any answer (even a 2xx) before the whole body was sent: never a delivery.
    EARLY_RESPONSE = "early_response"
    # A copy action could not write its destination.
    COPY_FAILED = "copy_failed"
    # The file changed (shrank) while it was hashed or sent.
    FILE_CHANGED = "file_changed"
    # A rename action produced a name that is not allowed (permanent).
    INVALID_NAME = "invalid_name"
    # The agent could not read or move the file locally.
    IO_ERROR = "io_error"
    # A newer file of the same name arrived before this one was sent (permanent).
    SUPERSEDED = "superseded"


class EgressError(Exception):
    """Base of every reported failure: a :class:`Reason` and one human line (``detail``).

    ``reason`` may be given as its string value (checked: an unknown one raises
    ``ValueError``), so a code read back from a DLQ attribute or a file builds the same error.
    """

    def __init__(self, reason: Reason | str, detail: str) -> None:
        self.reason: Reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")


class StopRequested(BaseException):  # noqa: N818 - control flow, not an error
    """Raised inside a unit of work to unwind it now: the program is told to abort.

    The worker raises it when a message's cancel event is set (the grace period is over,
    a second signal came, or its lease was lost); the agent when a send must stop (grace
    period over, second signal), and the file is put back untouched with no attempt
    counted. A ``BaseException`` so that ``except Exception`` in delivery and action code
    cannot swallow it.
    """
