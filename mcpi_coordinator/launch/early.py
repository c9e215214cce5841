"""Local workers started as ``mcpi estimate`` begins, so their start-up and ours overlap.

A tiny run's wall is mostly start-up: the coordinator's own imports (Trio, msgpack,
its modules) and then each worker's, one after the other, because the pool
launches a worker only once it runs. ``start`` launches, first thing, the local workers
a plain ``mcpi estimate`` command line will certainly use, before the command loads
anything heavy; the two start-ups then run on separate cores. The pool's launcher takes
them (``take``, from ``launch.local.spawn_worker``) instead of launching new ones.

Only a command line this module reads for certain starts anything (``plan``):
``estimate`` followed only by the options below, each value one the command's parser
takes (the same value types from ``mcpi_coordinator.arguments``; for ``--log-level`` and
``--log-format``, the choices the caller passes, and their environment variables, which
the command checks too, hold one of them); no ``--worker-cmd``, ``MCPI_WORKER_CMD``,
host, Slurm, checkpoint or part. Nor when the machine cannot hold the run's workers,
which the command refuses (``capacity.check_fleet``, with the figures the command
uses): a command that ends with a usage error starts nothing. Anything else starts
nothing early, and the run starts its workers as it always did. At most one worker per
CPU is started early, and no more than the run has chunks for (the run starts no worker
it cannot use); of those, at most one per CPU but one goes through its start at a time,
leaving the command a core for its own (``start``). Workers started early and not taken
(a run refused after all, a Ctrl-C during the imports) are killed and reaped by ``discard``, which also runs at exit;
should the coordinator die, each worker's parent-death signal ends it
(``mcpi_worker.boot``), or, if it died before the worker could ask for one, the end of
the worker's input.

This module imports only the standard library and the light ``mcpi_coordinator.arguments``
(and ``launch.capacity`` once a run would start workers), so that starting the workers
costs the command almost nothing before they run.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from mcpi_coordinator.arguments import ENVIRONMENT, SEED_LIMIT, parse_whole_number, seconds
from mcpi_worker.constants import (
    CACHE_WARMED_BY_PARENT,
    DEFAULT_KERNEL,
    EXPECTED_POINTS,
    KILLED_WITH_PARENT,
    MAX_INFLIGHT_LIMIT,
    START_TURN,
)

if TYPE_CHECKING:
    from mcpi_coordinator.launch.capacity import MachineLimits

DEFAULT_POINTS: Final[int] = 1_000_000_000
"""``mcpi estimate``'s default points (``estimate.DEFAULT_POINTS`` is this one)."""
DEFAULT_CHUNK_SIZE: Final[int] = 10_000_000
"""``mcpi estimate``'s default chunk size (``estimate.DEFAULT_CHUNK_SIZE`` is this one):
a small fraction of a second of the numpy kernel, large enough that what a request costs the
pool is noise beside it, small enough that workers finish within one chunk of each
other, a progress bar moves smoothly and an early stop wastes little (the kernels'
speeds: ``benchmarks/kernel.py``, docs/worker.md; the cost of a request:
``benchmarks/overhead.py``, docs/bench.md)."""

_VALUED: Final[dict[str, str]] = {
    "-n": "points", "--points": "points",
    "-w": "workers", "--workers": "workers",
    "-s": "seed", "--seed": "seed",
    "--chunk-size": "chunk_size",
    "--pipeline-depth": "pipeline_depth",
    "--startup-timeout": "seconds", "--task-timeout": "seconds", "--max-time": "seconds",
    "--log-level": "name", "--log-format": "name",
}  # fmt: skip
_FLAGS: Final[frozenset[str]] = frozenset({"--json", "-q", "--quiet", "--no-progress"})
_LIMITS: Final[dict[str, tuple[int, int]]] = {
    "points": (1, 2**53),
    "workers": (0, 1024),
    "seed": (0, SEED_LIMIT),
    "chunk_size": (1, 2**40),
    "pipeline_depth": (1, MAX_INFLIGHT_LIMIT),
}
"""The command's own bounds (tests/launch/test_start_up.py holds them to its parser): a value
outside them is refused there, so nothing starts early for it. A ``seconds`` value is read
by ``arguments.seconds``, the parser's own type for those options; a ``name`` must be one of
the choices the caller passes for its option."""

