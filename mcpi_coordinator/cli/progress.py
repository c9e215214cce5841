"""The progress line on stderr, shown only when stderr is a terminal; and the watch on
the pool that feeds it and warns about a worker slow to start.

Two phases, one line: while workers start, who is ready and whom we wait on (and for
how long, and which attempt); then the bar with points done of the total, the rate,
the time left and the running estimate with its 95% half-width. The line fits the
terminal's width, dropping its least useful parts first, and ends with one clean line
saying what was done. Scripts reading ``--json`` on stdout, and logs redirected to a
file, never see any of it; the slow-start warning is a log line, so they do.

The pool is watched by polling ``WorkerPool.stats`` (a few times a second, nothing
on the hot path): the pool exposes no start-up events yet.

rich draws the line, and is imported only to draw one: a run that shows no bar (``-q``,
``--json`` with stderr not a terminal, a script) does not load it
(tests/cli/test_cli_startup.py).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.cli import text
from mcpi_coordinator.pool.stats import SlotState
from mcpi_coordinator.run.estimate import pi_statistics

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.text import Text

    from mcpi_coordinator.pool.worker_pool import WorkerPool

log = logs.get_logger("mcpi.cli")

POLL_S: Final[float] = 0.2
"""How often the pool's state is read while some worker is starting (``watch_pool``; with
none starting, it waits for a slot's state to change instead)."""

MIN_BAR: Final[int] = 10
"""Narrower than this, a bar says nothing: the other parts give way first."""
MAX_BAR: Final[int] = 30

RESERVED: Final[int] = 2
"""Columns left free at the end of the line. The terminal echoes Ctrl-C as ``^C`` at
the cursor; on a line that filled the width, the echo wraps to a new line and the bar
can no longer be erased: it would stay on the screen above the last message."""

SEPARATOR: Final[str] = " · "
COUNTS: Final[int] = 1
"""Where the points done/total go in the line's parts."""


class Phase(Enum):
    STARTING = "starting"
    SAMPLING = "sampling"


@dataclass
class RunProgress:
    """What the line shows. Written by the run (Trio's thread), read by the display's
    refresh thread: plain numbers, each written whole, so a torn read cannot happen."""

    total: int
    workers: int
    clock: Callable[[], float] = time.monotonic
    phase: Phase = Phase.STARTING
    started: float = field(init=False)
    ready: int = 0
    waiting_on: str = ""
    alive: int = 0
    points: int = 0
    """Points of every completed chunk: the bar (a resumed run's saved ones included)."""
    resumed_points: int = 0
    """Of ``points``, those a resumed run took from its checkpoint: not in the rate."""
    counted_points: int = 0
    counted_inside: int = 0
    """What the estimate counts so far (streams 0..k-1, which can lag the bar)."""
    sampling_since: float | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def start_sampling(self) -> None:
        self.phase = Phase.SAMPLING
        self.sampling_since = self.clock()

    def add_resumed(self, chunk_points: int, counted_points: int, counted_inside: int) -> None:
        """A resumed run's checkpoint holds chunks of ``chunk_points``: the bar starts
        there, the estimate counts these, and the rate leaves them out."""
        self.resumed_points += chunk_points
        self.add(chunk_points, counted_points, counted_inside)

    def add(self, chunk_points: int, counted_points: int, counted_inside: int) -> None:
        """A chunk of ``chunk_points`` completed; the estimate now counts these."""
        self.points += chunk_points
        self.counted_points = counted_points
        self.counted_inside = counted_inside

    def rate(self, now: float) -> float | None:
        computed = self.points - self.resumed_points
        if self.sampling_since is None or computed == 0 or now <= self.sampling_since:
            return None
        return computed / (now - self.sampling_since)


def progress_line(progress: RunProgress, now: float, width: int) -> Text:
    """The line for ``width`` columns: start-up or bar, least useful parts dropped first."""
    if progress.phase is Phase.STARTING:
        waited = now - progress.started
        line = f"starting {text.plural(progress.workers, 'worker')}: {progress.ready} ready"
        line += f"{SEPARATOR}{text.duration(waited)}"
        if progress.waiting_on:
            line += f"{SEPARATOR}waiting on {progress.waiting_on}"
        return _fit(line, width)

    fraction = progress.points / progress.total if progress.total else 1.0
    per_second = progress.rate(now)
    eta = (progress.total - progress.points) / per_second if per_second else math.inf
    estimate = ""
    if progress.counted_points:
        stats = pi_statistics(progress.counted_inside, progress.counted_points)
        d = _decimals(stats.half_width)
        estimate = f"π ≈ {stats.pi:.{d}f} ± {stats.half_width:.{d}f}"
    workers = f"{progress.alive}/{progress.workers} workers" if progress.alive < progress.workers else ""
    # Most useful first: a narrower terminal drops parts from the end, and writes the
    # counts short (1.07G/20.0G) before it drops anything.
    parts = [
        f"{fraction:4.0%}",
        "",
        f"ETA {text.duration(eta)}",
        estimate,
        f"{text.rate(per_second)}/s" if per_second else "",
        workers,
    ]
    counts = (
        f"{progress.points:,}/{progress.total:,} points",
        f"{text.short_count(progress.points)}/{text.short_count(progress.total)} points",
        f"{text.short_count(progress.points)}/{text.short_count(progress.total)}",
    )
    usable = width - RESERVED
    bar_width = max(MIN_BAR, min(MAX_BAR, usable // 5))
    tail = parts[0]
    for keep in range(len(parts), 0, -1):
        fitted = [
            _join([form if i == COUNTS else part for i, part in enumerate(parts[:keep])]) for form in counts
        ]
        room = [usable - bar_width - 1 - len(candidate) for candidate in fitted]
        if any(r >= 0 for r in room):
            tail = fitted[next(i for i, r in enumerate(room) if r >= 0)]
            break
    bar_width = max(0, min(bar_width, usable - len(tail) - 1))
    done = round(bar_width * min(fraction, 1.0))
    from rich.text import Text  # only to draw (the module docstring says why)

    drawn = Text(no_wrap=True, overflow="ellipsis")
    drawn.append("━" * done, style="green")
    drawn.append("━" * (bar_width - done), style="dim")
    drawn.append((" " if bar_width else "") + tail)
    drawn.truncate(max(usable, 1), overflow="ellipsis")
    return drawn


def _join(parts: Sequence[str]) -> str:
    return SEPARATOR.join(part for part in parts if part)


def _decimals(half_width: float) -> int:
    """Enough decimals for the half-width's first two significant digits."""
    if not half_width > 0:
        return 4
    return min(10, max(4, math.ceil(-math.log10(half_width)) + 1))


def _fit(line: str, width: int) -> Text:
    from rich.text import Text

    fitted = Text(line, no_wrap=True, overflow="ellipsis")
    fitted.truncate(max(width - RESERVED, 1), overflow="ellipsis")
    return fitted


def final_line(points: int, seconds: float, per_second: float, stopped_early: str | None,
               width: int | None = None) -> str:  # fmt: skip
    """The one line left on the terminal when the bar goes: ``points`` computed in
    ``seconds`` at ``per_second``, the very figures of the result's table (its points/s
    is points over its wall time, start-up included, as a user's clock counts it); the
    rate is left out when the line would not fit in ``width`` columns."""
    what = f"{points:,} points in {seconds:.1f} s"
    rate = f" ({text.rate(per_second)} points/s)"
    head = f"stopped early ({stopped_early}) after " if stopped_early is not None else "sampled "
    line = head + what + rate
    return head + what if width is not None and len(line) > width else line


class _Line:
    """The rich renderable: the current line, drawn at whatever width the terminal has."""

    def __init__(self, progress: RunProgress) -> None:
        self._progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield progress_line(self._progress, self._progress.clock(), options.max_width)


def progress_wanted(quiet: bool = False, no_progress: bool = False) -> bool:
    return not (quiet or no_progress) and text.is_terminal(sys.stderr)


@contextmanager
def shown(progress: RunProgress, enabled: bool) -> Iterator[None]:
    """Draw ``progress`` on stderr while the block runs, when ``enabled``. Lines printed
    to stderr meanwhile (logs, warnings) appear above it, never through it."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(
        file=sys.stderr,
        color_system="auto" if text.styling_allowed(sys.stderr) else None,
        highlight=False,
    )
    with Live(
        _Line(progress),
        console=console,
        refresh_per_second=4,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=True,
    ):
        yield


# ------------------------------------------------------------------ the pool's start-up


async def watch_pool(
    pool: WorkerPool,
    progress: RunProgress,
    commands: Sequence[str],
    *,
    hosts: Sequence[str | None] | None = None,
    startup_timeout: float,
    max_start_attempts: int,
    warn_after: float | None = None,
) -> None:
    """Keep ``progress`` up to date with the pool's slots, and log one warning when
    workers have not answered the handshake after ``warn_after`` seconds (default: half
    the start-up timeout), naming them and their command. Runs until cancelled. Reads the
    pool every ``POLL_S`` while some worker is starting, and otherwise only when a slot's
    state changes (``WorkerPool.state_changed``): while the workers count it never wakes,
    since on a machine whose every core counts each wake-up is taken from a worker.

    ``commands[i]`` is how slot ``i``'s worker is started, as the user would recognise it;
    ``hosts[i]`` the host it reaches (None: here), named in the warning as the pool
    names it in its own.
    """
    slow_after = startup_timeout / 2 if warn_after is None else warn_after
    warned_slots: set[int] = set()
    while True:
        stats = pool.stats
        progress.ready = progress.alive = stats.alive
        waiting: list[str] = []
        newly_slow: list[int] = []
        for worker in stats.workers:
            if worker.state != SlotState.STARTING:
                continue
            waited = worker.state_s
            note = f"worker {worker.slot} ({commands[worker.slot]}) {waited:.0f} s"
            if worker.attempt > 1 and progress.phase is Phase.STARTING:
                note += f", attempt {min(worker.attempt, max_start_attempts)} of {max_start_attempts}"
            waiting.append(note)
            if waited >= slow_after and worker.slot not in warned_slots:
                warned_slots.add(worker.slot)
                newly_slow.append(worker.slot)
        progress.waiting_on = _first_and_more(waiting)
        if newly_slow:
            _warn_slow(newly_slow, commands, hosts, slow_after, startup_timeout)
        if waiting:  # how long each has waited grows, and a warning may come due
            await trio.sleep(POLL_S)
        else:  # nothing shown here changes until a slot's state does: no wake-up meanwhile
            await pool.state_changed()


def _first_and_more(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{items[0]} and {len(items) - 1} more"


def _warn_slow(
    slots: Sequence[int],
    commands: Sequence[str],
    hosts: Sequence[str | None] | None,
    waited: float,
    timeout: float,
) -> None:
    """One line for the slots that turned slow in one look at the pool."""
    fields: dict[str, Any] = {"waited_s": round(waited, 1), "startup_timeout_s": timeout}
    if len(slots) == 1:
        fields["worker"] = slots[0]
    else:
        fields["workers"] = list(slots)
    fields["command"] = commands[slots[0]]
    named = sorted({host for slot in slots if hosts is not None and (host := hosts[slot]) is not None})
    if named:
        fields["host"] = ", ".join(named)
    log.warning("worker_slow_to_start", **fields)
