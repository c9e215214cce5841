"""Logging for both processes: loggers that import structlog only for a line to write.

**The worker's lines.** One JSON object per line on stderr. stdout carries the
protocol, so the one thing this module must guarantee is that no log line can ever
reach it: structlog's default logger prints to ``sys.stdout``. ``configure_logging``
is called by the entry point before the first log call and binds every logger to the
stream it is given (stderr); a logger of this module used where nothing configured
logging (a fake worker, a script running a kernel) writes to stderr too. Each JSON
line has at least ``event``, ``level``, ``timestamp`` (ISO 8601, UTC) and ``pid``; the
coordinator re-emits these lines with the worker's identity bound.

**Imported when needed.** structlog renders every line, but importing it (with
``structlog.stdlib``, which imports asyncio, and ``structlog.dev``) is a large part of
a process's start, and a plain run writes no line at all: the coordinator's default
level is ``warning`` and it starts its local workers at that level too
(``mcpi_coordinator.launch.early.worker_argv``). So the loggers here (``get_logger``,
and the coordinator's, ``mcpi_coordinator.logs``) first compare a call's level with
the configured one (an int compare), and only a call that passes imports structlog
and applies the configuration an entry point gave ``configure_when_needed``, before
the call is handed to structlog as it would have been. What is written, when, and
with which fields is what structlog writes when configured at the start; once it is
loaded, structlog filters as usual. A process that loaded structlog already (a
program that configures it, the tests) is configured at once.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

if TYPE_CHECKING:
    from types import ModuleType

LOG_LEVELS: Final[dict[str, int]] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}

NAME_TO_LEVEL: Final[dict[str, int]] = {
    "critical": 50,
    "exception": 40,
    "error": 40,
    "warn": 30,
    "warning": 30,
    "info": 20,
    "debug": 10,
    "notset": 0,
}
"""structlog's own table of level names (``structlog.processors.NAME_TO_LEVEL``, held to
it by tests/worker/test_logs.py), here so that reading a level's name loads no structlog."""

_METHOD_LEVELS: Final[dict[str, int]] = {**NAME_TO_LEVEL, "fatal": 50}
"""The level of each method of a structlog filtering logger (``fatal`` is ``critical``)."""

LogFormat = Literal["json", "console"]
LOG_FORMATS: Final[tuple[str, ...]] = ("json", "console")


class _Deferred:
    """A configuration an entry point asked for, applied at the first line that passes
    its level (``threshold``)."""

    __slots__ = ("apply", "threshold")

    def __init__(self, threshold: int, apply: Callable[[], None]) -> None:
        self.threshold = threshold
        self.apply = apply


class _Waiting:
    """The one deferred configuration of this process, if any (``deferred``)."""

    __slots__ = ("deferred",)

    def __init__(self) -> None:
        self.deferred: _Deferred | None = None


_waiting = _Waiting()
_loading = threading.Lock()
"""The worker logs from several threads: one of them imports and configures."""


def configure_when_needed(threshold: int, apply: Callable[[], None]) -> None:
    """Have ``apply`` (which imports and configures structlog) run before the first line
    at ``threshold`` or above; until then, lines below it are dropped without loading
    structlog. Called by entry points only (``configure_logging`` here and in
    ``mcpi_coordinator.cli.logging``): it replaces any configuration made before. Where
    structlog is loaded already, ``apply`` runs now."""
    if "structlog" in sys.modules:
        _waiting.deferred = None
        apply()
    else:
        _waiting.deferred = _Deferred(threshold, apply)


def import_structlog() -> ModuleType:
    """structlog, imported if need be with rich out of its sight, with the configuration
    an entry point deferred now applied.

    structlog looks for rich once, as it is imported, to format tracebacks in console
    logs, and loads it (with pygments) when it finds it: a large share of a small run's
    imports, for tracebacks neither command prints that way. rich stays importable
    afterwards (the coordinator's progress bar draws with it)."""
    if _waiting.deferred is None and "structlog" in sys.modules:  # every line after the first
        return sys.modules["structlog"]
    with _loading:
        if "structlog" not in sys.modules:
            hide = "rich" not in sys.modules
            if hide:
                sys.modules["rich"] = None  # type: ignore[assignment]  # makes ``import rich`` fail
            try:
                import structlog  # noqa: F401  # structlog.dev looks for rich here, once
            finally:
                if hide:
                    del sys.modules["rich"]
        deferred = _waiting.deferred
        if deferred is not None:
            # Cleared only once applied: a line of another thread that sees it cleared
            # takes the quick path above, which must find structlog configured.
            try:
                deferred.apply()
            finally:
                _waiting.deferred = None
    return sys.modules["structlog"]


