"""In-process fake workers: ``FakeWorkerCore`` driven by a Trio task, wired like a process.

A ``FakeWorkerProcess`` satisfies ``mcpi_coordinator.launch.transport.WorkerProcess``: the
coordinator gets ``stdin``/``stdout``/``stderr`` streams, ``wait_exited()``, ``wait()``,
``terminate()``, ``kill()``, ``pid`` and ``returncode``, as with a real process. The streams are
real OS pipes (``trio.lowlevel.FdStream``), so the coordinator sees a real pipe's
64 KiB buffer, back-pressure, EOF and broken-pipe errors; only the worker's side runs
as a task in a nursery the caller owns instead of in a child process.

Sleeps are ``trio.sleep``-based, so under ``autojump_clock`` a "slow" or "hanging" fake
costs no real time. Counts are computed with the real kernels, synchronously inside
the task: keep ``points`` small in tests.

Typical use, injecting fakes into a pool through its ``launcher`` parameter::

    async with trio.open_nursery() as nursery:
        launcher = fake_launcher(nursery, by_launch(FakeBehaviour(crash_after=1)))
        async with WorkerPool(size=2, launcher=launcher) as pool:
            ...
        assert len(launcher.launched) == 3  # two workers and one replacement
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Mapping
from typing import Final

import trio

from mcpi_coordinator.launch.transport import Launcher
from mcpi_coordinator.testing.script import (
    EXIT_OK,
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
    flood_chunks,
)

_FAKE_PIDS: Final = itertools.count(10_000_000)
"""Fake pids start above Linux's largest possible pid (2**22), so a fake pid can never
name a real process, even if some code wrongly calls ``os.kill`` on it."""

BehaviourFor = Callable[[int], FakeBehaviour]


class FakeWorkerProcess:
    """One in-process fake worker. Create it with ``start_fake_worker``.

    Besides the ``WorkerProcess`` interface it exposes, for tests: ``behaviour``,
    ``index`` (the pool slot it was launched for, or None), ``stats`` (messages
    received, results and errors sent) and ``signals`` (the signals sent to it).
    """

    def __init__(self, behaviour: FakeBehaviour, index: int | None = None) -> None:
        self.behaviour = behaviour
        self.index = index
        self._pid = next(_FAKE_PIDS)
        self._core = FakeWorkerCore(behaviour, pid=self._pid)
        self._returncode: int | None = None
        self._exited = trio.Event()
        self._task_scope = trio.CancelScope()
        self.signals: list[signal.Signals] = []
        # Each pipe: the coordinator's end is public, the worker's end is ours.
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.stdin: trio.abc.SendStream | None = trio.lowlevel.FdStream(stdin_w)
        self.stdout: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(stdout_r)
        self.stderr: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(stderr_r)
        self._in = trio.lowlevel.FdStream(stdin_r)
        self._out = trio.lowlevel.FdStream(stdout_w)
        self._err = trio.lowlevel.FdStream(stderr_w)

    def __repr__(self) -> str:
        state = "running" if self._returncode is None else f"returncode={self._returncode}"
        return f"<FakeWorkerProcess pid={self._pid} index={self.index} {state} {self.behaviour.faults}>"

    # ------------------------------------------------------------ WorkerProcess

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def stats(self) -> FakeStats:
        return self._core.stats

    async def wait_exited(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    async def wait(self) -> int:
        """A fake leaves nothing to reap: the same as ``wait_exited``."""
        return await self.wait_exited()

    def terminate(self) -> None:
        """SIGTERM: ends the fake with returncode -15, unless it ignores SIGTERM. Like a
        signal to a process that has exited, it has no effect (and is not recorded) then."""
        if self._returncode is not None:
            return
        self.signals.append(signal.SIGTERM)
        if not self.behaviour.ignore_sigterm:
            self._end(-signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: ends the fake with returncode -9 at once, whatever it is doing."""
        if self._returncode is not None:
            return
        self.signals.append(signal.SIGKILL)
        self._end(-signal.SIGKILL)

    # ---------------------------------------------------------------- the task

    async def run(self) -> None:
        """The fake's body; ``start_fake_worker`` runs it in the caller's nursery."""
        with self._task_scope:
            try:
                code = await self._serve()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The coordinator closed our stdout or stderr (EPIPE): nobody is
                # listening any more, so end quietly, as the real worker does.
                code = EXIT_OK
            self._end(code)

    async def _serve(self) -> int:
        core = self._core
        outcome = await self._perform(core.start())
        eof = False
        while outcome is None:
            deadline = core.deadline
            now = trio.current_time()
            if deadline is not None and deadline <= now:
                outcome = await self._perform(core.advance(now))
                continue
            data = None
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                if eof:  # nothing more to read: only the running samples are left to end
                    await trio.sleep_forever()
                data = await self._in.receive_some(1 << 16)
            eof = eof or data == b""
            now = trio.current_time()
            if data is None:
                actions = core.advance(now)
            elif data:
                actions = core.receive_data(data, now)
            else:
                actions = core.receive_eof(now)
            outcome = await self._perform(actions)
        return outcome

    async def _perform(self, actions: list[Action]) -> int | None:
        """Do the actions; the exit code if one of them ends the process, else None."""
        for action in actions:
            if isinstance(action, WriteStdout):
                await self._out.send_all(action.data)
            elif isinstance(action, WriteStderr):
                await self._err.send_all(action.data)
            elif isinstance(action, FloodStderr):
                for chunk in flood_chunks(action.nbytes):
                    await self._err.send_all(chunk)
            elif isinstance(action, Exit):
                return action.code
            elif isinstance(action, Hang):
                await trio.sleep_forever()
            elif isinstance(action, CloseStdout):
                self._out.close()  # the reader sees EOF; the core writes nothing more
        return None

    def _end(self, code: int) -> None:
        """The process is gone: its pipe ends close, its exit status is ``code``."""
        if self._returncode is not None:
            return
        self._returncode = code
        self._task_scope.cancel()
        for end in (self._in, self._out, self._err):
            end.close()
        self._exited.set()


