"""Properties of terraform/ that matter, asserted on the parsed HCL.

Providers cannot be downloaded where these tests run, so there is no ``terraform
validate``: these tests stand in for it where it counts (references resolve) and go
further where it does not look (least privilege, the flag filter, the shared volume).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
ROLES = TERRAFORM / "roles"
EGRESS = TERRAFORM / "egress"
ENVIRONMENTS = sorted(p for p in (EGRESS / "environments").iterdir() if p.is_dir())
STACK_DIRS = [ROLES, EGRESS, *ENVIRONMENTS]

FLAG_NAME = "pipeline_success.flag"  # DESIGN §1
SFT_ROOT = "/data-egress"  # DESIGN §9
# DESIGN §9: the worker's settings that the task must set (the others keep their defaults).
REQUIRED_WORKER_ENV = {
    "EGRESS_QUEUE_URL",
    "EGRESS_ROUTES_TABLE",
    "EGRESS_LEDGER_TABLE",
    "EGRESS_SFT_ROOT",
    "EGRESS_FLAG_NAME",
    "EGRESS_METRICS_PORT",
    "EGRESS_SHUTDOWN_GRACE_SECONDS",
    "EGRESS_KMS_KEY_ARNS",
    "EGRESS_LOG_FORMAT",
}

# Services whose grants must name their resources (the issue's least-privilege rule).
NAMED_SERVICES = {"s3", "kms", "dynamodb", "sqs"}
# Actions of those services that AWS authorises on no resource type: "*" is the only
# resource it accepts for them, so a statement granting them must carry a condition.
RESOURCELESS_ACTIONS = {"kms:CreateKey"}
TAG_CONDITION_KEYS = ("aws:RequestTag/", "aws:ResourceTag/")


# ---- parsing -------------------------------------------------------------------------


def unquote(value: str) -> str:
    # python-hcl2 >= 7 keeps the quotes of string literals and block labels.
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {unquote(k): normalise(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    if isinstance(node, str):
        return unquote(node)
    return node


@cache
def parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return normalise(hcl2.load(handle))


def tf_files(directory: Path | None = None, *, recursive: bool = True) -> list[Path]:
    base = directory or TERRAFORM
    found = base.rglob("*.tf") if recursive else base.glob("*.tf")
    return sorted(p for p in found if ".terraform" not in p.parts)


@dataclass(frozen=True)
class Block:
    path: Path
    kind: str  # resource | data
    type: str
    name: str
    body: dict[str, Any]

    @property
    def address(self) -> str:
        prefix = "data." if self.kind == "data" else ""
        return f"{prefix}{self.type}.{self.name}"


def blocks(kind: str, type_: str | None = None, directory: Path | None = None) -> Iterator[Block]:
    for path in tf_files(directory):
        for entry in parse(path).get(kind, []):
            for block_type, named in entry.items():
                if type_ is not None and block_type != type_:
                    continue
                for name, body in named.items():
                    yield Block(path, kind, block_type, name, body)


def one(kind: str, type_: str, name: str, directory: Path) -> Block:
    found = [b for b in blocks(kind, type_, directory) if b.name == name]
    assert len(found) == 1, f"expected one {kind} {type_}.{name} under {directory}, found {len(found)}"
    return found[0]


def sub_blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Static blocks `name { … }` and the content of `dynamic "name" { … }`."""
    found = list(body.get(name, []))
    for dynamic in body.get("dynamic", []):
        if name in dynamic:
            found.extend(dynamic[name].get("content", []))
    return found


@cache
def declared(directory: Path) -> dict[str, dict[str, Any]]:
    """Variables, locals, outputs and modules declared by the .tf files of one directory."""
    variables: dict[str, Any] = {}
    local_values: dict[str, Any] = {}
    modules: dict[str, Any] = {}
    for path in tf_files(directory, recursive=False):
        tree = parse(path)
        for entry in tree.get("variable", []):
            variables.update(entry)
        for entry in tree.get("locals", []):
            local_values.update(entry)
        for entry in tree.get("module", []):
            modules.update(entry)
    return {"variable": variables, "locals": local_values, "module": modules}


