"""The ``egress`` command: the daemon, the operators' tools and the local stack.

The composition root of the command line: the one product module that knows the dev
tooling (``egress.devstack``), which adds the ``local`` subcommands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from egress import ops_cli, replay_cli, routes_cli
from egress.aws import AwsConfig
from egress.cli_context import CliContext, Handler
from egress.devstack import cli as devstack_cli


def _global_options() -> list[tuple[str, str | None, str]]:
    """The options every command takes: name, default (from the environment), help."""
    env = os.environ
    return [
        (
            "--endpoint-url",
            env.get("AWS_ENDPOINT_URL"),
            "AWS endpoint (LocalStack or moto server); default $AWS_ENDPOINT_URL",
        ),
        (
            "--region",
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "eu-west-2",
            "AWS region; default $AWS_REGION",
        ),
        (
            "--routes-table",
            env.get("EGRESS_ROUTES_TABLE", "data-egress"),
            "routes table; default $EGRESS_ROUTES_TABLE or data-egress",
        ),
        (
            "--ledger-table",
            env.get("EGRESS_LEDGER_TABLE", "data-egress-ledger"),
            "ledger table; default $EGRESS_LEDGER_TABLE or data-egress-ledger",
        ),
    ]


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """The global options on the top parser (with their defaults) and on every subcommand.

    A subcommand's copy defaults to ``SUPPRESS``: it sets the value only when given, and
    argparse parses it after the top parser's, so a value after the subcommand wins over
    one before it, and the environment's default holds when neither is given.
    """
    options = _global_options()
    for name, default, helptext in options:
        parser.add_argument(name, default=default, help=helptext)
    for sub in _subcommand_parsers(parser):
        # A subcommand's own option of one of these names stays as it is.
        missing = [
            (name, helptext) for name, _, helptext in options if name not in sub._option_string_actions
        ]
        if missing:
            group = sub.add_argument_group(
                "global options", "also taken before the command; a value here wins"
            )
            for name, helptext in missing:
                group.add_argument(name, default=argparse.SUPPRESS, help=helptext)


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``, at any depth (aliases counted once)."""
    found: dict[int, argparse.ArgumentParser] = {}
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action._name_parser_map.values():
                    if id(sub) not in found:
                        found[id(sub)] = sub
                        pending.append(sub)
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each module adds its own subcommands."""
    parser = argparse.ArgumentParser(prog="egress", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the egress worker daemon (config from the environment)")
    run.add_argument("--config", type=Path, default=None, help="YAML settings file (environment wins)")
    run.set_defaults(handler=_run)
    routes_cli.configure(commands)
    ops_cli.configure(commands)
    replay_cli.configure(commands)
    devstack_cli.configure(commands)
    # Last, once the tree is whole: global options before or after any subcommand.
    _add_global_options(parser)
    return parser


def _run(args: argparse.Namespace, _ctx: CliContext) -> int:
    from egress.settings import SettingsError, load_settings
    from egress.worker import run_worker

    try:
        settings = load_settings(config_file=args.config)
    except SettingsError as exc:
        print(f"egress run: invalid settings: {exc}", file=sys.stderr)
        return 2
    return run_worker(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``egress`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    context = CliContext(
        aws_config=AwsConfig(region=args.region, endpoint_url=args.endpoint_url),
        routes_table=args.routes_table,
        ledger_table=args.ledger_table,
    )
    handler: Handler = args.handler
    return handler(args, context)


if __name__ == "__main__":
    sys.exit(main())