_NO_CHOICES: Final[Mapping[str, Collection[str]]] = MappingProxyType({})


_SHOWS_WORKER_INFO: Final[frozenset[str]] = frozenset({"debug", "info"})
"""The coordinator levels at which a worker's lines below warning can be shown."""


def worker_argv(shown: str = "info") -> list[str]:
    """This interpreter's ``mcpi-worker``, running the very ``mcpi_worker`` package this
    process imported (``launch.local.default_worker_command`` is this).

    ``shown`` is the least level the coordinator shows (``mcpi estimate``'s
    ``--log-level``; a program embedding the pool leaves it at ``info``). Where it is
    above ``info`` (the command's ``warning``, ``-q``'s ``error``), no line a worker
    writes below warning would be shown: the worker is told ``--log-level warning`` and
    writes none of them, so a plain run's worker writes nothing and never loads
    structlog (``mcpi_worker.logs``). Its warnings and errors are written as ever, for
    the log and for the tail an error message quotes.

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
    quiet = [] if shown in _SHOWS_WORKER_INFO else ["--log-level", "warning"]
    return [sys.executable, *([] if from_here else ["-P"]), "-m", "mcpi_worker", *quiet]


def plan(
    argv: Sequence[str],
    environ: Mapping[str, str] = os.environ,
    cpus: int | None = None,
    *,
    choices: Mapping[str, Collection[str]] = _NO_CHOICES,
    machine: MachineLimits | None = None,
) -> int:
    """How many local workers the ``mcpi`` command line ``argv`` (without the program
    name) will certainly start with ``worker_argv()``, at most one per CPU; 0 when that
    is not certain. ``choices`` holds, by option (``--log-level``, ``--log-format``),
    the names the command's parser accepts for it: an option with none given is not read
    for certain. ``machine`` stands for this machine's limits (tests; read here when
    needed otherwise)."""
    return _plan(argv, environ, cpus, choices=choices, machine=machine)[0]


def _plan(
    argv: Sequence[str],
    environ: Mapping[str, str],
    cpus: int | None,
    *,
    choices: Mapping[str, Collection[str]],
    machine: MachineLimits | None,
) -> tuple[int, int]:
    """``plan``'s workers, and each one's share of the points (the ``hello``'s hint)."""
    if not argv or argv[0] != "estimate" or environ.get("MCPI_WORKER_CMD"):
        return 0, 0
    for variable, option in ENVIRONMENT.items():  # the command refuses a name not among them
        value = environ.get(variable)
        if value and option in choices and value not in choices[option]:
            return 0, 0
    values: dict[str, int] = {}
    words = list(argv[1:])
    while words:
        word = words.pop(0)
        if word in _FLAGS:
            continue
        name, has_value, value = word.partition("=")
        if name not in _VALUED or (has_value and not name.startswith("--")):
            return 0, 0
        if not has_value:
            if not words:
                return 0, 0
            value = words.pop(0)
        key = _VALUED[name]
        if key == "name":
            if value not in choices.get(name, ()):
                return 0, 0
            continue
        if key == "seconds":
            try:
                seconds(value)
            except argparse.ArgumentTypeError:
                return 0, 0
            continue
        number = parse_whole_number(value)
        low, high = _LIMITS[key]
        if number is None or not low <= number <= high:
            return 0, 0
        values[key] = number
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    workers = values.get("workers", cpus)
    points = values.get("points", DEFAULT_POINTS)
    chunks = math.ceil(points / values.get("chunk_size", DEFAULT_CHUNK_SIZE))
    slots = min(workers, chunks)  # the run keeps a slot per chunk at most (estimate_plan.drop_unusable_slots)
    if not slots or _more_than_the_machine_holds(slots, environ, machine):
        return 0, 0
    return min(slots, cpus), -(-points // slots)


def shown_level(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> str:
    """The least level the command line ``argv`` (one ``plan`` starts workers for) shows,
    as its parser will read it: the last ``--log-level``, else ``MCPI_LOG_LEVEL``, else
    ``error`` with ``-q``/``--quiet`` and ``warning`` without
    (``cli.estimate_plan.shown_level`` reads the same from the parsed arguments)."""
    level = environ.get("MCPI_LOG_LEVEL") or None
    words = list(argv[1:])
    for at, word in enumerate(words):
        name, has_value, value = word.partition("=")
        if name == "--log-level":
            level = value if has_value else words[at + 1]
    quiet = any(word in ("-q", "--quiet") for word in words)
    return level or ("error" if quiet else "warning")


def _more_than_the_machine_holds(workers: int, environ: Mapping[str, str], machine: MachineLimits | None) -> bool:
    """Whether the command will refuse ``workers`` local workers as more than the machine
    holds: its own check (``cli.estimate_plan.capacity_problem``) for the slots it keeps,
    one per chunk at most, with the figures it uses for local workers of the default
    kernel. Read a moment apart, the memory available may differ a little between the
    two; should the command refuse after all, ``discard`` ends what started here.
    ``launch.capacity`` is imported here, for a run that would start workers: ``mcpi
    estimate --help`` and a usage error read no more than the command line."""
    from mcpi_coordinator.launch import capacity

    limits = capacity.MachineLimits.here() if machine is None else machine
    return (
        capacity.check_fleet(
            workers,
            0,
            limits,
            max_starting=capacity.default_max_starting(),
            worker_bytes=capacity.worker_memory(DEFAULT_KERNEL, environ),
        )
        is not None
    )


@dataclass(frozen=True, slots=True)
class EarlyWorker:
    """A worker started early: the process, and our ends of its three pipes (file
    descriptors this process owns until they are wrapped in Trio streams)."""

    process: subprocess.Popen[bytes]
    argv: tuple[str, ...]
    stdin: int
    stdout: int
    stderr: int


_started: list[EarlyWorker] = []


def start(
    argv: Sequence[str],
    environ: Mapping[str, str] = os.environ,
    *,
    choices: Mapping[str, Collection[str]] = _NO_CHOICES,
    cpus: int | None = None,
) -> int:
    """Start the workers ``plan`` says this command line will use (``choices`` and
    ``cpus`` as for ``plan``); how many started. Never raises: a worker that cannot be
    started early is simply started later.

    At most one worker per CPU but one starts at a time, the others waiting for their
    turn (``mcpi_worker.start_turn``, ``START_TURN``): the command's own start goes on
    beside them, and is what their first counts wait for (docs/worker.md, **Two workers
    against one**). Worker ``i`` waits on the read end of a pipe whose write end worker
    ``i - at_once`` closes once started (or dies with); we close our end of each as soon
    as the worker that inherits it is started, or the start stops."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    wanted, share = _plan(argv, environ, cpus, choices=choices, machine=None)
    if wanted and not _started:
        atexit.register(discard)
    command = worker_argv(shown_level(argv, environ)) if wanted else []
    # An early worker belongs to a plain ``mcpi estimate``, which warms numba's cache
    # itself (cli.estimate._cache_warmed_here says why), and is told its share of the
    # run's points (``EXPECTED_POINTS``): its ``hello``, which carries the same hint,
    # comes only once the command has imported Trio and the pool, and the worker can get
    # ready for the run's size meanwhile (a small run counts with NumPy, whose import
    # then overlaps the command's).
    told = {**os.environ, CACHE_WARMED_BY_PARENT: "1", EXPECTED_POINTS: str(share)}
    at_once = max(1, cpus - 1) if os.name == "posix" else wanted  # no inherited pipes elsewhere
    waits: dict[int, int] = {}  # a worker's index -> the read end of the pipe it will wait on
    try:
        for index in range(wanted):
            waiting, passing = waits.pop(index, None), None
            if index + at_once < wanted:
                try:
                    waits[index + at_once], passing = os.pipe()
                except OSError:  # no pipe: that worker will not wait
                    pass
            turn = [fd for fd in (waiting, passing) if fd is not None]
            spelt = ",".join("" if fd is None else str(fd) for fd in (waiting, passing))
            try:
                _started.append(spawn(command, {**told, START_TURN: spelt} if turn else told, inherited=turn))
            except OSError:
                break
            finally:
                for fd in turn:  # the worker has its copies
                    os.close(fd)
    finally:
        for fd in waits.values():  # of workers never started
            os.close(fd)
    return len(_started)


def take(argv: Sequence[str]) -> EarlyWorker | None:
    """A worker started early with exactly ``argv``, now the caller's; None if none is left."""
    if not _started or tuple(argv) != _started[0].argv:
        return None
    return _started.pop(0)


def discard() -> None:
    """Kill and reap the workers started early that nobody took."""
    while _started:
        worker = _started.pop()
        for fd in (worker.stdin, worker.stdout, worker.stderr):
            os.close(fd)
        try:
            os.killpg(worker.process.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        worker.process.wait()


def spawn(
    argv: Sequence[str], environ: Mapping[str, str] | None = None, *, inherited: Sequence[int] = ()
) -> EarlyWorker:
    """Start one process from ``argv`` (``environ``, or ours) in a session of its own, over
    pipes whose ends we keep as bare descriptors (close-on-exec, so no later child
    inherits them): a worker started early, and every local worker the pool launches
    (``launch.local.spawn_worker``). Raises ``OSError`` when it cannot be started.

    The process dies with the thread calling this (the thread that runs the command or
    the pool, which ends with the process), even if someone has stopped it (SIGSTOP),
    where a catchable signal would wait for a SIGCONT: this install's own worker
    (``worker_argv``) is told to ask for SIGKILL at its parent's death
    (``KILLED_WITH_PARENT``: ``mcpi_worker.boot``); any other command is asked for it by the
    kernel, between fork and exec (``_killed_with_us``), so that a launcher (``sh -c``,
    ``timeout``) dies with us, and an ``mcpi-worker`` behind it asks for SIGKILL at its own
    parent's death. Pools must not call this from a thread that may end before they are
    closed (Trio's ``open_process`` spawns from its thread cache, whose threads retire
    when idle). ``inherited``: our descriptors the process inherits as well, by the same
    numbers (``start``'s turns)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    given = os.environ if environ is None else environ
    if START_TURN in given and not inherited:  # a turn is only ours to give: one in our environment is a stray
        environ = {name: value for name, value in given.items() if name != START_TURN}
    ours = _runs_our_worker(argv)
    if ours:
        environ = {**(os.environ if environ is None else environ), KILLED_WITH_PARENT: str(os.getpid())}
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=stderr_w,
            start_new_session=True,
            env=environ,
            pass_fds=tuple(inherited),
            preexec_fn=None if ours else _killed_with_us(),  # noqa: PLW1509 (one libc call: _killed_with_us)
        )
    except OSError:
        for fd in (stdin_w, stdout_r, stderr_r):
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
    return EarlyWorker(process, tuple(argv), stdin_w, stdout_r, stderr_r)


def _runs_our_worker(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs this install's ``mcpi-worker`` as ``worker_argv`` does (this
    interpreter, ``-m mcpi_worker``), which reads ``KILLED_WITH_PARENT``."""
    head = [word for word in argv[:4] if word != "-P"][:3]
    return head == [sys.executable, "-m", "mcpi_worker"]


PR_SET_PDEATHSIG: Final[int] = 1


@functools.cache
def _killed_with_us() -> Callable[[], object] | None:
    """What runs in a child between fork and exec: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``,
    with libc's ``prctl`` found here, in the parent, so the child only calls it. None
    where there is no such call (not Linux): the child then ends by its input's end.

    A ``preexec_fn`` makes ``subprocess`` fork rather than vfork, copying this process's
    page tables: a few milliseconds for the coordinator, which is why its own workers are
    told by ``KILLED_WITH_PARENT`` instead. Python warns that code run there can deadlock
    on a lock another thread held at the fork; this is one call of libc's ``prctl``
    through ctypes, found beforehand."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    kill = int(signal.SIGKILL)
    return functools.partial(prctl, PR_SET_PDEATHSIG, kill, 0, 0, 0)
