"""The completion events topic (docs/events.md), on the parsed HCL: encrypted with the service
key, published to by the ECS task role alone, named to both containers, and an output."""

from __future__ import annotations

from fnmatch import fnmatchcase

from test_terraform import (
    EGRESS,
    ROLES,
    Statement,
    all_statements,
    declared,
    document_statements,
    listify,
    local_value,
    one,
    resolve,
)

SERVICE_KEY = "${aws_kms_key.service.arn}"
TOPIC = "${aws_sns_topic.events.arn}"
TASK_ROLE = "${data.aws_iam_role.worker.arn}"
TOPIC_ARN = "arn:${local.partition}:sns:${local.region}:${local.account_id}:${var.name}-events"


def statements(document: str, directory: str) -> dict[str, Statement]:
    found = {
        str(s.body.get("sid")): s
        for s in document_statements()
        if f"data.aws_iam_policy_document.{document} " in s.origin and s.directory.name == directory
    }
    assert found, f"no statements in data.aws_iam_policy_document.{document}"
    return found


def _document(statement: Statement) -> str:
    """The policy document a statement is in (``worker`` for data.aws_iam_policy_document.worker)."""
    return statement.origin.split("data.aws_iam_policy_document.", 1)[-1].split(" ", 1)[0]


def principals(statement: Statement) -> list[str]:
    return [i for p in statement.body.get("principals", []) for i in listify(p.get("identifiers"))]


def test_the_topic_is_encrypted_with_the_service_key_which_the_task_role_may_use_through_sns() -> None:
    topic = one("resource", "aws_sns_topic", "events", EGRESS).body
    assert topic["name"] == "${var.name}-events"
    assert topic["kms_master_key_id"] == SERVICE_KEY
    worker_use = statements("service_key", "egress")["WorkerUsesQueueAndTables"]
    assert principals(worker_use) == [TASK_ROLE]
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= set(worker_use.actions)
    via = {resolve(c["variable"], EGRESS): c for c in worker_use.body["condition"]}["kms:ViaService"]
    assert "sns.${local.region}.amazonaws.com" in listify(via["values"])


def test_only_the_task_role_may_publish() -> None:
    policy = one("resource", "aws_sns_topic_policy", "events", EGRESS).body
    assert policy["arn"] == TOPIC
    assert policy["policy"] == "${data.aws_iam_policy_document.events_topic.json}"
    topic_policy = statements("events_topic", "egress")
    allows = [s for s in topic_policy.values() if s.effect == "Allow" and "sns:Publish" in s.actions]
    assert [principals(s) for s in allows] == [[TASK_ROLE]]
    for statement in topic_policy.values():
        assert statement.resources() == [TOPIC], statement.origin
        assert not any(a in {"*", "sns:*"} for a in statement.actions), statement.origin
    deny = topic_policy["OnlyTheTaskRolePublishes"]
    assert deny.effect == "Deny" and deny.actions == ["sns:Publish"] and principals(deny) == ["*"]
    (condition,) = deny.body["condition"]
    assert (condition["test"], condition["variable"]) == ("ArnNotEquals", "aws:PrincipalArn")
    assert listify(condition["values"]) == [TASK_ROLE]

    # In the roles stack, sns:Publish goes to the worker task role (which both containers of
    # the task run as) and to no other role, on the topic alone; its boundary lets it through.
    assert declared(ROLES)["locals"]["events_topic_arn"] == TOPIC_ARN
    publish = [
        s
        for s in all_statements()
        if s.directory == ROLES
        and s.effect == "Allow"
        and any(fnmatchcase("sns:publish", a.lower()) for a in s.actions)
        and not _document(s).endswith("_boundary")  # boundaries only limit: they grant nothing
    ]
    assert {_document(s) for s in publish} == {"worker"}
    for statement in publish:
        assert statement.actions == ["sns:Publish"], statement.origin
        assert statement.body["resources"] == ["${local.events_topic_arn}"], statement.origin
    boundary = statements("service_boundary", "roles")["EventsTopic"]
    assert boundary.actions == ["sns:Publish"] and boundary.body["resources"] == ["${local.events_topic_arn}"]
    worker_policy = one("resource", "aws_iam_role_policy", "worker", ROLES).body
    assert worker_policy["role"] == "${aws_iam_role.worker.id}"
    assert one("resource", "aws_iam_role", "worker", ROLES).body["name"] == "${local.role_names.worker}"
    assert (
        declared(EGRESS)["locals"]["worker_task_role_name"]
        == '${coalesce(var.worker_task_role_name, "${var.name}-worker-task")}'
    )


def test_both_containers_get_the_topic_and_read_it() -> None:
    from egress.settings import environment_variables
    from sft_agent.settings import ENVIRONMENT

    assert local_value("worker_fixed_environment")["EGRESS_EVENTS_TOPIC_ARN"] == TOPIC
    assert local_value("agent_environment")["SFT_AGENT_EVENTS_TOPIC_ARN"] == TOPIC
    assert environment_variables()["EGRESS_EVENTS_TOPIC_ARN"] == ("events_topic_arn",)
    assert dict(ENVIRONMENT)["SFT_AGENT_EVENTS_TOPIC_ARN"] == ("ledger", "events_topic_arn")
    text = (EGRESS / "outputs.tf").read_text(encoding="utf-8")
    assert 'output "events_topic_arn"' in text and "value       = aws_sns_topic.events.arn" in text


def test_the_deploy_role_may_manage_the_topic() -> None:
    manage = [
        s
        for s in all_statements()
        if s.directory == ROLES and {"sns:CreateTopic", "sns:SetTopicAttributes"} <= set(s.actions)
    ]
    assert manage, "no role may create the topic or set its policy"
    topic = resolve("${local.events_topic_arn}", ROLES)
    for statement in manage:
        assert any(fnmatchcase(topic, resource) for resource in statement.resources()), statement.origin
