"""``mcpi estimate``: estimate π on a pool of workers and report it (text or JSON).

This module is the command's course: the arguments checked together, the run on its
pool until it ends or a signal stops it, the result printed, the exit code. Each job
around it has a module of its own: the parser (``cli.estimate_parser``, apart so that
parsing imports none of what a run needs: this module is imported by the parser's
handler, once the line has parsed), the checks of options together and the worker slots
(``cli.estimate_plan``), the JSON object (``cli.estimate_json``) and the text table
(``cli.estimate_text``).

Exit codes: 0 an estimate was reported (also after an early stop), 1 the run failed or
the --plot could not be written (one line on stderr says why; an estimate is still
printed first), 2 bad arguments, 130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import trio

from mcpi_coordinator.cli import estimate_json, estimate_plan, estimate_text, progress, runs, signals, text
from mcpi_coordinator.cli.estimate_parser import MAX_TOTAL_POINTS
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.errors import CheckpointRefused, McpiError
from mcpi_coordinator.launch import capacity, remote
from mcpi_coordinator.launch.local import adopting_orphans, spawn_worker
from mcpi_coordinator.pool.stats import PoolStats
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import EstimateResult, resumed_prefix, run_estimate
from mcpi_worker.constants import CACHE_WARMED_BY_PARENT, DEFAULT_KERNEL

if TYPE_CHECKING:  # sqlite3 and the checkpoint module: loaded by --checkpoint/--resume only (cli.runs)
    from mcpi_coordinator.run.checkpoint import Checkpoint

PROG = "mcpi estimate"

MAX_START_ATTEMPTS: Final[int] = 3
"""Failed starts in a row before a worker slot is dropped (the pool's default, said
here because the start-up line counts the attempts)."""


def run(args: argparse.Namespace, *, machine: capacity.MachineLimits | None = None) -> int:
    """``mcpi estimate`` with the parsed ``args``: returns its exit code (``McpiExitCode``).
    Options that do not go together end it through ``args.command_parser.error``
    (``SystemExit`` 2, one line). ``machine`` stands for this machine's limits (tests)."""
    machine = capacity.MachineLimits.here() if machine is None else machine
    problem = (
        estimate_plan.part_problem(args)
        or runs.fill_target_budget(args, MAX_TOTAL_POINTS)
        or estimate_plan.check_arguments(args, machine)
    )
    if problem is not None:
        args.command_parser.error(problem)
    if args.plot is not None:
        from mcpi_coordinator.cli import plots  # NumPy and matplotlib: only for a --plot

        try:
            plots.ensure_available()  # fail now, not after the run
        except McpiError as error:
            text.say(PROG, f"error: {error}")
            return McpiExitCode.FAILURE
        try:
            plots.check_destination(args.plot)  # a directory it would be refused in, now
        except McpiError as error:
            text.say(PROG, f"error: {error}")
            return McpiExitCode.USAGE
    configure_logging(estimate_plan.shown_level(args), args.log_format)
    try:
        prepared = runs.prepare(args)  # the run's options, its seed, its checkpoint (locked)
    except CheckpointRefused as error:
        text.say(PROG, f"error: {error}")
        return McpiExitCode.USAGE
    estimate_plan.drop_unusable_slots(args)  # a resumed run's points are known from its file only now
    if not args.capacity_checked:  # a resumed run's kernel is known from its file only now
        problem = estimate_plan.capacity_problem(args, machine)
        if problem is not None:
            prepared.close()
            args.command_parser.error(problem)
    seed, seed_drawn = prepared.seed, prepared.seed_drawn
    note = None if args.quiet else estimate_plan.idle_workers_note(args)
    if note is not None:
        text.say(PROG, note)
    try:
        try:
            # What a worker leaves behind (a child in a session of its own) is ended
            # before this returns, on Linux (launch.local.adopting_orphans).
            with _cache_warmed_here(args), adopting_orphans():
                outcome = trio.run(_estimate_until_stopped, args, seed, prepared.checkpoint)
        finally:
            prepared.close()  # commits what completed, whatever happened
    except KeyboardInterrupt:  # Ctrl-C before or after the signal receiver was in place
        return _interrupted(seed, prepared)
    if isinstance(outcome, McpiError):
        text.say(PROG, f"error: {outcome}{prepared.saved_note()}")
        return McpiExitCode.FAILURE
    if outcome is None:
        return _interrupted(seed, prepared)
    if args.json:
        print(json.dumps(estimate_json.result_json(outcome)))
    else:
        estimate_text.print_result(outcome, seed_drawn=seed_drawn)
    if args.plot is not None:  # drawn from the per-chunk counts the run kept anyway
        from mcpi_coordinator.cli import plots

        try:
            picture = plots.plot_estimate(outcome, args.plot)
        except McpiError as error:
            text.say(PROG, f"error: {error} (the estimate above is complete)")
            return McpiExitCode.FAILURE
        if not args.quiet:
            text.say(PROG, f"wrote {picture.path} ({picture.width}×{picture.height} px)")
    return McpiExitCode.OK


