"""``cli.signals``: SIGTERM and SIGHUP take Ctrl-C's path, the first stop signal names the
end, and a Ctrl-C that Python drops is sent again. In this process, with signals it sends
itself; the commands' own ends are tested in tests/cli/test_cli_ends.py and
test_cli_estimate.py. Each test waits for the ``KeyboardInterrupt`` itself, never the clock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import psutil
import pytest
from command_line import MCPI, PATIENT

from mcpi_coordinator.cli import signals

PATIENCE_S = 120.0
"""A bound on waiting for a ``KeyboardInterrupt`` that comes at once unless the code is broken."""


def _send_to_self(signum: int) -> None:
    """Send ``signum`` to this process and run its handler here: the eval loop runs a
    pending handler at the next instruction boundary, and the wait is for a signal
    that interrupts it (the event is never set)."""
    os.kill(os.getpid(), signum)
    threading.Event().wait(PATIENCE_S)


@pytest.fixture(autouse=True)
def _python_s_own_sigint() -> Iterator[None]:
    """Every test starts with Python's usual SIGINT handler and leaves it as it found it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    ("signum", "words"), [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGHUP, "hung up (SIGHUP)")]
)
def test_sigterm_and_sighup_become_ctrl_c_and_name_themselves(signum: int, words: str) -> None:
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        _send_to_self(signum)
    assert signals.stopped_by() == signum
    assert signals.stopped_words() == words


def test_ctrl_c_itself_is_interrupted() -> None:
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        _send_to_self(signal.SIGINT)
    assert signals.stopped_by() == signal.SIGINT
    assert signals.stopped_words() == "interrupted"


def test_a_second_signal_during_the_shutdown_does_not_change_what_stopped_the_run() -> None:
    """The first signal decides the exit code and the words; one that comes while the
    command shuts down interrupts that too (the command's own business), but is only
    noted after it."""
    with signals.handled():
        with pytest.raises(KeyboardInterrupt):
            _send_to_self(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # during the shutdown
            _send_to_self(signal.SIGHUP)
        assert signals.stopped_by() == signal.SIGTERM
        assert signals.stopped_words() == "terminated (SIGTERM)"


def test_sigterm_stops_a_command_whose_ctrl_c_is_ignored() -> None:
    """A job a script starts in the background has SIGINT ignored (the shell does it).
    SIGTERM became a SIGINT, which was then ignored too: ``mcpi bench`` ran on after a
    ``kill``. Found by this test; the handler now raises the interrupt itself then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        _send_to_self(signal.SIGTERM)
    assert signals.stopped_words() == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # left as the shell wanted it


def test_handled_puts_back_what_it_found_and_forgets_an_earlier_run() -> None:
    def mine(_signum: int, _frame: FrameType | None) -> None:
        """A handler of someone else's, to be found again afterwards."""

    hook_before = sys.unraisablehook
    term_before = signal.signal(signal.SIGTERM, mine)
    try:
        signals.note(signal.SIGHUP)  # an earlier command's
        with signals.handled():
            assert signals.stopped_by() == signal.SIGINT  # nothing noted in this one
            assert signal.getsignal(signal.SIGTERM) is not mine
            assert sys.unraisablehook is not hook_before
        assert signal.getsignal(signal.SIGTERM) is mine
        assert sys.unraisablehook is hook_before
    finally:
        signal.signal(signal.SIGTERM, term_before)


class _RaisingInDel:
    """An object whose ``__del__`` raises ``error``: Python cannot raise it there, and
    hands it to ``sys.unraisablehook`` instead, as it does one raised in an at-fork hook."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error


def _raise_where_python_cannot(error: BaseException) -> None:
    _RaisingInDel(error)  # dropped at once: __del__ runs here


def test_a_ctrl_c_python_dropped_comes_again() -> None:
    """A ``KeyboardInterrupt`` raised where Python cannot raise it reaches
    ``sys.unraisablehook``, which printed it and dropped it: the command went on. It is
    sent again, as a real SIGINT to the main thread, which is waiting on a lock here
    (the interrupt is the event waited for)."""
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        _raise_where_python_cannot(KeyboardInterrupt())
        threading.Event().wait(PATIENCE_S)


def test_any_other_unraisable_goes_to_the_hook_that_was_there() -> None:
    seen: list[BaseException | None] = []

    def recording(unraisable: sys.UnraisableHookArgs) -> None:
        seen.append(unraisable.exc_value)

    error = ValueError("from a __del__")
    before, sys.unraisablehook = sys.unraisablehook, recording
    try:
        with signals.handled():
            _raise_where_python_cannot(error)
    finally:
        sys.unraisablehook = before
    assert seen == [error]


@pytest.fixture
def sighup_ignored() -> Iterator[None]:
    """SIGHUP ignored, as ``nohup`` leaves it for the command it starts."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGHUP, before)


def test_an_ignored_stop_signal_stays_ignored(sighup_ignored: None) -> None:
    """Under ``nohup`` SIGHUP is ignored so that a run outlives the login: ``handled``
    put its own handler over that, and ``nohup mcpi estimate`` ended (exit 129) at the
    first hang-up. The signal receiver listens only for what is ``heard``."""
    assert signals.heard() == (signal.SIGINT, signal.SIGTERM)
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)  # nothing
        _send_to_self(signal.SIGINT)
    assert signals.stopped_by() == signal.SIGINT
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


