"""``egress local up | bootstrap | publish``: their options and the handlers that run them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from egress.aws import AwsConfig
from egress.cli_context import CliContext
from egress.devstack.bootstrap import (
    DEFAULT_DESTINATION_BUCKET,
    DEFAULT_FLAG_NAME,
    DEFAULT_KMS_ALIAS,
    DEFAULT_QUEUE,
    DEFAULT_ROUTES_FILE,
    DEFAULT_SOURCE_BUCKET,
    bootstrap,
    write_env_file,
    write_worker_config,
)
from egress.devstack.errors import LocalSetupError
from egress.devstack.publish import publish
from egress.devstack.stack import DEFAULT_PORT, DEFAULT_STATE_DIR, LocalStack, UpOptions, find_repo_path
from egress.devstack.stackfile import RunningStack, find_running_stack
from egress.kernel.s3uri import parse_s3_uri


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``egress local up | bootstrap | publish | events``."""
    local = commands.add_parser("local", help="the local stack: up, bootstrap, publish, events")
    actions = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    flag_default = os.environ.get("EGRESS_FLAG_NAME") or DEFAULT_FLAG_NAME

    boot = actions.add_parser(
        "bootstrap",
        help="create buckets, queue + DLQ, tables, KMS key, notification; apply the routes (idempotent)",
    )
    boot.add_argument("--source-bucket", default=DEFAULT_SOURCE_BUCKET)
    boot.add_argument("--destination-bucket", default=DEFAULT_DESTINATION_BUCKET)
    boot.add_argument("--queue", default=DEFAULT_QUEUE, help="queue name; the DLQ is <queue>-dlq")
    boot.add_argument("--kms-alias", default=DEFAULT_KMS_ALIAS)
    boot.add_argument("--flag-name", default=flag_default)
    boot.add_argument("--routes", type=Path, default=DEFAULT_ROUTES_FILE, help="routes YAML to apply")
    boot.add_argument("--no-routes", action="store_true", help="do not apply a routes file")
    boot.add_argument("--env-file", type=Path, help="write EGRESS_*/AWS_* variables for the worker here")
    boot.add_argument(
        "--worker-config", type=Path, help="write a worker YAML settings file here (EGRESS_CONFIG)"
    )
    boot.add_argument("--json", action="store_true", help="print the resources as JSON on stdout")
    boot.set_defaults(handler=_bootstrap_command)

    pub = actions.add_parser(
        "publish",
        help="upload a folder's files, then the flag, like a producer (no endpoint given: to the running "
        "`egress local up`, found in .local-stack/)",
    )
    pub.add_argument("directory", type=Path, metavar="DIR")
    pub.add_argument("target", metavar="s3://bucket/prefix/")
    pub.add_argument("--flag-name", default=flag_default)
    pub.add_argument("--encrypt", action="store_true", help="envelope-encrypt each file (key gets .enc)")
    pub.add_argument("--kms-key-id", default=DEFAULT_KMS_ALIAS, help="KMS key for --encrypt")
    pub.add_argument("--jobs", type=int, default=4, help="files and parts uploaded at once")
    pub.set_defaults(handler=_publish_command)

    events = actions.add_parser(
        "events",
        help="print the completion events of the running `egress local up` (its tap queue on the events topic)",
    )
    events.add_argument("--queue-url", help="the tap queue (default: the running local stack's)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.add_argument("--json", action="store_true", help="print each event's JSON body")
    events.set_defaults(handler=_events_command)

    up = actions.add_parser("up", help="moto server + bootstrap + receiver, worker and agent, until Ctrl-C")
    up.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="moto server port")
    up.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="logs, certs, SFT root, received"
    )
    up.add_argument("--routes", type=Path, default=DEFAULT_ROUTES_FILE, help="routes YAML to apply")
    up.add_argument("--no-worker", action="store_true", help="do not start the worker (run your own)")
    up.add_argument("--no-agent", action="store_true", help="do not start the SFT agent")
    up.add_argument("--ready-file", type=Path, help="write the endpoints as JSON here once up")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemons to answer")
    up.add_argument("--receiver-port", type=int, help="receiver's TLS port (default 8091, else any free)")
    up.add_argument("--worker-port", type=int, help="worker's metrics port (default 9090, else any free)")
    up.add_argument("--agent-port", type=int, help="agent's metrics port (default 9091, else any free)")
    up.set_defaults(handler=_up_command)


def _bootstrap_command(args: argparse.Namespace, ctx: CliContext) -> int:
    routes: Path | None = None if args.no_routes else args.routes
    if routes is not None and not routes.is_file():
        print(
            f"egress local bootstrap: routes file {routes} not found (pass --routes FILE or --no-routes)",
            file=ctx.err,
        )
        return 2
    target = ctx.aws_config.endpoint_url or f"AWS (region {ctx.aws_config.region}, no endpoint URL)"
    report_stream = ctx.err if args.json else ctx.out
    print(f"bootstrapping {target}", file=report_stream)
    try:
        resources = bootstrap(
            ctx.clients,
            source_bucket=args.source_bucket,
            destination_bucket=args.destination_bucket,
            queue_name=args.queue,
            routes_table=ctx.routes_table,
            ledger_table=ctx.ledger_table,
            kms_alias=args.kms_alias,
            flag_name=args.flag_name,
            routes_file=routes,
            report=lambda line: print(line, file=report_stream),
        )
        if args.env_file is not None:
            write_env_file(args.env_file, resources.worker_env())
            print(f"wrote {args.env_file}", file=report_stream)
        if args.worker_config is not None:
            write_worker_config(args.worker_config, resources)
            print(f"wrote {args.worker_config}", file=report_stream)
    except LocalSetupError as exc:
        print(f"egress local bootstrap: {exc}", file=ctx.err)
        return 1
    if args.json:
        print(json.dumps(resources.as_dict(), indent=2), file=ctx.out)
    else:
        for key, value in resources.worker_env().items():
            print(f"  {key}={value}", file=ctx.out)
    return 0