def stack_of(path: Path) -> Path:
    return path.parent


def variable_default(directory: Path, name: str) -> Any:
    variable = declared(directory)["variable"].get(name)
    assert variable is not None, f"variable {name} is not declared in {directory}"
    return variable.get("default")


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resolve(value: Any, directory: Path, depth: int = 8) -> str:
    """The text of an expression with `local.X` references replaced by their definitions."""
    text = as_text(value)
    local_values = declared(directory)["locals"]

    def template(match: re.Match[str]) -> str:
        name = match.group(1)
        return as_text(local_values[name]) if name in local_values else match.group(0)

    def bare(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in local_values:
            return match.group(0)
        value = as_text(local_values[name])
        inner = re.fullmatch(r"\$\{(.*)\}", value, flags=re.S)
        return inner.group(1) if inner else json.dumps(value)

    for pattern, replace in ((r"\$\{local\.(\w+)\}", template), (r"(?<![\w.])local\.(\w+)", bare)):
        for _ in range(depth):
            replaced = re.sub(pattern, replace, text)
            if replaced == text:
                break
            text = replaced
    return text


# ---- IAM statements --------------------------------------------------------------------


@dataclass
class Statement:
    origin: str  # file and document/resource name, for messages
    directory: Path
    body: dict[str, Any]
    key_policy: bool = False
    actions: list[str] = field(default_factory=list)

    @property
    def effect(self) -> str:
        return str(self.body.get("effect", "Allow"))

    @property
    def is_resource_policy(self) -> bool:
        return bool(self.body.get("principals"))

    def resources(self) -> list[str]:
        raw = self.body.get("resources", [])
        items = raw if isinstance(raw, list) else [raw]
        return [resolve(item, self.directory) for item in items]

    def condition_variables(self) -> list[str]:
        return [resolve(c.get("variable", ""), self.directory) for c in self.body.get("condition", [])]


def listify(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def kms_key_policy_documents() -> set[str]:
    names = set()
    for key in blocks("resource", "aws_kms_key"):
        match = re.fullmatch(
            r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", str(key.body.get("policy", ""))
        )
        if match:
            names.add(f"{stack_of(key.path)}:{match.group(1)}")
    return names


def document_statements() -> list[Statement]:
    key_documents = kms_key_policy_documents()
    found = []
    for doc in blocks("data", "aws_iam_policy_document"):
        is_key_policy = f"{stack_of(doc.path)}:{doc.name}" in key_documents
        for body in sub_blocks(doc.body, "statement"):
            found.append(
                Statement(
                    origin=f"{doc.path.relative_to(ROOT)}: {doc.address} ({body.get('sid', 'no sid')})",
                    directory=stack_of(doc.path),
                    body=body,
                    key_policy=is_key_policy,
                    actions=listify(body.get("actions")),
                )
            )
    return found


INLINE_FIELD = r"""\b{name}\s*=\s*(\[[^\]]*\]|"[^"]*")"""


def inline_policy_statements(text: str, origin: str, directory: Path) -> list[Statement]:
    """Statements of a `jsonencode({ Statement = [...] })` policy (Action/Resource literals)."""
    found = []
    for chunk in re.split(r"\bSid\s*=|\}\s*,\s*\{", text)[0:]:
        if "Action" not in chunk:
            continue

        def field_values(name: str, chunk: str = chunk) -> list[str]:
            match = re.search(INLINE_FIELD.format(name=name), chunk)
            return re.findall(r'\\?"([^"\\]*)\\?"', match.group(1)) if match else []

        body: dict[str, Any] = {
            "effect": (field_values("Effect") or ["Allow"])[0],
            "resources": field_values("Resource"),
        }
        if re.search(r"\bPrincipal\s*=", chunk):
            body["principals"] = [{"inline": True}]
        if re.search(r"\bCondition\s*=", chunk):
            body["condition"] = [{"variable": "inline"}]
        found.append(Statement(origin, directory, body, actions=field_values("Action")))
    return found


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)
    elif isinstance(node, str):
        yield node


def inline_statements() -> list[Statement]:
    found = []
    for kind in ("resource", "data"):
        for block in blocks(kind):
            for text in walk_strings(block.body):
                if "jsonencode(" in text and "Statement" in text:
                    origin = f"{block.path.relative_to(ROOT)}: {block.address} (jsonencode)"
                    found.extend(inline_policy_statements(text, origin, stack_of(block.path)))
    return found


@cache
def all_statements() -> tuple[Statement, ...]:
    return (*document_statements(), *inline_statements())


WILDCARD_ARN = re.compile(
    r"""^(\*|arn:[^:]*:(s3:::\*.*|[a-z0-9-]+:[^:]*:[^:]*:\*|dynamodb:[^:]*:[^:]*:table/\*|kms:[^:]*:[^:]*:key/\*))$"""
)


def is_wildcard(resource: str) -> bool:
    text = resource.strip().strip('"')
    if WILDCARD_ARN.match(text):
        return True
    # A list expression with "*" as one of its elements.
    return re.search(r'(^|[\[,])\s*"\*"\s*(?=[\],]|$)', resource.strip()) is not None


def service_of(action: str) -> str:
    return action.split(":", 1)[0].lower() if ":" in action else action


def wildcard_problems(statement: Statement) -> list[str]:
    """Why a statement breaks the least-privilege rule; empty when it does not."""
    if statement.effect != "Allow":
        return []  # a Deny with wildcards only takes away
    problems = []
    for action in statement.actions:
        if action == "*" or (service_of(action) in NAMED_SERVICES and "*" in action):
            problems.append(f"wildcard action {action!r}")
    named = [a for a in statement.actions if service_of(a) in NAMED_SERVICES or a == "*"]
    if not named:
        return problems
    has_tag_condition = any(v.startswith(TAG_CONDITION_KEYS) for v in statement.condition_variables())
    for resource in statement.resources():
        if not is_wildcard(resource):
            continue
        if statement.is_resource_policy:
            # In a KMS key policy "*" is the key itself; any other resource policy names its resource.
            if statement.key_policy and resource.strip().strip('"') == "*":
                continue
            problems.append(f"resource policy grants {named} on wildcard {resource!r}")
        elif resource.strip().strip('"') == "*":
            if not (set(named) <= RESOURCELESS_ACTIONS and statement.body.get("condition")):
                problems.append(f"{named} granted on '*'")
        elif not (all(service_of(a) == "kms" for a in named) and has_tag_condition):
            # key/* is accepted for KMS only with a Project tag condition (key ARNs are random).
            problems.append(f"{named} granted on wildcard {resource!r}")
    return problems


# ---- references resolve (what `terraform validate` would catch) -----------------------


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"(^|\s)(#|//).*$", "", line) for line in text.splitlines())


