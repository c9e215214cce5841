"""``mcpi bench``: the ways to spread CPU work over processes, side by side.

``mcpi bench approaches`` runs one seeded workload through every approach and shows
wall time, speed-up and agreement; ``mcpi bench overhead`` measures what one tiny
task costs our pool and its peers. The approaches themselves live in
``mcpi_coordinator.bench``; this module parses, runs and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.bench import failures, off_main, report
from mcpi_coordinator.bench.approaches import APPROACHES
from mcpi_coordinator.bench.busy import LoopsNotStarted, add_busy_arguments, busy_loops, described
from mcpi_coordinator.bench.overhead import BATCHED, OVERHEAD_APPROACHES, Overhead
from mcpi_coordinator.bench.workload import Workload
from mcpi_coordinator.cli import commands, facts, plots, signals, text
from mcpi_coordinator.cli.estimate_parser import MAX_LOCAL_WORKERS as MAX_WORKERS
from mcpi_coordinator.cli.estimate_plan import missing_program, worker_command
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.remote import WorkerSlot
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, chunk_count
from mcpi_worker.kernels import DEFAULT_KERNEL, KERNELS
from mcpi_worker.protocol import MAX_POINTS

DEFAULT_POINTS = 100_000_000
DEFAULT_REPEAT = 3
DEFAULT_TASKS = 5_000

MAX_POINTS_PER_RUN = 100_000_000_000
"""The sequential baseline counts every point on one core: at its speed (measured by
``mcpi bench approaches``, docs/bench.md) 1e11 points is already minutes a run, times
--repeat, before the other approaches."""
MAX_REPEAT = 1_000
MAX_TASKS = 10_000_000
"""Every approach pays its cost per task for each no-op (measured by ``mcpi bench
overhead``, docs/bench.md): 1e7 of them is tens of minutes for the slowest approaches."""


APPROACHES_DESCRIPTION = """\
Run the same seeded chunks through every way of spreading CPU work that the lesson
compares, and show their wall times side by side:

  sequential          every chunk in this process, one after another (the baseline)
  threads             a ThreadPoolExecutor: one interpreter, so the GIL decides
  process-pool        a ProcessPoolExecutor: the standard library's answer
  asyncio-subprocess  a new mcpi-worker per chunk, asyncio + a Semaphore
  trio-run-process    a new mcpi-worker per chunk, trio.run_process + a CapacityLimiter
  trio-pool           mcpi's persistent pool of mcpi-worker processes

Every approach counts the very same chunks with the same kernel, so all must report
the same number of points inside; the table shows that they do, and the command
fails if they ever disagree. Wall time is the median of --repeat runs. Persistent
pools (process-pool, trio-pool) are started before the clock runs; their start-up
is its own column. The per-chunk approaches pay a process start per chunk, inside
their wall time: that cost is what they teach."""

STOPPED = "            130, 143, 129 stopped by Ctrl-C, SIGTERM, SIGHUP (every worker is stopped first)"

APPROACHES_EXIT_CODES = f"""\
exit codes: 0 the table was printed
            1 an approach failed, the approaches' counts disagreed, or the --plot could
              not be written (one line says which)
            2 bad arguments (nothing was run)
{STOPPED}"""

OVERHEAD_EXIT_CODES = f"""\
exit codes: 0 the table was printed
            1 an approach failed, or the --busy loops could not be started (one line says which)
            2 bad arguments (nothing was run)
{STOPPED}"""

APPROACHES_EPILOG = f"""\
examples:
  mcpi bench approaches
  mcpi bench approaches --points 1e9 --repeat 5 --plot approaches.png
  mcpi bench approaches --kernel python --points 2e7 --only sequential,threads,trio-pool
  mcpi bench approaches --json

--plot needs the 'bench' extra (matplotlib): {facts.INSTALL_HINT}

