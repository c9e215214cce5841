"""Descriptors 0, 1 and 2 that a process was started without (``mcpi-worker >&-``, a
peer that closed stderr before exec), filled before anything else can take their numbers.

A process started with one of them closed hands that number to the next file it opens:
a pipe to a worker, a checkpoint, numba's cache. Whatever then writes "to stdout" or "to
stderr" (a ``print``, a library's warning, a child that inherits the descriptor) writes
into that file instead. Python itself only sets ``sys.stdout`` (or ``stdin``, ``stderr``)
to None then, so a ``sys.stdout.flush()`` raised ``AttributeError``, a traceback: the
worker's very first step (protocol.md §10.1, ``dup(1); dup2(2, 1)``) failed so, and with
stderr closed it exited 1 before its ``welcome``, saying nothing.

So both commands' ways in fill each missing one with ``/dev/null``, first thing:

- stdin: read-only, so reading it gives end of file at once (a worker then ends in order);
- stdout: read-only too, so that writing to it still fails as it would on a closed
  descriptor (EBADF) instead of vanishing: a worker takes that as a response stream
  nobody reads (it exits 0, as on EPIPE, protocol.md §9), and ``mcpi`` says in one line
  that it cannot write its output (exit 1) rather than report a result nobody got;
- stderr: write-only, so that logs and notes go nowhere and nothing fails for it (where
  would it say so?).

Imports only ``os`` and ``sys``, which every interpreter has loaded before it runs us.
"""

from __future__ import annotations

import os
import sys

_MODES = ((0, os.O_RDONLY, "r"), (1, os.O_RDONLY, "w"), (2, os.O_WRONLY, "w"))
"""Each standard descriptor: how ``/dev/null`` is opened in its place, and the mode of
the Python stream over it (stdout's is written to: its writes fail with EBADF)."""

_STREAMS = ("stdin", "stdout", "stderr")


def fill_closed() -> tuple[int, ...]:
    """Open ``/dev/null`` on each of descriptors 0, 1 and 2 that is not open, and give
    ``sys`` a stream over it where the interpreter left None; the descriptors filled.

    Called before anything opens a file, the lowest free descriptor is the one missing;
    it is made inheritable, as a standard descriptor is. Raises ``OSError`` only if
    ``/dev/null`` cannot be opened (a process can do nothing sane then)."""
    filled = []
    for fd, flags, mode in _MODES:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, flags)
        if null != fd:  # a lower one was taken meanwhile (not by us): put it where it belongs
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
        filled.append(fd)
        name = _STREAMS[fd]
        if getattr(sys, name) is None:
            errors = "backslashreplace" if fd == 2 else "strict"
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors=errors, closefd=False))  # noqa: SIM115
    return tuple(filled)