def module_text(directory: Path) -> str:
    return "\n".join(
        strip_comments(p.read_text(encoding="utf-8")) for p in tf_files(directory, recursive=False)
    )


@pytest.mark.parametrize("directory", STACK_DIRS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_references_resolve(directory: Path) -> None:
    text = module_text(directory)
    names = declared(directory)
    resources = {b.address for b in blocks("resource", directory=directory) if stack_of(b.path) == directory}
    data = {b.address for b in blocks("data", directory=directory) if stack_of(b.path) == directory}
    missing = []
    for name in sorted(set(re.findall(r"(?<![\w.])var\.(\w+)", text))):
        if name not in names["variable"]:
            missing.append(f"var.{name}")
    for name in sorted(set(re.findall(r"(?<![\w.])local\.(\w+)", text))):
        if name not in names["locals"]:
            missing.append(f"local.{name}")
    for name in sorted(set(re.findall(r"(?<![\w.])module\.(\w+)", text))):
        if name not in names["module"]:
            missing.append(f"module.{name}")
    for address in sorted(set(re.findall(r"(?<![\w.])(data\.aws_\w+\.\w+)", text))):
        if address not in data:
            missing.append(address)
    for address in sorted(set(re.findall(r"(?<![\w.\"/-])(aws_\w+\.\w+)(?=[.\[\s,)\]}])", text))):
        if address not in resources and f"data.{address}" not in data:
            missing.append(address)
    assert not missing, f"{directory.relative_to(ROOT)} refers to undeclared {missing}"


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=lambda p: p.name)
def test_environment_passes_only_declared_and_all_required_variables(environment: Path) -> None:
    modules = declared(environment)["module"]
    assert "egress" in modules, f"{environment.relative_to(ROOT)} does not call the egress module"
    call = modules["egress"]
    assert (environment / call["source"]).resolve() == EGRESS
    module_variables = declared(EGRESS)["variable"]
    arguments = set(call) - {"source", "providers", "depends_on", "count", "for_each"}
    assert arguments <= set(module_variables), f"unknown module arguments {arguments - set(module_variables)}"
    required = {name for name, v in module_variables.items() if "default" not in v}
    assert required <= arguments, f"{environment.name} leaves out required {required - arguments}"


