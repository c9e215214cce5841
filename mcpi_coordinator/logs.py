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

The loggers are ``mcpi_worker.logs.LazyLogger``: structlog is imported only for a line
that passes the level (that module's docstring says why), so a run that writes no log
line never loads it.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Final

from mcpi_coordinator.terminal_text import printable_fields
from mcpi_worker.logs import LOG_LEVELS, LazyLogger, Unconfigured


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


def _warnings_on_stderr(structlog: ModuleType) -> Any:
    return structlog.wrap_logger(
        _CurrentStderr(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            printable_fields,  # a worker's relayed warning may hold escape sequences
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS["warning"]),
    )


WARNINGS_ON_STDERR: Final = Unconfigured(LOG_LEVELS["warning"], _warnings_on_stderr)
"""Where nothing configured structlog: warnings and errors on stderr, as console lines."""


def get_logger(name: str) -> LazyLogger:
    """The logger library code uses: see the module's docstring. Any method
    (``info``, ``warning``, ``bind``, ...) is that of ``structlog.get_logger(name)``
    once structlog is configured, else of the stderr fallback at ``warning``; the choice
    is made at each call, since module-level loggers are made at import, before any
    entry point could configure anything."""
    return LazyLogger(name, WARNINGS_ON_STDERR)