@contextlib.contextmanager
def _cache_warmed_here(args: argparse.Namespace) -> Iterator[None]:
    """While the run lasts, its local workers of ours leave numba's cache to us
    (``CACHE_WARMED_BY_PARENT`` in the environment they inherit), and a cold cache (or a missing object cache) is
    warmed by a process of ours, started before orphans are adopted: a worker's own
    warming process is its orphan once it exits, and would be ended with the run
    (``adopting_orphans``), before the cache is warm. Ours is this process's child, not a
    worker's, so it is spared, and it outlives the run at the lowest priority until the
    cache is warm (``kernels.warm``). Only when some of the run's workers are local
    mcpi-workers of ours: the cache warmed is this install's, on this machine, which a
    ``--worker-cmd``'s workers, a host's or a Slurm node's do not load, and the warming
    would only take a CPU from the user. Those are told nothing either (they inherited the
    variable before, and srun passes it to Slurm's nodes): it would be false for them, and
    an ``mcpi-worker`` among them warms its own cache when it needs it; the warming process
    it starts outlives the run (``launch.local.adopting_orphans`` spares it)."""
    local_workers = args.worker_cmd is None and any(slot.host is None for slot in args.slots)
    if local_workers and (args.kernel or DEFAULT_KERNEL) == "numpy":
        from mcpi_worker import kernel_policy
        from mcpi_worker import numba_marker as warm  # the marker alone: no NumPy

        try:
            uses_numba = kernel_policy.policy_from_environment() is not kernel_policy.Policy.NUMPY
        except kernel_policy.KernelConfigError:
            uses_numba = False  # the workers refuse it, and say why
        if uses_numba and warm.NumbaCache().wants_warming():
            warm.start_warming()
    if not local_workers:
        yield
        return
    before = os.environ.get(CACHE_WARMED_BY_PARENT)
    os.environ[CACHE_WARMED_BY_PARENT] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[CACHE_WARMED_BY_PARENT]
        else:
            os.environ[CACHE_WARMED_BY_PARENT] = before


def _interrupted(seed: int, prepared: runs.PreparedRun) -> int:
    note = prepared.saved_note()
    text.say(PROG, f"{signals.stopped_words()} (seed {seed}); every worker was stopped{note}")
    return McpiExitCode.for_signal(signals.stopped_by())


async def _estimate_until_stopped(
    args: argparse.Namespace, seed: int, checkpoint: Checkpoint | None
) -> EstimateResult | McpiError | None:
    """Run the estimate; on SIGINT, SIGTERM or SIGHUP (those not ignored) cancel it (the pool stops and
    reaps every worker) and return None. Expected failures come back as a value, not
    an ExceptionGroup."""
    outcome: dict[str, EstimateResult | McpiError] = {}
    with trio.open_signal_receiver(*signals.heard()) as stop_signals:
        async with trio.open_nursery() as nursery:

            async def estimate() -> None:
                try:
                    outcome["value"] = await _estimate(args, seed, checkpoint)
                except McpiError as error:
                    outcome["value"] = error
                nursery.cancel_scope.cancel()

            nursery.start_soon(estimate)
            async for signum in stop_signals:
                signals.note(signum)
                nursery.cancel_scope.cancel()
                break
    return outcome.get("value")


