"""``mcpi estimate``: estimate π on a pool of workers and report it (text or JSON).

Exit codes: 0 an estimate was reported (also after an early stop), 1 the run failed
(one line on stderr says why), 2 bad arguments, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from dataclasses import asdict
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from mcpi_coordinator.cli import args as cli_args
from mcpi_coordinator.cli import plots
from mcpi_coordinator.cli.exit_codes import ExitCode
from mcpi_coordinator.cli.logging import LOG_FORMATS, LOG_LEVELS, configure_logging
from mcpi_coordinator.cli.progress import points_progress, progress_wanted
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.estimate import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_POINTS,
    EstimateResult,
    run_estimate,
)
from mcpi_coordinator.launch import remote
from mcpi_coordinator.launch.local import default_worker_command, spawn_worker
from mcpi_coordinator.pool.worker_pool import DEFAULT_PIPELINE_DEPTH, WorkerPool
from mcpi_worker.kernels import DEFAULT_KERNEL, KERNELS
from mcpi_worker.protocol import MAX_POINTS

PROG = "mcpi estimate"

EXAMPLES = """\
examples:
  mcpi estimate                              1e9 points on every core
  mcpi estimate --points 1e10 --seed 42      repeatable: same seed, same count
  mcpi estimate --target-error 1e-4          stop once the 95% CI is ±1e-4
  mcpi estimate --max-time 5 --json          whatever 5 seconds give, as JSON
  mcpi estimate --worker-cmd "python -m mcpi_worker --log-level debug" --log-level info
  mcpi estimate --workers 0 --host alice@node1*4 --host node2:2222*2
                                             6 workers on two machines, over ssh

exit codes: 0 estimate reported, 1 the run failed (one line says why),
            2 bad arguments, 130 interrupted (Ctrl-C; every worker is stopped first)
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate pi on a pool of worker processes",
        description=(
            "Estimate pi by Monte Carlo: split the points into seeded chunks, count them "
            "on a pool of persistent mcpi-worker processes, and combine the counts. The "
            "count depends only on seed, points, chunk size and kernel, never on the "
            "number of workers. Counts accept 1e9 and 1_000_000."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--points", type=cli_args.positive_count, default=DEFAULT_POINTS, metavar="N",
        help=f"random points to draw (default {DEFAULT_POINTS:.0e})",
    )
    parser.add_argument(
        "--workers", type=cli_args.count, default=os.cpu_count() or 1, metavar="W",
        help="local worker processes (default: the CPU count, %(default)s here); "
        "0 with --host for remote workers only",
    )
    parser.add_argument(
        "--seed", type=cli_args.seed, default=None, metavar="S",
        help="seed below 2**64 (default: drawn at random and printed, to repeat the run)",
    )
    parser.add_argument(
        "--chunk-size", type=cli_args.positive_count, default=DEFAULT_CHUNK_SIZE, metavar="C",
        help=f"points per request to a worker (default {DEFAULT_CHUNK_SIZE:.0e}); part of "
        "what makes a run repeatable",
    )
    parser.add_argument(
        "--kernel", choices=tuple(KERNELS), default=DEFAULT_KERNEL,
        help="sampling kernel: numpy (fast, vectorised) or python (the plain loop); "
        "default %(default)s",
    )
    parser.add_argument(
        "--worker-cmd", metavar="CMD", default=None,
        help="command that starts one local worker, shell-split (default: this Python's "
        "mcpi-worker); any program speaking the protocol on stdio works; {i} becomes "
        "the worker's index: --worker-cmd \"kubectl exec -i mcpi-{i} -- mcpi-worker\"",
    )
    parser.add_argument(
        "--pipeline-depth", type=cli_args.positive_count, default=DEFAULT_PIPELINE_DEPTH,
        metavar="D",
        help="requests each worker is sent ahead (default %(default)s, capped by what the "
        "worker accepts); raise it, to 16 say, for chunks under ~1e5 points, so workers "
        "never wait for the coordinator between chunks; it never changes the count",
    )
    parser.add_argument(
        "--task-timeout", type=cli_args.seconds, default=None, metavar="S",
        help="a worker that leaves a request unanswered this long is killed and replaced, "
        "and the chunk retried (default: 30 s + 1 µs per point of the chunk)",
    )
    parser.add_argument(
        "--startup-timeout", type=cli_args.seconds, default=10.0, metavar="S",
        help="time a worker has to start and answer the handshake (default %(default)g s)",
    )
    parser.add_argument(
        "--max-time", type=cli_args.seconds, default=None, metavar="S",
        help="stop after S seconds and report the estimate from the chunks completed",
    )
    parser.add_argument(
        "--target-error", type=cli_args.number(), default=None, metavar="EPS",
        help="stop once the 95%% confidence interval's half-width is at most EPS",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--plot", type=plots.picture_path_type(".png"), default=None, metavar="FILE.png",
        help="after the run, draw the running estimate and its 95%% band against the points "
        f"used (log scale) to FILE.png; needs the 'bench' extra: {plots.INSTALL_HINT}",
    )
    parser.add_argument(
        "--log-level", choices=tuple(LOG_LEVELS), default="warning", metavar="LEVEL",
        help=f"least severe log level shown on stderr: {', '.join(LOG_LEVELS)} "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="console",
        help="log lines as text (default) or JSON objects",
    )
    remote.add_arguments(parser)
    parser.set_defaults(handler=run)