@pytest.mark.slow
def test_nohup_mcpi_estimate_outlives_a_hang_up() -> None:
    """A real ``mcpi estimate`` under ``nohup``, hung up while its worker counts, then
    sent SIGTERM: the SIGTERM is what ends it (143), not the SIGHUP (129)."""
    nohup = shutil.which("nohup") or "/usr/bin/nohup"  # coreutils: SIGHUP ignored, then exec
    command = [nohup, *MCPI, "estimate", "--workers", "1", "--points", "1e13", "--seed", "1", *PATIENT]
    run = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        coordinator = psutil.Process(run.pid)
        deadline = time.monotonic() + PATIENCE_S
        while not [w for w in coordinator.children() if _counting(w)]:  # the run has begun
            assert time.monotonic() < deadline and run.poll() is None, "no worker counting"
            time.sleep(0.05)
        workers = coordinator.children(recursive=True)
        run.send_signal(signal.SIGHUP)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=PATIENCE_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "hung up" not in err
    _, alive = psutil.wait_procs(workers, timeout=PATIENCE_S)
    assert not alive


def _counting(process: psutil.Process) -> bool:
    """A worker that has been counting for a while (its start-up is a fraction of this)."""
    try:
        return "mcpi_worker" in " ".join(process.cmdline()) and process.cpu_times().user > 1.0
    except psutil.Error:
        return False


LIBRARY_USE = """
import signal, sys
from mcpi_coordinator.cli.main import main

def stops() -> tuple[bool, bool, bool]:
    return (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
        signal.getsignal(signal.SIGHUP) is signal.SIG_DFL,
    )

print("stops", *stops())
code = main(["estimate", "-n", "4000", "-w", "1", "-s", "1", "-q", "--kernel", "python", "--no-progress"])
print("stops", code, *stops())
"""


def test_a_program_that_imports_and_runs_the_command_keeps_its_stop_signals() -> None:
    """Only the command's way in (``cli.boot``) holds Ctrl-C, SIGTERM and SIGHUP while it
    imports. ``cli.main`` imported it too, so a program that imported ``cli.main`` had
    Ctrl-C dropped and SIGTERM ignored until it called ``main``, and for good if it never
    did. ``mcpi estimate`` run through ``main`` must leave them as it found them too. A
    real process, since this one's handlers are the tests'."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_USE], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    said = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("stops ")]
    assert said == [["True"] * 3, ["0"] + ["True"] * 3], done.stdout
