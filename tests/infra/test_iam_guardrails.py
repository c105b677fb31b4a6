"""Guardrails of the roles stack, on the parsed HCL: the permissions boundaries that every
role creation and role-policy edit must carry, what the role-management role may not do
to itself, and which GitHub OIDC subject (or central-account hop) reaches which role."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
from test_terraform import (
    ROLES,
    Statement,
    all_statements,
    as_text,
    blocks,
    declared,
    document_statements,
    listify,
    normalise,
    one,
    resolve,
)

TFVARS = sorted((ROLES / "environments").glob("*.tfvars"))

# Granting any of these lets the grantee write a role's permissions.
ROLE_EDIT_ACTIONS = {
    "iam:CreateRole",
    "iam:PutRolePolicy",
    "iam:AttachRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:DetachRolePolicy",
    "iam:DeleteRolePolicy",
}
BOUNDARY_EDIT_ACTIONS = {
    "iam:CreatePolicyVersion",
    "iam:DeletePolicy",
    "iam:DeletePolicyVersion",
    "iam:SetDefaultPolicyVersion",
}
# The only IAM a boundary may allow (besides reading the project's own IAM).
BOUNDARY_IAM_ALLOWED = {
    "iam:Get*",
    "iam:List*",
    "iam:ListOpenIDConnectProviders",
    "iam:PassRole",
    "iam:CreateServiceLinkedRole",
}
BOUNDARY_OF = {
    "worker": "service_boundary",
    "agent": "service_boundary",
    "execution": "service_boundary",
    "plan": "pipeline_boundary",
    "deploy": "pipeline_boundary",
}


def grants(patterns: list[str], actions: set[str]) -> set[str]:
    """Which of `actions` the action patterns of a statement cover (IAM matching, case-insensitive)."""
    return {a for a in actions for p in patterns if fnmatchcase(a.lower(), p.lower())}


def conditions(statement: Statement) -> dict[str, dict[str, Any]]:
    return {resolve(c["variable"], statement.directory): c for c in statement.body.get("condition", [])}


def doc_statements(document: str) -> list[Statement]:
    """Statements of a roles-stack policy document, with those of its source documents."""
    block = one("data", "aws_iam_policy_document", document, ROLES)
    found: list[Statement] = []
    for source in listify(block.body.get("source_policy_documents")):
        match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", source)
        assert match, source
        found.extend(doc_statements(match.group(1)))
    found.extend(
        s
        for s in document_statements()
        if f"data.aws_iam_policy_document.{document} " in s.origin and s.directory == ROLES
    )
    assert found, f"no statements in {document}"
    return found


def document_of(reference: str) -> str:
    match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", reference)
    assert match, f"not a policy document: {reference}"
    return match.group(1)


def locals_() -> dict[str, Any]:
    return declared(ROLES)["locals"]


# ---- E1. permissions boundaries ----------------------------------------------------------


def test_boundary_policies_and_their_arns() -> None:
    names = locals_()["boundary_policy_names"]
    assert names == {"service": "${var.name}-service-boundary", "pipeline": "${var.name}-pipeline-boundary"}
    arns = as_text(locals_()["boundary_policy_arns"])
    assert "values(local.boundary_policy_names)" in arns and ":policy/${n}" in arns
    for kind in ("service", "pipeline"):
        policy = one("resource", "aws_iam_policy", f"{kind}_boundary", ROLES).body
        assert policy["name"] == f"${{local.boundary_policy_names.{kind}}}"
        assert policy["policy"] == f"${{data.aws_iam_policy_document.{kind}_boundary.json}}"


def test_every_grant_of_role_creation_or_role_policy_edits_requires_a_boundary() -> None:
    checked = 0
    for statement in all_statements():
        if statement.effect != "Allow":
            continue
        granted = grants(statement.actions, ROLE_EDIT_ACTIONS)
        if not granted:
            continue
        checked += 1
        condition = conditions(statement).get("iam:PermissionsBoundary")
        assert condition is not None, (
            f"{statement.origin} grants {sorted(granted)} without iam:PermissionsBoundary"
        )
        assert condition["test"] == "StringEquals", statement.origin
        assert condition["values"] == "${local.boundary_policy_arns}", statement.origin
    assert checked >= 2, "the role-management grants were not found"


def test_boundary_rule_catches_what_it_should() -> None:
    # The rule above, on statements written to break it (so that it can fail).
    assert grants(["iam:*"], ROLE_EDIT_ACTIONS) == ROLE_EDIT_ACTIONS
    assert grants(["iam:Put*"], ROLE_EDIT_ACTIONS) == {"iam:PutRolePolicy", "iam:PutRolePermissionsBoundary"}
    assert grants(["IAM:createrole"], ROLE_EDIT_ACTIONS) == {"iam:CreateRole"}
    assert not grants(["iam:PassRole", "iam:GetRole"], ROLE_EDIT_ACTIONS)


def test_role_management_denies_editing_itself_its_policy_and_the_boundaries() -> None:
    statements = doc_statements("role_management")
    denies = [s for s in statements if s.effect == "Deny"]
    role_arn = resolve("${local.role_management_role_arn}", ROLES)
    assert role_arn.endswith(":role/${local.role_names.role_management}") or "role_management" in role_arn
    self_deny = [
        s for s in denies if listify(s.body.get("resources")) == ["${local.role_management_role_arn}"]
    ]
    assert self_deny, "the role-management role may edit itself"
    denied = set().union(
        *(
            grants(
                s.actions,
                ROLE_EDIT_ACTIONS
                | {"iam:UpdateAssumeRolePolicy", "iam:DeleteRolePermissionsBoundary", "iam:DeleteRole"},
            )
            for s in self_deny
        )
    )
    assert denied == ROLE_EDIT_ACTIONS | {
        "iam:UpdateAssumeRolePolicy",
        "iam:DeleteRolePermissionsBoundary",
        "iam:DeleteRole",
    }
    # Its own policy and the boundaries cannot be edited or deleted.
    policy_deny = [s for s in denies if grants(s.actions, BOUNDARY_EDIT_ACTIONS) == BOUNDARY_EDIT_ACTIONS]
    assert policy_deny, "the boundaries may be edited"
    resources = as_text(policy_deny[0].body["resources"])
    assert "local.boundary_policy_arns" in resources and "local.role_management_policy_arn" in resources
    assert locals_()["role_management_policy_arn"].endswith(":policy/${var.name}-role-management")
    assert (
        one("resource", "aws_iam_policy", "role_management", ROLES).body["name"]
        == "${var.name}-role-management"
    )
    # No role loses its boundary; no boundary is attached as a permissions policy.
    assert any(
        s.actions == ["iam:DeleteRolePermissionsBoundary"] and listify(s.body["resources"]) == ["*"]
        for s in denies
    )
    attach = [s for s in denies if s.actions == ["iam:AttachRolePolicy"]]
    assert attach and conditions(attach[0])["iam:PolicyARN"]["values"] == "${local.boundary_policy_arns}"


def test_role_management_role_has_only_its_own_uneditable_policy() -> None:
    attachments = locals_()["pipeline_policy_attachments"]
    own = [a for a in attachments.values() if a["role"] == "${aws_iam_role.role_management.name}"]
    assert own == [
        {"role": "${aws_iam_role.role_management.name}", "policy": "${aws_iam_policy.role_management.arn}"}
    ], "a policy attached to the role-management role that it can edit undoes the self-deny"
    assert not [
        b
        for b in blocks("resource", "aws_iam_role_policy", ROLES)
        if "role_management" in as_text(b.body.get("role"))
    ]


def test_every_role_but_role_management_carries_its_boundary() -> None:
    roles = {b.name: b.body for b in blocks("resource", "aws_iam_role", ROLES)}
    assert set(roles) == {*BOUNDARY_OF, "role_management"}, "a new role needs a boundary (BOUNDARY_OF)"
    for name, boundary in BOUNDARY_OF.items():
        assert roles[name].get("permissions_boundary") == f"${{aws_iam_policy.{boundary}.arn}}", name
    assert "permissions_boundary" not in roles["role_management"]


def test_boundaries_allow_no_iam_writes_and_no_wildcard_action() -> None:
    for document in ("service_boundary", "pipeline_boundary"):
        for statement in doc_statements(document):
            assert statement.effect == "Allow", statement.origin
            for action in statement.actions:
                assert action != "*" and not action.startswith("*"), f"{statement.origin}: {action}"
                if action.lower().startswith("iam:"):
                    assert action in BOUNDARY_IAM_ALLOWED, f"{statement.origin}: boundary allows {action}"
                if action.lower().startswith("sts:"):
                    assert (
                        action == "sts:AssumeRole"
                        and statement.body["resources"] == "${var.destination_role_arns}"
                    )
    service = {a for s in doc_statements("service_boundary") for a in s.actions}
    pipeline = {a for s in doc_statements("pipeline_boundary") for a in s.actions}
    # The task roles never deploy; the pipelines never touch table items or the data.
    assert not service & {
        "ecs:*",
        "ec2:*SecurityGroup*",
        "iam:PassRole",
        "dynamodb:CreateTable",
        "kms:PutKeyPolicy",
    }
    assert not grants(
        list(pipeline), {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "s3:PutObjectAcl"}
    )
    assert "s3:GetObject" not in pipeline or all(
        "state" in as_text(s.body["resources"])
        for s in doc_statements("pipeline_boundary")
        if "s3:GetObject" in s.actions
    )


@cache
def role_policy_documents() -> dict[str, list[str]]:
    """The policy documents that grant each role its permissions."""
    found: dict[str, list[str]] = {}
    for block in blocks("resource", "aws_iam_role_policy", ROLES):
        role = re.fullmatch(r"\$\{aws_iam_role\.(\w+)\.(id|name)\}", block.body["role"])
        assert role, block.address
        found.setdefault(role.group(1), []).append(document_of(block.body["policy"]))
    managed = {b.name: document_of(b.body["policy"]) for b in blocks("resource", "aws_iam_policy", ROLES)}
    for attachment in locals_()["pipeline_policy_attachments"].values():
        role = re.fullmatch(r"\$\{aws_iam_role\.(\w+)\.name\}", attachment["role"])
        policy = re.fullmatch(r"\$\{aws_iam_policy\.(\w+)\.arn\}", attachment["policy"])
        assert role and policy, attachment
        found.setdefault(role.group(1), []).append(managed[policy.group(1)])
    return found


def test_each_roles_policies_stay_within_its_boundary() -> None:
    # Action by action: a grant the boundary does not cover would be silently denied.
    documents = role_policy_documents()
    for role, boundary in BOUNDARY_OF.items():
        allowed = [a for s in doc_statements(boundary) for a in s.actions]
        for document in documents.get(role, []):
            for statement in doc_statements(document):
                if statement.effect != "Allow":
                    continue
                for action in statement.actions:
                    assert grants(allowed, {action}), (
                        f"{role}: {action} ({statement.origin}) is outside {boundary}"
                    )
    assert {"worker", "agent", "execution", "plan", "deploy"} <= set(documents)


# ---- E2. who may assume which pipeline role ----------------------------------------------


TRUSTS = {"plan": "trust_plan", "deploy": "trust_deploy", "role_management": "trust_role_management"}


def federated(statements: list[Statement]) -> list[Statement]:
    return [s for s in statements if any(p.get("type") == "Federated" for p in s.body.get("principals", []))]


@cache
def tfvars(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return normalise(hcl2.load(handle))


def subjects(role: str, values: dict[str, Any]) -> set[str]:
    """The OIDC subjects a role's trust admits, for one environment's tfvars."""
    statement = federated(doc_statements(TRUSTS[role]))[0]
    reference = conditions(statement)["token.actions.githubusercontent.com:sub"]["values"]
    match = re.fullmatch(r"\$\{local\.(\w+)\}", reference)
    assert match, f"{role}: sub values are not a local: {reference}"
    expression = as_text(locals_()[match.group(1)])
    repository = values["github_repository"]
    if expression == '["repo:${var.github_repository}:pull_request"]':
        return {f"repo:{repository}:pull_request"}
    loop = re.fullmatch(
        r"\$\{\[for (\w+) in var\.(\w+) : \"repo:\$\{var\.github_repository\}:environment:\$\{\1\}\"\]\}",
        expression,
    )
    assert loop, f"{role}: unexpected subjects {expression}"
    return {f"repo:{repository}:environment:{e}" for e in values[loop.group(2)]}


def test_every_trust_statement_has_conditions_and_oidc_ones_sub_and_aud() -> None:
    for role, document in TRUSTS.items():
        role_block = one("resource", "aws_iam_role", role, ROLES).body
        assert role_block["assume_role_policy"] == f"${{data.aws_iam_policy_document.{document}.json}}"
        statements = doc_statements(document)
        assert len(federated(statements)) == 1, role
        for statement in statements:
            assert statement.body.get("condition"), f"{statement.origin}: an unconditioned trust"
        oidc = federated(statements)[0]
        assert oidc.actions == ["sts:AssumeRoleWithWebIdentity"]
        found = conditions(oidc)
        assert listify(found["token.actions.githubusercontent.com:aud"]["values"]) == ["sts.amazonaws.com"]
        assert found["token.actions.githubusercontent.com:sub"]["test"] in {"StringEquals", "StringLike"}


def test_pull_requests_reach_the_plan_role_only() -> None:
    assert TFVARS, "no environments/*.tfvars"
    for path in TFVARS:
        values = tfvars(path)
        plan, deploy, manage = (subjects(r, values) for r in ("plan", "deploy", "role_management"))
        repository = values["github_repository"]
        assert plan == {f"repo:{repository}:pull_request"}, path.name
        for role, admitted in (("deploy", deploy), ("role_management", manage)):
            assert admitted, f"{path.name}: nobody may assume {role}"
            assert all(s.startswith(f"repo:{repository}:environment:") for s in admitted), (
                path.name,
                role,
                admitted,
            )
            assert f"repo:{repository}:pull_request" not in admitted
            assert not any("*" in s or ":ref:" in s for s in admitted), (path.name, role)
        assert not deploy & manage, f"{path.name}: one environment reaches both deploy and role management"


def test_central_hop_is_per_role_and_conditioned() -> None:
    external_ids = locals_()["central_hop_external_ids"]
    assert len(set(external_ids.values())) == 3
    for role, document in TRUSTS.items():
        hops = [s for s in doc_statements(document) if s.body.get("sid") == "CentralAccountHop"]
        assert len(hops) == 1, role
        hop = hops[0]
        assert hop.actions == ["sts:AssumeRole"], f"{role}: the hop may only assume the role"
        principal = hop.body["principals"][0]["identifiers"]
        assert principal == f"${{var.trusted_central_roles.{role}}}", (
            f"{role} trusts another role's central role"
        )
        found = conditions(hop)
        assert (
            found["aws:PrincipalArn"]["test"] == "ArnEquals"
            and found["aws:PrincipalArn"]["values"] == principal
        )
        external = found["sts:ExternalId"]
        assert external["test"] == "StringEquals"
        assert listify(external["values"]) == [f"${{local.central_hop_external_ids.{role}}}"]
        assert external_ids[role].startswith("${var.github_repository}:")
    validations = as_text(declared(ROLES)["variable"]["trusted_central_roles"]["validation"])
    assert "setintersection" in validations, "a central plan role could also hop to deploy"


def test_environment_variables_accept_no_wildcards() -> None:
    variables = declared(ROLES)["variable"]
    assert "github_apply_branches" not in variables, "apply roles trust environments, not branches"
    for name in ("github_deploy_environments", "github_role_management_environments"):
        validation = as_text(variables[name]["validation"])
        assert "^[A-Za-z0-9._-]+$" in validation, name