async def start_fake_worker(
    nursery: trio.Nursery, behaviour: FakeBehaviour = FakeBehaviour(), index: int | None = None
) -> FakeWorkerProcess:
    """Start one fake worker whose body runs as a task in ``nursery``; return it, with
    its pipes open and its handshake not yet done.

    ``behaviour`` is what it does (default: a correct worker); ``index`` is recorded as
    its ``index`` (the pool slot it stands for, or None). The task ends when the fake
    exits or is killed; a fake that hangs keeps the nursery open until someone calls
    ``kill()``, just as a hung child process keeps a parent waiting. Raises
    ``RuntimeError`` if ``nursery`` is closed (as ``start_soon`` does), and ``OSError``
    if its pipes cannot be made (out of file descriptors).
    """
    process = FakeWorkerProcess(behaviour, index)
    nursery.start_soon(process.run, name=f"fake worker pid={process.pid}")
    # Shielded: a plain checkpoint let a cancelled caller (a pool closing while this slot
    # restarted) lose the handle of a fake already started, which then waited for input
    # for ever; a real spawn returns its process however the caller is cancelled.
    await trio.lowlevel.cancel_shielded_checkpoint()
    return process


class FakeLauncher:
    """A ``transport.Launcher`` that starts in-process fakes and remembers each one.

    ``launched`` lists every process started, in order (replacements included);
    ``launches_for(i)`` those started for slot ``i``; ``alive()`` those not yet exited —
    the in-process equivalent of looking at the process table.
    """

    def __init__(self, nursery: trio.Nursery, behaviour_for: BehaviourFor | FakeBehaviour) -> None:
        self._nursery = nursery
        self._behaviour_for: BehaviourFor = (
            (lambda index: behaviour_for) if isinstance(behaviour_for, FakeBehaviour) else behaviour_for
        )
        self.launched: list[FakeWorkerProcess] = []

    async def __call__(self, index: int) -> FakeWorkerProcess:
        """Start a fake for slot ``index`` with the behaviour chosen for it (the pool
        calls this); raises as ``start_fake_worker`` does."""
        behaviour = self._behaviour_for(index)
        process = await start_fake_worker(self._nursery, behaviour, index)
        self.launched.append(process)
        return process

    def launches_for(self, index: int) -> list[FakeWorkerProcess]:
        """The fakes started for slot ``index``, in order (empty if none)."""
        return [p for p in self.launched if p.index == index]

    def alive(self) -> list[FakeWorkerProcess]:
        """The fakes started and not yet exited (no ``returncode``)."""
        return [p for p in self.launched if p.returncode is None]

    @property
    def restarts(self) -> int:
        """Launches beyond the first one of each slot."""
        return len(self.launched) - len({p.index for p in self.launched})


def fake_launcher(nursery: trio.Nursery, behaviour_for: BehaviourFor | FakeBehaviour) -> FakeLauncher:
    """A launcher of in-process fakes for ``WorkerPool(launcher=...)``.

    ``behaviour_for`` is one ``FakeBehaviour`` for every launch, or a function called
    at each launch with the pool slot index (see ``by_launch`` and ``by_slot``). The
    fakes' tasks run in ``nursery``, which must outlive the pool. Returns the
    ``FakeLauncher``, which records every launch. Never raises itself; an exception
    from ``behaviour_for`` at a launch is the test's bug and propagates out of the pool
    (only an ``OSError`` counts as a failed start).
    """
    launcher = FakeLauncher(nursery, behaviour_for)
    _: Launcher = launcher  # a FakeLauncher is a transport.Launcher
    return launcher


def by_launch(*behaviours: FakeBehaviour, then: FakeBehaviour = FakeBehaviour()) -> BehaviourFor:
    """The i-th launch (counting every slot, replacements included) gets ``behaviours[i]``;
    every launch after them gets ``then``. ``by_launch(FakeBehaviour(crash_after=1))``: the
    first worker started crashes, all others are well behaved. Returns the function to
    give ``fake_launcher``; neither raises."""
    launches = itertools.count()

    def behaviour_for(index: int) -> FakeBehaviour:
        n = next(launches)
        return behaviours[n] if n < len(behaviours) else then

    return behaviour_for


def by_slot(
    behaviours: Mapping[int, FakeBehaviour],
    *,
    launches: int | None = 1,
    then: FakeBehaviour = FakeBehaviour(),
) -> BehaviourFor:
    """Slot ``i`` gets ``behaviours[i]`` for its first ``launches`` launches (None: for
    ever, a crash loop); other slots, and replacements after that, get ``then``. Returns
    the function to give ``fake_launcher``; neither raises."""
    counts: dict[int, int] = {}

    def behaviour_for(index: int) -> FakeBehaviour:
        n = counts.get(index, 0)
        counts[index] = n + 1
        if index in behaviours and (launches is None or n < launches):
            return behaviours[index]
        return then

    return behaviour_for
