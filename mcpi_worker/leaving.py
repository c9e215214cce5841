"""Leaving a finished process with ``os._exit``: one home for what must come first.

Both commands leave this way once their work is done (``mcpi_worker.boot`` always,
``mcpi_coordinator.cli.boot`` when a command asked for it): tearing every module down
costs a short-lived process a noticeable part of its life, and nothing it still holds
needs it. Imports only the standard library's ``atexit``, ``os`` and ``sys``, so that
either side may call it from its lightest module.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Run the exit handlers ``sys.exit`` would run, flush stdout and stderr, then
    ``os._exit(code)``. A stream nobody reads any more (EPIPE) or one already closed is
    not an error here: the process is leaving either way. Never returns."""
    atexit._run_exitfuncs()  # what sys.exit would run first; CPython and PyPy have it
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # the interpreter found the descriptor closed at its start
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # nobody reads it any more, or it is closed
            pass
    os._exit(code)
