"""The GitHub Actions workflows: they parse, run only the documented commands against the
two stacks, and reach AWS through OIDC alone."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
STACKS = {"terraform/roles", "terraform/egress"}
ENVIRONMENTS = sorted(
    p.name for p in (ROOT / "terraform" / "egress" / "environments").iterdir() if p.is_dir()
)
TERRAFORM_SUBCOMMANDS = {"fmt", "init", "validate", "plan", "apply", "output"}
# Programs a step may run besides make and terraform: the shell's own, and the AWS CLI.
OTHER_PROGRAMS = {"set", "echo", "if", "then", "else", "fi", "read", "exit", "aws", "cosign", "sudo", "bash"}
STORED_KEY_INPUTS = {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"}


@cache
def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True.
    found = workflow.get("on", workflow.get(True))
    assert found is not None, "no `on:`"
    return (
        found
        if isinstance(found, dict)
        else {name: None for name in ([found] if isinstance(found, str) else found)}
    )


def steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in workflow.get("jobs", {}).items():
        for step in job.get("steps", []) or []:
            yield job_name, step


def readme_make_targets() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\s*make (\w+)", text, flags=re.M))


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a `run:` script, as words: split at the shell's operators
    (`&&`, `||`, `;`, `|`, redirections, `$(`), quotes respected."""
    script = re.sub(r"\\\n\s*", " ", script)
    for line in script.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        redirect_target = False
        try:
            tokens = list(lexer)
        except ValueError:
            tokens = line.split()
        for token in tokens:
            if token and set(token) <= set("();<>|&"):
                if set(token) & set("();|") or token in {"&&", "&"}:
                    if words:
                        yield words
                    words, redirect_target = [], False
                else:
                    redirect_target = True  # > file, >> file, < file, 2>&1: the next word is no command
            elif redirect_target:
                redirect_target = False
            else:
                words.append(token.removesuffix("$"))
        if words:
            yield words


def expand(path: str) -> list[str]:
    """A path with ${TARGET_ENV} (the account chosen by branch) stands for every environment."""
    if "${TARGET_ENV}" in path or "$TARGET_ENV" in path:
        return [path.replace("${TARGET_ENV}", env).replace("$TARGET_ENV", env) for env in ENVIRONMENTS]
    return [path]


def terraform_dirs(workflow_path: Path) -> list[str]:
    workflow = load(workflow_path)
    found = []
    default_dir = (workflow.get("defaults") or {}).get("run", {}).get("working-directory")
    for _, step in steps(workflow):
        directory = step.get("working-directory", default_dir)
        assigned: dict[str, str] = {}
        for words in commands(str(step.get("run", ""))):
            if re.fullmatch(r"\w+=.*", words[0]):
                name, value = words[0].split("=", 1)
                assigned[name] = value
            if words[0] != "terraform":
                continue
            chdir = next((w.split("=", 1)[1] for w in words if w.startswith("-chdir=")), None)
            for name, value in assigned.items():
                chdir = chdir and re.sub(rf"\$\{{?{name}\b\}}?", value, chdir)
            found.append(chdir or directory or ".")
    return found


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_parses(path: Path) -> None:
    workflow = load(path)
    assert workflow.get("name")
    assert triggers(workflow)
    assert workflow.get("jobs"), f"{path.name} has no jobs"


def test_the_four_workflows_exist() -> None:
    names = {p.stem for p in WORKFLOW_FILES}
    assert {"ci", "roles", "infra", "images"} <= names


