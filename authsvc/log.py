"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is.

What goes into a log line is chosen by the code that logs it: identifiers, outcomes, masked
destinations. Never a code, a password, a token or a full phone number.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

from authsvc.config import LogFormat


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment, so that a configured logger
    never holds on to a stream that was since replaced (test capture, daemonising)."""

    def msg(self, message: str) -> None:
        # One write per line, and no explicit flush: stderr is line-buffered (Python >= 3.9).
        sys.stderr.write(message + "\n")

    debug = info = warning = error = critical = exception = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


class _Timestamp:
    """`timestamp`: ISO 8601 UTC with microseconds ("2026-01-31T12:00:00.123456Z"), the date
    and time of day formatted once a second (structlog's TimeStamper formats them per line)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: object, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix, self._second = moment.strftime("%Y-%m-%dT%H:%M:%S."), second
        event["timestamp"] = f"{self._prefix}{int((now - second) * 1e6):06d}Z"
        return event


_ENCODER = json.JSONEncoder(default=repr)


def _json(_logger: object, _name: str, event: MutableMapping[str, Any]) -> str:
    """The line as JSON: one reused encoder (json.dumps builds one per call for default=)."""
    return _ENCODER.encode(event)


_PROCESSORS: list[structlog.typing.Processor] = []


def configure(log_format: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    use_json = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: structlog.typing.Processor = _json if use_json else structlog.dev.ConsoleRenderer()
    # One list for the life of the process, changed in place: loggers cached on first use hold
    # the list itself, so a second configure (or a test's capture) reaches them too.
    _PROCESSORS[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Timestamp(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
