"""``egress local bootstrap | publish`` against a real moto server, and the pieces of ``up``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import yaml

from egress.aws import AwsClients
from egress.devstack.bootstrap import (
    DEFAULT_QUEUE,
    NOTIFICATION_ID,
    LocalResources,
    Step,
    bootstrap,
    bucket_warnings,
)
from egress.devstack.errors import LocalSetupError
from egress.devstack.processes import Child, child_env, stop_children, wait_until_ready
from egress.devstack.publish import files_to_publish, publish
from egress.devstack.stack import (
    DEFAULT_PORT,
    DEFAULT_PUBLISH_PREFIX,
    LocalStack,
    UpOptions,
    agent_config,
    publish_prefix,
)
from egress.kernel.s3uri import S3Uri, parse_s3_uri
from sft_agent.certs import CLIENT_CERT
from tests.conftest import REGION

FLAG = "pipeline_success.flag"
MIB = 1024 * 1024


def names(unique: str) -> dict[str, str]:
    return {
        "source_bucket": f"src-{unique}",
        "destination_bucket": f"dst-{unique}",
        "queue_name": f"q-{unique}",
        "routes_table": f"routes-{unique}",
        "ledger_table": f"ledger-{unique}",
        "kms_alias": f"alias/local-{unique}",
    }


@pytest.fixture()
def resources(aws: AwsClients, unique: str) -> LocalResources:
    pytest.importorskip("egress.routing", reason="egress.routing.create_routes_table not in this tree yet")
    return bootstrap(aws, **names(unique))


def drain(aws: AwsClients, queue_url: str, *, wait: float = 2.0) -> list[dict[str, Any]]:
    """Every message that arrives within ``wait`` seconds of the last one, deleted as read."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        response = aws.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            found.append(json.loads(message["Body"]))
            aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            deadline = time.monotonic() + wait
    return found


