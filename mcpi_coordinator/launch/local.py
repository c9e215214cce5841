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
The session id is the worker's pid too: when something still holds the worker's pipes
after its group is killed, every process of its session is killed as well
(``end_session``), which reaches a child that moved to a group of its own.

A process the worker started in a session of its own (``setsid``) is in no group or
session of ours, and outlived the run. On Linux the ``mcpi`` command makes itself a *child
subreaper* (``adopting_orphans``): whatever its workers leave behind is re-parented to
it when they exit, not to init, and it kills and reaps every such orphan before it
returns, then gives the role back. See ``adopting_orphans`` for what this does not
catch.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, Protocol

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.launch import early
from mcpi_coordinator.launch.redact import shown_command
from mcpi_coordinator.launch.transport import Launcher, WorkerProcess
from mcpi_worker.constants import WARMING_MODULE

log = logs.get_logger("mcpi.launch")

PR_SET_CHILD_SUBREAPER: Final[int] = 36
"""``prctl`` option (Linux 3.4+): orphaned descendants are re-parented to this process."""

PR_GET_CHILD_SUBREAPER: Final[int] = 37
"""``prctl`` option: whether this process is a child subreaper (written to an ``int``)."""

ORPHAN_WAIT_S: Final[float] = 5.0
"""How long ``end_orphans`` waits, in all, for the orphans it killed to exit."""

ORPHAN_ROUNDS: Final[int] = 100
"""Rounds of killing adopted orphans: killing one re-parents its own children to us,
which the next round kills; a process forking faster than that is given up on."""


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux; None elsewhere or where it cannot be found."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def is_subreaper() -> bool | None:
    """Whether this process is a child subreaper now; None where that cannot be told
    (another system, or ``prctl`` refused)."""
    prctl = _prctl()
    if prctl is None:
        return None
    setting = ctypes.c_int(0)
    if prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(setting), 0, 0, 0) != 0:
        return None
    return bool(setting.value)


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (Linux), or stop it being one: while it is, a
    descendant whose parent exits is re-parented to it instead of to init. False where
    that is not possible (another system, or ``prctl`` refused)."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def become_subreaper() -> bool:
    """``set_subreaper(True)``, for good: for a process of its own that means to adopt
    until it exits. A block of a longer-lived process uses ``adopting_orphans``, which
    gives the role back."""
    return set_subreaper(True)


def own_children() -> dict[int, str]:
    """This process's children, from ``/proc`` (none elsewhere): pid -> state (``Z``: a
    zombie, exited and not yet reaped).

    The kernel lists each thread's children (``/proc/self/task/TID/children``), the
    orphans a subreaper adopted among them, so only those processes are read; a run
    looks twice (adopting orphans, at its start and end), and reading every process's
    ``stat`` instead takes a few milliseconds on a machine running a few hundred. Where
    the lists are missing (a kernel without ``CONFIG_PROC_CHILDREN``), or a thread came or
    went while they were read (its children may have moved to a thread read already),
    every process is read."""
    listed = _listed_children()
    candidates = _all_processes() if listed is None else listed
    me = os.getpid()
    children: dict[int, str] = {}
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if int(fields[1]) == me:  # fields: state, ppid, ...
            children[pid] = fields[0].decode()
    return children


def _listed_children() -> list[int] | None:
    """The pids the kernel lists as children of this process's threads; None where it
    does not list them, or the threads changed while they were read."""
    try:
        threads = sorted(os.listdir("/proc/self/task"))
        pids = []
        for thread in threads:
            with open(f"/proc/self/task/{thread}/children", "rb") as listed:
                pids += [int(pid) for pid in listed.read().split()]
        if sorted(os.listdir("/proc/self/task")) != threads:
            return None
    except OSError:  # no /proc, no children lists, or a thread gone meanwhile
        return None
    return pids


def _all_processes() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def end_orphans(spare: Callable[[int], bool] = lambda _pid: False) -> list[int]:
    """Kill (SIGKILL, with its process group when it leads one) and reap every child of
    this process that ``spare`` does not keep, round after round until none is left;
    return the pids of those that were still running (the dead are only reaped). For a
    subreaper these are the orphans its workers left behind, once every worker has been
    reaped. A child we have not reaped keeps its pid, and so its group id, ours: the
    signal cannot reach a stranger. One still there ``ORPHAN_WAIT_S`` after SIGKILL (no
    signal of ours reaches it, or it is in uninterruptible sleep) is left running, and
    named in one ``orphans_left_running`` warning, rather than waited for without end."""
    ended: list[int] = []
    unmoved: set[int] = set()
    deadline = time.monotonic() + ORPHAN_WAIT_S
    for _ in range(ORPHAN_ROUNDS):
        children = own_children()
        orphans = [pid for pid in children if not spare(pid) and pid not in unmoved]
        if not orphans:
            break
        for pid in orphans:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in orphans:
            if not _reaped_by(pid, deadline):
                unmoved.add(pid)
            elif children[pid] != "Z":
                ended.append(pid)
    if unmoved:
        log.warning("orphans_left_running", pids=sorted(unmoved), why=f"not gone {ORPHAN_WAIT_S:g} s after SIGKILL")
    return ended