# ---- least privilege -----------------------------------------------------------------------


def test_every_policy_goes_through_a_policy_document_or_is_checked() -> None:
    policy_attributes = {
        "aws_iam_role": ["assume_role_policy"],
        "aws_iam_role_policy": ["policy"],
        "aws_iam_policy": ["policy"],
        "aws_iam_user_policy": ["policy"],
        "aws_iam_group_policy": ["policy"],
        "aws_sqs_queue_policy": ["policy"],
        "aws_kms_key": ["policy"],
        "aws_s3_bucket_policy": ["policy"],
        "aws_sns_topic_policy": ["policy"],
        "aws_ecr_repository_policy": ["policy"],
        "aws_efs_file_system_policy": ["policy"],
    }
    unchecked = []
    for block in blocks("resource"):
        for attribute in policy_attributes.get(block.type, []):
            value = str(block.body.get(attribute, ""))
            if not value:
                continue
            if re.fullmatch(r"\$\{data\.aws_iam_policy_document\.\w+\.json\}", value):
                continue
            if "jsonencode(" in value and "Statement" in value:
                continue  # collected by inline_statements()
            unchecked.append(f"{block.address}.{attribute} = {value[:60]}")
    assert not unchecked, f"policies neither from a policy document nor inline jsonencode: {unchecked}"


def test_iam_statements_were_found() -> None:
    statements = all_statements()
    origins = {s.origin.split(":")[0] for s in statements}
    # Guards the parser: a format change of python-hcl2 must not make the checks vacuous.
    assert len(statements) >= 40, f"only {len(statements)} IAM statements parsed"
    assert any("roles/service_roles.tf" in o for o in origins)
    assert any("egress/kms.tf" in o for o in origins)


def test_no_wildcard_actions_or_resources_for_s3_kms_dynamodb_sqs() -> None:
    problems = [f"{s.origin}: {p}" for s in all_statements() for p in wildcard_problems(s)]
    assert not problems, "\n".join(problems)


def test_wildcard_rule_catches_what_it_should() -> None:
    # The rule itself, on statements written to break it (so the check above can fail).
    here = ROLES

    def check(body: dict[str, Any]) -> list[str]:
        return wildcard_problems(Statement("sample", here, body, actions=listify(body.get("actions"))))

    assert check({"actions": ["s3:GetObject"], "resources": ["*"]})
    assert check({"actions": ["s3:*"], "resources": ["arn:aws:s3:::b/p/*"]})
    assert check({"actions": ["*"], "resources": ["arn:aws:s3:::b/p/*"]})
    assert check({"actions": ["dynamodb:GetItem"], "resources": ["arn:aws:dynamodb:r:1:table/*"]})
    assert check({"actions": ["sqs:SendMessage"], "resources": ["arn:aws:sqs:r:1:*"]})
    assert check({"actions": ["kms:Decrypt"], "resources": ["arn:aws:kms:r:1:key/*"]})
    assert check({"actions": ["kms:CreateKey"], "resources": ["*"]})  # no condition
    assert check({"actions": ["kms:Decrypt"], "resources": '${concat(var.keys, ["*"])}'})
    assert check({"actions": ["sqs:SendMessage"], "resources": ["*"], "principals": [{"type": "Service"}]})
    assert not check({"actions": ["sqs:*"], "resources": ["*"], "effect": "Deny"})
    assert not check({"actions": ["kms:Decrypt"], "resources": "${var.source_kms_key_arns}"})
    inline = inline_policy_statements(
        '${jsonencode({ Version = "2012-10-17", Statement = [{ Effect = "Allow", '
        'Action = ["s3:GetObject"], Resource = "*" }] })}',
        "sample",
        here,
    )
    assert [p for s in inline for p in wildcard_problems(s)]