def event_records(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """S3 event records (test events left out), in arrival order."""
    return [record for body in bodies for record in body.get("Records", [])]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_creates_every_resource(aws: AwsClients, resources: LocalResources) -> None:
    r = resources
    for bucket in (r.source_bucket, r.destination_bucket):
        aws.s3.head_bucket(Bucket=bucket)

    attributes = aws.sqs.get_queue_attributes(QueueUrl=r.queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "120"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == r.dlq_arn
    assert int(redrive["maxReceiveCount"]) == 5
    statement = json.loads(attributes["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{r.source_bucket}"
    assert r.dlq_url.endswith(f"/{r.queue_url.rsplit('/', 1)[1]}-dlq")

    routes = aws.dynamodb.describe_table(TableName=r.routes_table)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in routes["KeySchema"]} == {
        "source_prefix": "HASH",
        "pipeline_name": "RANGE",
    }
    ledger = aws.dynamodb.describe_table(TableName=r.ledger_table)["Table"]
    assert ledger["KeySchema"] == [
        {"AttributeName": "delivery_id", "KeyType": "HASH"},
        {"AttributeName": "record", "KeyType": "RANGE"},
    ]
    assert {index["IndexName"] for index in ledger["GlobalSecondaryIndexes"]} == {"by_sft_path", "unsent"}
    ttl = aws.dynamodb.describe_time_to_live(TableName=r.ledger_table)["TimeToLiveDescription"]
    assert ttl.get("AttributeName") == "expires_at"

    key = aws.kms.describe_key(KeyId=r.kms_alias)["KeyMetadata"]
    assert key["Arn"] == r.kms_key_arn and key["KeyState"] == "Enabled"

    notification = aws.s3.get_bucket_notification_configuration(Bucket=r.source_bucket)
    [ours] = [q for q in notification["QueueConfigurations"] if q.get("Id") == NOTIFICATION_ID]
    assert ours["QueueArn"] == r.queue_arn
    assert ours["Events"] == ["s3:ObjectCreated:*"]
    rules = ours["Filter"]["Key"]["FilterRules"]
    assert [(rule["Name"].lower(), rule["Value"]) for rule in rules] == [("suffix", FLAG)]

    env = r.worker_env()
    assert env["EGRESS_QUEUE_URL"] == r.queue_url
    assert env["EGRESS_DLQ_URL"] == r.dlq_url
    assert env["EGRESS_KMS_KEY_ARNS"] == r.kms_key_arn
    assert env["AWS_ENDPOINT_URL"] == aws.config.endpoint_url


def test_bootstrap_twice_reuses_everything(aws: AwsClients, unique: str, resources: LocalResources) -> None:
    again = bootstrap(aws, **names(unique))

    assert again.queue_url == resources.queue_url
    assert again.dlq_url == resources.dlq_url
    assert again.kms_key_arn == resources.kms_key_arn
    assert not [step for step in again.steps if step.action in {"created", "updated"}], again.steps
    aliases = [a for a in aws.kms.list_aliases()["Aliases"] if a["AliasName"] == names(unique)["kms_alias"]]
    assert len(aliases) == 1


def test_bootstrap_repairs_a_drifted_queue_and_keeps_other_notifications(
    aws: AwsClients, unique: str, resources: LocalResources
) -> None:
    aws.sqs.set_queue_attributes(QueueUrl=resources.queue_url, Attributes={"VisibilityTimeout": "30"})
    other = aws.sqs.create_queue(QueueName=f"other-{unique}")["QueueUrl"]
    other_arn = aws.sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    current = aws.s3.get_bucket_notification_configuration(Bucket=resources.source_bucket)
    aws.s3.put_bucket_notification_configuration(
        Bucket=resources.source_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                *current["QueueConfigurations"],
                {"Id": "someone-else", "QueueArn": other_arn, "Events": ["s3:ObjectRemoved:*"]},
            ]
        },
    )

    again = bootstrap(aws, **names(unique))

    assert Step("updated", f"queue q-{unique} (VisibilityTimeout)") in again.steps
    attributes = aws.sqs.get_queue_attributes(QueueUrl=resources.queue_url, AttributeNames=["All"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "120"
    ids = {
        q["Id"]
        for q in aws.s3.get_bucket_notification_configuration(Bucket=resources.source_bucket)[
            "QueueConfigurations"
        ]
    }
    assert ids == {"someone-else", NOTIFICATION_ID}


def test_a_flag_upload_notifies_the_queue_and_data_does_not(
    aws: AwsClients, resources: LocalResources
) -> None:
    drain(aws, resources.queue_url, wait=1.0)  # moto's s3:TestEvent from configuring the bucket
    prefix = "exports/opsmi/2024 01/"
    aws.s3.put_object(Bucket=resources.source_bucket, Key=prefix + "part-0.csv", Body=b"a,b\n")
    aws.s3.put_object(Bucket=resources.source_bucket, Key=prefix + "not_a.flag.txt", Body=b"x")
    aws.s3.put_object(Bucket=resources.source_bucket, Key=prefix + FLAG, Body=b"")

    records = event_records(drain(aws, resources.queue_url))

    keys = [unquote_plus(record["s3"]["object"]["key"]) for record in records]
    assert keys == [prefix + FLAG]
    assert records[0]["s3"]["bucket"]["name"] == resources.source_bucket
    assert records[0]["eventName"].startswith("ObjectCreated:")


def test_bootstrap_applies_the_routes_file(aws: AwsClients, unique: str, tmp_path: Path) -> None:
    pytest.importorskip("egress.routing", reason="egress.routing.create_routes_table not in this tree yet")
    pytest.importorskip("egress.routes_cli", reason="egress routes CLI not in this tree yet")
    n = names(unique)
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "source_prefix": "exports/opsmi/",
                        "pipeline_name": "OpsMI",
                        "recipient_name": "warehouse-team",
                        "transfer_type": "S3",
                        "source_bucket": n["source_bucket"],
                        "destination_bucket": n["destination_bucket"],
                        "destination_prefix": "opsmi/",
                        "decrypt": False,
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    lines: list[str] = []

    done = bootstrap(aws, **n, routes_file=routes_file, report=lines.append)

    assert any(step.action == "applied" for step in done.steps)
    items = aws.dynamodb.scan(TableName=n["routes_table"])["Items"]
    assert [(i["source_prefix"]["S"], i["pipeline_name"]["S"]) for i in items] == [
        ("exports/opsmi/", "OpsMI")
    ]
    assert not [line for line in lines if "warning" in line]


def test_bootstrap_warns_when_routes_name_other_buckets(tmp_path: Path) -> None:
    rows = [
        {
            "source_prefix": "a/",
            "pipeline_name": "A",
            "source_bucket": "elsewhere",
            "transfer_type": "S3",
            "destination_bucket": "egress-destination",
        },
        {
            "source_prefix": "b/",
            "pipeline_name": "B",
            "source_bucket": "egress-source",
            "transfer_type": "SFT",
        },
    ]
    warnings = bucket_warnings(rows, source="egress-source", destination="egress-destination")
    assert len(warnings) == 1 and "'elsewhere'" in warnings[0]


def test_bootstrap_command_writes_env_and_worker_config(
    moto_endpoint: str, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("egress.routing", reason="egress.routing.create_routes_table not in this tree yet")
    pytest.importorskip("egress.routes_cli", reason="egress CLI tree needs the routes CLI module")
    from egress.cli import main
    from egress.settings import load_settings

    env_file = tmp_path / "worker.env"
    config_file = tmp_path / "egress.yaml"
    n = names(unique)
    code = main(
        [
            "--routes-table", n["routes_table"], "--ledger-table", n["ledger_table"],
            "local", "bootstrap", "--endpoint-url", moto_endpoint, "--region", REGION,
            "--source-bucket", n["source_bucket"], "--destination-bucket", n["destination_bucket"],
            "--queue", n["queue_name"], "--kms-alias", n["kms_alias"], "--no-routes",
            "--env-file", str(env_file), "--worker-config", str(config_file),
        ]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0, out
    assert "created  bucket s3://" + n["source_bucket"] in out
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["EGRESS_QUEUE_URL"].endswith("/" + n["queue_name"])
    assert env["EGRESS_DLQ_URL"].endswith("/" + n["queue_name"] + "-dlq")
    assert env["EGRESS_KMS_KEY_ARNS"].startswith("arn:aws:kms:")
    assert env["AWS_ENDPOINT_URL"] == moto_endpoint
    assert env["EGRESS_ROUTES_TABLE"] == n["routes_table"]
    # The YAML is a valid worker settings file (what the compose stack runs the worker with).
    settings = load_settings(environ={}, config_file=config_file)
    assert settings.queue_url == env["EGRESS_QUEUE_URL"]
    assert settings.kms_key_arns == (env["EGRESS_KMS_KEY_ARNS"],)
    assert settings.aws.endpoint_url == moto_endpoint


# --------------------------------------------------------------------------- publish


@pytest.fixture()
def watched(aws: AwsClients, unique: str) -> Iterator[tuple[str, str]]:
    """A bucket whose every ObjectCreated event goes to a queue, to see upload order."""
    bucket = f"pub-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    queue = aws.sqs.create_queue(QueueName=f"pub-{unique}")["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    drain(aws, queue, wait=0.5)
    yield bucket, queue


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "customers.csv": b"id,name\n1,Ada\n",
        "orders/2024 01/part 0.csv": b"order,amount\n1,2\n",
        "orders/übersicht/naïve résumé.txt": "non-ASCII name and body: Zoë\n".encode(),
        "big/blob.bin": os.urandom(20 * MIB),  # above the 16 MiB part size: multipart
    }
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_publish_uploads_every_file_then_the_flag_last(
    aws: AwsClients, watched: tuple[str, str], tmp_path: Path
) -> None:
    bucket, queue = watched
    files = make_tree(tmp_path / "data")
    progress = io.StringIO()

    result = publish(
        aws.s3,
        tmp_path / "data",
        target=parse_s3_uri(f"s3://{bucket}/exports/opsmi", want="prefix"),
        progress_stream=progress,
    )

    prefix = "exports/opsmi/"
    assert sorted(result.keys) == sorted(prefix + relative for relative in files)
    assert result.flag_key == prefix + FLAG
    for relative, data in files.items():
        body = aws.s3.get_object(Bucket=bucket, Key=prefix + relative)["Body"].read()
        assert sha256(body) == sha256(data), relative
    assert aws.s3.head_object(Bucket=bucket, Key=prefix + FLAG)["ContentLength"] == 0
    assert "-" in aws.s3.head_object(Bucket=bucket, Key=prefix + "big/blob.bin")["ETag"]  # multipart
    assert "uploaded" in progress.getvalue() and "4/4 files" in progress.getvalue()

    records = event_records(drain(aws, queue))
    keys = [unquote_plus(record["s3"]["object"]["key"]) for record in records]
    # moto sends an extra ObjectCreated:Put for a multipart upload's key: compare sets.
    assert set(keys) == {*result.keys, result.flag_key}
    assert keys[-1] == prefix + FLAG and keys.count(prefix + FLAG) == 1
    times = [record["eventTime"] for record in records]
    assert times[-1] == max(times)


def test_publish_skips_a_flag_inside_the_folder(
    aws: AwsClients, watched: tuple[str, str], tmp_path: Path
) -> None:
    bucket, _ = watched
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / FLAG).write_bytes(b"")
    (tmp_path / "a.csv").write_bytes(b"1\n")
    warnings: list[str] = []

    result = publish(aws.s3, tmp_path, target=S3Uri(bucket, "p/"), warn=warnings.append)

    assert result.keys == ("p/a.csv",)
    assert any("sub/" + FLAG in warning for warning in warnings)


def test_publish_refuses_an_empty_folder_and_writes_no_flag(
    aws: AwsClients, watched: tuple[str, str], tmp_path: Path
) -> None:
    bucket, _ = watched
    (tmp_path / "empty" / "nested").mkdir(parents=True)

    with pytest.raises(LocalSetupError, match="holds no files"):
        publish(aws.s3, tmp_path / "empty", target=S3Uri(bucket, "p/"))
    with pytest.raises(LocalSetupError, match="not a folder"):
        publish(aws.s3, tmp_path / "missing", target=S3Uri(bucket, "p/"))
    assert aws.s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_failed_upload_leaves_no_flag(aws: AwsClients, unique: str, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"1\n")

    with pytest.raises(LocalSetupError, match="flag was NOT written"):
        publish(aws.s3, tmp_path, target=S3Uri(f"missing-{unique}", "p/"))


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://bucket-1/exports/opsmi/", "bucket-1", "exports/opsmi/"),
        ("s3://bucket-1/exports/opsmi", "bucket-1", "exports/opsmi/"),
        ("s3://bucket-1", "bucket-1", ""),
        ("s3://bucket-1/", "bucket-1", ""),
    ],
)
def test_parse_s3_uri(uri: str, bucket: str, prefix: str) -> None:
    assert parse_s3_uri(uri, want="prefix") == S3Uri(bucket, prefix)


@pytest.mark.parametrize(
    "uri",
    [
        "bucket/prefix/",
        "http://bucket/x",
        "s3://",
        "s3:///x",
        "s3://Bad_Bucket/x",
        "s3://b/x//y",
        "s3://a..b/",
    ],
)
def test_parse_s3_uri_refuses_malformed(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri, want="prefix")


def test_publish_command_exit_codes(
    moto_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("egress.routes_cli", reason="egress CLI tree needs the routes CLI module")
    from egress.cli import main

    (tmp_path / "a.csv").write_bytes(b"1\n")
    assert main(["--endpoint-url", moto_endpoint, "local", "publish", str(tmp_path), "bucket/x"]) == 2
    assert "not an s3:// URI" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["local", "publish", "--endpoint-url", moto_endpoint, str(tmp_path / "empty"), "s3://b-1/x/"])
        == 1
    )
    assert "holds no files" in capsys.readouterr().err