{APPROACHES_EXIT_CODES}"""

OVERHEAD_DESCRIPTION = """\
What does one tiny task cost? Each approach runs --tasks tasks that do nothing,
first one at a time (median round trip, in microseconds), then all at once on
--workers workers (tasks per second, pipelined where the approach allows it).
Workers are started and warmed up before the clock runs.

  process-pool            ProcessPoolExecutor.submit of a no-op function
  mp-pool/apply_async     multiprocessing.Pool.apply_async of a no-op
  mp-pool/imap_unordered  multiprocessing.Pool.imap_unordered (chunksize 1)
  joblib                  joblib.Parallel, batch_size='auto' (it batches tiny tasks
                          once it has timed some: its tasks/s are of batches)
  loky                    loky's reusable executor (joblib's pool), submit
  pebble                  pebble.ProcessPool.schedule
  trio-parallel           trio_parallel.run_sync of a no-op
  anyio-to-process        anyio.to_process.run_sync of a no-op
  trio-pool               mcpi's pool: a ping, the protocol's cheapest request, through
                          the pool's lanes (WorkerPool.ping); one task per call
  trio-pool/sample        mcpi's pool: a sample of 0 points, the path real work takes
                          (every check of the request and of its answer); one at a time
                          with WorkerPool.sample, all at once with WorkerPool.imap_unordered
  trio-pool/range         mcpi's pool, batched: the 0-point chunks as one range of
                          streams, cut into pieces by the pool as mcpi estimate's small
                          chunks are, each piece one sample answered with every chunk's
                          count (its tasks/s are of batches, like joblib's)

joblib, loky, pebble, trio-parallel and anyio come with the 'bench' extra.

--busy N runs every approach beside N CPU-bound loops (each in a session of its own,
as another user's jobs are; --busy-same-session: in this one), to rerun the figures
of a busy machine at will.

An optional peer that cannot be imported is listed as unavailable."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help=commands.summary("bench"),
        description="Benchmarks that run mcpi's pool and the alternatives side by side.",
        epilog="Run 'mcpi bench BENCHMARK --help' for the options of one benchmark.",
    )
    cli_args.add_version(bench)
    bench.set_defaults(command_parser=bench)
    benchmarks = bench.add_subparsers(
        title="benchmarks", metavar="BENCHMARK", required=True, parser_class=type(bench)
    )
    _register_approaches(benchmarks)
    _register_overhead(benchmarks)


def _register_approaches(benchmarks: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = benchmarks.add_parser(
        "approaches",
        help="one workload through every approach: wall time, speed-up, agreement",
        description=APPROACHES_DESCRIPTION,
        epilog=APPROACHES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--points", default=DEFAULT_POINTS, metavar="N",
        type=cli_args.count_type(1, MAX_POINTS_PER_RUN, why="the sequential baseline takes minutes a run"),
        help=f"points per run (default {DEFAULT_POINTS:,}, at most {MAX_POINTS_PER_RUN:,}; "
        "accepts 1e9, 1_000_000)",
    )  # fmt: skip
    _add_workers(parser)
    parser.add_argument(
        "-s", "--seed", type=cli_args.seed, default=None, metavar="S",
        help="seed of the random streams (default: drawn at random and printed)",
    )  # fmt: skip
    parser.add_argument(
        "--kernel", choices=tuple(KERNELS), default=DEFAULT_KERNEL,
        help=f"sampling kernel every approach runs (default {DEFAULT_KERNEL})",
    )  # fmt: skip
    parser.add_argument(
        "--chunk-size", default=DEFAULT_CHUNK_SIZE, metavar="C",
        type=cli_args.count_type(1, MAX_POINTS, why="the protocol's limit per request"),
        help=f"points per chunk, as in 'mcpi estimate' (default {DEFAULT_CHUNK_SIZE:,})",
    )  # fmt: skip
    parser.add_argument(
        "-r", "--repeat", default=DEFAULT_REPEAT, metavar="R",
        type=cli_args.count_type(1, MAX_REPEAT),
        help=f"timed runs per approach; the median is shown (default {DEFAULT_REPEAT})",
    )  # fmt: skip
    parser.add_argument(
        "--worker-cmd", metavar="CMD", default=cli_args.env_default("MCPI_WORKER_CMD", None),
        help="command that starts one worker, shell-split, for the approaches that run "
        "mcpi-worker (default: this Python's mcpi-worker; env MCPI_WORKER_CMD)",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=_approach_list, default=tuple(APPROACHES), metavar="A,B",
        help=f"run only these approaches, comma-separated: {', '.join(APPROACHES)}",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--plot", type=cli_args.picture_path_type(".png"), default=None, metavar="FILE.png",
        help="also write a bar chart of the wall times to FILE.png",
    )  # fmt: skip
    _add_common(parser)
    parser.set_defaults(handler=run_approaches, command_parser=parser)


def _register_overhead(benchmarks: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = benchmarks.add_parser(
        "overhead",
        help="per-task overhead of tiny tasks: our pool against its peers",
        description=OVERHEAD_DESCRIPTION,
        epilog=(
            "examples:\n  mcpi bench overhead\n  mcpi bench overhead --tasks 20000 --json\n"
            f"  mcpi bench overhead --busy 8\n\n{OVERHEAD_EXIT_CODES}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--tasks", default=DEFAULT_TASKS, metavar="N",
        type=cli_args.count_type(1, MAX_TASKS, why="up to ~40 minutes of no-ops per approach"),
        help=f"tasks per measurement (default {DEFAULT_TASKS:,})",
    )  # fmt: skip
    _add_workers(parser)
    add_busy_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _add_common(parser)
    parser.set_defaults(handler=run_overhead, command_parser=parser)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "-w", "--workers", default=cpus, metavar="W",
        type=cli_args.count_type(1, MAX_WORKERS, why="processes started per approach"),
        help=f"worker processes (or threads) per approach (default: CPU count, {cpus})",
    )  # fmt: skip


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="print the result only: no spinner, notes or warnings on stderr (errors still)",
    )  # fmt: skip
    cli_args.add_version(parser)


def _approach_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in APPROACHES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown approach {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {', '.join(APPROACHES)}"
        )
    return tuple(name for name in APPROACHES if name in names)  # the table's usual order


# --------------------------------------------------------------------------- running

T = TypeVar("T")


class _Failed(Exception):
    """An approach failed in a way ``failures.describe`` could word."""


def _fail(args: argparse.Namespace, message: str) -> int:
    text.say(args.command_parser.prog, f"error: {message}")
    return McpiExitCode.FAILURE


def _interrupted(args: argparse.Namespace) -> int:
    off_main.kill_pool_workers()  # a pool driven from the main thread may have left some
    text.say(args.command_parser.prog, f"{signals.stopped_words()}; every worker was stopped")
    return McpiExitCode.for_signal(signals.stopped_by())


@contextmanager
def _status(stderr: Console, message: str, quiet: bool) -> Iterator[None]:
    """A spinner on stderr while one approach runs, only when a person is watching."""
    if stderr.is_terminal and not quiet:
        with stderr.status(message):
            yield
    else:
        yield


def _run_one(name: str, measure: Callable[..., T], *args: Any) -> T:
    """``measure(*args)``, its expected failures turned into ``_Failed``, Ctrl-C into
    ``KeyboardInterrupt`` (even from inside a Trio nursery's exception group). A stop
    signal that an approach run off the main thread heard is noted as the one that
    stopped the command (its handlers stood aside meanwhile: ``bench.off_main``)."""
    try:
        return measure(*args)
    except off_main.Interrupted as exc:
        signals.note(exc.signum)
        raise KeyboardInterrupt from None
    except BaseException as exc:
        if failures.is_interrupt(exc):
            raise KeyboardInterrupt from None
        reason = failures.describe(exc) if isinstance(exc, Exception) else None
        if reason is None:
            raise
        raise _Failed(f"{name} failed: {reason}") from None


def _load() -> tuple[float, float]:
    one, five, _ = os.getloadavg()
    return one, five


def _load_words() -> str:
    one, five = _load()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _stderr_console() -> Console:
    return Console(stderr=True, color_system="auto" if text.styling_allowed(sys.stderr) else None)


def run_approaches(args: argparse.Namespace) -> int:
    try:
        command = tuple(worker_command(args.worker_cmd, 0))
    except ValueError as exc:
        args.command_parser.error(str(exc))
    if (missing := missing_program([WorkerSlot(command)], args.worker_cmd)) is not None:
        args.command_parser.error(missing)
    configure_logging("error" if args.quiet else "warning")  # stdout carries the results
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    workload = Workload(
        points=args.points,
        seed=seed,
        kernel=args.kernel,
        chunk_size=args.chunk_size,
        workers=args.workers,
        worker_command=command,
    )
    stderr = _stderr_console()
    try:
        if args.plot is not None:
            plots.ensure_available()  # fail now, not after minutes of measuring
        measurements = []
        for name in args.only:
            runs = text.plural(args.repeat, "run")
            with _status(stderr, f"{name}: {runs} of {args.points:,} points", args.quiet):
                measurements.append(_run_one(name, APPROACHES[name], workload, args.repeat))
    except (_Failed, plots.PlottingUnavailable) as exc:
        return _fail(args, str(exc))
    except KeyboardInterrupt:
        return _interrupted(args)

    table = report.rows(workload, measurements)
    if args.json:
        one, five = _load()
        figures = report.to_json(workload, table)
        print(json.dumps({**figures, "repeat": args.repeat, "load_average": [one, five]}))
    else:
        _print_approaches(workload, args.repeat, table)
    if args.plot is not None:
        from mcpi_coordinator.cli.bench_chart import save_bar_chart

        try:
            save_bar_chart(workload, table, args.plot)
        except (plots.PlottingUnavailable, OSError) as exc:
            return _fail(args, f"cannot write {args.plot}: {exc} (the results above are complete)")
        if not args.quiet:
            text.say(args.command_parser.prog, f"wrote {args.plot}")
    problem = report.disagreement(measurements)
    if problem is not None:
        return _fail(args, str(problem))
    return McpiExitCode.OK


def _print_approaches(workload: Workload, repeat: int, table: Sequence[report.ApproachRow]) -> None:
    chunks = chunk_count(workload.points, workload.chunk_size)
    print(
        f"{workload.points:,} points in {text.plural(chunks, 'chunk')} of {workload.chunk_size:,}, "
        f"{workload.kernel} kernel, seed {workload.seed}, {text.plural(workload.workers, 'worker')}; "
        f"median of {text.plural(repeat, 'run')}; {_load_words()}"
    )
    agreed = len({row.inside for row in table}) == 1
    rows = [
        [
            row.approach,
            f"{row.wall_s:.3f}",
            "—" if row.startup_s is None else f"{row.startup_s:.3f}",
            "—" if row.speedup is None else f"{row.speedup:.2f}×",
            f"{row.points_per_s:.3g}",
            f"{row.pi:.6f}",
            f"{row.inside:,}" + (" ✓" if agreed else " ✗"),
        ]
        for row in table
    ]
    headings = ["approach", "wall (s)", "start-up (s)", "speed-up", "points/s", "π", "inside"]
    print(text.table_text(headings, rows, [False] + [True] * 6))
    if agreed and table:
        print(f"all {len(table)} approaches counted the same {table[0].inside:,} points inside ✓")


def run_overhead(args: argparse.Namespace) -> int:
    configure_logging("error" if args.quiet else "warning")
    stderr = _stderr_console()
    results: list[Overhead] = []
    try:
        with busy_loops(args.busy, same_session=args.busy_same_session):
            for name, measure in OVERHEAD_APPROACHES.items():
                with _status(stderr, f"{name}: {args.tasks:,} tasks", args.quiet):
                    results.append(_run_one(name, measure, args.tasks, args.workers))
    except _Failed as exc:
        return _fail(args, str(exc))
    except LoopsNotStarted as exc:  # none of them is left running
        return _fail(args, str(exc))
    except KeyboardInterrupt:
        return _interrupted(args)

    for result in results:
        if result.unavailable is not None and args.json and not args.quiet:
            text.say(args.command_parser.prog, f"{result.approach} unavailable: {result.unavailable}")
    if args.json:
        one, five = _load()
        print(json.dumps({
            "tasks": args.tasks,
            "workers": args.workers,
            "busy": args.busy,
            "busy_same_session": args.busy_same_session,
            "load_average": [one, five],
            "results": [_overhead_json(r) for r in results],
        }))  # fmt: skip
    else:
        _print_overhead(args, results)
    return McpiExitCode.OK


def _overhead_json(result: Overhead) -> dict[str, Any]:
    return {
        "approach": result.approach,
        "round_trip_us": result.round_trip_us,
        "tasks_per_s": result.tasks_per_s,
        "batched": result.approach in BATCHED,
        "unavailable": result.unavailable,
    }


def _print_overhead(args: argparse.Namespace, results: Sequence[Overhead]) -> None:
    beside = f", {described(args.busy, same_session=args.busy_same_session)}" if args.busy else ""
    print(f"{args.tasks:,} no-op tasks per figure, {text.plural(args.workers, 'worker')}{beside}; {_load_words()}")
    reference = next((r for r in results if r.approach == "process-pool"), None)
    rows = []
    for r in results:
        if r.round_trip_us is None or r.tasks_per_s is None:
            rows.append([r.approach, f"unavailable: {r.unavailable}", "", "", ""])
            continue
        rows.append([
            f"{r.approach} (batched)" if r.approach in BATCHED else r.approach,
            f"{r.round_trip_us:.0f}",
            _ratio(r.round_trip_us, reference.round_trip_us if reference else None),
            f"{r.tasks_per_s:,.0f}",
            _ratio(r.tasks_per_s, reference.tasks_per_s if reference else None),
        ])  # fmt: skip
    headings = ["approach", "round trip (µs)", "× process-pool", "tasks/s", "× process-pool"]
    print(text.table_text(headings, rows, [False, True, True, True, True]))
    if any(r.approach in BATCHED for r in results):
        print("(batched): many tasks in one message; tasks/s counts the tasks, the round trip is one alone")


def _ratio(value: float, reference: float | None) -> str:
    return "—" if reference is None else f"{value / reference:.2f}×"