def _publish_command(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        target = parse_s3_uri(args.target, want="prefix")
    except ValueError as exc:
        print(f"egress local publish: {exc}", file=ctx.err)
        return 2
    if ctx.aws_config.endpoint_url is None:
        # No endpoint anywhere (option, AWS_ENDPOINT_URL): the running `egress local up`, if any.
        stack = find_running_stack()
        if stack is not None:
            print(
                f"egress local publish: no endpoint given: publishing to the local stack at "
                f"{stack.endpoint_url} (from {stack.path})",
                file=ctx.err,
            )
            ctx = _aimed_at(ctx, stack)
    if args.jobs < 1:
        print("egress local publish: --jobs must be at least 1", file=ctx.err)
        return 2
    clients = ctx.clients
    try:
        result = publish(
            clients.s3,
            args.directory,
            target=target,
            flag_name=args.flag_name,
            kms=clients.kms if args.encrypt else None,
            kms_key_id=args.kms_key_id if args.encrypt else None,
            jobs=args.jobs,
            progress_stream=ctx.err,
            warn=lambda line: print(f"egress local publish: {line}", file=ctx.err),
        )
    except LocalSetupError as exc:
        print(f"egress local publish: {exc}", file=ctx.err)
        return 1
    for key in result.keys:
        print(f"  s3://{target.bucket}/{key}", file=ctx.out)
    print(
        f"published {len(result.keys)} files ({result.bytes:,} bytes{', encrypted' if args.encrypt else ''}) "
        f"in {result.seconds:.1f}s, then the flag s3://{target.bucket}/{result.flag_key}",
        file=ctx.out,
    )
    return 0


def _aimed_at(ctx: CliContext, stack: RunningStack) -> CliContext:
    """``ctx`` with its clients pointed at the running local stack's endpoint and region."""
    config = AwsConfig(region=stack.region, endpoint_url=stack.endpoint_url)
    return dataclasses.replace(ctx, aws_config=config, _clients=None)


def _events_command(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print (and take off the tap queue) the events published so far; with --follow, wait for more."""
    queue_url = args.queue_url
    if queue_url is None or ctx.aws_config.endpoint_url is None:
        stack = find_running_stack()
        if stack is None:
            print(
                "egress local events: no running `egress local up` found (.local-stack/stack.json); "
                "give --endpoint-url and --queue-url",
                file=ctx.err,
            )
            return 2
        queue_url = queue_url or str(stack.facts.get("events_queue_url") or "")
        if ctx.aws_config.endpoint_url is None:
            ctx = _aimed_at(ctx, stack)
    if not queue_url:
        print("egress local events: the local stack has no events topic", file=ctx.err)
        return 2
    sqs = ctx.clients.sqs
    shown = 0
    try:
        while True:
            messages = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5 if args.follow else 1
            ).get("Messages", [])
            for message in messages:
                print(_event_line(message["Body"], as_json=args.json), file=ctx.out, flush=True)
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                shown += 1
            if not messages and not args.follow:
                break
    except KeyboardInterrupt:
        pass
    if not args.follow:
        print(f"{shown} event(s)", file=ctx.err)
    return 0


def _event_line(body: str, *, as_json: bool) -> str:
    """One completion event, as a line for people (or its JSON body)."""
    try:
        event = json.loads(body)
    except ValueError:
        return f"(not JSON) {body[:200]}"
    if as_json or not isinstance(event, dict):
        return json.dumps(event)
    reason = f"  {event.get('reason')}: {event.get('detail')}" if event.get("reason") else ""
    return (
        f"{event.get('at', '?')}  {event.get('outcome', '?'):<9} {event.get('pipeline_name', '?')} → "
        f"{event.get('recipient_name', '?')} ({event.get('transfer_type', '?')})  {event.get('objects', 0)} objects, "
        f"{event.get('bytes', 0)} bytes  {event.get('flag', '?')}{reason}"
    )


def _up_command(args: argparse.Namespace, ctx: CliContext) -> int:
    routes = find_repo_path(args.routes) if args.routes == DEFAULT_ROUTES_FILE else args.routes
    if routes is None or not routes.is_file():
        print(f"egress local up: routes file {args.routes} not found (pass --routes FILE)", file=ctx.err)
        return 2
    options = UpOptions(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        routes_file=routes,
        routes_table=ctx.routes_table,
        ledger_table=ctx.ledger_table,
        region=ctx.aws_config.region,
        worker=not args.no_worker,
        agent=not args.no_agent,
        ready_file=args.ready_file.resolve() if args.ready_file else None,
        timeout=args.timeout,
        receiver_port=args.receiver_port,
        worker_port=args.worker_port,
        agent_port=args.agent_port,
    )
    return LocalStack(options, out=ctx.out, err=ctx.err).run()
