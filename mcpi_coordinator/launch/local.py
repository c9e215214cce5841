"""Starting real worker processes: the pool's default ``Launcher``.

Each worker starts in a session (and so a process group) of its own: Ctrl-C in the
terminal goes to the terminal's foreground process group, i.e. to ``mcpi`` alone,
and the coordinator decides what happens to its workers (cancel, shutdown, reap)
instead of every process getting SIGINT at once and printing its own traceback.
Because the group is the worker's own, ``terminate``/``kill`` signal the whole group:
a worker started through a wrapper (``sh -c ...``, a script that runs
``mcpi-worker``) is stopped with everything it started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

import trio

from mcpi_coordinator.launch.transport import Launcher, WorkerProcess


def default_worker_command() -> list[str]:
    """This interpreter's ``mcpi-worker``: the same environment as the coordinator."""
    return [sys.executable, "-m", "mcpi_worker"]


class SessionProcess:
    """A ``trio.Process`` whose signals go to its whole process group.

    Satisfies ``transport.WorkerProcess``. ``args`` is the argument vector, for
    error messages.
    """

    def __init__(self, process: trio.Process, args: Sequence[str]) -> None:
        self._process = process
        self.args = list(args)
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

    def __repr__(self) -> str:
        return f"<SessionProcess pid={self.pid} returncode={self.returncode} args={self.args!r}>"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: signal.Signals) -> None:
        # While the leader is unreaped its pid cannot be reused, so the group id is
        # still ours; once it is reaped we must not signal that number at all.
        if self._process.returncode is not None:
            return
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:  # the leader changed its group and uid: signal it alone
            self._process.send_signal(signum)


async def spawn_worker(argv: Sequence[str]) -> WorkerProcess:
    """Start one worker from an argument vector (never through a shell)."""
    argv = list(argv)
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return SessionProcess(process, argv)


def command_launcher(command_for: Callable[[int], Sequence[str]]) -> Launcher:
    """A ``Launcher`` that starts ``command_for(slot_index)`` as a local process."""

    async def launch(index: int) -> WorkerProcess:
        return await spawn_worker(command_for(index))

    return launch


def describe_command(process: WorkerProcess) -> str:
    """The worker's command line for error messages, or a placeholder for fakes."""
    args = getattr(process, "args", None)
    if isinstance(args, list | tuple) and args:
        return shlex.join(str(a) for a in args)
    return type(process).__name__
