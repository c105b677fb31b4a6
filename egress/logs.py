"""structlog configuration: JSON lines in containers, readable lines on a console."""

from __future__ import annotations

import logging
import sys

import structlog

_QUIET = ("botocore", "boto3", "urllib3", "aws_encryption_sdk")


def configure_logging(*, fmt: str = "json", level: str = "info") -> None:
    """Configure structlog (and stdlib logging beneath it) once, at start-up.

    Shared by both programs (``egress run`` and ``sft-agent``), so their lines have one shape.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib; keep them quiet unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