def _reaped_by(pid: int, deadline: float) -> bool:
    """Reap our child ``pid``, waiting for its exit until ``deadline`` (``time.monotonic``)
    at most; whether it is reaped (also by someone else meanwhile)."""
    pause = 0.0005
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return True
        except ChildProcessError:  # reaped by someone else meanwhile
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


@contextmanager
def adopting_orphans() -> Iterator[bool]:
    """For the length of the block, adopt what workers leave behind, and end it on the
    way out (yields whether this is possible here); afterwards the process adopts
    nothing more, unless it was a subreaper before the block. For a process that owns all its
    children, such as the ``mcpi`` command: every child left when the block ends that
    was not there when it began (the pool has reaped its workers by then) is an orphan
    of theirs, and is killed.

    What it does not catch: a process that left our tree by other means (started by a
    service manager, ``at``, ``systemd-run``, a container runtime, an ssh connection to
    this host), one that changed its user (no permission to signal it), one adopted by
    a nearer subreaper inside the tree that outlives the block, anything on another
    machine (remote workers are ssh's and srun's to end), and everything when this
    process is itself killed by SIGKILL (a cgroup per run would catch that, but needs a
    delegated cgroup: ``systemd-run --user --scope`` or a writable cgroup v2 subtree).
    """
    # The role is given back when the block ends: a process that stays a subreaper
    # adopts every orphan of its descendants from then on, and a process that never
    # expected children it did not start (pytest running ``cli.estimate.run``, a
    # program embedding the CLI) never reaps them, so they stay zombies.
    was_subreaper = is_subreaper()
    adopting = was_subreaper is not None and set_subreaper(True)
    # Children from before the block are not orphans (workers started early, before
    # the run: ``launch.early`` discards those the run did not take).
    before = set(own_children()) if adopting else set()
    try:
        yield adopting
    finally:
        if adopting:
            # Killing an orphan re-parents its children to us, so the role is kept while
            # the rounds run; then given back, and one more pass ends what was adopted
            # between the last round and that moment.
            def spare(pid: int) -> bool:
                return pid in before or _is_warming(pid)

            ended = end_orphans(spare=spare)
            if not was_subreaper:
                set_subreaper(False)
                ended += end_orphans(spare=spare)
            if ended:
                log.warning("orphans_ended", pids=ended, why="left behind by workers")


