"""Starting real worker processes: the pool's default ``Launcher``.

Each worker starts in a session (and so a process group) of its own: Ctrl-C in the
terminal goes to the terminal's foreground process group, i.e. to ``mcpi`` alone,
and the coordinator decides what happens to its workers (cancel, shutdown, reap)
instead of every process getting SIGINT at once and printing its own traceback.

Because the group is the worker's own, ``kill`` reaches everything the worker started
(a wrapper's child, a forked helper still holding the worker's pipes). That is only
safe while the group id is certainly ours: until the worker is reaped, its pid — the
group's id — cannot be given to another process. So ``wait_exited`` waits through a
pidfd, which says the process has exited without reaping it, and the connection kills
what is left of the group before it reaps the worker (``WorkerConnection.stop``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from mcpi_coordinator.launch.redact import shown_command
from mcpi_coordinator.launch.transport import Launcher, WorkerProcess


def default_max_starting() -> int:
    """Local workers starting at once by default (``WorkerPool(max_starting=)``): two
    per CPU. A start is CPU-bound (~0.2 s of imports), so more at once finish no
    sooner, take CPU from the coordinator, and leave more workers between exec and
    their parent-death backstop should the coordinator die (benchmarks/fleet.py)."""
    return 2 * (os.cpu_count() or 1)


def default_worker_command() -> list[str]:
    """This interpreter's ``mcpi-worker``, running the very ``mcpi_worker`` package this
    process imported.

    ``python -m`` puts the current directory first on the module path: started from a
    directory holding another ``mcpi_worker`` (a checkout of another version), the
    workers would run that code, not the coordinator's, and numba would compile a second
    cache beside it. ``-P`` leaves the current directory out; only a coordinator whose
    own package comes from the current directory starts its workers without it.
    """
    import mcpi_worker

    package_parent = Path(mcpi_worker.__file__).resolve().parent.parent
    try:
        from_here = package_parent == Path.cwd().resolve()
    except OSError:  # the current directory was removed: nothing to import from it
        from_here = False
    return [sys.executable, *([] if from_here else ["-P"]), "-m", "mcpi_worker"]


class SessionProcess:
    """A ``trio.Process`` in a session of its own, as a ``transport.WorkerProcess``.

    ``args`` is the argument vector, for error messages.
    """

    def __init__(self, process: trio.Process, args: Sequence[str]) -> None:
        self._process = process
        self.args = list(args)
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr
        self._reaped: int | None = None
        self._exited: trio.Event | None = None
        """Set once the process has exited; the first ``wait_exited`` watches for it."""
        self._pidfd: int | None = None
        try:
            # Opened before anything can reap it, so this pidfd is certainly this process's.
            self._pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: exit is seen only by reaping
            self._pidfd = None

    def __repr__(self) -> str:
        return f"<SessionProcess pid={self.pid} returncode={self._reaped} args={self.args!r}>"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._reaped

    async def wait_exited(self) -> int:
        while True:
            if self._reaped is not None:
                return self._reaped
            try:
                status = _peek_exit_status(self.pid)
            except ChildProcessError:  # reaped behind our back: nothing is left to guard
                return await self.wait()
            if status is not None:
                return status
            if self._pidfd is None:
                return await self.wait()
            if self._exited is None:
                # One task watches the pidfd (Trio allows one waiter per fd); the others
                # wait for it, and look again when it is done (or was cancelled).
                self._exited = trio.Event()
                try:
                    await trio.lowlevel.wait_readable(self._pidfd)
                finally:
                    exited, self._exited = self._exited, None
                    exited.set()
            else:
                await self._exited.wait()

    async def wait(self) -> int:
        if self._reaped is None:
            self._reaped = await self._process.wait()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self._reaped

    def terminate(self) -> None:
        try:
            if self._reaped is None and _peek_exit_status(self.pid) is None:
                os.kill(self.pid, signal.SIGTERM)
        except (ProcessLookupError, ChildProcessError):
            pass

    def kill(self) -> None:
        # Until the leader is reaped its pid cannot be reused, so the group id is still
        # ours; once it is reaped we must not signal that number at all.
        if self._reaped is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # the leader changed its group and uid: signal it alone
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _peek_exit_status(pid: int) -> int | None:
    """The exit status of our child ``pid`` if it has exited (negative -N: killed by
    signal N), without reaping it; None while it runs. ``ChildProcessError`` once it
    has been reaped."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


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
    """The worker's command line for error messages (secret values left out:
    ``redact``), or a placeholder for fakes."""
    args = getattr(process, "args", None)
    if isinstance(args, list | tuple) and args:
        return shown_command([str(a) for a in args])
    return type(process).__name__