def test_ci_runs_the_readmes_test_command() -> None:
    assert "test" in readme_make_targets()
    runs = [str(step.get("run", "")).strip() for _, step in steps(load(WORKFLOWS / "ci.yml"))]
    assert "make test" in runs


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_steps_run_only_documented_commands(path: Path) -> None:
    targets = readme_make_targets()
    problems = []
    for job, step in steps(load(path)):
        for words in commands(str(step.get("run", ""))):
            program = words[0]
            if "=" in program and not program.startswith("-"):
                continue  # an assignment
            if program == "make":
                unknown = [w for w in words[1:] if not w.startswith("-") and w not in targets]
                if unknown:
                    problems.append(f"{job}: make {unknown} is not a README command")
            elif program == "terraform":
                sub = next((w for w in words[1:] if not w.startswith("-")), None)
                if sub not in TERRAFORM_SUBCOMMANDS:
                    problems.append(f"{job}: terraform {sub}")
            elif program == "bash":
                script = next((w for w in words[1:] if not w.startswith("-")), "")
                if not (ROOT / script).is_file():
                    problems.append(f"{job}: bash {script}: no such script")
            elif program not in OTHER_PROGRAMS and program not in {"[", "]"}:
                problems.append(f"{job}: unexpected program {program!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "stack"), [("roles.yml", "terraform/roles"), ("infra.yml", "terraform/egress")]
)
def test_pipelines_work_on_their_own_stack(name: str, stack: str) -> None:
    directories = terraform_dirs(WORKFLOWS / name)
    assert directories, f"{name} runs no terraform"
    for directory in directories:
        for path in expand(directory):
            assert path == stack or path.startswith(stack + "/"), f"{name} runs terraform in {path}"
            assert (ROOT / path).is_dir(), f"{name} runs terraform in {path}, which does not exist"
    lines = (WORKFLOWS / name).read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.strip().startswith("#"))
    others = STACKS - {stack}
    assert not any(other in text for other in others), f"{name} touches another stack"


@pytest.mark.parametrize("name", ["roles.yml", "infra.yml"])
def test_plan_on_pull_requests_apply_on_main(name: str) -> None:
    workflow = load(WORKFLOWS / name)
    on = triggers(workflow)
    assert "pull_request" in on and "main" in on["push"]["branches"]
    jobs = workflow["jobs"]
    plan = [j for j in jobs.values() if "pull_request" in str(j.get("if", ""))]
    apply = [j for j in jobs.values() if "push" in str(j.get("if", "")) and "steps" in j]
    assert plan and apply
    plan_runs = " ".join(str(s.get("run", "")) for j in plan for s in j["steps"])
    apply_runs = " ".join(str(s.get("run", "")) for j in apply for s in j["steps"])
    assert "terraform" in plan_runs and " plan" in plan_runs and " apply" not in plan_runs
    assert re.search(r"terraform .*apply", apply_runs)
    # The account is chosen by branch: main → prod, anything else → dev.
    env = workflow["env"]
    assert "'main'" in env["TARGET_ACCOUNT"]
    assert "AWS_ACCOUNT_ID_PROD" in env["TARGET_ACCOUNT"] and "AWS_ACCOUNT_ID_DEV" in env["TARGET_ACCOUNT"]
    assert set(ENVIRONMENTS) <= {"dev", "prod"}
    assert "'prod'" in env["TARGET_ENV"] and "'dev'" in env["TARGET_ENV"]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_aws_only_through_oidc(path: Path) -> None:
    workflow = load(path)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"secrets\.\w*(AWS|KEY|TOKEN)", text, flags=re.I), f"{path.name} reads a stored key"
    top = workflow.get("permissions", {})
    assert top in ({"contents": "read"}, "read-all", {}), f"{path.name}: broad top-level permissions {top}"
    for job_name, job in workflow["jobs"].items():
        aws_steps = [
            s for s in job.get("steps", []) or [] if "configure-aws-credentials" in str(s.get("uses", ""))
        ]
        for step in aws_steps:
            inputs = step.get("with", {})
            assert not STORED_KEY_INPUTS & set(inputs), f"{path.name}:{job_name} passes keys"
            assert inputs.get("role-to-assume"), f"{path.name}:{job_name} assumes no role"
        calls_aws = aws_steps or "images.yml" in str(job.get("uses", ""))
        if calls_aws:
            assert (job.get("permissions") or {}).get("id-token") == "write", (
                f"{path.name}:{job_name} needs id-token: write for OIDC"
            )


def test_images_workflow_builds_and_pushes_both_containers() -> None:
    workflow = load(WORKFLOWS / "images.yml")
    pushed = workflow["jobs"]["publish"]["strategy"]["matrix"]["image"]
    assert {"egress", "sft-agent"} <= set(pushed)
    for image in pushed:
        assert (ROOT / "docker" / f"{image}.Dockerfile").is_file()
    assert any(
        (s.get("with") or {}).get("push") is True
        for _, s in steps(workflow)
        if "build-push-action" in str(s.get("uses"))
    )
    infra = load(WORKFLOWS / "infra.yml")
    assert infra["jobs"]["images"]["uses"] == "./.github/workflows/images.yml"
    assert "images" in str(infra["jobs"]["apply"]["needs"])


