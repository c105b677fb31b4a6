"""The ``egress`` command: the daemon, the operators' tools and the local stack."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from egress.aws import AwsClients, AwsConfig, build_clients, session_for


@dataclass
class CliContext:
    """What every subcommand handler gets: clients, table names, the terminal."""

    aws_config: AwsConfig
    routes_table: str
    ledger_table: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    _clients: AwsClients | None = None

    @property
    def clients(self) -> AwsClients:
        """Clients are built on first use, so ``--help`` never needs AWS."""
        if self._clients is None:
            self._clients = build_clients(self.aws_config, session=session_for(self.aws_config))
        return self._clients


Handler = Callable[[argparse.Namespace, CliContext], int]


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
    from egress import local, ops_cli, routes_cli

    routes_cli.configure(commands)
    ops_cli.configure(commands)
    local.configure(commands)
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