def worker_statements() -> dict[str, Statement]:
    found = {}
    for statement in document_statements():
        if "data.aws_iam_policy_document.worker " in statement.origin:
            found[str(statement.body.get("sid"))] = statement
    assert found, "no statements in data.aws_iam_policy_document.worker"
    return found


def test_worker_reads_sources_only_under_routed_prefixes() -> None:
    statements = worker_statements().values()
    reads = [s for s in statements if {"s3:GetObject", "s3:ListBucket"} & set(s.actions)]
    assert reads, "the worker cannot read its sources"
    for statement in reads:
        if "s3:GetObject" in statement.actions:
            for resource in statement.resources():
                assert "var.source_locations" in resource and "prefix" in resource, statement.origin
        if "s3:ListBucket" in statement.actions:
            prefixes = [c for c in statement.body.get("condition", []) if c.get("variable") == "s3:prefix"]
            assert prefixes and "prefix" in as_text(prefixes[0].get("values")), (
                f"{statement.origin}: ListBucket without an s3:prefix condition"
            )
    validation = as_text(declared(ROLES)["variable"]["source_locations"].get("validation"))
    assert "*" in validation and "length(var.source_locations) > 0" in validation


def test_worker_decrypts_with_named_keys_and_assumes_named_roles() -> None:
    for statement in worker_statements().values():
        resources = " ".join(statement.resources())
        if "kms:Decrypt" in statement.actions:
            assert "var.source_kms_key_arns" in resources or "var.destination_kms_key_arns" in resources, (
                statement.origin
            )
        if "sts:AssumeRole" in statement.actions:
            assert resources == "${var.destination_role_arns}", statement.origin
        if any(service_of(action) == "ssm" for action in statement.actions):
            # Re-wrap routes' recipient keys: read-only, on the parameters named, nothing else.
            assert statement.actions == ["ssm:GetParameter"], statement.origin
            assert resources == "${var.rewrap_key_parameter_arns}", statement.origin
    for name in (
        "source_kms_key_arns",
        "destination_kms_key_arns",
        "destination_role_arns",
        "rewrap_key_parameter_arns",
    ):
        validation = as_text(declared(ROLES)["variable"][name].get("validation"))
        assert "regex" in validation, f"var.{name} accepts anything (wildcards included)"
    statements = worker_statements()
    assert "ReadRewrapKeyParameters" in statements, "re-wrap routes cannot read their recipient's key"


def test_worker_touches_only_the_named_tables_and_queues() -> None:
    for statement in worker_statements().values():
        services = {service_of(a) for a in statement.actions}
        resources = statement.resources()
        if "dynamodb" in services:
            assert all(":table/" in r and "table/*" not in r for r in resources), statement.origin
        if "sqs" in services:
            assert all(
                ":sqs:" in r and r.rstrip('"').endswith(("${var.name}", "${var.name}-dlq")) for r in resources
            ), statement.origin


# ---- GitHub OIDC -----------------------------------------------------------------------------


