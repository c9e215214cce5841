"""The coordinator library's loggers: structlog's when an application configured it,
else warnings and errors on stderr, and nothing on stdout.

The pool, the connections and ``--verify`` log through structlog and configure
nothing: an application embedding the pool decides where its logs go
(``structlog.configure``, or ``mcpi_coordinator.cli.logging.configure_logging`` as the
``mcpi`` command does), and those loggers follow it. But structlog unconfigured prints
every level to **stdout**, and a library nobody configured must say nothing on stdout:
a program's stdout is its own output (``mcpi estimate --json``, a user's script). So
until something calls ``structlog.configure``, a library logger falls back to what
Python's own ``logging`` does for a library nobody set up (its "last resort" handler):
warnings and errors, one line each, on stderr; debug and info dropped.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from mcpi_coordinator.terminal_text import printable_fields


class _CurrentStderr:
    """Writes each line to whatever ``sys.stderr`` is at the time of the call (a test's
    capture, a progress display's redirect), never raising: losing a log line to a
    closed stderr is better than failing the run over it."""

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):  # ValueError: stderr was closed
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_FALLBACK_PROCESSORS: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.format_exc_info,
    printable_fields,  # a worker's relayed warning may hold escape sequences
    structlog.dev.ConsoleRenderer(colors=False),
]


class LibraryLogger:
    """A logger that asks, at every call, whether structlog has been configured.

    Module-level loggers are made at import, before any entry point could configure
    anything, so the choice cannot be made once: ``mcpi`` configures structlog in
    ``main``, long after ``mcpi_coordinator.pool`` was imported. Any attribute
    (``info``, ``warning``, ``bind``, ...) is that of ``structlog.get_logger(name)``
    once structlog is configured, else of the stderr fallback at ``warning``.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._fallback: Any = structlog.wrap_logger(
            _CurrentStderr(),
            processors=_FALLBACK_PROCESSORS,
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        )

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name)
        return self._fallback

    def __getattr__(self, method: str) -> Any:
        return getattr(self._target(), method)

    def __repr__(self) -> str:
        return f"<LibraryLogger {self._name!r}>"


def get_logger(name: str) -> LibraryLogger:
    """The logger library code uses: see the module's docstring."""
    return LibraryLogger(name)