def test_publish_encrypt_writes_envelope_objects(
    aws: AwsClients, watched: tuple[str, str], tmp_path: Path, unique: str
) -> None:
    pytest.importorskip("egress.devstack.encrypt", reason="envelope_encrypt not in this tree yet")
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    bucket, _ = watched
    key_arn = aws.kms.create_key()["KeyMetadata"]["Arn"]
    # Above the part size: a streamed ciphertext must still go up in full-size parts.
    files = {"a.csv": b"id\n1\n", "deep/er/b c.bin": os.urandom(20 * MIB + 17)}
    for relative, data in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)

    result = publish(aws.s3, tmp_path, target=S3Uri(bucket, "enc/"), kms=aws.kms, kms_key_id=key_arn)

    assert sorted(result.keys) == sorted(f"enc/{relative}.enc" for relative in files)
    for relative, plain in files.items():
        obj = aws.s3.get_object(Bucket=bucket, Key=f"enc/{relative}.enc")
        metadata = obj["Metadata"]
        assert {"datakeyencryptionkeyid", "ciphertext", "iv"} <= set(metadata)
        body = obj["Body"].read()
        assert body != plain and len(body) == len(plain)
        # The replaced system's format (DESIGN §6): KMS-wrapped data key, AES-256-CTR body.
        data_key = aws.kms.decrypt(CiphertextBlob=base64.b64decode(metadata["ciphertext"]))["Plaintext"]
        decryptor = Cipher(algorithms.AES(data_key), modes.CTR(base64.b64decode(metadata["iv"]))).decryptor()
        assert decryptor.update(body) + decryptor.finalize() == plain
    assert "-" in aws.s3.head_object(Bucket=bucket, Key="enc/deep/er/b c.bin.enc")["ETag"]  # multipart
    assert aws.s3.head_object(Bucket=bucket, Key="enc/" + FLAG)["ContentLength"] == 0