def worker_command(worker_cmd: str | None, index: int) -> list[str]:
    """The argument vector that starts worker ``index``: ``--worker-cmd`` shell-split,
    or this interpreter's ``mcpi-worker``. Raises ``RemoteConfigError`` (a
    ``ValueError``) with one clear line for an unusable one."""
    if worker_cmd is None:
        return default_worker_command()
    return remote.substitute_index(remote.split_command(worker_cmd, "--worker-cmd"), index)


def run(args: argparse.Namespace) -> int:
    problem = _check_arguments(args)
    if problem is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    if args.plot is not None:
        try:
            plots.ensure_available()  # fail now, not after the run
        except McpiError as error:
            print(f"mcpi: error: {error}", file=sys.stderr)
            return ExitCode.FAILURE
    configure_logging(args.log_level, args.log_format)
    seed_drawn = args.seed is None
    seed = secrets.randbits(64) if seed_drawn else args.seed
    try:
        outcome = trio.run(_estimate_until_interrupted, args, seed)
    except KeyboardInterrupt:  # Ctrl-C before or after the signal handler was in place
        return _interrupted(seed)
    if isinstance(outcome, McpiError):
        print(f"mcpi: error: {outcome}", file=sys.stderr)
        return ExitCode.FAILURE
    if outcome is None:
        return _interrupted(seed)
    if args.json:
        print(json.dumps(result_json(outcome)))
    else:
        print_result(outcome, seed_drawn=seed_drawn)
    if args.plot is not None:  # drawn from the per-chunk counts the run kept anyway
        try:
            picture = plots.plot_estimate(outcome, args.plot)
        except McpiError as error:
            print(f"mcpi: error: {error}", file=sys.stderr)
            return ExitCode.FAILURE
        print(f"convergence plot written to {picture.path}", file=sys.stderr)
    return ExitCode.OK


def _interrupted(seed: int) -> int:
    print(f"{PROG}: interrupted (seed {seed}); every worker was stopped", file=sys.stderr)
    return ExitCode.INTERRUPTED


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.chunk_size > MAX_POINTS:
        return f"--chunk-size {args.chunk_size} is above the protocol's limit of {MAX_POINTS}"
    try:
        worker_command(args.worker_cmd, 0)  # checked even when every worker is remote
        args.slots = remote.slots_from_args(args, lambda i: worker_command(args.worker_cmd, i))
    except remote.RemoteConfigError as error:
        return str(error)
    return None


async def _estimate_until_interrupted(
    args: argparse.Namespace, seed: int
) -> EstimateResult | McpiError | None:
    """Run the estimate; on SIGINT cancel it (the pool stops and reaps every worker)
    and return None. Expected failures come back as a value, not an ExceptionGroup."""
    outcome: dict[str, EstimateResult | McpiError] = {}
    with trio.open_signal_receiver(signal.SIGINT) as sigint:
        async with trio.open_nursery() as nursery:

            async def estimate() -> None:
                try:
                    outcome["value"] = await _estimate(args, seed)
                except McpiError as error:
                    outcome["value"] = error
                nursery.cancel_scope.cancel()

            nursery.start_soon(estimate)
            async for _ in sigint:
                nursery.cancel_scope.cancel()
                break
    return outcome.get("value")


