"""An idle worker spins only while the machine has a CPU to spare (``mcpi_worker.spare_cpu``).

On a machine whose CPUs are all taken, a worker spinning after its answer kept the CPU
the coordinator had been queued on to read that answer, and every round trip paid the
whole spin (docs/bench.md). Checked two ways:

- ``SpareCpu`` and ``runnable_tasks`` with the machine's figures and the clock given by
  the test, and ``runnable_tasks`` against this machine's real ``/proc/loadavg``;
- the worker loop (``server.Worker`` over OS pipes, its real reader thread) told that no
  CPU is spare, with a spin of an hour: the reader goes to sleep in ``read`` as soon as
  it has answered (the kernel's ``wchan`` of the thread says where it sleeps), where
  told that one is spare it is still spinning.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from worker_pipes import TIMEOUT, serving_over_pipes

from mcpi_worker.protocol import Ping, Pong
from mcpi_worker.server import Worker
from mcpi_worker.spare_cpu import SpareCpu, runnable_tasks

AN_HOUR_S = 3600.0
"""A spin far longer than any test: a reader that spins is still spinning when it is looked at."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Runnable:
    """Stands in for ``runnable_tasks``: returns ``figure`` and counts the looks."""

    def __init__(self, figure: float | None) -> None:
        self.figure = figure
        self.looks = 0

    def __call__(self) -> float | None:
        self.looks += 1
        return self.figure


@pytest.mark.parametrize(
    ("runnable", "spare"),
    [(1, True), (2, True), (3, False), (40, False), (1.5, True), (2.01, False), (None, True)],
)
def test_a_cpu_is_spare_while_the_runnable_tasks_are_no_more_than_the_cpus(runnable: float | None, spare: bool) -> None:
    assert SpareCpu(cpus=2, runnable=Runnable(runnable), clock=Clock())() is spare


def test_the_machine_is_looked_at_no_more_often_than_every_look_every_s() -> None:
    clock, runnable = Clock(), Runnable(1)
    spare_cpu = SpareCpu(cpus=2, runnable=runnable, clock=clock, look_every_s=0.01)
    assert spare_cpu()
    runnable.figure = 9  # the machine fills up
    clock.now = 0.009
    assert spare_cpu() and runnable.looks == 1  # the answer still stands
    clock.now = 0.010
    assert not spare_cpu() and runnable.looks == 2
    runnable.figure = 2
    assert not spare_cpu() and runnable.looks == 2
    clock.now = 0.025
    assert spare_cpu() and runnable.looks == 3


def test_runnable_tasks_reads_the_fourth_field_of_loadavg(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("11.06 8.82 5.17 5/182 25266\n")
    assert runnable_tasks(loadavg, load_average=_no_load_average) == 5


@pytest.mark.parametrize("text", [None, "", "1.0 2.0\n", "1.0 2.0 3.0 x/182 1\n"])
def test_without_a_readable_loadavg_the_one_minute_load_average_is_used(tmp_path: Path, text: str | None) -> None:
    loadavg = tmp_path / "loadavg"
    if text is not None:
        loadavg.write_text(text)
    assert runnable_tasks(loadavg, load_average=lambda: (3.25, 2.0, 1.0)) == 3.25
    assert runnable_tasks(loadavg, load_average=_no_load_average) is None


def _no_load_average() -> tuple[float, float, float]:
    raise OSError("load average unobtainable")


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="no /proc/loadavg on this system")
def test_this_machines_runnable_tasks_count_the_thread_that_asks() -> None:
    runnable = runnable_tasks(load_average=_no_load_average)
    assert isinstance(runnable, int) and runnable >= 1


# ------------------------------------------------------------------ the worker loop


def _wchan(thread_id: int) -> str:
    """Where in the kernel the thread sleeps ('0' while it runs)."""
    return Path(f"/proc/self/task/{thread_id}/wchan").read_text()


def _asleep_in_read(thread_id: int) -> bool:
    return "pipe_read" in _wchan(thread_id)  # pipe_read, or anon_pipe_read on Linux 6.x


@pytest.fixture
def wchan_shows_pipe_reads() -> None:
    """Skip where the kernel does not say where a thread sleeps (no /proc, or wchan hidden)."""
    if not Path("/proc/self/task").exists():
        pytest.skip("no /proc/self/task on this system")
    read_end, write_end = os.pipe()
    probe = threading.Thread(target=os.read, args=(read_end, 1), daemon=True)
    probe.start()
    try:
        for _ in range(1000):
            if probe.native_id is not None and _asleep_in_read(probe.native_id):
                return
            threading.Event().wait(0.01)
        pytest.skip("this kernel does not show a thread asleep in a pipe read through wchan")
    finally:
        os.write(write_end, b"x")
        probe.join(TIMEOUT)
        os.close(read_end)
        os.close(write_end)


async def _answered_ping_then(spare_cpu: Callable[[], bool], look: Callable[[int], Awaitable[None]]) -> None:
    """A ``Worker`` spinning up to an hour once idle, asked ``spare_cpu``: handshake and one
    ping, then ``look(reader_thread_id)``; then EOF, which a spinning reader sees too."""
    with trio.fail_after(TIMEOUT):
        async with serving_over_pipes(lambda i, o: Worker(i, o, spin_s=AN_HOUR_S, spare_cpu=spare_cpu)) as client:
            await client.handshake()
            await client.send(Ping(1))
            assert isinstance(await client.receive(), Pong)
            (reader,) = [t for t in threading.enumerate() if t.name == "mcpi-reader"]
            assert reader.native_id is not None
            await look(reader.native_id)


@pytest.mark.usefixtures("quiet_structlog", "wchan_shows_pipe_reads")
async def test_with_no_cpu_to_spare_an_idle_reader_sleeps_in_read_at_once() -> None:
    async def sleeps_in_read(reader: int) -> None:
        while not _asleep_in_read(reader):  # with a spin of an hour, only a reader that skipped it
            await trio.sleep(0.001)

    await _answered_ping_then(lambda: False, sleeps_in_read)


@pytest.mark.usefixtures("quiet_structlog", "wchan_shows_pipe_reads")
async def test_with_a_cpu_to_spare_an_idle_reader_spins_instead() -> None:
    async def still_spinning(reader: int) -> None:
        for _ in range(20):
            await trio.sleep(0.001)
            assert not _asleep_in_read(reader), _wchan(reader)

    await _answered_ping_then(lambda: True, still_spinning)
