"""A corpus of bad messages and bad routes: each gets its defined outcome, nothing partial.

Every case goes through the real worker process; the worker must keep running, put
each permanent failure in the DLQ with its reason, delete ignorable messages, and leave
no incomplete multipart upload, no temp file and no delivered object behind a failure.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import FLAG, Stack, WorkerProcess

# An S3 Encryption Client v2 object whose wrapped data key is not a KMS ciphertext.
S3EC_V2_METADATA = {
    "x-amz-key-v2": base64.b64encode(b"k" * 40).decode(),
    "x-amz-iv": base64.b64encode(b"i" * 12).decode(),
    "x-amz-cek-alg": "AES/GCM/NoPadding",
    "x-amz-wrap-alg": "kms+context",
    "x-amz-matdesc": "{}",
}


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-22T10:00:00.000Z",
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 0}},
            }
        ]
    }


# (body, expected) for bodies sent straight to the queue; expected None = deleted as ignored
MALFORMED: list[tuple[str, str | None]] = [
    ("this is not json", "malformed_body"),
    ("[1, 2, 3]", "malformed_body"),
    ('{"Records": []}', "malformed_body"),
    ('{"Records": [{"s3": {"object": {"key": "x/pipeline_success.flag"}}}]}', "malformed_body"),
    (
        json.dumps(
            {
                "Records": [
                    {"eventTime": "soon", "s3": {"bucket": {"name": "b"}, "object": {"key": "x/" + FLAG}}}
                ]
            }
        ),
        "malformed_body",
    ),
    ('{"Type": "Notification", "Message": {"not": "a string"}}', "malformed_body"),
    ('{"source": "aws.s3", "detail-type": "Object Created", "detail": 7}', "malformed_body"),
    ('{"hello": "world"}', "malformed_body"),
    ('{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}', None),
    # Hostile: nesting deep enough to raise RecursionError, in the body or an SNS envelope.
    ("[" * 100_000, "malformed_body"),
    (json.dumps({"Type": "Notification", "Message": "[" * 100_000}), "malformed_body"),
    (
        json.dumps(
            {
                "Records": [
                    {
                        "eventTime": "0001-01-01T00:00:00+01:00",
                        "s3": {"bucket": {"name": "b"}, "object": {"key": "x/" + FLAG}},
                    }
                ]
            }
        ),
        "malformed_body",
    ),
]


def test_corpus_of_bad_messages_and_routes(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> None:
    expected: dict[str, str] = {}  # flag key → reason
    dst = stack.destination_bucket

    def case(name: str, reason: str, *, route: dict[str, Any] | None, objects: dict[str, Any]) -> None:
        prefix = f"bad/{name}/"
        if route is not None:
            stack.put_route(source_prefix=prefix, pipeline_name=name, **route)
        for key, body in objects.items():
            if isinstance(body, tuple):
                stack.upload(prefix + key, body[0], Metadata=body[1])
            else:
                stack.upload(prefix + key, body)
        expected[prefix + FLAG] = reason

    s3_route = {"transfer_type": "S3", "destination_bucket": dst, "destination_prefix": "out/"}
    case("no-route", "no_route", route=None, objects={"a.txt": b"a"})
    case(
        "other-bucket",
        "no_route",
        route={**s3_route, "source_bucket": "someone-elses-bucket"},
        objects={"a.txt": b"a"},
    )
    case(
        "bad-pattern", "invalid_route", route={**s3_route, "exclude": ["!keep.txt"]}, objects={"a.txt": b"a"}
    )
    case(
        "unapproved",
        "route_not_approved",
        route={**s3_route, "approval_required": True},
        objects={"a.txt": b"a"},
    )
    case("no-destination-bucket", "invalid_route", route={"transfer_type": "S3"}, objects={"a.txt": b"a"})
    case(
        "bad-transfer-type",
        "invalid_route",
        route={**s3_route, "transfer_type": "FTP"},
        objects={"a.txt": b"a"},
    )
    case(
        "sft-escaping-folder",
        "invalid_route",
        route={"transfer_type": "SFT", "destination_prefix": "../../etc"},
        objects={"a.txt": b"a"},
    )
    case(
        "sft-absolute-folder",
        "invalid_route",
        route={"transfer_type": "SFT", "destination_prefix": "/etc"},
        objects={"a.txt": b"a"},
    )
    case(
        "unknown-placeholder",
        "invalid_route",
        route={**s3_route, "destination_prefix": "$YESTERDAY/"},
        objects={"a.txt": b"a"},
    )
    case(
        "bad-compress-format",
        "invalid_route",
        route={**s3_route, "compress": True, "compress_fmt": "rar"},
        objects={"a.txt": b"a"},
    )
    case(
        "bad-role-arn", "invalid_route", route={**s3_route, "role_arn": "not-an-arn"}, objects={"a.txt": b"a"}
    )
    case(
        "missing-destination-bucket",
        "destination_missing",
        route={**s3_route, "destination_bucket": "no-such-bucket-anywhere"},
        objects={"a.txt": b"a"},
    )
    case(
        "sft-traversal-key",
        "unsafe_key",
        route={"transfer_type": "SFT", "destination_prefix": "trav"},
        objects={"../../../escaped.txt": b"x"},
    )
    case(
        "sft-backslash-key",
        "unsafe_key",
        route={"transfer_type": "SFT", "destination_prefix": "bs"},
        objects={"a\\..\\b.txt": b"x"},
    )
    case(
        "sft-hidden-name",
        "unsafe_key",
        route={"transfer_type": "SFT", "destination_prefix": "hid"},
        objects={".hidden": b"x"},
    )
    case(
        "instruction-file-under-decrypt",
        "unknown_encryption",
        route={**s3_route, "decrypt": True},
        objects={
            "data.bin": b"\x8a ciphertext",
            "data.bin.instruction": json.dumps(S3EC_V2_METADATA).encode(),
        },
    )
    case(
        "s3ec-v2-forged-data-key",
        "authentication_failed",
        route={"transfer_type": "SFT", "destination_prefix": "s3ec", "decrypt": True},
        objects={"data.bin": (b"\x00" * 64, S3EC_V2_METADATA)},
    )
    case(
        "garbled-envelope",
        "authentication_failed",
        route={**s3_route, "decrypt": True},
        objects={
            "data.enc": (
                b"\x00" * 64,
                {
                    "datakeyencryptionkeyid": stack.kms_key_arn,
                    "ciphertext": "!!!not-base64!!!",
                    "iv": base64.b64encode(b"0" * 16).decode(),
                },
            )
        },
    )
    case(
        "envelope-short-iv",
        "authentication_failed",
        route={**s3_route, "decrypt": True},
        objects={
            "data.enc": (
                b"\x00" * 64,
                {
                    "datakeyencryptionkeyid": stack.kms_key_arn,
                    "ciphertext": base64.b64encode(b"c" * 100).decode(),
                    "iv": base64.b64encode(b"0" * 5).decode(),
                },
            )
        },
    )
    # A mixed case: one valid row is delivered, the invalid one sends the message to the DLQ.
    stack.put_route(source_prefix="bad/mixed/", pipeline_name="good", **s3_route)
    stack.put_route(source_prefix="bad/mixed/", pipeline_name="broken", transfer_type="S3")
    stack.upload("bad/mixed/m.txt", b"mixed")
    expected["bad/mixed/" + FLAG] = "invalid_route"

    worker = start_worker()
    for body, _ in MALFORMED:
        stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    for flag_key in expected:
        stack.upload(flag_key)
    # a non-flag key announced explicitly is ignored
    stack.aws.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=json.dumps(s3_event(stack.source_bucket, "bad/data.csv"))
    )

    want_dlq = len(expected) + sum(1 for _, reason in MALFORMED if reason)
    worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", count=want_dlq, timeout=120)
    worker.wait_for(lambda line: line.get("event") == "message_ignored", count=3, timeout=30)
    dlq = stack.dlq_messages(wait=5)
    assert len(dlq) == want_dlq, [m["MessageAttributes"]["reason"]["StringValue"] for m in dlq]

    got: dict[str, str] = {}
    malformed_reasons: list[str] = []
    for message in dlq:
        reason = message["MessageAttributes"]["reason"]["StringValue"]
        detail = message["MessageAttributes"]["detail"]["StringValue"]
        assert detail and "\n" not in detail
        if reason == "malformed_body":
            malformed_reasons.append(reason)
            continue
        try:
            key = json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"]
            from urllib.parse import unquote_plus

            got[unquote_plus(key)] = reason
        except (ValueError, KeyError, TypeError, IndexError):
            malformed_reasons.append(reason)
    assert got == expected
    assert malformed_reasons == ["malformed_body"] * sum(1 for _, reason in MALFORMED if reason)

    # The worker is still alive and well after all of it.
    assert worker.process.poll() is None and worker.get("/healthz")[0] == 200
    # Nothing partial anywhere: only the mixed case's valid row delivered its object.
    assert stack.destination_keys() == ["out/m.txt"]
    uploads = stack.aws.s3.list_multipart_uploads(Bucket=dst).get("Uploads", [])
    assert uploads == []
    # Only the running worker's own lock file (which says it is alive) is on the volume.
    leftovers = [p for p in stack.sft_root.rglob("*") if p.is_file()]
    assert [p.relative_to(stack.sft_root).parent.as_posix() for p in leftovers] == [".egress/owners"]
    assert not list(stack.sft_root.parent.rglob("escaped.txt"))
    assert stack.queue_counts() == (0, 0)
    assert worker.stop() == 0