def test_oidc_trust_is_scoped_to_the_repository() -> None:
    federated = [
        s
        for s in document_statements()
        if any(p.get("type") == "Federated" for p in s.body.get("principals", []))
    ]
    assert len(federated) >= 2, "the plan and apply trusts were not found"
    for statement in federated:
        assert statement.actions == ["sts:AssumeRoleWithWebIdentity"], statement.origin
        conditions = {
            resolve(c["variable"], statement.directory): c for c in statement.body.get("condition", [])
        }
        sub = conditions.get("token.actions.githubusercontent.com:sub")
        aud = conditions.get("token.actions.githubusercontent.com:aud")
        assert sub is not None, f"{statement.origin}: no condition on the token's sub claim"
        assert aud is not None and listify(aud["values"]) == ["sts.amazonaws.com"], statement.origin
        assert sub["test"] == "StringEquals", f"{statement.origin}: sub must match exactly, not {sub['test']}"
        values = resolve(sub["values"], statement.directory)
        assert "repo:${var.github_repository}:" in values, (
            f"{statement.origin}: sub not scoped to the repository"
        )
        assert "*" not in values, f"{statement.origin}: wildcard in the sub claim"
    validation = as_text(declared(ROLES)["variable"]["github_repository"]["validation"])
    assert "*" not in re.sub(r"\[[^\]]*\]", "", validation.split("error_message")[0]).replace("+$", "")
    hop = [s for s in document_statements() if s.body.get("sid") == "CentralAccountHop"]
    assert len(hop) == 3, "the optional central-account hop is missing from a pipeline role's trust"
    for statement in hop:
        principals = statement.body["principals"][0]
        assert principals["type"] == "AWS"
        assert re.fullmatch(
            r"\$\{var\.trusted_central_roles\.(plan|deploy|role_management)\}", principals["identifiers"]
        )


def test_roles_stack_has_the_roles_of_the_issue() -> None:
    roles = {b.name: b for b in blocks("resource", "aws_iam_role", ROLES)}
    assert {"worker", "agent", "execution", "plan", "deploy", "role_management"} <= set(roles)
    for name in ("plan", "deploy", "role_management"):
        trust = f"${{data.aws_iam_policy_document.trust_{name}.json}}"
        assert roles[name].body["assume_role_policy"] == trust, f"{name} does not use its own trust"
    assert list(blocks("resource", "aws_iam_openid_connect_provider", ROLES))
    # The egress stack finds the roles by the names the roles stack gives them.
    role_names = declared(ROLES)["locals"]["role_names"]
    egress_locals = declared(EGRESS)["locals"]
    assert role_names["worker"] in egress_locals["worker_task_role_name"]
    assert role_names["execution"] in egress_locals["task_execution_role_name"]


# ---- queue, notification, tables -------------------------------------------------------------


def test_queue_has_a_redrive_policy_to_the_dlq() -> None:
    queues = {b.name: b.body for b in blocks("resource", "aws_sqs_queue", EGRESS)}
    redriven = {name: body for name, body in queues.items() if "redrive_policy" in body}
    assert redriven, "no queue has a redrive policy"
    for _, body in redriven.items():
        policy = body["redrive_policy"]
        target = re.search(r"deadLetterTargetArn\s*=\s*(?:\$\{)?aws_sqs_queue\.(\w+)\.arn\b", policy)
        assert target and target.group(1) in queues, f"redrive target not a queue of this stack: {policy}"
        assert re.search(r"maxReceiveCount\s*=\s*(?:\$\{)?var\.max_receive_count\b", policy), policy
    assert isinstance(variable_default(EGRESS, "max_receive_count"), int)
    for name, body in queues.items():
        assert body.get("kms_master_key_id") or body.get("sqs_managed_sse_enabled"), (
            f"queue {name} without SSE"
        )


def test_notification_filter_suffix_is_the_flag_name() -> None:
    notifications = list(blocks("resource", "aws_s3_bucket_notification", EGRESS))
    assert notifications
    for notification in notifications:
        queues = sub_blocks(notification.body, "queue")
        assert queues, f"{notification.address} sends nothing to a queue"
        for queue in queues:
            assert queue["queue_arn"].startswith("${aws_sqs_queue."), queue
            assert listify(queue["events"]) == ["s3:ObjectCreated:*"]
            suffix = queue.get("filter_suffix")
            if suffix == "${var.flag_name}":
                suffix = variable_default(EGRESS, "flag_name")
            assert suffix == FLAG_NAME, f"{notification.address} filters on {suffix!r}, not {FLAG_NAME!r}"
    for environment in ENVIRONMENTS:
        flag = declared(environment)["module"]["egress"].get("flag_name", FLAG_NAME)
        assert flag == FLAG_NAME, f"{environment.name} sets flag_name = {flag!r}"