async def _estimate(args: argparse.Namespace, seed: int, checkpoint: Checkpoint | None) -> EstimateResult:
    started = trio.current_time()
    if checkpoint is not None and resumed_prefix(checkpoint).finished:
        return await run_estimate(None, **_run_options(args, seed, checkpoint))  # no worker needed
    launcher = remote.slot_launcher(args.slots, spawn_worker)
    hosts = [None if slot.host is None else slot.host.name for slot in args.slots]
    shown = progress.progress_wanted(args.quiet, args.no_progress)
    line = progress.RunProgress(total=estimate_plan.asked_points(args), workers=len(args.slots))
    capacity.raise_open_file_limit(
        len(args.slots), max_starting=remote.concurrent_starts(args.starting_limits)
    )
    pool = WorkerPool(
        len(args.slots),
        launcher=launcher,
        pipeline_depth=args.pipeline_depth,
        startup_timeout=args.startup_timeout,
        task_timeout=args.task_timeout,
        max_start_attempts=MAX_START_ATTEMPTS,
        slot_hosts=hosts,
        starting_limits=args.starting_limits,
        wait_for_all=estimate_plan.wait_for_every_worker(args),
        expected_points=-(-estimate_plan.asked_points(args) // len(args.slots)),  # each worker's share: a hint
    )
    failure: McpiError | None = None
    with progress.shown(line, shown):
        async with trio.open_nursery() as watching:
            watching.start_soon(
                lambda: progress.watch_pool(
                    pool, line, estimate_plan.slot_names(args), hosts=hosts,
                    startup_timeout=args.startup_timeout, max_start_attempts=MAX_START_ATTEMPTS,
                )
            )  # fmt: skip
            try:
                result = await _sample(pool, args, seed, line, started, checkpoint)
            except McpiError as error:  # caught here, or the nursery wraps it in a group
                failure = error
            finally:
                watching.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if shown:
        why = {"max_time": "--max-time", "target_error": "--target-error"}.get(result.stopped_early or "")
        room = text.width_of(sys.stderr)
        room = None if room is None else room - len(PROG) - 2
        computed = result.points - result.resumed_points
        text.say(PROG, progress.final_line(computed, result.elapsed_s, result.points_per_s, why, room))
    return result


async def _sample(
    pool: WorkerPool,
    args: argparse.Namespace,
    seed: int,
    line: progress.RunProgress,
    started: float,
    checkpoint: Checkpoint | None,
) -> EstimateResult:
    """The pool's life: start it, run the estimate, stop it (McpiErrors propagate bare).

    The result's failures are the closed pool's (``_with_failures_of``); its other pool
    figures are the run's, as the run ended (each slot's worker and its pid)."""
    async with pool:
        line.start_sampling()
        if checkpoint is not None:  # what a resumed run counts already (not computed now)
            resumed = resumed_prefix(checkpoint)
            saved = sum(resumed.chunk_points(stream) for stream, _ in resumed.items())
            line.add_resumed(saved, resumed.points, resumed.inside)
        result = await run_estimate(
            pool,
            on_chunk=lambda result, prefix: line.add(result.chunk.total_points, prefix.points, prefix.inside),
            started_at=started,
            **_run_options(args, seed, checkpoint),
        )
    return dataclasses.replace(result, pool=_with_failures_of(pool.stats, result.pool))


def _with_failures_of(closed: PoolStats, running: PoolStats) -> PoolStats:
    """``running`` (the pool as the run ended) with the workers given up on as the
    ``closed`` pool knows them: a worker that failed as the run ended is recorded only
    once its slot has stopped it, which can take longer than what was left of the run (a
    worker deaf to SIGTERM, a child of its holding its stderr open)."""
    failed = {worker.slot: worker.failed for worker in closed.workers}
    workers = tuple(dataclasses.replace(worker, failed=failed[worker.slot]) for worker in running.workers)
    return dataclasses.replace(running, workers=workers, failures=closed.failures)


def _run_options(args: argparse.Namespace, seed: int, checkpoint: Checkpoint | None) -> dict[str, Any]:
    return {
        "points": args.points, "seed": seed, "chunk_size": args.chunk_size, "kernel": args.kernel,
        "max_time": args.max_time, "target_error": args.target_error, "checkpoint": checkpoint,
        "verify": args.verify, "part": args.part,
    }  # fmt: skip