# ---- gates of the apply pipelines ------------------------------------------------------------

APPLY_WORKFLOWS = {"infra.yml": "apply", "roles.yml": "apply"}
ROLE_OF_JOB = {
    ("infra.yml", "plan"): "plan",
    ("roles.yml", "plan"): "plan",
    ("infra.yml", "apply"): "deploy",
    ("images.yml", "publish"): "deploy",
    ("roles.yml", "apply"): "role-management",
}
CENTRAL_HOP_VARIABLE = {
    "plan": "AWS_CENTRAL_PLAN_ROLE_ARN",
    "deploy": "AWS_CENTRAL_DEPLOY_ROLE_ARN",
    "role-management": "AWS_CENTRAL_ROLE_MANAGEMENT_ROLE_ARN",
}
ROLES_TFVARS = ROOT / "terraform" / "roles" / "environments"
BRANCH_OF_ENVIRONMENT = {"prod": "main", "dev": "develop"}


def job(name: str, job_name: str) -> dict[str, Any]:
    return load(WORKFLOWS / name)["jobs"][job_name]


def by_branch(expression: str, branch: str) -> str:
    """The value of `${{ github.ref_name == 'main' && 'A' || 'B' }}` on a branch."""
    match = re.fullmatch(
        r"\$\{\{\s*github\.ref_name == 'main' && '([\w.-]+)' \|\| '([\w.-]+)'\s*\}\}", expression.strip()
    )
    assert match, f"not chosen by branch: {expression!r}"
    return match.group(1) if branch == "main" else match.group(2)


def runs_terraform_apply(step: dict[str, Any]) -> bool:
    return any(words[0] == "terraform" and "apply" in words for words in commands(str(step.get("run", ""))))


def test_apply_jobs_run_in_the_github_environment_of_their_account() -> None:
    for name, job_name in APPLY_WORKFLOWS.items():
        environment = job(name, job_name).get("environment")
        assert environment, f"{name}:{job_name} runs without a GitHub environment"
        suffix = "-roles" if name == "roles.yml" else ""
        assert by_branch(str(environment), "main") == f"prod{suffix}", name
        assert by_branch(str(environment), "develop") == f"dev{suffix}", name
    # The images are pushed with the deploy role too: in the same environment.
    assert job("images.yml", "publish").get("environment") == "${{ inputs.environment }}"
    # Pull request jobs never declare one (their OIDC subject stays pull_request).
    for name in ("infra.yml", "roles.yml"):
        assert "environment" not in job(name, "plan"), name


def test_apply_workflows_can_be_run_by_hand() -> None:
    for name, job_name in APPLY_WORKFLOWS.items():
        on = triggers(load(WORKFLOWS / name))
        assert "workflow_dispatch" in on, f"{name} cannot be run by hand"
        assert not (on["workflow_dispatch"] or {}).get("inputs"), (
            f"{name}: dispatch inputs could steer the build"
        )
        condition = str(job(name, job_name)["if"])
        assert "'workflow_dispatch'" in condition and "'push'" in condition, (
            f"{name}:{job_name} skips manual runs"
        )
    assert "'workflow_dispatch'" in str(job("infra.yml", "images")["if"]), (
        "a manual apply would have no images"
    )


def account_checks(steps_: list[dict[str, Any]]) -> list[int]:
    """Indexes of steps that compare the caller's account with the expected account id."""
    found = []
    for index, step in enumerate(steps_):
        script = str(step.get("run", ""))
        words = [w for c in commands(script) for w in c]
        if "get-caller-identity" not in words or "Account" not in script:
            continue
        expected = (step.get("env") or {}).get("EXPECTED_AWS_ACCOUNT_ID", "")
        if "vars.EXPECTED_AWS_ACCOUNT_ID" not in expected:
            continue
        if "$EXPECTED_AWS_ACCOUNT_ID" in script and "!=" in script and re.search(r"\bexit 1\b", script):
            found.append(index)
    return found


