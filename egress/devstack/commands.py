"""The commands the local stack's banner suggests, written so that a fresh shell runs them as printed.

A newcomer's second terminal has no activated venv and no ``AWS_*`` variables: the
commands name this installation's scripts by path (unless a plain ``egress`` on PATH is
the same one, outside any venv), the endpoint explicitly (a loopback endpoint needs no
credentials: :func:`egress.aws.session_for`), the region and ledger table when they are not
the defaults, and paths relative to the current folder only when below it — the banner
then says which folder that is.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from egress.devstack.bootstrap import DEFAULT_LEDGER_TABLE, LocalResources

DEFAULT_REGION = "eu-west-2"


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when it is below it, else absolute."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path.resolve())


def console_command(script_name: str, *, module: str) -> str:
    """How a fresh shell runs this installation's ``script_name`` (shell-quoted): a bare name
    only when this Python is not a virtual environment's and PATH finds the same script,
    else its path (``python -m module`` if the script is missing).

    ``make run`` runs ``.venv/bin/egress`` without activating the venv, and a newcomer's
    second shell has no venv either: a bare name would not be found there, or be another one.
    """
    script = Path(sys.executable).with_name(script_name)
    if not script.exists():
        return f"{shlex.quote(_script_path(Path(sys.executable)))} -m {module}"
    found = shutil.which(script_name)
    in_venv = sys.prefix != sys.base_prefix
    if not in_venv and found is not None and Path(found).resolve() == script.resolve():
        return script_name
    return shlex.quote(_script_path(script))


def _script_path(script: Path) -> str:
    # Not resolved: a venv's bin/python is a link to the base interpreter, its scripts are not.
    with contextlib.suppress(ValueError):
        return str(script.absolute().relative_to(Path.cwd()))
    return str(script.absolute())


def egress_command() -> str:
    """How a fresh shell runs this ``egress`` (see :func:`console_command`)."""
    return console_command("egress", module="egress.cli")


def _relative(command: str) -> bool:
    """Whether the command's program is a path relative to the current folder."""
    program = shlex.split(command)[0]
    return "/" in program and not program.startswith("/")


def banner_commands(resources: LocalResources, info: Mapping[str, Any]) -> list[str]:
    """The banner's commands to try, each runnable as printed from a fresh shell (no venv, no
    ``AWS_*``): explicit endpoint; region and ledger table when not the defaults; relative
    paths only below the current folder, which the banner then names."""
    endpoint = info["endpoint_url"]
    aws = f"--endpoint-url {endpoint}" + (
        f" --region {resources.region}" if resources.region != DEFAULT_REGION else ""
    )
    ledger = (
        f" --ledger-table {resources.ledger_table}" if resources.ledger_table != DEFAULT_LEDGER_TABLE else ""
    )
    sample = shown_path(Path(info["sample_dir"])) if info.get("sample_dir") else None
    paths = [sample] if sample else []
    egress = egress_command()
    publish = (
        f"{egress} local publish {aws} {shlex.quote(sample) if sample else '<DIR>'} "
        f"s3://{resources.source_bucket}/{info['publish_prefix']}"
    )
    history = f"{egress} {aws}{ledger} history"
    events = f"{egress} local events {aws} --queue-url {resources.events_queue_url}"
    programs = [egress]
    check = None
    if info.get("agent_config"):
        sft_agent = console_command("sft-agent", module="sft_agent.cli")
        config = shown_path(Path(info["agent_config"]))
        paths.append(config)
        programs.append(sft_agent)
        check = f"{sft_agent} check --config {shlex.quote(config)}"
    relative = any(_relative(p) for p in programs) or any(not Path(p).is_absolute() for p in paths)
    lines = [
        f" In another terminal, in {Path.cwd()} (the paths below are relative to it):"
        if relative
        else " In another terminal:",
        " Publish the sample data (files first, the flag last):",
        f"   {publish}",
        " Results appear in:",
        f"   s3://{resources.destination_bucket}/  (S3 routes)",
        f"   {info['received_dir']}/  (SFT routes, via the agent and the receiver)",
        f"   {history}  (the ledger)",
    ]
    if resources.events_queue_url:
        lines.append(f"   {events}  (completion events: delivered, failed, received)")
    if check is not None:
        lines += [
            " Check that the agent reaches the receiver (mutual TLS, certificates, a probe):",
            f"   {check}",
        ]
    return lines