def test_routes_and_ledger_tables() -> None:
    tables = {b.name: b.body for b in blocks("resource", "aws_dynamodb_table", EGRESS)}
    routes, ledger = tables["routes"], tables["ledger"]
    assert (routes["hash_key"], routes["range_key"]) == ("source_prefix", "pipeline_name")
    assert variable_default(EGRESS, "name") == "data-egress"
    assert resolve(routes["name"], EGRESS) == "${coalesce(var.routes_table_name, var.name)}"
    assert resolve(ledger["name"], EGRESS) == '${coalesce(var.ledger_table_name, "${var.name}-ledger")}'
    assert ledger["ttl"][0]["enabled"] is True and ledger["ttl"][0]["attribute_name"]
    for name, body in tables.items():
        assert body["point_in_time_recovery"][0]["enabled"] is True, f"{name}: no point-in-time recovery"
        assert body["server_side_encryption"][0]["enabled"] is True, f"{name}: not encrypted with the key"


# ---- the task -------------------------------------------------------------------------------


def containers() -> dict[str, dict[str, Any]]:
    task = one("resource", "aws_ecs_task_definition", "egress", EGRESS)
    assert task.body["container_definitions"] == "${jsonencode(local.container_definitions)}"
    definitions = declared(EGRESS)["locals"]["container_definitions"]
    return {c["name"]: c for c in definitions}


def local_value(name: str) -> Any:
    return declared(EGRESS)["locals"][name]


def test_task_has_both_containers_on_the_shared_volume() -> None:
    task = one("resource", "aws_ecs_task_definition", "egress", EGRESS)
    volumes = {v["name"] for v in task.body.get("volume", [])}
    defined = containers()
    assert set(defined) == {"egress", "sft-agent"}
    shared = []
    for name, container in defined.items():
        mounts = [m for m in container["mountPoints"] if resolve(m["containerPath"], EGRESS) == SFT_ROOT]
        assert len(mounts) == 1, f"{name} does not mount {SFT_ROOT}"
        assert mounts[0]["readOnly"] is False, f"{name} mounts {SFT_ROOT} read-only"
        assert mounts[0]["sourceVolume"] in volumes, f"{name} mounts an undeclared volume"
        shared.append(mounts[0]["sourceVolume"])
    assert len(set(shared)) == 1, f"the containers mount different volumes at {SFT_ROOT}: {shared}"


def numeric(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(value))
    assert match, f"not a number nor a variable: {value!r}"
    return float(variable_default(EGRESS, match.group(1)))


def test_stop_timeout_exceeds_the_grace_period() -> None:
    grace_expr = local_value("worker_fixed_environment")["EGRESS_SHUTDOWN_GRACE_SECONDS"]
    assert grace_expr == "${tostring(var.shutdown_grace_seconds)}", grace_expr
    grace = float(variable_default(EGRESS, "shutdown_grace_seconds"))
    for name, container in containers().items():
        stop_timeout = numeric(container["stopTimeout"])
        assert stop_timeout > grace, f"{name}: stopTimeout {stop_timeout} <= grace {grace}"
        assert stop_timeout <= 120, f"{name}: Fargate stops at 120 s"
    validation = as_text(declared(EGRESS)["variable"]["stop_timeout_seconds"]["validation"])
    assert "var.stop_timeout_seconds > var.shutdown_grace_seconds" in validation
    for env in ENVIRONMENTS:
        call = declared(env)["module"]["egress"]
        timeout = float(call.get("stop_timeout_seconds", variable_default(EGRESS, "stop_timeout_seconds")))
        assert timeout > float(call.get("shutdown_grace_seconds", grace)), env.name


def test_containers_are_hardened_and_checked() -> None:
    for name, container in containers().items():
        user = resolve(container.get("user", ""), EGRESS)
        assert user and user.split(":")[0] not in {"0", "root"}, f"{name} runs as root"
        assert container["readonlyRootFilesystem"] is True, f"{name}: writable root file system"
        assert container.get("privileged") is not True
        assert container["healthCheck"]["command"][0] == "CMD", f"{name}: no health check"
        assert container["essential"] is True
        assert container["logConfiguration"]["logDriver"] == "awslogs"