def test_the_account_is_checked_before_any_apply_or_push() -> None:
    gated = [("infra.yml", "apply"), ("roles.yml", "apply"), ("images.yml", "publish")]
    for name, job_name in gated:
        steps_ = job(name, job_name)["steps"]
        credentials = [
            i for i, s in enumerate(steps_) if "configure-aws-credentials" in str(s.get("uses", ""))
        ]
        checks = account_checks(steps_)
        assert credentials and checks, f"{name}:{job_name} does not check the account"
        assert "set -euo pipefail" in str(steps_[checks[0]]["run"]), (
            f"{name}:{job_name}: a failed aws call must fail"
        )
        assert checks[0] > max(credentials), f"{name}:{job_name} checks before its last credentials step"
        later = [
            i
            for i, s in enumerate(steps_)
            if runs_terraform_apply(s) or "build-push-action" in str(s.get("uses"))
        ]
        assert later, f"{name}:{job_name}: nothing applied or pushed?"
        assert checks[0] < min(later), f"{name}:{job_name} applies before checking the account"
        assert not steps_[checks[0]].get("continue-on-error"), name


def test_account_check_rule_catches_what_it_should() -> None:
    good = {
        "env": {"EXPECTED_AWS_ACCOUNT_ID": "${{ vars.EXPECTED_AWS_ACCOUNT_ID }}"},
        "run": "a=$(aws sts get-caller-identity --query Account --output text)\n"
        'if [ "$a" != "$EXPECTED_AWS_ACCOUNT_ID" ]; then exit 1; fi',
    }
    assert account_checks([good]) == [0]
    assert not account_checks([{**good, "run": "aws sts get-caller-identity"}])  # prints, compares nothing
    assert not account_checks([{**good, "env": {}}])  # compares with nothing
    assert not account_checks(
        [{**good, "run": good["run"].replace("exit 1", "echo mismatch")}]
    )  # never fails


def aws_steps(name: str, job_name: str) -> list[dict[str, Any]]:
    return [s for s in job(name, job_name)["steps"] if "configure-aws-credentials" in str(s.get("uses", ""))]


def test_each_job_hops_only_through_the_central_role_of_its_own_purpose() -> None:
    for (name, job_name), role in ROLE_OF_JOB.items():
        text = yaml.safe_dump(aws_steps(name, job_name))
        own = CENTRAL_HOP_VARIABLE[role]
        assert own in text, f"{name}:{job_name} does not use {own}"
        others = set(CENTRAL_HOP_VARIABLE.values()) - {own}
        assert not any(o in text for o in others), f"{name}:{job_name} can hop through another purpose's role"
        assert "AWS_CENTRAL_ROLE_ARN" not in text, f"{name}:{job_name} uses the shared central role"
        target = aws_steps(name, job_name)[-1]["with"]
        assert target["role-to-assume"].endswith(f":role/data-egress-{role}")
        # The hop presents this purpose's external id (terraform/roles: central_hop_external_ids).
        assert target.get("role-skip-session-tagging") is True, f"{name}:{job_name}: tagged hops are refused"
        assert f"format('{{0}}:{role}', github.repository)" in target.get("role-external-id", ""), (
            name,
            job_name,
        )


def test_github_environments_match_the_roles_trust() -> None:
    import hcl2  # the same parser as the HCL tests

    for environment, branch in BRANCH_OF_ENVIRONMENT.items():
        with (ROLES_TFVARS / f"{environment}.tfvars").open(encoding="utf-8") as handle:
            values = {k: v for k, v in hcl2.load(handle).items() if not k.startswith("__")}
        deploy = [v.strip('"') for v in values["github_deploy_environments"]]
        manage = [v.strip('"') for v in values["github_role_management_environments"]]
        assert deploy == [by_branch(str(job("infra.yml", "apply")["environment"]), branch)], environment
        assert manage == [by_branch(str(job("roles.yml", "apply")["environment"]), branch)], environment


def test_readme_documents_the_environments_and_their_settings() -> None:
    text = (ROOT / "terraform" / "README.md").read_text(encoding="utf-8")
    for needed in (
        "EXPECTED_AWS_ACCOUNT_ID",
        "workflow_dispatch",
        "prod-roles",
        *CENTRAL_HOP_VARIABLE.values(),
    ):
        assert needed in text, f"terraform/README.md does not mention {needed}"
    assert re.search(r"required reviewers", text, flags=re.I), (
        "where required reviewers are configured is not documented"
    )
    assert re.search(r"deployment branches", text, flags=re.I), (
        "the environments' branch rules are not documented"
    )
