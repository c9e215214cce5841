"""structlog configuration for the coordinator. Called once, by entry points only.

Library code (the pool, the connection) logs through ``mcpi_coordinator.logs``, which
is structlog as configured here once this has run (and, before anything configured
structlog, warnings on stderr only); structlog itself is imported at the first line
that passes the level (``mcpi_worker.logs``). An application embedding the pool configures
structlog its own way. Log lines go to stderr, never stdout: stdout is for results
(``--json`` output must stay parseable).
"""

from __future__ import annotations

import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

from mcpi_coordinator.cli.text import styling_allowed
from mcpi_coordinator.terminal_text import printable_fields
from mcpi_worker.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, configure_when_needed

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "configure_logging"]


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now*.

    Looked up at every call so that while a rich progress bar redirects stderr, log
    lines are printed above the bar instead of tearing it.
    """

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr closed: losing a log line is acceptable
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _worker_not_slot(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The pool logs a worker's ``slot``; the lines it relays from workers, and every
    message mcpi prints, say ``worker``. One word for one thing on the user's screen."""
    if "slot" in event and "worker" not in event:
        event["worker"] = event.pop("slot")
    return event


_RELAYED: Final = re.compile(r"worker ([0-9]+): (.*)", re.DOTALL)
"""A worker's own log line as the pool relays it (``connection.stderr_relay``)."""

MAX_REMEMBERED: Final[int] = 1024
"""Distinct worker warnings remembered; beyond them, repeats are shown again (memory
stays bounded however many different lines workers write)."""


class _WorkerWarningsOnce:
    """A warning every worker logs alike (``fused_kernel_cache_refused``, the same reason
    on 16 local workers) is shown once, for the first worker that says it: it says the
    same thing about the same cause, and 16 copies would bury the rest. A warning that
    differs in any field (another host's path) is shown too. Lines below warning (the
    ``--log-level info`` chatter) are all shown."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if method not in ("warning", "warn"):
            return event
        relayed = _RELAYED.fullmatch(str(event.get("event", "")))
        if relayed is None or str(event.get("worker")) != relayed[1]:
            return event
        said = (relayed[2], repr(event.get("fields")))
        if said in self._seen:
            from structlog import DropEvent  # loaded already: this runs inside structlog

            raise DropEvent
        if len(self._seen) < MAX_REMEMBERED:
            self._seen.add(said)
        return event


def configure_logging(level: str = "warning", fmt: LogFormat = "console") -> None:
    """Send every structlog logger to stderr, filtered at ``level``, as text or JSON,
    from the first line that passes ``level`` (``mcpi_worker.logs.configure_when_needed``:
    a run that logs nothing never imports structlog)."""
    # Asked now, of the stderr the command started with: a progress bar redirects it.
    colors = styling_allowed(sys.stderr)

    def apply() -> None:
        import structlog

        renderers: list[Any]
        if fmt == "json":
            # json.dumps escapes every control character (DEL and C1 too) and all non-ASCII.
            renderers = [structlog.processors.JSONRenderer()]
        else:
            # NO_COLOR means no styling at all, bold included: no escape codes whatever.
            # Tracebacks plain, whether or not a progress bar has loaded rich by the time
            # of the first line (mcpi_worker.logs.import_structlog keeps it out of sight).
            renderers = [
                printable_fields,
                structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback),
            ]
        logger = _StderrLogger()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                _worker_not_slot,
                _WorkerWarningsOnce(),
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                *renderers,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS[level]),
            logger_factory=lambda *_args: logger,
            cache_logger_on_first_use=False,
        )

    configure_when_needed(LOG_LEVELS[level], apply)