def test_worker_environment_uses_the_design_names() -> None:
    worker = containers()["egress"]
    assert worker["environment"].startswith("${[for k in sort(keys(local.worker_environment))")
    fixed = local_value("worker_fixed_environment")
    assert set(fixed) >= REQUIRED_WORKER_ENV, f"missing {REQUIRED_WORKER_ENV - set(fixed)}"
    assert fixed["EGRESS_SFT_ROOT"] == "${local.sft_root}" and local_value("sft_root") == SFT_ROOT
    assert fixed["EGRESS_FLAG_NAME"] == "${var.flag_name}"
    assert fixed["EGRESS_ROUTES_TABLE"] == "${aws_dynamodb_table.routes.name}"
    assert fixed["EGRESS_LEDGER_TABLE"] == "${aws_dynamodb_table.ledger.name}"
    # Every EGRESS_* the task sets is one the worker reads.
    known = set(
        re.findall(r'"(EGRESS_[A-Z0-9_]+)"', (ROOT / "egress" / "settings.py").read_text(encoding="utf-8"))
    )
    extra = re.findall(r"EGRESS_[A-Z0-9_]+", as_text(variable_default(EGRESS, "worker_environment")))
    for environment in ENVIRONMENTS:
        extra += re.findall(r"EGRESS_[A-Z0-9_]+", as_text(declared(environment)["module"]["egress"]))
    unknown = {n for n in {*fixed, *extra} if n.startswith("EGRESS_")} - known
    assert not unknown, f"the worker reads no {unknown}"
    agent = containers()["sft-agent"]
    assert "SFT_AGENT_CONFIG" in local_value("agent_environment")
    assert agent["secrets"] == "${local.agent_secrets}"


# ---- service, scaling, observability -------------------------------------------------------


def test_service_rolls_back_a_failed_deployment() -> None:
    service = one("resource", "aws_ecs_service", "egress", EGRESS).body
    breaker = service["deployment_circuit_breaker"][0]
    assert breaker["enable"] is True and breaker["rollback"] is True
    assert service["task_definition"] == "${aws_ecs_task_definition.egress.arn}"


def test_autoscaling_tracks_backlog_per_task_with_metric_math() -> None:
    policy = one("resource", "aws_appautoscaling_policy", "backlog_per_task", EGRESS).body
    tracking = policy["target_tracking_scaling_policy_configuration"][0]
    metrics = tracking["customized_metric_specification"][0]["metrics"]
    returned = [m for m in metrics if m.get("return_data") is True]
    assert len(returned) == 1 and "/" in returned[0].get("expression", ""), "no backlog / tasks expression"
    ids = {m["id"] for m in metrics}
    assert set(re.findall(r"[a-z_]+", returned[0]["expression"])) <= ids
    names = {m["metric_stat"][0]["metric"][0]["metric_name"] for m in metrics if "metric_stat" in m}
    assert {"ApproximateNumberOfMessagesVisible", "RunningTaskCount"} <= names


def test_logs_alarms_and_dashboard() -> None:
    for group in blocks("resource", "aws_cloudwatch_log_group", EGRESS):
        assert group.body.get("retention_in_days"), f"{group.address} keeps logs forever"
    alarms = {b.name: b.body for b in blocks("resource", "aws_cloudwatch_metric_alarm", EGRESS)}
    assert alarms["dlq_not_empty"]["dimensions"] == {"QueueName": "${aws_sqs_queue.dlq.name}"}
    assert alarms["oldest_message_age"]["metric_name"] == "ApproximateAgeOfOldestMessage"
    agent = alarms["agent_error_folder"]
    assert agent["metric_name"] == "${local.agent_error_metric}"
    metric_filter = one("resource", "aws_cloudwatch_log_metric_filter", "agent_error_folder", EGRESS).body
    assert "moved_to_error_folder" in metric_filter["pattern"]
    assert list(blocks("resource", "aws_cloudwatch_dashboard", EGRESS))
