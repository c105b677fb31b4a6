"""``sft-agent``: ``run`` (the daemon), ``receiver`` (mTLS stand-in), ``dev-certs``, ``check``.

Exit codes: 0 success (also after a clean stop), 1 stopped uncleanly (``run``) or a
receiver failed its check (``check``), 2 bad config or arguments (the message names the
key and the problem).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

from sft_agent.logs import configure_logging
from sft_agent.settings import CONFIG_ENV, AgentSettings, SettingsError, load_settings


def _settings(args: argparse.Namespace) -> AgentSettings | None:
    """The agent's settings, or ``None`` once the problems are printed (exit code 2)."""
    try:
        return load_settings(config_file=args.config)
    except SettingsError as exc:
        print(f"sft-agent: {exc}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from sft_agent.agent import Agent, StartupError

    settings = _settings(args)
    if settings is None:
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    dynamodb = sns = None
    if settings.ledger is not None:
        from botocore.exceptions import BotoCoreError

        from sft_agent.ledger import build_dynamodb_client, build_sns_client

        try:
            dynamodb = build_dynamodb_client(settings.ledger)
            if settings.ledger.events_topic_arn:
                sns = build_sns_client(settings.ledger)
        except BotoCoreError as exc:
            print(f"sft-agent: cannot start: ledger: {exc} (set AWS_REGION)", file=sys.stderr)
            return 2
    try:
        agent = Agent(settings, dynamodb=dynamodb, sns=sns)
        agent.prepare()
    except StartupError as exc:
        structlog.get_logger("sft_agent").error("cannot_start", error=str(exc))
        print(f"sft-agent: cannot start: {exc}", file=sys.stderr)
        return 2
    return agent.run()


def _check(args: argparse.Namespace) -> int:
    from sft_agent.check import CheckOptions, run_check
    from sft_agent.tls import TlsConfigError, client_context

    settings = _settings(args)
    if settings is None:
        return 2
    if not args.offline:
        if args.timeout <= 0 or args.warn_days < 0:
            print("sft-agent check: --timeout must be above 0 and --warn-days not below 0", file=sys.stderr)
            return 2
        options = CheckOptions(timeout=args.timeout, warn_days=args.warn_days, method=args.method)
        return run_check(settings, options=options, out=sys.stdout)
    problems = []
    for index, route in enumerate(settings.routes):
        if route.tls is not None:
            try:
                client_context(route.tls, prefix=f"routes[{index}]({route.name}).tls")
            except TlsConfigError as exc:
                problems.append(str(exc))
        print(
            f"route {route.name}: {route.source} → "
            + ", ".join(a.kind for a in route.actions)
            + f" ({route.threads} threads, retry ×{route.retry.max_attempts})"
        )
    for problem in problems:
        print(f"sft-agent: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _receiver(args: argparse.Namespace) -> int:
    from sft_agent.receiver import Receiver, ReceiverSettings, build_server, serve
    from sft_agent.serving import parse_listen
    from sft_agent.tls import TlsConfigError, server_context

    configure_logging(fmt=args.log_format, level="info")
    log = structlog.get_logger("sft_agent.receiver")
    if args.out is None and args.s3_bucket is None:
        print("sft-agent receiver: give --out DIR or --s3-bucket BUCKET", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(args.listen)
        tls = server_context(cert=args.cert, key=args.key, ca=args.ca, min_version=args.min_tls)
    except (ValueError, TlsConfigError) as exc:
        print(f"sft-agent receiver: {exc}", file=sys.stderr)
        return 2
    s3 = None
    if args.s3_bucket is not None:
        import boto3
        from botocore.config import Config

        s3 = boto3.client(
            "s3",
            endpoint_url=args.endpoint_url,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60
            ),
        )
    receiver = Receiver(
        ReceiverSettings(
            out=args.out,
            filename_header=args.filename_header,
            require_digest=not args.allow_missing_digest,
            max_bytes=args.max_bytes,
            s3_bucket=args.s3_bucket,
            s3_prefix=args.s3_prefix,
        ),
        s3=s3,
    )
    try:
        server = build_server(receiver, host=host, port=port, tls=tls)
    except OSError as exc:
        print(f"sft-agent receiver: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 2
    return serve(server, log=log)


def _dev_certs(args: argparse.Namespace) -> int:
    from sft_agent.certs import dev_certs

    hosts = [h.strip() for value in args.hosts for h in value.split(",") if h.strip()]
    paths = dev_certs(args.out, hosts=hosts, days=args.days)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``sft-agent``."""
    parser = argparse.ArgumentParser(
        prog="sft-agent", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="push files from the watched folders (the daemon)")
    run.add_argument("--config", type=Path, default=None, help=f"YAML config (default: ${CONFIG_ENV})")
    run.set_defaults(func=_run)

    check = commands.add_parser(
        "check",
        help="reach every receiver of the config over mutual TLS and report (exit 0 all ok, 1 a failure)",
    )
    check.add_argument("--config", type=Path, default=None, help=f"YAML config (default: ${CONFIG_ENV})")
    check.add_argument(
        "--timeout", type=float, default=10.0, help="seconds for each URL: connect, handshake, answer (10)"
    )
    check.add_argument(
        "--warn-days", type=float, default=14.0, help="warn about certificates expiring within this many days"
    )
    check.add_argument(
        "--method", choices=["OPTIONS", "HEAD"], default="OPTIONS", help="the probe request (OPTIONS)"
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="only validate the config and load the certificates and keys (no network)",
    )
    check.set_defaults(func=_check)

    receiver = commands.add_parser(
        "receiver", help="a mutual-TLS HTTPS receiver writing files to a folder or S3"
    )
    receiver.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    receiver.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    receiver.add_argument("--key", type=Path, required=True, help="server key (PEM, unencrypted)")
    receiver.add_argument("--ca", type=Path, required=True, help="CA bundle that signs client certificates")
    receiver.add_argument("--out", type=Path, default=None, help="folder to write received files under")
    receiver.add_argument("--s3-bucket", default=None, help="write to this bucket instead (boto3)")
    receiver.add_argument("--s3-prefix", default="", help="key prefix in --s3-bucket")
    receiver.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint")
    receiver.add_argument("--filename-header", default="Filename", help="header naming the file of a POST")
    receiver.add_argument("--max-bytes", type=int, default=None, help="refuse bodies larger than this (413)")
    receiver.add_argument(
        "--allow-missing-digest",
        action="store_true",
        help="accept requests without Repr-Digest (e.g. plain curl)",
    )
    receiver.add_argument("--min-tls", choices=["TLSv1.2", "TLSv1.3"], default="TLSv1.2")
    receiver.add_argument("--log-format", choices=["json", "console"], default="json")
    receiver.set_defaults(func=_receiver)

    certs = commands.add_parser("dev-certs", help="write a throwaway CA, server and client certificates")
    certs.add_argument("--out", type=Path, required=True, help="folder to write the PEM files to")
    certs.add_argument(
        "--hosts",
        nargs="+",
        default=["localhost", "127.0.0.1"],
        help="server certificate names: space- or comma-separated host names and IP addresses",
    )
    certs.add_argument("--days", type=int, default=90, help="validity of the leaf certificates")
    certs.set_defaults(func=_dev_certs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sft-agent`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
