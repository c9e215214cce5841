"""``mcpi estimate`` in a real terminal, driven through tmux as a person would: the
progress line (start-up phase, then the bar), Ctrl-C, and what stays on the screen.

tmux gives a real terminal of a chosen size; ``capture-pane`` reads the screen as the
person sees it (after every cursor movement and erase), which is what the progress
line's redrawing must get right. ``.ci/run`` installs tmux; without it these tests skip,
except under CI, where they fail.
Every wait is bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest
from command_line import FAKE_WORKER, PYTHON

from mcpi_coordinator.testing.processes import workers_among

# Under CI (which installs tmux) a missing tmux is a failure, not a skip.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tmux") is None and not os.environ.get("CI"),
        reason="tmux is not installed (.ci/run installs it)",
    ),
]



class Terminal:
    """One tmux session running a shell, ``columns`` wide, on its own server socket."""

    def __init__(self, columns: int, rows: int = 15) -> None:
        self.socket = f"mcpi-test-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPI_", "TMUX")) and k != "NO_COLOR"}
        self._tmux("new-session", "-d", "-x", str(columns), "-y", str(rows), "sh", env=env)
        self._tmux("set-option", "-g", "status", "off")

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True, text=True, timeout=30, check=True, env=env,
        )  # fmt: skip
        return done.stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-l", line)
        self._tmux("send-keys", "Enter")

    def ctrl_c(self) -> None:
        self._tmux("send-keys", "C-c")

    def screen(self) -> list[str]:
        return self._tmux("capture-pane", "-p").rstrip("\n").splitlines()

    def wait_for(self, found: Callable[[list[str]], bool], what: str, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if found(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"never saw {what}; the screen:\n" + "\n".join(lines))
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30, check=False
        )


@pytest.fixture
def terminal_of() -> Iterator[Callable[[int], Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(columns: int) -> Terminal:
        terminal = Terminal(columns)
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.close()


def _mcpi_processes(seed: str) -> list[psutil.Process]:
    """The mcpi coordinator started with ``--seed seed`` (unique to one test)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "mcpi_coordinator" in cmdline and seed in cmdline and "sh" not in cmdline[:1]:
            found.append(process)
    return found


def _workers_of(seed: str, count: int, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        coordinators = _mcpi_processes(seed)
        workers = [w for c in coordinators for w in workers_among(c.children(recursive=True))]
        if len(workers) >= count:
            return workers
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)


BAR = re.compile(
    r"^━+ +(\d+)% · ([\d,.]+[kMGTP]?)/([\d,.]+[kMGTP]?) points · ETA [\d:?]+"
    r"( · π ≈ \d\.\d+ ± \d\.\d+)?( · [\d.,]+ [kMGT]?/s)?$"
)


def test_the_progress_bar_and_ctrl_c_in_a_real_terminal(terminal_of: Callable[[int], Terminal]) -> None:
    seed = str(uuid.uuid4().int % 10**12)
    terminal = terminal_of(120)
    terminal.type(f"{PYTHON} -m mcpi_coordinator estimate -n 1e13 -w 2 --seed {seed}; echo exit=$?")
    screen = terminal.wait_for(
        lambda s: any(BAR.match(line) and "π ≈" in line for line in s), "the progress bar"
    )
    bar = next(line for line in screen if BAR.match(line))
    match = BAR.match(bar)
    assert match is not None and match.group(3) in ("10,000,000,000,000", "10T")  # short when it must
    assert len(bar) <= 118  # two columns kept free for the terminal's ^C echo
    workers = _workers_of(seed, 2)
    terminal.ctrl_c()
    screen = terminal.wait_for(lambda s: "exit=130" in s, "the exit status")
    at = screen.index("exit=130")
    assert screen[at - 1] == f"mcpi estimate: interrupted (seed {seed}); every worker was stopped"
    assert not any("━" in line for line in screen), "the bar was left on the screen"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_the_start_up_phase_names_whom_it_waits_on_and_ctrl_c_stops_it(
    terminal_of: Callable[[int], Terminal],
) -> None:
    seed = str(uuid.uuid4().int % 10**12)
    terminal = terminal_of(100)
    # Workers that never answer the handshake: the run stays in its start-up phase.
    terminal.type(
        f"{PYTHON} -m mcpi_coordinator estimate -n 1e6 --chunk-size 5e5 -w 2 --seed {seed} "
        f"--startup-timeout 60 --worker-cmd '{FAKE_WORKER} --silent'; echo exit=$?"
    )
    starting = re.compile(r"^starting 2 workers: 0 ready · \d:\d\d · waiting on worker \d \(/")
    screen = terminal.wait_for(lambda s: any(starting.match(line) for line in s), "the start-up line")
    line = next(line for line in screen if starting.match(line))
    assert len(line) <= 98 and line.endswith("…")  # the long command is cut to fit, not wrapped
    workers = _workers_of(seed, 2)
    terminal.ctrl_c()
    screen = terminal.wait_for(lambda s: "exit=130" in s, "the exit status")
    at = screen.index("exit=130")
    assert screen[at - 1] == f"mcpi estimate: interrupted (seed {seed}); every worker was stopped"
    assert not any(line.startswith("starting ") for line in screen)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_a_finished_run_leaves_one_clean_line_and_fits_60_columns(
    terminal_of: Callable[[int], Terminal],
) -> None:
    terminal = terminal_of(60)
    terminal.type(f"{PYTHON} -m mcpi_coordinator estimate -n 2e8 -w 2 -s 5; echo exit=$?")
    screen = terminal.wait_for(lambda s: "exit=0" in s, "the end of the run", timeout=120)
    done = [line for line in screen if line.startswith("mcpi estimate: sampled ")]
    assert len(done) == 1, screen
    assert re.fullmatch(
        r"mcpi estimate: sampled 200,000,000 points in [\d.]+ s( \([\d.]+ [kMG] points/s\))?", done[0]
    )
    assert not any("━" in line for line in screen)
    assert all(len(line) <= 60 for line in screen)
    seed_at = next(i for i, line in enumerate(screen) if line.startswith("seed "))
    assert screen[seed_at] == "seed            5"
    assert any(line.startswith("π ≈             3.14") for line in screen)
