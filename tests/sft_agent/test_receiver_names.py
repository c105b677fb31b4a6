"""The receiver stores files whose names use the whole 255 bytes, in any script."""

from __future__ import annotations

import base64
import hashlib
import http.client
import ssl
from collections.abc import Callable
from urllib.parse import quote

import pytest
from sft_helpers import Pki, ReceiverProc, files_under

from egress.kernel.tempnames import NAME_MAX, temp_name

EUROS = "€" * 85  # 255 bytes of UTF-8 in 85 characters


@pytest.mark.parametrize(
    "name",
    [EUROS, "a" * 255, "é" * 127, "😀" * 63, "a" + "😀" * 63 + "b", "x", "data.csv"],
)
def test_temp_names_fit_in_255_bytes_and_keep_whole_characters(name: str) -> None:
    temp = temp_name(name)
    assert len(temp.encode("utf-8")) <= NAME_MAX
    assert temp.startswith(".") and temp.endswith(".part")
    stem = temp[1:].rsplit(".", 2)[0]
    assert name.startswith(stem) and stem  # a prefix of whole characters, never empty
    assert temp != temp_name(name)  # a random part: two uploads of one name never collide


def digest_of(body: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def send(
    receiver: ReceiverProc, pki: Pki, method: str, path: str, body: bytes, headers: dict[str, str]
) -> int:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)
    conn = http.client.HTTPSConnection("127.0.0.1", receiver.port, context=context, timeout=10)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"Content-Length": str(len(body)), "Repr-Digest": digest_of(body), **headers},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_255_byte_multibyte_name_is_stored_by_put_and_post(
    pki: Pki, start_receiver: Callable[..., ReceiverProc]
) -> None:
    receiver = start_receiver()
    body = b"euro data\n" * 1000

    assert send(receiver, pki, "PUT", f"/dav/{quote(EUROS)}", body, {}) == 201
    assert send(receiver, pki, "POST", "/DA", body, {"Filename": quote(EUROS)}) == 201

    # Stored under the full name; no temp file left behind.
    assert files_under(receiver.out) == {f"dav/{EUROS}": body, f"DA/{EUROS}": body}
    assert len(receiver.received(EUROS)) == 2
