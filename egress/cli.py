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

from egress import ops_cli, routes_cli
from egress.aws import AwsConfig
from egress.cli_context import CliContext, Handler
from egress.devstack import cli as devstack_cli


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument(
        "--endpoint-url",
        default=env.get("AWS_ENDPOINT_URL"),
        help="AWS endpoint (LocalStack or moto server); default $AWS_ENDPOINT_URL",
    )
    parser.add_argument(
        "--region",
        default=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "eu-west-2",
        help="AWS region; default $AWS_REGION",
    )
    parser.add_argument(
        "--routes-table",
        default=env.get("EGRESS_ROUTES_TABLE", "data-egress"),
        help="routes table; default $EGRESS_ROUTES_TABLE or data-egress",
    )
    parser.add_argument(
        "--ledger-table",
        default=env.get("EGRESS_LEDGER_TABLE", "data-egress-ledger"),
        help="ledger table; default $EGRESS_LEDGER_TABLE or data-egress-ledger",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each module adds its own subcommands."""
    parser = argparse.ArgumentParser(prog="egress", description=__doc__)
    _add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the egress worker daemon (config from the environment)")
    run.add_argument("--config", type=Path, default=None, help="YAML settings file (environment wins)")
    run.set_defaults(handler=_run)
    routes_cli.configure(commands)
    ops_cli.configure(commands)
    devstack_cli.configure(commands)
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