# --------------------------------------------------------------------------- up's pieces


def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        err = io.StringIO()
        started = time.monotonic()

        code = LocalStack(
            UpOptions(port=port, state_dir=tmp_path / "state"), out=io.StringIO(), err=err
        ).run()

    assert code == 1
    assert f"port 127.0.0.1:{port} is taken" in err.getvalue()
    assert time.monotonic() - started < 5


def python_child(tmp_path: Path, name: str, code: str) -> Child:
    return Child(
        name=name,
        argv=[sys.executable, "-c", code],
        log_path=tmp_path / f"{name}.log",
        ready=lambda: False,
        where="nowhere",
        env=dict(os.environ),
    )


def test_a_child_that_exits_early_is_named_with_its_log(tmp_path: Path) -> None:
    child = python_child(
        tmp_path, "worker", "print('cannot reach the queue', flush=True); raise SystemExit(3)"
    )
    child.start()

    with pytest.raises(LocalSetupError) as failure:
        wait_until_ready([child], deadline=time.monotonic() + 20)

    assert "worker exited with code 3" in str(failure.value)
    assert "cannot reach the queue" in str(failure.value)


def test_a_child_that_never_answers_is_named_after_the_deadline(tmp_path: Path) -> None:
    child = python_child(tmp_path, "sft-agent", "import time; print('starting', flush=True); time.sleep(60)")
    child.start()
    try:
        with pytest.raises(LocalSetupError, match="sft-agent did not answer on nowhere"):
            wait_until_ready([child], deadline=time.monotonic() + 1)
    finally:
        stop_children([child], grace=2, report=lambda _line: None)


