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
ENVIRONMENTS = sorted(p.name for p in (ROOT / "terraform" / "egress" / "environments").iterdir() if p.is_dir())
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
    return found if isinstance(found, dict) else {name: None for name in ([found] if isinstance(found, str) else found)}


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


@pytest.mark.parametrize(("name", "stack"), [("roles.yml", "terraform/roles"), ("infra.yml", "terraform/egress")])
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
        aws_steps = [s for s in job.get("steps", []) or [] if "configure-aws-credentials" in str(s.get("uses", ""))]
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
        (s.get("with") or {}).get("push") is True for _, s in steps(workflow) if "build-push-action" in str(s.get("uses"))
    )
    infra = load(WORKFLOWS / "infra.yml")
    assert infra["jobs"]["images"]["uses"] == "./.github/workflows/images.yml"
    assert "images" in str(infra["jobs"]["apply"]["needs"])