async def _estimate(args: argparse.Namespace, seed: int) -> EstimateResult:
    started = trio.current_time()
    launcher = remote.slot_launcher(args.slots, spawn_worker)
    with points_progress(args.points, enabled=progress_wanted()) as advance:
        async with WorkerPool(
            len(args.slots),
            launcher=launcher,
            pipeline_depth=args.pipeline_depth,
            startup_timeout=args.startup_timeout,
            task_timeout=args.task_timeout,
            slot_hosts=[None if slot.host is None else slot.host.name for slot in args.slots],
        ) as pool:
            return await run_estimate(
                pool,
                points=args.points,
                seed=seed,
                chunk_size=args.chunk_size,
                kernel=args.kernel,
                max_time=args.max_time,
                target_error=args.target_error,
                on_chunk=lambda result, _tally: advance(result.chunk.points),
                started_at=started,
            )


# ------------------------------------------------------------------------ output


def result_json(result: EstimateResult) -> dict[str, Any]:
    stats = result.statistics
    return {
        "pi": stats.pi,
        "error": stats.error,
        "std_error": stats.std_error,
        "ci95": list(stats.ci95),
        "inside": result.inside,
        "points": result.points,
        "requested_points": result.requested_points,
        "seed": result.seed,
        "chunk_size": result.chunk_size,
        "chunks": result.chunks,
        "kernel": result.kernel,
        "workers": result.workers,
        "elapsed_s": result.elapsed_s,
        "points_per_s": result.points_per_s,
        "restarts": result.restarts,
        "stopped_early": result.stopped_early,
        "discarded_chunks": result.discarded_chunks,
        "repeat_points": result.points,
        "repeat_command": result.repeat_command,
        "target_error": result.target_error,
        "target_reached": result.target_reached,
        "per_worker": [asdict(worker) for worker in result.pool.workers],
        "hosts": remote.host_rows(result.pool.workers, result.elapsed_s),
    }


def print_result(result: EstimateResult, *, seed_drawn: bool) -> None:
    stats = result.statistics
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("π ≈", f"{stats.pi:.10f}")
    table.add_row("error", f"{stats.error:+.3e}  (estimate − math.pi)")
    table.add_row("standard error", f"{stats.std_error:.3e}")
    table.add_row("95% CI", f"[{stats.ci95[0]:.8f}, {stats.ci95[1]:.8f}]")
    points = f"{result.points:,} in {result.chunks:,} chunks of up to {result.chunk_size:,}"
    if result.stopped_early is not None:
        why = {"max_time": "--max-time reached", "target_error": "--target-error reached"}
        points += f"  (stopped early, {why[result.stopped_early]}; asked {result.requested_points:,})"
    table.add_row("points", points)
    for label, text in run_rows(result):
        table.add_row(label, text)
    table.add_row("workers", f"{result.workers}  ({result.restarts} restarts)")
    drawn = f"  (drawn at random; --seed {result.seed} repeats this run)" if seed_drawn else ""
    table.add_row("seed", f"{result.seed}{drawn}")
    table.add_row("kernel", result.kernel)
    table.add_row("wall time", f"{result.elapsed_s:.3f} s")
    table.add_row("points/s", f"{result.points_per_s / 1e6:,.1f} M")
    console = Console(highlight=False)
    console.print(table)
    repeat = repeat_line(result)
    if repeat is not None:
        console.print(repeat, soft_wrap=True)  # unwrapped: it is meant to be copied


def run_rows(result: EstimateResult) -> list[tuple[str, str]]:
    """A target that was not reached, plainly."""
    if result.target_error is None or result.target_reached:
        return []
    half = result.statistics.half_width
    when = "when --max-time came" if result.stopped_early == "max_time" else "after all --points"
    return [("target error", f"{result.target_error:g} NOT reached (±{half:.3e} {when})")]


def repeat_line(result: EstimateResult) -> str | None:
    """After an early stop, the plain command that gives this very count."""
    if result.stopped_early is None:
        return None
    discarded = result.discarded_chunks
    chunks = "chunk that finished past them" if discarded == 1 else "chunks that finished past them"
    beyond = f"; {discarded:,} {chunks} not counted" if discarded else ""
    return f"repeat: {result.repeat_command}  (streams 0..{result.chunks - 1}{beyond})"
