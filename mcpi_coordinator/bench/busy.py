"""A busy machine on demand: CPU-bound loops beside a benchmark (``mcpi bench overhead
--busy N``, ``benchmarks/overhead.py --busy N``).

Latency figures depend on how busy the machine is (an idle CPU wakes more slowly than a
busy one, and a process that keeps a CPU while others wait for one costs them its
time), and a shared machine is busy more often than not. ``busy_loops(n)`` runs ``n``
pure-Python loops for as long as its ``with`` block runs, so anyone can rerun a figure
"beside N CPU-bound jobs" instead of waiting for a busy moment.

Each loop is in a session of its own, as another user's job, or one started from
another terminal, is (with scheduler autogrouping, Linux shares CPU time between
sessions first); ``same_session=True`` keeps them in this process's session, as jobs
started from the same shell are. A loop ends itself once its parent is gone, so a
benchmark killed outright leaves none behind; otherwise they are killed and reaped,
by pid, when the block is left.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from mcpi_coordinator.arguments import count_type

LOOP = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""
"""Pure Python on one CPU, looking every 100,000 rounds whether its parent (whose pid it
is given: one that died before the loop started would have left it init's) still lives.
It ignores Ctrl-C, which reaches it with ``same_session`` (in the terminal's foreground
process group) and would end it with a ``KeyboardInterrupt`` traceback on the terminal:
the benchmark that started it ends it (``busy_loops``); it writes nowhere (stderr is
``/dev/null``), so a Ctrl-C during its own start prints nothing either."""


class LoopsNotStarted(Exception):
    """A loop could not be started (no process or descriptor left): its own type, so that a
    command says so only of the loops, not of an ``OSError`` from what runs beside them."""


@contextmanager
def busy_loops(count: int, *, same_session: bool = False) -> Iterator[list[int]]:
    """Run ``count`` CPU-bound loops for the block; yield their pids. Raises
    ``LoopsNotStarted`` if one cannot be started (those already started are ended first)."""
    loops: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            try:
                loop = subprocess.Popen(
                    [sys.executable, "-c", LOOP, str(os.getpid())],
                    stderr=subprocess.DEVNULL,
                    start_new_session=not same_session,
                )
            except OSError as exc:
                raise LoopsNotStarted(f"cannot start the --busy loops: {exc}") from exc
            loops.append(loop)
        yield [loop.pid for loop in loops]
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def described(count: int, *, same_session: bool = False) -> str:
    """How a run says what it ran beside."""
    if not count:
        return "nothing of its own beside it"
    where = "this session" if same_session else "a session of its own each"
    return f"beside {count} CPU-bound loop{'s' if count != 1 else ''} ({where})"


MAX_LOOPS: Final = 1024
"""The most loops ``--busy`` starts: each is a process, and a busier machine than that
measures nothing more."""


def add_busy_arguments(parser: argparse.ArgumentParser) -> None:
    """``--busy N`` and ``--busy-same-session``, for a command to pass to ``busy_loops``; a
    negative, non-numeric or too large N is the parser's usage error (one line, exit 2)."""
    parser.add_argument(
        "--busy", type=count_type(0, MAX_LOOPS, why="a process each"), default=0, metavar="N",
        help="run beside N CPU-bound loops, each in a session of its own (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--busy-same-session", action="store_true", help="the --busy loops in this session, not their own"
    )