def test_stop_children_terminates_then_kills(tmp_path: Path) -> None:
    polite = python_child(tmp_path, "polite", "import time; time.sleep(60)")
    stubborn = python_child(
        tmp_path,
        "stubborn",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
    )
    for child in (polite, stubborn):
        child.start()
    deadline = time.monotonic() + 10
    while "up" not in (tmp_path / "stubborn.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines: list[str] = []
    started = time.monotonic()

    stop_children([polite, stubborn], grace=1, report=lines.append)

    assert polite.exit_code() is not None and stubborn.exit_code() is not None
    assert time.monotonic() - started < 8
    assert lines == ["stubborn did not stop within 1s: killing it"]


def test_child_env_drops_the_callers_aws_settings() -> None:
    env = child_env(
        {"EGRESS_QUEUE_URL": "q"},
        base={
            "PATH": "/bin",
            "AWS_PROFILE": "prod",
            "AWS_SECRET_ACCESS_KEY": "real",
            "EGRESS_FLAG_NAME": "x",
        },
    )
    assert env["PATH"] == "/bin"
    assert "AWS_PROFILE" not in env and "EGRESS_FLAG_NAME" not in env
    assert env["AWS_SECRET_ACCESS_KEY"] == "local"
    assert env["EGRESS_QUEUE_URL"] == "q"


def test_agent_config_sends_the_whole_sft_root_keeping_each_files_folder(tmp_path: Path) -> None:
    config = agent_config(
        sft_root=tmp_path / "root",
        error_folder=tmp_path / "sft-errors",
        receiver_url="https://localhost:8091",
        certs=tmp_path / "certs",
        metrics_port=9191,
    )

    # One recursive route: a folder an SFT row added later writes to is sent too, no restart.
    [route] = config["routes"]
    assert route["source"] == f"{tmp_path / 'root'}/" and route["recursive"] is True
    # POSTed to the receiver's root, named by the path below the SFT root (warehouse/x.csv).
    assert route["actions"] == [{"http": {"url": "https://localhost:8091/", "method": "POST"}}]
    assert route["error_folder"] == str(tmp_path / "sft-errors")
    assert config["tls"]["client_cert"] == str(tmp_path / "certs" / CLIENT_CERT)


def test_agent_config_is_valid_for_the_agent(tmp_path: Path) -> None:
    agent_settings = pytest.importorskip(
        "sft_agent.settings", reason="sft_agent.settings not in this tree yet"
    )
    config = agent_config(
        sft_root=tmp_path / "root",
        error_folder=tmp_path / "sft-errors",
        receiver_url="https://localhost:8091",
        certs=tmp_path / "certs",
        metrics_port=9191,
        ledger_table="ledger",
    )

    settings = agent_settings.build_settings(config, environ={})

    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9191)
    [route] = settings.routes
    assert route.source == tmp_path / "root" and route.error_folder == tmp_path / "sft-errors"
    assert route.work_folder == tmp_path / "root" / ".sft-agent"  # hidden: the scan skips it
    assert settings.ledger is not None and settings.ledger.sft_root == tmp_path / "root"


