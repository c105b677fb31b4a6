"""What every ``egress`` subcommand handler receives: AWS clients, table names, the terminal.

Its own module so the subcommand modules (``routes_cli``, ``ops_cli``, the dev tooling's
``local``) import it without importing ``egress.cli``, which imports them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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
"""A subcommand: its parsed arguments and the context in, the exit code out."""
