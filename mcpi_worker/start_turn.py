"""Workers started together take turns at their start, so that their coordinator keeps a core.

``mcpi estimate`` starts its local workers as it begins (``mcpi_coordinator.launch.early``),
and until its ``hello`` the command's own start (Trio, the pool) is what every first count
waits for. Two workers starting beside it on two cores shared the cores three ways, so the
command's start went slower than on a core of its own, and once the workers were ready they
waited, a core idle, for the rest of it (``benchmarks/sched_timeline.py``'s timeline and its
figures: docs/worker.md, **Two workers against one**). A worker
starting alone beside the command leaves it a core: the first worker is ready as early as
before, the ``hello`` comes sooner, and the next worker starts on the core the first one
left. With one worker, or a CPU to spare for each, nobody waits.

``START_TURN`` in a worker's environment, ``"WAIT,PASS"`` (either may be empty), names
descriptors of pipes the worker inherited. Before its imports the worker waits until
``WAIT`` can be read, which is its end of file: the worker before it has passed its turn
on, or died, its end closed either way; or until its stdin can be read: the ``hello`` has
come (the command has started, and this worker is wanted now) or its input has ended.
Once its imports are done and its kernels' preparation has begun, it closes ``PASS``, which
the worker after it waits on. So no worker waits on another that cannot go on, and none
waits past its coordinator's ``hello``. A value that does not name an inherited pipe
(descriptors 0 to 2 never do) is ignored: a stray variable never makes a worker wait, nor
close a descriptor it did not get for this.

Imports only ``os`` and ``stat``, which the interpreter has loaded before it runs us, and
``select`` when it waits.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy knows the name
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Final

START_TURN: Final = "MCPI_START_TURN"
"""``mcpi_worker.constants.START_TURN``, spelled out: that module imports ``typing``."""

_MOST_DIGITS: Final = 9
"""Longer than any descriptor number: such a value is not one."""


class Turn:
    """A worker's turn at starting, taken: ``pass_on`` lets the next worker start."""

    __slots__ = ("_passing",)

    def __init__(self, passing: int | None) -> None:
        self._passing = passing

    def pass_on(self) -> None:
        """Let the worker after us start: close the pipe it waits on. Once; nothing when
        no worker waits on us."""
        passing, self._passing = self._passing, None
        if passing is not None:
            os.close(passing)


def wait_for_turn(environ: MutableMapping[str, str] = os.environ, stdin: int = 0) -> Turn:
    """Wait for our turn at starting, as ``START_TURN`` in ``environ`` says (see the module
    docstring), and take the variable out of ``environ``: a process we start is not one of
    the workers taking turns. Returns at once without it. Raises nothing: a descriptor it
    cannot wait on is not waited on."""
    value = environ.pop(START_TURN, "")
    waiting_text, _, passing_text = value.partition(",")
    waiting, passing = _inherited_pipe(waiting_text), _inherited_pipe(passing_text)
    if waiting is not None and waiting == passing:
        # Stray: a turn's two ends are two pipes. Waited on and closed, the one
        # descriptor would be closed again by ``pass_on``, by then another file's number.
        waiting = passing = None
    if waiting is not None:
        import select

        if hasattr(select, "poll"):  # not on Windows, where no coordinator hands out pipes
            ready = select.poll()
            for fd in (waiting, stdin):
                ready.register(fd, select.POLLIN)
            try:
                ready.poll()  # the end of file, the hello, or the end of our input: each ends the wait
            except OSError:
                pass
        os.close(waiting)
    return Turn(passing)


def _inherited_pipe(text: str) -> int | None:
    """The descriptor ``text`` names, if it is a pipe above the standard three (made ours
    alone: a process we start does not inherit it); else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MOST_DIGITS:
        return None
    fd = int(text)
    if fd <= 2:
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd
