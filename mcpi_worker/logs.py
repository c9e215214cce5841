"""Structured logging for the worker: one JSON object per line on stderr.

stdout carries the protocol, so the one thing this module must guarantee is that no
log line can ever reach it: structlog's default logger prints to ``sys.stdout``.
``configure_logging`` is called by the entry point before the first log call and
binds every logger to the stream it is given (stderr).

Each JSON line has at least ``event``, ``level``, ``timestamp`` (ISO 8601, UTC) and
``pid``; the coordinator re-emits these lines with the worker's identity bound.
"""

from __future__ import annotations

import os
import threading
from collections.abc import MutableMapping
from typing import Any, Final, Literal, TextIO

import structlog

LOG_LEVELS: Final[dict[str, int]] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}

LogFormat = Literal["json", "console"]
LOG_FORMATS: Final[tuple[str, ...]] = ("json", "console")


class StreamLogger:
    """Writes whole lines to a text stream, from any thread, never raising.

    A log line that cannot be written (the coordinator stopped draining stderr, or
    closed it) is dropped: losing a log line must never take the worker down.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        try:
            with self._lock:
                self._stream.write(message + "\n")
                self._stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _add_pid(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["pid"] = os.getpid()
    return event_dict


def configure_logging(stream: TextIO, level: str = "info", fmt: LogFormat = "json") -> None:
    """Send every structlog logger of this process to ``stream``, filtered at ``level``."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stream_logger = StreamLogger(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_pid,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS[level]),
        logger_factory=lambda *_args: stream_logger,
        cache_logger_on_first_use=True,
    )
