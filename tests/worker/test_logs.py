"""The loggers of both processes import structlog only for a line they write
(``mcpi_worker.logs``), and write exactly what structlog configured at the start wrote.

Each case runs in a fresh interpreter (structlog is loaded in this one, and its
configuration is process-wide): once as a program that loaded structlog before
configuring (configured at once, as every entry point did before), once as the
commands start (nothing loaded). Both must write the same lines, field for field, and
the second must load structlog at the first line that passes the level, not before.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import structlog

from mcpi_worker.logs import LOG_LEVELS, NAME_TO_LEVEL

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    mode, which, level, fmt = sys.argv[1:5]
    if mode == "loaded":
        import structlog  # a program that loaded structlog before it configured logging
    loaded = lambda: "structlog" in sys.modules
    if which == "worker":
        from mcpi_worker.logs import configure_logging, get_logger
        configure_logging(sys.stderr, level, fmt)
        log = get_logger("mcpi_worker")
    else:
        from mcpi_coordinator.cli.logging import configure_logging
        from mcpi_coordinator.logs import get_logger
        configure_logging(level, fmt)
        log = get_logger("mcpi.pool")
    marks = [loaded()]
    bound = log.bind(worker=3)
    for name in ("debug", "info", "warning", "error", "critical"):
        getattr(bound, name)(name + "_event", n=1, text="a b")
        marks.append(loaded())
    bound.log(30, "worker 3: relayed", fields={"said": [1, 2]})
    log.warn("warn_event")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("failed", step="divide")
    import structlog.contextvars
    structlog.contextvars.bind_contextvars(run="r1")
    log.critical("with_context")
    print(json.dumps({"marks": marks, "pid": os.getpid()}))
    """
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")


def _run(mode: str, which: str, level: str, fmt: str) -> tuple[list[bool], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, which, level, fmt],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    lines = [TIMESTAMP.sub("TIME", line).replace(str(report["pid"]), "PID") for line in done.stderr.splitlines()]
    return report["marks"], lines


@pytest.mark.parametrize("which", ["worker", "coordinator"])
@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("level", ["debug", "warning", "critical"])
def test_structlog_is_loaded_by_the_first_line_written_and_writes_what_it_did(which: str, fmt: str, level: str) -> None:
    """Nothing lost (the line that loads structlog is written), nothing more written (the
    level holds before and after), the same fields, bound values, exception and context
    variables as a structlog configured at the start."""
    marks, lines = _run("fresh", which, level, fmt)
    loaded_marks, reference = _run("loaded", which, level, fmt)
    assert loaded_marks == [True] * 6
    threshold = LOG_LEVELS[level]
    assert marks == [False] + [LOG_LEVELS[name] >= threshold for name in LOG_LEVELS]
    assert lines == reference
    written = [name for name in LOG_LEVELS if any(f"{name}_event" in line for line in lines)]
    assert written == [name for name in LOG_LEVELS if LOG_LEVELS[name] >= threshold]
    assert any("with_context" in line and "r1" in line for line in lines)
    assert any("ZeroDivisionError" in line for line in lines) == (threshold <= LOG_LEVELS["error"])


UNCONFIGURED = textwrap.dedent(
    """
    import sys
    from mcpi_coordinator.logs import get_logger as library_logger
    from mcpi_worker.logs import get_logger as worker_logger
    library_logger("mcpi.pool").info("library_info")
    worker_logger().is_enabled_for(10)
    print("loaded" if "structlog" in sys.modules else "not loaded", flush=True)
    library_logger("mcpi.pool").warning("library_warning")
    worker_logger().debug("worker_debug", x=1)
    print("own line")
    """
)


def test_where_nothing_configured_logging_no_line_reaches_stdout() -> None:
    """A library logger drops info without loading structlog and says warnings on
    stderr; a worker logger (a kernel run by a script) writes every level, on stderr
    too: stdout is a program's own output, and a worker's protocol."""
    done = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED], capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "not loaded\nown line\n"
    assert "library_info" not in done.stderr
    assert "library_warning" in done.stderr and "worker_debug" in done.stderr


def test_the_level_names_are_structlogs() -> None:
    """Read without loading structlog, the same table (a worker's relayed level)."""
    assert NAME_TO_LEVEL == structlog.processors.NAME_TO_LEVEL
    assert all(NAME_TO_LEVEL[name] == value for name, value in LOG_LEVELS.items())


WHILE_APPLYING = textwrap.dedent(
    """
    import sys
    from mcpi_worker import logs
    log = logs.get_logger("t")
    seen = []
    def apply():
        # What a line of another thread sees while the first line's thread configures:
        # it must still be filtered at the deferred level and wait for the lock, not
        # take the quick path to a structlog nobody configured yet.
        seen.append(log.is_enabled_for(logs.LOG_LEVELS["debug"]))
        import structlog
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logs.LOG_LEVELS["warning"]),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    logs.configure_when_needed(logs.LOG_LEVELS["warning"], apply)
    log.warning("first")
    seen.append(log.is_enabled_for(logs.LOG_LEVELS["debug"]))
    print(seen)
    """
)


def test_a_line_written_while_the_configuration_is_applied_waits_for_it() -> None:
    """The deferred configuration stays in place until it is applied: a second thread's
    line in the meantime is held to its level and waits for the lock, instead of going
    to a structlog nobody configured yet (every level, in structlog's own format, on
    stderr rather than the stream asked for). Looked at from the applying thread, which
    sees what another thread would."""
    done = subprocess.run(
        [sys.executable, "-c", WHILE_APPLYING],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[False, False]"
    assert "first" in done.stderr
