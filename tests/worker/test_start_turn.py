"""Workers started together take turns at their start (``mcpi_worker.start_turn``): a real
``mcpi-worker`` given a turn to wait for imports nothing before it comes (or its ``hello``
does), and passes its own on once it has started."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_process import TIMEOUT, WorkerUnderTest

from mcpi_worker.constants import START_TURN
from mcpi_worker.protocol import Welcome
from mcpi_worker.start_turn import wait_for_turn

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a worker's state in /proc")

PROTOCOL_LIBRARY = "_cmsgpack"
"""msgpack's compiled half, which a worker loads with its protocol: mapped once it imports."""

POLL_CALLS = {"7", "271", "73"}
"""poll and ppoll on x86-64, ppoll on arm64 (which has no poll): ``select.poll``'s wait."""


def parked_in_its_wait(pid: int) -> bool:
    """Whether ``pid`` sleeps in ``poll``: the turn's wait, for a worker that has not begun
    its imports (before them it makes no other call that sleeps)."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return state == "S" and call in POLL_CALLS


def wait_until_parked(worker: WorkerUnderTest) -> None:
    """Look until the worker sleeps in its wait (``TIMEOUT``: a guard against a hang), not
    having begun its imports."""
    give_up = time.monotonic() + TIMEOUT
    while not parked_in_its_wait(worker.pid):
        assert not mapped(worker.pid, PROTOCOL_LIBRARY), f"the worker did not wait for its turn; {worker.doing()}"
        assert worker.proc.poll() is None, worker.doing()
        assert time.monotonic() < give_up, f"the worker never waited for its turn; {worker.doing()}"
        time.sleep(0.001)


def mapped(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def turn() -> Iterator[tuple[int, int, int, int]]:
    """Two pipes, (read, write) each: the turn a worker waits on and the one it passes on."""
    fds = [*os.pipe(), *os.pipe()]
    yield fds[0], fds[1], fds[2], fds[3]
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def started_with_turn(turn: tuple[int, int, int, int]) -> WorkerUnderTest:
    """A real worker waiting on ``turn``'s first pipe and passing on its second; our
    copies of its ends are closed, so that the end of file on either means its writer
    closed it."""
    wait_read, _, _, pass_write = turn
    worker = WorkerUnderTest(
        "--log-level", "warning", env={START_TURN: f"{wait_read},{pass_write}"}, pass_fds=(wait_read, pass_write)
    )
    os.close(wait_read)
    os.close(pass_write)
    return worker


def test_a_worker_imports_nothing_before_its_turn_and_passes_its_own_on_once_started(
    turn: tuple[int, int, int, int],
) -> None:
    _, wait_write, pass_read, _ = turn
    worker = started_with_turn(turn)
    try:
        wait_until_parked(worker)
        os.close(wait_write)  # the worker before it has started (or died): its turn
        assert os.read(pass_read, 1) == b""  # it passed its own on: the end of file
        assert isinstance(worker.handshake(), Welcome)
        assert mapped(worker.pid, PROTOCOL_LIBRARY)
        worker.close_stdin()
        assert worker.wait() == 0
    finally:
        worker.kill()


def test_a_worker_whose_turn_never_comes_starts_at_its_hello(turn: tuple[int, int, int, int]) -> None:
    """The ``hello`` means the command has started: nothing is left to leave a core to."""
    worker = started_with_turn(turn)
    try:
        wait_until_parked(worker)
        assert isinstance(worker.handshake(), Welcome)  # the turn's pipe is still open
        worker.close_stdin()
        assert worker.wait() == 0
    finally:
        worker.kill()


@pytest.mark.parametrize("value", ["", ",", "0,1", "1,2", "2,", "junk", "9999,9998", "-3,4", "1" * 30 + ","])
def test_a_turn_that_names_no_inherited_pipe_is_not_waited_for(value: str) -> None:
    """A stray variable never makes a worker wait, nor close a descriptor it did not get
    for its turn (0 to 2 never are; nor a file); and a process the worker starts does not
    see it."""
    environ = {START_TURN: value, "OTHER": "kept"}
    with open(os.devnull, "rb") as null:
        wait_for_turn(environ, stdin=null.fileno()).pass_on()
    assert environ == {"OTHER": "kept"}
    for fd in (0, 1, 2):
        os.fstat(fd)  # still open


def test_a_turn_on_a_file_is_not_waited_for_nor_closed(tmp_path: Path) -> None:
    with open(tmp_path / "file", "wb") as file:
        environ = {START_TURN: f"{file.fileno()},{file.fileno()}"}
        wait_for_turn(environ).pass_on()
        os.fstat(file.fileno())  # still open


def test_one_pipe_named_to_wait_on_and_to_pass_on_is_not_closed_twice() -> None:
    """``"N,N"`` (never mcpi's: each worker waits on one pipe and passes on another) is a
    stray value: were N waited on, closed, and closed again by ``pass_on``, the second close
    would hit whatever file had taken the number meanwhile."""
    read_end, write_end = os.pipe()
    try:
        os.close(write_end)  # its end of file: nothing to wait for, if it were waited on
        turn = wait_for_turn({START_TURN: f"{read_end},{read_end}"})
        with open(os.devnull, "rb") as meanwhile:  # the lowest free number: N, had N been closed
            turn.pass_on()
            os.fstat(meanwhile.fileno())  # still open: pass_on closed no other file
        os.fstat(read_end)  # nor the pipe: it was not this turn's to close
    finally:
        os.close(read_end)