class Unconfigured:
    """What a logger does where nothing configured structlog: the least level it writes
    (``threshold``), and the structlog logger that writes it (``make``, called with the
    structlog module at each such line)."""

    __slots__ = ("make", "threshold")

    def __init__(self, threshold: int, make: Callable[[ModuleType], Any]) -> None:
        self.threshold = threshold
        self.make = make


def _to_stderr(structlog: ModuleType) -> Any:
    return structlog.wrap_logger(structlog.PrintLogger(sys.stderr))


TO_STDERR: Final = Unconfigured(0, _to_stderr)
"""Every line on stderr, never stdout: the worker's loggers where nothing configured
structlog (a fake worker, a script running a kernel)."""


class LazyLogger:
    """A structlog logger that loads structlog only for a line that passes the level.

    ``debug`` ... ``critical``, ``exception``, ``log(level, ...)`` and ``bind`` mean what
    they mean on structlog's filtering logger; each call either is below the level (a
    compare, nothing loaded, nothing built) or goes to ``structlog.get_logger(name)``,
    bound to what ``bind`` bound, as the process configured it at the time of the call
    (``unconfigured`` where nothing did). Deciding at each call, not once: loggers are
    made at import, before any entry point configured anything."""

    __slots__ = ("_context", "_name", "_unconfigured")

    def __init__(self, name: str, unconfigured: Unconfigured, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._unconfigured = unconfigured
        self._context = context or {}

    def __repr__(self) -> str:
        return f"<LazyLogger {self._name!r}>"

    def bind(self, **values: Any) -> LazyLogger:
        return LazyLogger(self._name, self._unconfigured, {**self._context, **values})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be written now (True where the logger
        structlog was configured with cannot say)."""
        if _waiting.deferred is not None or "structlog" not in sys.modules:
            return self._passes(level)
        check = getattr(self._target(), "is_enabled_for", None)
        return True if check is None else bool(check(level))

    def _passes(self, level: int) -> bool:
        """False for a line nobody would write, told without loading structlog."""
        deferred = _waiting.deferred
        if deferred is not None:
            return level >= deferred.threshold
        if "structlog" not in sys.modules:  # so nothing configured it
            return level >= self._unconfigured.threshold
        return True  # structlog's own filter decides

    def _target(self) -> Any:
        structlog = import_structlog()
        logger = structlog.get_logger(self._name) if structlog.is_configured() else self._unconfigured.make(structlog)
        return logger.bind(**self._context) if self._context else logger

    def log(self, level: int, event: str, *args: Any, **values: Any) -> Any:
        if self._passes(level):
            return self._target().log(level, event, *args, **values)
        return None

    def _method(self, method: str, event: str, args: tuple[Any, ...], values: dict[str, Any]) -> Any:
        if self._passes(_METHOD_LEVELS[method]):
            return getattr(self._target(), method)(event, *args, **values)
        return None

    def debug(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("debug", event, args, values)

    def info(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("info", event, args, values)

    def warning(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("warning", event, args, values)

    warn = warning

    def error(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("error", event, args, values)

    def exception(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("exception", event, args, values)

    def critical(self, event: str, *args: Any, **values: Any) -> Any:
        return self._method("critical", event, args, values)

    fatal = critical


def get_logger(name: str = "mcpi_worker") -> LazyLogger:
    """The worker's logger (its command, server and kernels): see the module's docstring."""
    return LazyLogger(name, TO_STDERR)


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
    """Send every structlog logger of this process to ``stream``, filtered at ``level``,
    from the first line that passes it (``configure_when_needed``)."""

    def apply() -> None:
        import structlog

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

    configure_when_needed(LOG_LEVELS[level], apply)
