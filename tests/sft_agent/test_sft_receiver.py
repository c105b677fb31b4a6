"""The receiver: path safety, digest checks, client certificates — unit level and as a process."""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from sft_helpers import Pki, ReceiverProc, files_under, wait_for

from sft_agent.receiver import RequestRefused, parse_digest, resolve_target

# -- unit: where a request may write -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "header", "expected"),
    [
        ("POST", "/DA", "data.csv", ["DA", "data.csv"]),
        ("POST", "/", "data.csv", ["data.csv"]),
        ("POST", "/a/b?x=1", "sub/part-0", ["a", "b", "sub", "part-0"]),
        ("POST", "/DA", "caf%C3%A9%25.csv", ["DA", "café%.csv"]),
        ("PUT", "/incoming/opsmi/data%20x.csv", None, ["incoming", "opsmi", "data x.csv"]),
        ("PUT", "//a///b", None, ["a", "b"]),
    ],
)
def test_targets(method: str, path: str, header: str | None, expected: list[str]) -> None:
    assert resolve_target(method, path, header) == expected


@pytest.mark.parametrize(
    ("method", "path", "header"),
    [
        ("PUT", "/a/../../etc/passwd", None),
        ("PUT", "/a/%2E%2E/x", None),
        ("PUT", "/a/..%2Fx", None),
        ("PUT", "/a%2Fb/x", None),
        ("PUT", "/a/x%00y", None),
        ("PUT", "/a/x%0Ay", None),
        ("PUT", "/a/.hidden", None),
        ("PUT", "/a/%FF", None),
        ("PUT", "/", None),
        ("POST", "/DA", "../x"),
        ("POST", "/DA", "/etc/passwd"),
        ("POST", "/DA", "%2Fetc%2Fpasswd"),
        ("POST", "/DA", "a/../../x"),
        ("POST", "/DA", "x%00"),
        ("POST", "/DA", "a\\..\\x"),
        ("POST", "/DA", ""),
        ("POST", "/DA", None),
        ("POST", "/../DA", "x"),
    ],
)
def test_traversal_and_odd_bytes_are_refused(method: str, path: str, header: str | None) -> None:
    with pytest.raises(RequestRefused) as caught:
        resolve_target(method, path, header)
    assert caught.value.status == 400


def test_digest_headers() -> None:
    digest = hashlib.sha256(b"x").digest()
    value = f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert parse_digest(value) == ("sha-256", digest)
    sha512 = hashlib.sha512(b"x").digest()
    both = f"{value}, sha-512=:{base64.b64encode(sha512).decode()}:"
    assert parse_digest(both) == ("sha-512", sha512)
    for bad in ["md5=:AAAA:", "sha-256=AAAA", "sha-256=:!!!:", "garbage"]:
        with pytest.raises(RequestRefused):
            parse_digest(bad)


# -- as a process ------------------------------------------------------------------------


def client_context(pki: Pki, *, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


def send(
    receiver: ReceiverProc,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", receiver.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def digest_of(body: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def test_receiver_writes_posts_and_puts_and_refuses_bad_requests_leaving_nothing(
    pki: Pki, start_receiver: Callable[..., ReceiverProc], tmp_path: Path
) -> None:
    receiver = start_receiver()
    good = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    body = b"payload \x00\xff" * 1000

    status, _ = send(
        receiver, good, "POST", "/DA", body, {"Filename": "a.csv", "Repr-Digest": digest_of(body)}
    )
    assert status == 201
    status, _ = send(receiver, good, "PUT", "/dav/x/b%20c.csv", body, {"Repr-Digest": digest_of(body)})
    assert status == 201
    assert files_under(receiver.out) == {"DA/a.csv": body, "dav/x/b c.csv": body}

    refused = [
        ("POST", "/DA", {"Filename": "../escape.csv", "Repr-Digest": digest_of(body)}),
        ("PUT", "/DA/..%2F..%2Fescape.csv", {"Repr-Digest": digest_of(body)}),
        ("POST", "/DA", {"Filename": "x%00y", "Repr-Digest": digest_of(body)}),
        ("POST", "/DA", {"Filename": "/abs.csv", "Repr-Digest": digest_of(body)}),
        ("POST", "/DA", {"Filename": "nodigest.csv"}),
        ("POST", "/DA", {"Filename": "wrong.csv", "Repr-Digest": digest_of(body + b"!")}),
    ]
    for method, path, headers in refused:
        status, answer = send(receiver, good, method, path, body, headers)
        assert status == 400, (path, headers, answer)
    status, answer = send(
        receiver, good, "POST", "/DA", body, {"Filename": "w.csv", "Repr-Digest": digest_of(b"")}
    )
    assert status == 400 and b"digest_mismatch" in answer
    # Nothing new: no escaped file, no partial or temp file left behind.
    assert files_under(receiver.out) == {"DA/a.csv": body, "dav/x/b c.csv": body}
    assert not list(tmp_path.rglob("escape.csv"))
    assert len(receiver.received()) == 2


def test_clients_without_a_certificate_or_with_one_from_another_ca_are_rejected(
    pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver()
    body = b"should never land"
    headers = {"Filename": "x.csv", "Repr-Digest": digest_of(body)}
    for cert, key in ((None, None), (pki.rogue_client_cert, pki.rogue_client_key)):
        context = client_context(pki, cert=cert, key=key)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, socket.timeout)):
            send(receiver, context, "POST", "/DA", body, headers)
    assert files_under(receiver.out) == {}
    wait_for(
        lambda: len(receiver.events("tls_handshake_failed")) >= 2, timeout=5, what="handshake failures logged"
    )


def test_a_client_that_disconnects_mid_body_leaves_nothing(
    pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver()
    context = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    conn = http.client.HTTPSConnection("127.0.0.1", receiver.port, context=context, timeout=10)
    conn.putrequest("POST", "/DA")
    conn.putheader("Filename", "cut.csv")
    conn.putheader("Content-Length", "1000000")
    conn.putheader("Repr-Digest", digest_of(b"x" * 1_000_000))
    conn.endheaders()
    conn.send(b"x" * 300_000)
    conn.close()
    wait_for(lambda: receiver.events("upload_incomplete"), timeout=10, what="the receiver to notice")
    assert files_under(receiver.out) == {}


def test_the_receiver_can_write_to_an_s3_bucket(
    pki: Pki, start_receiver: Callable[..., ReceiverProc], moto_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"received-{tmp_path.name[-8:].lower().replace('_', '-')}"
    s3.create_bucket(Bucket=bucket)
    receiver = start_receiver(
        out=tmp_path / "scratch",
        extra=["--s3-bucket", bucket, "--s3-prefix", "in/", "--endpoint-url", moto_endpoint],
    )
    good = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    body = b"to the bucket\n" * 5000
    status, answer = send(
        receiver, good, "POST", "/DA", body, {"Filename": "s3.csv", "Repr-Digest": digest_of(body)}
    )
    assert status == 201, answer
    assert s3.get_object(Bucket=bucket, Key="in/DA/s3.csv")["Body"].read() == body
    status, _ = send(
        receiver, good, "POST", "/DA", body, {"Filename": "bad.csv", "Repr-Digest": digest_of(b"")}
    )
    assert status == 400
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["in/DA/s3.csv"]
    assert files_under(tmp_path / "scratch") == {}, "temp files removed"
