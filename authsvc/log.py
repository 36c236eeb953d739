"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is.

What goes into a log line is chosen by the code that logs it: identifiers, outcomes, masked
destinations. Never a code, a password, a token or a full phone number.
"""

from __future__ import annotations

import logging
import sys

import structlog

from authsvc.config import LogFormat


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment, so that a configured logger
    never holds on to a stream that was since replaced (test capture, daemonising)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = exception = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure(log_format: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    use_json = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