def test_an_error_folder_inside_the_sft_root_is_refused_by_the_agent(tmp_path: Path) -> None:
    agent_settings = pytest.importorskip("sft_agent.settings")
    config = agent_config(
        sft_root=tmp_path / "root",
        error_folder=tmp_path / "root" / "error",
        receiver_url="https://localhost:8091",
        certs=tmp_path / "certs",
        metrics_port=9191,
    )
    with pytest.raises(agent_settings.SettingsError, match="error_folder"):
        agent_settings.build_settings(config, environ={})


def test_publish_prefix_prefers_a_plain_route_prefix() -> None:
    rows = [
        {"source_prefix": "exports/$TODAYS_DATE/", "source_bucket": "egress-source"},
        {"source_prefix": "exports/opsmi", "source_bucket": "egress-source"},
    ]
    assert publish_prefix(rows, source_bucket="egress-source") == "exports/opsmi/"
    assert publish_prefix([], source_bucket="egress-source") == DEFAULT_PUBLISH_PREFIX


def test_the_sample_data_has_nested_files() -> None:
    sample = Path(__file__).resolve().parents[2] / "config" / "sample-data"
    files = files_to_publish(sample, flag_name=FLAG, warn=lambda _line: None)
    assert 2 <= len(files) <= 5
    assert any("/" in f.relative for f in files)


def test_the_example_worker_config_is_valid() -> None:
    from egress.settings import load_settings

    path = Path(__file__).resolve().parents[2] / "config" / "egress.local.yaml"
    settings = load_settings(environ={}, config_file=path)
    assert settings.aws.endpoint_url == f"http://127.0.0.1:{DEFAULT_PORT}"
    assert settings.queue_url.endswith("/" + DEFAULT_QUEUE)
