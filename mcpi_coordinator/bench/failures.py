"""The one place where a failed approach's exception becomes a one-line reason.

Approaches fail in their libraries' own ways: Trio wraps errors in exception groups,
``run_process`` raises ``CalledProcessError``, a process pool breaks, a worker command
does not exist. ``describe`` finds the informative exception inside and words it;
anything it does not recognise is a bug and is left to propagate with its traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor

from mcpi_coordinator.bench.one_shot import OneShotError, exit_failure
from mcpi_coordinator.errors import McpiError


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, possibly wrapped by a Trio nursery into an exception group."""
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc))


def describe(exc: BaseException) -> str | None:
    """A one-line reason for a failure we expect can happen, or None for a bug."""
    for leaf in _leaves(exc):
        if isinstance(leaf, (OneShotError, McpiError)):  # already one line
            return str(leaf)
        if isinstance(leaf, subprocess.CalledProcessError):
            return str(exit_failure(leaf.returncode, leaf.stderr or b""))
        if isinstance(leaf, BrokenExecutor):
            return f"a worker process died abruptly ({type(leaf).__name__})"
        if isinstance(leaf, OSError):
            where = f": {leaf.filename}" if leaf.filename else ""
            return f"{leaf.strerror or leaf}{where}"
    return None
