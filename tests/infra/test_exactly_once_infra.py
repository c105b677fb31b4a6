"""The infrastructure of exactly-once delivery (docs/exactly-once.md), on the parsed HCL:
the ledger's key schema and indexes, the shared volume on EFS, the ledger rights of the
worker and the agent, and the agent's alarms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from test_terraform import (
    EGRESS,
    ROLES,
    ROOT,
    SFT_ROOT,
    Statement,
    as_text,
    blocks,
    containers,
    declared,
    document_statements,
    listify,
    local_value,
    one,
    parse,
    resolve,
    variable_default,
)

CONTRACT = ROOT / "docs" / "exactly-once.md"
CONTAINER_ID = 10001  # the images' USER (docker/*.Dockerfile)
SERVICE_KEY = "${aws_kms_key.service.arn}"
ALARM_TOPIC = "${aws_sns_topic.alarms.arn}"


def statements_of(document: str, directory: Path = ROLES) -> dict[str, Statement]:
    """Statements of one policy document, by sid, with those of its source documents."""
    block = one("data", "aws_iam_policy_document", document, directory)
    found: dict[str, Statement] = {}
    for source in listify(block.body.get("source_policy_documents")):
        match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", source)
        assert match, f"{document}: source document {source!r} is not a policy document"
        found.update(statements_of(match.group(1), directory))
    for statement in document_statements():
        if (
            f"data.aws_iam_policy_document.{document} " in statement.origin
            and statement.directory == directory
        ):
            found[str(statement.body.get("sid"))] = statement
    assert found, f"no statements in data.aws_iam_policy_document.{document}"
    return found


def conditions(statement: Statement) -> dict[str, dict[str, Any]]:
    return {resolve(c["variable"], statement.directory): c for c in statement.body.get("condition", [])}


# ---- A. the ledger table -----------------------------------------------------------------------


def test_ledger_key_schema_and_indexes_follow_the_contract() -> None:
    ledger = one("resource", "aws_dynamodb_table", "ledger", EGRESS).body
    assert (ledger["hash_key"], ledger.get("range_key")) == ("delivery_id", "record")
    attributes = {a["name"]: a["type"] for a in ledger["attribute"]}
    assert attributes == {
        "delivery_id": "S",
        "record": "S",
        "sft_path": "S",
        "sha256": "S",
        "unsent": "S",
        "written_epoch": "N",
    }, "attributes must be exactly the key attributes of the table and its indexes"
    indexes = {i["name"]: i for i in ledger["global_secondary_index"]}
    assert set(indexes) == {"by_sft_path", "unsent"}
    assert (indexes["by_sft_path"]["hash_key"], indexes["by_sft_path"]["range_key"]) == ("sft_path", "sha256")
    assert (indexes["unsent"]["hash_key"], indexes["unsent"]["range_key"]) == ("unsent", "written_epoch")
    for name, index in indexes.items():
        assert index["projection_type"] == "ALL", f"{name} must project every attribute"
    contract = CONTRACT.read_text(encoding="utf-8")
    for name in ("delivery_id", "record", "by_sft_path", "unsent", "sft_path", "sha256", "written_epoch"):
        assert f"`{name}`" in contract, f"docs/exactly-once.md no longer names {name}"


def test_ledger_keeps_ttl_recovery_encryption_and_protection() -> None:
    ledger = one("resource", "aws_dynamodb_table", "ledger", EGRESS)
    body = ledger.body
    assert body["ttl"][0] == {"attribute_name": "expires_at", "enabled": True}
    assert body["point_in_time_recovery"][0]["enabled"] is True
    assert body["server_side_encryption"][0] == {"enabled": True, "kms_key_arn": SERVICE_KEY}
    assert body["deletion_protection_enabled"] is True
    assert body["billing_mode"] == "PAY_PER_REQUEST"
    text = ledger.path.read_text(encoding="utf-8")
    assert re.search(r"#[^\n]*key schema[^\n]*REPLACES the table", text), (
        "no comment that the key change replaces the table"
    )


# ---- B. the shared volume on EFS ----------------------------------------------------------------


def test_efs_is_encrypted_with_the_service_key_elastic_and_backed_up() -> None:
    fs = one("resource", "aws_efs_file_system", "data_egress", EGRESS).body
    assert fs["encrypted"] is True and fs["kms_key_id"] == SERVICE_KEY
    assert fs["throughput_mode"] == "elastic"
    backup = one("resource", "aws_efs_backup_policy", "data_egress", EGRESS).body
    assert backup["file_system_id"] == "${aws_efs_file_system.data_egress.id}"
    assert backup["backup_policy"][0]["status"] == "ENABLED"


def test_service_key_policy_lets_efs_use_the_key() -> None:
    statements = {
        s.body.get("sid"): s
        for s in document_statements()
        if "data.aws_iam_policy_document.service_key " in s.origin
    }
    through = statements["AccountUsesKeyThroughServices"]
    assert {
        "kms:CreateGrant",
        "kms:DescribeKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:Decrypt",
    } <= set(through.actions)
    via = conditions(through)["kms:ViaService"]
    assert "elasticfilesystem.${local.region}.amazonaws.com" in listify(via["values"])


def test_efs_access_point_pins_the_containers_user_and_the_folder() -> None:
    ap = one("resource", "aws_efs_access_point", "data_egress", EGRESS).body
    user = ap["posix_user"][0]
    uid, gid = (int(resolve(user[k], EGRESS)) for k in ("uid", "gid"))
    assert (uid, gid) == (CONTAINER_ID, CONTAINER_ID)
    root = ap["root_directory"][0]
    assert resolve(root["path"], EGRESS) == SFT_ROOT
    creation = root["creation_info"][0]
    owner = (int(resolve(creation["owner_uid"], EGRESS)), int(resolve(creation["owner_gid"], EGRESS)))
    assert owner == (CONTAINER_ID, CONTAINER_ID) and creation["permissions"] == "0750"
    # The containers run as the same user.
    assert resolve(local_value("container_user"), EGRESS) == f"{CONTAINER_ID}:{CONTAINER_ID}"
    for dockerfile in ("egress", "sft-agent"):
        text = (ROOT / "docker" / f"{dockerfile}.Dockerfile").read_text(encoding="utf-8")
        assert f"USER {CONTAINER_ID}:{CONTAINER_ID}" in text, dockerfile


def test_efs_mount_targets_in_every_service_subnet_reachable_only_from_the_tasks() -> None:
    target = one("resource", "aws_efs_mount_target", "data_egress", EGRESS).body
    assert target["for_each"] == "${toset(var.subnet_ids)}" and target["subnet_id"] == "${each.value}"
    assert target["security_groups"] == ["${aws_security_group.efs.id}"]
    service = one("resource", "aws_ecs_service", "egress", EGRESS).body
    assert service["network_configuration"][0]["subnets"] == "${var.subnet_ids}", (
        "mount targets and tasks differ"
    )
    # Ingress to the mount targets: NFS from the tasks' group only, never a CIDR.
    ingress = [b for b in blocks("resource", "aws_vpc_security_group_ingress_rule", EGRESS)]
    to_efs = [b.body for b in ingress if b.body["security_group_id"] == "${aws_security_group.efs.id}"]
    assert len(to_efs) == 1
    rule = to_efs[0]
    assert (rule["ip_protocol"], rule["from_port"], rule["to_port"]) == ("tcp", 2049, 2049)
    assert rule["referenced_security_group_id"] == "${aws_security_group.tasks.id}"
    assert not {"cidr_ipv4", "cidr_ipv6", "prefix_list_id"} & set(rule)
    efs_group = one("resource", "aws_security_group", "efs", EGRESS).body
    assert not {"ingress", "egress"} & set(efs_group), "inline rules on the EFS security group"
    # The tasks may reach it (their group allows only named egress).
    egress = [b.body for b in blocks("resource", "aws_vpc_security_group_egress_rule", EGRESS)]
    assert any(
        e["security_group_id"] == "${aws_security_group.tasks.id}"
        and e.get("referenced_security_group_id") == "${aws_security_group.efs.id}"
        and (e["from_port"], e["to_port"]) == (2049, 2049)
        for e in egress
    ), "the tasks' security group does not allow NFS to the mount targets"
    assert "aws_efs_mount_target.data_egress" in as_text(service.get("depends_on")), (
        "tasks may start before EFS is reachable"
    )


def test_efs_policy_denies_plain_transport_and_admits_the_task_role_through_the_access_point() -> None:
    policy = one("resource", "aws_efs_file_system_policy", "data_egress", EGRESS).body
    assert policy["policy"] == "${data.aws_iam_policy_document.efs.json}"
    statements = statements_of("efs", EGRESS)
    allows = [s for s in statements.values() if s.effect == "Allow"]
    assert len(allows) == 1
    allow = allows[0]
    assert sorted(allow.actions) == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    assert allow.body["principals"][0]["identifiers"] == ["${data.aws_iam_role.worker.arn}"]
    assert allow.body["resources"] == ["${aws_efs_file_system.data_egress.arn}"]
    condition = conditions(allow)["elasticfilesystem:AccessPointArn"]
    assert condition["test"] == "StringEquals" and listify(condition["values"]) == [
        "${aws_efs_access_point.data_egress.arn}"
    ]
    denies = [s for s in statements.values() if s.effect == "Deny"]
    assert any(
        listify(conditions(d).get("aws:SecureTransport", {}).get("values")) == ["false"]
        and conditions(d)["aws:SecureTransport"]["test"] == "Bool"
        and d.actions == ["*"]
        and d.body["principals"][0]["identifiers"] == ["*"]
        for d in denies
    ), "no deny of non-TLS access"
    # The worker task role is the role the task runs with.
    task = one("resource", "aws_ecs_task_definition", "egress", EGRESS).body
    assert task["task_role_arn"] == "${data.aws_iam_role.worker.arn}"


def test_task_mounts_efs_with_tls_and_iam_in_both_containers() -> None:
    task = one("resource", "aws_ecs_task_definition", "egress", EGRESS).body
    volumes = {v["name"]: v for v in task["volume"]}
    shared = set()
    for name, container in containers().items():
        mounts = [m for m in container["mountPoints"] if resolve(m["containerPath"], EGRESS) == SFT_ROOT]
        assert len(mounts) == 1, name
        shared.add(mounts[0]["sourceVolume"])
    assert len(shared) == 1
    volume = volumes[shared.pop()]
    config = volume["efs_volume_configuration"][0]
    assert config["file_system_id"] == "${aws_efs_file_system.data_egress.id}"
    assert config["transit_encryption"] == "ENABLED"
    assert config.get("root_directory", "/") == "/", "the access point sets the root"
    auth = config["authorization_config"][0]
    assert auth == {"access_point_id": "${aws_efs_access_point.data_egress.id}", "iam": "ENABLED"}


def test_efs_outputs() -> None:
    outputs: dict[str, Any] = {}
    for path in sorted(EGRESS.glob("*.tf")):
        for entry in parse(path).get("output", []):
            outputs.update(entry)
    assert outputs["efs_file_system_id"]["value"] == "${aws_efs_file_system.data_egress.id}"
    assert outputs["efs_access_point_id"]["value"] == "${aws_efs_access_point.data_egress.id}"


def test_deploy_role_creates_the_file_system_encrypted_tagged_and_manages_only_its_own() -> None:
    deploy = statements_of("deploy_data")
    create = deploy["CreateEncryptedFileSystem"]
    assert create.actions == ["elasticfilesystem:CreateFileSystem"]
    assert listify(conditions(create)["elasticfilesystem:Encrypted"]["values"]) == ["true"]
    assert listify(conditions(create)["aws:RequestTag/Project"]["values"]) == ["${var.name}"]
    manage = deploy["ManageOwnFileSystem"]
    assert {
        "elasticfilesystem:CreateMountTarget",
        "elasticfilesystem:PutFileSystemPolicy",
        "elasticfilesystem:PutBackupPolicy",
    } <= set(manage.actions)
    assert "aws:ResourceTag/Project" in conditions(manage)
    compute = statements_of("deploy_compute")
    assert "ec2:CreateNetworkInterface" in compute["EfsMountTargetInterfaces"].actions
    read = statements_of("read")
    assert "elasticfilesystem:DescribeMountTargets" in read["ReadResourcesWithoutResourceType"].actions


# ---- C. ledger rights of the worker and the agent ---------------------------------------------


LEDGER = "${local.ledger_table_arn}"
LEDGER_INDEXES = "${local.ledger_index_arn_glob}"


def ledger_grants(statements: dict[str, Statement]) -> dict[str, set[str]]:
    """Actions granted per ledger resource (the table, its indexes)."""
    assert declared(ROLES)["locals"]["ledger_index_arn_glob"] == "${local.ledger_table_arn}/index/*"
    granted: dict[str, set[str]] = {LEDGER: set(), LEDGER_INDEXES: set()}
    for statement in statements.values():
        for resource in listify(statement.body.get("resources")):
            if resource in granted:
                granted[resource] |= set(statement.actions)
    return granted


def test_worker_has_exactly_its_ledger_rights() -> None:
    worker = statements_of("worker")
    own = {sid: s for sid, s in worker.items() if not sid.startswith("SftAgent")}
    granted = ledger_grants(own)
    required = {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "dynamodb:BatchWriteItem",
        "dynamodb:DescribeTable",
    }
    assert granted[LEDGER] == required, granted[LEDGER]
    assert granted[LEDGER_INDEXES] == {"dynamodb:Query"}
    for statement in worker.values():
        assert not any(a in {"dynamodb:*", "*"} or a.endswith(":*") for a in statement.actions), (
            statement.origin
        )


def test_agent_rights_are_its_own_statements_in_the_task_role_and_the_agent_role() -> None:
    agent = statements_of("sft_agent")
    assert all(sid.startswith("SftAgent") for sid in agent), (
        "the agent's statements must say they are the agent's"
    )
    granted = ledger_grants(agent)
    # UpdateItem: file fates and the received claim; GetItem/Query: whether every file of a
    # delivery was sent (completion events, docs/events.md).
    assert granted[LEDGER] == {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:Query"}
    assert granted[LEDGER_INDEXES] == {"dynamodb:Query"}
    assert sum(len(s.actions) for s in agent.values()) == 4, "the agent needs nothing else"
    # One task role serves both containers: the worker's policy carries the agent's statements.
    worker_doc = one("data", "aws_iam_policy_document", "worker", ROLES).body
    assert "${data.aws_iam_policy_document.sft_agent.json}" in listify(
        worker_doc.get("source_policy_documents")
    )
    assert set(agent) <= set(statements_of("worker"))
    agent_policy = one("resource", "aws_iam_role_policy", "agent", ROLES).body
    assert agent_policy["role"] == "${aws_iam_role.agent.id}"
    assert agent_policy["policy"] == "${data.aws_iam_policy_document.sft_agent.json}"
    text = (ROLES / "service_roles.tf").read_text(encoding="utf-8")
    assert re.search(r"one task role per \*task\*", text) and "extra" in text and "hop" in text
    # The agent finds the table through SFT_AGENT_LEDGER_TABLE.
    assert local_value("agent_environment")["SFT_AGENT_LEDGER_TABLE"] == "${aws_dynamodb_table.ledger.name}"


def test_worker_can_requeue_and_list_uploads_it_takes_over() -> None:
    worker = statements_of("worker")
    assert "sqs:SendMessage" in worker["WorkFlagQueue"].actions, "duplicates are re-queued to the flag queue"
    uploads = worker["ListUploadsOfSameAccountDestinations"]
    assert uploads.actions == ["s3:ListBucketMultipartUploads"]
    assert uploads.body["resources"] == "${local.destination_bkt_arns}"


# ---- D. the agent's alarms -------------------------------------------------------------------


EXPECTED_GAUGES = {
    ("route_status", "backlog"),
    ("route_status", "oldest_file_age_seconds"),
    ("route_status", "error_files"),
    ("route_status", "cert_expiry_days"),
    ("unsent_files", "count"),
    ("unsent_files", "oldest_seconds"),
}


def agent_metrics() -> dict[str, dict[str, str]]:
    return declared(EGRESS)["locals"]["agent_log_metrics"]


def test_agent_gauges_are_extracted_from_its_json_lines() -> None:
    metrics = agent_metrics()
    assert {(m["event"], m["field"]) for m in metrics.values()} == EXPECTED_GAUGES
    metric_filter = one("resource", "aws_cloudwatch_log_metric_filter", "agent_gauges", EGRESS).body
    assert metric_filter["for_each"] == "${local.agent_log_metrics}"
    assert metric_filter["log_group_name"] == "${aws_cloudwatch_log_group.sft_agent.name}"
    assert metric_filter["pattern"].replace("\\", "") == '{ $.event = "${each.value.event}" }'
    transformation = metric_filter["metric_transformation"][0]
    assert transformation["value"] == "$.${each.value.field}"
    assert transformation["namespace"] == "${local.metric_namespace}"
    assert "default_value" not in transformation, "a gauge must not read 0 when nothing was logged"


ALARMS = {
    # alarm: (metric key, statistic, comparison, threshold, treat_missing_data)
    "agent_backlog": (
        "backlog",
        "Maximum",
        "GreaterThanThreshold",
        "${var.agent_backlog_alarm_threshold}",
        None,
    ),
    "agent_oldest_file_age": (
        "oldest_file_age",
        "Maximum",
        "GreaterThanThreshold",
        "${var.agent_oldest_file_age_alarm_seconds}",
        None,
    ),
    "agent_error_files": ("error_files", "Maximum", "GreaterThanThreshold", 0, "ignore"),
    "agent_cert_expiry": (
        "cert_expiry",
        "Minimum",
        "LessThanThreshold",
        "${var.agent_cert_expiry_alarm_days}",
        "ignore",
    ),
    "agent_unsent_files": ("unsent_files", "Maximum", "GreaterThanThreshold", 0, "ignore"),
}


def test_agent_alarms() -> None:
    alarms = {b.name: b for b in blocks("resource", "aws_cloudwatch_metric_alarm", EGRESS)}
    for name, (metric, statistic, comparison, threshold, missing) in ALARMS.items():
        assert name in alarms, f"no alarm {name}"
        body = alarms[name].body
        assert body["metric_name"] == f"${{local.agent_log_metrics.{metric}.metric}}", name
        assert body["namespace"] == "${local.metric_namespace}", name
        assert body["statistic"] == statistic, name
        assert body["comparison_operator"] == comparison, name
        assert body["threshold"] == threshold, name
        assert ALARM_TOPIC in listify(body["alarm_actions"]), name
        assert "treat_missing_data" in body, f"{name}: missing data left to the default"
        if missing is not None:
            assert body["treat_missing_data"] == missing, name
        # The choice is explained in a comment right above it.
        text = alarms[name].path.read_text(encoding="utf-8")
        block = text[text.index(f'"aws_cloudwatch_metric_alarm" "{name}"') :]
        block = block[: block.index("\n}\n")]
        assert re.search(r"#[^\n]*\n\s*treat_missing_data", block), (
            f"{name}: no comment on treat_missing_data"
        )
        assert "aws_cloudwatch_log_metric_filter.agent_gauges" in as_text(body.get("depends_on")), name
    assert alarms["agent_backlog"].body["treat_missing_data"] == "notBreaching"
    # A silent agent is an alarm (unless the deployment has no SFT routes).
    silent = alarms["agent_oldest_file_age"].body["treat_missing_data"]
    assert silent == '${var.agent_silence_alarms ? "breaching" : "notBreaching"}'
    assert variable_default(EGRESS, "agent_silence_alarms") is True
    assert variable_default(EGRESS, "agent_cert_expiry_alarm_days") == 14
    # The event-based error-folder alarm is kept beside the gauge.
    assert alarms["agent_error_folder"].body["metric_name"] == "${local.agent_error_metric}"


def test_alarm_variables_are_described_with_defaults() -> None:
    variables = declared(EGRESS)["variable"]
    for name in (
        "agent_backlog_alarm_threshold",
        "agent_oldest_file_age_alarm_seconds",
        "agent_cert_expiry_alarm_days",
        "agent_silence_alarms",
    ):
        assert variables[name].get("description"), f"{name} has no description"
        assert "default" in variables[name], f"{name} has no default"


def test_the_deploy_role_may_manage_the_new_alarms_and_filters() -> None:
    # Alarm names start with <name>- (the deploy role's alarm ARN glob), filters live on
    # the agent's log group (under the deploy role's log group prefix).
    for block in blocks("resource", "aws_cloudwatch_metric_alarm", EGRESS):
        assert block.body["alarm_name"].startswith("${var.name}-"), block.address
    compute = statements_of("deploy_compute")
    assert "logs:PutMetricFilter" in compute["ManageLogGroups"].actions
    assert {s.name for s in blocks("resource", "aws_cloudwatch_log_metric_filter", EGRESS)} >= {
        "agent_gauges"
    }