def _is_warming(pid: int) -> bool:
    """Whether ``pid`` is numba's cache-warming process (``constants.WARMING_MODULE``), which
    an ``mcpi-worker`` started by ``--worker-cmd`` (told nothing by ``CACHE_WARMED_BY_PARENT``)
    may start, and which is meant to outlive whoever started it: at the lowest priority,
    bounded, writing what the next run loads. Killed with the run, it never finished, and
    every run started another. False when it cannot be read (gone, or not ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return WARMING_MODULE.encode() in cmdline.read().split(b"\0")
    except OSError:
        return False


def default_worker_command(shown: str = "info") -> list[str]:
    """This interpreter's ``mcpi-worker``, running the very ``mcpi_worker`` package this
    process imported, writing the log lines a coordinator showing ``shown`` and above
    can show (``launch.early.worker_argv``, which says why): the argument vector
    ``WorkerPool`` uses when given no ``command``. A new list at each call."""
    return early.worker_argv(shown)


class _Child(Protocol):
    """What ``SessionProcess`` needs of the child it wraps (``_PopenChild`` has it, and so
    has a ``trio.Process``)."""

    @property
    def pid(self) -> int: ...

    stdin: trio.abc.SendStream | None
    stdout: trio.abc.ReceiveStream | None
    stderr: trio.abc.ReceiveStream | None

    async def wait(self) -> int: ...


class _PopenChild:
    """A worker started by ``launch.early.spawn`` (early, or by the pool), as a ``_Child``:
    its pipe ends become Trio streams, and reaping waits in a thread (``SessionProcess``
    calls ``wait`` once the pidfd says the process has exited, where there is one)."""

    def __init__(self, started: early.EarlyWorker) -> None:
        self._popen = started.process
        self.stdin: trio.abc.SendStream | None = trio.lowlevel.FdStream(started.stdin)
        self.stdout: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(started.stdout)
        self.stderr: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(started.stderr)

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def wait(self) -> int:
        code = self._popen.poll()
        if code is None:
            code = await trio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
        return code


class SessionProcess:
    """A child in a session of its own (a worker ``launch.early.spawn`` started, as a
    ``_PopenChild``; or a ``trio.Process``), as a ``transport.WorkerProcess``.

    ``args`` is the argument vector, for error messages.
    """

    def __init__(self, process: _Child, args: Sequence[str]) -> None:
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
        except PermissionError:  # it runs as another user now: see WorkerConnection.stop
            pass

    def kill(self) -> None:
        # Until the leader is reaped its pid cannot be reused, so the group id (and the
        # session id) is still ours; once it is reaped we must not signal that number at all.
        if self._reaped is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # the leader changed its group and uid: signal it alone
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # PermissionError: see WorkerConnection.stop
                pass
        if _held_open(self.stdout) or _held_open(self.stderr):
            end_session(self.pid)


def _held_open(stream: trio.abc.ReceiveStream | None) -> bool:
    """Whether some process still holds the writing end of the pipe ``stream`` reads: no
    hang-up is seen on it. False for a stream closed here (its end of file came), or one
    that is not an OS pipe."""
    if not isinstance(stream, trio.lowlevel.FdStream):
        return False
    fd = stream.fileno()
    if fd < 0:
        return False  # closed here already
    poller = select.poll()
    try:
        poller.register(fd, select.POLLIN)
    except (OSError, ValueError):
        return False
    return not any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))


def end_session(sid: int) -> list[int]:
    """SIGKILL every live process of the session ``sid`` but its leader; return their pids.

    A worker leads a session of its own (``spawn_worker``), and killing its process group
    misses what it started in another group of that session: a shell's background job
    under job control (``set -m``), GNU ``timeout``'s child. ``WorkerPool`` is no
    subreaper (only the ``mcpi`` command is: ``adopting_orphans``), so such a process,
    holding the worker's pipes, outlived the pool. Call it only while the leader is not
    reaped, which keeps ``sid`` ours. Every process is looked at (``getsid``, a system
    call each), so the caller does it only when something of the worker's still holds
    its pipes. Linux (``/proc``) only; nothing is found elsewhere."""
    ended: list[int] = []
    for _ in range(ORPHAN_ROUNDS):  # one forking as it is killed: its child is in the session too
        new = False
        for pid in _all_processes():
            if pid == sid or not _kill_in_session(pid, sid):
                continue
            if pid not in ended:  # one killed already and not dead yet is not looked for again
                ended.append(pid)
                new = True
        if not new:
            break
    return ended


def _kill_in_session(pid: int, sid: int) -> bool:
    """SIGKILL ``pid`` if it is a live process of the session ``sid``; whether it was.

    The process is held by a pidfd before its session is looked at: ``pid`` is no child
    of ours, so it may exit, be reaped by its parent and be given to a stranger between
    the look and the signal, and a pidfd signals the process it was opened on or none.
    Without pidfds (Linux before 5.3, or a Python without ``os.pidfd_open``, as conda's
    are: trio's issue 2855) the signal goes by pid."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd_open here, or no descriptor left
        pidfd = None
    try:
        if os.getsid(pid) != sid or _is_zombie(pid):
            return False
        if pidfd is None:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def _is_zombie(pid: int) -> bool:
    """``pid`` has exited and waits to be reaped (its state in ``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True  # gone meanwhile


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
    """Start one worker from an argument vector (never through a shell), or take one
    started with it as the command began (``launch.early``); return it as a
    ``WorkerProcess`` with its three pipes open, in a session (and process group) of
    its own. It has not answered the handshake yet: that is the pool's to do.

    Raises ``OSError`` if the command cannot be started (``FileNotFoundError``,
    ``PermissionError``, out of processes or descriptors); the pool's
    ``worker_failures`` turns that into a failed start."""
    argv = list(argv)
    started = early.take(argv)
    if started is not None:
        log.debug("worker_started_early", pid=started.process.pid)
    else:
        # From this thread, the one running the pool, not from Trio's thread cache
        # (``open_process``): the child dies with the thread that spawned it (``early.spawn``).
        started = early.spawn(argv)
    return SessionProcess(_PopenChild(started), argv)


def command_launcher(command_for: Callable[[int], Sequence[str]]) -> Launcher:
    """A ``Launcher`` that starts ``command_for(slot_index)`` as a local process
    (``spawn_worker``), for ``WorkerPool(launcher=...)`` when slots need different
    commands. Raises what ``spawn_worker`` and ``command_for`` raise, at each launch."""

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
