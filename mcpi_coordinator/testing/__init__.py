"""Fake mcpi workers that speak the real protocol and misbehave on request.

For testing a coordinator (ours, or your own) against every way a worker can fail.
One behaviour core, three ways to run it:

- ``FakeBehaviour``: the options (crash after N results, hang, garbage on stdout,
  an oversize frame, wrong or duplicate ids, EOF inside a frame, slowness, a stderr
  flood, a wrong protocol version, ...). The default is a correct worker whose counts
  equal the real worker's.
- In-process (Trio): ``start_fake_worker(nursery, behaviour)`` returns a
  ``FakeWorkerProcess`` shaped like ``trio.Process``; ``fake_launcher(nursery, ...)``
  is a ``transport.Launcher`` to hand to ``WorkerPool(launcher=...)``, and records every
  launch. ``by_launch`` and ``by_slot`` choose behaviours per launch or per slot.
- Subprocess: ``python -m mcpi_coordinator.testing.fake_worker --crash-after 3 ...``
  (``--help`` lists the options), usable as any coordinator's worker command.
- Sans-IO: ``FakeWorkerCore`` returns the ``Action`` objects the drivers perform, for
  anyone writing a driver of their own.

The other way round, to test a worker of your own: ``open_worker(command)`` starts it
and gives a ``WorkerClient``, a deliberately simple peer that sends messages or raw
bytes and reads responses one by one (``StderrTail`` drains its stderr).

To assert that nothing was left behind, ask the process table:
``testing.processes.still_running(pids)`` and ``wait_until_gone(pids, timeout_s)``
(zombies count as gone; needs psutil, in the ``test`` extra).

The in-process names are imported lazily so that the subprocess fake, which lives
in this package, starts without importing Trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mcpi_coordinator.testing.script import (
    GARBAGE,
    Action,
    CloseStdout,
    Exit,
    FakeBehaviour,
    FakeStats,
    FakeWorkerCore,
    FloodStderr,
    Hang,
    WriteStderr,
    WriteStdout,
)

if TYPE_CHECKING:
    from mcpi_coordinator.testing.client import StderrTail, WorkerClient, open_worker
    from mcpi_coordinator.testing.inprocess import (
        FakeLauncher,
        FakeWorkerProcess,
        by_launch,
        by_slot,
        fake_launcher,
        start_fake_worker,
    )

_LAZY = {
    **dict.fromkeys(
        ["FakeLauncher", "FakeWorkerProcess", "by_launch", "by_slot", "fake_launcher", "start_fake_worker"],
        "inprocess",
    ),
    **dict.fromkeys(["StderrTail", "WorkerClient", "open_worker"], "client"),
}
"""Names whose modules import Trio, by module: imported on first use."""

__all__ = [
    "GARBAGE",
    "Action",
    "CloseStdout",
    "Exit",
    "FakeBehaviour",
    "FakeLauncher",
    "FakeStats",
    "FakeWorkerCore",
    "FakeWorkerProcess",
    "FloodStderr",
    "Hang",
    "StderrTail",
    "WorkerClient",
    "WriteStderr",
    "WriteStdout",
    "by_launch",
    "by_slot",
    "fake_launcher",
    "open_worker",
    "start_fake_worker",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
