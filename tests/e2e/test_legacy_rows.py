"""The replaced system's rows, as its Terraform writes them, delivered by the worker as a real process.

One stack and one worker for every case: the rows come from :mod:`tests.support.legacy_rows`
with this stack's buckets (and, for SFT, a folder under this worker's root written the
absolute way those rows write ``/data-egress/RIS``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from egress.devstack.encrypt import envelope_encrypt
from tests.e2e.conftest import FLAG, Stack, WorkerProcess
from tests.support import legacy_rows

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def put_row(stack: Stack, row: dict[str, Any]) -> None:
    stack.aws.dynamodb.put_item(TableName=stack.routes_table, Item=legacy_rows.as_item(row))


def encrypted(stack: Stack, data: bytes, **extra: str) -> tuple[bytes, dict[str, str]]:
    metadata, chunks = envelope_encrypt(stack.aws.kms, key_id=stack.kms_key_arn, chunks=iter([data]))
    return b"".join(chunks), {**metadata, **extra}


def get(stack: Stack, key: str) -> dict[str, Any]:
    return stack.aws.s3.get_object(Bucket=stack.destination_bucket, Key=key)


def recipient_parameter(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return json.dumps({"KeyId": "rtg-2024", "PublicKey": base64.b64encode(der).decode()})


def test_rows_of_the_replaced_system_deliver_what_it_delivered(
    stack: Stack, start_worker: Callable[..., WorkerProcess], unique: str
) -> None:
    now = datetime.now(UTC)
    today, stamp = now.strftime("%Y-%m-%d"), now.strftime("%Y%m%d")
    buckets = {"source_bucket": stack.source_bucket, "destination_bucket": stack.destination_bucket}
    plain_report = b"id,name\n1,alice\n" * 50
    plain_legacy = b'{"already": "plain"}\n'
    claimant = os.urandom(5000)  # a gzip file's bytes, as far as the worker cares
    rtg_plain = os.urandom(70_000)
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    parameter = f"/rtg/{unique}/public_key"
    stack.aws.ssm.put_parameter(Name=parameter, Value=recipient_parameter(recipient), Type="String")
    malformed = f"/rtg/{unique}/malformed"
    stack.aws.ssm.put_parameter(Name=malformed, Value='{"KeyId": "k", "PublicKey": "no"}', Type="String")

    # (1) opsmi/: decrypted to the bucket's root ("/"); a second row of the same prefix
    # writes a manifest, to show what it records of each object.
    put_row(stack, legacy_rows.opsmi(**buckets))
    put_row(
        stack,
        {
            **legacy_rows.opsmi(**buckets),
            "pipeline_name": "OpsMI#manifest",
            "destination_prefix": "with-manifest/",
            "manifest_file_name": "manifest.json",
        },
    )
    body, metadata = encrypted(stack, plain_report)
    stack.upload("opsmi/report.csv.enc", body, Metadata=metadata)
    stack.upload("opsmi/plain.csv", plain_report, Metadata={"owner": "opsmi"})
    stack.upload("opsmi/legacy.json.enc", plain_legacy)  # plain, whatever its name says
    # (2) a dated wildcard row to a dated destination folder
    put_row(stack, legacy_rows.cbol(**buckets))
    body, metadata = encrypted(stack, plain_report)
    stack.upload(f"dataegress/cbol-report/{today}/cbol.csv.enc", body, Metadata=metadata)
    # (3, 5, 6) SFT to an absolute folder under the worker's root, timestamped names, a control file
    put_row(
        stack,
        {
            **legacy_rows.ris_site(source_bucket=stack.source_bucket),
            "destination_prefix": f"{stack.sft_root}/RIS",
        },
    )
    body, metadata = encrypted(stack, claimant)
    stack.upload("common-model-inputs/data/site/db.core.claimant.json.gz.enc", body, Metadata=metadata)
    stack.upload("common-model-inputs/data/site/organisation.csv", plain_report)
    # (4) re-wrap: through the route's role (a streamed copy) and with the worker's own
    # credentials (a server-side copy); a missing and a malformed parameter
    rtg_body, rtg_metadata = encrypted(stack, rtg_plain, data_product="pdm", data_product_type="full")
    rtg_rows = {
        "role": legacy_rows.rtg_pdm(**buckets, ssm_parameter=parameter),
        "own": {**legacy_rows.rtg_pdm(**buckets, ssm_parameter=parameter), "role_arn": ""},
        "missing": legacy_rows.rtg_pdm(**buckets, ssm_parameter=f"/rtg/{unique}/missing"),
        "malformed": legacy_rows.rtg_pdm(**buckets, ssm_parameter=malformed),
    }
    for case, row in rtg_rows.items():
        row.update(
            source_prefix=f"data/uc/pdm-{case}/$TODAYS_DATE/", destination_prefix=f"pdm-{case}/$TODAYS_DATE/"
        )
        put_row(stack, row)
        stack.upload(f"data/uc/pdm-{case}/{today}/part-0.enc", rtg_body, Metadata=rtg_metadata)

    worker = start_worker()
    flags = [
        "opsmi/",
        f"dataegress/cbol-report/{today}/",
        "common-model-inputs/data/site/",
        *(f"data/uc/pdm-{case}/{today}/" for case in rtg_rows),
    ]
    for folder in flags:
        stack.upload(folder + FLAG)
    worker.wait_for(lambda line: line.get("event") == "message_done", count=len(flags) - 2, timeout=60)
    worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", count=2, timeout=30)

    # (1) plaintext at the root with .enc dropped; a plain object passes through unchanged
    assert get(stack, "report.csv")["Body"].read() == plain_report
    plain = get(stack, "plain.csv")
    assert plain["Body"].read() == plain_report and plain["Metadata"] == {}
    assert get(stack, "legacy.json")["Body"].read() == plain_legacy  # names follow the row, as before
    rows = {row["name"]["S"]: row for row in stack.object_rows()}
    assert rows["report.csv"]["encryption"]["S"] == "envelope"
    assert rows["plain.csv"]["encryption"]["S"] == "none"
    manifest = json.loads(get(stack, "with-manifest/manifest.json")["Body"].read())
    assert {entry["name"]: entry["encryption"] for entry in manifest["objects"]} == {
        "report.csv": "envelope",
        "plain.csv": "none",
        "legacy.json": "none",
    }
    # (2) under the event's date
    assert get(stack, f"cbol/{today}/cbol.csv")["Body"].read() == plain_report
    # (3, 6) in RIS/ below the worker's root, the date before the trailing extensions
    ris = stack.sft_root / "RIS"
    claimant_name = f"db.core.claimant.json.{stamp}.gz"
    organisation_name = f"organisation.{stamp}.csv"
    assert (ris / claimant_name).read_bytes() == claimant
    assert (ris / organisation_name).read_bytes() == plain_report
    # (5) the control file lists exactly the delivered names
    control = ris / f"initial-organisation-files-{stamp}.control"
    assert control.read_bytes() == f"{claimant_name}\n{organisation_name}\n".encode()
    assert sorted(p.name for p in ris.iterdir()) == sorted([claimant_name, organisation_name, control.name])
    assert (
        rows[f"RIS/{control.name}"]["status"]["S"] == "written"
    )  # recorded: a resume does not write it again
    assert rows[f"RIS/{claimant_name}"]["encryption"]["S"] == "envelope"
    # (4) the recipient's private key recovers the data key and reads the untouched body
    for case in ("role", "own"):
        delivered = get(stack, f"pdm-{case}/{today}/part-0.enc")
        delivered_body = delivered["Body"].read()
        assert hashlib.sha256(delivered_body).digest() == hashlib.sha256(rtg_body).digest(), case
        meta = delivered["Metadata"]
        assert meta["datakeyencryptionkeyid"] == "rtg-2024" and meta["iv"] == rtg_metadata["iv"], case
        assert (meta["data_product"], meta["data_product_type"]) == ("pdm", "full"), case
        data_key = recipient.decrypt(base64.b64decode(meta["ciphertext"]), OAEP)
        decryptor = Cipher(algorithms.AES(data_key), modes.CTR(base64.b64decode(meta["iv"]))).decryptor()
        assert decryptor.update(delivered_body) + decryptor.finalize() == rtg_plain, case
    dead = {
        match.group(1): message["MessageAttributes"]
        for message in stack.dlq_messages(wait=5)
        if (match := re.search(r"pdm-(\w+)", message["Body"]))
    }
    assert {case: attributes["reason"]["StringValue"] for case, attributes in dead.items()} == {
        "missing": "rewrap_key_unavailable",
        "malformed": "rewrap_key_unavailable",
    }
    assert f"{unique}/missing" in dead["missing"]["detail"]["StringValue"]
    assert "not a base64 DER" in dead["malformed"]["detail"]["StringValue"]
    assert not [key for key in stack.destination_keys() if key.startswith(("pdm-missing", "pdm-malformed"))]
    # no key material in the worker's log
    log_text = worker.log_path.read_text()
    assert rtg_metadata["ciphertext"] not in log_text
    assert get(stack, f"pdm-own/{today}/part-0.enc")["Metadata"]["ciphertext"] not in log_text
    assert worker.stop() == 0
